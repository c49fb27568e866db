"""The app under another ASGI server: uvicorn's lifespan events run daphne's ``serve`` start-up and shutdown hooks.

uvicorn serves ``config.asgi:application`` on a real socket, with the same
database, Redis and settings as the daphne processes of ``tests.servers.Stack``.
"""

import signal
import subprocess
import sys

import pytest

from tests.servers import ROOT, eventually, free_port, login, wait_for_port
from tests.sseclient import final_for, start_viewer

pytestmark = pytest.mark.processes

SLOW = "fake:chunks=200;interval_ms=25"


def start_uvicorn(stack, extra_env=None) -> int:
    """A uvicorn process serving the app for ``stack`` (lifespan required, as the bench runs it); its port."""
    port = free_port()
    log = stack.dir / f"uvicorn-{port}.log"
    stack.logs[port] = log
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
        + ["--lifespan", "on", "--no-access-log", "--timeout-graceful-shutdown", "5"],
        cwd=ROOT,
        env={**stack.env, **(extra_env or {})},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    stack.procs[port] = proc
    wait_for_port(port, proc=proc, timeout=30)
    return port


def message_status(stack, message_id) -> str:
    [(status,)] = stack.query("SELECT status FROM chat_message WHERE id = ?", (stack.uuid(message_id),))
    return status


def test_lifespan_startup_runs_the_reaper_before_any_request(fake_provider, stack_factory):
    # Without Redis, a process's first reaper pass ends every message left streaming by an earlier process.
    stack = stack_factory(llm_base_url=fake_provider.base_url, llm_models=SLOW).setup()
    daphne = stack.start_server()
    owner = login(daphne, "olivia")
    conversation = owner.post("/api/conversations/", json={"model": SLOW}).json()
    assistant_id = owner.post(f"/api/conversations/{conversation['id']}/messages/", json={"content": "hi"}).json()[
        "assistant_message"
    ]["id"]
    owner.close()
    stack.kill(daphne)
    assert message_status(stack, assistant_id) == "streaming"

    port = start_uvicorn(stack)
    # No HTTP request yet: only the lifespan start-up can have started the reaper.
    eventually(lambda: message_status(stack, assistant_id) == "interrupted", timeout=15)
    assert "Application startup complete" in stack.logs[port].read_text()
    client = login(port, "olivia")
    assert client.get("/readyz").status_code == 200
    assert client.get(f"/api/conversations/{conversation['id']}/").json()["messages"][-1]["status"] == "interrupted"
    client.close()


def test_sigterm_under_uvicorn_interrupts_generations_with_their_content(redis_server, fake_provider, stack_factory):
    # The same check as tests/chat/test_resilience.py's for daphne: a viewer on the other process sees the end.
    stack = stack_factory(redis_url=redis_server.url, llm_base_url=fake_provider.base_url, llm_models=SLOW).setup()
    a, b = start_uvicorn(stack), start_uvicorn(stack)
    owner_a, member_b = login(a, "olivia"), login(b, "max")
    assert owner_a.get("/readyz").status_code == 200
    conversation = owner_a.post("/api/conversations/", json={"model": SLOW}).json()
    owner_a.post(f"/api/conversations/{conversation['id']}/members/", json={"username": "max"})
    viewer = start_viewer(member_b, f"/api/conversations/{conversation['id']}/events/", until=lambda e: False)
    assistant_id = owner_a.post(f"/api/conversations/{conversation['id']}/messages/", json={"content": "hi"}).json()[
        "assistant_message"
    ]["id"]
    viewer.wait_for(lambda e: e.type == "message.delta" and e.data["seq"] >= 20)
    viewer.until = final_for(assistant_id)
    proc = stack.procs[a]
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down, then raises the signal it caught again: the exit status says SIGTERM.
    assert proc.wait(20) == -signal.SIGTERM
    viewer.wait_for(final_for(assistant_id), timeout=10)
    viewer.close()
    final = viewer.events[-1]
    assert final.type == "message.interrupted" and final.data["status"] == "interrupted"
    streamed = "".join(
        e.data["content"] for e in viewer.events if e.type == "message.delta" and e.data["message_id"] == assistant_id
    )
    assert final.data["content"] == streamed and len(streamed) > 0
    rest = member_b.get(f"/api/conversations/{conversation['id']}/").json()["messages"][-1]
    assert rest["status"] == "interrupted" and rest["content"] == streamed
    assert rest["error"]["code"] == "interrupted"
    assert "Application shutdown complete" in stack.logs[a].read_text()
    owner_a.close(), member_b.close()
