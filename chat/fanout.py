"""Live delivery of a conversation's events to every viewer in this process.

Each process joins the channel-layer group ``conversation.<id>`` once per
conversation it has viewers for (one channel, one pending ``receive()``),
and hands every event to its local viewers' queues. The channel layer is the
fast path; it may drop or reorder messages, so the feed checks each event's
``prev`` against the last id it delivered and fills any hole from the event
log. Viewers therefore see every event exactly once, in log order.
"""

from __future__ import annotations

import asyncio
import logging
import time

from channels.layers import get_channel_layer

from .eventlog import get_event_log
from .events import FINAL_EVENTS, MESSAGE_CREATED, Event, parse_id

logger = logging.getLogger(__name__)

# A viewer this far behind is cut off; its EventSource resumes from the log.
VIEWER_QUEUE_LIMIT = 20_000
# How long a feed with no viewers stays subscribed (reconnects are common).
FEED_LINGER_SECONDS = 5.0
# A viewer whose response never started streaming (client gone early) is dropped.
VIEWER_START_DEADLINE_SECONDS = 30.0
# channels-redis forgets group members after a day; re-join well before.
GROUP_REJOIN_SECONDS = 3600.0

_FINAL_TYPES = set(FINAL_EVENTS.values())


def conversation_group(conversation_id) -> str:
    return f"conversation.{conversation_id}"


def generation_group(message_id) -> str:
    return f"generation.{message_id}"


def user_group(user_id) -> str:
    return f"user.{user_id}"


class Resync:
    """Marker put on viewer queues: the feed lost events it cannot recover."""

    def __init__(self, event_id: str):
        self.id = event_id


class AccessCheck:
    """Marker put on a user's viewers' queues: their credentials changed.

    ``ended_session``: that session is over (signed out); None: each stream
    re-validates its own session (deactivated, password changed).
    """

    def __init__(self, ended_session: str | None):
        self.ended_session = ended_session


class Viewer:
    """One open event stream's inbox, for one signed-in user."""

    def __init__(self, feed: Feed, user_id=None):
        self.feed = feed
        self.user_id = None if user_id is None else str(user_id)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.overflowed = False
        # Set by the response's generator when it first runs; see Hub.join.
        self.started = False

    def put(self, item) -> None:
        if self.queue.qsize() >= VIEWER_QUEUE_LIMIT:
            self.overflowed = True
            return
        self.queue.put_nowait(item)


