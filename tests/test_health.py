"""Health checks and a database outage: /healthz, /readyz, and 503 + Retry-After while the database is away.

The real tests take the database away from running daphne processes: the
SQLite folder vanishes, or a private PostgreSQL server stops.
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.contrib.auth.models import User
from django.db import InterfaceError, OperationalError, transaction
from django.http import HttpResponse, JsonResponse
from django.test import AsyncClient, Client
from django.urls import path

from tests.servers import RedisServer, login

DATABASE_UNAVAILABLE = {
    "error": {
        "code": "database_unavailable",
        "message": "The database cannot be reached right now; try again in a few seconds.",
    }
}


# --- in-process: views that lose the database, sync and async -------------------------


def sync_view(request):
    raise OperationalError("connection refused")


async def async_view(request):
    raise InterfaceError("connection already closed")


def half_written_view(request):
    with transaction.atomic():
        User.objects.create_user("half-written")
        raise OperationalError("server closed the connection unexpectedly")


def fine_view(request):
    return JsonResponse({"ok": True})


def other_error_view(request):
    raise ValueError("a bug, not an outage")


urlpatterns = [
    path("api/sync/", sync_view),
    path("api/async/", async_view),
    path("api/half/", half_written_view),
    path("api/fine/", fine_view),
    path("api/bug/", other_error_view),
    path("page/", sync_view),
]


class SessionSaveFails:
    """Stands for a middleware whose own query fails after the view ran (e.g. saving the session)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if isinstance(response, HttpResponse) and request.path == "/api/fine/":
            raise OperationalError("could not save the session")
        return response


def assert_database_unavailable_json(response):
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response["Content-Type"] == "application/json"
    assert response.json() == DATABASE_UNAVAILABLE


@pytest.mark.urls("tests.test_health")
def test_a_sync_view_that_loses_the_database_answers_503_json():
    assert_database_unavailable_json(Client().get("/api/sync/"))


@pytest.mark.urls("tests.test_health")
def test_an_async_view_that_loses_the_database_answers_503_json():
    # Through the ASGI handler (the async middleware chain), on a loop of its own
    # in another thread: the browser tests' Playwright keeps one running in this one.
    with ThreadPoolExecutor(1) as pool:
        response = pool.submit(asyncio.run, AsyncClient().get("/api/async/")).result(timeout=30)

    assert_database_unavailable_json(response)


@pytest.mark.urls("tests.test_health")
def test_outside_the_api_the_503_is_a_page():
    response = Client().get("/page/")

    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert response["Content-Type"].startswith("text/html")
    assert b"Service unavailable" in response.content


@pytest.mark.urls("tests.test_health")
@pytest.mark.django_db
def test_the_503_comes_after_the_transaction_rolled_back():
    assert_database_unavailable_json(Client().get("/api/half/"))

    assert not User.objects.filter(username="half-written").exists()


@pytest.mark.urls("tests.test_health")
def test_a_database_error_in_a_middleware_also_answers_503(settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "tests.test_health.SessionSaveFails"]

    # (The test client re-raises any exception Django handled; a real server does not.)
    assert_database_unavailable_json(Client(raise_request_exception=False).get("/api/fine/"))


@pytest.mark.urls("tests.test_health")
def test_other_errors_stay_500():
    response = Client(raise_request_exception=False).get("/api/bug/")

    assert response.status_code == 500 and "Retry-After" not in response


def test_healthz_answers_without_the_database():
    response = Client().get("/healthz")

    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_in_process():
    response = Client().get("/readyz")

    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "not configured"}}


# --- real daphne processes --------------------------------------------------------------


def ready(client) -> tuple[int, dict, float]:
    started = time.monotonic()
    response = client.get("/readyz")
    return response.status_code, response.json(), time.monotonic() - started


@pytest.fixture
def database(request):
    """``Stack(database=...)`` for the run's engine, one that ``database_down()`` can take away."""
    from tests.servers import postgres_url_of_this_run

    return request.getfixturevalue("postgres_server") if postgres_url_of_this_run() else "sqlite"


@pytest.mark.processes
def test_readyz_names_what_is_unreachable(stack_factory, database):
    redis = RedisServer().start()
    try:
        stack = stack_factory(redis_url=redis.url, database=database).setup(usernames=())
        port = stack.start_server()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            status, body, _ = ready(client)
            assert (status, body) == (200, {"status": "ok", "checks": {"database": "ok", "redis": "ok"}})
            assert client.get("/healthz").status_code == 200

            redis.stop()
            status, body, took = ready(client)
            assert (status, body["status"], body["failed"]) == (503, "unavailable", ["redis"])
            assert body["error"] == {"code": "not_ready", "message": "Not ready: redis unreachable."}
            assert took < 3
            assert client.get("/healthz").status_code == 200  # the process itself is fine

            redis.start()
            assert ready(client)[0] == 200

            stack.database_down()
            status, body, took = ready(client)
            assert (status, body["failed"]) == (503, ["database"]), body
            assert body["error"]["message"] == "Not ready: database unreachable."
            assert took < 3
            assert client.get("/healthz").status_code == 200

            redis.stop()
            assert ready(client)[1]["failed"] == ["database", "redis"]

            redis.start()
            stack.database_up()
            assert ready(client)[0] == 200
    finally:
        redis.stop()


def exercise_an_outage(stack):
    """Serve, lose the database, check every kind of request answers 503, get it back, check nothing changed."""
    port = stack.start_server()
    client = login(port, "olivia")
    conversation = client.post("/api/conversations/", json={"title": "before"}).json()
    messages = f"/api/conversations/{conversation['id']}/messages/"

    stack.database_down()
    try:
        # Sync views (list, create), async views (post a message, open an event stream), a page.
        for response in (
            client.get("/api/conversations/"),
            client.post("/api/conversations/", json={"title": "during"}),
            client.post(messages, json={"content": "hello"}),
            client.get(f"/api/conversations/{conversation['id']}/events/"),
        ):
            assert response.status_code == 503, (response.request.url, response.text)
            assert response.headers["retry-after"] == "5"
            assert response.json() == DATABASE_UNAVAILABLE
            assert response.headers["x-request-id"]
        page = client.get("/")
        assert page.status_code == 503 and page.headers["retry-after"] == "5"
        assert page.headers["content-type"].startswith("text/html") and "Service unavailable" in page.text
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
    finally:
        stack.database_up()

    listed = client.get("/api/conversations/")
    assert listed.status_code == 200
    assert [c["title"] for c in listed.json()["conversations"]] == ["before"]  # nothing from the outage
    assert client.get("/readyz").status_code == 200
    assert client.post(messages, json={"content": "hello"}).status_code == 202  # and writes work again
    client.close()
    log = stack.log_text()
    assert "database unavailable: OperationalError" in log
    assert "stack-test-key" not in log


@pytest.mark.processes
def test_a_sqlite_database_that_vanishes_gives_503_then_recovers(stack_factory):
    exercise_an_outage(stack_factory(database="sqlite").setup())


@pytest.mark.processes
def test_a_postgresql_server_that_stops_gives_503_then_recovers(postgres_server, stack_factory):
    exercise_an_outage(stack_factory(database=postgres_server).setup())
