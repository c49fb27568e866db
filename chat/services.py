"""Writes. Sync, keyword-only, one transaction each; async callers use ``database_sync_to_async``.

A service that changes what open streams must know publishes its event
itself, once its transaction has committed (``transaction.on_commit`` with
``chat.publish``): a rolled-back write announces nothing, and no view
publishes. A reply's message events are the generation's (``chat.generation``).
"""

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Q, Value
from django.db.models.functions import Concat
from django.utils import timezone

from . import publish
from .audit import audit_record
from .errors import Conflict, Forbidden, InvalidInput, NotFound
from .models import (
    API_TOKEN_LOOKUP_LENGTH,
    API_TOKEN_NAME_MAX_LENGTH,
    API_TOKEN_SECRET_PREFIX,
    IDEMPOTENCY_WINDOW,
    ApiToken,
    AuditEntry,
    Conversation,
    IdempotencyKey,
    Message,
    UsageEntry,
    UserLegalHold,
)
from .providers.catalog import provider_name
from .selectors import (
    api_token_hash,
    conversation_get_for_user,
    message_history_for_generation,
    message_latest,
    message_rate_check,
    model_price_on,
    usage_cost,
)
from .serializers import conversation_to_dict
from .tokens import estimate_usage

# Conversations deleted per statement by a purge (SQLite takes at most 32,766 parameters a query).
PURGE_BATCH = 500


def _require_owner(*, conversation, user):
    if conversation.owner_id != user.pk:
        raise Forbidden("Only the conversation's owner can do this.", code="owner_only")


def _conversation_changed(*, conversation, user, added=(), removed=()) -> Conversation:
    """The conversation as it now stands (owner and members loaded), read through ``user``'s visibility.

    Emits ``conversation.updated`` with it after the commit; the event also
    makes a removed member's open streams re-check their access and end. On
    the people's own streams: ``conversation.added`` to ``added`` (user ids),
    ``conversation.removed`` to ``removed``, ``conversation.updated`` to the others.
    """
    conversation = conversation_get_for_user(user=user, conversation_id=conversation.pk)
    body = conversation_to_dict(conversation)
    people = _people(conversation)
    transaction.on_commit(
        lambda: publish.conversation_updated(conversation=body, user_ids=people, added=added, removed=removed)
    )
    return conversation


def _people(conversation) -> list:
    """The ids of who sees ``conversation``: its owner and members (prefetched members are not queried again)."""
    return [conversation.owner_id, *(member.pk for member in conversation.members.all())]


def _conversation_touched(*, conversation, at) -> None:
    """After the commit, ``conversation.updated`` with ``updated_at`` = ``at`` on its people's own streams."""
    conversation.updated_at = at
    body = conversation_to_dict(conversation)
    people = _people(conversation)
    transaction.on_commit(lambda: publish.conversation_touched(conversation=body, user_ids=people))


def conversation_create(*, owner, title: str = "", model: str, system_prompt: str = "") -> Conversation:
    """Create a conversation owned by ``owner``; no members yet. Emits ``conversation.added`` on the owner's own
    stream after the commit (their other tabs list it)."""
    now = timezone.now()
    conversation = Conversation.objects.create(
        owner=owner, title=title, model=model, system_prompt=system_prompt, created_at=now, updated_at=now
    )
    body = conversation_to_dict(conversation)
    transaction.on_commit(lambda: publish.conversation_added(conversation=body, user_ids=[owner.pk]))
    return conversation


@transaction.atomic
def conversation_update(*, conversation, user, **fields) -> Conversation:
    """Change title, model and/or system_prompt (owner only); bumps updated_at.

    Returns the conversation as stored; emits ``conversation.updated`` after the commit.
    """
    _require_owner(conversation=conversation, user=user)
    for name, value in fields.items():
        setattr(conversation, name, value)
    conversation.updated_at = timezone.now()
    conversation.save(update_fields=[*fields, "updated_at"])
    return _conversation_changed(conversation=conversation, user=user)


