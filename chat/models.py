"""Conversations and their messages: data and invariants only.

Side effects (events, generations, timestamps) live in ``chat.services``.
"""

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

TITLE_MAX_LENGTH = 200
MODEL_MAX_LENGTH = 200
PROVIDER_MAX_LENGTH = 64
SYSTEM_PROMPT_MAX_LENGTH = 20_000
# Contract v2: a repeat of a post with the same Idempotency-Key within this long answers the first.
IDEMPOTENCY_WINDOW = timedelta(hours=24)
IDEMPOTENCY_KEY_MAX_LENGTH = 200


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=TITLE_MAX_LENGTH, blank=True)
    model = models.CharField(max_length=MODEL_MAX_LENGTH)
    system_prompt = models.TextField(blank=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="shared_conversations", blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # Bumped by the services whenever the conversation or its messages change.
    updated_at = models.DateTimeField(default=timezone.now)
    # Set when its owner deletes it: hidden from everyone, kept for
    # CHAT_DELETED_RETENTION_DAYS (admins may restore it), then purged.
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # A legal hold: never purged while set, whatever the retention settings.
    legal_hold_reason = models.TextField(blank=True)
    legal_hold_set_at = models.DateTimeField(null=True, blank=True)
    legal_hold_set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            models.Index(fields=["owner", "-updated_at"], name="conversation_owner_recent"),
            models.Index(fields=["-updated_at"], name="conversation_recent"),
            models.Index(fields=["model"], name="conversation_model"),
            models.Index(fields=["deleted_at"], name="conversation_deleted"),
        ]

    def __str__(self):
        return self.title or f"Conversation {self.id}"

    @property
    def on_legal_hold(self) -> bool:
        return self.legal_hold_set_at is not None


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        STREAMING = "streaming"
        FAILED = "failed"
        CANCELLED = "cancelled"
        INTERRUPTED = "interrupted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    # The message this one follows (null for a root): messages form a tree, a thread is a root-to-leaf path.
    # The database refuses a parent from another conversation or not created before the child (migration
    # 0009's triggers), so every parent chain ends at a root.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    role = models.CharField(max_length=16, choices=Role.choices)
    # Null for the assistant (and for a user message whose author was deleted).
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages"
    )
    # For an assistant reply: the user whose message asked for it (usage is theirs).
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="requested_replies"
    )
    # For a reply stopped through the stop endpoint: who stopped it.
    stopped_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    content = models.TextField(blank=True)
    reasoning = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    model = models.CharField(max_length=MODEL_MAX_LENGTH, blank=True, null=True)
    # For an assistant reply: the provider that serves ``model`` (chat.providers.catalog); null before
    # replies recorded it. Nullable so that adding it never rebuilds the table (and its triggers) on SQLite.
    provider = models.CharField(max_length=PROVIDER_MAX_LENGTH, blank=True, null=True)
    # Usage as the provider reported it, or estimated (usage_estimated); null = none known.
    prompt_tokens = models.IntegerField(null=True, blank=True)
    completion_tokens = models.IntegerField(null=True, blank=True)
    total_tokens = models.IntegerField(null=True, blank=True)
    # True when the server estimated the usage (chat.tokens) because the provider reported none.
    usage_estimated = models.BooleanField(default=False)
    finish_reason = models.CharField(max_length=64, null=True, blank=True)
    error_code = models.CharField(max_length=64, null=True, blank=True)
    error_message = models.TextField(null=True, blank=True)
    # Number of deltas the stored content runs through (the checkpoint's seq).
    seq = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    completed_at = models.DateTimeField(null=True, blank=True)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(role__in=["user", "assistant"]), name="message_role_valid"),
            models.CheckConstraint(
                condition=Q(status__in=["complete", "streaming", "failed", "cancelled", "interrupted"]),
                name="message_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(prompt_tokens__isnull=True) | Q(prompt_tokens__gte=0), name="message_prompt_tokens_gte_0"
            ),
            models.CheckConstraint(
                condition=Q(completion_tokens__isnull=True) | Q(completion_tokens__gte=0),
                name="message_completion_tokens_gte_0",
            ),
            models.CheckConstraint(
                condition=Q(total_tokens__isnull=True) | Q(total_tokens__gte=0), name="message_total_tokens_gte_0"
            ),
            models.CheckConstraint(
                condition=Q(role="user") | Q(author__isnull=True), name="message_assistant_has_no_author"
            ),
            models.CheckConstraint(
                condition=Q(role="assistant") | Q(status="complete"), name="message_user_is_complete"
            ),
            # Only a streaming message lacks completed_at.
            models.CheckConstraint(
                condition=Q(status="streaming", completed_at__isnull=True)
                | (~Q(status="streaming") & Q(completed_at__isnull=False)),
                name="message_completed_at_iff_final",
            ),
            # One generation per conversation at a time.
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(status="streaming"),
                name="message_one_streaming_per_conversation",
            ),
        ]
        indexes = [
            models.Index(fields=["conversation", "created_at"], name="message_transcript"),
            models.Index(fields=["created_at"], name="message_created"),
            models.Index(fields=["author", "created_at"], name="message_author_created"),
            models.Index(fields=["model", "created_at"], name="message_model_created"),
            models.Index(fields=["requested_by", "created_at"], name="message_requester_created"),
            models.Index(fields=["status"], name="message_streaming", condition=Q(status="streaming")),
        ]

    def __str__(self):
        return f"{self.role} message {self.id} ({self.status})"

    @property
    def usage(self):
        if self.prompt_tokens is None and self.completion_tokens is None and self.total_tokens is None:
            return None
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "estimated": self.usage_estimated,
        }

    @property
    def error(self):
        if not self.error_code:
            return None
        return {"code": self.error_code, "message": self.error_message or ""}


