"""Messages form a tree: parents, edit-and-resend, regenerate, and the database's guard of the tree.

The API's refusals run in-process; what a generation sends upstream and what
viewers see runs over real sockets: two daphne processes, one Redis, the fake
provider (whose request log shows the history each reply was given).
"""

import uuid

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from chat import selectors, services
from chat.errors import RateLimited
from chat.models import Conversation, IdempotencyKey, Message
from tests.servers import eventually, login
from tests.sseclient import final_for, start_viewer

STEADY = "fake:chunks=20;interval_ms=10"
SLOW = "fake:chunks=300;interval_ms=25"
FAILING = "fake:status=500"
ECHO = "fake-echo"
MODELS = [ECHO, STEADY, SLOW, FAILING]


def url(conversation, suffix=""):
    return f"/api/conversations/{conversation.id}/{suffix}"


def error_of(response):
    return response.json()["error"]["code"]


def exchange(conversation, author, content, *, parent=services.LATEST, reply="a reply"):
    """A user message and its finished reply, stored as a post stores them."""
    user_message, placeholder = services.message_submit(
        conversation=conversation, author=author, content=content, model="demo", parent=parent
    )
    done = services.message_finish(message_id=placeholder.id, status="complete", content=reply, reasoning="", seq=1)
    return user_message, done


def regenerated(conversation, author, reply, *, content="another reply"):
    sibling = services.message_regenerate(conversation=conversation, requester=author, reply=reply, model="demo")
    return services.message_finish(message_id=sibling.id, status="complete", content=content, reasoning="", seq=1)


@pytest.fixture
def conversation(owner, member):
    conversation = Conversation.objects.create(owner=owner, title="Plans", model="demo")
    conversation.members.add(member)
    return conversation


# --- the tree in the database ---------------------------------------------------


@pytest.mark.django_db
def test_posts_chain_by_default_and_follow_the_given_parent(conversation, owner):
    q1, a1 = exchange(conversation, owner, "one")
    q2, a2 = exchange(conversation, owner, "two")
    assert (q1.parent_id, a1.parent_id, q2.parent_id, a2.parent_id) == (None, q1.id, a1.id, q2.id)
    edited, _ = exchange(conversation, owner, "two, better", parent=a1)
    root, _ = exchange(conversation, owner, "elsewhere", parent=None)
    assert edited.parent_id == a1.id and root.parent_id is None
    # The original branch stays.
    assert Message.objects.get(pk=q2.pk).parent_id == a1.id


@pytest.mark.django_db
def test_database_refuses_a_parent_from_another_conversation_or_a_changed_parent(conversation, owner):
    q1, a1 = exchange(conversation, owner, "one")
    q2, _ = exchange(conversation, owner, "two")
    other = Conversation.objects.create(owner=owner, model="demo")
    now = timezone.now()
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(
            conversation=other, parent=a1, role="user", author=owner, content="x", created_at=now, completed_at=now
        )
    # A parent that does not exist (yet).
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(
            conversation=conversation,
            parent_id=uuid.uuid4(),
            role="user",
            author=owner,
            content="x",
            completed_at=now,
        )
    # Re-parenting could close a loop (q1 under its own descendant): parents never change.
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.filter(pk=q1.pk).update(parent=q2)
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.filter(pk=q1.pk).update(parent=q1)
    # Nor does a message move to another conversation.
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.filter(pk=q2.pk).update(conversation=other)
    # Writing the same values again is fine (a full save writes every column).
    assert Message.objects.filter(pk=q2.pk).update(parent=a1, conversation=conversation) == 1
    assert Message.objects.get(pk=q1.pk).parent_id is None


