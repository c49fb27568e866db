"""Start-up checks (chat/checks.py): a misspelt LLM_API or an invalid LLM_BASE_URL stops
`manage.py check` and `manage.py serve` with a message that names the mistake and no secret."""

import os
import socket
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.test import override_settings

from chat import checks
from tests.servers import ROOT, free_port

KEY = "sk-check-SECRET-key-0123456789"


def manage(*args, tmp_path, **env) -> subprocess.CompletedProcess:
    """``manage.py *args`` with the local settings, a throwaway database and ``env``; output as text."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LLM_")}
    environment |= {
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "SECRET_KEY": "checks-test-key",
        "LLM_API_KEY": KEY,
        **env,
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_check_names_a_misspelt_llm_api_and_the_closest_one(tmp_path):
    result = manage("check", tmp_path=tmp_path, LLM_API="openia", LLM_BASE_URL="https://api.example.com/v1")

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "(chat.E001) LLM_API is 'openia'" in output
    assert "Did you mean 'openai'?" in output and "openai, dashscope, demo" in output
    assert KEY not in output


def test_credentials_in_a_valid_base_url_pass_and_are_never_printed(tmp_path):
    url = "https://user:pass@host.example/v1?api-key=xyz"

    result = manage("check", tmp_path=tmp_path, LLM_BASE_URL=url)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "pass" not in output and "xyz" not in output


def test_an_invalid_base_url_is_named_without_its_credentials(tmp_path):
    url = f"ftp://user:pass@host.example/v1?api-key=xyz&k={KEY}"

    result = manage("check", tmp_path=tmp_path, LLM_BASE_URL=url)

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "(chat.E002) LLM_BASE_URL (ftp://[redacted]@host.example/v1) must start with https:// or http://" in output
    assert "pass" not in output and "xyz" not in output and KEY not in output and "user" not in output


def test_serve_refuses_to_start_on_a_configuration_error(tmp_path):
    port = free_port()

    result = manage("serve", "-p", str(port), tmp_path=tmp_path, LLM_API="dashscop")

    assert result.returncode != 0
    assert "(chat.E001) LLM_API is 'dashscop'" in result.stderr and "Did you mean 'dashscope'?" in result.stderr
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("api.openai.com/v1", "has no scheme"),
        ("localhost:11434/v1", "has no scheme"),
        ("https:///v1", "has no host"),
        ("https://api.example.com:99999/v1", "is not a valid URL"),
        ("https://api.example .com/v1", "contains spaces"),
        ("https://api.example.com/v1 ", "contains spaces"),
        ("https://api.example.com/\nv1", "control characters"),
        ("ws://api.example.com/v1", "not ws://"),
    ],
)
def test_invalid_base_urls(url, problem):
    with override_settings(LLM_BASE_URL=url):
        (error,) = checks.llm_base_url()

    assert error.id == "chat.E002" and problem in error.msg


@pytest.mark.parametrize("url", ["", "https://api.openai.com/v1", "http://127.0.0.1:11434/v1", "http://[::1]:8000/v1"])
def test_valid_or_unset_base_urls(url):
    with override_settings(LLM_BASE_URL=url):
        assert checks.llm_base_url() == []


def test_a_key_pasted_into_llm_api_is_not_echoed():
    with override_settings(LLM_API=KEY):
        (error,) = checks.llm_api()

    assert error.id == "chat.E001" and KEY not in error.msg + error.hint


def test_every_api_the_providers_speak_passes():
    for api in checks.APIS:
        with override_settings(LLM_API=api):
            assert checks.llm_api() == []


def test_serving_hashed_static_names_without_collectstatic_is_an_error(tmp_path, settings):
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {"BACKEND": "chat.staticfiles.HashedStaticFilesStorage"}}
    settings.STATIC_ROOT = tmp_path
    settings.SERVE_STATIC = True

    (error,) = checks.static_manifest()
    assert error.id == "chat.E003" and "collectstatic" in error.hint

    call_command("collectstatic", interactive=False, verbosity=0)
    assert checks.static_manifest() == []
    settings.SERVE_STATIC = False  # nginx serves them: the app never reads STATIC_ROOT's files
    (tmp_path / "staticfiles.json").unlink()
    assert checks.static_manifest() == []
