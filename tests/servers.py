"""The real-server harness: Redis, PostgreSQL, OpenLDAP and daphne processes on loopback, and ``eventually()``.

Importable without pytest: ``bench/`` drives the same deployment. The
fixtures that wrap these live in ``tests/conftest.py``; a server that is not
installed raises ``NotInstalled``, which the fixtures turn into a failure
naming what to install (tests never skip).
"""

import asyncio
import atexit
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery"
USERNAMES = ("olivia", "max", "otto")


class NotInstalled(RuntimeError):
    """A server the harness runs is not installed; the message says how to install it."""


# --- waiting -------------------------------------------------------------------


def eventually(condition, *, timeout: float = 30.0, interval: float = 0.02, message=None):
    """Call ``condition()`` until it returns something truthy, and return that.

    Raises AssertionError after ``timeout`` s with ``message`` (a string, or a
    callable giving one, read at that moment), else the condition's name and
    its last value. An exception from ``condition()`` ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_still_false(condition, value, timeout, message))
        time.sleep(interval)


async def aeventually(condition, *, timeout: float = 30.0, interval: float = 0.01, message=None):
    """``eventually()`` for a coroutine: awaits ``condition()`` when it returns an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_still_false(condition, value, timeout, message))
        await asyncio.sleep(interval)


def _still_false(condition, value, timeout, message) -> str:
    if callable(message):
        message = message()
    return message or f"{getattr(condition, '__name__', 'condition')} still {value!r} after {timeout} s"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, proc=None) -> None:
    """Return once something accepts TCP connections on ``port``.

    RuntimeError if ``proc`` exits first; TimeoutError after ``timeout`` s.
    """

    def listening():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    try:
        eventually(listening, timeout=timeout, interval=0.05)
    except AssertionError:
        raise TimeoutError(f"nothing listening on {port}") from None


# --- Redis -----------------------------------------------------------------------


class RedisServer:
    """A redis-server on a free loopback port, without persistence; ``stop()`` and ``start()`` again mid-test."""

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
            raise NotInstalled("redis-server is not installed: run `apt-get install redis-server` (.ci/run does)")
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


# --- PostgreSQL ------------------------------------------------------------------

# PostgreSQL URL schemes django-environ reads.
POSTGRES_SCHEMES = ("postgres", "postgresql", "pgsql", "psql", "postgis")
POSTGRES_INSTALL = (
    "PostgreSQL is not installed: this test runs a private PostgreSQL server. "
    "Install it with `make test-deps` (as root) or `sudo apt-get install -y postgresql`."
)


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
            raise NotInstalled(POSTGRES_INSTALL)
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


# --- OpenLDAP ----------------------------------------------------------------------


def start_ldap_server(**options):
    """A started ``tests.ldapserver.LdapServer``; NotInstalled, naming what to install, without slapd."""
    from tests.ldapserver import INSTALL, LdapServer, missing_binaries

    missing = missing_binaries()
    if missing:
        raise NotInstalled(f"OpenLDAP is not installed ({', '.join(missing)} missing): this test runs slapd. {INSTALL}")
    return LdapServer(**options).start()


# --- real daphne processes sharing one database and one Redis -----------------


class StackDatabase:
    """A connection to a Stack's database that takes SQLite-style ``?`` parameters on either engine."""

    def __init__(self, stack):
        if stack.postgres_url:
            import psycopg

            stack.create_database()
            self.connection = psycopg.connect(stack.postgres_url, autocommit=True)
            self.postgres = True
        else:
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


def _postgres_admin(url: str, statement, *, connect_timeout: int = 10) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout) as connection:
        connection.execute(statement)


def _drop_postgres_database(server_url: str, name: str) -> None:
    """Drop database ``name``, waiting out a backend FORCE may not end; nothing if the server is gone."""
    import psycopg
    from psycopg import sql

    def dropped():
        try:
            _postgres_admin(
                server_url,
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
                connect_timeout=5,
            )
        except psycopg.errors.InsufficientPrivilege:
            # FORCE may not end a backend of another role (an autovacuum worker in the
            # database, when the role lacks pg_signal_backend): it ends soon by itself.
            return False
        except psycopg.OperationalError:
            pass  # the server is gone already (a stopped PostgresServer)
        return True

    eventually(dropped, timeout=30, interval=0.2)


