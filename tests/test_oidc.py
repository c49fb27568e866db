"""OpenID Connect sign-in over real HTTP: a daphne process and the test provider (tests/oidcprovider.py).

Every sign-in walks the real redirects: the app's /oidc/authenticate/, the
provider's login form, the app's /oidc/callback/ (which calls the provider's
token, JWKS and userinfo endpoints itself). One stack and one provider serve
the module; each test uses people of its own. A second process of the same
stack runs with OIDC_CREATE_USERS=false, a third without OIDC at all.
"""

import re
from html import unescape
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tests.oidcprovider import OIDCProvider
from tests.servers import PASSWORD, Stack
from tests.sseclient import start_viewer

pytestmark = pytest.mark.processes

CLIENT_ID = "team-chat"
CLIENT_SECRET = "oidc-client-secret-do-not-leak"


def person(name, *, groups=(), email=None, active=True):
    return {
        "password": f"{name}-provider-pw",
        "email": email or f"{name}@example.com",
        "given_name": name.title(),
        "family_name": "Tester",
        "name": f"{name.title()} Tester",
        "groups": list(groups),
        "active": active,
    }


USERS = {
    "alice": person("alice", groups=["chat-admins"]),
    "bea": person("bea", groups=["chat-staff"]),
    "carol": person("carol", active=False),
    "dave": person("dave", email="dave@elsewhere.example"),
    "erin": person("erin"),
    "frank": person("frank"),
    "olivia": person("olivia"),
    "gina": person("gina"),
    "hugo": person("hugo"),
    "ivy": person("ivy"),
}


