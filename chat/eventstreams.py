"""The event streams: a conversation's live events, the user's own stream (optionally multiplexed with
conversations' streams), and the answer of a streaming post.

Every stream runs through one loop, ``_event_stream``: it follows one log or
several (``Position``), re-checks access with the one visibility rule, sends
heartbeats, frees its stream slot and always ends after an error, a lost
access or a final event it waits for.
"""

import asyncio
import json
import logging
import uuid

from django.conf import settings

from . import selectors, transport
from .db import adb
from .errors import InvalidInput, RateLimited
from .eventlog import get_event_log
from .events import (
    ACCESS_REVOKED,
    CONVERSATION_DELETED,
    CONVERSATION_UPDATED,
    FINAL_EVENTS,
    MESSAGE_CREATED,
    MESSAGE_SNAPSHOT,
    PRESENCE,
    RESYNC,
    REVOKED_DELETED,
    REVOKED_SIGNED_OUT,
    Event,
    frame,
    parse_id,
    retry_frame,
)
from .events import (
    HEARTBEAT as HEARTBEAT_FRAME,
)
from .fanout import HEARTBEAT, AccessCheck, Resync, get_hub, stream_slot_ttl, user_log_key
from .http import api_view
from .serializers import message_to_dict

logger = logging.getLogger(__name__)

FINAL_TYPES = set(FINAL_EVENTS.values())

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# A stream re-checks its viewer's session and membership every this many
# heartbeats, in case an access.revoked signal was lost (Redis restarting).
ACCESS_RECHECK_HEARTBEATS = 2
# The most conversations one multiplexed stream follows (besides the user's own log): a browser's open tabs.
MAX_STREAM_CONVERSATIONS = 16


class StreamAccess:
    """Who an event stream serves, and the credential it was opened with, to re-check at any time."""

    __slots__ = ("session_key", "user_id", "conversation_id")

    def __init__(self, request, user, conversation_id):
        token = getattr(request, "api_token", None)
        self.session_key = token.stream_credential if token is not None else request.session.session_key
        self.user_id = user.pk
        self.conversation_id = conversation_id

    async def lost(self) -> str | None:
        """The ``access.revoked`` reason if the viewer may no longer read this stream, else None."""
        return await selectors.astream_access_lost(
            session_key=self.session_key, user_id=self.user_id, conversation_id=self.conversation_id
        )

    async def lost_after(self, check: AccessCheck) -> str | None:
        """The reason after an ``AccessCheck``: one ended session is decided without the database."""
        if check.ended_session is not None:
            return REVOKED_SIGNED_OUT if check.ended_session == self.session_key else None
        return await self.lost()

    async def lost_many(self, conversation_ids, *, followed=False) -> tuple[str | None, dict[str, str]]:
        """Why the whole stream must end (None: it may go on), and the reason per conversation it may no longer read.

        ``followed``: conversations the stream has been reading (see ``selectors.stream_access_lost_many``).
        """
        return await selectors.astream_access_lost_many(
            session_key=self.session_key, user_id=self.user_id, conversation_ids=conversation_ids, followed=followed
        )


class Part:
    """One log an event stream follows (a conversation's, or the user's own) and the id it has reached there.

    ``labelled``: the stream carries several logs, so a conversation's events
    name it as the first key of their data. ``presence``: its ``presence``
    events are sent. ``gone``: access to it was lost; the stream goes on without it.
    """

    __slots__ = ("log_key", "conversation_id", "last_id", "last_key", "label", "presence", "gone")

    def __init__(self, log_key: str, *, conversation_id=None, presence=False, labelled=False):
        self.log_key = log_key
        self.conversation_id = conversation_id
        self.last_id = ""
        self.last_key = (0, 0)
        # Spliced in front of a logged event's data: the bytes as logged, never re-serialised.
        self.label = f'{{"conversation":"{conversation_id}",' if labelled and conversation_id else None
        self.presence = presence
        self.gone = False

    def move(self, event_id: str) -> None:
        self.last_id, self.last_key = event_id, parse_id(event_id)

    def data(self, payload: dict) -> dict:
        """An event's data as this part sends it (named after its conversation when labelled)."""
        return {"conversation": self.conversation_id, **payload} if self.label else payload