@pytest.mark.processes
def test_migration_turns_each_conversation_into_a_chain(stack_factory):
    stack = stack_factory()
    stack.manage("migrate", "--noinput", "chat", "0008")
    stack.manage("migrate", "--noinput", "auth")
    stack.manage("shell", "-c", "from django.contrib.auth.models import User; User.objects.create_user('olivia')")
    ((owner_id,),) = stack.query("SELECT id FROM auth_user WHERE username = 'olivia'")
    conversations = [uuid.uuid4(), uuid.uuid4()]
    for conversation_id in conversations:
        stack.query(
            "INSERT INTO chat_conversation (id, owner_id, title, model, system_prompt, created_at, updated_at,"
            " legal_hold_reason) VALUES (?, ?, '', 'demo', '', ?, ?, '')",
            (stack.uuid(conversation_id), owner_id, "2026-01-01 10:00:00", "2026-01-01 10:00:00"),
        )
    # Two messages share a timestamp: (created_at, id) orders them, as the transcript does.
    same = sorted([uuid.uuid4(), uuid.uuid4()], key=lambda u: stack.uuid(u))
    rows = [
        (conversations[0], uuid.uuid4(), "2026-01-01 10:00:01"),
        (conversations[0], same[0], "2026-01-01 10:00:02"),
        (conversations[0], same[1], "2026-01-01 10:00:02"),
        (conversations[0], uuid.uuid4(), "2026-01-01 10:00:03"),
        (conversations[1], uuid.uuid4(), "2026-01-01 10:00:00"),
        (conversations[1], uuid.uuid4(), "2026-01-01 10:00:05"),
    ]
    for conversation_id, message_id, at in reversed(rows):
        stack.query(
            "INSERT INTO chat_message (id, conversation_id, role, content, reasoning, status, usage_estimated, seq,"
            " created_at, completed_at) VALUES (?, ?, 'user', 'x', '', 'complete', ?, 0, ?, ?)",
            (stack.uuid(message_id), stack.uuid(conversation_id), False, at, at),
        )
    stack.manage("migrate", "--noinput", "chat", "0009")
    parents = dict(stack.query("SELECT id, parent_id FROM chat_message"))
    first = [stack.uuid(m) for c, m, _ in rows if c == conversations[0]]
    second = [stack.uuid(m) for c, m, _ in rows if c == conversations[1]]
    for chain in (first, second):
        assert [parents[m] for m in chain] == [None, *chain[:-1]]
    # The migrated database itself refuses a changed parent.
    with pytest.raises(Exception, match="parent must be an existing message of the same conversation"):
        stack.query("UPDATE chat_message SET parent_id = NULL WHERE id = ?", (first[1],))


# --- history: the ancestors only ------------------------------------------------------


@pytest.mark.django_db
def test_history_is_the_new_messages_ancestors_only(conversation, owner, django_assert_num_queries):
    q1, a1 = exchange(conversation, owner, "q1", reply="a1")
    regenerated(conversation, owner, a1, content="a1 again")
    exchange(conversation, owner, "q2", reply="a2")
    edited, placeholder = services.message_submit(
        conversation=conversation, author=owner, content="q2 edited", model="demo", parent=a1
    )
    with django_assert_num_queries(1):
        history = selectors.message_history_for_generation(conversation=conversation, before_message=placeholder)
    assert history == [("user", "q1"), ("assistant", "a1"), ("user", "q2 edited")]


@pytest.mark.django_db
def test_regenerates_count_against_the_message_rate(conversation, owner):
    _, reply = services.message_submit(
        conversation=conversation, author=owner, content="q", model="demo", messages_per_minute=2
    )
    reply = services.message_finish(message_id=reply.id, status="complete", content="a", reasoning="", seq=1)
    sibling = services.message_regenerate(
        conversation=conversation, requester=owner, reply=reply, model="demo", messages_per_minute=2
    )
    services.message_finish(message_id=sibling.id, status="complete", content="b", reasoning="", seq=1)
    with pytest.raises(RateLimited):
        services.message_regenerate(
            conversation=conversation, requester=owner, reply=reply, model="demo", messages_per_minute=2
        )


# --- the API's refusals --------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("which", ["user message", "other conversation", "garbage", "unknown"])
def test_post_with_a_bad_parent_is_400_invalid_parent(api, owner, conversation, which):
    q1, a1 = exchange(conversation, owner, "q1")
    other = Conversation.objects.create(owner=owner, model="demo")
    _, elsewhere = exchange(other, owner, "q")
    parent = {
        "user message": str(q1.id),
        "other conversation": str(elsewhere.id),
        "garbage": "not-a-uuid",
        "unknown": str(uuid.uuid4()),
    }[which]
    response = api(owner).post(url(conversation, "messages/"), {"content": "hi", "parent": parent})
    assert response.status_code == 400 and error_of(response) == "invalid_parent"
    assert "assistant reply" in response.json()["error"]["message"]
    assert Message.objects.filter(conversation=conversation).count() == 2