@transaction.atomic
def conversation_delete(*, conversation, user) -> None:
    """Delete the conversation for everyone (owner only): hidden at once, purged later.

    Sets ``deleted_at`` / ``deleted_by``; the one visibility rule then hides
    it from the owner and every member, while the row and its messages stay
    for CHAT_DELETED_RETENTION_DAYS (admins may restore it) and, under a
    legal hold, until it is released. Emits ``conversation.deleted`` after
    the commit, so open streams end, and ``conversation.removed`` on the
    owner's and every member's own stream.
    """
    _require_owner(conversation=conversation, user=user)
    now = timezone.now()
    Conversation.objects.filter(pk=conversation.pk, deleted_at__isnull=True).update(deleted_at=now, deleted_by=user)
    conversation.deleted_at, conversation.deleted_by = now, user
    conversation_id, people = conversation.pk, _people(conversation)
    transaction.on_commit(lambda: publish.conversation_deleted(conversation_id=conversation_id, user_ids=people))


@transaction.atomic
def conversation_member_add(*, conversation, user, username: str) -> Conversation:
    """Share the conversation with an active user (owner only). Adding twice is harmless.

    The username is matched case-insensitively (contract v2); an exact match
    wins where two accounts differ only in case. Returns the conversation as
    stored; emits ``conversation.updated`` after the commit.
    """
    _require_owner(conversation=conversation, user=user)
    User = get_user_model()
    candidates = list(User.objects.filter(username__iexact=username, is_active=True)[:10])
    member = next((c for c in candidates if c.username == username), candidates[0] if len(candidates) == 1 else None)
    if member is None:
        raise NotFound(f"There is no active user named {username!r}.", code="user_not_found")
    if member.pk == conversation.owner_id:
        raise InvalidInput("The owner already has access to the conversation.", code="already_owner")
    # Count and add under the conversation's row lock, so two adds at the
    # limit (on any process) cannot both pass; SQLite's IMMEDIATE
    # transactions already serialise them. The count reads the locked row's
    # members, never ``conversation``'s prefetched (possibly stale) list.
    locked = Conversation.objects.select_for_update().only("pk").get(pk=conversation.pk)
    limit = settings.CHAT_MAX_MEMBERS
    if locked.members.count() >= limit and not locked.members.filter(pk=member.pk).exists():
        raise InvalidInput(
            f"A conversation can have at most {limit:,} members besides its owner.", code="too_many_members"
        )
    conversation.members.add(member)
    conversation.updated_at = timezone.now()
    conversation.save(update_fields=["updated_at"])
    return _conversation_changed(conversation=conversation, user=user, added=(member.pk,))


@transaction.atomic
def conversation_member_remove(*, conversation, user, username: str) -> Conversation:
    """Take a member's access away (owner only); NotFound if they are not a member.

    Returns the conversation as stored; emits ``conversation.updated`` after
    the commit, which ends the removed member's open streams.
    """
    _require_owner(conversation=conversation, user=user)
    member = conversation.members.filter(username=username).first()
    if member is None:
        raise NotFound(f"{username!r} is not a member of this conversation.", code="member_not_found")
    conversation.members.remove(member)
    conversation.updated_at = timezone.now()
    conversation.save(update_fields=["updated_at"])
    return _conversation_changed(conversation=conversation, user=user, removed=(member.pk,))


@transaction.atomic
def conversation_restore(*, conversation, admin, request=None) -> None:
    """Undo an owner's delete (admins): the owner and members see the conversation again at once.

    Clears ``deleted_at`` / ``deleted_by`` and bumps ``updated_at`` (so the
    inactivity rule counts from the restore); writes a
    ``conversation_restored`` audit row. Raises InvalidInput if it is not
    deleted. Restorable while it is kept, i.e. until a purge takes it. Emits
    ``conversation.added`` on the owner's and members' own streams after the commit.
    """
    if not Conversation.objects.filter(pk=conversation.pk, deleted_at__isnull=False).update(
        deleted_at=None, deleted_by=None, updated_at=timezone.now()
    ):
        raise InvalidInput(f"{conversation} is not deleted.", code="not_deleted")
    restored = Conversation.objects.select_related("owner").prefetch_related("members").get(pk=conversation.pk)
    body, people = conversation_to_dict(restored), _people(restored)
    transaction.on_commit(lambda: publish.conversation_added(conversation=body, user_ids=people))
    audit_record(
        actor=admin,
        action=AuditEntry.Action.CONVERSATION_RESTORED,
        target_type="conversation",
        target_id=conversation.pk,
        request=request,
        detail={"deleted_at": conversation.deleted_at.isoformat() if conversation.deleted_at else None},
    )