class Position:
    """Where a stream stands in each log it follows; an event's id is the vector of every part's id, joined by ','.

    With one part (a conversation's stream, the plain user stream) that is
    the log's own id, and logged events go out as encoded once for every viewer.
    """

    __slots__ = ("parts", "by_log", "single", "multiplexed")

    def __init__(self, parts: list[Part]):
        self.parts = parts
        self.by_log = {part.log_key: part for part in parts}
        self.multiplexed = len(parts) > 1
        self.single = None if self.multiplexed else parts[0]

    def id(self) -> str:
        return ",".join(part.last_id for part in self.parts)

    def frame(self, part: Part, event: Event) -> bytes:
        """A logged event of ``part`` with the stream's id (labelled with its conversation when multiplexed)."""
        if self.single is not None:
            return event.frame()
        data = event.data
        if part.label is not None:
            data = part.label + data[1:] if data != "{}" else part.label[:-1] + "}"
        return f"id: {self.id()}\nevent: {event.type}\ndata: {data}\n\n".encode()

    def frame_of(self, event_type: str, part: Part, payload: dict) -> bytes:
        """An event that is not in the log (snapshot, resync, presence on connect, access.revoked) of ``part``."""
        return frame(event_type, part.data(payload), self.id())

    def live_conversations(self) -> list[str]:
        return [p.conversation_id for p in self.parts if p.conversation_id is not None and not p.gone]


class _Greeting:
    """The ``presence`` sent to a stream on connect (after its snapshots or replay), to it alone."""

    __slots__ = ("part", "viewers")

    def __init__(self, part: Part, viewers: list[str]):
        self.part, self.viewers = part, viewers


@api_view("GET")
async def events(request, user, conversation_id):
    """GET a conversation's event stream: snapshots of streaming replies (or the log after
    ``Last-Event-ID``, or ``resync`` when that is gone), then live events until the viewer leaves or loses access.

    The viewer is counted among the conversation's viewers and gets
    ``presence`` (on connect, then on every change), unless ``?presence=0``.
    """
    conversation = await selectors.aconversation_get_for_user(user=user, conversation_id=conversation_id)
    conversation_id = str(conversation.id)
    (last_event_id,) = _cursors(request, 1)
    wants_presence = _presence_flag(request)
    limits = await adb(selectors.user_limits)(user=user)
    slot = await _open_stream_slot(user, limits["max_open_streams"])
    hub = get_hub()
    viewer = None
    part = Part(conversation_id, conversation_id=conversation_id, presence=wants_presence)
    try:
        viewer = await hub.join(conversation_id, user_id=user.pk)
        intro, backlog = await _open_part(part, last_event_id)
        if wants_presence:
            backlog.append(_Greeting(part, await hub.enter_presence(viewer, conversation_id, user.username)))
    except BaseException:
        await _leave(viewer, slot)
        raise
    position = Position([part])
    prelude = b"".join(position.frame_of(event_type, part, payload) for event_type, payload in intro)
    access = StreamAccess(request, user, conversation_id)
    return _sse_response(
        _event_stream(viewer, access, slot, position=position, prelude=prelude, backlog=backlog), request
    )


