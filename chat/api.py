"""The JSON API and the event streams: parse, authorise, call one service or selector, respond.

Every error leaves as ``{"error": {"code", "message"}}`` with the contract's status.
"""

import asyncio
import functools
import json
import logging
import time
import uuid

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.contrib.auth import get_user
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from redis.exceptions import RedisError

from . import models as chat_models
from . import selectors, services, streaming
from .db import adb
from .errors import (
    ChatError,
    Conflict,
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
    CONVERSATION_DELETED,
    CONVERSATION_UPDATED,
    FINAL_EVENTS,
    HEARTBEAT,
    MESSAGE_SNAPSHOT,
    RESYNC,
    frame,
    parse_id,
    retry_frame,
)
from .fanout import Resync, get_hub
from .serializers import conversation_to_dict, message_to_dict

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


def api_view(*methods):
    """Wrap a sync or async API view: 405, 401 and ChatError become contract errors."""

    def decorate(view):
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def wrapper(request, *args, **kwargs):
                if (response := _check_method(request, methods)) is not None:
                    return response
                # On the shared pool: see chat.db (auser() would pin a thread to a long stream).
                user = await adb(get_user)(request)
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
                if (response := _check_method(request, methods)) is not None:
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
    return data


def _type_name(expected):
    return {str: "string", int: "integer", bool: "boolean"}.get(expected, expected.__name__)


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


@api_view("GET", "POST")
def conversations(request, user):
    if request.method == "GET":
        title = request.GET.get("q", "")
        items = selectors.conversation_list_for_user(user=user, title_contains=title)
        return JsonResponse({"conversations": [conversation_to_dict(c) for c in items]})
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
        conversation_id = conversation.id  # delete() clears the instance's pk
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


@api_view("POST")
def members(request, user, conversation_id):
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    data = parse_body(request, {"username": str}, required=("username",))
    services.conversation_member_add(conversation=conversation, user=user, username=data["username"].strip())
    return _conversation_changed(user, conversation_id, status=201)


@api_view("DELETE")
def member_detail(request, user, conversation_id, username):
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    services.conversation_member_remove(conversation=conversation, user=user, username=username)
    # The event tells open streams of the removed member to end.
    _conversation_changed(user, conversation_id, status=200)
    return HttpResponse(status=204)


@api_view("GET", "POST", "PUT", "PATCH", "DELETE")
def not_found(request, user):
    raise NotFound("There is nothing at this address.", code="not_found")


# --- Messages and event streams (async) ---------------------------------------

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MESSAGE_FIELDS = {"content": str, "model": str}


def _sse_response(stream) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, content_type="text/event-stream; charset=utf-8")
    for name, value in SSE_HEADERS.items():
        response[name] = value
    return response


