"""The JSON API and the event streams: parse, authorise, call one service or selector, respond.

Every error leaves as ``{"error": {"code", "message"}}`` with the contract's status.
"""

import asyncio
import functools
import hashlib
import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.contrib.auth import get_user
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from redis.exceptions import RedisError

from . import exports, selectors, services, streaming, transport
from . import models as chat_models
from .db import adb
from .errors import (
    ChatError,
    Conflict,
    Forbidden,
    InvalidInput,
    MethodNotAllowed,
    NotAuthenticated,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    TooLarge,
)
from .eventlog import get_event_log
from .events import (
    ACCESS_REVOKED,
    CONVERSATION_DELETED,
    CONVERSATION_UPDATED,
    FINAL_EVENTS,
    HEARTBEAT,
    MESSAGE_CREATED,
    MESSAGE_SNAPSHOT,
    RESYNC,
    REVOKED_DELETED,
    REVOKED_SIGNED_OUT,
    frame,
    parse_id,
    retry_frame,
)
from .fanout import AccessCheck, Resync, get_hub
from .serializers import api_token_to_dict, conversation_to_dict, message_to_dict

logger = logging.getLogger(__name__)
FINAL_TYPES = set(FINAL_EVENTS.values())


def error_response(error: ChatError) -> JsonResponse:
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


def api_view(*methods):
    """Wrap a sync or async API view: 405, 401 and ChatError become contract errors."""

    def decorate(view):
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def wrapper(request, *args, **kwargs):
                if (response := _check_method(request, methods) or _token_refusal(request)) is not None:
                    return response
                # A token's user was loaded by chat.middleware.ApiTokenMiddleware. The session's
                # on the shared pool: see chat.db (auser() would pin a thread to a long stream).
                token = getattr(request, "api_token", None)
                user = token.user if token is not None else await adb(get_user)(request)
                if not user.is_authenticated:
                    return error_response(NotAuthenticated("Log in first: this API needs a session."))
                try:
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


def _check_length(data, name, limit, *, too_large=False):
    if name in data and len(data[name]) > limit:
        message = f"The field {name!r} is too long: {len(data[name])} characters, at most {limit}."
        raise (TooLarge(message) if too_large else InvalidInput(message, code="too_long"))


def available_models() -> list[str]:
    """The configured model ids, the first the default; just ``demo`` with no LLM_BASE_URL."""
    if not settings.LLM_BASE_URL:
        return ["demo"]
    return settings.LLM_MODELS or ["default"]


def _check_model(model: str) -> str:
    models = available_models()
    if model not in models:
        raise InvalidInput(f"Unknown model {model!r}. Available: {', '.join(models)}.", code="unknown_model")
    return model


CONVERSATION_FIELDS = {"title": str, "model": str, "system_prompt": str}


def _clean_conversation_fields(data):
    if "title" in data:
        data["title"] = data["title"].strip()
    _check_length(data, "title", chat_models.TITLE_MAX_LENGTH)
    _check_length(data, "system_prompt", chat_models.SYSTEM_PROMPT_MAX_LENGTH)
    if "model" in data:
        _check_model(data["model"])
    return data


@api_view("GET")
def models_list(request, user):
    default = available_models()[0]
    return JsonResponse({"models": [{"id": m, "default": m == default} for m in available_models()]})


# Longer is a pasted paragraph, not something to look for.
SEARCH_QUERY_MAX_CHARS = 200


@api_view("GET", "POST")
def conversations(request, user):
    if request.method == "GET":
        query = check_text(request.GET.get("q", ""), "The search text").strip()
        if not query:
            items = selectors.conversation_list_for_user(user=user)
            return JsonResponse({"conversations": [conversation_to_dict(c) for c in items]})
        if len(query) > SEARCH_QUERY_MAX_CHARS:
            raise InvalidInput(
                f"The search text is too long: {len(query)} characters, at most {SEARCH_QUERY_MAX_CHARS}.",
                code="too_long",
            )
        found = selectors.conversation_search_for_user(user=user, query=query)
        return JsonResponse({"conversations": [{**conversation_to_dict(c), "match": m} for c, m in found]})
    data = _clean_conversation_fields(parse_body(request, CONVERSATION_FIELDS))
    data.setdefault("model", available_models()[0])
    conversation = services.conversation_create(owner=user, **data)
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation.id)
    return JsonResponse(conversation_to_dict(conversation), status=201)


