"""The generating side off the hot path: batched checkpoints, crash recovery from the log's partial reply, the
delta window.

In-process: real ``Generation`` objects on the in-process event log and the
test's database, fed by a scripted provider.
"""

import asyncio
import json
import time

import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from chat import generation, reaper, selectors, services
from chat.eventlog import MemoryEventLog, StateChange, get_event_log
from chat.providers.base import Finish, TextDelta


@pytest.fixture
def conversation(owner):
    return services.conversation_create(owner=owner, title="Engine", model="demo", system_prompt="")


def streaming_reply(conversation, owner, content="q"):
    _, reply = services.message_submit(conversation=conversation, author=owner, content=content, model="demo")
    return reply


class PacedProvider:
    """Sends ``chunks`` text deltas ``gap`` seconds apart, then finishes."""

    def __init__(self, chunks, gap):
        self.chunks, self.gap = chunks, gap

    async def stream(self, *, messages, on_retry=None):
        for chunk in self.chunks:
            await asyncio.sleep(self.gap)
            yield TextDelta(chunk)
        yield Finish("stop")


def run_generation(conversation, reply, provider, monkeypatch):
    """Run one generation of ``reply`` to its end with ``provider``; return the deltas the log got."""
    monkeypatch.setattr(generation, "get_provider", lambda model: provider)

    async def run():
        log = get_event_log()
        start = await log.tail(str(conversation.id))
        running = await generation.generation_start(
            conversation=conversation,
            user_message=None,
            assistant_message=reply,
            history=[],
            accepted_at=time.monotonic(),
        )
        await running.task
        return [e for e in await log.after(str(conversation.id), start) if e.type == "message.delta"]

    return async_to_sync(run)()


@pytest.mark.django_db
def test_due_checkpoints_of_several_replies_go_in_one_transaction(conversation, owner, make_user, settings):
    """Every generation of the process whose checkpoint is due: one hop, one transaction, each through its seq."""
    other = services.conversation_create(owner=owner, title="Other", model="demo", system_prompt="")
    replies = [streaming_reply(conversation, owner), streaming_reply(other, owner)]
    transactions = []

    def count(execute, sql, params, many, context):
        if sql.startswith(("BEGIN", "SAVEPOINT")):
            transactions.append(sql)
        return execute(sql, params, many, context)

    async def write():
        gens = []
        for reply, text in zip(replies, ("first 回答", "second"), strict=True):
            gen = generation.Generation(conversation=reply.conversation, message=reply, history=[], accepted_at=0)
            gen.content, gen._published_chars, gen.seq = [text, " unpublished"], len(text), 3
            gens.append(gen)
        writer = generation.checkpoints()
        for gen in gens:
            writer.add(gen)
        await writer.task
        return gens

    with connection.execute_wrapper(count):
        gens = async_to_sync(write)()
    assert len(transactions) == 1, transactions
    for reply, text in zip(replies, ("first 回答", "second"), strict=True):
        reply.refresh_from_db()
        assert (reply.content, reply.seq, reply.status) == (text, 3, "streaming")
    # The next checkpoint of each appends after what this one stored.
    assert [gen._stored for gen in gens] == [(3, len("first 回答"), 0), (3, len("second"), 0)]


@pytest.mark.django_db
def test_with_redis_holding_the_reply_the_database_is_checkpointed_rarely(conversation, owner, settings, monkeypatch):
    # As with Redis configured (the cadence reads REDIS_URL), on the in-process log.
    monkeypatch.setattr("chat.eventlog._log", MemoryEventLog())
    settings.REDIS_URL = "redis://127.0.0.1:1"
    settings.CHAT_CHECKPOINT_SECONDS, settings.CHAT_CHECKPOINT_REDIS_SECONDS = 0, 3600
    reply = streaming_reply(conversation, owner)
    due = []
    monkeypatch.setattr(generation.CheckpointWriter, "add", lambda self, gen: due.append(gen.seq))
    deltas = run_generation(conversation, reply, PacedProvider(["a"] * 20, 0.001), monkeypatch)
    assert len(deltas) >= 10 and due == []
    reply.refresh_from_db()
    assert reply.status == "complete" and reply.content == "a" * 20


@pytest.mark.django_db
def test_an_interrupted_reply_keeps_the_logs_partial_content_when_it_is_newer(conversation, owner):
    reply = streaming_reply(conversation, owner)
    services.message_checkpoint(message_id=reply.id, content="checkpoint", reasoning="", seq=2)
    ended = services.message_interrupt(message_id=reply.id, reason="gone", partial=(5, "checkpoint and more", "r"))
    assert (ended.status, ended.content, ended.reasoning) == ("interrupted", "checkpoint and more", "r")
    reply.refresh_from_db()
    assert reply.seq == 5
    assert ended.usage["completion_tokens"] > 0

    older = streaming_reply(conversation, owner, "again")
    services.message_checkpoint(message_id=older.id, content="newer in the database", reasoning="", seq=7)
    ended = services.message_interrupt(message_id=older.id, reason="gone", partial=(6, "older", ""))
    assert ended.content == "newer in the database"


@pytest.mark.django_db
def test_the_reaper_takes_the_partial_reply_from_the_log(conversation, owner):
    """A reply whose process is gone ends with what the event log held for it, past its last checkpoint."""
    reply = streaming_reply(conversation, owner)
    message_json = json.dumps({"id": str(reply.id)})

    async def reap():
        log = get_event_log()
        cid, mid = str(conversation.id), str(reply.id)
        await log.append(cid, "message.created", message_json, StateChange("start", mid, message=message_json))
        await log.append(cid, "message.delta", "{}", StateChange("delta", mid, seq=1, content="all that was "))
        await log.append(cid, "message.delta", "{}", StateChange("delta", mid, seq=2, content="published"))
        return await reaper.reap_interrupted(grace_seconds=0, confirm=False)

    assert async_to_sync(reap)() == 1
    reply.refresh_from_db()
    assert (reply.status, reply.content, reply.seq) == ("interrupted", "all that was published", 2)
    assert selectors.message_streaming_list() == []


@pytest.mark.django_db
def test_a_busy_process_coalesces_the_chunks_that_follow_a_publish(conversation, owner, settings, monkeypatch):
    """The first chunk goes at once; the ones within the window after it go together, as one delta."""
    settings.CHAT_DELTA_WINDOW_SECONDS = 0.2
    monkeypatch.setattr(generation, "COALESCE_FROM_GENERATIONS", 0)
    reply = streaming_reply(conversation, owner)
    started = time.monotonic()
    deltas = run_generation(conversation, reply, PacedProvider([f"{n} " for n in range(12)], 0.02), monkeypatch)
    took = time.monotonic() - started
    assert 2 <= len(deltas) <= 4, [d.data for d in deltas]
    assert '"content":"0 "' in deltas[0].data
    reply.refresh_from_db()
    assert reply.content == "".join(f"{n} " for n in range(12)) and reply.seq == len(deltas)
    assert took < 2


@pytest.mark.django_db
def test_a_quiet_process_sends_every_chunk_as_it_comes(conversation, owner, settings, monkeypatch):
    settings.CHAT_DELTA_WINDOW_SECONDS = 0.2
    reply = streaming_reply(conversation, owner)
    deltas = run_generation(conversation, reply, PacedProvider(["a", "b", "c"], 0.05), monkeypatch)
    assert len(deltas) == 3
