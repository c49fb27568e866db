"""The README's two commands: `make run` sets everything up on a fresh database and serves."""

import os
import re
import signal
import subprocess
import time

import httpx
import pytest

from tests.conftest import ROOT, free_port, wait_for_port


@pytest.mark.processes
def test_make_run_on_a_fresh_database(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.sqlite3'}",
        "REDIS_URL": "",
        "LLM_BASE_URL": "",
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
    }
    env.pop("DJANGO_SUPERUSER_PASSWORD", None)
    env.pop("DJANGO_SUPERUSER_USERNAME", None)
    log = tmp_path / "make-run.log"
    proc = subprocess.Popen(
        ["make", "run", f"PORT={port}"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, timeout=120, proc=proc)
        output = log.read_text()
        username = re.search(r"username: (\S+)", output).group(1)
        password = re.search(r"password: (\S+)", output).group(1)
        assert username == "admin" and len(password) >= 12
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            page = client.get("/accounts/login/")
            assert page.status_code == 200 and 'name="username"' in page.text
            response = client.post(
                "/accounts/login/",
                data={"username": username, "password": password, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
            )
            assert response.status_code == 302 and response.headers["location"] == "/"
            assert client.get("/api/models/").json() == {"models": [{"id": "demo", "default": True}]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    # A second run on the same database creates no second admin and prints no password.
    second = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "manage.py", "ensure_admin"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "password" not in second.stdout


def test_ensure_admin_takes_credentials_from_the_environment(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'env.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DJANGO_SUPERUSER_USERNAME": "boss",
        "DJANGO_SUPERUSER_PASSWORD": "given-in-env-123",
    }
    python = str(ROOT / ".venv/bin/python")
    subprocess.run([python, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    out = subprocess.run([python, "manage.py", "ensure_admin"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert "username: boss" in out.stdout and "given-in-env-123" not in out.stdout
    check = subprocess.run(
        [
            python,
            "manage.py",
            "shell",
            "-c",
            "from django.contrib.auth.models import User; u = User.objects.get(username='boss');"
            "print(u.is_superuser, u.check_password('given-in-env-123'))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.strip().splitlines()[-1] == "True True"


def test_sigterm_ends_the_server(tmp_path):
    """`manage.py serve` stops on SIGTERM within a few seconds (the shutdown hook runs)."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
    }
    python = str(ROOT / ".venv/bin/python")
    subprocess.run([python, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    proc = subprocess.Popen(
        [python, "manage.py", "serve", "-p", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc=proc)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert time.monotonic() - started < 15
