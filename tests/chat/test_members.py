"""Sharing a conversation: at most CHAT_MAX_MEMBERS members, also when adds race on two processes."""

import threading

import httpx
import pytest

from chat import services
from tests.servers import login


@pytest.fixture
def conversation(owner):
    return services.conversation_create(owner=owner, title="Shared", model="demo")


def add(client, conversation_id, username):
    return client.post(f"/api/conversations/{conversation_id}/members/", {"username": username})


@pytest.mark.django_db
def test_a_conversation_holds_at_most_chat_max_members(api, owner, make_user, conversation, settings):
    settings.CHAT_MAX_MEMBERS = 2
    client = api(owner)
    for name in ("ada", "ben", "cy"):
        make_user(name)
    assert add(client, conversation.id, "ada").status_code == 201
    assert add(client, conversation.id, "ben").status_code == 201
    response = add(client, conversation.id, "cy")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "too_many_members"
    assert "at most 2 members" in error["message"]
    assert sorted(conversation.members.values_list("username", flat=True)) == ["ada", "ben"]
    # Adding someone already there stays harmless at the limit.
    assert add(client, conversation.id, "ben").status_code == 201
    # Removing one makes room again.
    assert client.delete(f"/api/conversations/{conversation.id}/members/ada/").status_code == 204
    assert add(client, conversation.id, "cy").status_code == 201


def test_the_default_limit_is_50(settings):
    assert settings.CHAT_MAX_MEMBERS == 50


@pytest.mark.processes
def test_simultaneous_adds_on_two_processes_never_pass_the_limit(redis_server, stack_factory):
    stack = stack_factory(redis_url=redis_server.url, extra_env={"CHAT_MAX_MEMBERS": "3"}).setup(("olivia",))
    candidates = [f"user{i}" for i in range(12)]
    # Users without a password: they only need to exist and be active.
    stack.manage(
        "shell",
        "-c",
        f"from django.contrib.auth.models import User\nfor name in {candidates!r}: User.objects.create_user(name)",
    )
    a, b = stack.start_server(), stack.start_server()
    on_a, on_b = login(a, "olivia"), login(b, "olivia")
    conversation = on_a.post("/api/conversations/", json={}).json()["id"]
    path = f"/api/conversations/{conversation}/members/"
    for name in candidates[:2]:
        assert on_a.post(path, json={"username": name}).status_code == 201

    racers = candidates[2:]
    barrier = threading.Barrier(len(racers))
    responses = {}

    def race(name, session):
        with httpx.Client(base_url=session.base_url, cookies=session.cookies, headers=session.headers) as client:
            client.get("/healthz")  # connected before the barrier: the posts leave together
            barrier.wait(timeout=30)
            responses[name] = client.post(path, json={"username": name}, timeout=30)

    threads = [threading.Thread(target=race, args=(name, on_a if i % 2 else on_b)) for i, name in enumerate(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    statuses = sorted(response.status_code for response in responses.values())
    assert statuses == [201] + [400] * (len(racers) - 1)
    assert {r.json()["error"]["code"] for r in responses.values() if r.status_code == 400} == {"too_many_members"}
    (count,) = stack.query(
        "SELECT COUNT(*) FROM chat_conversation_members WHERE conversation_id = ?", (stack.uuid(conversation),)
    )[0]
    assert count == 3
    assert len(on_b.get(f"/api/conversations/{conversation}/").json()["members"]) == 3
