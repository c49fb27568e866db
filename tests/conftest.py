"""Shared fixtures: users and API clients, a real Redis server, the fake provider, real daphne processes."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


# --- real daphne processes sharing one database and one Redis -----------------


class Stack:
    """A throwaway deployment: a SQLite file, optional Redis, N daphne processes."""

    def __init__(self, *, redis_url="", llm_base_url="", llm_models="", extra_env=None):
        self.dir = Path(tempfile.mkdtemp(prefix="stack-"))
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.local",
            "DATABASE_URL": f"sqlite:///{self.dir / 'db.sqlite3'}",
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
        shutil.rmtree(self.dir, ignore_errors=True)

    def db(self):
        import sqlite3

        return sqlite3.connect(self.dir / "db.sqlite3")


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
