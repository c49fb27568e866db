"""Django's middleware under the project's ASGI handler: the same checks, on the event loop (chat.middleware)."""

import asyncio
import json

import pytest
from django.utils import deprecation

from chat import middleware
from config.asgi import ChatASGIHandler


async def asgi_request(method: str, path: str, headers=(), body: bytes = b"") -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request served by a new ChatASGIHandler, in this process."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent = []
    requested = False
    never = asyncio.Event()

    async def receive():
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # the client stays connected

    async def send(message):
        sent.append(message)

    await ChatASGIHandler()(scope, receive, send)
    start = sent[0]
    headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def hops(monkeypatch):
    """The middleware hooks Django's MiddlewareMixin sent to a thread (sync_to_async), by name."""
    calls = []
    original = deprecation.sync_to_async

    def counting(func, *args, **kwargs):
        calls.append(func.__qualname__)
        return original(func, *args, **kwargs)

    monkeypatch.setattr(deprecation, "sync_to_async", counting)
    return calls


def test_the_asgi_handler_runs_the_middleware_hooks_on_the_event_loop(hops):
    status, headers, _ = asyncio.run(asgi_request("GET", "/api/no-such-thing/"))

    assert status == 401  # api_view: not signed in
    assert hops == []
    # The hooks ran: SecurityMiddleware's, XFrameOptionsMiddleware's, django-csp's and the session's headers.
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert "content-security-policy" in headers


def test_a_csrf_refusal_is_still_the_contract_error(hops):
    status, _, body = asyncio.run(
        asgi_request("POST", "/api/conversations/", [(b"content-type", b"application/json")], b"{}")
    )

    assert status == 403
    assert json.loads(body)["error"]["code"] == "csrf_failed"
    assert hops == []


def test_the_twins_are_the_classes_settings_name(settings):
    for name, twin in middleware.ON_THE_LOOP.items():
        assert name in settings.MIDDLEWARE
        assert twin.__mro__[2].__module__ + "." + twin.__mro__[2].__name__ == name