def _hold_reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("Give the reason for setting or releasing a legal hold.", code="reason_required")
    return reason


@transaction.atomic
def conversation_legal_hold_set(*, conversation, admin, reason: str, request=None) -> bool:
    """Put a conversation under legal hold (admins): it is never purged while held.

    Writes the hold's reason, time and admin on the row and a
    ``legal_hold_set`` audit row with the reason. Returns False (and writes
    nothing) if it was already held. Raises InvalidInput without a reason.
    """
    reason = _hold_reason(reason)
    held = Conversation.objects.filter(pk=conversation.pk, legal_hold_set_at__isnull=True).update(
        legal_hold_reason=reason, legal_hold_set_at=timezone.now(), legal_hold_set_by=admin
    )
    if held:
        audit_record(
            actor=admin,
            action=AuditEntry.Action.LEGAL_HOLD_SET,
            target_type="conversation",
            target_id=conversation.pk,
            request=request,
            detail={"reason": reason},
        )
    return bool(held)


@transaction.atomic
def conversation_legal_hold_release(*, conversation, admin, reason: str, request=None) -> bool:
    """Release a conversation's legal hold (admins); the retention settings apply to it again.

    Clears the hold and writes a ``legal_hold_released`` audit row with this
    reason and the hold's own. Returns False (and writes nothing) if it was
    not held. Raises InvalidInput without a reason.
    """
    reason = _hold_reason(reason)
    row = Conversation.objects.select_for_update().filter(pk=conversation.pk, legal_hold_set_at__isnull=False).first()
    if row is None:
        return False
    Conversation.objects.filter(pk=row.pk).update(legal_hold_reason="", legal_hold_set_at=None, legal_hold_set_by=None)
    audit_record(
        actor=admin,
        action=AuditEntry.Action.LEGAL_HOLD_RELEASED,
        target_type="conversation",
        target_id=row.pk,
        request=request,
        detail={"reason": reason, "hold_reason": row.legal_hold_reason},
    )
    return True


@transaction.atomic
def user_legal_hold_set(*, user, admin, reason: str, request=None) -> bool:
    """Put a person under legal hold (admins): nothing they own, share or wrote in is purged while it stands.

    Writes a ``UserLegalHold`` and a ``legal_hold_set`` audit row with the
    reason. Returns False (and writes nothing) if they were already held.
    Raises InvalidInput without a reason.
    """
    reason = _hold_reason(reason)
    _, created = UserLegalHold.objects.get_or_create(user=user, defaults={"reason": reason, "set_by": admin})
    if created:
        audit_record(
            actor=admin,
            action=AuditEntry.Action.LEGAL_HOLD_SET,
            target_type="user",
            target_id=user.pk,
            request=request,
            detail={"reason": reason, "username": user.get_username()},
        )
    return created


@transaction.atomic
def user_legal_hold_release(*, user, admin, reason: str, request=None) -> bool:
    """Release a person's legal hold (admins): deletes their ``UserLegalHold``, writes ``legal_hold_released``.

    Returns False (and writes nothing) if they were not held. Raises
    InvalidInput without a reason.
    """
    reason = _hold_reason(reason)
    hold = UserLegalHold.objects.select_for_update().filter(user=user).first()
    if hold is None:
        return False
    hold.delete()
    audit_record(
        actor=admin,
        action=AuditEntry.Action.LEGAL_HOLD_RELEASED,
        target_type="user",
        target_id=user.pk,
        request=request,
        detail={"reason": reason, "hold_reason": hold.reason, "username": user.get_username()},
    )
    return True


