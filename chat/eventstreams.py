"""The event streams: a conversation's live events, and the answer of a streaming post.

Every stream runs through one loop, ``_event_stream``: it re-checks access
with the one visibility rule, sends heartbeats, frees its stream slot and
always ends after an error, a lost access or a final event it waits for.
"""

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
from .fanout import HEARTBEAT, AccessCheck, Resync, get_hub, stream_slot_ttl
from .http import api_view
from .serializers import message_to_dict

logger = logging.getLogger(__name__)

FINAL_TYPES = set(FINAL_EVENTS.values())

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# A stream re-checks its viewer's session and membership every this many
# heartbeats, in case an access.revoked signal was lost (Redis restarting).
ACCESS_RECHECK_HEARTBEATS = 2


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


@api_view("GET")
async def events(request, user, conversation_id):
    """GET a conversation's event stream: snapshots of streaming replies (or the log after
    ``Last-Event-ID``, or ``resync`` when that is gone), then live events until the viewer leaves or loses access.
    """
    conversation = await selectors.aconversation_get_for_user(user=user, conversation_id=conversation_id)
    conversation_id = str(conversation.id)
    last_event_id = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id") or None
    if last_event_id is not None:
        try:
            parse_id(last_event_id)
        except ValueError:
            raise InvalidInput("Last-Event-ID is not an id this server gave out.", code="invalid_event_id") from None
    limits = await adb(selectors.user_limits)(user=user)
    slot = await _open_stream_slot(user, limits["max_open_streams"])
    hub = get_hub()
    viewer = None
    try:
        viewer = await hub.join(conversation_id, user_id=user.pk)
        log = get_event_log()
        backlog, prelude = [], b""
        if last_event_id is None:
            last_id, states = await log.cut(conversation_id)
            snapshots = []
            for state in states:
                message = json.loads(state.message)
                message.update(content=state.content, reasoning=state.reasoning)
                snapshots.append(frame(MESSAGE_SNAPSHOT, {"message": message, "seq": state.seq}, last_id))
            prelude = b"".join(snapshots)
        else:
            backlog = await log.after(conversation_id, last_event_id)
            if backlog is None:
                backlog, last_id = [], await log.tail(conversation_id)
                prelude = frame(RESYNC, {}, last_id)
            else:
                last_id = last_event_id
    except BaseException:
        await _leave(viewer, slot)
        raise
    access = StreamAccess(request, user, conversation_id)
    return _sse_response(
        _event_stream(viewer, access, slot, last_id=last_id, prelude=prelude, backlog=backlog), request
    )


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


async def _event_stream(viewer, access, slot, *, last_id, prelude=b"", backlog=(), wanted=None, final_id=None):
    """The frames of one event stream, live from ``last_id``: one chunk per batch the queue held.

    Sends ``prelude`` (snapshots, a resync), then ``backlog``, then what the
    feed delivers: every logged event after ``last_id`` about a message in
    ``wanted`` (every event when None), and a heartbeat each time the
    process's timer ticks. Ends after the final event of message
    ``final_id`` (when given); with ``access.revoked`` as the last event when
    the viewer loses access (signed out, removed, deleted); when the viewer
    falls too far behind (the client resumes from the log); or on any error,
    so a broken stream never stays open and silent. Always leaves the feed
    and frees the stream slot.
    """
    viewer.started = True
    viewer.slot = slot
    last_key = parse_id(last_id)
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
            reason = None
            for item in items:
                if isinstance(item, Event):
                    if item.key <= last_key:
                        continue
                    last_id, last_key = item.id, item.key
                    if item.type == CONVERSATION_DELETED:
                        reason = REVOKED_DELETED
                        break
                    # Membership may have changed: ask the one visibility rule again.
                    if item.type == CONVERSATION_UPDATED and (reason := await access.lost()):
                        break
                    if wanted is not None and item.message_id not in wanted:
                        continue
                    chunk.append(item.frame())
                    if item.final and item.message_id == final_id:
                        yield b"".join(chunk)
                        return
                elif item is HEARTBEAT:
                    chunk.append(HEARTBEAT_FRAME)
                    heartbeats += 1
                    if heartbeats % ACCESS_RECHECK_HEARTBEATS == 0 and (reason := await access.lost()):
                        break
                elif isinstance(item, Resync):
                    last_id, last_key = item.id, parse_id(item.id)
                    chunk.append(frame(RESYNC, {}, item.id))
                elif isinstance(item, AccessCheck) and (reason := await access.lost_after(item)):
                    break
            items = []
            if reason is not None:
                chunk.append(frame(ACCESS_REVOKED, {"reason": reason}, last_id))
                yield b"".join(chunk)
                return
            if chunk:
                yield b"".join(chunk)
    except Exception:
        # The client reconnects (EventSource) and resumes from the log.
        logger.exception("event stream of conversation %s ended by an error", viewer.feed.conversation_id)
    finally:
        viewer.feed.hub.leave(viewer)
        await _release_slot(slot)


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
