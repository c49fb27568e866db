"""A process's feeds: live events in log order, holes filled from the log, one timer, viewers bounded in bytes."""

import asyncio
import uuid

import pytest

from chat import fanout
from chat.eventlog import MemoryEventLog
from chat.events import MESSAGE_CREATED, MESSAGE_DELTA, Event

pytestmark = pytest.mark.asyncio


@pytest.fixture
def hub():
    """A hub of this test's event loop on a fresh in-process log, its timer fast."""
    hub = fanout.Hub(idle_check_seconds=0.2, busy_check_seconds=0.05, heartbeat_seconds=3600)
    hub.log = MemoryEventLog()
    return hub


async def events_of(viewer, count, timeout=5.0):
    """The first ``count`` events the viewer receives (markers skipped)."""
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got += [item for item in await viewer.take() if isinstance(item, Event)]
    return got


async def test_an_appended_event_reaches_local_viewers_at_once_and_only_once(hub):
    conversation = str(uuid.uuid4())
    viewer = await hub.join(conversation)
    event, _ = await hub.log.append(conversation, MESSAGE_CREATED, "{}", message_id="m")
    hub.dispatch(conversation, event)
    hub.dispatch(conversation, event)  # the same event again (pub/sub and the log): delivered once
    assert viewer.items == [event]
    hub.leave(viewer)


async def test_a_hole_is_filled_from_the_log_in_order(hub):
    conversation = str(uuid.uuid4())
    viewer = await hub.join(conversation)
    first, _ = await hub.log.append(conversation, MESSAGE_CREATED, '{"n":1}')
    second, _ = await hub.log.append(conversation, MESSAGE_DELTA, '{"n":2}')
    hub.dispatch(conversation, second)  # the first was lost on the way
    assert await events_of(viewer, 2) == [first, second]
    hub.leave(viewer)


async def test_a_lost_last_event_is_found_by_the_timer(hub):
    conversation = str(uuid.uuid4())
    viewer = await hub.join(conversation)
    created, _ = await hub.log.append(conversation, MESSAGE_CREATED, "{}", message_id="m")
    hub.dispatch(conversation, created)  # a reply streams: the feed checks the tail every busy check
    final, _ = await hub.log.append(conversation, "message.completed", "{}", message_id="m", final=True)
    assert await events_of(viewer, 2) == [created, final]
    hub.leave(viewer)


async def test_the_timer_puts_heartbeats_on_every_queue(hub):
    hub.heartbeat_seconds = 0.05
    viewers = [await hub.join(str(uuid.uuid4())) for _ in range(2)]
    for viewer in viewers:
        async with asyncio.timeout(5):
            assert fanout.HEARTBEAT in await viewer.take()
        hub.leave(viewer)


async def test_a_viewer_past_its_byte_bound_is_marked_overflowed(hub, monkeypatch):
    monkeypatch.setattr(fanout, "VIEWER_QUEUE_BYTES", 1000)
    conversation = str(uuid.uuid4())
    slow, fast = await hub.join(conversation), await hub.join(conversation)
    for n in range(5):
        event, _ = await hub.log.append(conversation, MESSAGE_DELTA, "x" * 300)
        hub.dispatch(conversation, event)
        if n < 2:
            assert len(await fast.take()) == 1, "a reader that keeps up stays within the bound"
    assert slow.overflowed and not fast.overflowed
    assert await slow.take() == [], "an overflowed viewer's stream ends; its client resumes from the log"
    for viewer in (slow, fast):
        hub.leave(viewer)


async def test_publish_delivers_to_this_process_before_it_returns(monkeypatch):
    log = MemoryEventLog()
    monkeypatch.setattr(fanout, "get_event_log", lambda: log)
    hub = fanout.get_hub()
    hub.log = log
    conversation = str(uuid.uuid4())
    viewer = await hub.join(conversation)
    event, lost = await fanout.publish(conversation, "message.completed", "{}", message_id="m")
    assert (event.message_id, event.final, lost) == ("m", True, False)
    assert viewer.items == [event]
    hub.leave(viewer)