class _MigratedTemplate:
    """One migrated, empty database per engine and server for this process, copied into each Stack.

    ``manage.py migrate`` costs seconds per Stack; a copy of its result costs
    milliseconds (a file copy on SQLite, ``CREATE DATABASE ... TEMPLATE`` on
    PostgreSQL). It also gives the password hash of PASSWORD that ``Stack.setup()``
    stores for its users, computed once by the Stack's own settings.
    """

    lock = threading.Lock()
    sqlite: tuple[Path, str] | None = None
    postgres: dict[str, tuple[str, str]] = {}

    @classmethod
    def _build(cls, database_url: str) -> str:
        """Migrate the database at ``database_url`` with a Stack's settings; return the hash of PASSWORD."""
        code = (
            "from django.core.management import call_command\n"
            "from django.contrib.auth.hashers import make_password\n"
            "call_command('migrate', interactive=False, verbosity=0)\n"
            f"print(make_password({PASSWORD!r}))\n"
        )
        env = {**os.environ, **Stack.base_env(database_url)}
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip().splitlines()[-1]

    @classmethod
    def sqlite_file(cls) -> tuple[Path, str]:
        """The migrated SQLite file and the password hash."""
        with cls.lock:
            if cls.sqlite is None:
                folder = Path(tempfile.mkdtemp(prefix="stack-template-"))
                atexit.register(shutil.rmtree, folder, ignore_errors=True)
                path = folder / "db.sqlite3"
                cls.sqlite = path, cls._build(f"sqlite:///{path}")
            return cls.sqlite

    @classmethod
    def postgres_database(cls, server_url: str) -> tuple[str, str]:
        """The name of the migrated template database on ``server_url``, and the password hash."""
        from psycopg import sql

        with cls.lock:
            if server_url not in cls.postgres:
                name = f"stack_template_{secrets.token_hex(6)}"
                _postgres_admin(server_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                atexit.register(_drop_postgres_database, server_url, name)
                url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
                cls.postgres[server_url] = name, cls._build(url)
            return cls.postgres[server_url]


class Stack:
    """A throwaway deployment: its own database, optional Redis, N daphne processes.

    ``database``: None for the test run's engine (a SQLite file, or a fresh
    PostgreSQL database when the run's DATABASE_URL is PostgreSQL), "sqlite"
    for a SQLite file whatever the run uses, or a ``PostgresServer`` for a
    fresh database on it. ``stop()`` drops a PostgreSQL database it made.
    """

    # Stacks made on the run's own database (tests/conftest.py checks that their tests are marked to run on it).
    made_on_run_database = 0

    def __init__(self, *, redis_url="", llm_base_url="", llm_models="", extra_env=None, database=None):
        if database is None:
            Stack.made_on_run_database += 1
        self.dir = Path(tempfile.mkdtemp(prefix="stack-"))
        self.database_server = database if isinstance(database, PostgresServer) else None
        if self.database_server is not None:
            self.server_url = self.database_server.url
        else:
            self.server_url = "" if database == "sqlite" else postgres_url_of_this_run()
        self.postgres_url = ""
        self.database_created = False
        if self.server_url:
            # Created on first use: from the migrated template by setup(), else empty.
            self.postgres_name = f"stack_{secrets.token_hex(6)}"
            self.postgres_url = urlunsplit(urlsplit(self.server_url)._replace(path=f"/{self.postgres_name}"))
        else:
            self.sqlite_path.parent.mkdir()
        self.env = {
            **os.environ,
            **self.base_env(self.postgres_url or f"sqlite:///{self.sqlite_path}"),
            "REDIS_URL": redis_url,
            "LLM_BASE_URL": llm_base_url,
            "LLM_MODELS": llm_models,
            **(extra_env or {}),
        }
        self.procs: dict[int, subprocess.Popen] = {}
        self.logs: dict[int, Path] = {}

    @staticmethod
    def base_env(database_url: str) -> dict[str, str]:
        """The environment every Stack process gets, before the Stack's own settings."""
        return {
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DATABASE_URL": database_url,
            "REDIS_URL": "",
            "SECRET_KEY": "stack-test-key",
            "DEBUG": "false",
            "LLM_BASE_URL": "",
            "LLM_MODELS": "",
            "LLM_API_KEY": "sk-test-SECRET-do-not-leak-1234",
            "PYTHONUNBUFFERED": "1",
            # Tests post quickly; the limits have tests of their own.
            "CHAT_MESSAGES_PER_MINUTE": "0",
        }

    # The SQLite file sits in a folder of its own so that database_down() can take it away.
    @property
    def sqlite_path(self) -> Path:
        return self.dir / "data" / "db.sqlite3"

    def create_database(self, template: str | None = None) -> None:
        """Create this Stack's PostgreSQL database once (a copy of ``template`` when given); SQLite needs nothing."""
        if not self.postgres_url or self.database_created:
            return
        from psycopg import sql

        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.postgres_name))
        if template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        _postgres_admin(self.server_url, statement)
        self.database_created = True

    def manage(self, *args, input=None):
        self.create_database()
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            input=input,
        )

    def setup(self, usernames=USERNAMES):
        """Migrate the database and add ``usernames``, each with PASSWORD; returns the Stack.

        The run's own engine gets a copy of a database migrated once per process;
        a private ``PostgresServer`` (new for each test) is migrated here.
        """
        if self.database_server is not None:
            self.manage("migrate", "--noinput")
            code = "from django.contrib.auth.models import User\n" + "".join(
                f"User.objects.create_user({name!r}, password={PASSWORD!r})\n" for name in usernames
            )
            self.manage("shell", "-c", code)
            return self
        if self.postgres_url:
            template, password_hash = _MigratedTemplate.postgres_database(self.server_url)
            self.create_database(template)
        else:
            template_file, password_hash = _MigratedTemplate.sqlite_file()
            # The backup API copies a consistent database, whatever its WAL holds.
            source, target = sqlite3.connect(template_file), sqlite3.connect(self.sqlite_path)
            try:
                source.backup(target)
            finally:
                source.close()
                target.close()
        self.add_users(usernames, password_hash)
        return self

    def add_users(self, usernames, password_hash: str) -> None:
        """Store ``usernames`` as active users with ``password_hash``: the row ``create_user()`` writes."""
        joined = datetime.now(UTC)
        with self.db() as database:
            for name in usernames:
                database.execute(
                    "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email,"
                    " is_staff, is_active, date_joined) VALUES (?, ?, ?, '', '', '', ?, ?, ?)",
                    (
                        password_hash,
                        False,
                        name,
                        False,
                        True,
                        joined if database.postgres else joined.replace(tzinfo=None).isoformat(" "),
                    ),
                )

    def start_server(self, extra_env=None, *, server="daphne") -> int:
        """One more server process on a free port, its port once it listens: daphne (``manage.py serve``), or
        ``server="uvicorn"`` serving ``config.asgi:application`` with its lifespan events, as the bench runs it."""
        self.create_database()
        port = free_port()
        log = self.dir / f"{server}-{port}.log"
        self.logs[port] = log
        command = {
            "daphne": ["manage.py", "serve", "-b", "127.0.0.1", "-p", str(port)],
            "uvicorn": ["-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
            + ["--lifespan", "on", "--no-access-log", "--timeout-graceful-shutdown", "5"],
        }[server]
        proc = subprocess.Popen(
            [sys.executable, *command],
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
        """End every process (SIGTERM, SIGKILL after 10 s), drop a PostgreSQL database it made, remove its folder."""
        procs = [self.procs.pop(port) for port in list(self.procs)]
        # All at once: each takes a moment to shut down, and they do so side by side.
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.database_created:
            _drop_postgres_database(self.server_url, self.postgres_name)
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
