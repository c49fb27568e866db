"""A message post sends its upstream request before it stores the messages, and drops it if storing is refused.

Real parts: a daphne process on a SQLite file, Redis, the fake provider. The
test holds SQLite's write lock (``BEGIN IMMEDIATE`` on the server's file), so
the post's store waits while its checks (reads) go through.
"""

import sqlite3
import threading

import pytest

from tests.fakeprovider import reply_text
from tests.servers import eventually, login

pytestmark = pytest.mark.processes

SLOW = "fake:chunks=50;interval_ms=20"


@pytest.fixture(scope="module")
def server(redis_server, fake_provider):
    from tests.servers import Stack

    stack = Stack(
        redis_url=redis_server.url,
        llm_base_url=fake_provider.base_url,
        llm_models=SLOW,
        database="sqlite",
        extra_env={"LLM_RETRY_SECONDS": "0"},
    ).setup()
    port = stack.start_server()
    client = login(port, "olivia")
    yield stack, client
    client.close()
    stack.stop()


class WriteLock:
    """SQLite's write lock on the server's database file, held from ``with`` until its end."""

    def __init__(self, path):
        self.connection = sqlite3.connect(path, isolation_level=None, timeout=20)

    def __enter__(self):
        self.connection.execute("BEGIN IMMEDIATE")
        return self

    def messages_with(self, content: str) -> int:
        return self.connection.execute("SELECT count(*) FROM chat_message WHERE content = ?", (content,)).fetchone()[0]

    def __exit__(self, *exc):
        self.connection.execute("ROLLBACK")
        self.connection.close()


def in_thread(call):
    """Run ``call()`` in a thread; returns a function that joins it and gives its result."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", call()))
    thread.start()

    def join():
        thread.join(30)
        return result["value"]

    return join


def requests_for(fake_provider, content: str) -> list[dict]:
    """The OpenAI-style requests whose last message is ``content``.

    The fake provider is shared by the worker's tests: other bodies (DashScope's ``input``, malformed ones) pass.
    """
    found = []
    for request in fake_provider.requests():
        messages = (request["body"] or {}).get("messages") if isinstance(request["body"], dict) else None
        if messages and messages[-1].get("content") == content:
            found.append(request)
    return found


def test_the_upstream_request_goes_out_while_the_messages_are_stored(server, fake_provider):
    stack, client = server
    conversation = client.post("/api/conversations/", json={"model": SLOW}).json()
    content = "upstream first"
    url = f"/api/conversations/{conversation['id']}/messages/"

    with WriteLock(stack.sqlite_path) as lock:
        posted = in_thread(lambda: client.post(url, json={"content": content}))
        # The provider has the request while the post still waits to store its messages.
        eventually(
            lambda: requests_for(fake_provider, content), timeout=10, message="no upstream request before the store"
        )
        assert lock.messages_with(content) == 0
    response = posted()

    assert response.status_code == 202, response.text
    reply_id = response.json()["assistant_message"]["id"]

    def final():
        reply = client.get(f"/api/conversations/{conversation['id']}/").json()["messages"][-1]
        return reply if reply["id"] == reply_id and reply["status"] != "streaming" else None

    reply = eventually(final, timeout=15)
    assert reply["status"] == "complete"
    assert reply["content"] == reply_text(SLOW, [{"role": "user", "content": content}])


def test_a_post_refused_when_storing_closes_its_upstream_request(server, fake_provider):
    stack, client = server
    conversation = client.post("/api/conversations/", json={"model": SLOW}).json()
    content = "two at once"
    url = f"/api/conversations/{conversation['id']}/messages/"

    with WriteLock(stack.sqlite_path):
        # Both pass the checks (nothing streams yet) and send their request; one store wins.
        posts = [in_thread(lambda: client.post(url, json={"content": content})) for _ in range(2)]
        eventually(lambda: len(requests_for(fake_provider, content)) == 2, timeout=10, message="both requests sent")
    responses = sorted((post() for post in posts), key=lambda r: r.status_code)

    assert [r.status_code for r in responses] == [202, 409]
    assert responses[1].json()["error"]["code"] == "generation_in_progress"
    outcomes = eventually(
        lambda: (
            sorted(r["outcome"] for r in requests_for(fake_provider, content))
            if all(r["outcome"] != "open" for r in requests_for(fake_provider, content))
            else None
        ),
        timeout=15,
    )
    # The refused post's request was closed at once, long before its 50 chunks; the other one completed.
    assert outcomes == ["client_closed", "completed"]
    refused = next(r for r in requests_for(fake_provider, content) if r["outcome"] == "client_closed")
    assert refused["deltas_sent"] < 50
    stored = stack.query("SELECT count(*) FROM chat_message WHERE content = ?", (content,))[0][0]
    assert stored == 1
