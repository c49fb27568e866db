"""Request plumbing of the JSON API: the view decorator, body parsing, the ONE error body.

Every error leaves as ``{"error": {"code", "message"}}`` with the contract's
status, built by ``error_response``.
"""

import functools
import hashlib
import json
import logging
import re
from datetime import UTC, datetime

from asgiref.sync import iscoroutinefunction
from django.contrib.auth import get_user
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.utils import timezone
from redis.exceptions import RedisError

from . import models as chat_models
from .db import adb
from .errors import ChatError, InvalidInput, MethodNotAllowed, NotAuthenticated, ServiceUnavailable, TooLarge

logger = logging.getLogger(__name__)


def error_response(error: ChatError) -> JsonResponse:
    """The contract's error body for ``error``, with its status (and ``Retry-After`` when it has one)."""
    response = JsonResponse({"error": {"code": error.code, "message": error.message}}, status=error.status)
    if error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    return response


def _check_method(request, methods):
    if request.method not in methods:
        response = error_response(MethodNotAllowed(f"{request.method} is not allowed here; use {', '.join(methods)}."))
        response["Allow"] = ", ".join(methods)
        return response
    return None


def _token_refusal(request):
    """401 ``invalid_token`` when the request's Bearer token is unknown, revoked or expired (see ApiTokenMiddleware)."""
    if hasattr(request, "api_token") and request.api_token is None:
        return error_response(
            NotAuthenticated("The API token is unknown, revoked or expired; create a new one.", code="invalid_token")
        )
    return None


def request_user(request):
    """The request's user: its API token's (loaded by ApiTokenMiddleware), else its session's.

    Sync: reads the session and the user. Raises NotAuthenticated (401) for
    an anonymous request.
    """
    token = getattr(request, "api_token", None)
    user = token.user if token is not None else get_user(request)
    if not user.is_authenticated:
        raise NotAuthenticated("Log in first: this API needs a session.")
    return user


def api_view(*methods, authenticates=False):
    """Wrap a sync or async API view: 405, 401 and ChatError become contract errors.

    The view gets the signed-in user after the request. An async view with
    ``authenticates=True`` gets none: it calls ``request_user`` first thing
    in its own database hop, which saves a hop (a message post does everything
    in one).
    """

    def decorate(view):
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def wrapper(request, *args, **kwargs):
                if (response := _check_method(request, methods) or _token_refusal(request)) is not None:
                    return response
                try:
                    if authenticates:
                        return await view(request, *args, **kwargs)
                    # A token's user was loaded by chat.middleware.ApiTokenMiddleware. The session's
                    # on the ORM threads: see chat.db (auser() would pin a thread to a long stream).
                    user = await adb(request_user)(request)
                    return await view(request, user, *args, **kwargs)
                except ChatError as error:
                    return error_response(error)
                except (RedisError, ConnectionError) as exc:
                    logger.warning("event log unreachable: %s", exc)
                    return error_response(
                        ServiceUnavailable(
                            "The live event service (Redis) is unreachable. Try again in a few seconds.",
                            code="event_service_unavailable",
                            retry_after=5,
                        )
                    )

        else:

            @functools.wraps(view)
            def wrapper(request, *args, **kwargs):
                if (response := _check_method(request, methods) or _token_refusal(request)) is not None:
                    return response
                if not request.user.is_authenticated:
                    return error_response(NotAuthenticated("Log in first: this API needs a session."))
                try:
                    return view(request, request.user, *args, **kwargs)
                except ChatError as error:
                    return error_response(error)

        return wrapper

    return decorate


def parse_body(request, fields: dict[str, type], *, required=()) -> dict:
    """The request's JSON object, checked against ``fields`` (name -> type).

    Unknown fields, wrong types, missing required fields and malformed JSON
    are InvalidInput with a message naming the problem.
    """
    try:
        raw = request.body
    except RequestDataTooBig:
        raise TooLarge("The request body is too large.") from None
    if not raw:
        data = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("The request body is not valid JSON.", code="invalid_json") from None
        except RecursionError:
            raise InvalidInput("The request body is nested too deeply.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidInput("The request body must be a JSON object.", code="invalid_json")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidInput(
            f"Unknown field(s): {', '.join(unknown)}. Allowed: {', '.join(fields)}.", code="unknown_field"
        )
    for name in required:
        if name not in data:
            raise InvalidInput(f"The field {name!r} is required.", code="missing_field")
    for name, value in data.items():
        expected = fields[name]
        if not isinstance(value, expected) or isinstance(value, bool) and expected is not bool:
            raise InvalidInput(f"The field {name!r} must be a {_type_name(expected)}.", code="invalid_field")
        if isinstance(value, str) and _UNSTORABLE.search(value):
            raise InvalidInput(
                f"The field {name!r} contains a NUL character or a lone UTF-16 surrogate, which cannot be stored.",
                code="invalid_field",
            )
    return data


# Text no database column takes: NUL (PostgreSQL refuses it) and lone surrogates (not UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def check_text(value: str, what: str) -> str:
    """``value`` if it can be stored and searched, else InvalidInput naming ``what``."""
    if _UNSTORABLE.search(value):
        raise InvalidInput(f"{what} contains a NUL character or a lone UTF-16 surrogate.", code="invalid_input")
    return value


def _type_name(expected):
    if isinstance(expected, tuple):
        return " or ".join(_type_name(one) for one in expected)
    return {str: "string", int: "integer", bool: "boolean", type(None): "null"}.get(expected, expected.__name__)


# What a too-long field is called in its error message; other fields go by their name.
_FIELD_LABELS = {"content": "Your message", "title": "The title", "system_prompt": "The system prompt"}


def check_length(data, name, limit, *, too_large=False):
    """InvalidInput ``too_long`` (TooLarge with ``too_large``) when ``data[name]`` is longer than ``limit``.

    The message says what it is and both lengths: "Your message is too long: 100,000 characters; the limit is 32,000."
    """
    if name in data and len(data[name]) > limit:
        what = _FIELD_LABELS.get(name, f"The field {name!r}")
        message = f"{what} is too long: {len(data[name]):,} characters; the limit is {limit:,}."
        raise (TooLarge(message) if too_large else InvalidInput(message, code="too_long"))


_IDEMPOTENCY_KEY = re.compile(rf"[\x20-\x7e]{{1,{chat_models.IDEMPOTENCY_KEY_MAX_LENGTH}}}")


def parse_idempotency(request, asked: list) -> tuple[str, str] | None:
    """(key, hash of ``asked``) from the ``Idempotency-Key`` header, None without one; InvalidInput if malformed.

    ``asked`` is what the request asks for (endpoint, conversation, body): a repeat must ask the same.
    """
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {chat_models.IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters.",
            code="invalid_idempotency_key",
        )
    return key, hashlib.sha256(json.dumps(asked, ensure_ascii=True).encode()).hexdigest()


def parse_expiry(value: str | None) -> datetime | None:
    """An ISO 8601 date or date-time as an aware datetime (UTC without an offset); InvalidInput if malformed."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(
            "expires_at must be an ISO 8601 date or date-time, such as 2027-01-31 or 2027-01-31T17:00:00Z.",
            code="invalid_expires_at",
        ) from None
    return timezone.make_aware(when, UTC) if timezone.is_naive(when) else when


def wants_sse(request) -> bool:
    """Whether the request asks for an event stream (``Accept: text/event-stream``) rather than JSON."""
    return "text/event-stream" in request.headers.get("Accept", "")
