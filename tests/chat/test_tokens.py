"""Personal API tokens: create, list, revoke; ``Authorization: Bearer`` on /api/ without a session or CSRF."""

import hmac
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from chat import selectors, services
from chat.models import ApiToken, AuditEntry, UsageEntry
from tests.chat.test_limits import add_exchange

pytestmark = pytest.mark.django_db

TOKENS = "/api/tokens/"


def bearer(secret) -> Client:
    """A client with no session that enforces CSRF, sending ``Authorization: Bearer <secret>``."""
    return Client(enforce_csrf_checks=True, headers={"Authorization": f"Bearer {secret}"})


def error_of(response):
    return response.json()["error"]


def make_token(user, name="laptop", **kwargs):
    return services.api_token_create(user=user, name=name, **kwargs)


# --- create, list, revoke --------------------------------------------------------


def test_create_list_and_revoke(api, owner):
    session = api(owner)
    created = session.post(TOKENS, {"name": "  notebook  ", "expires_at": "2099-01-31T17:00:00Z"})

    assert created.status_code == 201, created.content
    body = created.json()
    assert body["token"].startswith("tc_") and len(body["token"]) == 46
    assert body["name"] == "notebook"
    assert body["expires_at"] == "2099-01-31T17:00:00Z"
    assert body["last_used_at"] is None
    # The list never shows a secret again.
    listed = session.get(TOKENS).json()
    assert listed == {
        "tokens": [{key: body[key] for key in ("id", "name", "created_at", "expires_at", "last_used_at")}]
    }

    assert session.delete(f"{TOKENS}{body['id']}/").status_code == 204
    assert session.get(TOKENS).json() == {"tokens": []}
    assert ApiToken.objects.get(pk=body["id"]).revoked_at is not None
    # Gone for the API too: a second revoke is a 404, and the token no longer works.
    assert session.delete(f"{TOKENS}{body['id']}/").status_code == 404
    assert error_of(bearer(body["token"]).get("/api/conversations/"))["code"] == "invalid_token"

    created_row, revoked_row = AuditEntry.objects.order_by("at", "id")
    assert (created_row.action, created_row.actor, created_row.target_type) == ("token_created", owner, "api_token")
    assert (revoked_row.action, revoked_row.actor, revoked_row.target_id) == ("token_revoked", owner, str(body["id"]))
    assert created_row.detail["name"] == "notebook" and created_row.ip == "127.0.0.1"


def test_the_secret_is_shown_once_and_stored_only_hashed(api, owner):
    secret = api(owner).post(TOKENS, {"name": "ci"}).json()["token"]

    token = ApiToken.objects.get()
    stored = [str(value) for value in ApiToken.objects.values_list().get()]
    stored += [str(row) for row in AuditEntry.objects.values_list()]
    assert not any(secret in value or secret[12:] in value for value in stored)
    assert token.lookup == secret[:12]
    assert token.secret_hash == selectors.api_token_hash(secret) != secret
    # A keyed hash: the same secret under another SECRET_KEY hashes differently.
    from django.test import override_settings

    with override_settings(SECRET_KEY="another-key"):
        assert selectors.api_token_hash(secret) != token.secret_hash


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": ""}, "empty_name"),
        ({"name": "   "}, "empty_name"),
        ({"name": "x" * 101}, "too_long"),
        ({}, "missing_field"),
        ({"name": 7}, "invalid_field"),
        ({"name": "ci", "expires_at": "next tuesday"}, "invalid_expires_at"),
        ({"name": "ci", "expires_at": "2020-01-01T00:00:00Z"}, "expires_in_past"),
        ({"name": "ci", "scopes": ["all"]}, "unknown_field"),
    ],
)
def test_bad_input_is_a_400_with_a_clear_code(api, owner, body, code):
    response = api(owner).post(TOKENS, body)

    assert response.status_code == 400
    assert error_of(response)["code"] == code
    assert error_of(response)["message"]
    assert not ApiToken.objects.exists()


def test_an_expiry_without_an_offset_is_utc(api, owner):
    body = api(owner).post(TOKENS, {"name": "ci", "expires_at": "2099-06-01"}).json()
    assert ApiToken.objects.get().expires_at == datetime(2099, 6, 1, tzinfo=UTC)
    assert body["expires_at"] == "2099-06-01T00:00:00Z"