@dataclass(frozen=True)
class PurgeResult:
    """What a purge run deleted (or, dry, would): conversation ids by rule, and what a hold kept."""

    deleted_ids: list  # deleted by their owner longer ago than CHAT_DELETED_RETENTION_DAYS
    inactive_ids: list  # no activity for longer than CHAT_RETENTION_DAYS
    held: int  # expired by either rule but under a legal hold: kept
    messages: int  # messages of the purged conversations
    dry_run: bool

    @property
    def counts(self) -> dict:
        return {
            "deleted": len(self.deleted_ids),
            "inactive": len(self.inactive_ids),
            "held": self.held,
            "messages": self.messages,
        }


def _legal_hold_q() -> Q:
    """Conversations under a legal hold: their own, or one on a person who owns, shares or wrote in them."""
    held_users = UserLegalHold.objects.values("user_id")
    members = Conversation.members.through.objects.filter(conversation_id=OuterRef("pk"), user_id__in=held_users)
    authors = Message.objects.filter(conversation_id=OuterRef("pk"), author_id__in=held_users)
    return Q(legal_hold_set_at__isnull=False) | Q(owner_id__in=held_users) | Exists(members) | Exists(authors)


@transaction.atomic
def conversation_purge_expired(*, now=None, dry_run: bool = False) -> PurgeResult:
    """Delete for good the conversations the retention settings say have expired, never one under legal hold.

    Expired: deleted more than CHAT_DELETED_RETENTION_DAYS ago, or no
    activity (``updated_at``) for more than CHAT_RETENTION_DAYS (0 = that
    rule never expires anything). Their messages go with them; the usage
    ledger (no foreign keys) stays. Writes one ``purged`` audit row with the
    counts per run, even when nothing expired; a dry run writes nothing.
    After the commit, an inactive conversation's open streams end and its
    owner and members get ``conversation.removed`` (a deleted one's did when
    it was deleted).
    """
    now = now or timezone.now()
    deleted_before = None
    rules = Q(pk__in=[])
    if settings.CHAT_DELETED_RETENTION_DAYS:
        deleted_before = now - timedelta(days=settings.CHAT_DELETED_RETENTION_DAYS)
        rules |= Q(deleted_at__lt=deleted_before)
    if settings.CHAT_RETENTION_DAYS:
        rules |= Q(updated_at__lt=now - timedelta(days=settings.CHAT_RETENTION_DAYS))
    # Locked until the commit (PostgreSQL), so a restore or a hold set meanwhile waits for the purge.
    # A reply still streaming is left to end: its final save and ledger row need the conversation.
    streaming = Message.objects.filter(conversation=OuterRef("pk"), status=Message.Status.STREAMING)
    rows = list(
        Conversation.objects.filter(rules)
        .exclude(Exists(streaming))
        .select_for_update(of=("self",))
        .annotate(held=_legal_hold_q())
        .values_list("pk", "deleted_at", "held", "owner_id")
    )
    deleted_ids, inactive_ids, held = [], [], 0
    # Who still sees an inactive conversation (owner and members): told it is gone once the purge commits.
    people = {}
    for pk, deleted_at, is_held, owner_id in rows:
        if is_held:
            held += 1
        elif deleted_before is not None and deleted_at is not None and deleted_at < deleted_before:
            deleted_ids.append(pk)
        else:
            inactive_ids.append(pk)
            if deleted_at is None:
                people[pk] = [owner_id]
    members, seen_by = Conversation.members.through.objects, [] if dry_run else list(people)
    for start in range(0, len(seen_by), PURGE_BATCH):
        batch = seen_by[start : start + PURGE_BATCH]
        for conversation_id, user_id in members.filter(conversation_id__in=batch).values_list(
            "conversation_id", "user_id"
        ):
            people[conversation_id].append(user_id)
    ids, messages = [*deleted_ids, *inactive_ids], 0
    # In batches: a first run on an old database may expire more rows than a query takes parameters.
    for start in range(0, len(ids), PURGE_BATCH):
        batch = Conversation.objects.filter(pk__in=ids[start : start + PURGE_BATCH])
        if dry_run:
            messages += Message.objects.filter(conversation__in=batch).count()
        else:
            messages += batch.delete()[1].get(Message._meta.label, 0)
    result = PurgeResult(deleted_ids, inactive_ids, held, messages, dry_run)
    if not dry_run:
        transaction.on_commit(lambda: publish.conversations_purged(people=people))
        audit_record(
            actor=None,
            action=AuditEntry.Action.PURGED,
            target_type="conversation",
            detail={
                **result.counts,
                "deleted_retention_days": settings.CHAT_DELETED_RETENTION_DAYS,
                "retention_days": settings.CHAT_RETENTION_DAYS,
            },
        )
    return result


