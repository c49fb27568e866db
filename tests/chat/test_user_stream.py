"""The user's own event stream, GET /api/events/, plain and multiplexed with conversations' streams.

Over real sockets: two daphne processes on one Redis (the fake provider for
replies), and the zero-config deployment (SQLite, no Redis, one process).
"""

import itertools
import uuid

import httpx
import pytest

from tests.chat.test_access import login_with_cookies
from tests.servers import eventually, login
from tests.sseclient import final_for, start_viewer

pytestmark = pytest.mark.processes

SHORT = "fake:chunks=10;interval_ms=10"
STEADY = "fake:chunks=60;interval_ms=20"
PEOPLE = ("olivia", "max", "otto", "dana")
# The bound: a share shows up on the other process within 1 s.
SHARE_WITHIN = 1.0
USER_EVENTS = "/api/events/"


@pytest.fixture(scope="module")
def servers(redis_server, fake_provider):
    from tests.servers import Stack

    stack = Stack(
        redis_url=redis_server.url,
        llm_base_url=fake_provider.base_url,
        llm_models=f"{SHORT},{STEADY}",
        extra_env={"CHAT_HEARTBEAT_SECONDS": "2"},
    ).setup(usernames=PEOPLE)
    a, b = stack.start_server(), stack.start_server()
    yield stack, a, b
    stack.stop()


def watch(client, path=USER_EVENTS, **kwargs):
    viewer = start_viewer(client, path, until=lambda e: False, with_presence=True, **kwargs)
    assert viewer.status == 200, getattr(viewer, "body", "")
    return viewer


def of_type(event_type, **fields):
    return lambda e: e.type == event_type and all(e.data.get(k) == v for k, v in fields.items())


def create(client, **body):
    response = client.post("/api/conversations/", json={"model": SHORT, **body})
    assert response.status_code == 201, response.text
    return response.json()


def share(owner, conversation, username):
    response = owner.post(f"/api/conversations/{conversation['id']}/members/", json={"username": username})
    assert response.status_code == 201, response.text
    return response.json()


def post(client, conversation, content="hello"):
    response = client.post(f"/api/conversations/{conversation['id']}/messages/", json={"content": content})
    assert response.status_code == 202, response.text
    return response.json()


def error_code(response):
    return response.json()["error"]["code"]


# --- the plain user stream ------------------------------------------------------------------


def test_a_share_reaches_the_member_on_the_other_process_within_a_second(servers):
    _, a, b = servers
    alice, bob = login(a, "olivia"), login(b, "max")
    alice_tabs, bob_stream = watch(login(b, "olivia")), watch(bob)
    conversation = create(alice, title="Q3 pipeline")
    # The owner's other tabs list it at once.
    added = alice_tabs.wait_for(of_type("conversation.added", id=conversation["id"]), timeout=SHARE_WITHIN)
    assert added.data == conversation and added.id
    shared = share(alice, conversation, "max")
    event = bob_stream.wait_for(of_type("conversation.added", id=conversation["id"]), timeout=SHARE_WITHIN)
    assert event.data == shared and event.data["members"] == ["max"]
    # The owner sees the member list change as an update, not as a second "added".
    alice_tabs.wait_for(lambda e: e.type == "conversation.updated" and e.data["members"] == ["max"], timeout=5)
    assert [e.type for e in alice_tabs.events if e.data.get("id") == conversation["id"]] == [
        "conversation.added",
        "conversation.updated",
    ]
    for viewer in (alice_tabs, bob_stream):
        viewer.close()


