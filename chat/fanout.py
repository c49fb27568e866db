"""Live delivery of a conversation's events to every viewer in this process.

The event log publishes every appended event (``EventLog.append``: one Redis
round trip that logs and publishes). Each process holds ONE subscription
(``EventLog.live``) to the conversations it has viewers for, and one ``Feed``
per such conversation hands each event to its local viewers' queues; the
process that appended an event delivers it to its own feed at once
(``publish``). Pub/sub may drop messages (a reconnect) and two publishers may
interleave, so the feed checks each event's ``prev`` against the last id it
delivered and fills any hole from the log; a process-wide timer also compares
the log's tail with each feed's (every second while a reply streams), which
catches a lost last event. Viewers therefore see every event exactly once, in
log order. The channel layer carries only control messages (access changes,
stops).

A feed serves any log: a conversation's, or a user's own (``user.<pk>``,
the conversation list's changes). One viewer may follow several logs (the
multiplexed ``GET /api/events/?conversations=``): it is in each of their
feeds, with one inbox, one waiter and one byte bound; every event carries
its ``log_key``, so the stream routes it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from channels.layers import get_channel_layer

from .eventlog import get_event_log
from .events import FINAL_EVENTS, MESSAGE_CREATED, MESSAGE_DELTA, Event, parse_id
from .presence import Presence

logger = logging.getLogger(__name__)

# A viewer whose queue holds this many bytes of event data is cut off; its
# EventSource resumes from the log (a reader that far behind is better served
# by one replay than by this process holding every event for it).
VIEWER_QUEUE_BYTES = 4 * 1024 * 1024
# How long a feed with no viewers stays subscribed (reconnects are common).
FEED_LINGER_SECONDS = 5.0
# A viewer whose response never started streaming (client gone early) is dropped.
VIEWER_START_DEADLINE_SECONDS = 30.0

_FINAL_TYPES = frozenset(FINAL_EVENTS.values())
_OPENS_REPLY = frozenset((MESSAGE_CREATED, MESSAGE_DELTA))


def stream_slot_ttl(heartbeat_seconds: float) -> float:
    """How long an open-stream slot lives unless refreshed: the timer refreshes it every heartbeat.

    A slot whose stream died unnoticed (its process killed) lapses after this.
    """
    return heartbeat_seconds * 3 + 5


def generation_group(message_id) -> str:
    return f"generation.{message_id}"


def user_group(user_id) -> str:
    return f"user.{user_id}"


def user_log_key(user_id) -> str:
    """The key of a user's own log (their conversation list's changes), next to the conversations' keys."""
    return f"user.{user_id}"


class Resync:
    """Marker put on viewer queues: the feed of log ``log_key`` lost events it cannot recover."""

    __slots__ = ("id", "log_key")

    def __init__(self, event_id: str, log_key: str | None = None):
        self.id = event_id
        self.log_key = log_key


class AccessCheck:
    """Marker put on a user's viewers' queues: their credentials changed.

    ``ended_session``: that session is over (signed out); None: each stream
    re-validates its own session (deactivated, password changed).
    """

    __slots__ = ("ended_session",)

    def __init__(self, ended_session: str | None):
        self.ended_session = ended_session


class Heartbeat:
    """Marker the process's timer puts on every viewer's queue each heartbeat interval."""

    __slots__ = ()


HEARTBEAT = Heartbeat()


class Viewer:
    """One open event stream's inbox, for one signed-in user: a list, bounded in bytes, and one waiter.

    Nothing per viewer runs while it is idle: the stream awaits ``take()``,
    which parks on one future until something is put. ``feeds``: every log
    it follows (``feed``, the first, is a plain stream's only one).
    """

    __slots__ = ("feed", "feeds", "user_id", "items", "size", "waiter", "overflowed", "started", "slot")
    __slots__ += ("quiet_since", "presence")

    def __init__(self, feed: Feed | None, user_id=None):
        self.feed = feed
        self.feeds: list[Feed] = [] if feed is None else [feed]
        self.user_id = None if user_id is None else str(user_id)
        self.items: list = []
        self.size = 0
        self.waiter: asyncio.Future | None = None
        self.overflowed = False
        # Set by the stream when it first runs; see Hub.join.
        self.started = False
        # The stream's open-stream slot ``(user_id, token)``, which the timer keeps alive.
        self.slot: tuple | None = None
        # When the stream last took something to send: the timer's heartbeats go to quiet viewers only.
        self.quiet_since = time.monotonic()
        # conversation -> its presence token, for each conversation this stream is counted as viewing.
        self.presence: dict[str, str] | None = None

    def put(self, event: Event) -> None:
        """Queue ``event``; past VIEWER_QUEUE_BYTES the viewer is marked ``overflowed`` instead."""
        if self.overflowed:
            return
        self.size += len(event.data)
        if self.size > VIEWER_QUEUE_BYTES:
            self.overflowed = True
            self.items = []
        else:
            self.items.append(event)
        self._wake()

    def put_marker(self, marker) -> None:
        """Queue a marker (resync, access check, heartbeat), past the byte bound too: it must arrive."""
        self.items.append(marker)
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list:
        """Everything queued, oldest first, waiting until there is something; [] once overflowed."""
        while not self.items and not self.overflowed:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        items, self.items, self.size = self.items, [], 0
        self.quiet_since = time.monotonic()
        return items