# ``message_submit``'s default parent: the conversation's newest message, read inside its transaction.
LATEST = object()


def message_submit(
    *,
    conversation,
    author,
    content: str,
    model: str,
    parent=LATEST,
    messages_per_minute: int = 0,
    idempotency_key: str | None = None,
    request_hash: str = "",
) -> tuple[Message, Message]:
    """Store the user's message under ``parent`` and the assistant's ``streaming`` placeholder under it.

    ``parent``: a reply of the conversation (see
    ``selectors.message_parent_for_post``), None for a new root, or LATEST
    (the default) for the conversation's newest message, a chain as before.
    Raises RateLimited when ``author`` already asked for
    ``messages_per_minute`` replies in the last minute (0: no limit): the count and the insert are
    one step, under a lock on the author's row, so concurrent posts on any
    process cannot overshoot. Raises Conflict when a reply is already
    streaming in the conversation (the database's partial unique constraint
    decides, so two processes cannot both start one), or when a post with the
    same ``idempotency_key`` is being stored right now. With
    ``idempotency_key``, records it with ``request_hash`` (see
    ``selectors.idempotent_post``). The placeholder is created 1 µs after the
    user's message so the transcript's order never depends on clock resolution.
    """
    try:
        with transaction.atomic():
            if messages_per_minute:
                _take_message_slot(author=author, per_minute=messages_per_minute)
            if parent is LATEST:
                parent = message_latest(conversation=conversation)
            now = timezone.now()
            user_message = Message.objects.create(
                conversation=conversation,
                parent=parent,
                role=Message.Role.USER,
                author=author,
                content=content,
                status=Message.Status.COMPLETE,
                created_at=now,
                completed_at=now,
            )
            assistant_message = Message.objects.create(
                conversation=conversation,
                parent=user_message,
                role=Message.Role.ASSISTANT,
                requested_by=author,
                status=Message.Status.STREAMING,
                model=model,
                provider=provider_name(model),
                created_at=now + timedelta(microseconds=1),
            )
            Conversation.objects.filter(pk=conversation.pk).update(updated_at=now)
            _conversation_touched(conversation=conversation, at=now)
            _idempotency_record(
                author=author,
                key=idempotency_key,
                request_hash=request_hash,
                user_message_id=user_message.id,
                assistant_message_id=assistant_message.id,
            )
    except IntegrityError:
        _explain_refusal(conversation=conversation, author=author, idempotency_key=idempotency_key)
        raise
    user_message.author = author
    return user_message, assistant_message


