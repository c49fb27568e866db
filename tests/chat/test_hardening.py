"""Hardening over real sockets: exact limits across processes, bad input, idempotent posts, writes with Redis down.

Each test here failed before its fix (issue 9); two daphne processes share
one Redis and one database wherever a process boundary matters.
"""

import threading
import uuid

import pytest

from tests.servers import RedisServer, eventually, login
from tests.sseclient import final_for, start_viewer

pytestmark = pytest.mark.processes

SHORT = "fake:chunks=20;interval_ms=10"
SLOW = "fake:chunks=200;interval_ms=20"
PER_MINUTE = 20


@pytest.fixture(scope="module")
def servers(redis_server, fake_provider):
    from tests.servers import Stack

    stack = Stack(
        redis_url=redis_server.url,
        llm_base_url=fake_provider.base_url,
        llm_models=f"{SHORT},{SLOW},fake-echo",
        extra_env={"CHAT_MESSAGES_PER_MINUTE": str(PER_MINUTE), "CHAT_MAX_STREAMS_PER_USER": "0"},
    ).setup(usernames=("olivia", "max", "burst"))
    a, b = stack.start_server(), stack.start_server()
    yield stack, a, b
    stack.stop()


def error_of(response):
    return response.json()["error"]


def messages_path(conversation_id):
    return f"/api/conversations/{conversation_id}/messages/"


# --- the per-minute limit is exact across processes ----------------------------


def test_message_rate_limit_is_exact_under_a_concurrent_burst_on_two_processes(servers):
    stack, a, b = servers
    clients = [login(a, "burst"), login(b, "burst")]
    # One conversation a post: the one-generation-at-a-time rule must not be what refuses them.
    conversations = [clients[0].post("/api/conversations/", json={"model": SHORT}).json()["id"] for _ in range(100)]
    barrier = threading.Barrier(100)
    statuses = [None] * 100

    def fire(i):
        client = clients[i % 2]
        barrier.wait()
        statuses[i] = client.post(messages_path(conversations[i]), json={"content": f"burst {i}"}).status_code

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert statuses.count(202) == PER_MINUTE, statuses
    assert statuses.count(429) == 100 - PER_MINUTE, statuses
    (stored,) = stack.query(
        "SELECT COUNT(*) FROM chat_message m JOIN auth_user u ON u.id = m.author_id WHERE u.username = ?",
        ("burst",),
    )[0]
    assert stored == PER_MINUTE


# --- bad input gets a 4xx, never a 500 ---------------------------------------------


