"""The production settings: Django's deployment checks pass, secrets are required, HTTPS is enforced.

Each check runs the settings in a subprocess with the environment a
deployment would give it, the way the server itself reads them.
"""

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.servers import ROOT, Stack

# Variables these tests set themselves; a developer's shell must not change the outcome.
OURS = (
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "TRUST_X_FORWARDED_PROTO",
    "LOG_FORMAT",
    "LOG_LEVEL",
)
PRODUCTION = {
    "DJANGO_SETTINGS_MODULE": "config.settings.production",
    "SECRET_KEY": "k3y-for-tests-only-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFG",
    "ALLOWED_HOSTS": "chat.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://chat.example.com",
}
SHOWN = (
    "DEBUG",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_SSL_REDIRECT",
    "SECURE_REDIRECT_EXEMPT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER",
    "LOG_FORMAT",
)


def environment(**overrides):
    env = {k: v for k, v in os.environ.items() if k not in OURS}
    env.update(PRODUCTION)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run(*args, **overrides):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environment(**overrides), capture_output=True, text=True
    )


def production_settings(**overrides) -> dict:
    """The values of SHOWN as the production module sets them (absent: not in the module)."""
    script = (
        "import json, config.settings.production as s; "
        f"print(json.dumps({{name: getattr(s, name, 'absent') for name in {SHOWN!r}}}))"
    )
    result = run("-c", script, **overrides)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_check_deploy_passes_without_a_single_warning():
    result = run("manage.py", "check", "--deploy", "--fail-level", "WARNING")

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output
    assert "WARNING" not in output and "security.W" not in output


@pytest.mark.parametrize("secret_key", ["", None], ids=["empty", "unset"])
def test_production_refuses_to_start_without_a_secret_key(secret_key):
    if secret_key is None and (ROOT / ".env").exists():
        pytest.skip("a .env file here may set SECRET_KEY")

    result = run("manage.py", "check", SECRET_KEY=secret_key)

    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is not set" in result.stderr
    assert "secrets.token_urlsafe(50)" in result.stderr  # it says how to make one


def test_https_is_enforced_by_default():
    values = production_settings()

    assert values["DEBUG"] is False
    assert values["SESSION_COOKIE_SECURE"] is True and values["CSRF_COOKIE_SECURE"] is True
    assert values["SECURE_SSL_REDIRECT"] is True
    assert values["SECURE_REDIRECT_EXEMPT"] == ["^healthz$", "^readyz$"]
    assert values["SECURE_HSTS_SECONDS"] == 365 * 24 * 3600
    assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True and values["SECURE_HSTS_PRELOAD"] is True
    assert values["LOG_FORMAT"] == "json"


def test_the_environment_can_relax_https_and_choose_plain_logs():
    values = production_settings(
        SECURE_SSL_REDIRECT="false",
        SECURE_HSTS_SECONDS="0",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="false",
        SECURE_HSTS_PRELOAD="false",
        LOG_FORMAT="plain",
        DEBUG="true",  # ignored: production never debugs
    )

    assert values["SECURE_SSL_REDIRECT"] is False
    assert values["SECURE_HSTS_SECONDS"] == 0
    assert values["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is False and values["SECURE_HSTS_PRELOAD"] is False
    assert values["LOG_FORMAT"] == "plain"
    assert values["DEBUG"] is False


def test_x_forwarded_proto_is_trusted_only_when_switched_on():
    assert production_settings()["SECURE_PROXY_SSL_HEADER"] == "absent"
    assert production_settings(TRUST_X_FORWARDED_PROTO="false")["SECURE_PROXY_SSL_HEADER"] == "absent"
    assert production_settings(TRUST_X_FORWARDED_PROTO="true")["SECURE_PROXY_SSL_HEADER"] == [
        "HTTP_X_FORWARDED_PROTO",
        "https",
    ]


def test_an_unknown_log_format_is_refused_clearly():
    result = run("manage.py", "check", LOG_FORMAT="xml")

    assert result.returncode != 0
    assert "LOG_FORMAT must be json or plain, not 'xml'" in result.stderr


@pytest.mark.processes
def test_daphne_redirects_plain_http_but_not_the_health_checks():
    stack = Stack()
    try:
        stack.setup(usernames=())
        production = {**PRODUCTION, "ALLOWED_HOSTS": "127.0.0.1", "CSRF_TRUSTED_ORIGINS": ""}
        # Production's pages name static files by their hash: collectstatic first, as the image does.
        production["STATIC_ROOT"] = str(stack.dir / "static")
        collect = [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"]
        subprocess.run(collect, cwd=ROOT, env={**stack.env, **production}, check=True)
        direct = stack.start_server(production)
        behind_proxy = stack.start_server({**production, "TRUST_X_FORWARDED_PROTO": "true"})
        https = {"X-Forwarded-Proto": "https"}

        with httpx.Client(base_url=f"http://127.0.0.1:{direct}") as client:
            page = client.get("/accounts/login/")
            assert page.status_code == 301
            assert page.headers["location"] == f"https://127.0.0.1:{direct}/accounts/login/"
            # Anyone can send X-Forwarded-Proto: without the switch it changes nothing.
            assert client.get("/accounts/login/", headers=https).status_code == 301
            for probe in ("/healthz", "/readyz"):
                response = client.get(probe)
                assert response.status_code == 200, (probe, response.text)
                assert "strict-transport-security" not in response.headers  # plain HTTP gets no HSTS

        with httpx.Client(base_url=f"http://127.0.0.1:{behind_proxy}") as client:
            assert client.get("/accounts/login/").status_code == 301
            page = client.get("/accounts/login/", headers=https)
            assert page.status_code == 200
            assert page.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains; preload"
            cookie = page.headers["set-cookie"]
            assert cookie.startswith("csrftoken=") and "; Secure" in cookie
    finally:
        stack.stop()
