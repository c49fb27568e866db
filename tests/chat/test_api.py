"""Every conversation endpoint of the contract: success and error, exact status and body."""

import json

import pytest

from chat import services
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


def error_of(response):
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return body["error"]["code"]


@pytest.fixture
def conversation(owner, member):
    conversation = services.conversation_create(owner=owner, title="Plans", model="demo", system_prompt="Be brief.")
    conversation.members.add(member)
    return conversation


def url(conversation, rest=""):
    return f"/api/conversations/{conversation.id}/{rest}"


# --- auth, CSRF, methods, unknown paths -----------------------------------------


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/models/"),
        ("GET", "/api/conversations/"),
        ("POST", "/api/conversations/"),
        ("GET", "/api/conversations/00000000-0000-0000-0000-000000000000/"),
        ("GET", "/api/conversations/00000000-0000-0000-0000-000000000000/events/"),
        ("POST", "/api/conversations/00000000-0000-0000-0000-000000000000/messages/"),
    ],
)
def test_anonymous_gets_401_json_not_a_redirect(api, method, path):
    response = api(None).request(method, path, {} if method == "POST" else None)
    assert response.status_code == 401
    assert error_of(response) == "not_authenticated"


def test_unsafe_methods_need_the_csrf_header(api, owner, conversation):
    client = api(owner)
    for method, path, data in [
        ("POST", "/api/conversations/", {}),
        ("PATCH", url(conversation), {"title": "x"}),
        ("DELETE", url(conversation), None),
        ("POST", url(conversation, "members/"), {"username": "otto"}),
        ("POST", url(conversation, "messages/"), {"content": "hi"}),
    ]:
        response = client.request(method, path, data, csrf=False)
        assert response.status_code == 403, (method, path)
        assert error_of(response) == "csrf_failed"
    assert Conversation.objects.get(pk=conversation.pk).title == "Plans"
    assert Conversation.objects.count() == 1


def test_wrong_method_is_405_with_allow(api, owner, conversation):
    response = api(owner).request("PUT", url(conversation), {"title": "x"})
    assert response.status_code == 405
    assert error_of(response) == "method_not_allowed"
    assert response["Allow"] == "GET, PATCH, DELETE"
    assert api(owner).post("/api/models/", {}).status_code == 405


def test_unknown_api_path_is_json_404(api, owner):
    response = api(owner).get("/api/nothing-here/")
    assert response.status_code == 404
    assert error_of(response) == "not_found"


# --- models ---------------------------------------------------------------------


def test_models_demo_by_default(api, owner):
    response = api(owner).get("/api/models/")
    assert response.status_code == 200
    assert response.json() == {"models": [{"id": "demo", "name": "demo", "provider": "demo", "default": True}]}


def test_models_from_settings(api, owner, settings):
    settings.LLM_BASE_URL = "http://127.0.0.1:9/v1"
    settings.LLM_MODELS = ["deepseek-chat", "deepseek-reasoner|DeepSeek R1"]
    assert api(owner).get("/api/models/").json() == {
        "models": [
            {"id": "deepseek-chat", "name": "deepseek-chat", "provider": "127.0.0.1", "default": True},
            {"id": "deepseek-reasoner", "name": "DeepSeek R1", "provider": "127.0.0.1", "default": False},
        ]
    }


# --- conversations ---------------------------------------------------------------


def test_create_with_defaults(api, owner):
    response = api(owner).post("/api/conversations/", {})
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "title", "model", "system_prompt", "owner", "members", "created_at", "updated_at"}
    assert body["title"] == "" and body["model"] == "demo" and body["system_prompt"] == ""
    assert body["owner"] == "olivia" and body["members"] == []
    assert Conversation.objects.get(pk=body["id"]).owner == owner


def test_create_with_fields(api, owner):
    response = api(owner).post(
        "/api/conversations/", {"title": "  Roadmap ", "model": "demo", "system_prompt": "You are terse."}
    )
    assert response.status_code == 201
    assert response.json()["title"] == "Roadmap"
    assert response.json()["system_prompt"] == "You are terse."


@pytest.mark.parametrize(
    "raw,code",
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        ('"title"', "invalid_json"),
        ('{"title": 5}', "invalid_field"),
        ('{"title": null}', "invalid_field"),
        ('{"system_prompt": true}', "invalid_field"),
        ('{"colour": "red"}', "unknown_field"),
        ('{"model": "gpt-17"}', "unknown_model"),
        (json.dumps({"title": "x" * 201}), "too_long"),
        (json.dumps({"system_prompt": "x" * 20_001}), "too_long"),
        (b'{"title": "\xff"}', "invalid_json"),
    ],
)
def test_create_rejects_bad_input(api, owner, raw, code):
    response = api(owner).post("/api/conversations/", raw=raw)
    assert response.status_code == 400
    assert error_of(response) == code
    assert Conversation.objects.count() == 0