@api_view("GET", "PATCH", "DELETE")
def conversation_detail(request, user, conversation_id):
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    if request.method == "GET":
        body = conversation_to_dict(conversation)
        body["messages"] = [message_to_dict(m) for m in selectors.message_list(conversation=conversation)]
        return JsonResponse(body)
    if request.method == "DELETE":
        conversation_id = conversation.id
        services.conversation_delete(conversation=conversation, user=user)
        streaming.publish_conversation_deleted(conversation_id=conversation_id)
        return HttpResponse(status=204)
    data = _clean_conversation_fields(parse_body(request, CONVERSATION_FIELDS))
    services.conversation_update(conversation=conversation, user=user, **data)
    return _conversation_changed(user, conversation_id, status=200)


def _conversation_changed(user, conversation_id, *, status):
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    body = conversation_to_dict(conversation)
    streaming.publish_conversation_updated(conversation=body)
    return JsonResponse(body, status=status)


@api_view("GET")
def conversation_export(request, user, conversation_id):
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    kind = request.GET.get("format", "json")
    if kind not in exports.EXPORT_FORMATS:
        raise InvalidInput(
            f"Unknown export format {kind[:20]!r}. Choose one of: {', '.join(exports.EXPORT_FORMATS)}.",
            code="unknown_format",
        )
    extension, content_type = exports.EXPORT_FORMATS[kind]
    messages = selectors.message_list(conversation=conversation)
    if kind == "json":
        body = json.dumps(exports.export_json(conversation, messages), ensure_ascii=False, indent=1)
    else:
        body = exports.export_markdown(conversation, messages)
    response = HttpResponse(body.encode(), content_type=content_type)
    response["Content-Disposition"] = exports.attachment_header(conversation.title, extension)
    return response


@api_view("POST")
def members(request, user, conversation_id):
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    data = parse_body(request, {"username": str}, required=("username",))
    services.conversation_member_add(conversation=conversation, user=user, username=data["username"].strip())
    return _conversation_changed(user, conversation_id, status=201)


@api_view("DELETE")
def member_detail(request, user, conversation_id, username):
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    username = check_text(username, "The username")
    services.conversation_member_remove(conversation=conversation, user=user, username=username)
    # The event tells open streams of the removed member to end.
    _conversation_changed(user, conversation_id, status=200)
    return HttpResponse(status=204)


# --- Personal API tokens ------------------------------------------------------

TOKEN_FIELDS = {"name": str, "expires_at": str}


def _require_session(request) -> None:
    # A leaked token must not be able to mint tokens that outlive its revocation (docs/auth.md).
    if getattr(request, "api_token", None) is not None:
        raise Forbidden(
            "API tokens are managed from a signed-in session (the API tokens page), not with a token.",
            code="session_required",
        )


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


@api_view("GET", "POST")
def tokens(request, user):
    _require_session(request)
    if request.method == "GET":
        return JsonResponse({"tokens": [api_token_to_dict(t) for t in selectors.api_token_list_for_user(user=user)]})
    data = parse_body(request, TOKEN_FIELDS, required=("name",))
    expires_at = parse_expiry(data.get("expires_at"))
    token, secret = services.api_token_create(user=user, name=data["name"], expires_at=expires_at, request=request)
    return JsonResponse({**api_token_to_dict(token), "token": secret}, status=201)


@api_view("DELETE")
def token_detail(request, user, token_id):
    _require_session(request)
    token = selectors.api_token_get_for_user(user=user, token_id=token_id)
    if services.api_token_revoke(token=token, actor=user, request=request):
        # Streams opened with it end (access.revoked signed_out); the user's other streams go on.
        streaming.publish_access_change(user_id=user.pk, ended_session=token.stream_credential)
    return HttpResponse(status=204)


@api_view("GET", "POST", "PUT", "PATCH", "DELETE")
def not_found(request, user):
    raise NotFound("There is nothing at this address.", code="not_found")


# --- Messages and event streams (async) ---------------------------------------

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MESSAGE_FIELDS = {"content": str, "model": str, "parent": (str, type(None))}
REGENERATE_FIELDS = {"model": str}
# A stream re-checks its viewer's session and membership every this many
# heartbeats, in case an access.revoked signal was lost (Redis restarting).
ACCESS_RECHECK_HEARTBEATS = 2


