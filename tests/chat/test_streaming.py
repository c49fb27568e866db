"""The streaming engine over real sockets: two daphne processes, one Redis, the fake provider.

Each test checks what users see: the events a viewer receives (ordered,
gapless, exactly once), the final text against what the provider sent, and
what REST and the database hold.
"""

import json
import time

import httpx
import pytest

from tests.fakeprovider import reply_text
from tests.servers import eventually, login
from tests.sseclient import final_for, start_viewer

pytestmark = pytest.mark.processes

STEADY = "fake:chunks=40;interval_ms=15;prompt_tokens=11;completion_tokens=40"
SLOW = "fake:chunks=300;interval_ms=25"
AWKWARD = "fake:chunks=30;interval_ms=5;split=3;eol=crlf;comments=1;bom=1"
REASONING = "fake:chunks=6;reasoning=4;interval_ms=5"
DASHSCOPE_LIKE = "fake:chunks=6;interval_ms=5;eol=cr"
FAILURES = {
    "fake:status=429;retry_after=7": ("provider_rate_limited", 0),
    "fake:status=401;leak=1": ("provider_auth_failed", 0),
    "fake:status=500": ("provider_unavailable", 0),
    "fake:chunks=8;error_after=3": ("provider_error", 3),
    "fake:chunks=8;reset_after=4": ("provider_connection_lost", 4),
    "fake:chunks=8;drop_after=2": ("provider_connection_lost", 2),
    "fake:chunks=6;done=0": ("provider_incomplete", 6),
    "fake:chunks=6;stall_after=2": ("provider_timeout", 2),
    "fake:chunks=6;garbage_after=1": ("provider_bad_response", 1),
}
LATE = "fake:chunks=150;interval_ms=20"
RECONNECT = "fake:chunks=60;interval_ms=20"
FLOOD = "fake:chunks=150;interval_ms=5"
SHORT = "fake:chunks=30;interval_ms=20"
MODELS = [STEADY, SLOW, AWKWARD, REASONING, DASHSCOPE_LIKE, LATE, RECONNECT, FLOOD, SHORT, "fake-echo", *FAILURES]
API_KEY = "sk-test-SECRET-do-not-leak-1234"


@pytest.fixture(scope="module")
def servers(redis_server, fake_provider, tmp_path_factory):
    from tests.servers import Stack

    stack = Stack(
        redis_url=redis_server.url,
        llm_base_url=fake_provider.base_url,
        llm_models=",".join(MODELS),
        # No retries: a 429 here must fail at once (tests/chat/test_providers_multi.py covers retrying).
        extra_env={
            "LLM_READ_TIMEOUT": "1.5",
            "CHAT_HEARTBEAT_SECONDS": "2",
            "LLM_API_KEY": API_KEY,
            "LLM_RETRY_SECONDS": "0",
        },
    ).setup()
    a, b = stack.start_server(), stack.start_server()
    yield stack, a, b
    stack.stop()


@pytest.fixture(scope="module")
def people(servers):
    stack, a, b = servers
    owner_a = login(a, "olivia")
    member_b = login(b, "max")
    outsider_b = login(b, "otto")
    yield owner_a, member_b, outsider_b
    for client in (owner_a, member_b, outsider_b):
        client.close()


def new_conversation(owner, model, *, share_with=("max",), system_prompt=""):
    conversation = owner.post("/api/conversations/", json={"model": model, "system_prompt": system_prompt}).json()
    for username in share_with:
        assert (
            owner.post(f"/api/conversations/{conversation['id']}/members/", json={"username": username}).status_code
            == 201
        )
    return conversation


def post(client, conversation, content="Hello 你好", **extra):
    response = client.post(f"/api/conversations/{conversation['id']}/messages/", json={"content": content, **extra})
    assert response.status_code == 202, response.text
    return response.json()


def expected_text(model, content="Hello 你好", system_prompt=""):
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": content}
    ]
    return reply_text(model, messages)


def deltas_of(events, message_id):
    return [e.data for e in events if e.type == "message.delta" and e.data["message_id"] == message_id]


def assert_gapless(deltas, start=1):
    assert [d["seq"] for d in deltas] == list(range(start, start + len(deltas)))


