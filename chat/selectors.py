"""Reads. Who may see a conversation is decided here, in ``conversation_queryset_for_user``, and nowhere else."""

import hmac
import re
import uuid
from datetime import date, timedelta
from decimal import Decimal
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib import auth
from django.db import connection
from django.db.models import BooleanField, Case, CharField, Count, Exists, OuterRef, Prefetch, Q, Sum, Value, When
from django.db.models.expressions import RawSQL
from django.db.models.functions import Concat, Lower
from django.utils import timezone
from django.utils.crypto import salted_hmac

from .db import adb
from .errors import Conflict, Forbidden, InvalidInput, NotFound, RateLimited, Unprocessable
from .events import REVOKED_DELETED, REVOKED_REMOVED, REVOKED_SIGNED_OUT
from .models import (
    API_TOKEN_CREDENTIAL_PREFIX,
    API_TOKEN_LOOKUP_LENGTH,
    IDEMPOTENCY_WINDOW,
    ApiToken,
    Conversation,
    IdempotencyKey,
    Message,
    ModelAccess,
    ModelPrice,
    UsageEntry,
    UsageLimit,
)
from .providers.catalog import ModelInfo, configured


def conversation_queryset_for_user(*, user):
    """Conversations ``user`` may see: those they own or are a member of, unless deleted.

    The one visibility rule of the product: every view, event stream and
    action goes through it. Anonymous or inactive users see nothing; a
    deleted conversation (kept for the admins until purged) nobody sees.
    """
    if not user.is_authenticated or not user.is_active:
        return Conversation.objects.none()
    membership = Conversation.members.through.objects.filter(conversation_id=OuterRef("pk"), user_id=user.pk)
    return Conversation.objects.filter(Q(owner_id=user.pk) | Exists(membership), deleted_at__isnull=True)


def _with_people(queryset):
    return queryset.select_related("owner").prefetch_related(
        Prefetch("members", queryset=Conversation.members.rel.model.objects.only("id", "username"))
    )


def conversation_list_for_user(*, user, title_contains: str = ""):
    """The user's conversations, owned and shared, most recently updated first (2 queries)."""
    queryset = conversation_queryset_for_user(user=user)
    if title_contains:
        queryset = queryset.filter(title__icontains=title_contains)
    return list(_with_people(queryset).order_by("-updated_at", "-created_at"))


# At most this many results; a search is for finding one conversation, not for reading all of them.
SEARCH_MAX_RESULTS = 50
# Characters of text around a match: about two lines of the search palette.
SNIPPET_CHARS = 120
# SQLite's trigram index answers only queries of at least 3 characters (one trigram).
_TRIGRAM = 3


def conversation_search_for_user(*, user, query: str, limit: int = SEARCH_MAX_RESULTS) -> list[tuple]:
    """(conversation, match) for the conversations ``user`` can see whose title or a message contains ``query``.

    Case-insensitive substring search, so a word inside Chinese text is
    found. Best first: title matches (most recently updated first), then
    conversations by their newest matching message. ``match`` is
    ``{"message_id": str | None (the title matched), "snippet", "highlights"}``
    (see ``search_snippet``). Titles and messages are found through the
    trigram indexes of migration 0010 (pg_trgm on PostgreSQL, FTS5 on
    SQLite). At most ``limit`` results; usually 5 queries (see
    ``_newest_matches``); ``query`` must be non-empty.
    """
    visible = conversation_queryset_for_user(user=user)
    by_title = visible.filter(title__icontains=query).order_by("-updated_at", "-created_at")
    titled = list(by_title.values_list("id", flat=True)[:limit])
    hits = _newest_matches(query, visible.exclude(pk__in=titled), limit - len(titled))
    contents = dict(Message.objects.filter(pk__in=hits.values()).values_list("id", "content")) if hits else {}
    found = {c.pk: c for c in _with_people(visible.filter(pk__in=[*titled, *hits]))} if titled or hits else {}
    results = []
    for conversation_id in titled:
        snippet, highlights = search_snippet(found[conversation_id].title, query)
        results.append((found[conversation_id], {"message_id": None, "snippet": snippet, "highlights": highlights}))
    for conversation_id, message_id in hits.items():
        snippet, highlights = search_snippet(contents[message_id], query)
        match = {"message_id": str(message_id), "snippet": snippet, "highlights": highlights}
        results.append((found[conversation_id], match))
    return results


