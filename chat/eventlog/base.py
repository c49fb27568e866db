"""The event log's interface and the algorithm every backend shares (replay after an id)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..events import Event, parse_id

ZERO = "0-0"
# Idle conversations' keys vanish after a day; replay needs only CHAT_EVENT_RETENTION_SECONDS.
KEY_TTL_MS = 24 * 3600 * 1000
# Replay reads the log in pages of this many entries.
PAGE = 1000


@dataclass(frozen=True, slots=True)
class StateChange:
    """How an appended event changes the log's record of a streaming message.

    ``op``: "start" (``message`` is its JSON), "delta" (append ``content`` /
    ``reasoning``, now through ``seq``), "end" (forget it), "seed" (replace
    the record with the full ``content`` / ``reasoning`` after a lost state).
    """

    op: str
    message_id: str
    seq: int = 0
    content: str = ""
    reasoning: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class StreamingState:
    """A streaming message as the log holds it: its JSON as created, and its text through delta ``seq``."""

    message_id: str
    message: str
    seq: int
    content: str
    reasoning: str


class LiveEvents:
    """One event loop's subscription to the live events of some conversations.

    Made by ``EventLog.live(deliver, resume)``: every event appended to a
    subscribed conversation by another process (or another event loop) is
    handed to ``deliver(conversation_id, event)`` on this loop, in the order
    the store published them; they may be lost (a reconnect), never
    invented. ``resume()`` is called after each (re)connection, when events
    may have been missed: the caller checks the log's tails.
    """

    async def subscribe(self, conversation_id: str) -> None:
        raise NotImplementedError

    async def unsubscribe(self, conversation_id: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Stop listening (the event loop is ending)."""


Deliver = Callable[[str, Event], None]