def test_another_users_token_is_a_404(api, owner, member):
    token, _ = make_token(member)
    response = api(owner).delete(f"{TOKENS}{token.pk}/")
    assert response.status_code == 404
    assert error_of(response)["code"] == "token_not_found"
    assert api(owner).delete(f"{TOKENS}not-a-number/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    assert api(owner).get(TOKENS).json() == {"tokens": []}


def test_tokens_are_managed_with_a_session_only(owner):
    token, secret = make_token(owner)
    client = bearer(secret)
    for response in (client.get(TOKENS), client.post(TOKENS, {"name": "more"}, content_type="application/json")):
        assert response.status_code == 403
        assert error_of(response)["code"] == "session_required"
    assert client.delete(f"{TOKENS}{token.pk}/").status_code == 403
    assert ApiToken.objects.filter(revoked_at__isnull=True).count() == 1


def test_anonymous_requests_get_401(api):
    assert api(None).get(TOKENS).status_code == 401


# --- Authorization: Bearer -----------------------------------------------------------


def test_a_token_works_on_json_endpoints_without_session_or_csrf(owner):
    _, secret = make_token(owner)
    client = bearer(secret)

    created = client.post("/api/conversations/", {"title": "From a script"}, content_type="application/json")
    assert created.status_code == 201, created.content
    assert created.json()["owner"] == "olivia"
    conversation_id = created.json()["id"]
    assert client.get("/api/conversations/").json()["conversations"][0]["id"] == conversation_id
    assert client.patch(
        f"/api/conversations/{conversation_id}/", {"title": "Renamed"}, content_type="application/json"
    ).json()["title"] == ("Renamed")
    posted = client.post(
        f"/api/conversations/{conversation_id}/messages/", {"content": "hello"}, content_type="application/json"
    )
    assert posted.status_code == 202, posted.content
    assert posted.json()["user_message"]["author"] == "olivia"
    assert client.delete(f"/api/conversations/{conversation_id}/").status_code == 204
    # The same requests without the token: no session, so 401 (and no CSRF pass either).
    assert Client(enforce_csrf_checks=True).get("/api/conversations/").status_code == 401


def test_the_session_still_needs_csrf(api, owner):
    # The exemption is for Bearer requests only: a session POST without the header is refused.
    response = api(owner).post("/api/conversations/", {}, csrf=False)
    assert response.status_code == 403
    assert error_of(response)["code"] == "csrf_failed"


def _expired(owner):
    token, secret = make_token(owner)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    return secret


def _revoked(owner):
    token, secret = make_token(owner)
    services.api_token_revoke(token=token, actor=owner)
    return secret


def _inactive(owner):
    _, secret = make_token(owner)
    owner.is_active = False
    owner.save()
    return secret


def _right_lookup_wrong_rest(owner):
    _, secret = make_token(owner)
    return secret[:12] + "A" * (len(secret) - 12)


@pytest.mark.parametrize(
    "secret_of",
    [
        lambda owner: "tc_" + "x" * 43,
        lambda owner: "",
        lambda owner: "tc_" + "y" * 500,
        lambda owner: "tc_\x00" + "n" * 42,
        lambda owner: "tc_é" + "n" * 42,
        _expired,
        _revoked,
        _inactive,
        _right_lookup_wrong_rest,
    ],
    ids=[
        "unknown",
        "empty",
        "huge",
        "nul",
        "latin-1",
        "expired",
        "revoked",
        "inactive-user",
        "right-lookup-wrong-rest",
    ],
)
def test_unknown_revoked_or_expired_tokens_get_401(owner, secret_of):
    secret = secret_of(owner)
    for response in (
        bearer(secret).get("/api/conversations/"),
        bearer(secret).post("/api/conversations/", {}, content_type="application/json"),
        bearer(secret).get("/api/conversations/00000000-0000-0000-0000-000000000000/events/"),
        bearer(secret).get("/api/no-such-thing/"),
    ):
        assert response.status_code == 401
        assert response.json() == {
            "error": {
                "code": "invalid_token",
                "message": "The API token is unknown, revoked or expired; create a new one.",
            }
        }


def test_a_session_cookie_does_not_rescue_an_invalid_bearer(api, owner, member):
    session = api(owner)
    response = session.get("/api/conversations/", HTTP_AUTHORIZATION="Bearer tc_not-a-token")
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_token"
    # And a valid one acts as its own user, whoever's session came along.
    _, secret = make_token(member)
    created = session.post("/api/conversations/", {}, HTTP_AUTHORIZATION=f"Bearer {secret}", csrf=False)
    assert created.json()["owner"] == "max"
    # Other schemes are not tokens: the session answers.
    assert session.get("/api/conversations/", HTTP_AUTHORIZATION="Basic Zm9vOmJhcg==").status_code == 200


def test_the_bearer_header_is_only_read_under_api(owner):
    _, secret = make_token(owner)
    # Pages need a session: a token does not sign anyone in to the app or the admin.
    assert bearer(secret).get("/").status_code == 302
    assert bearer(secret).get("/admin/").status_code == 302


def test_authentication_is_one_query_and_hashes_compare_in_constant_time(owner, monkeypatch, django_assert_num_queries):
    token, secret = make_token(owner)
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr("chat.selectors.hmac.compare_digest", spy)
    with django_assert_num_queries(1):
        assert selectors.api_token_authenticate(secret=secret) == token
    with django_assert_num_queries(1):
        assert selectors.api_token_authenticate(secret="tc_" + "z" * 43) is None
    with django_assert_num_queries(1):
        assert selectors.api_token_authenticate(secret=secret[:-1] + ("B" if secret[-1] != "B" else "C")) is None
    # Every path compares two 64-character digests (never the secret itself, never a short cut).
    assert compared == [(64, 64)] * 3


def test_last_used_at_is_written_at_most_once_a_minute(owner):
    token, secret = make_token(owner)
    client = bearer(secret)

    client.get("/api/models/")
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None
    client.get("/api/conversations/")
    token.refresh_from_db()
    assert token.last_used_at == first
    # A minute later the next request writes it again.
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(seconds=61))
    client.get("/api/conversations/")
    token.refresh_from_db()
    assert token.last_used_at > first
    listed = Client()
    listed.force_login(owner)
    assert listed.get(TOKENS).json()["tokens"][0]["last_used_at"] == token.last_used_at.isoformat().replace(
        "+00:00", "Z"
    )