def _newest_matches(query: str, conversations, wanted: int) -> dict:
    """{conversation id: id of its newest message containing ``query``}, newest first, for ``wanted`` at most.

    Reads the matching messages newest first, in batches growing fourfold,
    until ``wanted`` conversations are found (one batch unless a few
    conversations hold most matches). So the database may answer a common
    word by walking the newest messages (``message_created``) and a rare one
    from the trigram index, and never ranks every match.
    """
    matching = (
        _messages_containing(query)
        .filter(conversation__in=conversations)
        .order_by("-created_at", "-id")
        .values_list("conversation_id", "id")
    )
    found = {}
    start, size = 0, 4 * wanted
    while len(found) < wanted:
        rows = list(matching[start : start + size])
        for conversation_id, message_id in rows:
            if len(found) < wanted:
                found.setdefault(conversation_id, message_id)
        if len(rows) < size:
            break
        start, size = start + size, size * 4
    return found


def _messages_containing(query: str):
    """Messages whose content contains ``query``, through the database's trigram index."""
    if connection.vendor == "sqlite" and len(query) >= _TRIGRAM:
        # A quoted FTS5 string is a phrase of the query's trigrams: a substring match.
        phrase = '"' + query.replace('"', '""') + '"'
        indexed = RawSQL(
            "chat_message.rowid IN (SELECT rowid FROM chat_message_fts WHERE chat_message_fts MATCH %s)",
            (phrase,),
            output_field=BooleanField(),
        )
        return Message.objects.alias(indexed=indexed).filter(indexed=True)
    # PostgreSQL: icontains is UPPER(content) LIKE UPPER('%q%'), what the GIN index holds. SQLite,
    # under 3 characters: a scan.
    return Message.objects.filter(content__icontains=query)