class EventLog:
    """What every backend provides; all methods are coroutines on the process's loop."""

    async def append(
        self,
        conversation_id: str,
        event_type: str,
        data: str,
        change: StateChange | None = None,
        *,
        message_id: str | None = None,
        final: bool = False,
    ) -> tuple[Event, bool]:
        """Log one event and publish it to live subscribers; returns ``(event, state_lost)``.

        ``state_lost``: the log had no record of the message ``change``
        (a delta) names, so snapshots lack it until it is seeded again.
        ``message_id`` and ``final`` are stored with the event (see
        ``Event``). The calling event loop is not delivered to (the caller
        delivers its own events at once). Never writes the database.
        """
        raise NotImplementedError

    async def append_many(self, items: list[tuple[str, str, str]]) -> list[Event]:
        """Log ``(log_key, event_type, data)`` items (no state change, no message), each published like ``append``.

        The Redis log sends them in one round trip: a fan-out on write to a
        few users' own logs costs one hop, not one per user.
        """
        return [(await self.append(key, event_type, data))[0] for key, event_type, data in items]

    async def append_batch(self, conversation_id: str, appends: list[tuple]) -> list[tuple[Event, bool]]:
        """Log ``(event_type, data, change, message_id, final)`` items on one conversation's log, in order.

        Each is logged and published as ``append`` does; returns their
        ``(event, state_lost)``. The Redis log sends them in one round trip
        (the two ``message.created`` of a post).
        """
        return [
            await self.append(conversation_id, event_type, data, change, message_id=message_id, final=final)
            for event_type, data, change, message_id, final in appends
        ]

    def live(self, deliver: Deliver, resume: Callable[[], None]) -> LiveEvents:
        """The running event loop's subscription to live events (see ``LiveEvents``)."""
        raise NotImplementedError

    async def tail(self, conversation_id: str) -> str:
        """The id of the conversation's last event, ``0-0`` when none is known."""
        raise NotImplementedError

    async def seed(self, conversation_id: str, change: StateChange) -> None:
        """Restore a streaming message's state in full (after the store lost it)."""
        raise NotImplementedError

    async def cut(self, conversation_id: str) -> tuple[str, list[StreamingState]]:
        """The last id and the state of every streaming message as of that id, read atomically."""
        raise NotImplementedError

    async def _range_after(self, conversation_id: str, after_id: str, count: int) -> list[Event]:
        """Up to ``count`` events with ids above ``after_id``, oldest first."""
        raise NotImplementedError

    async def after(self, conversation_id: str, after_id: str) -> list[Event] | None:
        """Every event after ``after_id``, in order; None when they cannot all be given.

        None means ``after_id`` is unknown, in the future, or older than what
        the log still holds with nothing lost in between: the reader must resync.
        """
        after_key = parse_id(after_id)
        tail = await self.tail(conversation_id)
        if after_key > parse_id(tail):
            return None
        events: list[Event] = []
        cursor = after_id
        while True:
            page = await self._range_after(conversation_id, cursor, PAGE)
            if not page:
                break
            events.extend(page)
            cursor = page[-1].id
            if len(page) < PAGE:
                break
        if not events:
            return [] if after_id == tail else None
        if events[0].prev != after_id:
            return None
        return events

    # Coordination of one generation across processes.
    async def request_stop(self, message_id: str) -> None:
        """Record that the generation of ``message_id`` should stop (read by ``stop_requested``)."""
        raise NotImplementedError

    async def stop_requested(self, message_id: str) -> bool:
        raise NotImplementedError

    async def renew_lease(self, message_id: str, seconds: float) -> None:
        """Hold the generation's lease for ``seconds`` more: its process is alive."""
        raise NotImplementedError

    async def release_lease(self, message_id: str) -> None:
        """Drop the lease and any stop request of ``message_id`` (the generation ended)."""
        raise NotImplementedError

    async def has_lease(self, message_id: str) -> bool:
        raise NotImplementedError

    async def ping(self) -> None:
        """Raise if the log's store is unreachable."""

    async def try_lock(self, name: str, seconds: float) -> bool:
        """Take the lock ``name`` for ``seconds`` unless anyone (any process) holds it; whether this call took it.

        Never released early: it lapses, so a job guarded by it runs at most
        once per ``seconds`` across every process sharing this log.
        """
        raise NotImplementedError

    # Open event streams per user, counted across processes.
    async def stream_open(self, user_id, token: str, *, limit: int, ttl: float) -> bool:
        """Register an open stream unless the user already has ``limit`` (0: no limit); expires after ``ttl``."""
        raise NotImplementedError

    async def stream_refresh(self, user_id, token: str, *, ttl: float) -> None:
        """Keep the open stream ``token`` for ``ttl`` more seconds."""
        raise NotImplementedError

    async def stream_refresh_many(self, slots: list[tuple], *, ttl: float) -> None:
        """``stream_refresh`` for each ``(user_id, token)`` in ``slots`` (the Redis log: in one round trip)."""
        for user_id, token in slots:
            await self.stream_refresh(user_id, token, ttl=ttl)

    async def stream_close(self, user_id, token: str) -> None:
        raise NotImplementedError

    # Who views each conversation, counted across processes (chat.presence).
    async def presence_enter(self, conversation_id: str, member: str, *, ttl: float) -> list[str]:
        """Add ``member`` (a 32-character token + username) for ``ttl`` s; the viewers now, sorted, each once."""
        raise NotImplementedError

    async def presence_leave(self, conversation_id: str, member: str) -> None:
        raise NotImplementedError

    async def presence_announce(self, conversation_id: str, members: list[str], *, ttl: float) -> Event | None:
        """Keep ``members`` for ``ttl`` s more, drop expired ones, and log a ``presence`` event if the viewers changed.

        Compare-and-append in one atomic step: the event is appended only when
        the viewers differ from the last ones announced (by any process), so
        announcements are ordered and never repeat. Returns the event, or None.
        """
        raise NotImplementedError

    async def refresh_many(
        self, slots: list[tuple], *, slot_ttl: float, presence: list[tuple[str, list[str]]] = (), presence_ttl=0.0
    ) -> list[Event]:
        """The process's heartbeat round: ``stream_refresh_many(slots)`` and ``presence_announce`` per
        ``(conversation_id, members)``; the presence events appended. The Redis log: one round trip."""
        await self.stream_refresh_many(slots, ttl=slot_ttl)
        events = []
        for conversation_id, members in presence:
            event = await self.presence_announce(conversation_id, members, ttl=presence_ttl)
            if event is not None:
                events.append(event)
        return events
