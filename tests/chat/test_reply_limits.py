"""No reply is lost, none runs forever: the final save, the caps on a reply, estimated usage, append-only checkpoints.

In-process tests drive a real ``Generation`` (the in-process event log and
channel layer, the test's database) from a provider that hands the storage
path what a provider could send; the caps run over real sockets: two daphne
processes on one Redis and the fake provider.
"""

import asyncio
import time

import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from chat import generation, selectors, services
from chat.eventlog import get_event_log
from chat.models import Message
from chat.providers.base import Finish, TextDelta, Usage
from chat.tokens import count_tokens, estimate_usage
from tests.servers import login
from tests.sseclient import SSEEvent, final_for, start_viewer

FINAL_TYPES = {"message.completed", "message.failed", "message.cancelled", "message.interrupted"}


class ScriptedProvider:
    """Hands the generation exactly these events, as a provider that let anything through would.

    With ``hold``, it then sets ``holding`` and sends nothing more, like a model still thinking.
    """

    def __init__(self, events, *, hold=False):
        self.events, self.hold = events, hold
        self.holding = asyncio.Event()

    async def stream(self, *, messages, on_retry=None):
        for event in self.events:
            await asyncio.sleep(0)
            yield event
        if self.hold:
            self.holding.set()
            await asyncio.Event().wait()


@pytest.fixture
def conversation(owner):
    return services.conversation_create(owner=owner, title="Limits", model="demo", system_prompt="Be brief.")


def generate(conversation, author, content="Hello 你好", *, stop_when=None):
    """Post ``content`` and run its generation to the end in this process (stopped once ``stop_when`` is set).

    Returns the stored reply and the events a viewer of the conversation got
    (every event of the in-process log since the post).
    """
    user_message, reply = services.message_submit(
        conversation=conversation, author=author, content=content, model=conversation.model
    )
    history = selectors.message_history_for_generation(conversation=conversation, before_message=reply)

    async def run():
        log = get_event_log()
        start = await log.tail(str(conversation.id))
        running = await generation.generation_start(
            conversation=conversation,
            user_message=user_message,
            assistant_message=reply,
            history=history,
            accepted_at=time.monotonic(),
        )
        if stop_when is not None:
            await stop_when.wait()
            await generation.generation_stop(message_id=reply.id)
        await running.task
        return [SSEEvent(e.id, e.type, e.data) for e in await log.after(str(conversation.id), start)]

    events = async_to_sync(run)()
    reply.refresh_from_db()
    return reply, history, events


def final_event(events, reply):
    (final,) = [e for e in events if e.type in FINAL_TYPES and e.data["id"] == str(reply.id)]
    return final


def streamed(events, reply):
    deltas = [e.data for e in events if e.type == "message.delta" and e.data["message_id"] == str(reply.id)]
    return "".join(d["content"] for d in deltas), "".join(d.get("reasoning", "") for d in deltas)


# --- a final save that fails keeps the content and says why -------------------------------------------


@pytest.mark.django_db
def test_a_refused_final_save_is_stored_made_safe_with_the_whole_reply(conversation, owner, monkeypatch):
    # A lone surrogate (no UTF-8 form) and a negative count (the table's CHECK): the row as received is refused.
    pieces = ["The answer ", "is \ud83d", " 42", " and\x00 that is all."]
    provider = ScriptedProvider([*map(TextDelta, pieces), Usage(-5, 7, 2), Finish("stop")])
    monkeypatch.setattr(generation, "get_provider", lambda model: provider)
    reply, history, events = generate(conversation, owner)
    safe = "The answer is \ufffd 42 and\ufffd that is all."
    assert reply.status == "complete" and reply.error is None and reply.finish_reason == "stop"
    assert reply.content == safe
    # The provider's unusable counts are replaced by an estimate, which says so.
    expected = estimate_usage(system_prompt="Be brief.", history=history, received=["".join(pieces), ""])
    assert reply.usage == {
        "prompt_tokens": expected.prompt_tokens,
        "completion_tokens": expected.completion_tokens,
        "total_tokens": expected.total_tokens,
        "estimated": True,
    }
    # Viewers get the final event of what was stored.
    final = final_event(events, reply)
    assert final.type == "message.completed" and final.data["content"] == safe and final.data["usage"] == reply.usage