class UsageLimit(models.Model):
    """Per-user overrides of the team-wide limits; an empty field means the setting's default, 0 means no limit."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="usage_limit")
    daily_token_quota = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens per UTC day (empty: CHAT_DAILY_TOKEN_QUOTA; 0: unlimited)."
    )
    messages_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Messages per minute (empty: CHAT_MESSAGES_PER_MINUTE; 0: unlimited)."
    )
    max_open_streams = models.PositiveIntegerField(
        null=True, blank=True, help_text="Open event streams at once (empty: CHAT_MAX_STREAMS_PER_USER; 0: unlimited)."
    )
    monthly_token_budget = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Tokens per calendar month (UTC) (empty: CHAT_MONTHLY_TOKEN_BUDGET; 0: no budget).",
    )
    monthly_cost_budget = models.DecimalField(
        max_digits=14,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Cost per calendar month (UTC), in CHAT_CURRENCY; empty or 0: no cost budget.",
    )

    def __str__(self):
        return f"Limits for {self.user}"


class IdempotencyKey(models.Model):
    """A post's ``Idempotency-Key``: a repeat by the same user within the window answers these messages."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=IDEMPOTENCY_KEY_MAX_LENGTH)
    # SHA-256 of what the post asked for (conversation, content, model): a repeat must match it.
    request_hash = models.CharField(max_length=64)
    user_message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="+")
    assistant_message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_unique_per_user")]

    def __str__(self):
        return f"{self.user_id}: {self.key}"


class UsageEntry(models.Model):
    """The usage ledger: one row per reply that reached a final state, written with that state.

    Ids and names, not foreign keys that cascade: a row outlives its
    message, its conversation and its requester's account. Cost is fixed
    when written, from the price in force then.
    """

    message_id = models.UUIDField(unique=True)
    conversation_id = models.UUIDField()
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The requester's username when written: kept when the account is gone.
    requested_by_name = models.CharField(max_length=150)
    model = models.CharField(max_length=MODEL_MAX_LENGTH)
    # The provider that served it; null for rows written before replies recorded one.
    provider = models.CharField(max_length=PROVIDER_MAX_LENGTH, blank=True, null=True)
    status = models.CharField(max_length=16)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    estimated = models.BooleanField(default=False)
    # None when the model had no price at the time.
    cost = models.DecimalField(max_digits=18, decimal_places=8, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "usage ledger entry"
        verbose_name_plural = "usage ledger"
        indexes = [
            models.Index(fields=["requested_by", "created_at"], name="usage_requester_created"),
            models.Index(fields=["created_at", "model"], name="usage_created_model"),
        ]

    def __str__(self):
        return f"{self.requested_by_name} {self.model} {self.total_tokens}"


class ModelPrice(models.Model):
    """What a model costs per million tokens from ``valid_from`` on (until a later price of that model)."""

    model = models.CharField(max_length=MODEL_MAX_LENGTH)
    input_per_million = models.DecimalField(max_digits=14, decimal_places=6)
    output_per_million = models.DecimalField(max_digits=14, decimal_places=6)
    currency = models.CharField(max_length=3, default="USD")
    valid_from = models.DateField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "valid_from"], name="price_one_per_model_and_day"),
            models.CheckConstraint(
                condition=Q(input_per_million__gte=0, output_per_million__gte=0), name="price_not_negative"
            ),
        ]

    def __str__(self):
        return f"{self.model} from {self.valid_from}"


