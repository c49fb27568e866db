"""The admin's retention and legal-hold screens: the deleted column and filters, restore, holds with a reason.

Every change goes through a service (``conversation_restore``,
``conversation_legal_hold_set`` ...), which writes its audit row; the admin
only asks and reports. They need the model's change permission (superusers
have it), although the transcripts themselves stay read-only.
"""

from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse

from . import services
from .models import UserLegalHold

REASON_MAX_LENGTH = 2000


class RetentionPermission:
    """Mixin: ``permissions=["retention"]`` actions need ``retention_permission`` (an app_label.codename)."""

    retention_permission = ""

    def has_retention_permission(self, request):
        return request.user.has_perm(self.retention_permission)


class DeletedFilter(admin.SimpleListFilter):
    title = "deleted"
    parameter_name = "deleted"

    def lookups(self, request, model_admin):
        return [("yes", "Deleted (hidden, restorable until purged)"), ("no", "Not deleted")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(deleted_at__isnull=self.value() == "no")
        return queryset


class LegalHoldFilter(admin.SimpleListFilter):
    title = "legal hold"
    parameter_name = "legal_hold"

    def lookups(self, request, model_admin):
        return [("yes", "On legal hold"), ("no", "Not on legal hold")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(legal_hold_set_at__isnull=self.value() == "no")
        return queryset


@admin.display(description="Deleted", ordering="deleted_at")
def deleted_status(conversation) -> str:
    """'-' or when and by whom it was deleted, and from when it may be purged."""
    if conversation.deleted_at is None:
        return "-"
    by = conversation.deleted_by.get_username() if conversation.deleted_by else "a deleted user"
    text = f"{conversation.deleted_at:%Y-%m-%d %H:%M} by {by}"
    if conversation.on_legal_hold:
        return f"{text}; kept: legal hold"
    if settings.CHAT_DELETED_RETENTION_DAYS:
        due = conversation.deleted_at + timedelta(days=settings.CHAT_DELETED_RETENTION_DAYS)
        return f"{text}; purged after {due:%Y-%m-%d %H:%M}"
    return text


@admin.display(description="Legal hold", boolean=True, ordering="legal_hold_set_at")
def conversation_on_legal_hold(conversation) -> bool:
    return conversation.on_legal_hold


@admin.display(description="Legal hold", boolean=True)
def user_on_legal_hold(user) -> bool:
    # The list loads holds with list_select_related = ["legal_hold"]: no query per row.
    return hasattr(user, "legal_hold")


class ReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=REASON_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        help_text="Why (a case or ticket reference helps whoever releases it).",
    )


def _with_reason(modeladmin, request, queryset, *, title, explanation, apply):
    """Django's intermediate action page: ask for a reason, then ``apply(obj, reason)`` to each selected object.

    ``apply`` returns whether it changed the object; the admin is told how
    many it changed and that the others already were in that state.
    """
    form = ReasonForm(request.POST if "apply" in request.POST else None)
    if form.is_valid():
        objects = list(queryset)
        changed = sum(bool(apply(obj, form.cleaned_data["reason"])) for obj in objects)
        unchanged = len(objects) - changed
        modeladmin.message_user(
            request,
            f"{title}: {changed} changed" + (f", {unchanged} already in that state." if unchanged else "."),
            messages.SUCCESS if changed else messages.WARNING,
        )
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "explanation": explanation,
        "form": form,
        "queryset": queryset,
        "opts": modeladmin.model._meta,
        "action": request.POST.get("action", ""),
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
    }
    return TemplateResponse(request, "admin/chat/legal_hold_reason.html", context)


@admin.action(description="Restore selected deleted conversations", permissions=["retention"])
def restore_conversations(modeladmin, request, queryset):
    """Undo the owners' deletes (audited ``conversation_restored``); conversations not deleted are left alone."""
    deleted = list(queryset.filter(deleted_at__isnull=False))
    for conversation in deleted:
        services.conversation_restore(conversation=conversation, admin=request.user, request=request)
    skipped = queryset.count() - len(deleted)
    modeladmin.message_user(
        request,
        f"Restored {len(deleted)} conversations; their owners and members see them again."
        + (f" {skipped} were not deleted." if skipped else ""),
        messages.SUCCESS if deleted else messages.WARNING,
    )


@admin.action(description="Set a legal hold on selected conversations", permissions=["retention"])
def set_conversation_hold(modeladmin, request, queryset):
    return _with_reason(
        modeladmin,
        request,
        queryset,
        title="Set a legal hold",
        explanation="Conversations on legal hold are never purged, whatever the retention settings, until released.",
        apply=lambda obj, reason: services.conversation_legal_hold_set(
            conversation=obj, admin=request.user, reason=reason, request=request
        ),
    )


@admin.action(description="Release the legal hold of selected conversations", permissions=["retention"])
def release_conversation_hold(modeladmin, request, queryset):
    return _with_reason(
        modeladmin,
        request,
        queryset,
        title="Release the legal hold",
        explanation="Once released, the retention settings apply again: if expired, it goes with the next purge.",
        apply=lambda obj, reason: services.conversation_legal_hold_release(
            conversation=obj, admin=request.user, reason=reason, request=request
        ),
    )


@admin.action(description="Set a legal hold on selected users", permissions=["retention"])
def set_user_hold(modeladmin, request, queryset):
    return _with_reason(
        modeladmin,
        request,
        queryset,
        title="Set a legal hold",
        explanation=(
            "While a person is on legal hold, their deletions only hide, and no conversation they own, "
            "share or wrote in is purged."
        ),
        apply=lambda obj, reason: services.user_legal_hold_set(
            user=obj, admin=request.user, reason=reason, request=request
        ),
    )


@admin.action(description="Release the legal hold of selected users", permissions=["retention"])
def release_user_hold(modeladmin, request, queryset):
    return _with_reason(
        modeladmin,
        request,
        queryset,
        title="Release the legal hold",
        explanation="Once released, the retention settings apply again to their conversations.",
        apply=lambda obj, reason: services.user_legal_hold_release(
            user=obj, admin=request.user, reason=reason, request=request
        ),
    )


class UserLegalHoldInline(admin.StackedInline):
    """A person's legal hold, shown on their admin page; set and released with the audited actions."""

    model = UserLegalHold
    fk_name = "user"
    fields = ["reason", "set_at", "set_by"]
    readonly_fields = fields
    extra = 0
    max_num = 1
    can_delete = False
    verbose_name_plural = "Legal hold (set and release with the user list's actions, which record a reason)"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False
