"""The event log, one suite for every backend: in-process (the zero-config default) and a real Redis server."""

import asyncio
import threading
import uuid

import pytest

from chat.eventlog import ZERO, MemoryEventLog, RedisEventLog, StateChange
from chat.events import Event, parse_id
from tests.servers import aeventually

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["memory", "redis"])
def log(request):
    """A fresh event log of each backend (Redis: its own key prefix on the shared test server)."""
    if request.param == "memory":
        return MemoryEventLog()
    log = RedisEventLog(request.getfixturevalue("redis_server").url)
    log.prefix = f"test-{uuid.uuid4().hex}:"
    return log


@pytest.fixture
def conversation():
    return str(uuid.uuid4())


async def forget_before(log, conversation_id, event_id):
    """Drop the entries older than ``event_id``, as the retention trim does."""
    if isinstance(log, MemoryEventLog):
        key = parse_id(event_id)
        entries = log._events[conversation_id]
        while entries and entries[0][1].key < key:
            entries.popleft()
    else:
        await log.redis.xtrim(log._conv_keys(conversation_id)[0], minid=event_id, approximate=False)


async def test_append_gives_increasing_ids_chained_by_prev(log, conversation):
    assert await log.tail(conversation) == ZERO
    first, lost = await log.append(conversation, "message.created", '{"n":1}')
    second, _ = await log.append(conversation, "message.delta", '{"n":2}')
    assert lost is False
    assert first.prev == ZERO and second.prev == first.id
    assert parse_id(second.id) > parse_id(first.id)
    assert await log.tail(conversation) == second.id
    assert await log.tail(str(uuid.uuid4())) == ZERO, "another conversation has its own log"


async def test_after_replays_in_order_with_fields(log, conversation):
    created, _ = await log.append(conversation, "message.created", '{"id":"m"}', message_id="m")
    delta, _ = await log.append(conversation, "message.delta", '{"c":"a\\nb"}', message_id="m")
    done, _ = await log.append(conversation, "message.completed", '{"id":"m"}', message_id="m", final=True)
    update, _ = await log.append(conversation, "conversation.updated", "{}")

    replay = await log.after(conversation, ZERO)
    assert replay == [created, delta, done, update]
    assert [(e.message_id, e.final) for e in replay] == [("m", False), ("m", False), ("m", True), (None, False)]
    assert await log.after(conversation, delta.id) == [done, update]
    assert await log.after(conversation, update.id) == [], "nothing after the tail"


async def test_replay_reads_past_one_page(log, conversation):
    events = [(await log.append(conversation, "message.delta", f'{{"n":{n}}}'))[0] for n in range(1205)]
    assert await log.after(conversation, events[2].id) == events[3:]


async def test_after_an_unknown_or_trimmed_id_is_none(log, conversation):
    first, _ = await log.append(conversation, "message.delta", "{}")
    second, _ = await log.append(conversation, "message.delta", "{}")
    third, _ = await log.append(conversation, "message.delta", "{}")
    future = f"{parse_id(third.id)[0] + 1000}-0"
    assert await log.after(conversation, future) is None, "an id the log never gave (a lost log)"
    assert await log.after(str(uuid.uuid4()), first.id) is None, "a conversation whose log is gone"

    await forget_before(log, conversation, third.id)
    assert await log.after(conversation, first.id) is None, "the events after it were trimmed: resync"
    assert await log.after(conversation, second.id) == [third], "the entry right after it is still there"


async def test_streaming_state_start_delta_cut_end(log, conversation):
    message = '{"id":"m1","status":"streaming"}'
    await log.append(conversation, "message.created", message, StateChange("start", "m1", message=message))
    _, lost = await log.append(
        conversation, "message.delta", "{}", StateChange("delta", "m1", seq=1, content="Hel", reasoning="r")
    )
    assert lost is False
    last, _ = await log.append(conversation, "message.delta", "{}", StateChange("delta", "m1", seq=2, content="lo"))

    tail, states = await log.cut(conversation)
    assert tail == last.id
    assert [(s.message_id, s.message, s.seq, s.content, s.reasoning) for s in states] == [
        ("m1", message, 2, "Hello", "r")
    ]

    await log.append(conversation, "message.completed", "{}", StateChange("end", "m1"))
    assert (await log.cut(conversation))[1] == []


async def test_a_delta_without_state_reports_it_lost_and_seed_restores_it(log, conversation):
    _, lost = await log.append(conversation, "message.delta", "{}", StateChange("delta", "m2", seq=5, content="x"))
    assert lost is True
    assert (await log.cut(conversation))[1] == []

    await log.seed(conversation, StateChange("seed", "m2", seq=5, content="all of it", message='{"id":"m2"}'))
    await log.append(conversation, "message.delta", "{}", StateChange("delta", "m2", seq=6, content="!"))
    (state,) = (await log.cut(conversation))[1]
    assert (state.message_id, state.message, state.seq, state.content) == ("m2", '{"id":"m2"}', 6, "all of it!")