def provider_request(fake_provider, model, *, since=0):
    """The fake provider's record of its newest request for ``model`` past the first ``since`` of its log, or None."""
    records = [r for r in fake_provider.requests()[since:] if r.get("model") == model]
    return records[-1] if records else None


def deltas_sent(fake_provider, model, *, since):
    """How many chunks the fake provider has sent for its newest request for ``model`` past ``since``."""
    record = provider_request(fake_provider, model, since=since)
    return record["deltas_sent"] if record else 0


def last_message_when_done(client, conversation):
    """The conversation's newest message once it is no longer streaming, else None (for ``eventually``)."""
    last = client.get(f"/api/conversations/{conversation['id']}/").json()["messages"][-1]
    return last if last["status"] != "streaming" else None


def db_message(stack, message_id):
    (row,) = stack.query(
        "SELECT status, content, prompt_tokens, completion_tokens, total_tokens, error_code, error_message,"
        " time_to_first_token_ms, duration_ms, seq FROM chat_message WHERE id = ?",
        (stack.uuid(message_id),),
    )
    keys = "status content prompt_tokens completion_tokens total_tokens error_code error_message ttft duration seq"
    return dict(zip(keys.split(), row, strict=True))


def test_viewer_on_another_process_gets_exactly_the_generated_text(servers, people):
    stack, a, b = servers
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, STEADY)
    viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
    assert viewer.response_headers["content-type"].startswith("text/event-stream")
    assert viewer.response_headers["cache-control"] == "no-cache"
    assert viewer.response_headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in viewer.response_headers
    accepted = post(owner_a, conversation)
    assistant_id = accepted["assistant_message"]["id"]
    assert accepted["assistant_message"]["status"] == "streaming"
    assert accepted["user_message"]["author"] == "olivia"
    viewer.until = final_for(assistant_id)
    viewer.wait_for(final_for(assistant_id))
    viewer.close()
    events = viewer.events
    types = [e.type for e in events]
    assert types[:2] == ["message.created", "message.created"]
    assert types[-1] == "message.completed"
    assert all(e.id for e in events)
    ids = [tuple(map(int, e.id.split("-"))) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    deltas = deltas_of(events, assistant_id)
    assert_gapless(deltas)
    streamed = "".join(d["content"] for d in deltas)
    final = events[-1].data
    expected = expected_text(STEADY)
    assert streamed == final["content"] == expected
    assert final["usage"] == {"prompt_tokens": 11, "completion_tokens": 40, "total_tokens": 51, "estimated": False}
    assert final["finish_reason"] == "stop" and final["error"] is None
    rest = member_b.get(f"/api/conversations/{conversation['id']}/").json()["messages"][-1]
    assert rest["content"] == expected and rest["status"] == "complete" and rest["usage"] == final["usage"]
    row = db_message(stack, assistant_id)
    assert row["content"] == expected and row["total_tokens"] == 51 and row["seq"] == len(deltas)
    assert row["ttft"] is not None and row["duration"] >= row["ttft"]


def test_awkward_provider_stream_arrives_intact(servers, people):
    _, a, b = servers
    owner_a, member_b, _ = people
    for model in (AWKWARD, DASHSCOPE_LIKE):
        conversation = new_conversation(owner_a, model)
        # Watch before posting: a short reply can be over before a late viewer connects.
        viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
        assistant_id = post(owner_a, conversation)["assistant_message"]["id"]
        viewer.until = final_for(assistant_id)
        viewer.wait_for(final_for(assistant_id))
        viewer.close()
        events = viewer.events
        final = events[-1].data
        assert final["status"] == "complete"
        assert final["content"] == expected_text(model)


def test_reasoning_deltas(servers, people):
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, REASONING)
    viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
    assistant_id = post(owner_a, conversation)["assistant_message"]["id"]
    viewer.until = final_for(assistant_id)
    viewer.wait_for(final_for(assistant_id))
    viewer.close()
    deltas = deltas_of(viewer.events, assistant_id)
    assert_gapless(deltas)
    final = viewer.events[-1].data
    assert "".join(d.get("reasoning", "") for d in deltas) == final["reasoning"] != ""
    assert "".join(d["content"] for d in deltas) == final["content"] == expected_text(REASONING)