def _wants_sse(request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def _message_checks(user, conversation_id, data):
    """One thread hop: visibility, model, the user's limits. Returns (conversation, model, limits)."""
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    model = data.get("model") or conversation.model
    if model not in available_models():
        raise InvalidInput(
            f"The model {model!r} is not available; choose one of {', '.join(available_models())}.",
            code="unknown_model",
        )
    selectors.message_allowance_check(user=user)
    return conversation, model, selectors.user_limits(user=user)


def _message_store(user, conversation, content, model):
    """One thread hop: store both messages and read the history the model will get."""
    user_message, assistant_message = services.message_submit(
        conversation=conversation, author=user, content=content, model=model
    )
    history = selectors.message_history_for_generation(conversation=conversation, before_message=assistant_message)
    return user_message, assistant_message, history


@api_view("POST")
async def messages(request, user, conversation_id):
    accepted_at = time.monotonic()
    data = parse_body(request, MESSAGE_FIELDS, required=("content",))
    if not data["content"].strip():
        raise InvalidInput("The message is empty.", code="empty_content")
    _check_length(data, "content", settings.CHAT_MAX_MESSAGE_CHARS, too_large=True)
    conversation, model, limits = await adb(_message_checks)(user, conversation_id, data)
    sse = _wants_sse(request)
    slot = await _open_stream_slot(user, limits["max_open_streams"]) if sse else None
    try:
        user_message, assistant_message, history = await adb(_message_store)(user, conversation, data["content"], model)
    except BaseException:
        if slot is not None:
            await _release_slot(slot)
        raise
    start = dict(
        conversation=conversation,
        user_message=user_message,
        assistant_message=assistant_message,
        history=history,
        accepted_at=accepted_at,
    )
    if not sse:
        await streaming.generation_start(**start)
        return JsonResponse(
            {"user_message": message_to_dict(user_message), "assistant_message": message_to_dict(assistant_message)},
            status=202,
        )
    # Join the feed before the first event so this response misses none.
    hub = get_hub()
    viewer = await hub.join(conversation.id)
    try:
        last_id = await get_event_log().tail(str(conversation.id))
        await streaming.generation_start(**start)
    except BaseException:
        hub.leave(viewer)
        await _release_slot(slot)
        raise
    ids = (str(user_message.id), str(assistant_message.id))
    return _sse_response(_generation_stream(viewer, last_id, ids, slot))


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


async def _release(viewer, pending, slot) -> None:
    """A response stream ended: leave the feed and free the user's stream slot."""
    pending.cancel()
    viewer.feed.hub.leave(viewer)
    await _release_slot(slot)


async def _release_slot(slot) -> None:
    try:
        await get_event_log().stream_close(*slot)
    except Exception:
        logger.warning("could not release an event stream slot")


async def _generation_stream(viewer, last_id, ids, slot):
    """The events of one generation (both messages), ending after the reply's final event."""
    user_id, assistant_id = ids
    markers = tuple(f'"{key}":"{mid}"' for mid in ids for key in ("id", "message_id"))
    viewer.started = True
    pending = asyncio.ensure_future(viewer.queue.get())
    last_key = parse_id(last_id)
    try:
        yield retry_frame(2000)
        while True:
            items, pending = await _next_items(viewer, pending)
            if not items:
                yield HEARTBEAT
                continue
            chunk = []
            for item in items:
                if isinstance(item, Resync):
                    chunk.append(frame(RESYNC, {}, item.id))
                    continue
                if item.key <= last_key or not any(marker in item.data for marker in markers):
                    continue
                last_key = item.key
                chunk.append(item.frame())
                if item.type in FINAL_TYPES and f'"id":"{assistant_id}"' in item.data:
                    yield b"".join(chunk)
                    return
            if chunk:
                yield b"".join(chunk)
    finally:
        await _release(viewer, pending, slot)


@api_view("POST")
async def message_stop(request, user, conversation_id, message_id):
    conversation = await selectors.aconversation_get_for_user(user=user, conversation_id=conversation_id)
    message = await adb(selectors.message_get)(conversation=conversation, message_id=message_id)
    if message.status != chat_models.Message.Status.STREAMING:
        raise Conflict(f"This message is not being generated (it is {message.status}).", code="not_streaming")
    await streaming.generation_stop(message_id=message.id)
    return JsonResponse(message_to_dict(message), status=202)


@api_view("GET")
async def events(request, user, conversation_id):
    conversation = await selectors.aconversation_get_for_user(user=user, conversation_id=conversation_id)
    last_event_id = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id") or None
    if last_event_id is not None:
        try:
            parse_id(last_event_id)
        except ValueError:
            raise InvalidInput("Last-Event-ID is not an id this server gave out.", code="invalid_event_id") from None
    limits = await adb(selectors.user_limits)(user=user)
    slot = await _open_stream_slot(user, limits["max_open_streams"])
    viewer = await get_hub().join(conversation.id)
    return _sse_response(_conversation_stream(viewer, user, str(conversation.id), last_event_id, slot))


async def _conversation_stream(viewer, user, conversation_id, last_event_id, slot):
    """Every event of the conversation, live, from a snapshot or from ``last_event_id``."""
    viewer.started = True
    log = get_event_log()
    pending = asyncio.ensure_future(viewer.queue.get())
    heartbeats = 0
    try:
        yield retry_frame(2000)
        if last_event_id is None:
            last_id, states = await log.cut(conversation_id)
            chunk = []
            for state in states:
                message = json.loads(state.message)
                message.update(content=state.content, reasoning=state.reasoning)
                chunk.append(frame(MESSAGE_SNAPSHOT, {"message": message, "seq": state.seq}, last_id))
            if chunk:
                yield b"".join(chunk)
            backlog = []
        else:
            backlog = await log.after(conversation_id, last_event_id)
            if backlog is None:
                last_id = await log.tail(conversation_id)
                yield frame(RESYNC, {}, last_id)
                backlog = []
            else:
                last_id = last_event_id
        last_key = parse_id(last_id)
        while True:
            if backlog:
                items, backlog = backlog, []
            else:
                items, pending = await _next_items(viewer, pending)
            if viewer.overflowed:
                return  # too far behind: the client resumes from the log
            if not items:
                yield HEARTBEAT
                heartbeats += 1
                try:
                    await log.stream_refresh(*slot, ttl=_stream_slot_ttl())
                except (RedisError, ConnectionError):
                    pass  # Redis is restarting; the feed tells this viewer to resync

                # Membership changes also arrive as events; this is the backstop.
                if heartbeats % 4 == 0 and not await selectors.aconversation_is_visible(
                    user=user, conversation_id=conversation_id
                ):
                    return
                continue
            chunk = []
            for item in items:
                if isinstance(item, Resync):
                    chunk.append(frame(RESYNC, {}, item.id))
                    last_key = parse_id(item.id)
                    continue
                if item.key <= last_key:
                    continue
                if item.type == CONVERSATION_DELETED:
                    if chunk:
                        yield b"".join(chunk)
                    return
                # Membership may have changed: ask the one visibility rule again.
                if item.type == CONVERSATION_UPDATED and not await selectors.aconversation_is_visible(
                    user=user, conversation_id=conversation_id
                ):
                    if chunk:
                        yield b"".join(chunk)
                    return
                last_key = item.key
                chunk.append(item.frame())
            if chunk:
                yield b"".join(chunk)
    finally:
        await _release(viewer, pending, slot)