def test_removal_rename_post_and_delete_reach_everyone_concerned(servers, fake_provider):
    _, a, b = servers
    alice, bob, dana = login(a, "olivia"), login(b, "max"), login(a, "dana")
    conversation = create(alice, title="before")
    share(alice, conversation, "max")
    share(alice, conversation, "dana")
    cid = conversation["id"]
    bob_stream, dana_stream = watch(bob), watch(login(b, "dana"))

    assert alice.patch(f"/api/conversations/{cid}/", json={"title": "after"}).status_code == 200
    for viewer in (bob_stream, dana_stream):
        viewer.wait_for(lambda e: e.type == "conversation.updated" and e.data["title"] == "after", timeout=5)

    # A message posted: the conversation moves up every list (updated_at moves).
    before = alice.get(f"/api/conversations/{cid}/").json()["updated_at"]
    post(dana, {"id": cid})
    moved = bob_stream.wait_for(lambda e: e.type == "conversation.updated" and e.data["updated_at"] > before, timeout=5)
    assert moved.data["id"] == cid and moved.data["title"] == "after"

    assert alice.delete(f"/api/conversations/{cid}/members/max/").status_code == 204
    assert bob_stream.wait_for(of_type("conversation.removed", id=cid), timeout=5).data == {"id": cid}
    dana_stream.wait_for(lambda e: e.type == "conversation.updated" and e.data["members"] == ["dana"], timeout=5)

    eventually(lambda: alice.get(f"/api/conversations/{cid}/").json()["messages"][-1]["status"] != "streaming")
    alice_stream = watch(alice)
    assert alice.delete(f"/api/conversations/{cid}/").status_code == 204
    for viewer in (alice_stream, dana_stream):
        assert viewer.wait_for(of_type("conversation.removed", id=cid), timeout=5).data == {"id": cid}
    # Bob, no longer a member, hears nothing of the delete: his one "removed" is the removal's.
    assert len([e for e in bob_stream.events if e.type == "conversation.removed"]) == 1
    for viewer in (alice_stream, bob_stream, dana_stream):
        viewer.close()


def test_an_admin_restore_gives_the_conversation_back_to_owner_and_members(servers):
    stack, a, b = servers
    alice = login(a, "olivia")
    conversation = create(alice, title="restore me")
    share(alice, conversation, "otto")
    assert alice.delete(f"/api/conversations/{conversation['id']}/").status_code == 204
    streams = [watch(login(b, "olivia")), watch(login(a, "otto"))]
    # The admin's restore runs in another process (the admin's request, here a manage.py shell).
    stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\n"
        "from chat import services\nfrom chat.models import Conversation\n"
        "admin, _ = User.objects.get_or_create(username='root', defaults={'is_staff': True, 'is_superuser': True})\n"
        f"services.conversation_restore(conversation=Conversation.objects.get(pk='{conversation['id']}'), admin=admin)",
    )
    for viewer in streams:
        event = viewer.wait_for(of_type("conversation.added", id=conversation["id"]), timeout=5)
        assert event.data["title"] == "restore me" and event.data["members"] == ["otto"]
        viewer.close()


def test_the_retention_purge_removes_an_inactive_conversation_from_everyone_watching(servers):
    """The purge runs in another process (purge_expired, here a manage.py shell): lists and open streams hear it."""
    stack, a, b = servers
    alice = login(a, "olivia")
    stale, fresh = create(alice, title="stale"), create(alice, title="fresh")
    share(alice, stale, "otto")
    streams = [watch(login(b, "olivia")), watch(login(a, "otto"))]
    conversation_stream = start_viewer(
        login(b, "otto"), f"/api/conversations/{stale['id']}/events/", until=lambda e: False
    )
    assert conversation_stream.status == 200
    stack.manage(
        "shell",
        "-c",
        "from datetime import timedelta\nfrom django.conf import settings\nfrom django.utils import timezone\n"
        "from chat import services\nfrom chat.models import Conversation\n"
        "settings.CHAT_RETENTION_DAYS = 30\n"
        f"Conversation.objects.filter(pk='{stale['id']}').update(updated_at=timezone.now() - timedelta(days=31))\n"
        "print(services.conversation_purge_expired().counts)",
    )
    for viewer in streams:
        assert viewer.wait_for(of_type("conversation.removed", id=stale["id"]), timeout=5).data == {"id": stale["id"]}
    revoked = conversation_stream.wait_for(lambda e: e.type == "access.revoked", timeout=5)
    assert revoked.data == {"reason": "deleted"}
    assert alice.get(f"/api/conversations/{stale['id']}/").status_code == 404
    # Nothing about the conversation still in use.
    assert not [
        e
        for viewer in streams
        for e in viewer.events
        if e.data.get("id") == fresh["id"] and e.type != "conversation.added"
    ]
    for viewer in (*streams, conversation_stream):
        viewer.close()