def test_late_joiner_gets_a_snapshot_then_the_rest(servers, people, fake_provider):
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, LATE)
    since = len(fake_provider.requests())
    assistant_id = post(owner_a, conversation)["assistant_message"]["id"]
    # Join late: once the reply is well under way (30 of its 150 chunks sent).
    eventually(lambda: deltas_sent(fake_provider, LATE, since=since) >= 30)
    viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=final_for(assistant_id))
    events = viewer.wait()
    assert events[0].type == "message.snapshot" and events[0].id
    snapshot = events[0].data
    assert snapshot["message"]["id"] == assistant_id and snapshot["message"]["status"] == "streaming"
    n = snapshot["seq"]
    assert 0 < n < 150
    deltas = deltas_of(events, assistant_id)
    assert_gapless(deltas, start=n + 1)
    final = events[-1].data["content"]
    assert snapshot["message"]["content"] + "".join(d["content"] for d in deltas) == final
    assert final == expected_text(LATE)


@pytest.mark.parametrize("how", ["header", "query"])
def test_reconnect_with_last_event_id_gets_exactly_the_missed_events(servers, people, how):
    owner_a, member_b, _ = people
    model = RECONNECT
    conversation = new_conversation(owner_a, model)
    path = f"/api/conversations/{conversation['id']}/events/"
    witness = start_viewer(member_b, path, until=lambda e: False)
    first = start_viewer(member_b, path, until=lambda e: e.type == "message.delta" and e.data["seq"] == 10)
    assistant_id = post(owner_a, conversation)["assistant_message"]["id"]
    witness.until = final_for(assistant_id)
    first_events = first.wait()
    # Reconnect only after the reply went on without this viewer: it missed some events.
    witness.wait_for(lambda e: e.type == "message.delta" and e.data["seq"] >= 20)
    last_id = first_events[-1].id
    if how == "header":
        second = start_viewer(member_b, path, headers={"Last-Event-ID": last_id}, until=final_for(assistant_id))
    else:
        second = start_viewer(member_b, f"{path}?last_event_id={last_id}", until=final_for(assistant_id))
    second_events = second.wait()
    witness.wait_for(final_for(assistant_id))
    witness.close()
    assert second_events[0].type != "message.snapshot"
    combined = [(e.id, e.type, e.raw) for e in first_events + second_events]
    full = [(e.id, e.type, e.raw) for e in witness.events]
    assert combined == full
    assert_gapless(deltas_of(first_events + second_events, assistant_id))


def test_too_old_or_unknown_last_event_id_gets_resync(servers, people):
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, STEADY)
    path = f"/api/conversations/{conversation['id']}/events/"
    viewer = start_viewer(member_b, path, headers={"Last-Event-ID": "1000-0"}, until=lambda e: e.type == "resync")
    events = viewer.wait(10)
    assert events[-1].type == "resync" and events[-1].data == {} and events[-1].id


def test_post_with_accept_event_stream_streams_that_generation_and_ends(servers, people):
    owner_a, _, _ = people
    conversation = new_conversation(owner_a, STEADY, share_with=())
    viewer = start_viewer(
        owner_a,
        f"/api/conversations/{conversation['id']}/messages/",
        method="POST",
        json_body={"content": "Hello 你好"},
    )
    events = viewer.wait()
    assert viewer.status == 200
    assert [e.type for e in events[:2]] == ["message.created", "message.created"]
    assert events[-1].type == "message.completed"
    assistant_id = events[1].data["id"]
    deltas = deltas_of(events, assistant_id)
    assert_gapless(deltas)
    assert "".join(d["content"] for d in deltas) == events[-1].data["content"] == expected_text(STEADY)