@pytest.mark.django_db
def test_when_even_the_safe_row_is_refused_the_reply_fails_storage_failed_keeping_its_content(
    conversation, owner, monkeypatch
):
    # The database refuses every completed reply (a trigger): only a failed one can be stored.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE FUNCTION refuse_complete() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER refuse_complete BEFORE UPDATE ON chat_message FOR EACH ROW"
                " WHEN (NEW.status = 'complete') EXECUTE FUNCTION refuse_complete()"
            )
    else:
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TRIGGER refuse_complete BEFORE UPDATE ON chat_message"
                " WHEN NEW.status = 'complete' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
    pieces = [f"part {i} 你好 " for i in range(30)]
    provider = ScriptedProvider([*map(TextDelta, pieces), Usage(11, 30, 41), Finish("stop")])
    monkeypatch.setattr(generation, "get_provider", lambda model: provider)
    reply, _, events = generate(conversation, owner)
    assert reply.status == "failed" and reply.content == "".join(pieces)
    assert reply.error["code"] == "storage_failed"
    assert "could not be stored" in reply.error["message"]
    final = final_event(events, reply)
    assert final.type == "message.failed" and final.data["content"] == streamed(events, reply)[0] == reply.content
    assert final.data["error"] == reply.error


@pytest.mark.django_db
def test_finish_reason_longer_than_its_column_is_cut_not_lost(conversation, owner, monkeypatch):
    reason = "length_" + "x" * 300
    provider = ScriptedProvider([TextDelta("Long enough."), Usage(3, 4, 7), Finish(reason)])
    monkeypatch.setattr(generation, "get_provider", lambda model: provider)
    reply, _, events = generate(conversation, owner)
    column = Message._meta.get_field("finish_reason").max_length
    assert reply.status == "complete" and reply.content == "Long enough."
    assert reply.finish_reason == reason[:column]
    assert reply.usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "estimated": False}
    assert final_event(events, reply).data["finish_reason"] == reason[:column]


@pytest.mark.django_db
def test_error_code_longer_than_its_column_is_cut(conversation, owner):
    _, reply = services.message_submit(conversation=conversation, author=owner, content="q", model="demo")
    code = "provider_" + "e" * 200
    stored = services.message_finish(
        message_id=reply.id, status="failed", content="", reasoning="", seq=0, error_code=code, error_message="x"
    )
    column = Message._meta.get_field("error_code").max_length
    assert stored.error_code == code[:column]
    reply.refresh_from_db()
    assert reply.error_code == code[:column] and reply.status == "failed"


# --- estimated usage -------------------------------------------------------------------------------


def test_token_estimate():
    assert count_tokens("") == 0
    assert count_tokens("abcd") == 1 and count_tokens("abcde") == 2
    assert count_tokens("你好世界") == 4
    assert count_tokens("こんにちは") == 5 and count_tokens("안녕") == 2
    assert count_tokens("Hello 你好") == 2 + 2  # "Hello " is 6 characters: 2 tokens
    usage = estimate_usage(system_prompt="Be brief.", history=[("user", "Hello 你好")], received=["abcd", "你"])
    assert usage == Usage(prompt_tokens=(3 + 4) + (4 + 4), completion_tokens=2, total_tokens=17)
    assert estimate_usage(system_prompt="", history=[("user", "abcd")], received=[]).prompt_tokens == 5


@pytest.mark.django_db
def test_a_stopped_reply_without_provider_usage_gets_an_estimate(conversation, owner, monkeypatch):
    provider = ScriptedProvider([TextDelta("Let me think "), TextDelta("about 你好 ")], hold=True)
    monkeypatch.setattr(generation, "get_provider", lambda model: provider)
    reply, history, events = generate(conversation, owner, stop_when=provider.holding)
    assert reply.status == "cancelled" and reply.content == "Let me think about 你好 "
    expected = estimate_usage(system_prompt="Be brief.", history=history, received=[reply.content, ""])
    assert history == [("user", "Hello 你好")]
    assert reply.usage == {
        "prompt_tokens": expected.prompt_tokens,
        "completion_tokens": count_tokens(reply.content),
        "total_tokens": expected.total_tokens,
        "estimated": True,
    }
    assert final_event(events, reply).data["usage"] == reply.usage


@pytest.mark.django_db
def test_a_refused_request_has_no_usage(conversation, owner, settings, fake_provider):
    model = "fake:status=500"
    conversation.model = model
    settings.LLM_BASE_URL, settings.LLM_MODELS = fake_provider.base_url, [model]
    reply, _, _ = generate(conversation, owner)
    assert reply.status == "failed" and reply.content == "" and reply.usage is None