def test_list_owned_and_shared_newest_first(api, owner, member, outsider, conversation):
    services.conversation_create(owner=member, title="Mine", model="demo")
    response = api(member).get("/api/conversations/")
    assert response.status_code == 200
    assert [c["title"] for c in response.json()["conversations"]] == ["Mine", "Plans"]
    assert api(outsider).get("/api/conversations/").json() == {"conversations": []}


def test_detail_for_owner_and_member_with_messages(api, owner, member, conversation):
    user_message, placeholder = services.message_submit(
        conversation=conversation, author=member, content="Hello", model="demo"
    )
    for user in (owner, member):
        response = api(user).get(url(conversation))
        assert response.status_code == 200
        body = response.json()
        assert body["members"] == ["max"] and body["owner"] == "olivia"
        assert [m["id"] for m in body["messages"]] == [str(user_message.id), str(placeholder.id)]
        first, second = body["messages"]
        assert first["author"] == "max" and first["role"] == "user" and first["status"] == "complete"
        assert first["content"] == "Hello" and first["usage"] is None and first["error"] is None
        assert second["author"] is None and second["status"] == "streaming" and second["completed_at"] is None
        assert second["model"] == "demo"


@pytest.mark.parametrize("suffix", ["", "members/", "events/", "messages/"])
def test_outsider_gets_404_everywhere(api, outsider, conversation, suffix):
    client = api(outsider)
    method = "GET" if suffix in ("", "events/") else "POST"
    data = {"username": "otto"} if suffix == "members/" else {"content": "hi"}
    response = client.request(method, url(conversation, suffix), data if method == "POST" else None)
    assert response.status_code == 404
    assert error_of(response) == "conversation_not_found"


def test_missing_and_malformed_ids_are_404(api, owner):
    for path in ["/api/conversations/00000000-0000-0000-0000-000000000000/", "/api/conversations/nope/"]:
        response = api(owner).get(path)
        assert response.status_code == 404
        assert error_of(response) == "conversation_not_found"


def test_outsider_cannot_patch_or_delete(api, outsider, conversation):
    assert api(outsider).patch(url(conversation), {"title": "mine now"}).status_code == 404
    assert api(outsider).delete(url(conversation)).status_code == 404
    assert api(outsider).delete(url(conversation, "members/max/")).status_code == 404
    assert Conversation.objects.get(pk=conversation.pk).title == "Plans"


def test_patch_by_owner(api, owner, conversation):
    before = conversation.updated_at
    response = api(owner).patch(url(conversation), {"title": "New", "system_prompt": ""})
    assert response.status_code == 200
    body = response.json()
    assert body["title"] == "New" and body["system_prompt"] == "" and body["model"] == "demo"
    conversation.refresh_from_db()
    assert conversation.title == "New" and conversation.updated_at > before


def test_patch_by_member_is_403_and_changes_nothing(api, member, conversation):
    response = api(member).patch(url(conversation), {"title": "Hijacked"})
    assert response.status_code == 403
    assert error_of(response) == "owner_only"
    assert Conversation.objects.get(pk=conversation.pk).title == "Plans"


@pytest.mark.parametrize(
    "data,code",
    [({"title": 1}, "invalid_field"), ({"owner": "max"}, "unknown_field"), ({"model": "x"}, "unknown_model")],
)
def test_patch_rejects_bad_input(api, owner, conversation, data, code):
    response = api(owner).patch(url(conversation), data)
    assert response.status_code == 400
    assert error_of(response) == code


def test_delete_by_owner_hides_it_and_keeps_it_for_the_retention_window(api, owner, conversation):
    services.message_submit(conversation=conversation, author=owner, content="x", model="demo")
    response = api(owner).delete(url(conversation))
    assert response.status_code == 204 and response.content == b""
    # Kept (restorable by admins) until purged; chat.services.conversation_purge_expired deletes it for real.
    assert Conversation.objects.get().deleted_by == owner and Message.objects.count() == 2
    assert api(owner).get(url(conversation)).status_code == 404


def test_delete_by_member_is_403(api, member, conversation):
    response = api(member).delete(url(conversation))
    assert response.status_code == 403
    assert error_of(response) == "owner_only"
    assert Conversation.objects.filter(pk=conversation.pk).exists()


# --- members -----------------------------------------------------------------------


def test_add_member(api, owner, outsider, conversation):
    response = api(owner).post(url(conversation, "members/"), {"username": "otto"})
    assert response.status_code == 201
    assert response.json()["members"] == ["max", "otto"]
    assert api(outsider).get(url(conversation)).status_code == 200
    # Adding again changes nothing.
    assert api(owner).post(url(conversation, "members/"), {"username": "otto"}).json()["members"] == ["max", "otto"]