@api_view("GET")
async def user_events(request, user):
    """GET the user's own event stream: ``conversation.added`` / ``.removed`` / ``.updated`` for their list.

    With ``?conversations=<id>,...`` (at most MAX_STREAM_CONVERSATIONS) the
    same connection also carries those conversations' events, each naming
    its conversation; ids are vectors (the user log's id, then each
    conversation's, in the URL's order), and one lost conversation leaves
    the stream without ending it. One stream slot either way.
    """
    conversation_ids = _listed_conversations(request)
    cursors = _cursors(request, 1 + len(conversation_ids))
    limits = await adb(selectors.user_limits)(user=user)
    slot = await _open_stream_slot(user, limits["max_open_streams"])
    access = StreamAccess(request, user, None)
    labelled = bool(conversation_ids)
    parts = [Part(user_log_key(user.pk))]
    parts += [Part(c, conversation_id=c, presence=True, labelled=labelled) for c in conversation_ids]
    position = Position(parts)
    hub = get_hub()
    viewer = None
    prelude = []
    try:
        gone = {}
        if conversation_ids:
            _, gone = await access.lost_many(conversation_ids)
        live = [part for part in parts if part.conversation_id not in gone]
        viewer = await hub.join_logs([part.log_key for part in live], user_id=user.pk)
        opened = await asyncio.gather(*(_open_part(part, cursors[parts.index(part)]) for part in live))
        greetings = await asyncio.gather(
            *(hub.enter_presence(viewer, p.conversation_id, user.username) for p in live if p.presence)
        )
    except BaseException:
        await _leave(viewer, slot)
        raise
    for part, cursor in zip(parts, cursors, strict=True):
        if part.conversation_id in gone:
            part.gone = True
            if cursor:
                part.move(cursor)
    # A conversation listed but not readable is revoked at once; the stream goes on with the others.
    for part in parts:
        if part.gone:
            prelude.append(position.frame_of(ACCESS_REVOKED, part, {"reason": gone[part.conversation_id]}))
    for part, (intro, _) in zip(live, opened, strict=True):
        prelude += [position.frame_of(event_type, part, payload) for event_type, payload in intro]
    # An id with no event: the client has a resume point (its Last-Event-ID) even before the first event.
    prelude.append(f"id: {position.id()}\n\n".encode())
    backlog = []
    viewing = iter(greetings)
    for part, (_, events_after) in zip(live, opened, strict=True):
        backlog += events_after
        if part.presence:
            backlog.append(_Greeting(part, next(viewing)))
    return _sse_response(
        _event_stream(viewer, access, slot, position=position, prelude=b"".join(prelude), backlog=backlog), request
    )


def _cursors(request, count: int) -> list[str | None]:
    """The stream's ``Last-Event-ID`` (or ``?last_event_id=``): one id per log (``count``), empty ones None.

    None for each when there is none. 400 ``invalid_event_id`` for a wrong
    number of components or a malformed one.
    """
    raw = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id") or None
    if raw is None:
        return [None] * count
    components = raw.split(",")
    if len(components) != count:
        raise InvalidInput(
            f"Last-Event-ID has {len(components)} parts; this stream's ids have {count} (one per log it follows).",
            code="invalid_event_id",
        )
    for component in components:
        if component:
            try:
                parse_id(component)
            except ValueError:
                raise InvalidInput(
                    "Last-Event-ID is not an id this server gave out.", code="invalid_event_id"
                ) from None
    return [component or None for component in components]


def _listed_conversations(request) -> list[str]:
    """``?conversations=<id>,<id>,...``: their ids, in order; 400 ``invalid_conversations`` if malformed or too many."""
    raw = request.GET.get("conversations", "")
    if not raw:
        return []
    listed = raw.split(",")
    if len(listed) > MAX_STREAM_CONVERSATIONS:
        raise InvalidInput(
            f"A stream follows at most {MAX_STREAM_CONVERSATIONS} conversations; {len(listed)} were listed.",
            code="invalid_conversations",
        )
    ids = []
    for value in listed:
        try:
            ids.append(str(uuid.UUID(value)))
        except ValueError:
            raise InvalidInput(
                f"conversations must be conversation ids separated by commas; {value[:60]!r} is not one.",
                code="invalid_conversations",
            ) from None
    if len(set(ids)) != len(ids):
        raise InvalidInput("conversations lists a conversation twice.", code="invalid_conversations")
    return ids


