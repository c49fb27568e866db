"""Access ends when the right to it ends: over real sockets, two daphne processes on one Redis.

Every open event stream of a person who signs out, is deactivated, changes
their password (or has it changed by an admin), is removed from the
conversation or sees it deleted ends within 5 s on every process, with
``access.revoked`` as its last event.
"""

import time

import pytest

from tests.servers import PASSWORD, login
from tests.sseclient import start_viewer

pytestmark = pytest.mark.processes

SLOW = "fake:chunks=400;interval_ms=25"
PEOPLE = ("olivia", "max", "dana", "paul", "sam", "rita", "ursula", "vera")
# The contract's bound: access.revoked within 5 s of the change.
REVOKE_WITHIN = 5.0


@pytest.fixture(scope="module")
def servers(redis_server, fake_provider):
    from tests.servers import Stack

    stack = Stack(
        redis_url=redis_server.url,
        llm_base_url=fake_provider.base_url,
        llm_models=SLOW,
        # A long heartbeat: the periodic re-check must not be what ends the streams here.
        extra_env={"CHAT_HEARTBEAT_SECONDS": "30"},
    ).setup(usernames=PEOPLE)
    stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\nUser.objects.create_superuser('root', password='root-pass-123')",
    )
    a, b = stack.start_server(), stack.start_server()
    yield stack, a, b
    stack.stop()


def shared_conversation(owner, *members):
    conversation = owner.post("/api/conversations/", json={}).json()
    for username in members:
        response = owner.post(f"/api/conversations/{conversation['id']}/members/", json={"username": username})
        assert response.status_code == 201, response.text
    return conversation


def events_path(conversation):
    return f"/api/conversations/{conversation['id']}/events/"


def watch(client, conversation):
    viewer = start_viewer(client, events_path(conversation), until=lambda e: False)
    assert viewer.status == 200
    return viewer


def assert_revoked(viewer, reason, since):
    assert viewer.ended.wait(REVOKE_WITHIN - (time.monotonic() - since)), (
        f"still streaming {REVOKE_WITHIN} s after the change; got {[e.type for e in viewer.events]}"
    )
    assert viewer.error is None, repr(viewer.error)
    last = viewer.events[-1]
    assert last.type == "access.revoked", [e.type for e in viewer.events]
    assert last.data == {"reason": reason}
    assert last.id


def test_deactivating_a_user_ends_their_streams_on_every_process(servers):
    stack, a, b = servers
    owner = login(a, "olivia")
    conversation = shared_conversation(owner, "dana")
    viewers = [watch(login(a, "dana"), conversation), watch(login(b, "dana"), conversation)]
    # A second conversation's stream of another member is untouched.
    bystander = watch(login(b, "max"), shared_conversation(owner, "max"))

    stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\n"
        "u = User.objects.get(username='dana')\nu.is_active = False\nu.save()",
    )
    changed = time.monotonic()
    for viewer in viewers:
        assert_revoked(viewer, "signed_out", changed)
    assert not bystander.ended.is_set()
    bystander.close()
    # And they cannot come back.
    assert login_fails(b, "dana")


def login_fails(port, username, password=PASSWORD):
    try:
        login(port, username, password)
    except AssertionError:
        return True
    return False


def test_signing_out_ends_that_sessions_streams_only(servers):
    stack, a, b = servers
    owner = login(a, "olivia")
    conversation = shared_conversation(owner, "sam")
    leaving, staying = login(a, "sam"), login(b, "sam")
    leaving_a = watch(leaving, conversation)
    leaving_b = watch(login_with_cookies(b, leaving), conversation)  # the same session, on the other process
    other_session = watch(staying, conversation)

    assert leaving.post("/accounts/logout/").status_code in (200, 302)
    changed = time.monotonic()
    assert_revoked(leaving_a, "signed_out", changed)
    assert_revoked(leaving_b, "signed_out", changed)
    # The person's other session still streams: a rename reaches it.
    assert owner.patch(f"/api/conversations/{conversation['id']}/", json={"title": "still here"}).status_code == 200
    other_session.wait_for(lambda e: e.type == "conversation.updated" and e.data["title"] == "still here", timeout=10)
    assert not other_session.ended.is_set()
    other_session.close()


