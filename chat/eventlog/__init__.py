"""The per-conversation replay log: every event gets its id here, and resume reads from here.

With ``REDIS_URL`` the log is a Redis Stream per conversation (entry ids are
the SSE ids), shared by every process (``redis.py``); without it, the same
structure in this process (``memory.py``). Each entry also records the id
before it (``prev``), so a reader can tell a complete sequence from one with
a hole, and the log keeps the partial state of each streaming message so a
late joiner gets an exact snapshot. Appending also publishes the event live
to the processes that subscribed to its conversation (``EventLog.live``).
A user's own log (key ``user.<pk>``: their conversation list's changes)
sits next to the conversations', in the same structure; the log also keeps
who views each conversation (``presence_*``, announced as logged events).
"""

from __future__ import annotations

from django.conf import settings

from .base import KEY_TTL_MS, ZERO, EventLog, LiveEvents, StateChange, StreamingState
from .memory import MemoryEventLog
from .redis import RedisEventLog

__all__ = [
    "KEY_TTL_MS",
    "ZERO",
    "EventLog",
    "LiveEvents",
    "MemoryEventLog",
    "RedisEventLog",
    "StateChange",
    "StreamingState",
    "get_event_log",
]

_log: EventLog | None = None


def get_event_log() -> EventLog:
    """The process's event log: Redis when REDIS_URL is set, else in-process."""
    global _log
    if _log is None:
        _log = RedisEventLog(settings.REDIS_URL) if settings.REDIS_URL else MemoryEventLog()
    return _log