def _presence_flag(request) -> bool:
    value = request.GET.get("presence", "")
    if value not in ("", "0", "1"):
        raise InvalidInput(
            "presence must be 1 (count me and send presence, the default) or 0 (neither).", code="invalid_input"
        )
    return value != "0"


async def _open_part(part: Part, cursor: str | None) -> tuple[list[tuple[str, dict]], list]:
    """Where ``part`` starts, set on it, and what comes first: ``(frames to send, logged events to replay)``.

    No cursor: a conversation's streaming messages as snapshots (as of the
    log's cut), the user's log from its tail. A cursor: the log after it, or
    ``resync`` from the tail when that is gone. Call after joining its feed.
    """
    log = get_event_log()
    if cursor is None:
        if part.conversation_id is None:
            part.move(await log.tail(part.log_key))
            return [], []
        last_id, states = await log.cut(part.log_key)
        part.move(last_id)
        snapshots = []
        for state in states:
            message = json.loads(state.message)
            message.update(content=state.content, reasoning=state.reasoning)
            snapshots.append((MESSAGE_SNAPSHOT, {"message": message, "seq": state.seq}))
        return snapshots, []
    backlog = await log.after(part.log_key, cursor)
    if backlog is None:
        part.move(await log.tail(part.log_key))
        return [(RESYNC, {})], []
    part.move(cursor)
    return [], backlog


class ReplyStream:
    """The event stream answering a streaming post or regenerate: that generation's events, ending after its final one.

    Opened before anything is stored: everything that needs Redis (a stream
    slot, the feed, the log's tail) happens first, so with Redis down the
    post is refused, never half-done.
    """

    def __init__(self, request, user, conversation_id, slot, viewer, last_id):
        self.request = request
        self.user = user
        self.conversation_id = conversation_id
        self.slot = slot
        self.viewer = viewer
        self.last_id = last_id

    @classmethod
    async def open(cls, request, user, conversation, limits) -> "ReplyStream":
        """Take one of ``user``'s stream slots and join the conversation's feed; raises holding neither."""
        slot = viewer = None
        try:
            slot = await _open_stream_slot(user, limits["max_open_streams"])
            viewer = await get_hub().join(conversation.id, user_id=user.pk)
            last_id = await get_event_log().tail(str(conversation.id))
        except BaseException:
            await _leave(viewer, slot)
            raise
        return cls(request, user, str(conversation.id), slot, viewer, last_id)

    async def abandon(self) -> None:
        """Leave the feed and free the slot: the post failed before it stored anything."""
        await _leave(self.viewer, self.slot)

    def response(self, user_message, assistant_message) -> transport.EventStreamResponse:
        """The stream of both messages' events from the tail read at ``open``, until the reply's final event."""
        ids = frozenset(str(m.id) for m in (user_message, assistant_message) if m is not None)
        access = StreamAccess(self.request, self.user, self.conversation_id)
        return _sse_response(
            _event_stream(
                self.viewer,
                access,
                self.slot,
                last_id=self.last_id,
                wanted=ids,
                final_id=str(assistant_message.id),
            ),
            self.request,
        )


async def _leave(viewer, slot) -> None:
    if viewer is not None:
        get_hub().leave(viewer)
    if slot is not None:
        await _release_slot(slot)