def search_snippet(text: str, query: str, *, width: int = SNIPPET_CHARS) -> tuple[str, list[list[int]]]:
    """About ``width`` characters of ``text`` around the first match of ``query``, and where it matches.

    Whitespace becomes single spaces one for one, "…" marks a cut end.
    ``highlights`` are ``[start, end)`` offsets into the snippet in UTF-16
    code units, as JavaScript indexes strings, so a client highlights by
    slicing the text it escapes; the server never sends markup.
    """
    pattern = re.compile(re.escape(query), re.IGNORECASE)
    found = pattern.search(text)
    start, end = found.span() if found else (0, 0)
    # A third of the room before the match, the rest after it.
    begin = max(0, start - max(0, width - (end - start)) // 3)
    stop = min(len(text), max(begin + width, end))
    begin = max(0, min(begin, stop - width))
    prefix, suffix = ("…" if begin > 0 else ""), ("…" if stop < len(text) else "")
    snippet = prefix + re.sub(r"\s", " ", text[begin:stop]) + suffix
    highlights = []
    for hit in pattern.finditer(snippet):
        highlights.append([_utf16_length(snippet[: hit.start()]), _utf16_length(snippet[: hit.end()])])
    return snippet, highlights


def _utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _parse_uuid(value) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise NotFound("No such conversation.", code="conversation_not_found") from None


def conversation_get_for_user(*, user, conversation_id):
    """The conversation with owner and members loaded, if ``user`` may see it.

    Raises NotFound otherwise (also for a malformed id), never revealing that
    it exists. Ownership for owner-only actions is checked by the services.
    """
    conversation_id = _parse_uuid(conversation_id)
    queryset = conversation_queryset_for_user(user=user)
    try:
        return _with_people(queryset).get(pk=conversation_id)
    except Conversation.DoesNotExist:
        raise NotFound("No such conversation.", code="conversation_not_found") from None


aconversation_get_for_user = adb(conversation_get_for_user)


def conversation_is_visible(*, user, conversation_id) -> bool:
    """Whether ``user`` may (still) see the conversation (1 query)."""
    return conversation_queryset_for_user(user=user).filter(pk=conversation_id).exists()


aconversation_is_visible = adb(conversation_is_visible)


def session_user(*, session_key: str | None):
    """The active user signed in with ``session_key`` right now, or None.

    Read from the session store itself, never from a cached user: None once
    the session was signed out or expired, the user deactivated or deleted,
    or their password changed (Django's session auth hash no longer matches).
    """
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = auth.get_user(SimpleNamespace(session=store))
    return user if user.is_authenticated else None


def _stream_user(session_key: str | None):
    """The active user a stream's credential (a session key, or ``token:<id>``) stands for now, or None."""
    if session_key and session_key.startswith(API_TOKEN_CREDENTIAL_PREFIX):
        return api_token_user(token_id=session_key.removeprefix(API_TOKEN_CREDENTIAL_PREFIX))
    return session_user(session_key=session_key)


def stream_access_lost(*, session_key: str | None, user_id, conversation_id=None) -> str | None:
    """Why an event stream opened by ``user_id`` with ``session_key`` must end now, or None if it may go on.

    ``session_key`` is the stream's credential: a session key, or
    ``token:<id>`` for a stream opened with an API token (``ApiToken.stream_credential``).
    The reason is an ``access.revoked`` reason: signed out (the session or
    token is no longer valid), deleted, or removed (the one visibility rule
    says no). 2 to 4 queries.
    """
    user = _stream_user(session_key)
    if user is None or user.pk != user_id:
        return REVOKED_SIGNED_OUT
    if conversation_id is None or conversation_is_visible(user=user, conversation_id=conversation_id):
        return None
    # Deleted: the row is gone (purged) or only kept for the admins (soft-deleted).
    kept = Conversation.objects.filter(pk=conversation_id, deleted_at__isnull=True).exists()
    return REVOKED_REMOVED if kept else REVOKED_DELETED


astream_access_lost = adb(stream_access_lost)


def stream_access_lost_many(
    *, session_key: str | None, user_id, conversation_ids, followed: bool = False
) -> tuple[str | None, dict]:
    """For a stream following several conversations: why it must end (None: it may go on), and per conversation
    it may no longer read, its ``access.revoked`` reason.

    The one visibility rule decides; a conversation not visible is
    ``deleted`` when it is kept deleted and the user owns it or was a member,
    else ``removed``: a listed id never tells whether someone else's
    conversation exists. ``followed``: the stream has been reading these
    (each was visible), so one whose row is gone was purged and is
    ``deleted``, as ``stream_access_lost`` says; that tells the user nothing
    new. 2 or 3 queries.
    """
    user = _stream_user(session_key)
    if user is None or user.pk != user_id:
        return REVOKED_SIGNED_OUT, {}
    ids = [str(conversation_id) for conversation_id in conversation_ids]
    if not ids:
        return None, {}
    visible = {
        str(pk) for pk in conversation_queryset_for_user(user=user).filter(pk__in=ids).values_list("pk", flat=True)
    }
    missing = [conversation_id for conversation_id in ids if conversation_id not in visible]
    if not missing:
        return None, {}
    membership = Conversation.members.through.objects.filter(conversation_id=OuterRef("pk"), user_id=user.pk)
    rows = (
        Conversation.objects.filter(pk__in=missing)
        .annotate(theirs=Q(owner_id=user.pk) | Exists(membership))
        .values_list("pk", "deleted_at", "theirs")
    )
    # Kept: deleted when it is kept deleted and theirs. Gone: deleted only for a stream that followed it.
    deleted = {str(pk): deleted_at is not None and theirs for pk, deleted_at, theirs in rows}
    return None, {c: REVOKED_DELETED if deleted.get(c, followed) else REVOKED_REMOVED for c in missing}


astream_access_lost_many = adb(stream_access_lost_many)


def api_token_hash(secret: str) -> str:
    """The keyed hash stored for an API token's ``secret``: HMAC-SHA256 under a key derived from SECRET_KEY."""
    return salted_hmac("chat.ApiToken", secret, algorithm="sha256").hexdigest()


def _live_api_tokens(now=None):
    now = now or timezone.now()
    return ApiToken.objects.filter(revoked_at__isnull=True, user__is_active=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )


def api_token_authenticate(*, secret: str) -> ApiToken | None:
    """The live token whose secret is ``secret``, its user loaded, or None (1 query).

    None for an unknown, revoked or expired token or an inactive user. The
    stored hashes are compared in constant time (``hmac.compare_digest``),
    and the hash is computed and compared whether or not a row was found.
    """
    digest = api_token_hash(secret)
    # Normally one row: the lookup is 9 random characters of the secret.
    candidates = list(_live_api_tokens().filter(lookup=secret[:API_TOKEN_LOOKUP_LENGTH]).select_related("user"))
    found = [token for token in candidates if hmac.compare_digest(token.secret_hash, digest)]
    if not candidates:
        hmac.compare_digest(_NO_TOKEN_HASH, digest)
    return found[0] if found else None


# Compared against when no row matched, so that path does the same work.
_NO_TOKEN_HASH = "0" * 64


def api_token_user(*, token_id):
    """The active user of the live (not revoked, not expired) token ``token_id``, or None (1 query)."""
    token = _live_api_tokens().filter(pk=token_id).select_related("user").first() if str(token_id).isdigit() else None
    return token.user if token is not None else None


def api_token_get_for_user(*, user, token_id) -> ApiToken:
    """``user``'s own token ``token_id`` if not revoked, else NotFound (also another user's or a malformed id)."""
    token = None
    if str(token_id).isdigit():
        token = ApiToken.objects.filter(user=user, pk=token_id, revoked_at__isnull=True).select_related("user").first()
    if token is None:
        raise NotFound("No such API token.", code="token_not_found")
    return token


def api_token_list_for_user(*, user) -> list[ApiToken]:
    """``user``'s tokens that are not revoked (expired ones included, marked by their date), newest first."""
    return list(ApiToken.objects.filter(user=user, revoked_at__isnull=True).order_by("-created_at", "-id"))


def message_list(*, conversation):
    """The conversation's messages, oldest first, authors loaded (1 query)."""
    return list(
        Message.objects.filter(conversation=conversation)
        .select_related("author", "stopped_by")
        .order_by("created_at", "id")
    )


def message_get(*, conversation, message_id):
    """One message of a conversation the caller may already see, or NotFound."""
    try:
        message_id = uuid.UUID(str(message_id))
        return Message.objects.select_related("author", "stopped_by").get(pk=message_id, conversation=conversation)
    except (ValueError, Message.DoesNotExist):
        raise NotFound("No such message in this conversation.", code="message_not_found") from None


def message_history_for_generation(*, conversation, before_message) -> list[tuple[str, str]]:
    """(role, content) pairs sent upstream for a reply, oldest first (1 query).

    The ancestors of the placeholder ``before_message`` (its parent, the
    parent's parent, up to the root) that are complete or cancelled and not
    empty: sibling replies and other branches are never sent. Trimmed from
    the oldest so their content fits ``CHAT_HISTORY_MAX_CHARS``; the newest
    message always goes.
    """
    return _history(conversation, before_message.parent_id)


def message_history_for_post(*, conversation, parent, content: str) -> list[tuple[str, str]]:
    """The history a reply to a new user message will be sent, before either is stored (1 query; none for a root).

    What ``message_history_for_generation`` returns once the message with
    ``content`` is stored under ``parent`` (a message, or None for a new root)
    and its reply's placeholder under it: ``parent``'s ancestry, then it.
    """
    return _history(conversation, None if parent is None else parent.pk, newest=(Message.Role.USER.value, content))


def _history(conversation, parent_id, newest=None) -> list[tuple[str, str]]:
    # One query for the conversation's tree, walked here: simpler than a recursive CTE on both databases.
    by_id = {}
    if parent_id is not None:
        rows = Message.objects.filter(conversation=conversation).values_list(
            "id", "parent_id", "role", "status", "content"
        )
        by_id = {row[0]: row for row in rows}
    sent = {Message.Status.COMPLETE, Message.Status.CANCELLED}
    budget = settings.CHAT_HISTORY_MAX_CHARS
    kept = []
    node = by_id.get(parent_id)
    if newest is not None:
        role, content = newest
        node = (None, parent_id, role, Message.Status.COMPLETE, content)
    while node is not None:
        _, parent_id, role, status, content = node
        node = by_id.get(parent_id)
        if status not in sent or not content:
            continue
        if kept and len(content) > budget:
            break
        kept.append((role, content))
        budget -= len(content)
    kept.reverse()
    return kept


def message_parent_for_post(*, conversation, parent_id) -> Message | None:
    """The message a new user message will follow: ``parent_id``'s message, or None for a new root.

    Raises InvalidInput (``invalid_parent``) unless ``parent_id`` is None or
    the id of an assistant reply of ``conversation``: a user message follows
    a reply (posting under an earlier reply is edit-and-resend, a new branch).
    """
    if parent_id is None:
        return None
    try:
        return Message.objects.get(pk=uuid.UUID(str(parent_id)), conversation=conversation, role=Message.Role.ASSISTANT)
    except (ValueError, Message.DoesNotExist):
        raise InvalidInput(
            "parent must be the id of an assistant reply in this conversation, or null to start a new thread.",
            code="invalid_parent",
        ) from None


def message_latest(*, conversation) -> Message | None:
    """The conversation's newest message by (created_at, id): a post's parent by default."""
    return Message.objects.filter(conversation=conversation).order_by("-created_at", "-id").first()


def message_streaming_list(*, older_than_seconds: float = 0) -> list[tuple]:
    """(id, conversation id) of messages marked streaming, created at least ``older_than_seconds`` ago (the reaper's
    query)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    return list(
        Message.objects.filter(status=Message.Status.STREAMING, created_at__lte=cutoff).values_list(
            "id", "conversation_id"
        )
    )


def user_limits(*, user) -> dict:
    """The user's effective limits: their overrides, else the settings' defaults (0 = unlimited).

    ``monthly_cost_budget`` (in CHAT_CURRENCY) has no team default: None or 0 = none.
    """
    limits = {
        "daily_token_quota": settings.CHAT_DAILY_TOKEN_QUOTA,
        "messages_per_minute": settings.CHAT_MESSAGES_PER_MINUTE,
        "max_open_streams": settings.CHAT_MAX_STREAMS_PER_USER,
        "monthly_token_budget": settings.CHAT_MONTHLY_TOKEN_BUDGET,
        "monthly_cost_budget": None,
    }
    override = UsageLimit.objects.filter(user_id=user.pk).first()
    if override is not None:
        for name in limits:
            if getattr(override, name) is not None:
                limits[name] = getattr(override, name)
    return limits


def _money(amount: Decimal) -> str:
    # Two places at least (12.50), more when a small budget needs them (0.001).
    places = max(2, -amount.normalize().as_tuple().exponent)
    return f"{amount:,.{places}f}"


def _wait(seconds: int) -> str:
    """A wait as a person reads it: "3 d 4 h", "5 h 16 min", "42 min", "under a minute"."""
    minutes = -(-seconds // 60)  # rounded up: "in 0 min" would be wrong
    days, rest = divmod(minutes, 1440)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min" if seconds >= 60 else "under a minute"


def message_post_check(*, conversation, author, per_minute: int) -> None:
    """Raise what storing a new reply in ``conversation`` would: Conflict while one streams there, RateLimited when
    ``author`` asked for ``per_minute`` replies in the last minute (0: no limit). 1 or 2 queries, no lock.

    A post checks this before its upstream request goes out, so a post that
    storing will refuse costs the provider nothing; ``services.message_submit``
    and ``message_regenerate`` decide again under their lock.
    """
    if Message.objects.filter(conversation=conversation, status=Message.Status.STREAMING).exists():
        raise Conflict(
            "A reply is already being generated in this conversation. Wait for it or stop it first.",
            code="generation_in_progress",
        )
    message_rate_check(author=author, per_minute=per_minute)


def message_rate_check(*, author, per_minute: int) -> None:
    """Raise RateLimited (with Retry-After) if ``author`` asked for ``per_minute`` replies in the last minute (0: no
    limit); 1 query. A regenerate counts like a post: each asks for one reply."""
    if not per_minute:
        return
    window = timezone.now() - timedelta(minutes=1)
    recent = list(
        Message.objects.filter(requested_by_id=author.pk, role=Message.Role.ASSISTANT, created_at__gt=window)
        .order_by("-created_at")
        .values_list("created_at", flat=True)[:per_minute]
    )
    if len(recent) >= per_minute:
        retry = max(1, int((recent[-1] - window).total_seconds()) + 1)
        raise RateLimited(
            f"You can send {per_minute} {'message' if per_minute == 1 else 'messages'} a minute."
            f" Try again in {retry} s.",
            code="rate_limited",
            retry_after=retry,
        )


def message_allowance_check(*, user, limits: dict | None = None) -> None:
    """Raise RateLimited (with Retry-After) if ``user``'s monthly budget or daily token quota is spent.

    Reads the usage ledger (``UsageEntry``), so deleting a conversation gives
    nothing back and every process agrees: one query for the tokens since
    midnight UTC, the month's tokens and the month's cost in CHAT_CURRENCY
    (a cost budget compares only rows in that currency). The per-minute
    message limit is taken atomically with the insert (``services.message_submit``).
    ``limits``: ``user_limits(user=user)`` when the caller has read them already.
    """
    limits = limits or user_limits(user=user)
    quota, token_budget, cost_budget = (
        limits["daily_token_quota"],
        limits["monthly_token_budget"],
        limits["monthly_cost_budget"],
    )
    if not quota and not token_budget and not cost_budget:
        return
    now = timezone.now()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = midnight.replace(day=1)
    # Today's midnight is never before the month's start: one scan of the month answers both.
    used = UsageEntry.objects.filter(requested_by_id=user.pk, created_at__gte=month_start).aggregate(
        today=Sum("total_tokens", filter=Q(created_at__gte=midnight)),
        month=Sum("total_tokens"),
        cost=Sum("cost", filter=Q(currency=settings.CHAT_CURRENCY)),
    )
    today, month, cost = used["today"] or 0, used["month"] or 0, used["cost"] or Decimal(0)
    over_tokens = bool(token_budget) and month >= token_budget
    # 0 means none, as for every other limit.
    over_cost = bool(cost_budget) and cost >= cost_budget
    if over_tokens or over_cost:
        next_month = (month_start + timedelta(days=32)).replace(day=1)
        retry = int((next_month - now).total_seconds()) + 1
        spent = (
            f"{month:,} of your {token_budget:,} tokens"
            if over_tokens
            else f"{_money(cost)} of your {_money(cost_budget)} {settings.CHAT_CURRENCY}"
        )
        raise RateLimited(
            f"You have used {spent} for this month. The budget resets on {next_month:%Y-%m-%d} "
            f"at 00:00 UTC, in {_wait(retry)}; an administrator can raise it.",
            code="budget_exceeded",
            retry_after=retry,
        )
    if quota and today >= quota:
        retry = int((midnight + timedelta(days=1) - now).total_seconds()) + 1
        raise RateLimited(
            f"You have used today's {quota:,} tokens ({today:,} so far). "
            f"Your quota resets at midnight UTC, in {_wait(retry)}; an administrator can raise it.",
            code="quota_exceeded",
            retry_after=retry,
        )


def model_price_on(*, model: str, day: date) -> ModelPrice | None:
    """The price of ``model`` in force on ``day``: the one with the latest ``valid_from`` not after it (1 query)."""
    return ModelPrice.objects.filter(model=model, valid_from__lte=day).order_by("-valid_from").first()


def usage_cost(*, price: ModelPrice | None, prompt_tokens: int, completion_tokens: int) -> Decimal | None:
    """What the tokens cost at ``price`` (per million, input and output), to the ledger's 8 places; None without one."""
    if price is None:
        return None
    cost = (prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million) / 1_000_000
    return cost.quantize(Decimal("0.00000001"))


def idempotent_post(*, user, key: str, request_hash: str):
    """The (user message, reply) that ``user``'s post with ``key`` made in the last 24 h, or None.

    Raises Unprocessable (``idempotency_key_reused``) when that post had
    another body or went elsewhere (``request_hash`` differs).
    """
    record = (
        IdempotencyKey.objects.filter(user=user, key=key, created_at__gte=timezone.now() - IDEMPOTENCY_WINDOW)
        .select_related("user_message__author", "assistant_message__author")
        .first()
    )
    if record is None or record.user_message is None or record.assistant_message is None:
        return None
    if record.request_hash != request_hash:
        raise Unprocessable(
            "This Idempotency-Key was already used for a different request. Use a new key for a new message.",
            code="idempotency_key_reused",
        )
    return record.user_message, record.assistant_message


def model_list_for_user(*, user) -> list[ModelInfo]:
    """The configured models ``user`` may use, in the catalog's order (the first is their default); 1 query.

    The one rule (``ModelAccess``): a model without an access row is open to
    everyone; one with a row is for the members of its groups, and for superusers.
    """
    models = list(configured().models.values())
    if user.is_superuser:
        return models
    restricted = ModelAccess.objects.annotate(
        allowed=Exists(ModelAccess.groups.through.objects.filter(modelaccess=OuterRef("pk"), group__user=user))
    )
    closed = {row.model for row in restricted.only("model") if not row.allowed}
    return [model for model in models if model.id not in closed]


def model_check_for_user(*, user, model_id: str) -> ModelInfo:
    """The model ``model_id`` if ``user`` may use it (1 query).

    Raises InvalidInput (``unknown_model``) when no provider serves it, and
    Forbidden (``model_not_allowed``) when ``model_list_for_user`` leaves it out.
    """
    catalog = configured()
    model = catalog.model(model_id)
    if model is None:
        offered = ", ".join(m.id for m in model_list_for_user(user=user)) or "none"
        raise InvalidInput(f"The model {model_id!r} is not available; choose one of {offered}.", code="unknown_model")
    if model not in model_list_for_user(user=user):
        raise Forbidden(f"You may not use the model {model_id!r}; ask an admin for access.", code="model_not_allowed")
    return model


# The share dialog's people picker. Two characters at least, 20 names at most:
# enough to find a teammate as one types, too little to page through the
# whole directory one letter at a time.
USER_SEARCH_MIN_CHARS = 2
USER_SEARCH_MAX_RESULTS = 20


def user_search(*, prefix: str, limit: int = USER_SEARCH_MAX_RESULTS) -> list[tuple[str, str]]:
    """(username, full name) of up to ``limit`` active users whose username, first or last name or full
    name starts with ``prefix``, case-insensitively; an exact username first, then by username (1 query).

    Returns nothing for a prefix shorter than USER_SEARCH_MIN_CHARS. Reads no
    email address and lists no inactive account.
    """
    prefix = prefix.strip()
    if len(prefix) < USER_SEARCH_MIN_CHARS:
        return []
    User = auth.get_user_model()
    full_name = Concat("first_name", Value(" "), "last_name", output_field=CharField())
    rows = (
        User.objects.filter(is_active=True)
        .annotate(full_name=full_name, exact=Case(When(username__iexact=prefix, then=0), default=1))
        .filter(
            Q(username__istartswith=prefix)
            | Q(first_name__istartswith=prefix)
            | Q(last_name__istartswith=prefix)
            | Q(full_name__istartswith=prefix)
        )
        .order_by("exact", Lower("username"))
        .values_list("username", "first_name", "last_name")[:limit]
    )
    return [(username, f"{first} {last}".strip()) for username, first, last in rows]


def usage_today_for_user(*, user) -> dict:
    """Tokens ``user`` asked for since midnight UTC against their daily quota (1 + limit queries).

    ``{"tokens", "quota" (None: no quota), "replies", "resets_at"}``; read from
    the usage ledger, as ``message_allowance_check`` counts.
    """
    now = timezone.now()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    used = UsageEntry.objects.filter(requested_by_id=user.pk, created_at__gte=midnight).aggregate(
        tokens=Sum("total_tokens"), replies=Count("pk")
    )
    quota = user_limits(user=user)["daily_token_quota"] or None
    return {
        "tokens": used["tokens"] or 0,
        "quota": quota,
        "replies": used["replies"],
        "resets_at": midnight + timedelta(days=1),
    }
