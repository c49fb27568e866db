"""The 500 handler: under /api/ the contract's one error body (chat/http.py's error_response), elsewhere a page."""

import pytest
from django.test import Client
from django.urls import path

from chat.errors import ServerError
from chat.http import error_response
from config.urls import handler400, handler403, handler404, handler500  # noqa: F401 (this test's urlconf's)
from config.urls import urlpatterns as app_patterns

MESSAGE = "Something went wrong on the server; try again."


def bug(request):
    raise ValueError("a bug")


# The app's own urls and handlers, with a view that fails.
urlpatterns = [path("api/bug/", bug), path("bug/", bug), *app_patterns]


@pytest.mark.urls("tests.chat.test_handlers")
def test_an_api_request_that_fails_gets_the_one_error_body():
    response = Client(raise_request_exception=False).get("/api/bug/")

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": {"code": "server_error", "message": MESSAGE}}
    assert response.content == error_response(ServerError(MESSAGE)).content
    assert "Retry-After" not in response


@pytest.mark.urls("tests.chat.test_handlers")
def test_a_page_that_fails_gets_the_html_500():
    response = Client(raise_request_exception=False).get("/bug/")

    assert response.status_code == 500
    assert response["Content-Type"].startswith("text/html")
