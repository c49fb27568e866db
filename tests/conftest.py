"""Fixtures: users and API clients, a real Redis server, the fake provider, real daphne processes.

The servers themselves (Stack, RedisServer, PostgresServer, ...) and the
helpers tests import live in ``tests/servers.py``; this file holds fixtures.
"""

import json
from pathlib import Path

import pytest
from django.test import Client

from tests.servers import PASSWORD, NotInstalled, PostgresServer, RedisServer, Stack, start_ldap_server


def _installed_or_fail():
    """A server that is not installed fails the test (in a fixture or the test itself) with the message saying
    how to install it, without a traceback."""
    try:
        return (yield)
    except NotInstalled as exc:
        message = str(exc)
    pytest.fail(message, pytrace=False)  # outside the except: the message once, not chained


STACKS_BEFORE = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    item.stash[STACKS_BEFORE] = Stack.made_on_run_database
    return (yield from _installed_or_fail())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield from _installed_or_fail()
    made_a_stack = Stack.made_on_run_database > item.stash.get(STACKS_BEFORE, 0)
    if made_a_stack and not item.get_closest_marker("database") and not drives_chromium(item):
        pytest.fail(
            "This test starts a Stack on the run's database but is not marked to run on PostgreSQL: "
            "mark it @pytest.mark.processes (tests/conftest.py, reaches_the_database).",
            pytrace=False,
        )
    return result


# --- which tests the PostgreSQL run repeats -----------------------------------------------------

# Fixtures through which a test reaches the run's database (pytest-django's, and a Stack's).
DATABASE_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback"}
DATABASE_FIXTURES |= {"live_server", "stack_factory"}
BROWSER_TESTS = Path(__file__).parent / "browser"


def drives_chromium(item) -> bool:
    return (
        item.path.is_relative_to(BROWSER_TESTS)
        or item.get_closest_marker("browser") is not None
        or "playwright_api" in getattr(item, "fixturenames", ())
    )


def reaches_the_database(item) -> bool:
    """The rule for `make test-postgres` (README, Test suite): a test runs on PostgreSQL too when it uses the run's
    database, through Django (django_db, a db fixture) or real server processes (processes, stack_factory); a
    Chromium test runs on SQLite only: it tests the page, and the API tests run the same server code on both."""
    if drives_chromium(item):
        return False
    return (
        item.get_closest_marker("django_db") is not None
        or item.get_closest_marker("processes") is not None
        or not DATABASE_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
    )


def pytest_itemcollected(item):
    """Mark ``database`` every test that reaches the database: `make test-postgres` runs ``-m database``."""
    if reaches_the_database(item):
        item.add_marker(pytest.mark.database)


# --- in-process requests inside a test's transaction -------------------------


@pytest.fixture(autouse=True)
def keep_the_test_connection(monkeypatch):
    """Stop channels' ``database_sync_to_async`` closing the connection that holds the test's transaction.

    It calls ``close_old_connections()`` around each call, and with
    ``CONN_MAX_AGE = 0`` that closes the connection: on PostgreSQL the test's
    open transaction goes with it ("the connection is closed"); SQLite's
    in-memory test database ignores the close. Django's test client does the
    same for its request signals. Only this process: real servers keep it.
    """
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)


# --- users and in-process API clients ---------------------------------------


@pytest.fixture
def make_user(django_user_model):
    def make(username, **extra):
        return django_user_model.objects.create_user(username=username, password=PASSWORD, **extra)

    return make


@pytest.fixture
def owner(make_user):
    return make_user("olivia")


@pytest.fixture
def member(make_user):
    return make_user("max")


@pytest.fixture
def outsider(make_user):
    return make_user("otto")


class ApiClient:
    """A logged-in Django test client that enforces CSRF and speaks JSON."""

    def __init__(self, user=None):
        self.client = Client(enforce_csrf_checks=True)
        if user is not None:
            self.client.force_login(user)
        self.client.get("/accounts/login/")  # sets the csrftoken cookie
        self.csrf = self.client.cookies["csrftoken"].value if "csrftoken" in self.client.cookies else ""

    def request(self, method, path, data=None, *, raw=None, csrf=True, **headers):
        kwargs = {"content_type": "application/json"}
        if raw is not None:
            kwargs["data"] = raw
        elif data is not None:
            kwargs["data"] = json.dumps(data)
        if csrf:
            headers["HTTP_X_CSRFTOKEN"] = self.csrf
        return getattr(self.client, method.lower())(path, **kwargs, **headers)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, data=None, **kw):
        return self.request("POST", path, data, **kw)

    def patch(self, path, data=None, **kw):
        return self.request("PATCH", path, data, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


@pytest.fixture
def api():
    """``api(user)`` -> ApiClient logged in as ``user`` (None: anonymous)."""
    return ApiClient


# --- real services -----------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_provider():
    from tests.fakeprovider import FakeProvider

    provider = FakeProvider()
    provider.start()
    yield provider
    provider.stop()


# --- real PostgreSQL --------------------------------------------------------------


@pytest.fixture
def postgres_server():
    """A private PostgreSQL server; a test that needs one fails when PostgreSQL is not installed."""
    server = PostgresServer().start()
    yield server
    server.remove()


# --- a real OpenLDAP directory --------------------------------------------------


@pytest.fixture(scope="session")
def ldap_server():
    """slapd on a loopback port with the test directory (tests/ldapserver.py); tests add their own people."""
    server = start_ldap_server()
    yield server
    server.stop()


# --- real daphne processes sharing one database and one Redis -----------------


@pytest.fixture
def stack_factory():
    """``stack_factory(**kwargs)`` -> a ``Stack``, stopped (processes ended, database dropped) after the test."""
    stacks = []

    def make(**kwargs):
        stack = Stack(**kwargs)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


def pytest_collection_modifyitems(config, items):
    """Browser tests run last in one process (every file under tests/browser/, and any test using Playwright):
    a Chromium test leaves Playwright's event loop running in the main thread until its file ends (see
    tests/browser/conftest.py), and a whole file keeps its module-scoped servers together."""
    items.sort(key=drives_chromium)
