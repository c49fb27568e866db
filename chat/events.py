"""Events of a conversation and their Server-Sent Events wire form. Standard library only.

An event's id is the id its conversation's event log gave it: ``"<ms>-<n>"``,
increasing within a conversation (a Redis Stream entry id, or the same shape
from the in-process log).
"""

from __future__ import annotations

import json
import re

MESSAGE_CREATED = "message.created"
MESSAGE_DELTA = "message.delta"
# The provider is busy (HTTP 429/503) before the first token: the reply is retried after ``delay`` s.
MESSAGE_RETRYING = "message.retrying"
MESSAGE_SNAPSHOT = "message.snapshot"
MESSAGE_COMPLETED = "message.completed"
MESSAGE_FAILED = "message.failed"
MESSAGE_CANCELLED = "message.cancelled"
MESSAGE_INTERRUPTED = "message.interrupted"
CONVERSATION_UPDATED = "conversation.updated"
# On a user's own stream (GET /api/events/): they gained access to a conversation, or lost it.
CONVERSATION_ADDED = "conversation.added"
CONVERSATION_REMOVED = "conversation.removed"
# Who is viewing a conversation: {"viewers": [username, ...]}, sorted, each person once.
PRESENCE = "presence"
RESYNC = "resync"
# The last event of a stream whose viewer lost access; the client does not reconnect.
ACCESS_REVOKED = "access.revoked"
REVOKED_REMOVED = "removed"
REVOKED_DELETED = "deleted"
REVOKED_SIGNED_OUT = "signed_out"
# Internal: logged so every stream sees it in order, never sent to a client.
CONVERSATION_DELETED = "conversation.deleted"

FINAL_EVENTS = {
    "complete": MESSAGE_COMPLETED,
    "failed": MESSAGE_FAILED,
    "cancelled": MESSAGE_CANCELLED,
    "interrupted": MESSAGE_INTERRUPTED,
}

# Every event a client may receive. The browser subscribes to exactly these: an
# event missing here would be dropped by every open tab without a sound.
CLIENT_EVENTS = (
    MESSAGE_CREATED,
    MESSAGE_DELTA,
    MESSAGE_RETRYING,
    MESSAGE_SNAPSHOT,
    MESSAGE_COMPLETED,
    MESSAGE_FAILED,
    MESSAGE_CANCELLED,
    MESSAGE_INTERRUPTED,
    CONVERSATION_UPDATED,
    CONVERSATION_ADDED,
    CONVERSATION_REMOVED,
    PRESENCE,
    RESYNC,
    ACCESS_REVOKED,
)
INTERNAL_EVENTS = (CONVERSATION_DELETED,)


def browser_names() -> dict:
    """The names the browser's code uses, for the page to carry as JSON (``chat-events``).

    ``events``: constant name -> event (``{"MESSAGE_DELTA": "message.delta", ...}``),
    every client event; ``final``: message status -> its final event;
    ``revoked``: the reasons ``access.revoked`` gives. static/chat/js/events.js
    reads it; no module there spells an event name itself.
    """
    names = {name: value for name, value in globals().items() if isinstance(value, str) and value in CLIENT_EVENTS}
    return {
        "events": names,
        "final": dict(FINAL_EVENTS),
        "revoked": {"REMOVED": REVOKED_REMOVED, "DELETED": REVOKED_DELETED, "SIGNED_OUT": REVOKED_SIGNED_OUT},
    }


HEARTBEAT = b": ping\n\n"


def retry_frame(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()


def dumps(data: dict) -> str:
    """Compact JSON on one line (JSON escapes newlines, so it fits one ``data:`` line)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


# ASCII digits only (str.isdigit() takes full-width ones); each part fits Redis's 64 bits.
_EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_MAX_PART = 2**64 - 1


def parse_id(event_id: str) -> tuple[int, int]:
    """``"<ms>-<n>"`` as a comparable pair; ValueError if malformed or out of Redis's range."""
    match = _EVENT_ID.fullmatch(event_id)
    if match is None:
        raise ValueError(f"not an event id: {event_id[:60]!r}")
    ms, n = int(match[1]), int(match[2])
    if ms > _MAX_PART or n > _MAX_PART:
        raise ValueError(f"not an event id: {event_id[:60]!r}")
    return ms, n


class Event:
    """One logged event: ``data`` is its JSON text; its wire frame is encoded once for every viewer.

    ``message_id``: the message the event is about (its ``message.created``,
    deltas and final event), None for conversation events; ``final``: it ends
    that message's stream; ``log_key``: the log it is in (a conversation's id,
    or ``user.<pk>``), which a stream following several logs routes by.
    Streams route by these fields, never by ``data``.
    """

    __slots__ = ("id", "type", "data", "prev", "message_id", "final", "log_key", "_key", "_frame")

    def __init__(
        self,
        id: str,
        type: str,
        data: str,
        prev: str = "0-0",
        message_id: str | None = None,
        final: bool = False,
        log_key: str | None = None,
    ):
        self.id, self.type, self.data, self.prev = id, type, data, prev
        self.message_id, self.final, self.log_key = message_id, final, log_key
        self._key = self._frame = None

    def __repr__(self):
        return f"Event({self.id!r}, {self.type!r})"

    def __eq__(self, other):
        return isinstance(other, Event) and self._fields() == other._fields()

    def _fields(self) -> tuple:
        return self.id, self.type, self.data, self.prev, self.message_id, self.final

    @property
    def key(self) -> tuple[int, int]:
        if self._key is None:
            self._key = parse_id(self.id)
        return self._key

    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = f"id: {self.id}\nevent: {self.type}\ndata: {self.data}\n\n".encode()
        return self._frame


def frame(event_type: str, data: dict, event_id: str | None = None) -> bytes:
    """An event that is not in the log (a snapshot, resync), encoded for the wire."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event_type}\ndata: {dumps(data)}\n\n".encode()