@pytest.mark.django_db
def test_adding_a_member_ignores_case_but_prefers_an_exact_match(api, owner, outsider, make_user, conversation):
    response = api(owner).post(url(conversation, "members/"), {"username": "OTTO"})
    assert response.status_code == 201 and "otto" in response.json()["members"]
    make_user("Max2")
    make_user("max2")
    response = api(owner).post(url(conversation, "members/"), {"username": "Max2"})
    assert "Max2" in response.json()["members"] and "max2" not in response.json()["members"]
    # Two accounts that differ only in case and neither exact: nobody is guessed.
    assert api(owner).post(url(conversation, "members/"), {"username": "MAX2"}).status_code == 404


@pytest.mark.parametrize(
    "data,status,code",
    [
        ({"username": "nobody"}, 404, "user_not_found"),
        ({"username": "olivia"}, 400, "already_owner"),
        ({}, 400, "missing_field"),
        ({"username": 3}, 400, "invalid_field"),
        ({"username": "otto", "role": "admin"}, 400, "unknown_field"),
    ],
)
def test_add_member_errors(api, owner, conversation, data, status, code):
    response = api(owner).post(url(conversation, "members/"), data)
    assert response.status_code == status
    assert error_of(response) == code
    assert [u.username for u in conversation.members.all()] == ["max"]


def test_inactive_user_cannot_be_added(api, owner, outsider, conversation):
    outsider.is_active = False
    outsider.save()
    response = api(owner).post(url(conversation, "members/"), {"username": "otto"})
    assert response.status_code == 404 and error_of(response) == "user_not_found"


def test_member_cannot_change_members(api, member, conversation):
    response = api(member).post(url(conversation, "members/"), {"username": "otto"})
    assert response.status_code == 403 and error_of(response) == "owner_only"
    response = api(member).delete(url(conversation, "members/max/"))
    assert response.status_code == 403 and error_of(response) == "owner_only"


def test_remove_member(api, owner, member, conversation):
    response = api(owner).delete(url(conversation, "members/max/"))
    assert response.status_code == 204
    assert api(member).get(url(conversation)).status_code == 404
    response = api(owner).delete(url(conversation, "members/max/"))
    assert response.status_code == 404 and error_of(response) == "member_not_found"


# --- messages (validation; streaming itself is tested over real sockets) -----------


@pytest.mark.parametrize(
    "data,status,code",
    [
        ({}, 400, "missing_field"),
        ({"content": "   "}, 400, "empty_content"),
        ({"content": 5}, 400, "invalid_field"),
        ({"content": "hi", "model": "gpt-17"}, 400, "unknown_model"),
        ({"content": "hi", "temperature": 2}, 400, "unknown_field"),
        ({"content": "x" * 32_001}, 413, "content_too_large"),
    ],
)
def test_post_message_rejects_bad_input(api, member, conversation, data, status, code):
    response = api(member).post(url(conversation, "messages/"), data)
    assert response.status_code == status
    assert error_of(response) == code
    assert not Message.objects.exists()


def test_post_message_while_one_streams_is_409(api, owner, conversation):
    services.message_submit(conversation=conversation, author=owner, content="first", model="demo")
    response = api(owner).post(url(conversation, "messages/"), {"content": "second"})
    assert response.status_code == 409
    assert error_of(response) == "generation_in_progress"
    assert Message.objects.count() == 2


def test_stop_errors(api, owner, outsider, conversation):
    user_message, placeholder = services.message_submit(
        conversation=conversation, author=owner, content="x", model="demo"
    )
    response = api(owner).post(url(conversation, f"messages/{user_message.id}/stop/"))
    assert response.status_code == 409 and error_of(response) == "not_streaming"
    response = api(owner).post(url(conversation, "messages/00000000-0000-0000-0000-000000000000/stop/"))
    assert response.status_code == 404 and error_of(response) == "message_not_found"
    response = api(outsider).post(url(conversation, f"messages/{placeholder.id}/stop/"))
    assert response.status_code == 404 and error_of(response) == "conversation_not_found"


def test_events_rejects_a_malformed_last_event_id(api, owner, conversation):
    response = api(owner).get(url(conversation, "events/?last_event_id=banana"))
    assert response.status_code == 400 and error_of(response) == "invalid_event_id"


# --- pages ------------------------------------------------------------------------


def test_pages_need_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_signup_closed_by_default(client):
    assert client.get("/accounts/signup/").status_code == 404


def test_signup_when_allowed(client, settings, django_user_model):
    settings.ALLOW_SIGNUP = True
    response = client.post(
        "/accounts/signup/", {"username": "newbie", "password1": "A-long-pass-1234", "password2": "A-long-pass-1234"}
    )
    assert response.status_code == 302
    assert django_user_model.objects.filter(username="newbie").exists()


def test_home_lists_owned_and_shared(client, member, conversation):
    services.conversation_create(owner=member, title="Mine", model="demo")
    client.force_login(member)
    page = client.get("/").content.decode()
    assert "Plans" in page and "Mine" in page
    assert client.get(f"/c/{conversation.id}/").status_code == 200


def test_conversation_page_hidden_from_outsider(client, outsider, conversation):
    client.force_login(outsider)
    assert client.get(f"/c/{conversation.id}/").status_code == 404