def test_one_generation_at_a_time(servers, people):
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, SLOW)
    assistant_id = post(owner_a, conversation)["assistant_message"]["id"]
    response = member_b.post(f"/api/conversations/{conversation['id']}/messages/", json={"content": "me too"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "generation_in_progress"
    assert member_b.post(f"/api/conversations/{conversation['id']}/messages/{assistant_id}/stop/").status_code == 202


def test_stop_from_the_other_process_closes_the_upstream_request(servers, people, fake_provider):
    stack, a, b = servers
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, SLOW)
    viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
    assistant_id = post(owner_a, conversation)["assistant_message"]["id"]
    viewer.wait_for(lambda e: e.type == "message.delta" and e.data["seq"] >= 5)
    viewer.until = final_for(assistant_id)
    stopped_at = time.monotonic()
    response = member_b.post(f"/api/conversations/{conversation['id']}/messages/{assistant_id}/stop/")
    assert response.status_code == 202
    viewer.wait_for(final_for(assistant_id), timeout=10)
    took = time.monotonic() - stopped_at
    viewer.close()
    final = viewer.events[-1]
    assert final.type == "message.cancelled"
    streamed = "".join(d["content"] for d in deltas_of(viewer.events, assistant_id))
    assert final.data["status"] == "cancelled" and final.data["content"] == streamed != ""
    assert len(streamed) < len(expected_text(SLOW))
    assert db_message(stack, assistant_id)["status"] == "cancelled"
    assert took < 5
    # The provider sees the connection closed (its log may trail the final event by a moment).
    record = eventually(lambda: (r := provider_request(fake_provider, SLOW))["outcome"] != "open" and r, timeout=3)
    assert record["outcome"] == "client_closed"
    assert record["deltas_sent"] < 300


@pytest.mark.parametrize("model", list(FAILURES))
def test_provider_failures_end_the_message_failed_keeping_partial_content(servers, people, model):
    stack, a, b = servers
    owner_a, member_b, _ = people
    code, kept = FAILURES[model]
    conversation = new_conversation(owner_a, model)
    viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
    assistant_id = post(owner_a, conversation)["assistant_message"]["id"]
    viewer.until = final_for(assistant_id)
    viewer.wait_for(final_for(assistant_id), timeout=20)
    viewer.close()
    final = viewer.events[-1]
    assert final.type == "message.failed"
    assert final.data["status"] == "failed"
    assert final.data["error"]["code"] == code
    message = final.data["error"]["message"]
    assert len(message) > 10 and API_KEY not in message and "SECRET" not in message
    failed_deltas = deltas_of(viewer.events, assistant_id)
    assert_gapless(failed_deltas)
    streamed = "".join(d["content"] for d in failed_deltas)
    assert final.data["content"] == streamed
    # Exactly the chunks the provider sent before failing (they may arrive merged into fewer deltas).
    assert streamed == "".join(f"w{i}·你好👋 " for i in range(kept))
    if code == "provider_rate_limited":
        assert "7" in message
    row = db_message(stack, assistant_id)
    assert row["status"] == "failed" and row["error_code"] == code and row["content"] == streamed
    # A failed reply does not block the next one.
    rest = member_b.get(f"/api/conversations/{conversation['id']}/").json()
    assert rest["messages"][-1]["error"] == final.data["error"]


def test_system_prompt_and_history_go_upstream(servers, people, fake_provider):
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, "fake-echo", system_prompt="Be brief.")
    first = post(owner_a, conversation, content="first question")
    viewer = start_viewer(
        member_b,
        f"/api/conversations/{conversation['id']}/events/?last_event_id=0-0",
        until=final_for(first["assistant_message"]["id"]),
    )
    viewer.wait()
    second = post(member_b, conversation, content="second question")
    eventually(lambda: last_message_when_done(member_b, conversation), timeout=10)
    request = [r for r in fake_provider.requests() if r.get("model") == "fake-echo"][-1]
    sent = request["body"]["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in sent[1:]] == ["user", "assistant", "user"]
    assert sent[1]["content"] == "first question" and sent[-1]["content"] == "second question"
    assert request["body"]["stream"] is True and request["body"]["stream_options"] == {"include_usage": True}
    assert request["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert second["user_message"]["author"] == "max"


def test_outsider_cannot_open_the_stream(servers, people):
    owner_a, _, outsider_b = people
    conversation = new_conversation(owner_a, STEADY)
    response = outsider_b.get(f"/api/conversations/{conversation['id']}/events/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "conversation_not_found"


def test_removed_member_stream_ends(servers, people):
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, STEADY)
    # start_viewer returns on the response's headers, sent once the stream is subscribed.
    viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
    assert owner_a.delete(f"/api/conversations/{conversation['id']}/members/max/").status_code == 204
    assert viewer.ended.wait(10), "the removed member's stream stayed open"
    assert not any(e.type == "conversation.updated" for e in viewer.events)


def test_deleting_the_conversation_ends_streams(servers, people):
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, STEADY)
    viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
    assert owner_a.delete(f"/api/conversations/{conversation['id']}/").status_code == 204
    assert viewer.ended.wait(10)


def test_conversation_updates_reach_viewers(servers, people):
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, STEADY)
    viewer = start_viewer(
        member_b,
        f"/api/conversations/{conversation['id']}/events/",
        until=lambda e: e.type == "conversation.updated",
    )
    assert owner_a.patch(f"/api/conversations/{conversation['id']}/", json={"title": "Renamed"}).status_code == 200
    events = viewer.wait(10)
    assert events[-1].data["title"] == "Renamed" and events[-1].data["members"] == ["max"]


