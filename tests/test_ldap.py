"""Sign-in against a real OpenLDAP directory (slapd on a loopback port, tests/ldapserver.py), over real sockets.

The app runs as daphne processes configured only through ``LDAP_*``; people
sign in with the login form. On PostgreSQL when the run's DATABASE_URL is.
"""

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.ldapserver import READER_PASSWORD
from tests.servers import PASSWORD, ROOT, login, start_ldap_server
from tests.sseclient import start_viewer

pytestmark = pytest.mark.processes

# The contract's bound: access.revoked within 5 s of the change.
REVOKE_WITHIN = 5.0
DIRECTORY_GROUP = "LDAP directory"
LOCAL = "config.settings.local"


@pytest.fixture(scope="module")
def servers(ldap_server, redis_server):
    from tests.servers import Stack

    # A high limit: the wrong passwords of these tests must not lock 127.0.0.1 (the throttle has its own test).
    stack = Stack(redis_url=redis_server.url, extra_env=ldap_server.env(AXES_FAILURE_LIMIT="100"))
    stack.setup(usernames=("olivia",))  # a local account with a password: the break-glass admin's kind
    a, b = stack.start_server(), stack.start_server()
    yield stack, a, b
    stack.stop()


def sign_in(port, username, password) -> httpx.Response:
    """Post the login form as a browser does; the response (302 when signed in)."""
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    client.get("/accounts/login/")
    return client.post(
        "/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
    )


def account(stack, username) -> dict:
    columns = ("is_active", "is_staff", "is_superuser", "first_name", "last_name", "email", "password")
    rows = stack.query(f"SELECT {', '.join(columns)} FROM auth_user WHERE username = ?", (username,))
    assert rows, f"no account {username!r}"
    return {
        name: (bool(value) if name.startswith("is_") else value) for name, value in zip(columns, rows[0], strict=True)
    }


def in_directory_group(stack, username) -> bool:
    return bool(
        stack.query(
            "SELECT 1 FROM auth_user u JOIN auth_user_groups ug ON ug.user_id = u.id "
            "JOIN auth_group g ON g.id = ug.group_id WHERE u.username = ? AND g.name = ?",
            (username, DIRECTORY_GROUP),
        )
    )


def test_signing_in_with_the_directory_password_creates_the_account_from_the_directory(servers, ldap_server):
    stack, a, b = servers
    ldap_server.add_person("ada", "ada-directory-pw", given="Ada", surname="Lovelace", mail="ada@example.org")

    client = login(a, "ada", "ada-directory-pw")

    assert client.get("/api/conversations/").status_code == 200
    row = account(stack, "ada")
    assert (row["first_name"], row["last_name"], row["email"]) == ("Ada", "Lovelace", "ada@example.org")
    assert (row["is_active"], row["is_staff"], row["is_superuser"]) == (True, False, False)
    assert row["password"].startswith("!"), "a directory account has no local password"
    assert in_directory_group(stack, "ada")
    # The session works on the other process too (it loads the user through the same backend).
    other = httpx.Client(base_url=f"http://127.0.0.1:{b}", cookies=client.cookies)
    assert other.get("/api/conversations/").status_code == 200
    # A local account still signs in with its local password; the bind password never reaches the logs.
    assert login(b, "olivia", PASSWORD).get("/api/conversations/").status_code == 200
    assert READER_PASSWORD not in stack.log_text()


def test_groups_make_staff_and_superusers_and_losing_a_group_takes_it_away_at_the_next_sign_in(servers, ldap_server):
    stack, a, b = servers
    ldap_server.add_person("grace", "grace-pw", groups=["chat-admins"])
    ldap_server.add_person("linus", "linus-pw", groups=["chat-staff"])

    admin = login(a, "grace", "grace-pw")
    assert admin.get("/admin/").status_code == 200
    assert (account(stack, "grace")["is_staff"], account(stack, "grace")["is_superuser"]) == (True, True)
    login(b, "linus", "linus-pw")
    assert (account(stack, "linus")["is_staff"], account(stack, "linus")["is_superuser"]) == (True, False)

    ldap_server.remove_member("chat-admins", "grace")
    ldap_server.remove_member("chat-staff", "linus")
    again = login(b, "grace", "grace-pw")
    login(a, "linus", "linus-pw")

    assert (account(stack, "grace")["is_staff"], account(stack, "grace")["is_superuser"]) == (False, False)
    assert account(stack, "linus")["is_staff"] is False
    assert again.get("/admin/").status_code == 302  # to the admin's login: no longer staff
    # And the group gives it back at the next sign-in.
    ldap_server.add_member("chat-staff", "grace")
    login(a, "grace", "grace-pw")
    assert (account(stack, "grace")["is_staff"], account(stack, "grace")["is_superuser"]) == (True, False)


def test_a_wrong_password_is_refused_and_counted_by_the_sign_in_throttle(ldap_server, stack_factory):
    stack = stack_factory(extra_env=ldap_server.env(AXES_FAILURE_LIMIT="3")).setup(usernames=())
    port = stack.start_server()
    ldap_server.add_person("mallory", "the-right-pw")

    for attempt in range(2):
        response = sign_in(port, "mallory", f"guess-{attempt}")
        assert response.status_code == 200 and 'role="alert"' in response.text  # the form again, with its error
    assert sign_in(port, "mallory", "guess-2").status_code == 429  # the third failure locks

    failures = stack.query("SELECT SUM(failures_since_start) FROM axes_accessattempt WHERE username = ?", ("mallory",))
    assert failures == [(3,)]
    # Locked: even the right directory password is refused, and never reaches the directory's account.
    locked = sign_in(port, "mallory", "the-right-pw")
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert stack.query("SELECT COUNT(*) FROM auth_user WHERE username = ?", ("mallory",)) == [(0,)]