def test_reconnecting_with_last_event_id_replays_exactly_what_was_missed(servers):
    _, a, b = servers
    alice = login(a, "olivia")
    bob = login(b, "max")
    conversation = create(alice)
    share(alice, conversation, "max")
    witness = watch(bob)
    first = watch(login(a, "max"))
    rename = lambda title: alice.patch(f"/api/conversations/{conversation['id']}/", json={"title": title})  # noqa: E731
    rename("one")
    first.wait_for(lambda e: e.type == "conversation.updated" and e.data["title"] == "one", timeout=5)
    first.close()
    for title in ("two", "three", "four"):
        rename(title)
    witness.wait_for(lambda e: e.type == "conversation.updated" and e.data["title"] == "four", timeout=5)
    last_id = first.events[-1].id
    for how in ("header", "query"):
        options = {"headers": {"Last-Event-ID": last_id}} if how == "header" else {}
        path = USER_EVENTS if how == "header" else f"{USER_EVENTS}?last_event_id={last_id}"
        second = watch(login(b, "max"), path, **options)
        second.wait_for(lambda e: e.type == "conversation.updated" and e.data["title"] == "four", timeout=5)
        second.close()
        got = [(e.id, e.type, e.raw) for e in first.events + second.events]
        assert got == [(e.id, e.type, e.raw) for e in witness.events], how
    witness.close()


@pytest.mark.parametrize("last_event_id", ["1000-0", "99999999999999-0"])
def test_an_unknown_or_too_old_id_gets_resync(servers, last_event_id):
    _, a, _ = servers
    viewer = watch(login(a, "otto"), headers={"Last-Event-ID": last_event_id})
    event = viewer.wait_for(lambda e: True, timeout=5)
    viewer.close()
    assert event.type == "resync" and event.data == {} and event.id


def test_heartbeats_and_signing_out_ends_the_stream(servers):
    _, a, b = servers
    leaving = login(a, "dana")
    viewer = watch(login_with_cookies(b, leaving))
    eventually(lambda: viewer.comments, timeout=10, message="no heartbeat")
    assert viewer.comments[0] == ": ping"
    assert leaving.post("/accounts/logout/").status_code in (200, 302)
    assert viewer.ended.wait(5), [e.type for e in viewer.events]
    assert viewer.events[-1].type == "access.revoked" and viewer.events[-1].data == {"reason": "signed_out"}


# --- multiplexed: the user's stream and conversations' streams on one connection --------------


def multiplexed(conversations):
    return f"{USER_EVENTS}?conversations={','.join(c['id'] for c in conversations)}"


