"""Structured logs: one JSON object a line on stdout, each with its request's id, and never a secret."""

import io
import json
import logging
import re

import pytest
from django.test import Client

from chat.logs import JsonFormatter, PlainFormatter, RedactSecretsFilter, RequestIdFilter
from tests.servers import login

SANE = "ci-run.42_Req-7"
GENERATED = re.compile(r"[0-9a-f]{32}")


def console_handler() -> logging.Handler:
    """The handler config/settings/base.py puts on the root logger."""
    return next(h for h in logging.getLogger().handlers if h.get_name() == "console")


@pytest.fixture
def json_lines():
    """Every record logged during the test, through the console handler's filters, as parsed JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    for installed in console_handler().filters:
        handler.addFilter(installed)
    root = logging.getLogger()
    root.addHandler(handler)

    def lines():
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield lines
    root.removeHandler(handler)


def test_the_console_handler_writes_to_stdout_through_both_filters(settings):
    handler = console_handler()

    assert settings.LOGGING["handlers"]["console"]["stream"] == "ext://sys.stdout"
    kinds = {type(f) for f in handler.filters}
    assert kinds == {RequestIdFilter, RedactSecretsFilter}
    assert type(handler.formatter) is {"json": JsonFormatter, "plain": PlainFormatter}[settings.LOG_FORMAT]


@pytest.mark.django_db
def test_a_request_logs_one_json_line_with_its_id_and_returns_the_id(json_lines, owner):
    client = Client()
    client.force_login(owner)

    response = client.get("/api/models/", HTTP_X_REQUEST_ID=SANE)

    assert response.status_code == 200
    assert response["X-Request-ID"] == SANE
    (line,) = [entry for entry in json_lines() if entry["logger"] == "chat.request"]
    assert line["request_id"] == SANE
    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/models/", 200)
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["level"] == "INFO" and line["message"].startswith("GET /api/models/ 200 ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])


@pytest.mark.django_db
def test_django_s_own_error_lines_carry_the_request_id(json_lines):
    response = Client().get("/api/models/", HTTP_X_REQUEST_ID=SANE)  # anonymous: 401

    assert response.status_code == 401
    by_logger = {entry["logger"]: entry for entry in json_lines()}
    assert by_logger["django.request"]["request_id"] == SANE  # logged after the middleware returned
    assert by_logger["chat.request"]["status"] == 401


@pytest.mark.parametrize(
    "incoming",
    [None, "", "has space", "x" * 65, "new\nline", "<script>alert(1)</script>", "ünïcode", "a;b"],
    ids=["missing", "empty", "space", "too-long", "newline", "html", "unicode", "semicolon"],
)
def test_a_missing_or_unsafe_request_id_is_replaced_by_a_generated_one(incoming, json_lines):
    headers = {} if incoming is None else {"HTTP_X_REQUEST_ID": incoming}

    response = Client().get("/healthz", **headers)

    generated = response["X-Request-ID"]
    assert GENERATED.fullmatch(generated) and generated != incoming
    assert Client().get("/healthz")["X-Request-ID"] != generated  # one per request


def test_the_longest_sane_request_id_is_kept():
    incoming = "A-z.0_9" * 9 + "x"  # 64 characters

    assert Client().get("/healthz", HTTP_X_REQUEST_ID=incoming)["X-Request-ID"] == incoming


def test_outside_a_request_the_id_is_a_dash(json_lines):
    logging.getLogger("chat.test").warning("no request here")

    (line,) = json_lines()
    assert line["request_id"] == "-" and line["message"] == "no request here"


def test_the_configured_secret_key_never_reaches_the_log(settings, json_lines):
    logging.getLogger("chat.test").error("key in the message %s and in the args: %r", settings.SECRET_KEY, {"k": 1})
    logging.getLogger("chat.test").error(f"formatted early: {settings.SECRET_KEY}")

    text = json.dumps(json_lines())
    assert settings.SECRET_KEY not in text
    assert text.count("***") == 2


def test_every_configured_secret_is_scrubbed_from_message_args_and_traceback(settings, monkeypatch):
    settings.LLM_API_KEY = "sk-live-0123456789abcdef"
    settings.SECRET_KEY = "django-secret-key-for-this-test-only"
    settings.REDIS_URL = "redis://:redis-pass-123456@cache:6379/0"
    monkeypatch.setitem(settings.DATABASES["default"], "PASSWORD", "pg-pa55word")  # no query runs here
    redact = RedactSecretsFilter()  # reads the settings now, as the installed one did at start-up
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(redact)
    logger = logging.getLogger("chat.test.redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("calling upstream with Authorization: Bearer %s", settings.LLM_API_KEY)
        logger.warning("connecting to %s and %s", settings.REDIS_URL, "postgres://chat:pg-pa55word@db:5432/chat")
        logger.warning("settings: %(key)s", {"key": settings.SECRET_KEY})
        try:
            raise RuntimeError(f"upstream refused key {settings.LLM_API_KEY}")
        except RuntimeError:
            logger.exception("provider failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True

    text = stream.getvalue()
    for secret in (
        "sk-live-0123456789abcdef",
        "django-secret-key-for-this-test-only",
        "redis-pass-123456",
        "pg-pa55word",
    ):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["message"] == "calling upstream with Authorization: Bearer ***"
    assert lines[1]["message"] == "connecting to redis://:***@cache:6379/0 and postgres://chat:***@db:5432/chat"
    assert lines[2]["message"] == "settings: ***"
    assert "RuntimeError: upstream refused key ***" in lines[3]["exception"]


def test_a_short_password_is_scrubbed_where_it_stands_as_a_credential():
    redact = RedactSecretsFilter(secrets=["chat"])

    assert redact.scrub("postgres://chat:chat@db/chat password=chat") == "postgres://chat:***@db/chat password=***"


# --- a real server ------------------------------------------------------------------


@pytest.mark.processes
def test_daphne_logs_json_lines_for_requests_and_event_streams(stack_factory):
    stack = stack_factory(extra_env={"LOG_FORMAT": "json"}).setup()
    port = stack.start_server()
    client = login(port, "olivia")
    conversation = client.post("/api/conversations/", json={}).json()

    assert client.get("/api/models/", headers={"X-Request-ID": SANE}).headers["x-request-id"] == SANE
    with client.stream(
        "GET", f"/api/conversations/{conversation['id']}/events/", headers={"X-Request-ID": "sse-1"}
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["x-request-id"] == "sse-1"
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert next(stream.iter_lines()).startswith("retry:")  # the stream still flows
    client.close()

    lines = [json.loads(line) for line in stack.log_text().splitlines() if line.startswith("{")]
    requests = {entry["request_id"]: entry for entry in lines if entry["logger"] == "chat.request"}
    assert {k: requests[SANE][k] for k in ("method", "path", "status", "level")} == {
        "method": "GET",
        "path": "/api/models/",
        "status": 200,
        "level": "INFO",
    }
    assert requests["sse-1"]["message"].endswith("(streaming)")
    assert "sk-test-SECRET-do-not-leak-1234" not in stack.log_text()


def test_a_password_in_a_connection_string_is_scrubbed():
    redact = RedactSecretsFilter(secrets=[])

    assert redact.scrub("connection failed: host=db password='s3cret' user=chat") == (
        "connection failed: host=db password='***' user=chat"
    )