async def replay_stream(request, user, conversation, user_message, assistant_message) -> transport.EventStreamResponse:
    """The event stream answering a repeated streaming post or regenerate (same Idempotency-Key), creating nothing.

    The user's message (none for a regenerate), then the reply's snapshot and
    live events while it streams, or its final event if it has ended.
    """
    conversation_id = str(conversation.id)
    limits = await adb(selectors.user_limits)(user=user)
    slot = await _open_stream_slot(user, limits["max_open_streams"])
    viewer = None
    try:
        viewer = await get_hub().join(conversation_id, user_id=user.pk)
        last_id, states = await get_event_log().cut(conversation_id)
        state = next((s for s in states if s.message_id == str(assistant_message.id)), None)
        if state is None:
            # Ended (perhaps just now): the stored message is final.
            assistant_message = await adb(selectors.message_get)(
                conversation=conversation, message_id=assistant_message.id
            )
    except BaseException:
        await _leave(viewer, slot)
        raise
    prelude = b"" if user_message is None else frame(MESSAGE_CREATED, message_to_dict(user_message), last_id)
    if state is None:
        final = FINAL_EVENTS.get(assistant_message.status, MESSAGE_CREATED)
        prelude += frame(final, message_to_dict(assistant_message), last_id)
        get_hub().leave(viewer)
        await _release_slot(slot)
        return _sse_response(_frames(retry_frame(2000) + prelude), request)
    snapshot = json.loads(state.message)
    snapshot.update(content=state.content, reasoning=state.reasoning)
    prelude += frame(MESSAGE_SNAPSHOT, {"message": snapshot, "seq": state.seq}, last_id)
    access = StreamAccess(request, user, conversation_id)
    return _sse_response(
        _event_stream(
            viewer,
            access,
            slot,
            last_id=last_id,
            prelude=prelude,
            wanted=frozenset((str(assistant_message.id),)),
            final_id=str(assistant_message.id),
        ),
        request,
    )


async def _event_stream(
    viewer, access, slot, *, last_id=None, position=None, prelude=b"", backlog=(), wanted=None, final_id=None
):
    """The frames of one event stream, live from where ``position`` stands: one chunk per batch the queue held.

    ``position``: the logs it follows (default: the viewer's conversation,
    from ``last_id``). Sends ``prelude`` (snapshots, a resync), then
    ``backlog`` (logged events, and the presence on connect), then what the
    feeds deliver: every logged event after each part's id about a message
    in ``wanted`` (every event when None), and a heartbeat each time the
    process's timer ticks. Ends after the final event of message
    ``final_id`` (when given); with ``access.revoked`` as the last event when
    the viewer loses access (signed out; removed, deleted when it follows
    one conversation — a multiplexed stream drops that conversation with its
    own ``access.revoked`` and goes on); when the viewer falls too far behind
    (the client resumes from the log); or on any error, so a broken stream
    never stays open and silent. Always leaves the feeds and frees the stream slot.
    """
    if position is None:
        part = Part(viewer.feed.conversation_id, conversation_id=viewer.feed.conversation_id)
        part.move(last_id)
        position = Position([part])
    viewer.started = True
    viewer.slot = slot
    single, by_log, multiplexed = position.single, position.by_log, position.multiplexed
    heartbeats = 0
    try:
        yield retry_frame(2000) + prelude
        items = list(backlog)
        while True:
            if not items:
                items = await viewer.take()
            if viewer.overflowed:
                return
            chunk = []
            end = None
            for item in items:
                if isinstance(item, Event):
                    part = single or by_log.get(item.log_key)
                    if part is None or part.gone or item.key <= part.last_key:
                        continue
                    part.last_id, part.last_key = item.id, item.key
                    if part.conversation_id is not None:
                        kind = item.type
                        if kind == CONVERSATION_DELETED:
                            if single:
                                end = REVOKED_DELETED
                                break
                            chunk.append(_revoke(viewer, position, part, REVOKED_DELETED))
                            continue
                        if kind == CONVERSATION_UPDATED:
                            # Membership may have changed: ask the one visibility rule again.
                            end, lost = await _access_lost(position, access, part=part)
                            if end is not None:
                                break
                            if multiplexed:
                                # Not sent: the user's own log carries every conversation.updated.
                                chunk += [_revoke(viewer, position, p, reason) for p, reason in lost]
                                continue
                        elif kind == PRESENCE and not part.presence:
                            continue
                    if wanted is not None and item.message_id not in wanted:
                        continue
                    chunk.append(item.frame() if single else position.frame(part, item))
                    if item.final and item.message_id == final_id:
                        yield b"".join(chunk)
                        return
                elif item is HEARTBEAT:
                    chunk.append(HEARTBEAT_FRAME)
                    heartbeats += 1
                    if heartbeats % ACCESS_RECHECK_HEARTBEATS == 0:
                        end, lost = await _access_lost(position, access)
                        if end is not None:
                            break
                        chunk += [_revoke(viewer, position, p, reason) for p, reason in lost]
                elif isinstance(item, Resync):
                    part = single or by_log.get(item.log_key)
                    if part is not None and not part.gone:
                        part.move(item.id)
                        chunk.append(position.frame_of(RESYNC, part, {}))
                elif isinstance(item, AccessCheck):
                    end, lost = await _access_lost(position, access, check=item)
                    if end is not None:
                        break
                    chunk += [_revoke(viewer, position, p, reason) for p, reason in lost]
                elif isinstance(item, _Greeting):
                    chunk.append(position.frame_of(PRESENCE, item.part, {"viewers": item.viewers}))
            items = []
            if end is not None:
                chunk.append(frame(ACCESS_REVOKED, {"reason": end}, position.id()))
                yield b"".join(chunk)
                return
            if chunk:
                yield b"".join(chunk)
    except Exception:
        # The client reconnects (EventSource) and resumes from the log.
        logger.exception("event stream of %s ended by an error", viewer.feed.conversation_id)
    finally:
        viewer.feed.hub.leave(viewer)
        await _release_slot(slot)


