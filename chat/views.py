"""Server-rendered pages, health checks, and the error pages (JSON under /api/)."""

import asyncio
import copy
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views import defaults
from django.views.decorators.http import require_POST

from . import events, selectors, services, streaming
from .api import available_models, parse_expiry
from .errors import ChatError, Forbidden, InvalidInput, NotFound
from .eventlog import get_event_log
from .serializers import conversation_to_dict, message_to_dict

logger = logging.getLogger(__name__)
# Each readiness check gives up after this long (seconds).
READY_TIMEOUT_SECONDS = 2.0


def _error_json(error: ChatError):
    return JsonResponse({"error": {"code": error.code, "message": error.message}}, status=error.status)


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def _shell(request, *, conversation=None):
    """The chat app's single page; ``conversation`` (with its messages) preselected when given.

    The initial data goes out as a ``json_script`` block (data, never executed,
    so the strict CSP holds); static/chat/js/main.js reads it.
    """
    default = available_models()[0]
    initial = {
        "user": request.user.get_username(),
        "models": [{"id": m, "default": m == default} for m in available_models()],
        "conversations": [conversation_to_dict(c) for c in selectors.conversation_list_for_user(user=request.user)],
        "conversation": None,
    }
    if conversation is not None:
        body = conversation_to_dict(conversation)
        body["messages"] = [message_to_dict(m) for m in selectors.message_list(conversation=conversation)]
        initial["conversation"] = body
    context = {"initial": initial, "conversation": conversation, "event_names": events.browser_names()}
    return render(request, "chat/app.html", context)


@login_required
def home(request):
    return _shell(request)


@login_required
def api_tokens_page(request):
    """The person's API tokens: create one (its secret shown this once), see them, revoke one.

    A POST that creates answers with the page itself, not a redirect: the
    secret is never stored, so it cannot be shown after a redirect.
    """
    form, secret, error = {"name": "", "expires_on": ""}, None, None
    if request.method == "POST":
        form = {"name": request.POST.get("name", ""), "expires_on": request.POST.get("expires_on", "").strip()}
        try:
            expires_at = parse_expiry(form["expires_on"] or None)
            _, secret = services.api_token_create(
                user=request.user, name=form["name"], expires_at=expires_at, request=request
            )
            form = {"name": "", "expires_on": ""}
        except InvalidInput as exc:
            error = exc.message
    tokens = selectors.api_token_list_for_user(user=request.user)
    context = {"tokens": tokens, "form": form, "secret": secret, "error": error, "now": timezone.now()}
    response = render(request, "chat/api_tokens.html", context, status=400 if error else 200)
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def api_token_revoke(request, token_id):
    """Revoke one of the person's tokens (404 for anyone else's) and end the streams opened with it."""
    try:
        token = selectors.api_token_get_for_user(user=request.user, token_id=token_id)
    except NotFound:
        raise Http404("No such API token.") from None
    if services.api_token_revoke(token=token, actor=request.user, request=request):
        streaming.publish_access_change(user_id=token.user_id, ended_session=token.stream_credential)
        messages.success(request, f"Revoked “{token.name}”: it no longer works.")
    return redirect("api_tokens")


@login_required
def conversation_page(request, conversation_id):
    try:
        conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    except NotFound:
        raise Http404("No such conversation.") from None
    return _shell(request, conversation=conversation)


def signup(request):
    if not settings.ALLOW_SIGNUP:
        raise Http404("Sign-up is closed: ask an administrator for an account.")
    form = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        # Named because there are two backends (axes' throttle, then the model's).
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
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
    """The process answers: 200, touching neither the database nor Redis."""
    return JsonResponse({"status": "ok"})


def _check_database():
    """Read the migrations table on a connection of its own that gives up after READY_TIMEOUT_SECONDS.

    Its own connection: the shared one could be mid-transaction in this
    thread, and the configured timeouts (SQLite's 20 s lock wait, libpq's
    none) are too long for a probe.
    """
    settings_dict = copy.deepcopy(connections.settings[DEFAULT_DB_ALIAS])
    options = settings_dict.setdefault("OPTIONS", {})
    if settings_dict["ENGINE"] == "django.db.backends.postgresql":
        options["connect_timeout"] = max(1, round(READY_TIMEOUT_SECONDS))
    elif settings_dict["ENGINE"] == "django.db.backends.sqlite3":
        options["timeout"] = READY_TIMEOUT_SECONDS
    database = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, DEFAULT_DB_ALIAS)
    try:
        with database.cursor() as cursor:
            cursor.execute("SELECT 1 FROM django_migrations LIMIT 1")
    finally:
        database.close()


async def _ready(name, check):
    try:
        await asyncio.wait_for(check, timeout=READY_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure means not ready
        logger.warning("readyz: %s unreachable: %s: %s", name, type(exc).__name__, exc)
        return name
    return None


async def readyz(request):
    """200 when the database and Redis (when REDIS_URL is set) answer; 503 naming what failed.

    Both are checked at once, each given READY_TIMEOUT_SECONDS, so a probe
    gets its answer within about that long even when a host drops packets.
    """
    results = await asyncio.gather(
        _ready("database", sync_to_async(_check_database, thread_sensitive=False)()),
        _ready("redis", get_event_log().ping()),
    )
    failed = [name for name in results if name]
    if failed:
        return JsonResponse(
            {
                "status": "unavailable",
                "failed": failed,
                "error": {"code": "not_ready", "message": f"Not ready: {' and '.join(failed)} unreachable."},
            },
            status=503,
        )
    return JsonResponse(
        {"status": "ok", "checks": {"database": "ok", "redis": "ok" if settings.REDIS_URL else "not configured"}}
    )


def site(request):
    """Template context: whether sign-up is open."""
    return {"allow_signup": settings.ALLOW_SIGNUP}
