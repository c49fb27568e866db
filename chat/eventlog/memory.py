"""The log inside one process: the zero-config default (no Redis)."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from django.conf import settings

from ..events import PRESENCE, Event, dumps, parse_id
from .base import ZERO, EventLog, LiveEvents, StreamingState


class MemoryEventLog(EventLog):
    """Every conversation's events in a deque, trimmed to the retention; live delivery between event loops."""

    def __init__(self):
        self._events: dict[str, deque[tuple[float, Event]]] = {}
        self._tails: dict[str, str] = {}
        self._states: dict[str, dict[str, dict]] = {}
        self._stops: dict[str, float] = {}
        self._leases: dict[str, float] = {}
        self._locks: dict[str, float] = {}
        self._streams = _MemoryStreams()
        # conversation -> member -> expiry (monotonic), and the viewers last announced.
        self._presence: dict[str, dict[str, float]] = {}
        self._announced: dict[str, list[str]] = {}
        self._live: set[_MemoryLive] = set()
        self._last_ms = 0
        self._n = 0

    def _next_id(self) -> str:
        ms = int(time.time() * 1000)
        if ms <= self._last_ms:
            ms, self._n = self._last_ms, self._n + 1
        else:
            self._n = 0
        self._last_ms = ms
        return f"{ms}-{self._n}"

    async def append(self, conversation_id, event_type, data, change=None, *, message_id=None, final=False):
        prev = self._tails.get(conversation_id, ZERO)
        event = Event(self._next_id(), event_type, data, prev, message_id, final, conversation_id)
        now = time.monotonic()
        log = self._events.setdefault(conversation_id, deque())
        log.append((now, event))
        horizon = now - settings.CHAT_EVENT_RETENTION_SECONDS
        while log and log[0][0] < horizon:
            log.popleft()
        self._tails[conversation_id] = event.id
        lost = change is not None and self._apply(conversation_id, change)
        self._publish(conversation_id, event)
        return event, lost

    def _apply(self, conversation_id, change) -> bool:
        """Apply ``change`` to the streaming states; whether a delta found its message's state missing."""
        states = self._states.setdefault(conversation_id, {})
        if change.op == "start" or change.op == "seed":
            states[change.message_id] = {
                "message": change.message or states.get(change.message_id, {}).get("message", ""),
                "seq": change.seq,
                "content": change.content,
                "reasoning": change.reasoning,
            }
        elif change.op == "delta":
            state = states.get(change.message_id)
            if state is None:
                return True
            state["seq"] = change.seq
            state["content"] += change.content
            state["reasoning"] += change.reasoning
        elif change.op == "end":
            states.pop(change.message_id, None)
        return False

    def _publish(self, conversation_id: str, event: Event) -> None:
        # Only other event loops (tests run a server and a client loop in one
        # process); the appending loop delivers its own events.
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for live in list(self._live):
            if live.loop is not here and conversation_id in live.conversations and not live.loop.is_closed():
                live.loop.call_soon_threadsafe(live.deliver, conversation_id, event)

    def live(self, deliver, resume):
        live = _MemoryLive(self, asyncio.get_running_loop(), deliver)
        self._live.add(live)
        return live

    async def tail(self, conversation_id):
        return self._tails.get(conversation_id, ZERO)

    async def seed(self, conversation_id, change):
        self._states.setdefault(conversation_id, {})[change.message_id] = {
            "message": change.message,
            "seq": change.seq,
            "content": change.content,
            "reasoning": change.reasoning,
        }

    async def cut(self, conversation_id):
        states = self._states.get(conversation_id, {})
        return self._tails.get(conversation_id, ZERO), [
            StreamingState(mid, s["message"], s["seq"], s["content"], s["reasoning"]) for mid, s in states.items()
        ]

    async def _range_after(self, conversation_id, after_id, count):
        after_key = parse_id(after_id)
        out = []
        for _, event in self._events.get(conversation_id, ()):
            if event.key > after_key:
                out.append(event)
                if len(out) == count:
                    break
        return out

    async def request_stop(self, message_id):
        self._stops[message_id] = time.monotonic()

    async def stop_requested(self, message_id):
        return message_id in self._stops

    async def renew_lease(self, message_id, seconds):
        self._leases[message_id] = time.monotonic() + seconds

    async def release_lease(self, message_id):
        self._leases.pop(message_id, None)
        self._stops.pop(message_id, None)

    async def has_lease(self, message_id):
        return self._leases.get(message_id, 0) > time.monotonic()

    async def try_lock(self, name, seconds):
        now = time.monotonic()
        if self._locks.get(name, 0) > now:
            return False
        self._locks[name] = now + seconds
        return True

    async def stream_open(self, user_id, token, *, limit, ttl):
        streams = self._streams.live(user_id)
        if limit and len(streams) >= limit:
            return False
        streams[token] = time.monotonic() + ttl
        return True

    async def stream_refresh(self, user_id, token, *, ttl):
        self._streams.live(user_id)[token] = time.monotonic() + ttl

    async def stream_close(self, user_id, token):
        self._streams.live(user_id).pop(token, None)

    def _viewers(self, conversation_id) -> list[str]:
        members = self._presence.get(conversation_id, {})
        now = time.monotonic()
        for member in [m for m, expiry in members.items() if expiry <= now]:
            del members[member]
        return sorted({member[32:] for member in members})

    async def presence_enter(self, conversation_id, member, *, ttl):
        self._presence.setdefault(conversation_id, {})[member] = time.monotonic() + ttl
        return self._viewers(conversation_id)

    async def presence_leave(self, conversation_id, member):
        self._presence.get(conversation_id, {}).pop(member, None)

    async def presence_announce(self, conversation_id, members, *, ttl):
        entries = self._presence.get(conversation_id, {})
        expiry = time.monotonic() + ttl
        for member in members:
            if member in entries:
                entries[member] = expiry
        viewers = self._viewers(conversation_id)
        if viewers == self._announced.get(conversation_id, []):
            return None
        self._announced[conversation_id] = viewers
        return (await self.append(conversation_id, PRESENCE, dumps({"viewers": viewers})))[0]


class _MemoryLive(LiveEvents):
    """One event loop's subscriptions: nothing to connect, so nothing is ever missed."""

    def __init__(self, log: MemoryEventLog, loop: asyncio.AbstractEventLoop, deliver):
        self.log = log
        self.loop = loop
        self.deliver = deliver
        self.conversations: set[str] = set()

    async def subscribe(self, conversation_id):
        self.conversations.add(conversation_id)

    async def unsubscribe(self, conversation_id):
        self.conversations.discard(conversation_id)

    async def close(self):
        self.log._live.discard(self)


class _MemoryStreams:
    def __init__(self):
        self.open: dict[str, dict[str, float]] = {}

    def live(self, user_id) -> dict[str, float]:
        now = time.monotonic()
        streams = self.open.setdefault(str(user_id), {})
        for token in [t for t, expiry in streams.items() if expiry <= now]:
            del streams[token]
        return streams