def test_an_up_to_date_token_costs_one_query(owner, django_assert_num_queries):
    from chat.middleware import _live_token

    _, secret = make_token(owner)
    _live_token(secret)  # writes last_used_at
    with django_assert_num_queries(1):
        assert _live_token(secret) is not None


# --- limits and quotas are the user's --------------------------------------------------


def test_a_token_users_rate_limit_is_the_users(api, owner, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 2
    conversation = services.conversation_create(owner=owner, model="demo")
    _, secret = make_token(owner)
    path = f"/api/conversations/{conversation.id}/messages/"
    add_exchange(conversation, owner)  # one through the session (or anywhere) counts

    first = bearer(secret).post(path, {"content": "one"}, content_type="application/json")
    assert first.status_code == 202, first.content
    services.message_finish(
        message_id=first.json()["assistant_message"]["id"], status="complete", content="a", reasoning="", seq=1
    )
    second = bearer(secret).post(path, {"content": "two"}, content_type="application/json")
    assert second.status_code == 429
    assert error_of(second)["code"] == "rate_limited"


def test_a_token_users_quota_is_the_users(owner, settings):
    settings.CHAT_DAILY_TOKEN_QUOTA = 100
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    conversation = services.conversation_create(owner=owner, model="demo")
    add_exchange(conversation, owner, tokens=150)
    assert UsageEntry.objects.get().total_tokens == 150
    _, secret = make_token(owner)
    response = bearer(secret).post(
        f"/api/conversations/{conversation.id}/messages/", {"content": "more"}, content_type="application/json"
    )
    assert response.status_code == 429
    assert error_of(response)["code"] == "quota_exceeded"


# --- a stream's credential ------------------------------------------------------------


def test_a_token_streams_access_is_rechecked_by_its_token(owner, member):
    conversation = services.conversation_create(owner=owner, model="demo")
    token, _ = make_token(owner)
    other, _ = make_token(owner, name="other")

    def lost(credential=token.stream_credential):
        return selectors.stream_access_lost(session_key=credential, user_id=owner.pk, conversation_id=conversation.id)

    assert lost() is None
    assert lost("token:not-a-number") == "signed_out"
    services.api_token_revoke(token=other, actor=owner)
    assert lost(other.stream_credential) == "signed_out"
    assert lost() is None
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now())
    assert lost() == "signed_out"
    # Another user's token id does not stand in for this user's.
    theirs, _ = make_token(member)
    assert lost(theirs.stream_credential) == "signed_out"