@pytest.fixture(scope="module")
def oidc(redis_server, tmp_path_factory):
    provider = OIDCProvider(tmp_path_factory.mktemp("oidc"))
    issuer = provider.start({"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "users": USERS})
    stack = Stack(
        redis_url=redis_server.url,
        extra_env={
            "OIDC_ISSUER": issuer,
            "OIDC_CLIENT_ID": CLIENT_ID,
            "OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_PROVIDER_NAME": "Example SSO",
            "OIDC_STAFF_GROUPS": "chat-staff",
            "OIDC_SUPERUSER_GROUPS": "chat-admins",
            "OIDC_ALLOWED_EMAIL_DOMAINS": "example.com",
            "PASSWORD_LOGIN": "false",
            "AXES_FAILURE_LIMIT": "3",
        },
    )
    try:
        stack.setup(usernames=("olivia", "sam", "erin", "pat"))
        stack.manage(
            "shell",
            "-c",
            "from django.contrib.auth.models import User\n"
            f"User.objects.create_superuser('root', '', {PASSWORD!r})\n"
            "User.objects.filter(username='erin').update(is_active=False)\n"
            "User.objects.filter(username='sam').update(is_staff=True)\n",
        )
        main = stack.start_server()
        closed = stack.start_server(extra_env={"OIDC_CREATE_USERS": "false"})
        plain = stack.start_server(extra_env={"OIDC_ISSUER": "", "PASSWORD_LOGIN": "true"})
        provider.control(redirect_uris=[f"http://127.0.0.1:{port}/oidc/callback/" for port in (main, closed)])
        yield Setup(stack, provider, main, closed, plain)
    finally:
        stack.stop()
        provider.stop()


class Setup:
    def __init__(self, stack, provider, main, closed, plain):
        self.stack, self.provider, self.main, self.closed, self.plain = stack, provider, main, closed, plain

    def user(self, username):
        rows = self.stack.query(
            "SELECT email, first_name, is_staff, is_superuser, is_active, password FROM auth_user WHERE username = ?",
            (username,),
        )
        if not rows:
            return None
        email, first_name, staff, superuser, active, password = rows[0]
        return {
            "email": email,
            "first_name": first_name,
            "is_staff": bool(staff),
            "is_superuser": bool(superuser),
            "is_active": bool(active),
            "usable_password": not password.startswith("!"),
        }


def form_fields(page: str) -> dict[str, str]:
    return {
        unescape(name): unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    }


def start(port) -> tuple[httpx.Client, str]:
    """Begin a sign-in on the app at ``port``: a fresh browser-like client and the provider's authorize URL."""
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    response = client.get("/oidc/authenticate/")
    assert response.status_code == 302, response.text
    return client, response.headers["location"]


def at_provider(client, authorize_url, username, password=None) -> str:
    """Sign in at the provider's form; return where it sends the browser (the app's callback URL)."""
    form = client.get(authorize_url)
    assert form.status_code == 200, form.text
    issuer = urlunsplit(urlsplit(authorize_url)._replace(path="", query=""))
    answer = client.post(
        f"{issuer}/authorize",
        data={**form_fields(form.text), "username": username, "password": password or USERS[username]["password"]},
    )
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


def sign_in(port, username) -> tuple[httpx.Client, httpx.Response]:
    """The whole round trip; returns the client and the app's answer to the callback."""
    client, authorize_url = start(port)
    callback = at_provider(client, authorize_url, username)
    return client, client.get(callback)


def assert_refused(response, status, code):
    assert response.status_code == status, response.text
    assert f'data-code="{code}"' in response.text
    assert CLIENT_SECRET not in response.text


def signed_in_as(client) -> str | None:
    """The username the app's page is rendered for, or None when it sends the browser to sign in."""
    page = client.get("/")
    if page.status_code == 302:
        return None
    match = re.search(r'"user": "([^"]+)"', unescape(page.text))
    return match.group(1) if match else None


# --- signing in ------------------------------------------------------------------


def test_sign_in_creates_the_account_with_rights_from_the_groups(oidc):
    client, answer = sign_in(oidc.main, "alice")
    assert answer.status_code == 302 and answer.headers["location"] == "/"
    assert signed_in_as(client) == "alice"
    assert oidc.user("alice") == {
        "email": "alice@example.com",
        "first_name": "Alice",
        "is_staff": True,
        "is_superuser": True,
        "is_active": True,
        "usable_password": False,
    }
    assert client.get("/admin/").status_code == 200
    # PKCE: the app sent the verifier with the code, and the provider checked it.
    assert any(r["code_verifier"] and r.get("answered") for r in oidc.provider.token_requests())


def test_groups_are_read_again_at_every_sign_in(oidc):
    sign_in(oidc.main, "bea")
    assert (oidc.user("bea")["is_staff"], oidc.user("bea")["is_superuser"]) == (True, False)
    oidc.provider.control(users={"bea": person("bea", groups=["chat-admins"])})
    sign_in(oidc.main, "bea")
    assert (oidc.user("bea")["is_staff"], oidc.user("bea")["is_superuser"]) == (True, True)
    # Out of every group: no more admin rights, at once.
    oidc.provider.control(users={"bea": person("bea", groups=["designers"])})
    client, answer = sign_in(oidc.main, "bea")
    assert answer.status_code == 302
    assert (oidc.user("bea")["is_staff"], oidc.user("bea")["is_superuser"]) == (False, False)
    assert client.get("/admin/").status_code == 302  # to the admin's login


def test_an_email_domain_not_allowed_is_refused(oidc):
    client, answer = sign_in(oidc.main, "dave")
    assert_refused(answer, 403, "email_domain_not_allowed")
    assert "not in a domain allowed" in answer.text
    assert oidc.user("dave") is None
    assert signed_in_as(client) is None


def test_a_person_the_provider_refuses_cannot_sign_in(oidc):
    client, answer = sign_in(oidc.main, "carol")
    assert_refused(answer, 403, "provider_refused")
    assert "access_denied" in answer.text
    assert signed_in_as(client) is None


def test_an_inactive_local_account_cannot_sign_in_through_the_provider(oidc):
    client, answer = sign_in(oidc.main, "erin")
    assert_refused(answer, 403, "account_inactive")
    assert signed_in_as(client) is None
    assert oidc.user("erin")["is_active"] is False


def test_without_create_users_only_existing_accounts_sign_in(oidc):
    client, answer = sign_in(oidc.closed, "frank")
    assert_refused(answer, 403, "no_account")
    assert oidc.user("frank") is None
    # olivia has a local account (with a password): she signs in through the provider, password kept.
    client, answer = sign_in(oidc.closed, "olivia")
    assert answer.status_code == 302, answer.text
    assert signed_in_as(client) == "olivia"
    assert oidc.user("olivia")["usable_password"] is True


# --- answers that must not sign anybody in ----------------------------------------


def test_a_wrong_state_is_refused(oidc):
    client, authorize_url = start(oidc.main)
    callback = urlsplit(at_provider(client, authorize_url, "gina"))
    query = parse_qs(callback.query)
    forged = urlunsplit(callback._replace(query=urlencode({"code": query["code"][0], "state": "forged-state"})))
    assert_refused(client.get(forged), 400, "invalid_state")
    assert signed_in_as(client) is None
    # The same answer in another browser (no session that started it): refused too.
    stranger = httpx.Client(timeout=30)
    assert_refused(stranger.get(urlunsplit(callback)), 400, "invalid_state")
    assert oidc.user("gina") is None


@pytest.mark.parametrize("tamper", ["signature", "audience"])
def test_a_tampered_id_token_is_refused(oidc, tamper):
    oidc.provider.control(tamper=tamper)
    client, answer = sign_in(oidc.main, "hugo")
    assert_refused(answer, 400, "invalid_id_token")
    assert signed_in_as(client) is None
    assert oidc.user("hugo") is None
    assert CLIENT_SECRET not in oidc.stack.log_text()


# --- the login page and passwords -------------------------------------------------


def test_the_button_is_there_only_when_oidc_is_configured(oidc):
    page = httpx.get(f"http://127.0.0.1:{oidc.main}/accounts/login/?next=/c/x/")
    assert 'href="/oidc/authenticate/?next=/c/x/"' in page.text
    assert "Sign in with Example SSO" in page.text
    plain = httpx.get(f"http://127.0.0.1:{oidc.plain}/accounts/login/")
    assert plain.status_code == 200
    assert "Sign in with" not in plain.text
    assert httpx.get(f"http://127.0.0.1:{oidc.plain}/oidc/authenticate/").status_code == 404


def password_sign_in(port, username, password=PASSWORD, *, source, path="/accounts/login/") -> httpx.Response:
    """A sign-in through the password form at ``path``, from the local address ``source`` (axes counts per address)."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=transport, timeout=30) as client:
        client.get(path)
        return client.post(
            path,
            data={"username": username, "password": password, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
            headers={"Referer": f"http://127.0.0.1:{port}{path}"},
        )


def test_password_login_off_lets_only_superusers_in(oidc):
    source = "127.0.0.20"
    refused = password_sign_in(oidc.main, "olivia", source=source)
    assert refused.status_code == 200
    assert "Password sign-in is turned off: use the button above to sign in with Example SSO." in refused.text
    assert password_sign_in(oidc.main, "root", source=source).status_code == 302
    # The admin's login page too: a staff member's password is refused, a superuser's accepted.
    refused = password_sign_in(oidc.main, "sam", path="/admin/login/", source=source)
    assert refused.status_code == 200 and "Password sign-in is turned off" in refused.text
    assert password_sign_in(oidc.main, "root", path="/admin/login/", source=source).status_code == 302
    # Without PASSWORD_LOGIN=false (the plain process), olivia's password works as before.
    assert password_sign_in(oidc.plain, "olivia", source=source).status_code == 302


def test_passwords_are_still_throttled_and_oidc_sign_ins_are_not_counted(oidc):
    source = "127.0.0.21"
    for _ in range(3):
        sign_in(oidc.main, "ivy")
    assert oidc.stack.query("SELECT COUNT(*) FROM axes_accessattempt WHERE username IS NULL")[0][0] == 0
    assert password_sign_in(oidc.main, "pat", "wrong-1", source=source).status_code == 200
    assert password_sign_in(oidc.main, "pat", "wrong-2", source=source).status_code == 200
    locked = password_sign_in(oidc.main, "pat", "wrong-3", source=source)
    assert locked.status_code == 429 and "Retry-After" in locked.headers


# --- a refresh the provider refuses ends the person's streams ----------------------


def test_a_refused_refresh_ends_every_oidc_session_and_its_streams(oidc):
    first, _ = sign_in(oidc.main, "gina")
    second, _ = sign_in(oidc.main, "gina")
    first.headers["X-CSRFToken"] = first.cookies["csrftoken"]
    mine = first.post("/api/conversations/", json={"title": "mine"})
    assert mine.status_code == 201, mine.text
    # An open stream in the second session (another browser), which never loads a page.
    viewer = start_viewer(second, f"/api/conversations/{mine.json()['id']}/events/")
    # Disabled at the provider; the first session's ID token has expired (OIDC_SESSION_REFRESH_SECONDS).
    oidc.provider.control(users={"gina": person("gina", active=False)})
    expire_id_token(oidc.stack, first.cookies["sessionid"])
    page = first.get("/")
    assert page.status_code == 302 and "prompt=none" in page.headers["location"]
    answer = first.get(page.headers["location"])
    assert "error=login_required" in answer.headers["location"]
    assert_refused(first.get(answer.headers["location"]), 403, "provider_refused")
    # Both sessions are gone; the open stream ended with access.revoked.
    events = viewer.wait(timeout=10)
    assert (events[-1].type, events[-1].data) == ("access.revoked", {"reason": "signed_out"})
    assert signed_in_as(first) is None and signed_in_as(second) is None
    assert oidc.user("gina")["is_active"] is True  # nothing was deactivated


def expire_id_token(stack, session_key):
    stack.manage(
        "shell",
        "-c",
        "from django.contrib.sessions.backends.db import SessionStore\n"
        f"s = SessionStore({session_key!r}); s['oidc_id_token_expiration'] = 0; s.save()\n",
    )


def test_deactivating_an_oidc_account_here_ends_its_sessions(oidc):
    client, _ = sign_in(oidc.main, "ivy")
    assert signed_in_as(client) == "ivy"
    oidc.stack.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\nUser.objects.filter(username='ivy').update(is_active=False)",
    )
    assert signed_in_as(client) is None
