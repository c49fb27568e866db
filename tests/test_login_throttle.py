"""Sign-in throttling over real sockets: two daphne processes on one database.

Each test signs in from loopback addresses of its own (127.0.0.x: the server
sees each as a different client) and with usernames of its own, so the
module's one stack serves them all.
"""

import threading
import time

import httpx
import pytest

from tests.servers import PASSWORD, Stack, login

pytestmark = pytest.mark.processes

LIMIT = 3
USERS = ("olivia", "max", "otto", "ada", "ben", "cy", "dee", "eve", "fay", "gus")


@pytest.fixture(scope="module")
def servers(redis_server):
    stack = Stack(redis_url=redis_server.url, extra_env={"AXES_FAILURE_LIMIT": str(LIMIT)}).setup(USERS)
    stack.manage(
        "shell",
        "-c",
        f"from django.contrib.auth.models import User; User.objects.create_superuser('root', '', {PASSWORD!r})",
    )
    a, b = stack.start_server(), stack.start_server()
    yield stack, a, b
    stack.stop()


def sign_in(port, username, password, *, source, path="/accounts/login/", headers=None) -> httpx.Response:
    """One sign-in through the HTML form at ``path``, from the local address ``source``."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=transport, timeout=30) as client:
        client.get(path)
        return client.post(
            path,
            data={"username": username, "password": password, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
            headers={"Referer": f"http://127.0.0.1:{port}{path}", **(headers or {})},
        )


def assert_locked(response, *, cool_off=15 * 60):
    assert response.status_code == 429, response.text
    assert 0 < int(response.headers["Retry-After"]) <= cool_off
    assert "Too many failed sign-in attempts; try again in" in response.text
    assert "<html" in response.text  # the site's page, not axes' bare text


def test_failures_on_both_processes_lock_the_username_on_both(servers):
    stack, a, b = servers
    assert sign_in(a, "olivia", "wrong-1", source="127.0.0.2").status_code == 200
    assert sign_in(b, "olivia", "wrong-2", source="127.0.0.3").status_code == 200
    # The limit's failure is answered with the lockout itself.
    locked = sign_in(a, "olivia", "wrong-3", source="127.0.0.2")
    assert_locked(locked)
    assert "try again in 15 minutes" in locked.text
    # The right password, from a fresh address, on either process.
    for port in (a, b):
        assert_locked(sign_in(port, "olivia", PASSWORD, source="127.0.0.4"))
    # The username is locked, not the addresses it failed from (each below the limit).
    assert sign_in(b, "max", PASSWORD, source="127.0.0.2").status_code == 302
    assert login(a, "max").get("/").status_code == 200


def test_an_address_past_the_limit_is_locked_for_every_username(servers):
    stack, a, b = servers
    assert sign_in(a, "otto", "wrong", source="127.0.0.5").status_code == 200
    assert sign_in(b, "ada", "wrong", source="127.0.0.5").status_code == 200
    assert_locked(sign_in(a, "no-such-user", "wrong", source="127.0.0.5"))
    # A username that never failed, with its right password, from that address: locked.
    assert_locked(sign_in(b, "ben", PASSWORD, source="127.0.0.5"))
    # The same username from another address signs in.
    assert sign_in(b, "ben", PASSWORD, source="127.0.0.6").status_code == 302


def test_the_admin_login_is_throttled_too(servers):
    stack, a, b = servers
    assert sign_in(a, "root", "wrong", source="127.0.0.7", path="/admin/login/").status_code == 200
    assert sign_in(b, "root", "wrong", source="127.0.0.8", path="/admin/login/").status_code == 200
    assert_locked(sign_in(a, "root", "wrong", source="127.0.0.9", path="/admin/login/"))
    assert_locked(sign_in(b, "root", PASSWORD, source="127.0.0.10", path="/admin/login/"))
    # One count for both forms.
    assert_locked(sign_in(a, "root", PASSWORD, source="127.0.0.10"))


def test_a_forged_x_forwarded_for_does_not_dodge_the_address_limit(servers):
    stack, a, b = servers
    # No proxy is trusted (daphne without --proxy-headers): the header is the client's own words.
    for i, username in enumerate(("cy", "dee")):
        forged = {"X-Forwarded-For": f"203.0.113.{i}", "X-Real-IP": f"198.51.100.{i}"}
        assert sign_in(a, username, "wrong", source="127.0.0.11", headers=forged).status_code == 200
    forged = {"X-Forwarded-For": "203.0.113.99"}
    assert_locked(sign_in(b, "eve", "wrong", source="127.0.0.11", headers=forged))
    assert_locked(sign_in(b, "eve", PASSWORD, source="127.0.0.11", headers={"X-Forwarded-For": "203.0.113.100"}))
    rows = stack.query("SELECT DISTINCT ip_address FROM axes_accessattempt WHERE username IN ('cy', 'dee', 'eve')")
    # PostgreSQL's inet comes back as an IPv4Address: compare the text.
    assert [tuple(str(value) for value in row) for row in rows] == [("127.0.0.11",)]


def test_a_successful_sign_in_clears_only_its_own_usernames_failures(servers):
    stack, a, b = servers
    assert sign_in(a, "fay", "wrong", source="127.0.0.12").status_code == 200
    assert sign_in(b, "fay", "wrong", source="127.0.0.13").status_code == 200
    assert sign_in(a, "fay", PASSWORD, source="127.0.0.14").status_code == 302
    # fay starts again from zero...
    assert sign_in(b, "fay", "wrong", source="127.0.0.15").status_code == 200
    assert sign_in(a, "fay", "wrong", source="127.0.0.16").status_code == 200
    # ...but signing in to one's own account does not clear an address's failures against others.
    assert sign_in(a, "attacked-1", "guess", source="127.0.0.17").status_code == 200
    assert sign_in(b, "attacked-2", "guess", source="127.0.0.17").status_code == 200
    assert sign_in(a, "max", PASSWORD, source="127.0.0.17").status_code == 302
    assert_locked(sign_in(b, "attacked-3", "guess", source="127.0.0.17"))


def test_simultaneous_sign_ins_get_no_more_password_checks_than_the_limit(servers):
    stack, a, b = servers
    assert sign_in(a, "gus", "wrong", source="127.0.0.30").status_code == 200
    assert sign_in(b, "gus", "wrong", source="127.0.0.31").status_code == 200
    # One attempt left for gus. Eight at once, with the right password, on both
    # processes: checked one by one against the count, they would all succeed.
    barrier = threading.Barrier(8)
    statuses = []

    def attempt(i):
        port = (a, b)[i % 2]
        transport = httpx.HTTPTransport(local_address=f"127.0.0.{40 + i}")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", transport=transport, timeout=30) as client:
            client.get("/accounts/login/")
            data = {"username": "gus", "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"]}
            barrier.wait(timeout=30)
            response = client.post("/accounts/login/", data=data, headers={"Referer": f"http://127.0.0.1:{port}/"})
            statuses.append(response.status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(statuses) == 8 and set(statuses) <= {302, 429}
    # Every attempt is counted before its password is checked, so at most the one
    # attempt left reaches the check (which one, or none, depends on timing).
    assert statuses.count(302) <= 1
    assert statuses.count(429) >= 7


def test_the_lock_ends_when_retry_after_says(stack_factory):
    stack = stack_factory(extra_env={"AXES_FAILURE_LIMIT": "2", "AXES_COOLOFF_SECONDS": "3"}).setup()
    port = stack.start_server()
    assert sign_in(port, "olivia", "wrong", source="127.0.0.20").status_code == 200
    assert_locked(sign_in(port, "olivia", "wrong", source="127.0.0.20"), cool_off=3)
    locked = sign_in(port, "olivia", PASSWORD, source="127.0.0.21")
    assert_locked(locked, cool_off=3)
    assert "try again in 1 minute." in locked.text
    # Attempts while locked do not extend the window: Retry-After is a promise.
    # The wait is the test: exactly the time Retry-After names, then the sign-in works.
    time.sleep(int(locked.headers["Retry-After"]))
    assert sign_in(port, "olivia", PASSWORD, source="127.0.0.21").status_code == 302