# --- the page and the admin ---------------------------------------------------------------

PAGE = "/settings/tokens/"


def test_the_page_creates_shows_the_secret_once_and_revokes(client, owner):
    client.force_login(owner)
    assert 'href="/settings/tokens/"' in client.get("/").content.decode()  # linked from the top bar
    assert "You have no API tokens." in client.get(PAGE).content.decode()

    created = client.post(PAGE, {"name": "notebook", "expires_on": "2099-02-01"})
    page = created.content.decode()
    assert created.status_code == 200 and created["Cache-Control"] == "no-store"
    token = ApiToken.objects.get()
    secret = page.split('id="new-token" value="')[1].split('"')[0]
    assert secret.startswith(token.lookup) and selectors.api_token_hash(secret) == token.secret_hash
    assert token.expires_at == datetime(2099, 2, 1, tzinfo=UTC)
    assert bearer(secret).get("/api/models/").status_code == 200
    # Never again: the list shows its name and first characters only.
    again = client.get(PAGE).content.decode()
    assert secret not in again and "notebook" in again and f"{token.lookup}…" in again

    revoked = client.post(f"{PAGE}{token.pk}/revoke/", follow=True)
    assert "Revoked “notebook”" in revoked.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert [row.action for row in AuditEntry.objects.order_by("id")] == ["token_created", "token_revoked"]


def test_the_page_shows_what_is_wrong(client, owner, member):
    client.force_login(owner)
    for data, words in (
        ({"name": " "}, "Give the token a name"),
        ({"name": "x", "expires_on": "2001-01-01"}, "must be in the future"),
        ({"name": "x", "expires_on": "soon"}, "ISO 8601"),
    ):
        response = client.post(PAGE, data)
        assert response.status_code == 400 and words in response.content.decode()
    assert not ApiToken.objects.exists()
    # Someone else's token cannot be revoked from here; nor by a GET.
    theirs, _ = make_token(member)
    assert client.post(f"{PAGE}{theirs.pk}/revoke/").status_code == 404
    mine, _ = make_token(owner)
    assert client.get(f"{PAGE}{mine.pk}/revoke/").status_code == 405
    assert not ApiToken.objects.filter(revoked_at__isnull=False).exists()


def test_admins_see_and_revoke_anyones_tokens_but_never_a_secret(client, owner, member, django_user_model):
    root = django_user_model.objects.create_superuser("root", password="pw-root-123", email="")
    client.force_login(root)
    token, secret = make_token(owner, name="ci runner")
    kept, _ = make_token(member, name="kept")

    listing = client.get("/admin/chat/apitoken/").content.decode()
    assert "ci runner" in listing and "olivia" in listing and f"{token.lookup}…" in listing
    detail = client.get(f"/admin/chat/apitoken/{token.pk}/change/").content.decode()
    assert secret[12:] not in listing + detail and token.secret_hash not in listing + detail
    assert client.get("/admin/chat/apitoken/add/").status_code == 403

    response = client.post("/admin/chat/apitoken/", {"action": "revoke", "_selected_action": [token.pk]}, follow=True)
    assert "Revoked 1 token." in response.content.decode()
    token.refresh_from_db()
    kept.refresh_from_db()
    assert token.revoked_at is not None and kept.revoked_at is None
    entry = AuditEntry.objects.get(action="token_revoked")
    assert (entry.actor, entry.target_id, entry.detail["owner"]) == (root, str(token.pk), "olivia")
    assert bearer(secret).get("/api/models/").status_code == 401


