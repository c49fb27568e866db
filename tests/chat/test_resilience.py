"""Graceful failure: SIGTERM of a generating process (daphne and uvicorn), and Redis restarted mid-stream."""

import signal
import time

import httpx
import pytest

from tests.fakeprovider import reply_text
from tests.servers import RedisServer, eventually, login
from tests.sseclient import final_for, start_viewer

pytestmark = pytest.mark.processes

SLOW = "fake:chunks=200;interval_ms=25"
SHORT = "fake:chunks=20;interval_ms=10"


def deltas(events, message_id):
    return [e.data for e in events if e.type == "message.delta" and e.data["message_id"] == message_id]


# daphne ends with status 0; uvicorn, after its lifespan shutdown, raises the signal it caught again.
SIGTERM_EXIT = {"daphne": 0, "uvicorn": -signal.SIGTERM}


@pytest.mark.parametrize("server", list(SIGTERM_EXIT))
def test_sigterm_interrupts_generations_with_their_content(redis_server, fake_provider, stack_factory, server):
    stack = stack_factory(redis_url=redis_server.url, llm_base_url=fake_provider.base_url, llm_models=SLOW).setup()
    a, b = stack.start_server(server=server), stack.start_server(server=server)
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
    assert proc.wait(20) == SIGTERM_EXIT[server]
    viewer.wait_for(final_for(assistant_id), timeout=10)
    viewer.close()
    final = viewer.events[-1]
    assert final.type == "message.interrupted" and final.data["status"] == "interrupted"
    streamed = "".join(d["content"] for d in deltas(viewer.events, assistant_id))
    # Everything generated before the shutdown is kept, not just the last checkpoint.
    assert final.data["content"] == streamed and len(streamed) > 0
    rest = member_b.get(f"/api/conversations/{conversation['id']}/").json()["messages"][-1]
    assert rest["status"] == "interrupted" and rest["content"] == streamed
    assert rest["error"]["code"] == "interrupted"
    # The stopped process takes no more requests; the other one still serves.
    with pytest.raises(httpx.TransportError):
        owner_a.get("/api/models/")
    assert member_b.get("/api/models/").status_code == 200
    if server == "uvicorn":
        assert "Application shutdown complete" in stack.logs[a].read_text()
    owner_a.close(), member_b.close()


def test_redis_restart_mid_stream(fake_provider, stack_factory):
    redis = RedisServer().start()
    try:
        stack = stack_factory(
            redis_url=redis.url,
            llm_base_url=fake_provider.base_url,
            llm_models=f"{SLOW},{SHORT}",
            extra_env={"CHAT_HEARTBEAT_SECONDS": "2"},
        ).setup()
        a, b = stack.start_server(), stack.start_server()
        owner_a, member_b = login(a, "olivia"), login(b, "max")
        conversation = owner_a.post("/api/conversations/", json={"model": SLOW}).json()
        cid = conversation["id"]
        owner_a.post(f"/api/conversations/{cid}/members/", json={"username": "max"})
        viewer = start_viewer(member_b, f"/api/conversations/{cid}/events/", until=lambda e: False)
        assistant_id = owner_a.post(f"/api/conversations/{cid}/messages/", json={"content": "hi"}).json()[
            "assistant_message"
        ]["id"]
        viewer.wait_for(lambda e: e.type == "message.delta" and e.data["seq"] >= 20)
        redis.stop()
        # The outage is the test: Redis stays down for 1.5 s of the reply (about 60 of its chunks).
        time.sleep(1.5)
        redis.start()

        # The stored reply completes intact: the generation never depended on Redis to finish.
        def finished():
            last = owner_a.get(f"/api/conversations/{cid}/").json()["messages"][-1]
            return last if last["status"] != "streaming" else None

        last = eventually(finished, timeout=30, interval=0.2)
        assert last["id"] == assistant_id and last["status"] == "complete"
        assert last["content"] == reply_text(SLOW, [{"role": "user", "content": "hi"}])
        # The viewer was told to resync (it cannot have seen every delta) and stays connected.
        viewer.wait_for(lambda e: e.type == "resync", timeout=20)
        assert not viewer.ended.is_set()
        # New generations work once Redis is back, and reach the same viewer live.
        owner_a.patch(f"/api/conversations/{cid}/", json={"model": SHORT})
        second = owner_a.post(f"/api/conversations/{cid}/messages/", json={"content": "again"})
        assert second.status_code == 202
        second_id = second.json()["assistant_message"]["id"]
        viewer.wait_for(final_for(second_id), timeout=20)
        viewer.close()
        events = viewer.events
        resync_at = max(i for i, e in enumerate(events) if e.type == "resync")
        after = events[resync_at:]
        second_deltas = deltas(after, second_id)
        # Gapless from the first; the 20 chunks may arrive merged into fewer deltas (a read that takes several).
        assert [d["seq"] for d in second_deltas] == list(range(1, len(second_deltas) + 1))
        final = [e for e in after if e.type == "message.completed" and e.data["id"] == second_id][0]
        assert "".join(d["content"] for d in second_deltas) == final.data["content"]
        assert final.data["content"] == reply_text(SHORT, [{"role": "user", "content": "again"}])
    finally:
        redis.stop()