def test_heartbeat_comment_while_idle(servers, people):
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, STEADY)
    viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
    # CHAT_HEARTBEAT_SECONDS is 2: two pings in a silence shorter than one default interval (15 s); a bound
    # of 4.5 s, half a second over two intervals, failed under load.
    eventually(lambda: viewer.comments.count(": ping") >= 2, timeout=12)
    viewer.close()


def test_slow_viewer_blocks_nobody_and_loses_nothing(servers, people):
    """One viewer reads nothing for a while; another streams on time; the slow one then gets everything."""
    import socket

    stack, a, b = servers
    owner_a, member_b, _ = people
    model = FLOOD
    conversation = new_conversation(owner_a, model)
    path = f"/api/conversations/{conversation['id']}/events/"
    cookie = "; ".join(f"{k}={v}" for k, v in member_b.cookies.items())
    slow = socket.create_connection(("127.0.0.1", b))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nCookie: {cookie}\r\n\r\n".encode()
    )
    fast = start_viewer(member_b, path, until=lambda e: False)
    started = time.monotonic()
    assistant_id = post(owner_a, conversation)["assistant_message"]["id"]
    fast.until = final_for(assistant_id)
    fast.wait_for(final_for(assistant_id), timeout=20)
    fast_took = time.monotonic() - started
    # The stall is the test: the slow viewer goes on reading nothing for a second after the reply ended.
    time.sleep(1.0)
    # Now the slow viewer reads everything it was sent.
    slow.settimeout(2)
    data = b""
    try:
        while b"message.completed" not in data:
            chunk = slow.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        slow.close()
    # Undo chunked transfer encoding (sizes count bytes).
    raw, rest = b"", data.split(b"\r\n\r\n", 1)[1]
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0 or len(rest) < size:
            raw += rest[:size]
            break
        raw += rest[:size]
        rest = rest[size + 2 :]
    # The read stops once "message.completed" arrived, maybe inside that event (even inside a character):
    # parse_lines drops an event that has not ended, and the deltas before it are whole.
    raw = raw.decode(errors="replace")
    from tests.sseclient import parse_lines

    events = [e for e in parse_lines(raw.split("\n")) if not isinstance(e, tuple)]
    deltas = deltas_of(events, assistant_id)
    assert_gapless(deltas)
    assert "".join(d["content"] for d in deltas) == expected_text(model)
    assert fast_took < 15


def test_api_key_appears_nowhere(servers, people, fake_provider):
    stack, a, b = servers
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, "fake:status=401;leak=1")
    viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
    assistant_id = post(owner_a, conversation)["assistant_message"]["id"]
    viewer.until = final_for(assistant_id)
    viewer.wait_for(final_for(assistant_id))
    viewer.close()
    # The fake really sent the key back in its error body.
    assert any(API_KEY in json.dumps(r) for r in fake_provider.requests())
    everything = "".join(e.raw for e in viewer.events)
    everything += member_b.get(f"/api/conversations/{conversation['id']}/").text
    everything += owner_a.get("/api/models/").text + owner_a.get("/").text
    everything += stack.log_text()
    with stack.db() as db:
        everything += json.dumps(db.execute("SELECT * FROM chat_message").fetchall(), default=str)
    assert API_KEY not in everything
    assert "SECRET-do-not-leak" not in everything


