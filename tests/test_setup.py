"""The README's two commands: `make run` sets everything up on a fresh database and serves;
`make test` installs the servers the suite runs, or says which command would, before any test runs."""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, free_port, wait_for_port


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
            assert client.get("/api/models/").json() == {
                "models": [{"id": "demo", "name": "demo", "provider": "demo", "default": True}]
            }
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
    # daphne listens before its reactor runs and installs the signal handlers: an answer says it runs.
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert time.monotonic() - started < 15


# --- `make test` on a fresh clone: scripts/test-deps -------------------------


def fresh_clone(tmp_path) -> Path:
    """A `git clone` of this repository with the working tree's Makefile and scripts/ over it (uncommitted edits)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    shutil.copy2(ROOT / "Makefile", clone / "Makefile")
    shutil.copytree(ROOT / "scripts", clone / "scripts", dirs_exist_ok=True)
    return clone


def machine(tmp_path, *, lacking, fakes=None) -> dict[str, str]:
    """An environment whose PATH is one folder of links to every command on ours except ``lacking``, plus ``fakes``
    (name -> shell script body): a machine where those packages were never installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (fakes or {}).items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            link = bin_dir / entry.name
            if entry.name not in lacking and not os.path.lexists(link) and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    # Only what a login shell would have: no MAKEFLAGS from a `make test` running this test.
    return {"PATH": str(bin_dir), "HOME": str(tmp_path), "LANG": "C.UTF-8"}


# A stand-in apt-get: it records each call, and its `install` puts the real redis-server on the PATH.
FAKE_APT_GET = f"""echo "$DEBIAN_FRONTEND $*" >> "$HOME/apt-get.log"
if [ "$1" = install ]; then ln -s {shutil.which("redis-server")} "$(dirname "$0")/redis-server"; fi"""


def test_make_test_without_apt_names_the_missing_packages_and_the_command_before_any_test_runs(tmp_path):
    clone = fresh_clone(tmp_path)
    env = machine(tmp_path, lacking={"redis-server", "chromium", "apt-get"})

    result = subprocess.run(["make", "test"], cwd=clone, env=env, capture_output=True, text=True)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "not installed: redis-server chromium" in output
    assert re.search(r"^    (sudo )?apt-get install -y redis-server chromium$", output, re.MULTILINE), output
    assert "There is no apt-get here" in output
    # It stopped before `make install` made the virtualenv, so before pytest could run.
    assert not (clone / ".venv").exists()
    assert "pytest" not in output


def test_make_test_as_a_user_prints_the_sudo_command_and_runs_no_apt_get(tmp_path):
    clone = fresh_clone(tmp_path)
    env = machine(tmp_path, lacking={"redis-server"}, fakes={"id": "echo 1000", "apt-get": FAKE_APT_GET})

    result = subprocess.run(["make", "test"], cwd=clone, env=env, capture_output=True, text=True)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert re.search(r"^    sudo apt-get install -y redis-server$", output, re.MULTILINE), output
    assert not (tmp_path / "apt-get.log").exists()
    assert not (clone / ".venv").exists()


def test_as_root_with_apt_test_deps_installs_only_what_is_missing_once(tmp_path):
    clone = fresh_clone(tmp_path)
    env = machine(tmp_path, lacking={"redis-server"}, fakes={"id": "echo 0", "apt-get": FAKE_APT_GET})

    first = subprocess.run(["scripts/test-deps"], cwd=clone, env=env, capture_output=True, text=True)
    second = subprocess.run(["scripts/test-deps"], cwd=clone, env=env, capture_output=True, text=True)

    assert first.returncode == 0, first.stderr
    assert "installing redis-server" in first.stderr
    assert second.returncode == 0 and second.stderr == "", second.stderr
    calls = (tmp_path / "apt-get.log").read_text().splitlines()
    assert calls == ["noninteractive update -qq", "noninteractive install -y -qq redis-server"]