def _sse_response(stream, request) -> StreamingHttpResponse:
    # A client that stops reading is cut off before it costs this process more
    # than its budget in unsent bytes (daphne never makes a write wait).
    stream = transport.within_budget(
        stream, request.scope, budget=settings.CHAT_VIEWER_MAX_PENDING_BYTES, label=request.path
    )
    response = StreamingHttpResponse(stream, content_type="text/event-stream; charset=utf-8")
    for name, value in SSE_HEADERS.items():
        response[name] = value
    return response


def _wants_sse(request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def _message_checks(user, conversation_id, data, idempotency):
    """One thread hop: visibility, an earlier post with the same Idempotency-Key, parent, model, the user's limits.

    Returns (conversation, model, limits, replay, parent): ``replay`` is the
    (user message, reply) of the earlier post, when this is a repeat (then
    no limit applies: nothing new is created); ``parent`` is what the new
    message follows (``services.LATEST`` when the body names none).
    """
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    if idempotency is not None:
        replay = selectors.idempotent_post(user=user, key=idempotency[0], request_hash=idempotency[1])
        if replay is not None:
            return conversation, None, None, replay, None
    parent = services.LATEST
    if "parent" in data:
        parent = selectors.message_parent_for_post(conversation=conversation, parent_id=data["parent"])
    model = _reply_model(data.get("model") or conversation.model)
    selectors.message_allowance_check(user=user)
    return conversation, model, selectors.user_limits(user=user), None, parent


def _reply_model(model: str) -> str:
    if model not in available_models():
        raise InvalidInput(
            f"The model {model!r} is not available; choose one of {', '.join(available_models())}.",
            code="unknown_model",
        )
    return model


def _regenerate_checks(user, conversation_id, message_id, data, idempotency):
    """One thread hop: visibility, the reply to regenerate, a repeat's Idempotency-Key, model, the user's limits.

    Returns (conversation, reply, model, limits, replay): ``replay`` is the
    reply an earlier regenerate with the same key made. 404 for an unknown
    message, 400 ``not_a_reply`` for a user message, 409 ``not_final``
    while the reply streams. The model: the body's, else the reply's if it
    is still offered, else the conversation's.
    """
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    reply = selectors.message_get(conversation=conversation, message_id=message_id)
    if idempotency is not None:
        replay = selectors.idempotent_post(user=user, key=idempotency[0], request_hash=idempotency[1])
        if replay is not None:
            return conversation, reply, None, None, replay[1]
    if reply.role != chat_models.Message.Role.ASSISTANT:
        raise InvalidInput(
            "Only an assistant reply can be regenerated; to change a message of yours, post it again "
            "with that message's parent as parent.",
            code="not_a_reply",
        )
    if reply.status == chat_models.Message.Status.STREAMING:
        raise Conflict("This reply is still being generated. Wait for it or stop it first.", code="not_final")
    model = data.get("model") or (reply.model if reply.model in available_models() else conversation.model)
    model = _reply_model(model)
    selectors.message_allowance_check(user=user)
    return conversation, reply, model, selectors.user_limits(user=user), None


_IDEMPOTENCY_KEY = re.compile(rf"[\x20-\x7e]{{1,{chat_models.IDEMPOTENCY_KEY_MAX_LENGTH}}}")


def _idempotency(request, asked: list) -> tuple[str, str] | None:
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


def _message_store(user, conversation, content, model, limits, idempotency, parent):
    """One thread hop: store both messages and read the history the model will get."""
    key, request_hash = idempotency or (None, "")
    user_message, assistant_message = services.message_submit(
        conversation=conversation,
        author=user,
        content=content,
        model=model,
        parent=parent,
        messages_per_minute=limits["messages_per_minute"],
        idempotency_key=key,
        request_hash=request_hash,
    )
    history = selectors.message_history_for_generation(conversation=conversation, before_message=assistant_message)
    return user_message, assistant_message, history


def _regenerate_store(user, conversation, reply, model, limits, idempotency):
    """One thread hop: store the new sibling reply and read the history the model will get."""
    key, request_hash = idempotency or (None, "")
    assistant_message = services.message_regenerate(
        conversation=conversation,
        requester=user,
        reply=reply,
        model=model,
        messages_per_minute=limits["messages_per_minute"],
        idempotency_key=key,
        request_hash=request_hash,
    )
    history = selectors.message_history_for_generation(conversation=conversation, before_message=assistant_message)
    return None, assistant_message, history


class StreamAccess:
    """Who an event stream serves, and the credential it was opened with, to re-check at any time."""

    def __init__(self, request, user, conversation_id):
        token = getattr(request, "api_token", None)
        self.session_key = token.stream_credential if token is not None else request.session.session_key
        self.user_id = user.pk
        self.conversation_id = conversation_id

    async def lost(self) -> str | None:
        """The ``access.revoked`` reason if the viewer may no longer read this stream, else None."""
        return await selectors.astream_access_lost(
            session_key=self.session_key, user_id=self.user_id, conversation_id=self.conversation_id
        )

    async def lost_after(self, check: AccessCheck) -> str | None:
        """The reason after an ``AccessCheck``: one ended session is decided without the database."""
        if check.ended_session is not None:
            return REVOKED_SIGNED_OUT if check.ended_session == self.session_key else None
        return await self.lost()


@api_view("POST")
async def messages(request, user, conversation_id):
    accepted_at = time.monotonic()
    data = parse_body(request, MESSAGE_FIELDS, required=("content",))
    if not data["content"].strip():
        raise InvalidInput("The message is empty.", code="empty_content")
    _check_length(data, "content", settings.CHAT_MAX_MESSAGE_CHARS, too_large=True)
    # A body without "parent" hashes as before parents existed, so keys stored then still match.
    asked = [str(conversation_id), data["content"], data.get("model"), *([data["parent"]] if "parent" in data else [])]
    idempotency = _idempotency(request, asked)
    conversation, model, limits, replay, parent = await adb(_message_checks)(user, conversation_id, data, idempotency)
    if replay is not None:
        return await _replay_post(request, user, conversation, *replay, sse=_wants_sse(request))
    store = functools.partial(_message_store, user, conversation, data["content"], model, limits, idempotency, parent)
    return await _start_reply(request, user, conversation, limits, store, accepted_at=accepted_at)


@api_view("POST")
async def message_regenerate(request, user, conversation_id, message_id):
    accepted_at = time.monotonic()
    data = parse_body(request, REGENERATE_FIELDS)
    idempotency = _idempotency(request, ["regenerate", str(conversation_id), str(message_id), data.get("model")])
    conversation, reply, model, limits, replay = await adb(_regenerate_checks)(
        user, conversation_id, message_id, data, idempotency
    )
    if replay is not None:
        return await _replay_post(request, user, conversation, None, replay, sse=_wants_sse(request))
    store = functools.partial(_regenerate_store, user, conversation, reply, model, limits, idempotency)
    return await _start_reply(request, user, conversation, limits, store, accepted_at=accepted_at)


def _accepted_body(user_message, assistant_message) -> dict:
    body = {"assistant_message": message_to_dict(assistant_message)}
    if user_message is not None:
        body = {"user_message": message_to_dict(user_message), **body}
    return body


async def _start_reply(request, user, conversation, limits, store, *, accepted_at):
    """Store a new reply with ``store`` and start generating it; the answer to a post or a regenerate.

    ``store`` is one thread hop returning (user message or None, reply,
    history). JSON: 202 with the stored messages. ``Accept:
    text/event-stream``: that generation's events, ending after its final one.
    """
    sse = _wants_sse(request)
    slot = viewer = None
    try:
        if sse:
            # Everything that needs Redis happens before anything is written:
            # with Redis down the post is refused, never half-done.
            slot = await _open_stream_slot(user, limits["max_open_streams"])
            viewer = await get_hub().join(conversation.id, user_id=user.pk)
            last_id = await get_event_log().tail(str(conversation.id))
        user_message, assistant_message, history = await adb(store)()
    except BaseException:
        if viewer is not None:
            get_hub().leave(viewer)
        if slot is not None:
            await _release_slot(slot)
        raise
    # From here the post has succeeded whatever Redis does (generation_start never raises for it).
    await streaming.generation_start(
        conversation=conversation,
        user_message=user_message,
        assistant_message=assistant_message,
        history=history,
        accepted_at=accepted_at,
    )
    if not sse:
        return JsonResponse(_accepted_body(user_message, assistant_message), status=202)
    ids = tuple(str(m.id) for m in (user_message, assistant_message) if m is not None)
    markers = tuple(f'"{key}":"{mid}"' for mid in ids for key in ("id", "message_id"))
    access = StreamAccess(request, user, str(conversation.id))
    return _sse_response(
        _event_stream(
            viewer,
            access,
            slot,
            last_id=last_id,
            wanted=lambda item: any(marker in item.data for marker in markers),
            final_id=str(assistant_message.id),
        ),
        request,
    )


async def _replay_post(request, user, conversation, user_message, assistant_message, *, sse):
    """Answer a repeated post or regenerate (same Idempotency-Key) as the first was answered, creating nothing.

    JSON: 202 with the messages as they are now (only the reply when
    ``user_message`` is None: a regenerate). Event stream: the user's message, then the reply's
    snapshot and live events while it streams, or its final event if it has ended.
    """
    if not sse:
        return JsonResponse(_accepted_body(user_message, assistant_message), status=202)
    conversation_id = str(conversation.id)
    limits = await adb(selectors.user_limits)(user=user)
    slot = await _open_stream_slot(user, limits["max_open_streams"])
    viewer = None
    try:
        viewer = await get_hub().join(conversation_id, user_id=user.pk)
        last_id, states = await get_event_log().cut(conversation_id)
        state = next((s for s in states if f'"id":"{assistant_message.id}"' in s.message), None)
        if state is None:
            # Ended (perhaps just now): the stored message is final.
            assistant_message = await adb(selectors.message_get)(
                conversation=conversation, message_id=assistant_message.id
            )
    except BaseException:
        if viewer is not None:
            get_hub().leave(viewer)
        await _release_slot(slot)
        raise
    prelude = b"" if user_message is None else frame(MESSAGE_CREATED, message_to_dict(user_message), last_id)
    if state is None:
        final = FINAL_EVENTS.get(assistant_message.status, MESSAGE_CREATED)
        prelude += frame(final, message_to_dict(assistant_message), last_id)
        get_hub().leave(viewer)
        await _release_slot(slot)
        return _sse_response(_frames(retry_frame(2000) + prelude), request)
    snapshot = json.loads(state.message)
    snapshot.update(content=state.content, reasoning=state.reasoning)
    prelude += frame(MESSAGE_SNAPSHOT, {"message": snapshot, "seq": state.seq}, last_id)
    marker = f'"{assistant_message.id}"'
    access = StreamAccess(request, user, conversation_id)
    return _sse_response(
        _event_stream(
            viewer,
            access,
            slot,
            last_id=last_id,
            prelude=prelude,
            wanted=lambda item: marker in item.data,
            final_id=str(assistant_message.id),
        ),
        request,
    )


async def _frames(data: bytes):
    yield data


async def _next_items(viewer, pending):
    """Wait up to a heartbeat for the viewer's queue; return (items, pending)."""
    done, _ = await asyncio.wait({pending}, timeout=settings.CHAT_HEARTBEAT_SECONDS)
    if not done:
        return [], pending
    items = [pending.result()]
    while not viewer.queue.empty() and len(items) < 256:
        items.append(viewer.queue.get_nowait())
    return items, asyncio.ensure_future(viewer.queue.get())


async def _open_stream_slot(user, limit: int) -> tuple:
    """Count one more open event stream for ``user``, or raise RateLimited over their cap (0: none)."""
    token = uuid.uuid4().hex
    if not await get_event_log().stream_open(user.pk, token, limit=limit, ttl=_stream_slot_ttl()):
        raise RateLimited(
            f"You already have {limit} event streams open, the most allowed. Close another tab and try again.",
            code="too_many_streams",
            retry_after=int(settings.CHAT_HEARTBEAT_SECONDS),
        )
    return (user.pk, token)


def _stream_slot_ttl() -> float:
    # Refreshed at every heartbeat; a slot whose stream died unnoticed lapses.
    return settings.CHAT_HEARTBEAT_SECONDS * 3 + 5


async def _release_slot(slot) -> None:
    try:
        await get_event_log().stream_close(*slot)
    except Exception:
        logger.warning("could not release an event stream slot")


async def _event_stream(viewer, access, slot, *, last_id, prelude=b"", backlog=(), wanted=None, final_id=None):
    """The frames of one event stream, live from ``last_id``.

    Sends ``prelude`` (snapshots, a resync), then ``backlog``, then what the
    feed delivers: every logged event after ``last_id`` that ``wanted``
    accepts (all when None), a heartbeat when idle. Ends after the final event
    of message ``final_id`` (when given); with ``access.revoked`` as the last
    event when the viewer loses access (signed out, removed, deleted); when
    the viewer falls too far behind (the client resumes from the log); or on
    any error, so a broken stream never stays open and silent. Always leaves
    the feed and frees the stream slot.
    """
    viewer.started = True
    pending = asyncio.ensure_future(viewer.queue.get())
    last_key = parse_id(last_id)
    heartbeats = 0
    try:
        yield retry_frame(2000) + prelude
        items = list(backlog)
        while True:
            if not items:
                items, pending = await _next_items(viewer, pending)
            if viewer.overflowed:
                return
            if not items:
                yield HEARTBEAT
                heartbeats += 1
                await _refresh_slot(slot)
                if heartbeats % ACCESS_RECHECK_HEARTBEATS == 0 and (reason := await access.lost()):
                    yield frame(ACCESS_REVOKED, {"reason": reason}, last_id)
                    return
                continue
            chunk = []
            reason = None
            for item in items:
                if isinstance(item, Resync):
                    last_id, last_key = item.id, parse_id(item.id)
                    chunk.append(frame(RESYNC, {}, item.id))
                    continue
                if isinstance(item, AccessCheck):
                    if reason := await access.lost_after(item):
                        break
                    continue
                if item.key <= last_key:
                    continue
                last_id, last_key = item.id, item.key
                if item.type == CONVERSATION_DELETED:
                    reason = REVOKED_DELETED
                    break
                # Membership may have changed: ask the one visibility rule again.
                if item.type == CONVERSATION_UPDATED and (reason := await access.lost()):
                    break
                if wanted is not None and not wanted(item):
                    continue
                chunk.append(item.frame())
                if final_id is not None and item.type in FINAL_TYPES and f'"id":"{final_id}"' in item.data:
                    yield b"".join(chunk)
                    return
            items = []
            if reason is not None:
                chunk.append(frame(ACCESS_REVOKED, {"reason": reason}, last_id))
                yield b"".join(chunk)
                return
            if chunk:
                yield b"".join(chunk)
    except Exception:
        # The client reconnects (EventSource) and resumes from the log.
        logger.exception("event stream of conversation %s ended by an error", viewer.feed.conversation_id)
    finally:
        pending.cancel()
        viewer.feed.hub.leave(viewer)
        await _release_slot(slot)


async def _refresh_slot(slot) -> None:
    try:
        await get_event_log().stream_refresh(*slot, ttl=_stream_slot_ttl())
    except (RedisError, ConnectionError):
        pass  # Redis is restarting; the feed tells this viewer to resync


@api_view("POST")
async def message_stop(request, user, conversation_id, message_id):
    conversation = await selectors.aconversation_get_for_user(user=user, conversation_id=conversation_id)
    message = await adb(selectors.message_get)(conversation=conversation, message_id=message_id)
    if message.status != chat_models.Message.Status.STREAMING:
        raise Conflict(f"This message is not being generated (it is {message.status}).", code="not_streaming")
    # Who stopped it shows once it ends cancelled (contract v2: stopped_by).
    await adb(services.message_stop_record)(message_id=message.id, user=user)
    await streaming.generation_stop(message_id=message.id)
    return JsonResponse(message_to_dict(message), status=202)


@api_view("GET")
async def events(request, user, conversation_id):
    conversation = await selectors.aconversation_get_for_user(user=user, conversation_id=conversation_id)
    conversation_id = str(conversation.id)
    last_event_id = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id") or None
    if last_event_id is not None:
        try:
            parse_id(last_event_id)
        except ValueError:
            raise InvalidInput("Last-Event-ID is not an id this server gave out.", code="invalid_event_id") from None
    limits = await adb(selectors.user_limits)(user=user)
    slot = await _open_stream_slot(user, limits["max_open_streams"])
    hub = get_hub()
    viewer = None
    try:
        viewer = await hub.join(conversation_id, user_id=user.pk)
        log = get_event_log()
        backlog, prelude = [], b""
        if last_event_id is None:
            last_id, states = await log.cut(conversation_id)
            snapshots = []
            for state in states:
                message = json.loads(state.message)
                message.update(content=state.content, reasoning=state.reasoning)
                snapshots.append(frame(MESSAGE_SNAPSHOT, {"message": message, "seq": state.seq}, last_id))
            prelude = b"".join(snapshots)
        else:
            backlog = await log.after(conversation_id, last_event_id)
            if backlog is None:
                backlog, last_id = [], await log.tail(conversation_id)
                prelude = frame(RESYNC, {}, last_id)
            else:
                last_id = last_event_id
    except BaseException:
        if viewer is not None:
            hub.leave(viewer)
        await _release_slot(slot)
        raise
    access = StreamAccess(request, user, conversation_id)
    return _sse_response(
        _event_stream(viewer, access, slot, last_id=last_id, prelude=prelude, backlog=backlog), request
    )