@pytest.mark.django_db
def test_post_parent_of_the_wrong_type_is_400(api, owner, conversation):
    response = api(owner).post(url(conversation, "messages/"), {"content": "hi", "parent": 5})
    assert response.status_code == 400 and error_of(response) == "invalid_field"
    assert response.json()["error"]["message"] == "The field 'parent' must be a string or null."


@pytest.mark.django_db
def test_regenerate_refusals(api, owner, member, outsider, conversation):
    q1, a1 = exchange(conversation, owner, "q1")
    cases = [
        (owner, f"messages/{q1.id}/regenerate/", {}, 400, "not_a_reply"),
        (owner, f"messages/{uuid.uuid4()}/regenerate/", {}, 404, "message_not_found"),
        (owner, "messages/banana/regenerate/", {}, 404, "message_not_found"),
        (outsider, f"messages/{a1.id}/regenerate/", {}, 404, "conversation_not_found"),
        (member, f"messages/{a1.id}/regenerate/", {"model": "nope"}, 400, "unknown_model"),
        (member, f"messages/{a1.id}/regenerate/", {"content": "x"}, 400, "unknown_field"),
    ]
    for user, suffix, data, status, code in cases:
        response = api(user).post(url(conversation, suffix), data)
        assert (response.status_code, error_of(response)) == (status, code), suffix
    assert api(owner).get(url(conversation, f"messages/{a1.id}/regenerate/")).status_code == 405
    _, streaming = services.message_submit(conversation=conversation, author=owner, content="q2", model="demo")
    response = api(owner).post(url(conversation, f"messages/{streaming.id}/regenerate/"))
    assert response.status_code == 409 and error_of(response) == "not_final"
    # Any generation running in the conversation blocks a regenerate of another reply.
    response = api(member).post(url(conversation, f"messages/{a1.id}/regenerate/"))
    assert response.status_code == 409 and error_of(response) == "generation_in_progress"
    assert Message.objects.filter(conversation=conversation).count() == 4


# --- over real sockets: two processes, one Redis, the fake provider ---------------------


@pytest.fixture(scope="module")
def servers(redis_server, fake_provider):
    from tests.servers import Stack

    stack = Stack(
        redis_url=redis_server.url,
        llm_base_url=fake_provider.base_url,
        llm_models=",".join(MODELS),
        extra_env={"LLM_READ_TIMEOUT": "1.5", "CHAT_HEARTBEAT_SECONDS": "2"},
    ).setup()
    a, b = stack.start_server(), stack.start_server()
    yield stack, a, b
    stack.stop()


@pytest.fixture(scope="module")
def people(servers):
    _, a, b = servers
    owner_a, member_b, outsider_b = login(a, "olivia"), login(b, "max"), login(b, "otto")
    yield owner_a, member_b, outsider_b
    for client in (owner_a, member_b, outsider_b):
        client.close()


def new_conversation(owner, model, *, system_prompt=""):
    conversation = owner.post("/api/conversations/", json={"model": model, "system_prompt": system_prompt}).json()
    assert owner.post(f"/api/conversations/{conversation['id']}/members/", json={"username": "max"}).status_code == 201
    return conversation


def path(conversation, suffix=""):
    return f"/api/conversations/{conversation['id']}/{suffix}"


def ended(client, conversation, message_id):
    """The message once it has ended, read over REST."""

    def final():
        messages = {m["id"]: m for m in client.get(path(conversation)).json()["messages"]}
        message = messages[message_id]
        return message if message["status"] != "streaming" else None

    return eventually(final)


def send(client, conversation, content, **extra):
    response = client.post(path(conversation, "messages/"), json={"content": content, **extra})
    assert response.status_code == 202, response.text
    body = response.json()
    ended(client, conversation, body["assistant_message"]["id"])
    return body["user_message"], body["assistant_message"]