def test_kill_9_of_the_generating_process_interrupts_the_message(redis_server, fake_provider, stack_factory):
    # Short leases: the same mechanism as the defaults (20 s lease, a 10 s reaper confirming twice, about
    # 40 s in all, within the contract's 60 s), a fifth of the wait for the suite.
    stack = stack_factory(
        redis_url=redis_server.url,
        llm_base_url=fake_provider.base_url,
        llm_models=SLOW,
        extra_env={"CHAT_LEASE_SECONDS": "4", "CHAT_REAPER_INTERVAL_SECONDS": "2"},
    ).setup()
    a, b = stack.start_server(), stack.start_server()
    owner_a, member_b = login(a, "olivia"), login(b, "max")
    conversation = new_conversation(owner_a, SLOW)
    viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
    assistant_id = post(owner_a, conversation)["assistant_message"]["id"]
    viewer.wait_for(lambda e: e.type == "message.delta" and e.data["seq"] >= 80, timeout=20)  # > 1 checkpoint
    viewer.until = final_for(assistant_id)
    stack.kill(a)
    killed_at = time.monotonic()
    viewer.wait_for(final_for(assistant_id), timeout=65)
    took = time.monotonic() - killed_at
    viewer.close()
    final = viewer.events[-1]
    assert final.type == "message.interrupted" and final.data["status"] == "interrupted"
    assert took < 60  # the contract's bound; with these leases about 8 s
    row = db_message(stack, assistant_id)
    assert row["status"] == "interrupted" and row["content"] == final.data["content"] != ""
    streamed = "".join(d["content"] for d in deltas_of(viewer.events, assistant_id))
    assert streamed.startswith(final.data["content"])  # the last checkpoint
    print(f"interrupted {took:.1f}s after kill -9")
    # A restarted process leaves nothing streaming and serves new replies.
    a2 = stack.start_server()
    owner_a2 = login(a2, "olivia")
    rest = owner_a2.get(f"/api/conversations/{conversation['id']}/").json()
    assert all(m["status"] != "streaming" for m in rest["messages"])
    assert (
        owner_a2.post(f"/api/conversations/{conversation['id']}/messages/", json={"content": "again"}).status_code
        == 202
    )
    owner_a.close(), member_b.close(), owner_a2.close()


def test_restart_without_redis_leaves_no_message_streaming(fake_provider, stack_factory):
    stack = stack_factory(llm_base_url=fake_provider.base_url, llm_models=SLOW).setup()
    a = stack.start_server()
    owner = login(a, "olivia")
    conversation = new_conversation(owner, SLOW, share_with=())
    since = len(fake_provider.requests())
    assistant_id = post(owner, conversation)["assistant_message"]["id"]
    # Killed mid-reply: 60 of its 300 chunks sent, about 1.5 s in.
    eventually(lambda: deltas_sent(fake_provider, SLOW, since=since) >= 60, timeout=10)
    stack.kill(a)
    owner.close()
    a2 = stack.start_server()
    row = eventually(
        lambda: (r := db_message(stack, assistant_id))["status"] != "streaming" and r,
        timeout=10,
        message="still streaming after restart",
    )
    assert row["status"] == "interrupted" and row["error_code"] == "interrupted"
    owner = login(a2, "olivia")
    assert owner.get(f"/api/conversations/{conversation['id']}/").json()["messages"][-1]["status"] == "interrupted"
    owner.close()


def test_generation_outlives_every_viewer(servers, people):
    stack, a, b = servers
    owner_a, _, _ = people
    model = SHORT
    conversation = new_conversation(owner_a, model, share_with=())
    with httpx.Client(base_url=f"http://127.0.0.1:{a}", cookies=owner_a.cookies, headers=owner_a.headers) as client:
        with client.stream(
            "POST",
            f"/api/conversations/{conversation['id']}/messages/",
            json={"content": "Hello 你好"},
            headers={"Accept": "text/event-stream"},
        ) as response:
            assert response.status_code == 200
            next(response.iter_lines())
        # The tab is closed; the reply goes on.
    last = eventually(lambda: last_message_when_done(owner_a, conversation), timeout=15)
    assert last["status"] == "complete" and last["content"] == expected_text(model)