class Feed:
    """This process's delivery of one conversation's events to its local viewers, in log order."""

    __slots__ = ("hub", "conversation_id", "viewers", "last_id", "last_key", "generating", "ready", "missed")
    __slots__ += ("filling", "refill", "heard_at", "checked_at", "linger")

    def __init__(self, hub: Hub, conversation_id: str):
        self.hub = hub
        self.conversation_id = conversation_id
        self.viewers: set[Viewer] = set()
        self.last_id = "0-0"
        self.last_key = (0, 0)
        self.generating = False
        # False until the first cut: live events before it are left to a fill.
        self.ready = False
        self.missed = False
        self.filling = False
        self.refill = False
        self.heard_at = self.checked_at = 0.0
        self.linger: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Subscribe, then read the log's cut: everything after it arrives live or is filled from the log."""
        await self.hub.subscribe(self.conversation_id)
        last_id, states = await self.hub.log.cut(self.conversation_id)
        self._advance(last_id)
        self.generating = bool(states)
        self.heard_at = self.checked_at = self.hub.now()
        self.ready = True
        if self.missed:
            self.hub.spawn(self.fill())

    async def stop(self) -> None:
        try:
            await self.hub.unsubscribe(self.conversation_id)
        except Exception:  # Redis down: the subscription goes with the connection
            logger.warning("could not unsubscribe from %s", self.conversation_id)

    def _advance(self, event_id: str) -> None:
        self.last_id, self.last_key = event_id, parse_id(event_id)

    def on_event(self, event: Event) -> None:
        """An event from the live path (published, or appended by this process): deliver it, or fill a hole."""
        if not self.ready:
            self.missed = True
            return
        self.heard_at = self.hub.now()
        if event.key <= self.last_key:
            return  # already delivered (filled from the log earlier)
        if event.prev == self.last_id and not self.filling:
            self._deliver(event)
        else:
            self.hub.spawn(self.fill())

    async def check_tail(self) -> None:
        """Fill from the log if its tail is not the last id delivered (a lost last event)."""
        self.checked_at = self.hub.now()
        if await self.hub.log.tail(self.conversation_id) != self.last_id:
            await self.fill()

    async def fill(self) -> None:
        """Deliver every logged event after the last one delivered; ``Resync`` viewers if they are gone."""
        if self.filling:
            self.refill = True
            return
        self.filling = True
        try:
            while True:
                self.refill = False
                events = await self.hub.log.after(self.conversation_id, self.last_id)
                if events is None:
                    tail = await self.hub.log.tail(self.conversation_id)
                    logger.warning("feed %s: events lost before %s; viewers resync", self.conversation_id, tail)
                    self._advance(tail)
                    marker = Resync(tail, self.conversation_id)
                    for viewer in list(self.viewers):
                        viewer.put_marker(marker)
                else:
                    for event in events:
                        if event.key > self.last_key:
                            self._deliver(event)
                if not self.refill:
                    return
        finally:
            self.filling = False

    def _deliver(self, event: Event) -> None:
        self.last_id, self.last_key = event.id, event.key
        if event.type in _FINAL_TYPES:
            self.generating = False
        elif event.type in _OPENS_REPLY:
            # A new message or a delta: a reply streams, so a lost final event must be found fast.
            self.generating = True
        for viewer in self.viewers:
            viewer.put(event)