def message_regenerate(
    *,
    conversation,
    requester,
    reply: Message,
    model: str,
    messages_per_minute: int = 0,
    idempotency_key: str | None = None,
    request_hash: str = "",
) -> Message:
    """Store a new ``streaming`` reply under the same user message as ``reply``: its sibling.

    ``reply`` stays as it is. Used for a regenerate, and for a retry of a
    failed, interrupted or stopped reply (no second user message). Raises
    Conflict (``not_final``) if ``reply`` is not an ended assistant reply,
    and as ``message_submit`` for the rate, a running generation and a key
    being stored; records ``idempotency_key`` like it.
    """
    if reply.role != Message.Role.ASSISTANT or reply.status == Message.Status.STREAMING or reply.parent_id is None:
        raise Conflict(
            "Only an assistant reply that has ended (and follows a message) can be regenerated.", code="not_final"
        )
    try:
        with transaction.atomic():
            if messages_per_minute:
                _take_message_slot(author=requester, per_minute=messages_per_minute)
            now = timezone.now()
            assistant_message = Message.objects.create(
                conversation=conversation,
                parent_id=reply.parent_id,
                role=Message.Role.ASSISTANT,
                requested_by=requester,
                status=Message.Status.STREAMING,
                model=model,
                provider=provider_name(model),
                created_at=now,
            )
            Conversation.objects.filter(pk=conversation.pk).update(updated_at=now)
            _conversation_touched(conversation=conversation, at=now)
            # The record's user message is the one regenerated under: a repeat answers this reply.
            _idempotency_record(
                author=requester,
                key=idempotency_key,
                request_hash=request_hash,
                user_message_id=reply.parent_id,
                assistant_message_id=assistant_message.id,
            )
    except IntegrityError:
        _explain_refusal(conversation=conversation, author=requester, idempotency_key=idempotency_key)
        raise
    return assistant_message


def _idempotency_record(*, author, key, request_hash, user_message_id, assistant_message_id) -> None:
    """Record a post's Idempotency-Key (nothing without one); call in the transaction that stores the post."""
    if key is None:
        return
    now = timezone.now()
    # A key older than its window is free again.
    IdempotencyKey.objects.filter(user=author, created_at__lt=now - IDEMPOTENCY_WINDOW).delete()
    IdempotencyKey.objects.create(
        user=author,
        key=key,
        request_hash=request_hash,
        user_message_id=user_message_id,
        assistant_message_id=assistant_message_id,
        created_at=now,
    )


def _explain_refusal(*, conversation, author, idempotency_key) -> None:
    """Raise the Conflict that explains why storing a post hit an IntegrityError, if it is a known one."""
    if idempotency_key is not None and IdempotencyKey.objects.filter(user=author, key=idempotency_key).exists():
        raise Conflict(
            "A post with this Idempotency-Key is being stored right now. Retry it in a moment.",
            code="idempotency_key_in_use",
        ) from None
    if Message.objects.filter(conversation=conversation, status=Message.Status.STREAMING).exists():
        raise Conflict(
            "A reply is already being generated in this conversation. Wait for it or stop it first.",
            code="generation_in_progress",
        ) from None


def _take_message_slot(*, author, per_minute: int) -> None:
    """Raise RateLimited if ``author`` posted ``per_minute`` messages in the last minute.

    Call inside the transaction that inserts the message: it locks the
    author's row first (PostgreSQL; SQLite's IMMEDIATE transactions already
    serialise writers), so every process counts what the others inserted.
    """
    get_user_model().objects.select_for_update().filter(pk=author.pk).values_list("pk", flat=True).first()
    message_rate_check(author=author, per_minute=per_minute)


def message_checkpoint(
    *, message_id, content: str, reasoning: str, seq: int, stored: tuple[int, int, int] | None = None
) -> bool:
    """Save a streaming message's partial content through delta ``seq``.

    ``stored`` is what this generation's previous checkpoint wrote: (seq,
    content length, reasoning length). Then only the text after it is
    appended (``content || part``), on the condition that the row is still at
    that seq; if it is not (or without ``stored``) the whole text is written.
    An endless reply thus writes each character about once, not once a
    checkpoint. Writes only while the message is still streaming; returns
    whether it did.
    """
    streaming = Message.objects.filter(pk=message_id, status=Message.Status.STREAMING)
    if stored is not None:
        stored_seq, content_chars, reasoning_chars = stored
        appended = streaming.filter(seq=stored_seq).update(
            content=Concat(F("content"), Value(content[content_chars:])),
            reasoning=Concat(F("reasoning"), Value(reasoning[reasoning_chars:])),
            seq=seq,
        )
        if appended:
            return True
    return bool(streaming.update(content=content, reasoning=reasoning, seq=seq))