class ModelAccess(models.Model):
    """Who may use a model: a model with a row is for the members of its groups only (and superusers).

    A model without a row is open to everyone; a row without groups closes
    the model to all but superusers. ``model`` is a model id as
    ``GET /api/models/`` gives it.
    """

    model = models.CharField(max_length=MODEL_MAX_LENGTH, unique=True)
    groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="+",
        help_text="The groups whose members may use this model. None: only superusers.",
    )

    class Meta:
        verbose_name = "model access"
        verbose_name_plural = "model access"
        ordering = ["model"]

    def __str__(self):
        return self.model


class AuditEntry(models.Model):
    """The audit trail, append-only: who did what to which object, when, from where."""

    class Action(models.TextChoices):
        TRANSCRIPT_VIEWED = "transcript_viewed"
        TRANSCRIPT_EXPORTED = "transcript_exported"
        USAGE_VIEWED = "usage_viewed"
        LIMITS_CHANGED = "limits_changed"
        LEGAL_HOLD_SET = "legal_hold_set"
        LEGAL_HOLD_RELEASED = "legal_hold_released"
        CONVERSATION_RESTORED = "conversation_restored"
        PURGED = "purged"
        TOKEN_CREATED = "token_created"
        TOKEN_REVOKED = "token_revoked"

    at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The actor's username when written ("system" for the purge job).
    actor_name = models.CharField(max_length=150)
    action = models.CharField(max_length=32, choices=Action.choices)
    target_type = models.CharField(max_length=50, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        verbose_name = "audit entry"
        verbose_name_plural = "audit trail"
        indexes = [
            models.Index(fields=["at"], name="audit_at"),
            models.Index(fields=["actor_name", "at"], name="audit_actor_at"),
            models.Index(fields=["action", "at"], name="audit_action_at"),
        ]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_name} {self.action}"


class UserLegalHold(models.Model):
    """A legal hold on a person: their deletions only hide, and nothing of theirs is purged."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="legal_hold")
    reason = models.TextField()
    set_at = models.DateTimeField(default=timezone.now)
    set_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    def __str__(self):
        return f"Legal hold on {self.user}"


API_TOKEN_NAME_MAX_LENGTH = 100
# Every secret starts so: recognisable in a script, a config file or a secret scanner.
API_TOKEN_SECRET_PREFIX = "tc_"
# The secret's first characters (the prefix and 9 random ones) find its row; the rest is only hashed.
API_TOKEN_LOOKUP_LENGTH = 12
# An event stream opened with a token names it so where a session stream names its session key.
API_TOKEN_CREDENTIAL_PREFIX = "token:"


class ApiToken(models.Model):
    """A personal API token: ``Authorization: Bearer <secret>`` acts as its user on ``/api/``.

    The secret is shown once, when created; only its keyed hash is kept
    (HMAC-SHA256 under a key derived from SECRET_KEY), found by ``lookup``.
    A revoked token keeps its row (the admin and the audit trail name it).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=API_TOKEN_NAME_MAX_LENGTH)
    lookup = models.CharField(max_length=API_TOKEN_LOOKUP_LENGTH, db_index=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Written at most once a minute per token (a conditional UPDATE), not on every request.
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API token"
        constraints = [models.CheckConstraint(condition=~Q(name=""), name="api_token_name_not_empty")]

    def __str__(self):
        return f"{self.name} ({self.lookup}…)"

    @property
    def stream_credential(self) -> str:
        """What an event stream opened with this token is re-validated by (a session stream: its session key)."""
        return f"{API_TOKEN_CREDENTIAL_PREFIX}{self.pk}"
