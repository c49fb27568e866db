"""The admin: staff review what their team sent and received, read-only.

Transcripts are never edited here (no add, change or delete): messages are
written only by ``chat.services``. Admins see every conversation; the
product's visibility rule does not apply to them.
"""

import json
from decimal import Decimal

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator, smart_split, unescape_string_literal

from . import admin_reports, admin_retention, selectors, services
from .audit import audit_record
from .models import ApiToken, AuditEntry, Conversation, Message, ModelAccess, ModelPrice, UsageEntry, UsageLimit
from .providers.catalog import configured

# The product's name on every admin page, instead of "Django administration".
admin.site.site_header = "Team Chat administration"
admin.site.site_title = "Team Chat admin"
admin.site.site_url = "/"


class ReadOnlyAdmin(admin.ModelAdmin):
    """View permission only: no add, change or delete, whoever asks."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _per_conversation(queryset, aggregate):
    """One correlated subquery per row, so the counts are not multiplied by joins."""
    rows = queryset.filter(conversation=OuterRef("pk")).order_by().values("conversation")
    return Coalesce(Subquery(rows.annotate(value=aggregate).values("value"), output_field=IntegerField()), 0)


def _audit_shown(request, response) -> None:
    """Write one ``transcript_viewed`` row if ``response`` shows transcript content to a person.

    Only a GET answered 200 counts (a redirect, a refusal or a POST shows
    nothing). A change page names its object (a message, its conversation
    too); a list page writes one row for the page: the ids it shows and its
    query (filters, search, page number). A list with no rows writes none.
    """
    context = getattr(response, "context_data", None) or {}
    if request.method != "GET" or response.status_code != 200:
        return
    if (obj := context.get("original")) is not None:
        detail = {"conversation": str(obj.conversation_id)} if isinstance(obj, Message) else None
        target = {"target_type": obj._meta.model_name, "target_id": obj.pk, "detail": detail}
    elif (cl := context.get("cl")) is not None and (ids := [str(row.pk) for row in cl.result_list]):
        detail = {"ids": ids, "count": len(ids), "params": dict(request.GET.items())}
        target = {"target_type": cl.model._meta.model_name, "detail": detail}
    else:
        return
    audit_record(actor=request.user, action=AuditEntry.Action.TRANSCRIPT_VIEWED, request=request, **target)


def _audit_export(request, queryset, export_format: str) -> None:
    """One ``transcript_exported`` row naming every conversation of the download, and its format."""
    ids = [str(pk) for pk in queryset.values_list("pk", flat=True)]
    detail = {"format": export_format, "ids": ids, "count": len(ids)}
    audit_record(
        actor=request.user,
        action=AuditEntry.Action.TRANSCRIPT_EXPORTED,
        target_type="conversation",
        request=request,
        detail=detail,
    )


class TranscriptAdmin(ReadOnlyAdmin):
    """Read-only, and every page that shows transcript content to a person writes one audit row."""

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        _audit_shown(request, response)
        return response

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        _audit_shown(request, response)
        return response


@admin.register(Conversation)
class ConversationAdmin(admin_retention.RetentionPermission, TranscriptAdmin):
    list_display = [
        "display_title",
        "owner",
        "member_count",
        "model",
        "message_count",
        "total_tokens",
        "updated_at",
        admin_retention.deleted_status,
        admin_retention.conversation_on_legal_hold,
    ]
    list_filter = [
        admin_retention.DeletedFilter,
        admin_retention.LegalHoldFilter,
        ("owner", admin.RelatedOnlyFieldListFilter),
        "model",
        "created_at",
    ]
    date_hierarchy = "updated_at"
    # Searched by get_search_results below; listed so the admin shows the search box.
    search_fields = ["title", "owner__username", "messages__content", "messages__author__username"]
    search_help_text = "Title, message text, or the username of the owner or of a message's author."
    fields = [
        "title",
        "owner",
        "member_list",
        "model",
        "system_prompt",
        "created_at",
        "updated_at",
        "message_count",
        "total_tokens",
        admin_retention.deleted_status,
        "legal_hold_reason",
        "legal_hold_set_at",
        "legal_hold_set_by",
    ]
    readonly_fields = fields
    actions = [
        "export_json",
        "export_csv",
        admin_retention.restore_conversations,
        admin_retention.set_conversation_hold,
        admin_retention.release_conversation_hold,
    ]
    # Restore and legal holds change the row: they need the change permission (the form stays read-only).
    retention_permission = "chat.change_conversation"

    def get_queryset(self, request):
        members = Conversation.members.through.objects
        return (
            super()
            .get_queryset(request)
            .select_related("owner", "deleted_by")
            .annotate(
                member_count=_per_conversation(members, Count("pk")),
                message_count=_per_conversation(Message.objects, Count("pk")),
                total_tokens=_per_conversation(Message.objects, Sum("total_tokens")),
                estimated_tokens=_per_conversation(Message.objects.filter(usage_estimated=True), Sum("total_tokens")),
            )
        )

    def get_search_results(self, request, queryset, search_term):
        """Each word must match the title, the owner, or some message's text or author.

        An EXISTS over messages instead of a join, so a conversation is listed
        once however many of its messages match.
        """
        for word in smart_split(search_term):
            if word.startswith(('"', "'")) and word[0] == word[-1]:
                word = unescape_string_literal(word)
            messages = Message.objects.filter(conversation=OuterRef("pk")).filter(
                Q(content__icontains=word) | Q(author__username__icontains=word)
            )
            queryset = queryset.filter(Q(title__icontains=word) | Q(owner__username__icontains=word) | Exists(messages))
        return queryset, False

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["transcript"] = selectors.message_list(conversation=obj)
            # The app shows it only to its owner and members (the one visibility rule).
            context["app_url"] = reverse("conversation", args=[obj.pk])
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    @admin.display(description="Title", ordering="title")
    def display_title(self, obj):
        return str(obj)

    @admin.display(description="Members", ordering="member_count")
    def member_count(self, obj):
        return obj.member_count

    @admin.display(description="Members")
    def member_list(self, obj):
        return ", ".join(sorted(user.username for user in obj.members.all())) or "-"

    @admin.display(description="Messages", ordering="message_count")
    def message_count(self, obj):
        return obj.message_count

    @admin.display(description="Total tokens", ordering="total_tokens")
    def total_tokens(self, obj):
        if obj.estimated_tokens:
            return f"{obj.total_tokens} (~{obj.estimated_tokens} estimated)"
        return obj.total_tokens

    @admin.action(description="Export selected conversations as JSON", permissions=["view"])
    def export_json(self, request, queryset):
        """Download the contract's Conversation objects with their messages; one ``transcript_exported`` row."""
        response = admin_reports.conversations_export_json(queryset)
        _audit_export(request, queryset, "json")
        return response

    @admin.action(description="Export selected conversations' messages as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        """Download one row per message of the selected conversations; one ``transcript_exported`` row."""
        response = admin_reports.conversations_export_csv(queryset)
        _audit_export(request, queryset, "csv")
        return response


@admin.register(Message)
class MessageAdmin(TranscriptAdmin):
    # Eight narrow columns, so the list fits 1,400 px beside the admin's sidebar and filters.
    list_display = [
        "when",
        "preview",
        "conversation_link",
        "sender",
        "status",
        "model",
        "tokens",
        "timings",
    ]
    list_display_links = ["preview"]
    list_filter = ["status", "model", "role", "created_at"]
    ordering = ["-created_at"]
    date_hierarchy = "created_at"
    search_fields = ["content", "conversation__title", "author__username"]
    # The message table is the big one: skip the extra unfiltered COUNT(*).
    show_full_result_count = False
    fields = [
        "conversation",
        "role",
        "author",
        "status",
        "model",
        "content",
        "reasoning",
        "prompt_usage",
        "completion_usage",
        "total_usage",
        "finish_reason",
        "error_code",
        "error_message",
        "time_to_first_token_ms",
        "duration_ms",
        "seq",
        "created_at",
        "completed_at",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("conversation", "author")

    def get_urls(self):
        # Before the default patterns: their "<path:object_id>/" would swallow "usage/".
        usage = path("usage/", self.admin_site.admin_view(self.usage_view), name="chat_message_usage")
        return [usage, *super().get_urls()]

    def usage_view(self, request):
        """Per-user, per-model replies and tokens for a date range (see admin_reports.usage_view)."""
        return admin_reports.usage_view(request, self)

    @admin.display(description="Message")
    def preview(self, obj):
        return Truncator(obj.content).chars(50) or f"({obj.status})"

    @admin.display(description="Conversation", ordering="conversation__title")
    def conversation_link(self, obj):
        url = reverse("admin:chat_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">{}</a>', url, obj.conversation)

    def _tokens(self, obj, count):
        # An estimate says so: the provider reported no usage for this reply (chat.tokens).
        return f"~{count} (estimated)" if obj.usage_estimated and count is not None else count

    @admin.display(description="Prompt tokens", ordering="prompt_tokens")
    def prompt_usage(self, obj):
        return self._tokens(obj, obj.prompt_tokens)

    @admin.display(description="Completion tokens", ordering="completion_tokens")
    def completion_usage(self, obj):
        return self._tokens(obj, obj.completion_tokens)

    @admin.display(description="Total tokens", ordering="total_tokens")
    def total_usage(self, obj):
        return self._tokens(obj, obj.total_tokens)

    @admin.display(description="At (UTC)", ordering="created_at")
    def when(self, obj):
        return obj.created_at.strftime("%Y-%m-%d %H:%M")

    @admin.display(description="From", ordering="author__username")
    def sender(self, obj):
        # A reply has no author: it is the assistant's.
        return "Assistant" if obj.role == Message.Role.ASSISTANT else (obj.author or "(deleted user)")

    @admin.display(description="Tokens", ordering="total_tokens")
    def tokens(self, obj):
        # The total; the message's page has prompt and completion.
        return self._tokens(obj, obj.total_tokens) if obj.total_tokens is not None else "-"

    @admin.display(description="Timing (ms)", ordering="duration_ms")
    def timings(self, obj):
        # Time to first token / the whole reply: one narrow column for both.
        return " / ".join("-" if n is None else f"{n:,}" for n in (obj.time_to_first_token_ms, obj.duration_ms))

    @admin.display(description="TTFT (ms)", ordering="time_to_first_token_ms")
    def ttft(self, obj):
        return obj.time_to_first_token_ms

    @admin.display(description="Duration (ms)", ordering="duration_ms")
    def duration(self, obj):
        return obj.duration_ms


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Prices per model and date; a reply's cost is fixed on its ledger row when written, so edits never rewrite it."""

    list_display = ["model", "input_per_million", "output_per_million", "currency", "valid_from"]
    list_filter = ["model", "currency"]
    search_fields = ["model"]
    ordering = ["model", "-valid_from"]
    fieldsets = [
        (
            None,
            {
                "fields": ["model", "input_per_million", "output_per_million", "currency", "valid_from"],
                "description": (
                    "Prices per million tokens, in force from their date (UTC) until a later price of the same "
                    "model. A reply's cost is fixed on its usage ledger row when the reply ends, from the price "
                    "in force then: changing or deleting a price never changes the cost of replies already written. "
                    "Cost budgets and the usage report's totals count the currency CHAT_CURRENCY."
                ),
            },
        )
    ]


@admin.register(UsageEntry)
class UsageEntryAdmin(ReadOnlyAdmin):
    """The usage ledger, read-only: rows are written only when replies end (``services.usage_record``)."""

    list_display = [
        "created_at",
        "requested_by_name",
        "provider",
        "model",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "estimated",
        "cost",
        "currency",
    ]
    list_filter = ["provider", "model", "estimated", "status", "created_at"]
    date_hierarchy = "created_at"
    search_fields = ["requested_by_name", "requested_by__username"]
    search_help_text = "The name of the user who asked (kept when the account is gone)."
    show_full_result_count = False
    ordering = ["-created_at"]


class ModelAccessForm(forms.ModelForm):
    """The model is picked from the configured ones (a row for an id no longer configured keeps its value)."""

    class Meta:
        model = ModelAccess
        fields = ["model", "groups"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        choices = [(m.id, f"{m.name} ({m.id})" if m.name != m.id else m.id) for m in configured().models.values()]
        current = self.instance.model if self.instance.pk else None
        if current and current not in {value for value, _ in choices}:
            choices.append((current, f"{current} (no longer configured)"))
        self.fields["model"] = forms.ChoiceField(choices=choices, help_text=self.fields["model"].help_text)


@admin.register(ModelAccess)
class ModelAccessAdmin(admin.ModelAdmin):
    """Who may use which model: a model with a row is for its groups' members (and superusers) only."""

    form = ModelAccessForm
    list_display = ["model", "provider", "allowed_groups"]
    search_fields = ["model"]
    filter_horizontal = ["groups"]
    fieldsets = [
        (
            None,
            {
                "fields": ["model", "groups"],
                "description": (
                    "A model without a row here is open to everyone. Adding a row restricts the model to the "
                    "members of the groups chosen (superusers may use every model); with no group, nobody else "
                    "may use it. A model a person may not use is not offered to them, and posting with it "
                    "answers 403 model_not_allowed. Groups are edited under Authentication and Authorization."
                ),
            },
        )
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description="provider")
    def provider(self, obj):
        provider = configured().provider_of(obj.model)
        return provider.name if provider else "(not configured)"

    @admin.display(description="groups allowed")
    def allowed_groups(self, obj):
        return ", ".join(group.name for group in obj.groups.all()) or "nobody (superusers only)"


class UsageLimitInline(admin.StackedInline):
    """Per-user overrides of the team-wide limits, edited on the user's admin page."""

    model = UsageLimit
    fields = [
        "daily_token_quota",
        "messages_per_minute",
        "max_open_streams",
        "monthly_token_budget",
        "monthly_cost_budget",
    ]
    can_delete = True
    extra = 0
    max_num = 1
    verbose_name_plural = "Usage limits for this person (empty: the team default; 0: unlimited)"
    # templates/admin/auth/user/change_form.html puts it near the top of the page, under the usage summary.
    near_top = True


LIMIT_FIELDS = [field.name for field in UsageLimit._meta.concrete_fields if field.name not in ("id", "user")]


def _limit_values(values) -> dict:
    # JSON has no Decimal: a cost budget is kept as its text, exactly.
    return {name: str(v) if isinstance(v := values.get(name), Decimal) else v for name in LIMIT_FIELDS}


def _limit_changes(formset) -> list[dict]:
    """Before and after of each changed UsageLimit form (None: no override, the team defaults).

    ``before`` comes from the forms' initial values, which the formset read
    from the database for this POST; call it before the save.
    """
    changes = []
    for form in formset.forms:
        if not form.has_changed() or (form.instance.pk is None and form in formset.deleted_forms):
            continue
        before = _limit_values(form.initial) if form.instance.pk else None
        after = None if form in formset.deleted_forms else _limit_values(form.cleaned_data)
        changes.append({"before": before, "after": after})
    return changes


LIMIT_LABELS = {
    "daily_token_quota": ("Daily token quota", "tokens"),
    "messages_per_minute": ("Messages per minute", ""),
    "max_open_streams": ("Open event streams", ""),
    "monthly_token_budget": ("Monthly token budget", "tokens"),
    "monthly_cost_budget": ("Monthly cost budget", ""),
}


class UserAdminWithLimits(admin_retention.RetentionPermission, UserAdmin):
    inlines = [*UserAdmin.inlines, UsageLimitInline, admin_retention.UserLegalHoldInline]
    list_display = [*UserAdmin.list_display, admin_retention.user_on_legal_hold]
    list_select_related = ["legal_hold"]
    actions = [admin_retention.set_user_hold, admin_retention.release_user_hold]
    retention_permission = "chat.change_userlegalhold"
    readonly_fields = [*UserAdmin.readonly_fields, "limits_in_force"]

    def get_fieldsets(self, request, obj=None):
        """The add page as Django has it; a person's page shows the limits in force and today's usage second."""
        fieldsets = list(super().get_fieldsets(request, obj))
        if obj is None:
            return fieldsets
        summary = ("Usage today and limits in force", {"fields": ["limits_in_force"]})
        return [fieldsets[0], summary, *fieldsets[1:]]

    @admin.display(description="In force")
    def limits_in_force(self, obj):
        """Each limit's value and where it comes from (this person's override or the team default), and today's use."""
        limits = selectors.user_limits(user=obj)
        override = UsageLimit.objects.filter(user=obj).first()
        usage = selectors.usage_today_for_user(user=obj)
        rows = []
        for name, (label, unit) in LIMIT_LABELS.items():
            value = limits[name]
            source = "this person's limit" if override and getattr(override, name) is not None else "team default"
            if not value:
                shown = "unlimited"
            elif isinstance(value, Decimal):
                shown = f"{value:,} {settings.CHAT_CURRENCY}"
            else:
                shown = f"{value:,} {unit}".strip()
            rows.append((label, shown, source))
        quota = f" of {usage['quota']:,}" if usage["quota"] else ""
        today = format_html(
            "<p class='usage-today'><strong>Today (UTC):</strong> {} tokens{} in {} repl{}.</p>",
            f"{usage['tokens']:,}",
            quota,
            usage["replies"],
            "y" if usage["replies"] == 1 else "ies",
        )
        table = format_html(
            "<table class='limits-in-force'><tbody>{}</tbody></table>",
            format_html_join("", "<tr><th scope='row'>{}</th><td>{}</td><td>{}</td></tr>", rows),
        )
        return format_html("{}{}", today, table)

    def save_formset(self, request, form, formset, change):
        """Save, and write one ``limits_changed`` row (before/after) per changed limits form, in one transaction."""
        changes = _limit_changes(formset) if formset.model is UsageLimit else []
        super().save_formset(request, form, formset, change)
        for values in changes:
            audit_record(
                actor=request.user,
                action=AuditEntry.Action.LIMITS_CHANGED,
                target_type="user",
                target_id=form.instance.pk,
                request=request,
                detail={"user": form.instance.get_username(), **values},
            )


admin.site.unregister(User)
admin.site.register(User, UserAdminWithLimits)


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    """Everyone's personal API tokens: see them and revoke them (audited); a secret is never shown, not even hashed.

    No add, change or delete: a token is made by its owner (its secret goes
    to them alone), and a revoked one keeps its row for the audit trail.
    """

    list_display = ["name", "user", "lookup_prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "created_at", "last_used_at"]
    list_select_related = ["user"]
    search_fields = ["name", "user__username", "lookup"]
    search_help_text = "Token name, username, or the token's first characters (tc_…)."
    ordering = ["-created_at", "-id"]
    fields = ["name", "user", "lookup_prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]
    readonly_fields = fields
    actions = ["revoke"]

    @admin.display(description="Starts with", ordering="lookup")
    def lookup_prefix(self, obj):
        return f"{obj.lookup}…"

    def has_revoke_permission(self, request):
        return request.user.has_perm("chat.change_apitoken")

    @admin.action(description="Revoke the selected tokens", permissions=["revoke"])
    def revoke(self, request, queryset):
        revoked = 0
        for token in queryset.filter(revoked_at__isnull=True).select_related("user"):
            if services.api_token_revoke(token=token, actor=request.user, request=request):
                revoked += 1
        self.message_user(request, f"Revoked {revoked} token{'s' if revoked != 1 else ''}.")


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """The audit trail, read-only for everyone, superusers included: no add, change, delete or actions.

    Reading it writes no row of its own.
    """

    list_display = ["when", "actor_name", "action", "target", "ip", "request"]
    list_filter = ["action", "actor_name", "at"]
    date_hierarchy = "at"
    search_fields = ["actor_name", "target_id", "detail"]
    search_help_text = "Actor, target id, or any text of the detail (ids, reasons, filters)."
    ordering = ["-at", "-id"]
    actions = None
    fields = ["at", "actor_name", "actor", "action", "target_type", "target_id", "ip", "request_id", "detail_json"]
    readonly_fields = fields

    def changelist_view(self, request, extra_context=None):
        # The list has no actions and nothing editable: a POST could only be a (bulk) delete.
        if request.method == "POST":
            raise PermissionDenied
        return super().changelist_view(request, extra_context)

    @admin.display(description="At (UTC)", ordering="at")
    def when(self, obj):
        # To the second: many rows share a minute.
        return obj.at.strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="Request id")
    def request(self, obj):
        # The first 12 characters find it in the logs; the detail page has it whole.
        return obj.request_id[:12] or "-"

    @admin.display(description="Target")
    def target(self, obj):
        return f"{obj.target_type} {obj.target_id}".strip() or "-"

    @admin.display(description="Detail")
    def detail_json(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.detail, ensure_ascii=False, indent=2, sort_keys=True))
