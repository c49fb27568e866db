"""Server-rendered pages, health checks, and the error pages (JSON under /api/)."""

import asyncio

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views import defaults

from . import selectors
from .errors import ChatError, Forbidden, InvalidInput, NotFound


def _error_json(error: ChatError):
    return JsonResponse({"error": {"code": error.code, "message": error.message}}, status=error.status)


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


@login_required
def home(request):
    conversations = selectors.conversation_list_for_user(user=request.user)
    return render(request, "chat/home.html", {"conversations": conversations})


@login_required
def conversation_page(request, conversation_id):
    try:
        conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    except NotFound:
        raise Http404("No such conversation.") from None
    messages = selectors.message_list(conversation=conversation)
    return render(request, "chat/conversation.html", {"conversation": conversation, "messages": messages})


def signup(request):
    if not settings.ALLOW_SIGNUP:
        raise Http404("Sign-up is closed: ask an administrator for an account.")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user)
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


def bad_request(request, exception=None):
    if _is_api(request):
        return _error_json(InvalidInput("The request could not be understood.", code="bad_request"))
    return defaults.bad_request(request, exception)


def permission_denied(request, exception=None):
    if _is_api(request):
        return _error_json(Forbidden("You are not allowed to do this."))
    return defaults.permission_denied(request, exception)


def page_not_found(request, exception=None):
    if _is_api(request):
        return _error_json(NotFound("There is nothing at this address.", code="not_found"))
    return defaults.page_not_found(request, exception)


def server_error(request):
    if _is_api(request):
        response = JsonResponse(
            {"error": {"code": "server_error", "message": "Something went wrong on the server; try again."}},
            status=500,
        )
        return response
    return defaults.server_error(request)


def csrf_failure(request, reason=""):
    if _is_api(request):
        return _error_json(
            Forbidden(
                "CSRF check failed: send the csrftoken cookie's value in the X-CSRFToken header.",
                code="csrf_failed",
            )
        )
    from django.views.csrf import csrf_failure as default_csrf_failure

    return default_csrf_failure(request, reason)


def healthz(request):
    """The process answers."""
    return JsonResponse({"status": "ok"})


async def readyz(request):
    """The database and the event log's store (Redis, when configured) are reachable; 503 names what failed."""
    from asgiref.sync import sync_to_async
    from django.db import connection

    from .eventlog import get_event_log

    failed = {}

    def check_db():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        finally:
            connection.close()

    try:
        await sync_to_async(check_db)()
    except Exception as exc:  # any failure means not ready
        failed["database"] = type(exc).__name__
    try:
        await asyncio.wait_for(get_event_log().ping(), timeout=2)
    except Exception as exc:
        failed["redis"] = type(exc).__name__
    if failed:
        return JsonResponse(
            {
                "status": "unavailable",
                "failed": sorted(failed),
                "error": {"code": "not_ready", "message": f"Not ready: {', '.join(sorted(failed))} unreachable."},
            },
            status=503,
        )
    return JsonResponse(
        {"status": "ok", "checks": {"database": "ok", "redis": "ok" if settings.REDIS_URL else "not configured"}}
    )


def site(request):
    """Template context: whether sign-up is open."""
    return {"allow_signup": settings.ALLOW_SIGNUP}
