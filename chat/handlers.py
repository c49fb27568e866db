"""The 400, 403, 404, 500 and CSRF failure handlers: the contract's JSON error under /api/; elsewhere the app's own
not-found page (with a way home) and Django's other pages."""

from django.shortcuts import render
from django.views import defaults
from django.views.csrf import csrf_failure as default_csrf_failure

from .errors import Forbidden, InvalidInput, NotFound, ServerError
from .http import error_response


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def bad_request(request, exception=None):
    if _is_api(request):
        return error_response(InvalidInput("The request could not be understood.", code="bad_request"))
    return defaults.bad_request(request, exception)


def permission_denied(request, exception=None):
    if _is_api(request):
        return error_response(Forbidden("You are not allowed to do this."))
    return defaults.permission_denied(request, exception)


def not_found_page(request, *, conversation=False):
    """The app's own 404 page with a way home; ``conversation`` says a conversation link went stale.

    chat/views.py renders it itself for a stale conversation link, so DEBUG's page never shows there.
    """
    return render(request, "chat/not_found.html", {"conversation_link": conversation}, status=404)


def page_not_found(request, exception=None):
    if _is_api(request):
        return error_response(NotFound("There is nothing at this address.", code="not_found"))
    return not_found_page(request)


def server_error(request):
    if _is_api(request):
        return error_response(ServerError("Something went wrong on the server; try again."))
    return defaults.server_error(request)


def csrf_failure(request, reason=""):
    if _is_api(request):
        return error_response(
            Forbidden(
                "CSRF check failed: send the csrftoken cookie's value in the X-CSRFToken header.",
                code="csrf_failed",
            )
        )
    return default_csrf_failure(request, reason)