def watch(client, conversation_id):
    viewer = start_viewer(client, f"/api/conversations/{conversation_id}/events/", until=lambda e: False)
    assert viewer.status == 200
    return viewer


def test_a_person_removed_from_the_directory_cannot_sign_in_and_ldap_sync_ends_their_sessions(servers, ldap_server):
    stack, a, b = servers
    ldap_server.add_person("leaver", "leaver-pw")
    ldap_server.add_person("stayer", "stayer-pw")
    leaving = login(a, "leaver", "leaver-pw")
    staying = login(b, "stayer", "stayer-pw")
    conversation = leaving.post("/api/conversations/", json={}).json()
    viewers = [watch(leaving, conversation["id"]), watch(login(b, "leaver", "leaver-pw"), conversation["id"])]
    bystander = watch(staying, staying.post("/api/conversations/", json={}).json()["id"])

    ldap_server.delete("uid=leaver,ou=people,dc=example,dc=org")

    assert sign_in(b, "leaver", "leaver-pw").status_code == 200  # the form again: refused
    # Until ldap_sync runs, a session opened before stays (Django sessions last until they expire).
    assert leaving.get("/api/conversations/").status_code == 200
    dry = stack.manage("ldap_sync", "--dry-run").stdout
    assert "Would deactivate 1 accounts" in dry and "  leaver\n" in dry
    assert account(stack, "leaver")["is_active"] is True

    out = stack.manage("ldap_sync").stdout
    changed = time.monotonic()

    assert out.splitlines() == ["Deactivated 1 accounts no longer in the directory.", "  leaver"]
    for viewer in viewers:
        assert viewer.ended.wait(REVOKE_WITHIN - (time.monotonic() - changed)), [e.type for e in viewer.events]
        assert viewer.error is None, repr(viewer.error)
        assert viewer.events[-1].type == "access.revoked" and viewer.events[-1].data == {"reason": "signed_out"}
    assert leaving.get("/api/conversations/").status_code in (401, 403)
    assert account(stack, "leaver")["is_active"] is False
    # Someone still in the directory, and the local account, are untouched.
    assert not bystander.ended.is_set()
    bystander.close()
    assert staying.get("/api/conversations/").status_code == 200
    assert account(stack, "stayer")["is_active"] is True and account(stack, "olivia")["is_active"] is True
    # Coming back into the directory does not undo a deactivation: an admin reactivates the account.
    ldap_server.add_person("leaver", "leaver-pw")
    assert sign_in(a, "leaver", "leaver-pw").status_code == 200


def test_ldap_sync_deactivates_nobody_when_the_directory_cannot_be_asked(servers, ldap_server):
    stack, a, _ = servers
    ldap_server.add_person("kept", "kept-pw")
    login(a, "kept", "kept-pw")
    ldap_server.delete("uid=kept,ou=people,dc=example,dc=org")

    for broken in ({"LDAP_SERVER_URI": "ldap://127.0.0.1:1"}, {"LDAP_BIND_PASSWORD": "not-the-password"}):
        result = subprocess.run(
            [sys.executable, "manage.py", "ldap_sync"],
            cwd=ROOT,
            env={**stack.env, **broken},
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0
        assert "could not be asked" in result.stderr and "nobody was deactivated" in result.stderr, result.stderr
        assert "not-the-password" not in result.stderr
    assert account(stack, "kept")["is_active"] is True


def test_start_tls_with_the_company_ca(stack_factory):
    directory = start_ldap_server(require_tls=True)
    try:
        directory.add_person("tina", "tina-pw")
        env = directory.env(LDAP_START_TLS="true", LDAP_TLS_CA_FILE=str(directory.ca_file))
        stack = stack_factory(extra_env=env).setup(usernames=())
        with_tls = stack.start_server()
        without_tls = stack.start_server(extra_env={"LDAP_START_TLS": "false"})

        assert login(with_tls, "tina", "tina-pw").get("/api/conversations/").status_code == 200
        # This directory answers nothing outside TLS: the same sign-in without StartTLS fails.
        assert sign_in(without_tls, "tina", "tina-pw").status_code == 200
    finally:
        directory.stop()


def test_a_bad_ldap_configuration_stops_the_start_with_a_clear_message(ldap_server):
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, **ldap_server.env(LDAP_GROUP_TYPE="nisNetgroup"), "DJANGO_SETTINGS_MODULE": LOCAL},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "LDAP_GROUP_TYPE must be one of groupOfNames, posixGroup, activeDirectory, not 'nisNetgroup'" in (
        result.stderr
    )


def test_the_bind_password_is_a_secret_the_logs_never_show(settings):
    from chat.logs import RedactSecretsFilter, configured_secrets

    settings.AUTH_LDAP_BIND_PASSWORD = READER_PASSWORD
    assert READER_PASSWORD in configured_secrets()
    assert RedactSecretsFilter().scrub(f"bind failed with {READER_PASSWORD}") == "bind failed with ***"