def login_with_cookies(port, client):
    """A client on ``port`` carrying ``client``'s session (one browser, two server processes)."""
    import httpx

    other = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, cookies=client.cookies)
    other.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return other


def test_changing_ones_own_password_ends_every_stream_of_that_person(servers):
    stack, a, b = servers
    owner = login(a, "olivia")
    conversation = shared_conversation(owner, "paul")
    here, elsewhere = login(a, "paul"), login(b, "paul")
    other_viewer = watch(elsewhere, conversation)
    own_viewer = watch(here, conversation)

    token = here.cookies["csrftoken"]
    response = here.post(
        "/accounts/password_change/",
        data={
            "old_password": PASSWORD,
            "new_password1": "a-new-long-passphrase-42",
            "new_password2": "a-new-long-passphrase-42",
            "csrfmiddlewaretoken": token,
        },
        headers={"Referer": f"http://127.0.0.1:{a}/accounts/password_change/"},
    )
    assert response.status_code == 302, response.text
    changed = time.monotonic()
    assert_revoked(other_viewer, "signed_out", changed)
    # Even this browser's: Django gave its session a new key, and the page reloads to follow.
    assert_revoked(own_viewer, "signed_out", changed)
    # The session that changed the password is still signed in.
    assert here.get("/api/conversations/").status_code == 200
    assert elsewhere.get("/api/conversations/").status_code == 401


def test_an_admin_changing_a_password_ends_every_stream_of_that_person(servers):
    stack, a, b = servers
    owner = login(a, "olivia")
    conversation = shared_conversation(owner, "rita")
    viewers = [watch(login(a, "rita"), conversation), watch(login(b, "rita"), conversation)]

    admin = login(a, "root", "root-pass-123")
    (user_id,) = stack.query("SELECT id FROM auth_user WHERE username = ?", ("rita",))[0]
    path = f"/admin/auth/user/{user_id}/password/"
    admin.get(path)
    response = admin.post(
        path,
        data={
            "password1": "reset-by-admin-9876",
            "password2": "reset-by-admin-9876",
            "csrfmiddlewaretoken": admin.cookies["csrftoken"],
        },
        headers={"Referer": f"http://127.0.0.1:{a}{path}"},
    )
    assert response.status_code == 302, response.text
    changed = time.monotonic()
    for viewer in viewers:
        assert_revoked(viewer, "signed_out", changed)


def test_removed_member_loses_a_streaming_post_at_once(servers):
    stack, a, b = servers
    owner = login(a, "olivia")
    conversation = shared_conversation(owner, "ursula")
    member = login(b, "ursula")
    viewer = start_viewer(
        member,
        f"/api/conversations/{conversation['id']}/messages/",
        method="POST",
        json_body={"content": "a long answer please"},
        until=lambda e: False,
    )
    assert viewer.status == 200
    viewer.wait_for(lambda e: e.type == "message.delta" or e.type == "message.failed")
    assert viewer.events[-1].type == "message.delta", viewer.events[-1].raw

    assert owner.delete(f"/api/conversations/{conversation['id']}/members/ursula/").status_code == 204
    changed = time.monotonic()
    assert_revoked(viewer, "removed", changed)
    # The reply goes on for those who may still read it.
    message = owner.get(f"/api/conversations/{conversation['id']}/").json()["messages"][-1]
    assert message["status"] == "streaming"
    owner.post(f"/api/conversations/{conversation['id']}/messages/{message['id']}/stop/")


def test_removal_and_deletion_name_their_reason(servers):
    stack, a, b = servers
    owner = login(a, "olivia")
    conversation = shared_conversation(owner, "vera", "max")
    removed = watch(login(b, "vera"), conversation)
    deleted = watch(login(b, "max"), conversation)

    assert owner.delete(f"/api/conversations/{conversation['id']}/members/vera/").status_code == 204
    assert_revoked(removed, "removed", time.monotonic())
    assert not deleted.ended.is_set()
    assert owner.delete(f"/api/conversations/{conversation['id']}/").status_code == 204
    assert_revoked(deleted, "deleted", time.monotonic())