class Hub:
    """The process's feeds, one per conversation with local viewers, its one subscription, its one timer.

    The timer wakes every ``busy_check_seconds`` (or an eighth of a heartbeat
    if shorter): it compares the log's tail with each feed's last id (every
    second while a reply streams, every ``idle_check_seconds`` otherwise),
    puts a heartbeat on the queue of each viewer that sent nothing for
    ``heartbeat_seconds``, and every ``heartbeat_seconds`` refreshes every
    viewer's stream slot in one round trip.
    """

    def __init__(
        self, *, idle_check_seconds: float = 15.0, busy_check_seconds: float = 1.0, heartbeat_seconds: float = 15.0
    ):
        self.feeds: dict[str, Feed] = {}
        self.users = _UserWatch(self)
        self.locks: dict[str, asyncio.Lock] = {}
        self.idle_check_seconds = idle_check_seconds
        self.busy_check_seconds = busy_check_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.layer = get_channel_layer()
        self.log = get_event_log()
        self.live = None
        self.timer: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()
        self.unstarted: dict[Viewer, float] = {}
        self.now = time.monotonic
        self.presence = Presence(self)

    def spawn(self, coro) -> None:
        """Run ``coro`` as a task the hub keeps referenced; its failure is logged (the timer retries)."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("fan-out: %s", exc)

    async def subscribe(self, conversation_id: str) -> None:
        if self.live is None:
            self.live = self.log.live(self.dispatch, self.resume)
        await self.live.subscribe(conversation_id)

    async def unsubscribe(self, conversation_id: str) -> None:
        if self.live is not None:
            await self.live.unsubscribe(conversation_id)

    def dispatch(self, conversation_id: str, event: Event) -> None:
        """An event from the live path: to its conversation's feed, if this process has one."""
        feed = self.feeds.get(conversation_id)
        if feed is not None:
            feed.on_event(event)

    def resume(self) -> None:
        """The subscription (re)connected: events may have been missed, so every feed checks its tail."""
        for feed in list(self.feeds.values()):
            if feed.ready:
                self.spawn(feed.check_tail())

    async def join(self, conversation_id, *, user_id=None) -> Viewer:
        """A new viewer of the conversation; events logged from now on reach its queue.

        With ``user_id``, access changes of that user reach it too (``AccessCheck``).
        """
        return await self.join_logs((str(conversation_id),), user_id=user_id)

    async def join_logs(self, log_keys, *, user_id=None) -> Viewer:
        """A new viewer of every log in ``log_keys`` (at least one), with one inbox; as ``join`` otherwise."""
        viewer = Viewer(None, user_id)
        try:
            if len(log_keys) == 1:
                await self._attach(viewer, log_keys[0])
            else:
                async with asyncio.TaskGroup() as group:
                    for key in log_keys:
                        group.create_task(self._attach(viewer, key))
        except BaseException:
            self.leave(viewer)
            raise
        viewer.feed = self.feeds[log_keys[0]]
        if user_id is not None:
            try:
                await self.users.add(viewer)
            except BaseException:
                self.leave(viewer)
                raise
        # Django never runs an un-started response's cleanup when the client
        # disconnects early, so such a viewer is removed by the timer instead.
        self.unstarted[viewer] = self.now() + VIEWER_START_DEADLINE_SECONDS
        if self.timer is None or self.timer.done():
            self.timer = asyncio.create_task(self._tick(), name="fan-out timer")
        return viewer

    async def _attach(self, viewer: Viewer, log_key: str) -> None:
        lock = self.locks.setdefault(log_key, asyncio.Lock())
        async with lock:
            feed = self.feeds.get(log_key)
            if feed is None:
                feed = Feed(self, log_key)
                self.feeds[log_key] = feed
                try:
                    await feed.start()
                except BaseException:
                    del self.feeds[log_key]
                    raise
            if feed.linger is not None:
                feed.linger.cancel()
                feed.linger = None
            feed.viewers.add(viewer)
            viewer.feeds.append(feed)

    async def enter_presence(self, viewer: Viewer, conversation_id: str, username: str) -> list[str]:
        """Count ``viewer`` (``username``'s stream) as viewing the conversation until it leaves; the viewers now."""
        token, viewers = await self.presence.enter(conversation_id, username)
        if viewer.presence is None:
            viewer.presence = {}
        viewer.presence[conversation_id] = token
        return viewers

    def leave(self, viewer: Viewer) -> None:
        """The viewer's stream ended: it leaves every feed, and the viewers of what it showed."""
        for feed in viewer.feeds:
            self._leave_feed(viewer, feed)
        viewer.feeds = []
        if viewer.presence:
            for conversation_id, token in viewer.presence.items():
                self.presence.leave(conversation_id, token)
            viewer.presence = None
        self.unstarted.pop(viewer, None)
        self.users.discard(viewer)

    def detach(self, viewer: Viewer, log_key: str) -> None:
        """The viewer stops following one log (lost access to that conversation) and goes on with the others."""
        for feed in [f for f in viewer.feeds if f.conversation_id == log_key]:
            viewer.feeds.remove(feed)
            self._leave_feed(viewer, feed)
        if viewer.presence and (token := viewer.presence.pop(log_key, None)) is not None:
            self.presence.leave(log_key, token)

    def _leave_feed(self, viewer: Viewer, feed: Feed) -> None:
        feed.viewers.discard(viewer)
        if not feed.viewers and feed.linger is None:
            feed.linger = asyncio.get_running_loop().call_later(
                FEED_LINGER_SECONDS, lambda: self.spawn(self._close_if_idle(feed))
            )

    async def _close_if_idle(self, feed: Feed) -> None:
        lock = self.locks.setdefault(feed.conversation_id, asyncio.Lock())
        async with lock:
            feed.linger = None
            if feed.viewers or self.feeds.get(feed.conversation_id) is not feed:
                return
            del self.feeds[feed.conversation_id]
            self.locks.pop(feed.conversation_id, None)
            await feed.stop()

    async def _tick(self) -> None:
        heartbeat = self.heartbeat_seconds
        # Fine enough that a quiet stream's heartbeat comes at most 1/8 of an interval late.
        period = min(self.busy_check_seconds, heartbeat / 8)
        next_refresh = self.now() + heartbeat
        while self.feeds or self.unstarted:
            await asyncio.sleep(period)
            now = self.now()
            for feed in list(self.feeds.values()):
                for viewer in feed.viewers:
                    # Only after a whole interval with nothing sent: a stream that just
                    # wrote a large backlog is not judged (transport budget) at once.
                    if not viewer.items and now - viewer.quiet_since >= heartbeat:
                        viewer.put_marker(HEARTBEAT)
            if now >= next_refresh:
                next_refresh = now + heartbeat
                # A set: a viewer of several logs is in several feeds.
                slots = list({v.slot for feed in list(self.feeds.values()) for v in feed.viewers if v.slot is not None})
                presence = self.presence.entries()
                try:
                    # Every stream's slot and every viewed conversation's presence in one round trip.
                    self.presence.announced(
                        await self.log.refresh_many(
                            slots,
                            slot_ttl=stream_slot_ttl(heartbeat),
                            presence=presence,
                            presence_ttl=self.presence.ttl,
                        )
                    )
                except Exception as exc:
                    logger.warning("fan-out: refreshing %d stream slots failed (%s)", len(slots), exc)
            for viewer in [v for v, deadline in self.unstarted.items() if deadline <= now]:
                if not viewer.started:
                    self.leave(viewer)
                self.unstarted.pop(viewer, None)
            due = [
                feed
                for feed in self.feeds.values()
                if feed.ready
                and not feed.filling
                and (
                    (feed.generating and now - feed.heard_at >= self.busy_check_seconds)
                    or now - feed.checked_at >= self.idle_check_seconds
                )
            ]
            if due:
                results = await asyncio.gather(*(feed.check_tail() for feed in due), return_exceptions=True)
                failed = [r for r in results if isinstance(r, Exception)]
                if failed:
                    # Redis may be restarting: the next tick tries again, and the subscription's resume follows.
                    logger.warning("fan-out: %d tail checks failed (%s); retrying", len(failed), failed[0])