def test_one_connection_carries_the_users_events_and_each_conversations_labelled(servers):
    _, a, b = servers
    alice, bob = login(a, "olivia"), login(b, "max")
    first, second = create(alice, title="first"), create(alice, title="second")
    for conversation in (first, second):
        share(alice, conversation, "max")
    viewer = watch(bob, multiplexed([first, second]))
    reply = post(alice, first)["assistant_message"]
    viewer.wait_for(lambda e: e.type == "message.completed" and e.data["id"] == reply["id"], timeout=10)
    assert alice.patch(f"/api/conversations/{second['id']}/", json={"title": "renamed"}).status_code == 200
    viewer.wait_for(lambda e: e.type == "conversation.updated" and e.data["title"] == "renamed", timeout=5)
    viewer.close()
    events = viewer.events
    # Every id is a vector: the user log's id, then each conversation's, in the URL's order.
    assert all(len(e.id.split(",")) == 3 for e in events)
    keys = [tuple(tuple(map(int, part.split("-"))) if part else (0, 0) for part in e.id.split(",")) for e in events]
    assert all(all(x <= y for x, y in zip(k1, k2, strict=True)) for k1, k2 in itertools.pairwise(keys))
    messages = [e for e in events if e.type.startswith("message.")]
    assert messages and all(e.raw.startswith(f'{{"conversation":"{first["id"]}",') for e in messages)
    # Gapless from 1 (under load the provider's chunks may arrive merged into fewer deltas).
    deltas = [e.data for e in messages if e.type == "message.delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1)) and deltas
    final = next(e.data for e in messages if e.type == "message.completed")
    assert "".join(d["content"] for d in deltas) == final["content"]
    # conversation.updated comes once per change, from the user's part (no conversation key).
    updates = [e for e in events if e.type == "conversation.updated"]
    assert all("conversation" not in e.data for e in updates)
    assert len([e for e in updates if e.data["title"] == "renamed"]) == 1
    # Presence on connect, for each conversation.
    greetings = [e.data for e in events if e.type == "presence"][:2]
    assert {g["conversation"] for g in greetings} == {first["id"], second["id"]}
    assert all(g["viewers"] == ["max"] for g in greetings)


def test_a_dropped_connection_resumes_every_log_exactly(servers, fake_provider):
    _, a, b = servers
    alice, bob = login(a, "olivia"), login(b, "max")
    conversations = [create(alice, model=STEADY) for _ in range(2)]
    for conversation in conversations:
        share(alice, conversation, "max")
    path = multiplexed(conversations)
    witness = watch(login(a, "max"), path)
    first = start_viewer(
        bob, path, until=lambda e: e.type == "message.delta" and e.data["seq"] == 15, with_presence=True
    )
    replies = [post(alice, conversation)["assistant_message"]["id"] for conversation in conversations]
    first.wait(30)
    # Reconnect only after both replies went on without this viewer.
    witness.wait_for(lambda e: e.type == "message.delta" and e.data["seq"] >= 30, timeout=20)
    second = watch(login(b, "max"), path, headers={"Last-Event-ID": first.events[-1].id})
    for reply in replies:
        for viewer in (witness, second):
            viewer.wait_for(final_for(reply), timeout=30)
    for viewer in (witness, second):
        viewer.close()
    # A replay sends each log's missed events in turn, not interleaved as they happened: compare log by log.
    ids = [c["id"] for c in conversations]
    combined = by_log(first.events + second.events, ids)
    assert combined == by_log(witness.events, ids)
    for log, events in combined.items():
        keys = [tuple(map(int, event_id.split("-"))) for event_id, _, _ in events]
        assert keys == sorted(set(keys)), f"{log}: a repeat or a step back"
    for reply in replies:
        deltas = [
            e.data["seq"]
            for e in first.events + second.events
            if e.type == "message.delta" and e.data["message_id"] == reply
        ]
        assert deltas == list(range(1, len(deltas) + 1)) and len(deltas) > 15, reply


def by_log(events, conversation_ids):
    """Each log's events (presence aside) as ``(its component of the id, type, data)``: the user's, then each one."""
    logs = {"user": [], **{cid: [] for cid in conversation_ids}}
    for event in events:
        if event.type == "presence":
            continue
        cid = event.data.get("conversation")
        component = event.id.split(",")[1 + conversation_ids.index(cid) if cid else 0]
        logs[cid or "user"].append((component, event.type, event.raw))
    return logs


def test_losing_one_conversation_keeps_the_others(servers):
    _, a, b = servers
    alice, bob, otto = login(a, "olivia"), login(b, "max"), login(a, "otto")
    kept, removed, deleted = (create(alice, title=t) for t in ("kept", "removed", "deleted"))
    for conversation in (kept, removed, deleted):
        share(alice, conversation, "max")
    never_shared = create(otto)
    viewer = watch(bob, multiplexed([kept, removed, deleted, never_shared]))
    # Listed but not readable: revoked at once (never telling whether it exists), the stream goes on.
    first = viewer.wait_for(lambda e: e.type == "access.revoked", timeout=5)
    assert first.data == {"conversation": never_shared["id"], "reason": "removed"}

    assert alice.delete(f"/api/conversations/{removed['id']}/members/max/").status_code == 204
    event = viewer.wait_for(lambda e: e.type == "access.revoked" and e.data["conversation"] == removed["id"], 5)
    assert event.data == {"conversation": removed["id"], "reason": "removed"}
    assert alice.delete(f"/api/conversations/{deleted['id']}/").status_code == 204
    event = viewer.wait_for(lambda e: e.type == "access.revoked" and e.data["conversation"] == deleted["id"], 5)
    assert event.data == {"conversation": deleted["id"], "reason": "deleted"}

    reply = post(alice, kept)["assistant_message"]
    viewer.wait_for(final_for(reply["id"]), timeout=10)
    assert not viewer.ended.is_set()
    viewer.close()
    # Reconnecting with the same URL and id: the lost ones are revoked again at once, the kept one resumes.
    again = watch(
        login(b, "max"),
        multiplexed([kept, removed, deleted, never_shared]),
        headers={"Last-Event-ID": viewer.events[-1].id},
    )
    eventually(lambda: len([e for e in again.events if e.type == "access.revoked"]) == 3, timeout=5)
    assert {e.data["conversation"]: e.data["reason"] for e in again.events if e.type == "access.revoked"} == {
        removed["id"]: "removed",
        deleted["id"]: "deleted",
        never_shared["id"]: "removed",
    }
    assert not again.ended.is_set()
    again.close()


def test_bad_lists_and_bad_vectors_are_refused(servers):
    _, a, _ = servers
    client = login(a, "otto")
    ids = [str(uuid.uuid4()) for _ in range(17)]
    cases = [
        (f"{USER_EVENTS}?conversations={','.join(ids)}", {}, "invalid_conversations"),
        (f"{USER_EVENTS}?conversations={ids[0]},not-an-id", {}, "invalid_conversations"),
        (f"{USER_EVENTS}?conversations={ids[0]},{ids[0]}", {}, "invalid_conversations"),
        (f"{USER_EVENTS}?conversations={ids[0]}", {"Last-Event-ID": "1-0"}, "invalid_event_id"),
        (f"{USER_EVENTS}?conversations={ids[0]}", {"Last-Event-ID": "1-0,2-0,3-0"}, "invalid_event_id"),
        (f"{USER_EVENTS}?conversations={ids[0]}", {"Last-Event-ID": "1-0,x"}, "invalid_event_id"),
        (f"{USER_EVENTS}?last_event_id=1-0,2-0", {}, "invalid_event_id"),
    ]
    for path, headers, code in cases:
        response = client.get(path, headers=headers, timeout=5)
        assert response.status_code == 400, (path, response.text)
        assert error_code(response) == code, path
        assert response.json()["error"]["message"]
    anonymous = httpx.get(f"http://127.0.0.1:{a}{USER_EVENTS}", timeout=5)
    assert anonymous.status_code == 401 and error_code(anonymous) == "not_authenticated"
    # Sixteen is fine; an empty component means "no cursor".
    viewer = watch(client, f"{USER_EVENTS}?conversations={','.join(ids[:16])}", headers={"Last-Event-ID": "," * 16})
    eventually(lambda: len([e for e in viewer.events if e.type == "access.revoked"]) == 16, timeout=5)
    viewer.close()


def test_a_multiplexed_stream_takes_one_stream_slot(redis_server, stack_factory):
    stack = stack_factory(redis_url=redis_server.url, extra_env={"CHAT_MAX_STREAMS_PER_USER": "1"}).setup()
    port = stack.start_server()
    alice = login(port, "olivia")
    conversations = [create(alice, model="demo") for _ in range(3)]
    viewer = watch(alice, multiplexed(conversations))
    refused = alice.get(USER_EVENTS, timeout=5)
    assert refused.status_code == 429 and error_code(refused) == "too_many_streams"
    viewer.close()
    again = eventually(
        lambda: (s := start_viewer(alice, USER_EVENTS, until=lambda e: False, with_presence=True)).status == 200 and s
    )
    again.close()


# --- zero configuration: SQLite, no Redis, one process -----------------------------------------


def test_the_user_stream_works_without_redis(stack_factory):
    stack = stack_factory(database="sqlite").setup()
    port = stack.start_server()
    alice, bob = login(port, "olivia"), login(port, "max")
    bob_stream = watch(bob)
    conversation = alice.post("/api/conversations/", json={}).json()
    share(alice, conversation, "max")
    bob_stream.wait_for(of_type("conversation.added", id=conversation["id"]), timeout=SHARE_WITHIN)
    multi = watch(login(port, "max"), multiplexed([conversation]))
    reply = post(alice, conversation)["assistant_message"]
    multi.wait_for(final_for(reply["id"]), timeout=30)
    bob_stream.wait_for(lambda e: e.type == "conversation.updated" and e.data["id"] == conversation["id"])
    assert alice.delete(f"/api/conversations/{conversation['id']}/members/max/").status_code == 204
    bob_stream.wait_for(of_type("conversation.removed", id=conversation["id"]), timeout=5)
    multi.wait_for(lambda e: e.type == "access.revoked" and e.data.get("conversation") == conversation["id"])
    bob_stream.close()
    multi.close()