@pytest.mark.django_db
def test_the_reaper_estimates_an_interrupted_reply_from_its_checkpoint(conversation, owner):
    first_user, first_reply = services.message_submit(
        conversation=conversation, author=owner, content="first question", model="demo"
    )
    services.message_finish(message_id=first_reply.id, status="complete", content="一个回答", reasoning="", seq=1)
    _, reply = services.message_submit(conversation=conversation, author=owner, content="second", model="demo")
    services.message_checkpoint(message_id=reply.id, content="partial answer", reasoning="hmm", seq=3)
    ended = services.message_interrupt(message_id=reply.id, reason="gone")
    sent = [("user", "first question"), ("assistant", "一个回答"), ("user", "second")]
    expected = estimate_usage(system_prompt="Be brief.", history=sent, received=["partial answer", "hmm"])
    assert ended.status == "interrupted" and ended.content == "partial answer"
    assert ended.usage == {
        "prompt_tokens": expected.prompt_tokens,
        "completion_tokens": expected.completion_tokens,
        "total_tokens": expected.total_tokens,
        "estimated": True,
    }


# --- checkpoints append what is new ---------------------------------------------------------------


@pytest.mark.django_db
def test_checkpoints_append_only_what_is_new(conversation, owner):
    _, reply = services.message_submit(conversation=conversation, author=owner, content="q", model="demo")
    assert services.message_checkpoint(message_id=reply.id, content="abc", reasoning="", seq=1, stored=(0, 0, 0))
    assert services.message_checkpoint(message_id=reply.id, content="abcdé", reasoning="r", seq=2, stored=(1, 3, 0))
    reply.refresh_from_db()
    assert (reply.content, reply.reasoning, reply.seq) == ("abcdé", "r", 2)
    # A stale idea of what is stored (a checkpoint whose answer was lost): the whole text is written.
    assert services.message_checkpoint(message_id=reply.id, content="abcdéfg", reasoning="rs", seq=4, stored=(1, 3, 0))
    reply.refresh_from_db()
    assert (reply.content, reply.reasoning, reply.seq) == ("abcdéfg", "rs", 4)
    services.message_finish(message_id=reply.id, status="complete", content="abcdéfgh", reasoning="rs", seq=5)
    assert not services.message_checkpoint(message_id=reply.id, content="x", reasoning="", seq=6, stored=(5, 8, 2))
    reply.refresh_from_db()
    assert reply.content == "abcdéfgh"