class _UserWatch:
    """This process's subscriptions to ``user.<id>`` groups: one channel for every user with local viewers.

    A user's credential change (signed out, deactivated, password changed) is
    sent to their group; each of their viewers here gets an ``AccessCheck``.
    """

    def __init__(self, hub: Hub):
        self.hub = hub
        self.viewers: dict[str, set[Viewer]] = {}
        self.channel: str | None = None
        self.task: asyncio.Task | None = None
        self.lock = asyncio.Lock()

    async def add(self, viewer: Viewer) -> None:
        async with self.lock:
            if self.channel is None:
                self.channel = await self.hub.layer.new_channel()
            if self.task is None or self.task.done():
                self.task = asyncio.create_task(self._run(), name="user access feed")
            viewers = self.viewers.get(viewer.user_id)
            if viewers is None:
                await self.hub.layer.group_add(user_group(viewer.user_id), self.channel)
                viewers = self.viewers[viewer.user_id] = set()
            viewers.add(viewer)

    def discard(self, viewer: Viewer) -> None:
        viewers = self.viewers.get(viewer.user_id)
        if viewers is None:
            return
        viewers.discard(viewer)
        if not viewers:
            del self.viewers[viewer.user_id]
            asyncio.ensure_future(self._leave_group(viewer.user_id))

    async def _leave_group(self, user_id: str) -> None:
        async with self.lock:
            if user_id in self.viewers:
                return  # a new viewer came meanwhile
            try:
                await self.hub.layer.group_discard(user_group(user_id), self.channel)
            except Exception:  # Redis down: the membership expires with the layer's group expiry
                logger.warning("could not leave the access group of user %s", user_id)

    async def _run(self) -> None:
        layer = self.hub.layer
        rejoin = False
        while True:
            try:
                if rejoin:
                    # After a Redis restart the subscriptions are gone; a change
                    # missed meanwhile is caught by the streams' periodic re-check.
                    for user_id in list(self.viewers):
                        await layer.group_add(user_group(user_id), self.channel)
                    rejoin = False
                message = await layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("user access feed: receive failed (%s); retrying", exc)
                rejoin = True
                await asyncio.sleep(1.0)
                continue
            if message.get("type") != "user.access":
                continue
            check = AccessCheck(message.get("session") or None)
            for viewer in list(self.viewers.get(str(message.get("user")), ())):
                viewer.put_marker(check)