def test_staff_without_the_permission_cannot_revoke(client, owner, django_user_model):
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user("sam", password="pw-sam-12345", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_apitoken"))
    client.force_login(staff)
    token, _ = make_token(owner)
    assert client.get("/admin/chat/apitoken/").status_code == 200
    client.post("/admin/chat/apitoken/", {"action": "revoke", "_selected_action": [token.pk]})
    token.refresh_from_db()
    assert token.revoked_at is None


# --- over real sockets: two daphne processes on one Redis ----------------------------------

SLOW = "fake:chunks=400;interval_ms=25"
REVOKE_WITHIN = 5.0


@pytest.fixture(scope="module")
def live(redis_server, fake_provider):
    from tests.servers import Stack

    stack = Stack(
        redis_url=redis_server.url,
        llm_base_url=fake_provider.base_url,
        llm_models=f"fake-echo,{SLOW}",
        # A long heartbeat: the periodic re-check must not be what ends the streams here.
        extra_env={"CHAT_HEARTBEAT_SECONDS": "30"},
    ).setup()
    a, b = stack.start_server(), stack.start_server()
    yield stack, a, b
    stack.stop()


def live_token(session, name="script") -> dict:
    response = session.post(TOKENS, json={"name": name})
    assert response.status_code == 201, response.text
    return response.json()


def token_client(port, secret):
    import httpx

    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"Authorization": f"Bearer {secret}"})


@pytest.mark.processes
def test_revoking_a_token_ends_its_streams_on_another_process_only(live):
    import time

    from tests.servers import login
    from tests.sseclient import start_viewer

    stack, a, b = live
    session = login(a, "olivia")
    revoked, kept = live_token(session, "to revoke"), live_token(session, "to keep")
    conversation = session.post("/api/conversations/", json={"title": "Tokens"}).json()
    events = f"/api/conversations/{conversation['id']}/events/"

    # A token streams on the other process: a conversation's events, and a streaming post (no CSRF header).
    watching = start_viewer(token_client(b, revoked["token"]), events, until=lambda e: False)
    posting = start_viewer(
        token_client(b, revoked["token"]),
        f"/api/conversations/{conversation['id']}/messages/",
        method="POST",
        json_body={"content": "a long answer please", "model": SLOW},
        until=lambda e: False,
    )
    assert (watching.status, posting.status) == (200, 200)
    posting.wait_for(lambda e: e.type == "message.delta")
    # The same person's session stream and other token's stream.
    by_session = start_viewer(login(b, "olivia"), events, until=lambda e: False)
    by_other_token = start_viewer(token_client(a, kept["token"]), events, until=lambda e: False)

    assert session.delete(f"{TOKENS}{revoked['id']}/").status_code == 204
    changed = time.monotonic()
    for viewer in (watching, posting):
        assert viewer.ended.wait(REVOKE_WITHIN - (time.monotonic() - changed)), [e.type for e in viewer.events]
        assert viewer.error is None, repr(viewer.error)
        assert (viewer.events[-1].type, viewer.events[-1].data) == ("access.revoked", {"reason": "signed_out"})
    # The others go on: a rename reaches them.
    assert session.patch(f"/api/conversations/{conversation['id']}/", json={"title": "still here"}).status_code == 200
    for viewer in (by_session, by_other_token):
        viewer.wait_for(lambda e: e.type == "conversation.updated" and e.data["title"] == "still here", timeout=10)
        assert not viewer.ended.is_set()
        viewer.close()
    # And the revoked token opens nothing more.
    refused = token_client(b, revoked["token"]).get(events)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "invalid_token")


@pytest.mark.processes
def test_the_documented_script_prints_the_reply_as_stored(live):
    import subprocess
    import sys

    from tests.servers import ROOT, login

    stack, a, _ = live
    session = login(a, "max")
    secret = live_token(session)["token"]

    run = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "examples" / "stream_reply.py"), "tokens stream straight through"],
        env={"PATH": "/usr/bin:/bin", "TEAMCHAT_URL": f"http://127.0.0.1:{a}", "TEAMCHAT_TOKEN": secret},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 0, run.stderr
    [conversation] = session.get("/api/conversations/").json()["conversations"]
    messages = session.get(f"/api/conversations/{conversation['id']}/").json()["messages"]
    reply = messages[-1]
    assert (reply["role"], reply["status"]) == ("assistant", "complete")
    assert reply["content"] and run.stdout == reply["content"] + "\n"


def test_the_api_doc_shows_exactly_the_tested_script():
    from tests.servers import ROOT

    doc = (ROOT / "docs" / "api.md").read_text()
    shown = doc.split("```python\n", 1)[1].split("```", 1)[0]
    assert shown == (ROOT / "docs" / "examples" / "stream_reply.py").read_text()