@pytest.mark.parametrize(
    "raw, code",
    [
        ('{"content": "half a pair \\ud83d here"}', "invalid_field"),
        ('{"content": "\\udc00"}', "invalid_field"),
        ('{"content": "nul \\u0000 inside"}', "invalid_field"),
        ("[" * 100_000 + "]" * 100_000, "invalid_json"),
        ('{"content": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid_json"),
    ],
    ids=["high-surrogate", "low-surrogate", "nul", "deep-array", "deep-field"],
)
def test_unstorable_or_hostile_json_is_a_400(servers, raw, code):
    stack, a, _ = servers
    client = login(a, "olivia")
    conversation = client.post("/api/conversations/", json={"model": SHORT}).json()["id"]
    response = client.post(messages_path(conversation), content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == code
    # The same for a conversation's fields.
    response = client.post("/api/conversations/", content=raw.replace("content", "title"))
    assert response.status_code == 400, response.text
    assert not stack.query("SELECT id FROM chat_message WHERE conversation_id = ?", (stack.uuid(conversation),))


def test_nul_in_a_query_or_a_path_is_a_400(servers):
    _, a, _ = servers
    client = login(a, "olivia")
    response = client.get("/api/conversations/", params={"q": "a\x00b"})
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_input"
    conversation = client.post("/api/conversations/", json={}).json()["id"]
    response = client.delete(f"/api/conversations/{conversation}/members/x%00y/")
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_input"


@pytest.mark.parametrize(
    "last_event_id",
    ["1-99999999999999999999999999999999", "18446744073709551616-0", "１２-0", "1-٣", "-1-0", "1-2-3", " 1-0"],
)
def test_an_impossible_last_event_id_is_a_400_not_a_hung_stream(servers, last_event_id):
    _, a, _ = servers
    client = login(a, "olivia")
    conversation = client.post("/api/conversations/", json={}).json()["id"]
    path = f"/api/conversations/{conversation}/events/"
    response = client.get(path, params={"last_event_id": last_event_id}, timeout=5)
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "invalid_event_id"


def test_text_cannot_forge_event_stream_framing(servers):
    """A message and a reply full of SSE syntax arrive as text: no extra event, no early end."""
    _, a, b = servers
    client = login(a, "olivia")
    conversation = client.post("/api/conversations/", json={"model": "fake-echo"}).json()["id"]
    forged = (
        "x\n\nid: 99999999999999-0\nevent: message.completed\ndata: {}\r\n\r\nevent: access.revoked\rdata: {}\n\n: y"
    )
    viewer = start_viewer(login(b, "olivia"), f"/api/conversations/{conversation}/events/", until=lambda e: False)
    reply_id = client.post(messages_path(conversation), json={"content": forged}).json()["assistant_message"]["id"]
    viewer.wait_for(final_for(reply_id))
    viewer.close()
    types = [e.type for e in viewer.events]
    assert types == ["message.created", "message.created", *["message.delta"] * (len(types) - 3), "message.completed"]
    assert viewer.events[0].data["content"] == forged
    assert viewer.events[-1].data["content"] == forged  # the echo model repeats the message


# --- Idempotency-Key -------------------------------------------------------------------


def test_a_repeated_post_with_the_same_idempotency_key_creates_nothing(servers):
    stack, a, b = servers
    first_client, retry_client = login(a, "max"), login(b, "max")
    conversation = first_client.post("/api/conversations/", json={"model": SHORT}).json()["id"]
    key = f"retry-{uuid.uuid4()}"
    body = {"content": "only once please"}
    first = first_client.post(messages_path(conversation), json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    # The retry goes to the other process, as behind a load balancer.
    again = retry_client.post(messages_path(conversation), json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 202, again.text
    assert again.json()["user_message"]["id"] == first.json()["user_message"]["id"]
    assert again.json()["assistant_message"]["id"] == first.json()["assistant_message"]["id"]
    rows = stack.query("SELECT COUNT(*) FROM chat_message WHERE conversation_id = ?", (stack.uuid(conversation),))
    assert rows[0][0] == 2

    # Once the reply ended, a repeat with Accept: text/event-stream gets its user message and final event.
    reply_id = first.json()["assistant_message"]["id"]
    viewer = start_viewer(
        retry_client,
        messages_path(conversation),
        method="POST",
        json_body=body,
        headers={"Idempotency-Key": key},
        until=final_for(reply_id),
    )
    events = viewer.wait(30)
    assert [e.type for e in events][0] == "message.created"
    assert events[-1].data["id"] == reply_id
    rows = stack.query("SELECT COUNT(*) FROM chat_message WHERE conversation_id = ?", (stack.uuid(conversation),))
    assert rows[0][0] == 2

    # The same key for another message is refused, and stores nothing.
    other = retry_client.post(
        messages_path(conversation), json={"content": "different"}, headers={"Idempotency-Key": key}
    )
    assert other.status_code == 422 and error_of(other)["code"] == "idempotency_key_reused"
    # Keys are per person: another user's identical key is theirs.
    owner = login(a, "olivia")
    mine = owner.post("/api/conversations/", json={"model": SHORT}).json()["id"]
    assert owner.post(messages_path(mine), json=body, headers={"Idempotency-Key": key}).status_code == 202


def test_a_repeat_while_the_reply_streams_follows_it_to_the_end(servers):
    stack, a, b = servers
    client = login(a, "max")
    conversation = client.post("/api/conversations/", json={"model": SLOW}).json()["id"]
    key = "stream-" + uuid.uuid4().hex
    first = client.post(messages_path(conversation), json={"content": "long"}, headers={"Idempotency-Key": key})
    reply_id = first.json()["assistant_message"]["id"]
    viewer = start_viewer(
        login(b, "max"),
        messages_path(conversation),
        method="POST",
        json_body={"content": "long"},
        headers={"Idempotency-Key": key},
        until=final_for(reply_id),
    )
    events = viewer.wait(60)
    types = [e.type for e in events]
    assert types[0] == "message.created" and types[1] == "message.snapshot", types
    snapshot = events[1].data
    text = snapshot["message"]["content"] + "".join(
        e.data["content"] for e in events if e.type == "message.delta" and e.data["seq"] > snapshot["seq"]
    )
    assert events[-1].type == "message.completed"
    assert text == events[-1].data["content"]


@pytest.mark.parametrize("key", ["", "x" * 201, "tab\there", "é"])
def test_a_malformed_idempotency_key_is_a_400(servers, key):
    _, a, _ = servers
    client = login(a, "max")
    conversation = client.post("/api/conversations/", json={"model": SHORT}).json()["id"]
    response = client.post(
        messages_path(conversation), json={"content": "x"}, headers={"Idempotency-Key": key.encode("utf-8")}
    )
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_idempotency_key"


# --- A write that committed is never answered with an error --------------------------


def test_with_redis_down_writes_either_succeed_or_are_refused_before_writing(fake_provider, stack_factory):
    redis = RedisServer().start()
    try:
        stack = stack_factory(redis_url=redis.url, llm_base_url=fake_provider.base_url, llm_models=SHORT).setup()
        port = stack.start_server()
        owner = login(port, "olivia")
        conversation = owner.post("/api/conversations/", json={"model": SHORT}).json()["id"]
        assert owner.post(f"/api/conversations/{conversation}/members/", json={"username": "max"}).status_code == 201
        redis.stop()

        # A plain post: stored, generated, and answered 202 (viewers resync later).
        response = owner.post(messages_path(conversation), json={"content": "while redis is down"})
        assert response.status_code == 202, response.text
        reply_id = response.json()["assistant_message"]["id"]

        # A streaming post needs Redis for its stream: refused before anything is written.
        streaming = owner.post(
            messages_path(conversation), json={"content": "stream it"}, headers={"Accept": "text/event-stream"}
        )
        assert streaming.status_code in (409, 503), streaming.text
        contents = [row[0] for row in stack.query("SELECT content FROM chat_message WHERE role = 'user'")]
        assert contents == ["while redis is down"]

        # PATCH and DELETE commit and say so.
        renamed = owner.patch(f"/api/conversations/{conversation}/", json={"title": "renamed offline"})
        assert renamed.status_code == 200, renamed.text
        assert owner.delete(f"/api/conversations/{conversation}/members/max/").status_code == 204
        assert stack.query("SELECT title FROM chat_conversation")[0][0] == "renamed offline"

        def finished():
            rows = stack.query("SELECT status FROM chat_message WHERE id = ?", (stack.uuid(reply_id),))
            return rows[0][0] != "streaming"

        eventually(finished, timeout=30)
        assert owner.delete(f"/api/conversations/{conversation}/").status_code == 204
        assert stack.query("SELECT deleted_at IS NOT NULL FROM chat_conversation") == [(1,)]
    finally:
        redis.stop()


# --- an error inside a running stream ends it ------------------------------------------


@pytest.mark.asyncio
async def test_an_error_inside_a_running_stream_ends_it_and_frees_its_slot(settings):
    """The client sees the stream end (and reconnects) instead of an open, silent connection."""
    from chat import eventstreams
    from chat.eventlog import get_event_log
    from chat.events import CONVERSATION_UPDATED
    from chat.fanout import get_hub, publish

    class BrokenAccess:
        async def lost(self):
            raise RuntimeError("the database went away mid-stream")

    conversation_id = str(uuid.uuid4())
    user = type("User", (), {"pk": 424242})()
    slot = await eventstreams._open_stream_slot(user, limit=1)
    viewer = await get_hub().join(conversation_id)
    stream = eventstreams._event_stream(
        viewer, BrokenAccess(), slot, last_id=await get_event_log().tail(conversation_id)
    )
    assert (await anext(stream)).startswith(b"retry:")
    await publish(conversation_id, CONVERSATION_UPDATED, "{}")
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert viewer not in viewer.feed.viewers
    # The slot is free again: a limit of one admits a new stream.
    await eventstreams._release_slot(await eventstreams._open_stream_slot(user, limit=1))