async def announce_access_change(user_id, *, ended_session: str | None = None) -> None:
    """Tell every process that ``user_id``'s credentials changed (or that one session ended)."""
    await get_channel_layer().group_send(
        user_group(user_id), {"type": "user.access", "user": str(user_id), "session": ended_session or ""}
    )


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}


def get_hub() -> Hub:
    """The hub of the running event loop (one per process in production)."""
    from django.conf import settings

    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        heartbeat = settings.CHAT_HEARTBEAT_SECONDS
        hub = _hubs[loop] = Hub(idle_check_seconds=heartbeat, heartbeat_seconds=heartbeat)
    return hub


async def publish(
    conversation_id,
    event_type: str,
    data: str,
    change=None,
    *,
    message_id: str | None = None,
    final: bool | None = None,
) -> tuple[Event, bool]:
    """Log an event (which publishes it to every process) and deliver it to this process's viewers.

    ``message_id``: the message the event is about (default: the one
    ``change`` names); ``final``: it ends that message's stream (default: a
    final event type). Returns the logged event and whether the log had lost
    the state of the message that ``change`` names (the caller re-seeds it).
    One round trip to the store; a lost publication is found by the feeds
    through ``prev`` or the tail.
    """
    if message_id is None and change is not None:
        message_id = change.message_id
    if final is None:
        final = message_id is not None and event_type in _FINAL_TYPES
    conversation_id = str(conversation_id)
    event, lost = await get_event_log().append(
        conversation_id, event_type, data, change, message_id=message_id, final=final
    )
    hub = _hubs.get(asyncio.get_running_loop())
    if hub is not None:
        hub.dispatch(conversation_id, event)
    return event, lost


async def publish_batch(conversation_id, items: list[tuple]) -> list[tuple[Event, bool]]:
    """``publish`` for several ``(event_type, data, change, message_id)`` items of one conversation, in order.

    One round trip to the store for all of them (the two ``message.created``
    of a post); ``message_id`` and ``final`` default as in ``publish``.
    """
    conversation_id = str(conversation_id)
    appends = []
    for event_type, data, change, message_id in items:
        if message_id is None and change is not None:
            message_id = change.message_id
        appends.append((event_type, data, change, message_id, message_id is not None and event_type in _FINAL_TYPES))
    results = await get_event_log().append_batch(conversation_id, appends)
    hub = _hubs.get(asyncio.get_running_loop())
    if hub is not None:
        for event, _ in results:
            hub.dispatch(conversation_id, event)
    return results


async def publish_to_users(items: list[tuple]) -> list[Event]:
    """Log ``(user_id, event_type, data)`` items on those users' own logs and deliver them to this process's viewers.

    One round trip to the store however many users (a fan-out on write to a
    conversation's owner and members, who are few).
    """
    events = await get_event_log().append_many(
        [(user_log_key(user_id), event_type, data) for user_id, event_type, data in items]
    )
    hub = _hubs.get(asyncio.get_running_loop())
    if hub is not None:
        for event in events:
            hub.dispatch(event.log_key, event)
    return events