def upstream_messages(fake_provider, marker):
    """The messages sent upstream by the one request whose last message contains ``marker``."""
    (record,) = [r for r in fake_provider.requests() if marker in str(r.get("body", {}).get("messages", [{}])[-1])]
    return [(m["role"], m["content"]) for m in record["body"]["messages"]]


@pytest.mark.processes
def test_edit_and_resend_sends_only_the_new_branch_upstream(servers, people, fake_provider):
    owner_a, member_b, _ = people
    tag = uuid.uuid4().hex[:8]
    conversation = new_conversation(owner_a, ECHO, system_prompt="Be brief.")
    q1, a1 = send(owner_a, conversation, f"q1 {tag}")
    q2, a2 = send(member_b, conversation, f"q2 {tag}")
    assert (q1["parent"], a1["parent"], q2["parent"], a2["parent"]) == (None, q1["id"], a1["id"], q2["id"])
    # Edit q2 and resend: a new branch under a1; the original stays.
    edited, reply = send(member_b, conversation, f"q2 edited {tag}", parent=a1["id"])
    assert edited["parent"] == a1["id"] and reply["parent"] == edited["id"]
    a1_text = ended(owner_a, conversation, a1["id"])["content"]
    assert upstream_messages(fake_provider, f"q2 edited {tag}") == [
        ("system", "Be brief."),
        ("user", f"q1 {tag}"),
        ("assistant", a1_text),
        ("user", f"q2 edited {tag}"),
    ]
    # Continuing the first branch sends that branch, not the edit.
    q3, _ = send(owner_a, conversation, f"q3 {tag}", parent=a2["id"])
    sent = upstream_messages(fake_provider, f"q3 {tag}")
    assert [content for _, content in sent[1:]][::2] == [f"q1 {tag}", f"q2 {tag}", f"q3 {tag}"]
    assert not any("edited" in content for _, content in sent)
    # A new root: only the system prompt and the message itself.
    root, _ = send(owner_a, conversation, f"fresh {tag}", parent=None)
    assert root["parent"] is None
    assert upstream_messages(fake_provider, f"fresh {tag}") == [("system", "Be brief."), ("user", f"fresh {tag}")]
    messages = owner_a.get(path(conversation)).json()["messages"]
    assert len(messages) == 10 and {m["id"] for m in messages} >= {q2["id"], a2["id"], edited["id"]}


@pytest.mark.processes
def test_regenerate_on_one_process_streams_to_a_viewer_on_the_other(servers, people, fake_provider):
    stack, a, b = servers
    owner_a, member_b, _ = people
    tag = uuid.uuid4().hex[:8]
    conversation = new_conversation(owner_a, ECHO)
    question, first = send(owner_a, conversation, f"question {tag}")
    viewer = start_viewer(member_b, path(conversation, "events/"), until=lambda e: False)
    response = owner_a.post(path(conversation, f"messages/{first['id']}/regenerate/"), json={"model": STEADY})
    assert response.status_code == 202, response.text
    (key,) = response.json()
    sibling = response.json()[key]
    assert key == "assistant_message" and sibling["status"] == "streaming"
    assert sibling["parent"] == question["id"] and sibling["model"] == STEADY
    viewer.wait_for(final_for(sibling["id"]))
    viewer.close()
    created = [e.data for e in viewer.events if e.type == "message.created"]
    assert [(m["id"], m["parent"]) for m in created] == [(sibling["id"], question["id"])]
    deltas = [e.data for e in viewer.events if e.type == "message.delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1)) and deltas
    final = viewer.events[-1]
    assert final.type == "message.completed" and final.data["content"] == "".join(d["content"] for d in deltas)
    # Sent upstream: the question only, never the sibling it replaces.
    (record,) = [r for r in fake_provider.requests() if r["model"] == STEADY and tag in str(r["body"]["messages"])]
    assert [(m["role"], m["content"]) for m in record["body"]["messages"]] == [("user", f"question {tag}")]
    messages = member_b.get(path(conversation)).json()["messages"]
    assert [(m["id"], m["parent"]) for m in messages] == [
        (question["id"], None),
        (first["id"], question["id"]),
        (sibling["id"], question["id"]),
    ]
    stored = stack.query(
        "SELECT COUNT(*) FROM chat_message WHERE conversation_id = ?", (stack.uuid(conversation["id"]),)
    )
    assert stored == [(3,)]


@pytest.mark.processes
def test_retrying_a_failed_reply_adds_no_user_message_and_can_stream(servers, people):
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, FAILING)
    question, failed = send(owner_a, conversation, "please")
    assert ended(owner_a, conversation, failed["id"])["status"] == "failed"
    viewer = start_viewer(
        member_b,
        path(conversation, f"messages/{failed['id']}/regenerate/"),
        method="POST",
        json_body={"model": STEADY},
        until=lambda e: False,
    )
    assert viewer.status == 200
    events = viewer.wait()
    assert events[0].type == "message.created" and events[0].data["parent"] == question["id"]
    retry_id = events[0].data["id"]
    assert events[-1].type == "message.completed" and events[-1].data["id"] == retry_id
    assert {e.data.get("id", e.data.get("message_id")) for e in events} == {retry_id}
    messages = owner_a.get(path(conversation)).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant"]
    assert messages[2]["status"] == "complete" and messages[2]["model"] == STEADY


