"""`make run`'s start-up ends with one block: the address to open and, on the first start, the admin's credentials.

Runs what the Makefile's `run` target runs (migrate, then `serve --ensure-admin`) against a temporary database.
"""

import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, eventually, free_port, wait_for_port

PYTHON = str(ROOT / ".venv/bin/python")


def local_env(tmp_path, **extra) -> dict[str, str]:
    """`make run`'s settings on a new SQLite file, no Redis, the demo model; no first admin given unless ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DJANGO_SUPERUSER_")}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        REDIS_URL="",
        LLM_BASE_URL="",
        DJANGO_SETTINGS_MODULE="config.settings.local",
    )
    return {**env, **extra}


def make_run_commands(port: int) -> list[list[str]]:
    """The `run` target's commands (after `install`), read from the Makefile so the test follows it."""
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    commands = []
    for line in recipe.splitlines():
        words = line.strip().replace("$(BIN)/python", PYTHON).replace("$(HOST)", "127.0.0.1")
        commands.append(words.replace("$(PORT)", str(port)).split())
    return commands


def start(commands, env, log: Path):
    """Run every command but the last to its end; start the last (the server) with its output in ``log``."""
    for command in commands[:-1]:
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    return subprocess.Popen(
        commands[-1], cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def block_of(log: Path) -> str:
    """The start-up block: from the first rule of '=' to the second."""
    text = log.read_text()
    rules = [m.start() for m in re.finditer(r"^={40,}$", text, re.M)]
    return text[rules[0] : rules[1]] if len(rules) >= 2 else ""


@pytest.mark.processes
def test_the_start_up_ends_with_the_address_and_the_first_admin(tmp_path):
    port = free_port()
    env = local_env(tmp_path)
    commands = make_run_commands(port)
    assert commands[-1][2:4] == ["serve", "--ensure-admin"], commands

    first = tmp_path / "first.log"
    proc = start(commands, env, first)
    try:
        wait_for_port(port, proc=proc, timeout=60)
        eventually(lambda: block_of(first), message="the start-up block")
        block = block_of(first)
        assert f"open http://127.0.0.1:{port}/" in block
        username = re.search(r"username: (\S+)", block).group(1)
        password = re.search(r"password: (\S+)", block).group(1)
        assert username == "admin" and len(password) >= 12
        # It ends the start-up: nothing but the closing rule after it, the credentials nowhere else.
        text = first.read_text()
        assert text.rstrip().endswith("=" * 72)
        assert text.count(password) == 1
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            client.get("/accounts/login/")
            response = client.post(
                "/accounts/login/",
                data={"username": username, "password": password, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
            )
            assert response.status_code == 302 and response.headers["location"] == "/"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)

    # The next start: the address again, no credentials (the admin exists; its password was shown once).
    again = tmp_path / "again.log"
    proc = start(make_run_commands(port), env, again)
    try:
        wait_for_port(port, proc=proc, timeout=60)
        eventually(lambda: block_of(again), message="the start-up block")
        block = block_of(again)
        assert f"open http://127.0.0.1:{port}/" in block
        assert "password" not in again.read_text() and "username" not in block
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.mark.processes
def test_a_wildcard_address_is_shown_as_one_a_browser_opens(tmp_path):
    port = free_port()
    env = local_env(tmp_path, DJANGO_SUPERUSER_USERNAME="boss", DJANGO_SUPERUSER_PASSWORD="given-in-env-123")
    subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    log = tmp_path / "serve.log"
    proc = start([[PYTHON, "manage.py", "serve", "--ensure-admin", "-b", "0.0.0.0", "-p", str(port)]], env, log)
    try:
        wait_for_port(port, proc=proc, timeout=60)
        eventually(lambda: block_of(log), message="the start-up block")
        block = block_of(log)
        assert f"open http://localhost:{port}/" in block
        assert "username: boss" in block and "password: from DJANGO_SUPERUSER_PASSWORD" in block
        assert "given-in-env-123" not in log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
