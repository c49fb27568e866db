"""Shared fixtures: users and API clients, a real Redis server, the fake provider, real daphne processes."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def eventually(condition, *, timeout: float = 30.0, interval: float = 0.02):
    """Poll ``condition()`` until it is truthy and return its value; AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{getattr(condition, '__name__', 'condition')} still false after {timeout} s")
        time.sleep(interval)


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


class RedisServer:
    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-")
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `apt-get install redis-server` (.ci/run does)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def flush(self):
        import redis

        redis.Redis.from_url(self.url).flushall()


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

# PostgreSQL URL schemes django-environ reads.
POSTGRES_SCHEMES = ("postgres", "postgresql", "pgsql", "psql", "postgis")


def postgres_url_of_this_run() -> str:
    """The test run's DATABASE_URL when it names a PostgreSQL server (`make test-postgres`), else ""."""
    url = os.environ.get("DATABASE_URL", "")
    return url if urlsplit(url).scheme in POSTGRES_SCHEMES else ""


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl live: PATH, else Debian's newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


class PostgresServer:
    """A private PostgreSQL cluster in a temporary folder, to stop and start mid-test.

    PostgreSQL refuses to run as root; under root (CI) it runs as the
    ``postgres`` user that Debian's package creates.
    """

    def __init__(self):
        self.bindir = postgres_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed: run `apt-get install postgresql` (.ci/run does)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.dir / "data"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, user="postgres", group="postgres")

    @property
    def url(self):
        """An admin URL (a superuser, trust authentication on 127.0.0.1) for ``Stack(database=...)``."""
        return f"postgres://chat@127.0.0.1:{self.port}/postgres"

    def _run(self, *args):
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.dir)

    def start(self):
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "chat", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "server.log"), "-w", "start")
        return self

    def stop(self):
        # immediate: like a crash or a cut cable, open connections just die.
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgres_server():
    """A private PostgreSQL server; a test that needs one fails when PostgreSQL is not installed."""
    if postgres_bindir() is None:
        pytest.fail(
            "PostgreSQL is not installed: this test runs a private PostgreSQL server. "
            "Install it with `make test-deps` (as root) or `sudo apt-get install -y postgresql`.",
            pytrace=False,
        )
    server = PostgresServer().start()
    yield server
    server.remove()


# --- a real OpenLDAP directory --------------------------------------------------


def start_ldap_server(**options):
    """A started ``tests.ldapserver.LdapServer``; the test fails, naming what to install, without slapd."""
    from tests.ldapserver import INSTALL, LdapServer, missing_binaries

    missing = missing_binaries()
    if missing:
        pytest.fail(
            f"OpenLDAP is not installed ({', '.join(missing)} missing): this test runs slapd. {INSTALL}", pytrace=False
        )
    return LdapServer(**options).start()


@pytest.fixture(scope="session")
def ldap_server():
    """slapd on a loopback port with the test directory (tests/ldapserver.py); tests add their own people."""
    server = start_ldap_server()
    yield server
    server.stop()


# --- real daphne processes sharing one database and one Redis -----------------


