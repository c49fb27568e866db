"""Server-rendered pages, health checks, and the error pages (JSON under /api/)."""

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
