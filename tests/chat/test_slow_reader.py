"""A client that stops reading costs the server a bounded number of bytes, then resumes where it was cut off.

One daphne process on Redis, the fake provider streaming a reply of about
2.7 MB (5.4 MB on the wire with the final event's copy of it), and a budget
of 256 KiB of unsent bytes per viewer: a raw socket that reads nothing is cut
off, a viewer that reads gets the whole reply, and the cut-off client
reconnecting with ``Last-Event-ID`` gets exactly the rest. The kernel's send
buffer may take up to 4 MB (``tcp_wmem``) before anything waits in the
process; the cut then comes at the next heartbeat.
"""

import socket
import time

import pytest

from tests.fakeprovider import reply_text
from tests.servers import eventually, login
from tests.sseclient import final_for, parse_lines, start_viewer

pytestmark = pytest.mark.processes

BUDGET = 256 * 1024
# 150,000 deltas of about 18 UTF-8 bytes.
MODEL = "fake:chunks=150000"


@pytest.fixture
def server(stack_factory, redis_server, fake_provider):
    stack = stack_factory(
        redis_url=redis_server.url,
        llm_base_url=fake_provider.base_url,
        llm_models=MODEL,
        extra_env={
            "CHAT_VIEWER_MAX_PENDING_BYTES": str(BUDGET),
            "CHAT_MAX_REPLY_CHARS": "10000000",
            "CHAT_HEARTBEAT_SECONDS": "1",
        },
    ).setup()
    return stack, stack.start_server()


def open_non_reader(port: int, client, path: str) -> tuple[socket.socket, bytes]:
    """A raw event-stream request whose client reads its first frame (the stream is live) and then nothing."""
    sock = socket.socket()
    # A small receive window, so the kernel takes little off the server's hands.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nCookie: {cookie}\r\n\r\n".encode()
    )
    sock.settimeout(30)
    received = b""
    while b"retry: 2000" not in received:
        chunk = sock.recv(4096)
        assert chunk, "the event stream ended before its first frame"
        received += chunk
    return sock, received


def read_until_cut(sock: socket.socket, received: bytes) -> tuple[bytes, str]:
    """Everything the server sent before it ended the connection, and how it ended ("reset" or "eof")."""
    # A guard, not a measurement: a stream never cut off would otherwise be read forever (heartbeats).
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received, "reset"
        except TimeoutError:
            pytest.fail(f"the non-reading client was never cut off ({len(received)} bytes read, still open)")
        if not chunk:
            return received, "eof"
        received += chunk
        if b"event: message.completed" in received:
            pytest.fail(f"the non-reading client was never cut off: it got the whole reply ({len(received)} bytes)")
    pytest.fail(f"the non-reading client was never cut off ({len(received)} bytes read, still open)")


def complete_events(response: bytes) -> list:
    """The whole SSE events of a chunked HTTP response that may have been cut anywhere."""
    body, rest = b"", response.split(b"\r\n\r\n", 1)[1]
    while rest:
        size_line, found, rest = rest.partition(b"\r\n")
        if not found:
            break
        size = int(size_line, 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2 :]
    text = body.decode(errors="replace")
    text = text[: text.rfind("\n\n") + 2]  # drop the event the cut went through
    return [e for e in parse_lines(text.split("\n")) if not isinstance(e, tuple)]


def deltas_of(events, message_id) -> list[dict]:
    return [e.data for e in events if e.type == "message.delta" and e.data["message_id"] == message_id]


def test_non_reading_viewer_is_cut_off_and_resumes_exactly(server):
    stack, port = server
    owner = login(port, "olivia")
    conversation = owner.post("/api/conversations/", json={"model": MODEL}).json()
    path = f"/api/conversations/{conversation['id']}/events/"
    slow, received = open_non_reader(port, owner, path)
    fast = start_viewer(owner, path, until=lambda e: False)
    response = owner.post(f"/api/conversations/{conversation['id']}/messages/", json={"content": "Hello"})
    assert response.status_code == 202, response.text
    assistant_id = response.json()["assistant_message"]["id"]
    expected = reply_text(MODEL)
    assert 2 * len(expected.encode()) > 4 * 1024 * 1024 + 4 * BUDGET

    # The reader gets the whole reply while the other client reads nothing.
    fast.until = final_for(assistant_id)
    fast.wait_for(final_for(assistant_id), timeout=120)
    fast.close()
    assert "".join(d["content"] for d in deltas_of(fast.events, assistant_id)) == expected

    # The non-reader was cut off: reading now ends in a reset or EOF, not in the rest of the reply.
    try:
        eventually(lambda: "viewer cut off" in stack.log_text())
        received, ending = read_until_cut(slow, received)
    finally:
        slow.close()
    cut_events = complete_events(received)
    assert cut_events, f"the cut-off client received no whole event ({ending}, {len(received)} bytes)"
    assert not any(e.type == "message.completed" for e in cut_events), ending
    before = deltas_of(cut_events, assistant_id)

    # It reconnects from the last event it has and gets exactly the rest.
    resumed = start_viewer(owner, path, headers={"Last-Event-ID": cut_events[-1].id}, until=final_for(assistant_id))
    after = deltas_of(resumed.wait(timeout=60), assistant_id)
    owner.close()
    seqs = [d["seq"] for d in before + after]
    assert seqs == list(range(1, len(seqs) + 1))
    text = "".join(d["content"] for d in before + after)
    (stored,) = stack.query("SELECT content FROM chat_message WHERE id = ?", (stack.uuid(assistant_id),))
    assert text == stored[0] == expected
