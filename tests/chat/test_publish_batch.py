"""Several events of one conversation in one round trip (``append_batch``, ``fanout.publish_batch``), and
publications handed from an ORM thread to its event loop (``publish._publish_after_commit(wait=False)``)."""

import asyncio
import threading
import uuid

import pytest
from asgiref.sync import sync_to_async

from chat import fanout, publish
from chat.eventlog import ZERO, RedisEventLog, StateChange
from chat.events import MESSAGE_CREATED
from tests.chat.test_eventlog import log  # noqa: F401 (the fixture: each backend)

pytestmark = pytest.mark.asyncio


async def test_append_batch_logs_each_in_order_with_its_state(log):  # noqa: F811
    conversation = str(uuid.uuid4())
    message = '{"id":"m2","status":"streaming"}'
    results = await log.append_batch(
        conversation,
        [
            (MESSAGE_CREATED, '{"id":"m1"}', None, "m1", False),
            (MESSAGE_CREATED, message, StateChange("start", "m2", message=message), "m2", False),
            ("message.completed", '{"id":"m1"}', None, "m1", True),
        ],
    )
    events = [event for event, _ in results]
    assert [lost for _, lost in results] == [False, False, False]
    assert events[0].prev == ZERO and events[1].prev == events[0].id and events[2].prev == events[1].id
    assert await log.after(conversation, ZERO) == events
    assert [(e.message_id, e.final) for e in events] == [("m1", False), ("m2", False), ("m1", True)]
    tail, states = await log.cut(conversation)
    assert tail == events[2].id
    assert [(s.message_id, s.message, s.seq) for s in states] == [("m2", message, 0)]
    assert await log.append_batch(conversation, []) == []


async def test_publish_batch_defaults_message_id_and_final_as_publish_does():
    conversation = str(uuid.uuid4())
    message = '{"id":"m2"}'
    results = await fanout.publish_batch(
        conversation,
        [
            (MESSAGE_CREATED, '{"id":"m1"}', None, "m1"),
            (MESSAGE_CREATED, message, StateChange("start", "m2", message=message), None),
            ("message.failed", message, StateChange("end", "m2"), None),
        ],
    )
    assert [(e.message_id, e.final, e.log_key) for e, _ in results] == [
        ("m1", False, conversation),
        ("m2", False, conversation),
        ("m2", True, conversation),
    ]


async def test_a_publication_from_an_orm_thread_is_handed_to_the_loop_without_waiting(caplog):
    """The thread goes on before the publication runs; the loop runs it after, and a failure is only logged."""
    ran_on = []
    release = asyncio.Event()

    async def publication(value):
        await release.wait()
        ran_on.append((value, threading.get_ident()))

    async def failing():
        raise RuntimeError("store down")

    def on_the_orm_thread():
        publish._publish_after_commit("test", publication, "handed", wait=False)
        publish._publish_after_commit("test failure", failing, wait=False)
        return threading.get_ident()

    call = asyncio.ensure_future(sync_to_async(on_the_orm_thread, thread_sensitive=False)())
    # A thread that waited for the publication would not return before ``release``.
    done, _ = await asyncio.wait({call}, timeout=10)
    returned_first = call in done and ran_on == []
    release.set()
    thread = await call
    assert returned_first, "the thread returned while the publication waited"
    await asyncio.gather(*publish._handed_over, return_exceptions=True)
    assert ran_on == [("handed", threading.get_ident())]
    assert ran_on[0][1] != thread, "it ran on the event loop, not on the ORM thread"
    assert "test failure not published (store down)" in caplog.text


async def test_a_publication_waited_for_is_done_when_the_call_returns():
    done = []

    async def publication():
        await asyncio.sleep(0)
        done.append(1)

    def on_the_orm_thread():
        publish._publish_after_commit("test", publication)
        return list(done)

    assert await sync_to_async(on_the_orm_thread, thread_sensitive=False)() == [1]


async def test_appends_of_one_loop_pass_go_to_redis_together_and_survive_a_script_flush(redis_server):
    redis_log = RedisEventLog(redis_server.url)
    redis_log.prefix = f"test-{uuid.uuid4().hex}:"
    conversations = [str(uuid.uuid4()) for _ in range(3)]
    sent = []
    original = redis_log._run_scripts

    async def counted(script, calls):
        sent.append(len(calls))
        return await original(script, calls)

    redis_log._run_scripts = counted
    await redis_log.redis.script_flush()  # as after a Redis restart: the scripts must be loaded again
    results = await asyncio.gather(
        *(redis_log.append(cid, "message.delta", f'{{"n":{n}}}') for n in range(2) for cid in conversations)
    )
    assert sent == [6], "one pipeline for the six appends"
    assert [lost for _, lost in results] == [False] * 6
    for cid in conversations:
        mine = [event for event, _ in results if event.log_key == cid]
        assert await redis_log.after(cid, ZERO) == mine
        assert [event.data for event in mine] == ['{"n":0}', '{"n":1}']
    single, _ = await redis_log.append(conversations[0], "message.delta", "{}")
    assert sent == [6], "an append alone is one script call"
    assert single.prev == results[3][0].id