@transaction.atomic
def message_checkpoints(*, entries: list[dict]) -> list[bool]:
    """Save the partial content of several streaming messages in one transaction (``message_checkpoint`` each).

    ``entries`` are ``message_checkpoint``'s keyword arguments; returns whether each was written.
    """
    return [message_checkpoint(**entry) for entry in entries]


def message_finish(
    *,
    message_id,
    status: str,
    content: str,
    reasoning: str,
    seq: int,
    usage=None,
    finish_reason: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    time_to_first_token_ms: int | None = None,
    duration_ms: int | None = None,
    usage_estimated: bool = False,
) -> Message | None:
    """Persist a streaming message's final state, once.

    Only a message still ``streaming`` is written (a conditional UPDATE), so a
    stop, a failure and the reaper can race and exactly one of them wins.
    ``finish_reason`` and ``error_code`` are cut to their columns (a provider
    may send anything). Writes the reply's usage ledger row in the same
    transaction (``usage_record``). Returns the stored message, or None if it
    had already ended.
    """
    now = timezone.now()
    fields = dict(
        status=status,
        content=content,
        reasoning=reasoning,
        seq=seq,
        finish_reason=_fit(finish_reason, "finish_reason"),
        error_code=_fit(error_code, "error_code"),
        error_message=error_message,
        completed_at=now,
        time_to_first_token_ms=time_to_first_token_ms,
        duration_ms=duration_ms,
    )
    if usage is not None:
        fields.update(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            usage_estimated=usage_estimated,
        )
    with transaction.atomic():
        updated = Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(**fields)
        if not updated:
            return None
        message = Message.objects.select_related("author", "requested_by", "stopped_by").get(pk=message_id)
        Conversation.objects.filter(pk=message.conversation_id).update(updated_at=now)
        usage_record(message=message, at=now)
    return message


def message_stop_record(*, message_id, user) -> bool:
    """Record that ``user`` asked to stop the streaming reply ``message_id`` (its ``stopped_by``).

    Writes only while it streams; returns whether it did. Shown once the
    reply ends ``cancelled`` (a reply that completes first keeps it unshown).
    """
    return bool(Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(stopped_by=user))


def _fit(value: str | None, field: str) -> str | None:
    """``value`` cut to the length of Message's ``field`` column."""
    return None if value is None else value[: Message._meta.get_field(field).max_length]


def message_interrupt(*, message_id, reason: str, partial: tuple[int, str, str] | None = None) -> Message | None:
    """End a streaming message whose generation is gone as ``interrupted``, keeping its checkpoint.

    ``partial`` is (seq, content, reasoning) as the event log last had it
    (through delta ``seq``): kept instead when it is newer than the
    checkpoint. Its usage is estimated (``usage_estimated``): the prompt
    from the system prompt and the history its generation was sent (the same
    selector, read again), the completion from the content and reasoning
    kept. Writes its usage ledger row in the same transaction. Returns the
    message if this call ended it, None if it had already ended.
    """
    now = timezone.now()
    with transaction.atomic():
        message = Message.objects.select_for_update().filter(pk=message_id, status=Message.Status.STREAMING).first()
        if message is None:
            return None
        kept = {}
        if partial is not None and partial[0] > message.seq:
            kept = dict(seq=partial[0], content=partial[1], reasoning=partial[2])
            message.content, message.reasoning = partial[1], partial[2]
        conversation = Conversation.objects.get(pk=message.conversation_id)
        history = message_history_for_generation(conversation=conversation, before_message=message)
        usage = estimate_usage(
            system_prompt=conversation.system_prompt, history=history, received=[message.content, message.reasoning]
        )
        Message.objects.filter(pk=message_id).update(
            **kept,
            status=Message.Status.INTERRUPTED,
            error_code="interrupted",
            error_message=reason,
            completed_at=now,
            duration_ms=int((now - message.created_at).total_seconds() * 1000),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            usage_estimated=True,
        )
        Conversation.objects.filter(pk=message.conversation_id).update(updated_at=now)
        message = Message.objects.select_related("author", "requested_by").get(pk=message_id)
        usage_record(message=message, at=now)
    return message