async def test_stop_requests_and_leases(log):
    assert not await log.stop_requested("m")
    await log.request_stop("m")
    assert await log.stop_requested("m")

    assert not await log.has_lease("m")
    await log.renew_lease("m", 60)
    assert await log.has_lease("m")
    await log.release_lease("m")
    assert not await log.has_lease("m")
    assert not await log.stop_requested("m"), "releasing the lease forgets the stop request"

    await log.renew_lease("short", 0.05)

    async def lapsed():
        return not await log.has_lease("short")

    await aeventually(lapsed)


@pytest.fixture
def other_process(log):
    """The same log as another process sees it: the same object in memory, another Redis client."""
    if isinstance(log, MemoryEventLog):
        return log
    other = RedisEventLog(log.url)
    other.prefix = log.prefix
    return other


async def test_try_lock_lets_one_of_two_processes_through(log, other_process):
    one, two, other = await asyncio.gather(
        log.try_lock("job", 60), other_process.try_lock("job", 60), log.try_lock("other", 60)
    )
    assert sorted([one, two]) == [False, True], "exactly one of the two takes it"
    assert other is True, "another lock's name is free"
    assert await other_process.try_lock("job", 60) is False


async def test_try_lock_lets_one_caller_through_until_it_lapses(log):
    assert await log.try_lock("job", 60) is True
    assert await log.try_lock("job", 60) is False
    assert await log.try_lock("other", 60) is True
    assert await log.try_lock("brief", 0.05) is True

    async def free():
        return await log.try_lock("brief", 60)

    await aeventually(free)


async def test_stream_slots_count_up_to_the_limit(log):
    assert await log.stream_open(7, "a", limit=2, ttl=60)
    assert await log.stream_open(7, "b", limit=2, ttl=60)
    assert not await log.stream_open(7, "c", limit=2, ttl=60), "the user has 2 open"
    assert await log.stream_open(8, "c", limit=2, ttl=60), "another user counts apart"
    assert await log.stream_open(7, "d", limit=0, ttl=60), "0: no limit"
    await log.stream_close(7, "a")
    await log.stream_close(7, "d")
    assert await log.stream_open(7, "c", limit=2, ttl=60)

    await log.stream_refresh(7, "b", ttl=0.05)
    await log.stream_refresh_many([(7, "c"), (8, "c")], ttl=0.05)

    async def lapsed():
        return await log.stream_open(7, "e", limit=1, ttl=60)

    await aeventually(lapsed)


def append_elsewhere(log, *args, **kwargs) -> Event:
    """Append from another event loop in another thread, as another process would."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(event=asyncio.run(log.append(*args, **kwargs))[0]))
    thread.start()
    thread.join(30)
    return result["event"]


async def test_live_events_reach_subscribers_of_their_conversation(log, conversation):
    received: asyncio.Queue = asyncio.Queue()
    resumed = []
    live = log.live(lambda cid, event: received.put_nowait((cid, event)), lambda: resumed.append(1))
    try:
        await live.subscribe(conversation)
        await log.append(conversation, "message.delta", "{}")  # this loop's own: its caller delivers it
        other = str(uuid.uuid4())
        await asyncio.to_thread(append_elsewhere, log, other, "message.delta", "{}")  # not subscribed
        event = await asyncio.to_thread(
            append_elsewhere, log, conversation, "message.completed", '{"a":"b\\nc"}', message_id="m", final=True
        )
        cid, got = await asyncio.wait_for(received.get(), 10)
        assert cid == conversation
        assert got == event
        assert (got.message_id, got.final, got.data) == ("m", True, '{"a":"b\\nc"}')

        await live.unsubscribe(conversation)
        await asyncio.to_thread(append_elsewhere, log, conversation, "message.delta", "{}")
        marker = await asyncio.to_thread(append_elsewhere, log, other, "message.delta", "{}")
        await live.subscribe(other)
        after = await asyncio.to_thread(append_elsewhere, log, other, "message.delta", "{}")
        assert await asyncio.wait_for(received.get(), 10) == (other, after), (
            f"nothing else arrived: not the unsubscribed conversation, nor {marker} sent before subscribing"
        )
        assert received.empty()
    finally:
        await live.close()


async def test_redis_subscription_resumes_after_a_reconnect(redis_server, conversation):
    log = RedisEventLog(redis_server.url)
    log.prefix = f"test-{uuid.uuid4().hex}:"
    received: asyncio.Queue = asyncio.Queue()
    resumed = asyncio.Event()
    live = log.live(lambda cid, event: received.put_nowait(event), resumed.set)
    try:
        await live.subscribe(conversation)
        # Drop the subscription's connection, as a Redis restart does.
        name = log._live_channel(conversation)
        assert await log.redis.pubsub_numsub(name) == [(name, 1)]
        host, port = live.pubsub.connection._writer.get_extra_info("sockname")[:2]
        assert await log.redis.client_kill_filter(_type="pubsub", addr=f"{host}:{port}") == 1
        await asyncio.wait_for(resumed.wait(), 20)
        event = await asyncio.to_thread(append_elsewhere, log, conversation, "message.delta", "{}")
        assert await asyncio.wait_for(received.get(), 10) == event, "subscribed again after the reconnect"
    finally:
        await live.close()