class Feed:
    """This process's subscription to one conversation's group."""

    def __init__(self, hub: Hub, conversation_id: str):
        self.hub = hub
        self.conversation_id = conversation_id
        self.viewers: set[Viewer] = set()
        self.last_id = "0-0"
        self.generating = False
        self.channel: str | None = None
        self.task: asyncio.Task | None = None
        self.linger: asyncio.TimerHandle | None = None
        self.joined_at = 0.0
        self.rejoin = False

    async def start(self) -> None:
        layer = self.hub.layer
        # Every process-local channel must share one prefix: channels-redis
        # receives them all through one lock, blocking on one prefix's key.
        self.channel = await layer.new_channel()
        await layer.group_add(conversation_group(self.conversation_id), self.channel)
        self.joined_at = time.monotonic()
        # Everything after this id arrives through the group or is filled from the log.
        self.last_id, states = await self.hub.log.cut(self.conversation_id)
        self.generating = bool(states)
        self.task = asyncio.create_task(self._run(), name=f"feed {self.conversation_id}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        if self.channel is not None:
            try:
                await self.hub.layer.group_discard(conversation_group(self.conversation_id), self.channel)
            except Exception:  # the layer may be gone (Redis down); the membership expires
                logger.warning("could not leave group of %s", self.conversation_id)

    async def _run(self) -> None:
        layer = self.hub.layer
        pending = asyncio.ensure_future(layer.receive(self.channel))
        try:
            while True:
                # While a reply streams, a dropped final event must not wait long.
                timeout = self.hub.busy_check_seconds if self.generating else self.hub.idle_check_seconds
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                try:
                    if pending in done:
                        message = pending.result()
                        pending = asyncio.ensure_future(layer.receive(self.channel))
                        await self._on_message(message)
                    else:
                        await self._check_tail()
                        if time.monotonic() - self.joined_at > GROUP_REJOIN_SECONDS:
                            await layer.group_add(conversation_group(self.conversation_id), self.channel)
                            self.joined_at = time.monotonic()
                    if self.rejoin:
                        # After a Redis restart our group membership is gone.
                        await layer.group_add(conversation_group(self.conversation_id), self.channel)
                        self.rejoin = False
                        await self._check_tail()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Redis may be restarting: keep the viewers, try again shortly.
                    logger.warning("feed %s: delivery failed (%s); retrying", self.conversation_id, exc)
                    self.rejoin = True
                    if pending.done():
                        pending = asyncio.ensure_future(layer.receive(self.channel))
                    await asyncio.sleep(1.0)
        finally:
            pending.cancel()

    async def _on_message(self, message: dict) -> None:
        event = Event(id=message["id"], type=message["t"], data=message["d"], prev=message["p"])
        last_key = parse_id(self.last_id)
        if event.key <= last_key:
            return  # already delivered (filled from the log earlier)
        if event.prev == self.last_id:
            self._deliver(event)
        else:
            await self._fill()

    async def _check_tail(self) -> None:
        tail = await self.hub.log.tail(self.conversation_id)
        if tail != self.last_id:
            await self._fill()

    async def _fill(self) -> None:
        events = await self.hub.log.after(self.conversation_id, self.last_id)
        if events is None:
            tail = await self.hub.log.tail(self.conversation_id)
            logger.warning("feed %s: events lost before %s; viewers resync", self.conversation_id, tail)
            self.last_id = tail
            for viewer in list(self.viewers):
                viewer.put(Resync(tail))
            return
        for event in events:
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        self.last_id = event.id
        if event.type in _FINAL_TYPES:
            self.generating = False
        elif event.type == MESSAGE_CREATED and '"status":"streaming"' in event.data:
            self.generating = True
        for viewer in list(self.viewers):
            viewer.put(event)


class Hub:
    """The process's feeds, one per conversation with local viewers."""

    def __init__(self, *, idle_check_seconds: float = 15.0, busy_check_seconds: float = 1.0):
        self.feeds: dict[str, Feed] = {}
        self.users = _UserWatch(self)
        self.locks: dict[str, asyncio.Lock] = {}
        self.idle_check_seconds = idle_check_seconds
        self.busy_check_seconds = busy_check_seconds
        self.layer = get_channel_layer()
        self.log = get_event_log()

    async def join(self, conversation_id: str, *, user_id=None) -> Viewer:
        """A new viewer of the conversation; events logged from now on reach its queue.

        With ``user_id``, access changes of that user reach it too (``AccessCheck``).
        """
        conversation_id = str(conversation_id)
        lock = self.locks.setdefault(conversation_id, asyncio.Lock())
        async with lock:
            feed = self.feeds.get(conversation_id)
            if feed is None:
                feed = Feed(self, conversation_id)
                await feed.start()
                self.feeds[conversation_id] = feed
            if feed.linger is not None:
                feed.linger.cancel()
                feed.linger = None
            viewer = Viewer(feed, user_id)
            feed.viewers.add(viewer)
        if user_id is not None:
            try:
                await self.users.add(viewer)
            except BaseException:
                self.leave(viewer)
                raise
        # Django never runs an un-started response generator's cleanup when the
        # client disconnects early, so such a viewer is removed here instead.
        asyncio.get_running_loop().call_later(VIEWER_START_DEADLINE_SECONDS, self._drop_if_unstarted, viewer)
        return viewer

    def _drop_if_unstarted(self, viewer: Viewer) -> None:
        if not viewer.started and viewer in viewer.feed.viewers:
            self.leave(viewer)

    def leave(self, viewer: Viewer) -> None:
        feed = viewer.feed
        feed.viewers.discard(viewer)
        self.users.discard(viewer)
        if not feed.viewers and feed.linger is None:
            feed.linger = asyncio.get_running_loop().call_later(
                FEED_LINGER_SECONDS, lambda: asyncio.ensure_future(self._close_if_idle(feed))
            )

    async def _close_if_idle(self, feed: Feed) -> None:
        lock = self.locks.setdefault(feed.conversation_id, asyncio.Lock())
        async with lock:
            feed.linger = None
            if feed.viewers or self.feeds.get(feed.conversation_id) is not feed:
                return
            del self.feeds[feed.conversation_id]
            await feed.stop()


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
                # Past the queue limit too: this marker must arrive.
                viewer.queue.put_nowait(check)


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
        hub = _hubs[loop] = Hub(idle_check_seconds=settings.CHAT_HEARTBEAT_SECONDS)
    return hub


async def publish(conversation_id, event_type: str, data: str, change=None) -> tuple[Event, bool]:
    """Log an event and send it to every process's feed.

    Returns the logged event and whether the log had lost the state of the
    message that ``change`` names (the caller re-seeds it).

    Order of truth: the log first (it assigns the id), then the group. If the
    group message is lost, feeds find the hole through ``prev`` or the tail.
    """
    log = get_event_log()
    event, lost = await log.append(str(conversation_id), event_type, data, change)
    await get_channel_layer().group_send(
        conversation_group(conversation_id),
        {"type": "chat.event", "id": event.id, "t": event.type, "d": event.data, "p": event.prev},
    )
    return event, lost