@pytest.mark.django_db
def test_a_long_reply_writes_each_character_about_once(conversation, owner, settings, fake_provider):
    """Every published delta may trigger a checkpoint; together they write about the reply's size, not its square."""
    model = "fake:chunks=600;interval_ms=1;reasoning=50"
    conversation.model = model
    settings.LLM_BASE_URL, settings.LLM_MODELS = fake_provider.base_url, [model]
    settings.CHAT_CHECKPOINT_SECONDS = 0
    checkpoints = []  # (bytes of the text parameters, stored content, stored reasoning, stored seq)

    def capture(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        set_part = sql.split(" WHERE ", 1)[0]
        if sql.startswith('UPDATE "chat_message"') and '"content"' in set_part and '"status"' not in set_part:
            message_id, *row = Message.objects.values_list("id", "content", "reasoning", "seq").get(status="streaming")
            # The text written: every string parameter but the message's id (SQLite: hex) and status.
            size = sum(len(p.encode()) for p in params if isinstance(p, str) and p not in (message_id.hex, "streaming"))
            checkpoints.append((size, *row))
        return result

    with connection.execute_wrapper(capture):
        reply, _, events = generate(conversation, owner)
    assert reply.status == "complete"
    reply_bytes = len(reply.content.encode()) + len(reply.reasoning.encode())
    written = sum(size for size, *_ in checkpoints)
    print(f"{len(checkpoints)} checkpoints wrote {written} bytes of text for a reply of {reply_bytes} bytes")
    assert len(checkpoints) >= 20
    assert written <= reply_bytes
    # Each checkpoint's stored text runs exactly through the deltas up to its seq.
    deltas = [e.data for e in events if e.type == "message.delta"]
    for _, content, reasoning, seq in checkpoints:
        assert content == "".join(d["content"] for d in deltas[:seq])
        assert reasoning == "".join(d.get("reasoning", "") for d in deltas[:seq])


# --- the caps, over real sockets -------------------------------------------------------------------

# Both caps are in force on the same processes: the length cap is reached in about 200 deltas (50 of reasoning),
# well inside the time cap even on a loaded machine (5,000 characters, about 520 deltas, took over 3 s under load).
MAX_CHARS = 2000
MAX_SECONDS = 3
ENDLESS = "fake:chunks=100000;reasoning=50;interval_ms=1;usage=0"
SLOW_ENDLESS = "fake:chunks=100000;interval_ms=50"


@pytest.fixture(scope="module")
def capped(redis_server, fake_provider):
    from tests.servers import Stack

    stack = Stack(
        redis_url=redis_server.url,
        llm_base_url=fake_provider.base_url,
        llm_models=f"{ENDLESS},{SLOW_ENDLESS}",
        extra_env={"CHAT_MAX_REPLY_CHARS": str(MAX_CHARS), "CHAT_MAX_REPLY_SECONDS": str(MAX_SECONDS)},
    ).setup()
    a, b = stack.start_server(), stack.start_server()
    owner_a, member_b = login(a, "olivia"), login(b, "max")
    yield stack, owner_a, member_b
    owner_a.close(), member_b.close()
    stack.stop()


def run_capped(capped, fake_provider, model):
    """Post on one process, watch on the other; return the viewer's final event, its deltas' text and the row."""
    stack, owner_a, member_b = capped
    conversation = owner_a.post("/api/conversations/", json={"model": model}).json()
    owner_a.post(f"/api/conversations/{conversation['id']}/members/", json={"username": "max"})
    viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
    response = owner_a.post(f"/api/conversations/{conversation['id']}/messages/", json={"content": "Go on 你好"})
    assert response.status_code == 202, response.text
    assistant_id = response.json()["assistant_message"]["id"]
    viewer.until = final_for(assistant_id)
    viewer.wait_for(final_for(assistant_id), timeout=30)
    viewer.close()
    final = viewer.events[-1]
    deltas = [e.data for e in viewer.events if e.type == "message.delta" and e.data["message_id"] == assistant_id]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    content = "".join(d["content"] for d in deltas)
    reasoning = "".join(d.get("reasoning", "") for d in deltas)
    (row,) = stack.query(
        "SELECT status, content, reasoning, error_code, usage_estimated, completion_tokens FROM chat_message"
        " WHERE id = ?",
        (stack.uuid(assistant_id),),
    )
    # The provider saw the request closed from our side, before it ended.
    index = max(i for i, r in enumerate(fake_provider.requests()) if r["model"] == model)
    upstream = asyncio.run(fake_provider.wait_ended(index))
    return final, content, reasoning, row, upstream


@pytest.mark.processes
def test_a_reply_past_the_length_cap_ends_failed_with_its_text_through_the_cap(capped, fake_provider):
    final, content, reasoning, row, upstream = run_capped(capped, fake_provider, ENDLESS)
    assert final.type == "message.failed" and final.data["error"]["code"] == "reply_too_long"
    assert "2,000 characters" in final.data["error"]["message"]
    assert len(content) + len(reasoning) == MAX_CHARS and reasoning
    assert final.data["content"] == content and final.data["reasoning"] == reasoning
    assert row[:5] == ("failed", content, reasoning, "reply_too_long", True)
    assert final.data["usage"]["estimated"] is True
    assert final.data["usage"]["completion_tokens"] == count_tokens(content) + count_tokens(reasoning) == row[5]
    assert upstream["outcome"] == "client_closed" and upstream["deltas_sent"] < 100000


@pytest.mark.processes
def test_a_reply_past_the_time_cap_ends_failed_reply_timeout(capped, fake_provider):
    final, content, _, row, upstream = run_capped(capped, fake_provider, SLOW_ENDLESS)
    assert final.type == "message.failed" and final.data["error"]["code"] == "reply_timeout"
    assert f"{MAX_SECONDS} seconds" in final.data["error"]["message"]
    assert content and final.data["content"] == content and len(content) < MAX_CHARS
    assert final.data["duration_ms"] >= MAX_SECONDS * 1000
    assert row[:4] == ("failed", content, "", "reply_timeout")
    # The fake's usage chunk never came (the stream was cut): estimated.
    assert bool(row[4]) is True
    assert upstream["outcome"] == "client_closed"