class StackDatabase:
    """A connection to a Stack's database that takes SQLite-style ``?`` parameters on either engine."""

    def __init__(self, stack):
        if stack.postgres_url:
            import psycopg

            self.connection = psycopg.connect(stack.postgres_url, autocommit=True)
            self.postgres = True
        else:
            import sqlite3

            self.connection = sqlite3.connect(stack.sqlite_path, isolation_level=None)
            self.postgres = False

    def execute(self, sql, params=()):
        if self.postgres:
            if params:
                sql = sql.replace("%", "%%").replace("?", "%s")
            return self.connection.execute(sql, params or None)
        return self.connection.execute(sql, params)

    def close(self):
        self.connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Stack:
    """A throwaway deployment: its own database, optional Redis, N daphne processes.

    ``database``: None for the test run's engine (a SQLite file, or a fresh
    PostgreSQL database when the run's DATABASE_URL is PostgreSQL), "sqlite"
    for a SQLite file whatever the run uses, or a ``PostgresServer`` for a
    fresh database on it. ``stop()`` drops a PostgreSQL database it made.
    """

    def __init__(self, *, redis_url="", llm_base_url="", llm_models="", extra_env=None, database=None):
        self.dir = Path(tempfile.mkdtemp(prefix="stack-"))
        self.database_server = database if isinstance(database, PostgresServer) else None
        if self.database_server is not None:
            self.server_url = self.database_server.url
        else:
            self.server_url = "" if database == "sqlite" else postgres_url_of_this_run()
        self.postgres_url = self._create_postgres_database() if self.server_url else ""
        if not self.postgres_url:
            self.sqlite_path.parent.mkdir()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DATABASE_URL": self.postgres_url or f"sqlite:///{self.sqlite_path}",
            "REDIS_URL": redis_url,
            "SECRET_KEY": "stack-test-key",
            "DEBUG": "false",
            "LLM_BASE_URL": llm_base_url,
            "LLM_MODELS": llm_models,
            "LLM_API_KEY": "sk-test-SECRET-do-not-leak-1234",
            "PYTHONUNBUFFERED": "1",
            # Tests post quickly; the limits have tests of their own.
            "CHAT_MESSAGES_PER_MINUTE": "0",
            **(extra_env or {}),
        }
        self.procs: dict[int, subprocess.Popen] = {}
        self.logs: dict[int, Path] = {}

    # The SQLite file sits in a folder of its own so that database_down() can take it away.
    @property
    def sqlite_path(self) -> Path:
        return self.dir / "data" / "db.sqlite3"

    def _create_postgres_database(self) -> str:
        import psycopg
        from psycopg import sql

        self.postgres_name = f"stack_{secrets.token_hex(6)}"
        with psycopg.connect(self.server_url, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.postgres_name)))
        return urlunsplit(urlsplit(self.server_url)._replace(path=f"/{self.postgres_name}"))

    def _drop_postgres_database(self):
        import psycopg
        from psycopg import sql

        def dropped():
            try:
                with psycopg.connect(self.server_url, autocommit=True, connect_timeout=5) as connection:
                    connection.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.postgres_name))
                    )
            except psycopg.errors.InsufficientPrivilege:
                # FORCE may not end a backend of another role (an autovacuum worker in the
                # database, when the role lacks pg_signal_backend): it ends soon by itself.
                return False
            except psycopg.OperationalError:
                pass  # the server is gone already (a stopped PostgresServer)
            return True

        eventually(dropped, timeout=30, interval=0.2)

    def manage(self, *args, input=None):
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            input=input,
        )

    def setup(self, usernames=("olivia", "max", "otto")):
        self.manage("migrate", "--noinput")
        code = "from django.contrib.auth.models import User\n" + "".join(
            f"User.objects.create_user({name!r}, password={PASSWORD!r})\n" for name in usernames
        )
        self.manage("shell", "-c", code)
        return self

    def start_server(self, extra_env=None) -> int:
        port = free_port()
        log = self.dir / f"daphne-{port}.log"
        self.logs[port] = log
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "-b", "127.0.0.1", "-p", str(port)],
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.procs[port] = proc
        wait_for_port(port, proc=proc, timeout=30)
        return port

    def kill(self, port, sig=signal.SIGKILL):
        proc = self.procs.pop(port)
        proc.send_signal(sig)
        proc.wait(30)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs.values() if p.exists())

    def stop(self):
        for port in list(self.procs):
            proc = self.procs.pop(port)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.postgres_url:
            self._drop_postgres_database()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- the database, whichever engine ---

    def db(self) -> StackDatabase:
        """A connection (use it in ``with``) taking ``?`` parameters; prefer ``query()``."""
        return StackDatabase(self)

    def query(self, sql: str, params=()) -> list[tuple]:
        """Run one statement with SQLite-style ``?`` parameters on either engine; the rows it returns."""
        with self.db() as database:
            cursor = database.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def uuid(self, value):
        """``value`` (a UUID or its text) as the database stores it: 32 hex digits in SQLite, uuid in PostgreSQL."""
        value = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
        return value if self.postgres_url else value.hex

    def database_down(self):
        """Make the database unreachable for the servers until ``database_up()``.

        SQLite: its folder is moved away and a plain file takes its name, so
        opening the database fails even for root. PostgreSQL: only a Stack on
        a private ``PostgresServer`` can lose its server, which stops.
        """
        if self.database_server is not None:
            self.database_server.stop()
        elif self.postgres_url:
            raise RuntimeError("the run's shared PostgreSQL server cannot be stopped: use Stack(database=...)")
        else:
            self.sqlite_path.parent.rename(self.dir / "data-away")
            self.sqlite_path.parent.write_text("the database is away\n")

    def database_up(self):
        if self.database_server is not None:
            self.database_server.start()
        elif not self.postgres_url:
            self.sqlite_path.parent.unlink()
            (self.dir / "data-away").rename(self.sqlite_path.parent)


def login(port: int, username: str, password: str = PASSWORD, **kwargs) -> httpx.Client:
    """An httpx client logged in on the daphne at ``port``, sending the CSRF header."""
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, **kwargs)
    client.get("/accounts/login/")
    token = client.cookies["csrftoken"]
    response = client.post(
        "/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token},
        headers={"Referer": f"http://127.0.0.1:{port}/accounts/login/"},
    )
    assert response.status_code == 302, response.text
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


@pytest.fixture
def stack_factory():
    stacks = []

    def make(**kwargs):
        stack = Stack(**kwargs)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


def pytest_collection_modifyitems(config, items):
    """Browser tests run last: Playwright's sync API keeps an event loop running in the
    main thread until the session ends, which would break later asyncio tests."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
