"""The admin: staff review what their team sent and received, read-only.

Transcripts are never edited here (no add, change or delete): messages are
written only by ``chat.services``. Admins see every conversation; the
product's visibility rule does not apply to them.
"""

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.models import User
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.text import Truncator, smart_split, unescape_string_literal

from . import admin_reports, selectors
from .models import Conversation, Message, UsageLimit


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


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    list_display = ["display_title", "owner", "member_count", "model", "message_count", "total_tokens", "updated_at"]
    list_filter = [("owner", admin.RelatedOnlyFieldListFilter), "model", "created_at"]
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
    ]
    readonly_fields = fields
    actions = ["export_json", "export_csv"]

    def get_queryset(self, request):
        members = Conversation.members.through.objects
        return (
            super()
            .get_queryset(request)
            .select_related("owner")
            .annotate(
                member_count=_per_conversation(members, Count("pk")),
                message_count=_per_conversation(Message.objects, Count("pk")),
                total_tokens=_per_conversation(Message.objects, Sum("total_tokens")),
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
        return obj.total_tokens

    @admin.action(description="Export selected conversations as JSON", permissions=["view"])
    def export_json(self, request, queryset):
        """Download the contract's Conversation objects with their messages."""
        return admin_reports.conversations_export_json(queryset)

    @admin.action(description="Export selected conversations' messages as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        """Download one row per message of the selected conversations."""
        return admin_reports.conversations_export_csv(queryset)


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = [
        "preview",
        "conversation_link",
        "role",
        "author",
        "status",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "ttft",
        "duration",
        "created_at",
    ]
    list_filter = ["status", "model", "role", "created_at"]
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
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
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
        return Truncator(obj.content).chars(60) or f"({obj.status})"

    @admin.display(description="Conversation", ordering="conversation__title")
    def conversation_link(self, obj):
        url = reverse("admin:chat_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">{}</a>', url, obj.conversation)

    @admin.display(description="TTFT (ms)", ordering="time_to_first_token_ms")
    def ttft(self, obj):
        return obj.time_to_first_token_ms

    @admin.display(description="Duration (ms)", ordering="duration_ms")
    def duration(self, obj):
        return obj.duration_ms


class UsageLimitInline(admin.StackedInline):
    """Per-user overrides of the team-wide limits, edited on the user's admin page."""

    model = UsageLimit
    can_delete = True
    extra = 0
    max_num = 1
    verbose_name_plural = "Usage limits (empty: the team default; 0: unlimited)"


class UserAdminWithLimits(UserAdmin):
    inlines = [*UserAdmin.inlines, UsageLimitInline]


admin.site.unregister(User)
admin.site.register(User, UserAdminWithLimits)