async def _access_lost(position: Position, access, *, check=None, part=None) -> tuple[str | None, list]:
    """Why the stream must end now (None: it goes on), and the parts it loses: ``[(part, reason)]``.

    A stream of one log asks ``access`` as before (its one conversation's
    loss ends it); a multiplexed one checks its live conversations (or just
    ``part``) in one go, and only a user-wide loss ends it.
    """
    if not position.multiplexed:
        return await (access.lost() if check is None else access.lost_after(check)), []
    if check is not None and check.ended_session is not None:
        return (REVOKED_SIGNED_OUT if check.ended_session == access.session_key else None), []
    ids = position.live_conversations() if part is None else [part.conversation_id]
    reason, lost = await access.lost_many(ids, followed=True)
    return reason, [(position.by_log[conversation_id], why) for conversation_id, why in lost.items()]


def _revoke(viewer, position: Position, part: Part, reason: str) -> bytes:
    """Drop ``part`` from a multiplexed stream (it leaves that feed and its viewers): its ``access.revoked``."""
    part.gone = True
    viewer.feed.hub.detach(viewer, part.log_key)
    return position.frame_of(ACCESS_REVOKED, part, {"reason": reason})


async def _frames(data: bytes):
    yield data


def _sse_response(stream, request) -> transport.EventStreamResponse:
    # A client that stops reading is cut off before it costs this process more
    # than its budget in unsent bytes (daphne never makes a write wait).
    response = transport.EventStreamResponse(
        stream, scope=request.scope, budget=settings.CHAT_VIEWER_MAX_PENDING_BYTES, label=request.path
    )
    for name, value in SSE_HEADERS.items():
        response[name] = value
    return response


async def _open_stream_slot(user, limit: int) -> tuple:
    """Count one more open event stream for ``user``, or raise RateLimited over their cap (0: none)."""
    token = uuid.uuid4().hex
    if not await get_event_log().stream_open(user.pk, token, limit=limit, ttl=_stream_slot_ttl()):
        raise RateLimited(
            f"You already have {limit} event streams open, the most allowed. Close another tab and try again.",
            code="too_many_streams",
            retry_after=int(settings.CHAT_HEARTBEAT_SECONDS),
        )
    return (user.pk, token)


def _stream_slot_ttl() -> float:
    return stream_slot_ttl(settings.CHAT_HEARTBEAT_SECONDS)


async def _release_slot(slot) -> None:
    try:
        await get_event_log().stream_close(*slot)
    except Exception:
        logger.warning("could not release an event stream slot")