def usage_record(*, message, at) -> UsageEntry:
    """Write the usage ledger row of a reply that just reached its final state; call in that transaction.

    Kept as ids and the requester's username, so it outlives the message, the
    conversation and the account. Unknown counts are 0. The cost is fixed now,
    from the model's price in force today (UTC); None when it has no price.
    """
    prompt, completion = message.prompt_tokens or 0, message.completion_tokens or 0
    price = model_price_on(model=message.model or "", day=at.date())
    return UsageEntry.objects.create(
        message_id=message.id,
        conversation_id=message.conversation_id,
        requested_by=message.requested_by,
        requested_by_name=message.requested_by.username if message.requested_by else "",
        model=message.model or "",
        provider=message.provider,
        status=message.status,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=message.total_tokens if message.total_tokens is not None else prompt + completion,
        estimated=message.usage_estimated,
        cost=usage_cost(price=price, prompt_tokens=prompt, completion_tokens=completion),
        currency=price.currency if price else "",
        created_at=at,
    )


# last_used_at is written at most this often per token: a script's every call must not be a write.
API_TOKEN_TOUCH_INTERVAL = timedelta(minutes=1)


@transaction.atomic
def api_token_create(*, user, name: str, expires_at: datetime | None = None, request=None) -> tuple[ApiToken, str]:
    """Create a personal API token for ``user``; returns it and its secret, which is not stored anywhere.

    Only the secret's keyed hash and its first characters (the lookup) are
    kept. Writes a ``token_created`` audit row. Raises InvalidInput for an
    empty or too long name (``empty_name``, ``too_long``) or an expiry that
    is not in the future (``expires_in_past``).
    """
    name = name.strip()
    if not name:
        raise InvalidInput("Give the token a name, such as the script or machine that will use it.", code="empty_name")
    if len(name) > API_TOKEN_NAME_MAX_LENGTH:
        raise InvalidInput(
            f"The name is too long: {len(name)} characters, at most {API_TOKEN_NAME_MAX_LENGTH}.", code="too_long"
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("The expiry date must be in the future.", code="expires_in_past")
    secret = API_TOKEN_SECRET_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        lookup=secret[:API_TOKEN_LOOKUP_LENGTH],
        secret_hash=api_token_hash(secret),
        expires_at=expires_at,
    )
    audit_record(
        actor=user,
        action=AuditEntry.Action.TOKEN_CREATED,
        target_type="api_token",
        target_id=token.pk,
        request=request,
        detail={"name": token.name, "lookup": token.lookup, "expires_at": expires_at and expires_at.isoformat()},
    )
    return token, secret


@transaction.atomic
def api_token_revoke(*, token: ApiToken, actor, request=None) -> bool:
    """Revoke ``token`` (its owner, or an admin as ``actor``): it stops working at once.

    Sets ``revoked_at`` unless already set (False then, nothing written) and
    writes a ``token_revoked`` audit row. After the commit the streams
    opened with it end (``access.revoked`` ``signed_out``); the user's other
    streams go on.
    """
    now = timezone.now()
    if not ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now):
        return False
    token.revoked_at = now
    audit_record(
        actor=actor,
        action=AuditEntry.Action.TOKEN_REVOKED,
        target_type="api_token",
        target_id=token.pk,
        request=request,
        detail={"name": token.name, "lookup": token.lookup, "owner": token.user.get_username()},
    )
    user_id, credential = token.user_id, token.stream_credential
    transaction.on_commit(lambda: publish.access_changed(user_id=user_id, ended_session=credential))
    return True


def api_token_touch(*, token: ApiToken) -> None:
    """Record that ``token`` was used now, if its ``last_used_at`` is older than a minute (or unset).

    One conditional UPDATE, so processes racing on the same token write once.
    """
    now = timezone.now()
    if token.last_used_at is not None and now - token.last_used_at < API_TOKEN_TOUCH_INTERVAL:
        return
    stale = Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - API_TOKEN_TOUCH_INTERVAL)
    ApiToken.objects.filter(stale, pk=token.pk).update(last_used_at=now)
