"""The app under another ASGI server: uvicorn's lifespan start-up runs daphne's ``serve`` start-up hooks.

uvicorn serves ``config.asgi:application`` on a real socket, with the same
database, Redis and settings as the daphne processes of ``tests.servers.Stack``.
Its lifespan shutdown (SIGTERM ending the generations) is tested with daphne's
in tests/chat/test_resilience.py.
"""

import pytest

from tests.servers import eventually, login

pytestmark = pytest.mark.processes

SLOW = "fake:chunks=200;interval_ms=25"


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

    port = stack.start_server(server="uvicorn")
    # No HTTP request yet: only the lifespan start-up can have started the reaper.
    eventually(lambda: message_status(stack, assistant_id) == "interrupted", timeout=15)
    assert "Application startup complete" in stack.logs[port].read_text()
    client = login(port, "olivia")
    assert client.get("/readyz").status_code == 200
    assert client.get(f"/api/conversations/{conversation['id']}/").json()["messages"][-1]["status"] == "interrupted"
    client.close()
