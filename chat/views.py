"""Server-rendered pages: the chat app's page, API tokens, sign-up."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import UserCreationForm
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.functional import SimpleLazyObject
from django.views.decorators.http import require_POST

from . import events, selectors, services
from .errors import InvalidInput, NotFound
from .handlers import not_found_page
from .http import parse_expiry
from .serializers import conversation_to_dict, message_to_dict, model_list_to_dicts


def _shell(request, *, conversation=None):
    """The chat app's single page; ``conversation`` (with its messages) preselected when given.

    The initial data goes out as a ``json_script`` block (data, never executed,
    so the strict CSP holds); static/chat/js/main.js reads it.
    """
    usage = selectors.usage_today_for_user(user=request.user)
    initial = {
        "user": request.user.get_username(),
        "staff": request.user.is_staff,
        "usage": {"tokens": usage["tokens"], "quota": usage["quota"]},
        "models": model_list_to_dicts(selectors.model_list_for_user(user=request.user)),
        "conversations": [conversation_to_dict(c) for c in selectors.conversation_list_for_user(user=request.user)],
        "conversation": None,
    }
    if conversation is not None:
        body = conversation_to_dict(conversation)
        body["messages"] = [message_to_dict(m) for m in selectors.message_list(conversation=conversation)]
        initial["conversation"] = body
    context = {
        "initial": initial,
        "conversation": conversation,
        "event_names": events.browser_names(),
        "usage_today": {**usage, "text": usage_text(usage["tokens"], usage["quota"])},
    }
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
        messages.success(request, f"Revoked “{token.name}”: it no longer works.")
    return redirect("api_tokens")


@login_required
def conversation_page(request, conversation_id):
    try:
        conversation = selectors.conversation_get_for_user(user=request.user, conversation_id=conversation_id)
    except NotFound:
        # Rendered here rather than raised: with DEBUG=true Django would show its
        # debug page (with every URL pattern) instead of a way home.
        return not_found_page(request, conversation=True)
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


def usage_text(tokens: int, quota: int | None) -> str:
    """The user menu's "my usage today" line (static/chat/js/main.js writes the same)."""
    return f"{tokens:,} of {quota:,} tokens" if quota else f"{tokens:,} tokens (no daily quota)"


def _usage_today(user) -> dict:
    usage = selectors.usage_today_for_user(user=user)
    return {**usage, "text": usage_text(usage["tokens"], usage["quota"])}


def site(request):
    """Template context: whether sign-up is open; the signed-in person's usage today (read only if shown)."""
    context = {"allow_signup": settings.ALLOW_SIGNUP}
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        context["usage_today"] = SimpleLazyObject(lambda: _usage_today(user))
    return context