@pytest.mark.processes
def test_regenerate_idempotency_key(servers, people):
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, STEADY)
    _, reply = send(owner_a, conversation, "hello")
    regenerate = path(conversation, f"messages/{reply['id']}/regenerate/")
    key = {"Idempotency-Key": f"regen-{uuid.uuid4()}"}
    first = member_b.post(regenerate, json={}, headers=key)
    again = member_b.post(regenerate, json={}, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["assistant_message"]["id"] == first.json()["assistant_message"]["id"]
    assert list(again.json()) == ["assistant_message"]
    ended(owner_a, conversation, first.json()["assistant_message"]["id"])
    other_body = member_b.post(regenerate, json={"model": "fake-echo"}, headers=key)
    assert other_body.status_code == 422 and other_body.json()["error"]["code"] == "idempotency_key_reused"
    # The same key on a post is another request.
    as_post = member_b.post(path(conversation, "messages/"), json={"content": "hello"}, headers=key)
    assert as_post.status_code == 422
    assert len(member_b.get(path(conversation)).json()["messages"]) == 3


@pytest.mark.processes
def test_stop_records_who_stopped_the_reply(servers, people):
    owner_a, member_b, _ = people
    conversation = new_conversation(owner_a, SLOW)
    viewer = start_viewer(owner_a, path(conversation, "events/"), until=lambda e: False)
    response = owner_a.post(path(conversation, "messages/"), json={"content": "go on"})
    reply_id = response.json()["assistant_message"]["id"]
    assert response.json()["assistant_message"]["stopped_by"] is None
    viewer.wait_for(lambda e: e.type == "message.delta")
    assert member_b.post(path(conversation, f"messages/{reply_id}/stop/")).status_code == 202
    viewer.wait_for(final_for(reply_id))
    viewer.close()
    final = viewer.events[-1]
    assert final.type == "message.cancelled" and final.data["stopped_by"] == "max"
    assert ended(owner_a, conversation, reply_id)["stopped_by"] == "max"
    # Regenerating the stopped reply is its retry: a sibling, no second question.
    retry = owner_a.post(path(conversation, f"messages/{reply_id}/regenerate/"), json={"model": STEADY}).json()
    assert ended(owner_a, conversation, retry["assistant_message"]["id"])["status"] == "complete"
    assert [m["role"] for m in owner_a.get(path(conversation)).json()["messages"]] == ["user", "assistant", "assistant"]


def test_idempotency_records_of_a_regenerate_name_the_question(db, conversation, owner):
    # The record's user message is the question the reply answers: a replay needs nothing more.
    question, reply = exchange(conversation, owner, "q")
    sibling = services.message_regenerate(
        conversation=conversation, requester=owner, reply=reply, model="demo", idempotency_key="k", request_hash="h"
    )
    record = IdempotencyKey.objects.get(key="k")
    assert (record.user_message_id, record.assistant_message_id) == (question.id, sibling.id)
