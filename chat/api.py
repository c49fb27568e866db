"""The JSON API: parse, authorise, call one service or selector, respond.

A message post stores both messages and starts the reply's ``Generation``;
it answers with JSON, or with the reply's event stream (``eventstreams``).
"""

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpResponse, JsonResponse

from . import exports, selectors, services
from . import models as chat_models
from .db import adb
from .errors import ChatError, Conflict, Forbidden, InvalidInput, NotFound
from .eventstreams import ReplyStream, replay_stream
from .generation import generation_begin, generation_request, generation_stop
from .http import (
    api_view,
    check_length,
    check_text,
    parse_body,
    parse_expiry,
    parse_idempotency,
    request_user,
    wants_sse,
)
from .serializers import api_token_to_dict, conversation_to_dict, message_to_dict, model_list_to_dicts


def _default_model(user) -> str:
    """The first model ``user`` may use; 403 ``model_not_allowed`` when there is none."""
    models = selectors.model_list_for_user(user=user)
    if not models:
        raise Forbidden("There is no model you may use; ask an admin for access.", code="model_not_allowed")
    return models[0].id


CONVERSATION_FIELDS = {"title": str, "model": str, "system_prompt": str}


def _clean_conversation_fields(data, user):
    if "title" in data:
        data["title"] = data["title"].strip()
    check_length(data, "title", chat_models.TITLE_MAX_LENGTH)
    check_length(data, "system_prompt", chat_models.SYSTEM_PROMPT_MAX_LENGTH)
    if "model" in data:
        selectors.model_check_for_user(user=user, model_id=data["model"])
    return data


@api_view("GET")
def models_list(request, user):
    return JsonResponse({"models": model_list_to_dicts(selectors.model_list_for_user(user=user))})


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
    data = _clean_conversation_fields(parse_body(request, CONVERSATION_FIELDS), user)
    if "model" not in data:
        data["model"] = _default_model(user)
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
        services.conversation_delete(conversation=conversation, user=user)
        return HttpResponse(status=204)
    data = _clean_conversation_fields(parse_body(request, CONVERSATION_FIELDS), user)
    conversation = services.conversation_update(conversation=conversation, user=user, **data)
    return JsonResponse(conversation_to_dict(conversation))


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
    conversation = services.conversation_member_add(
        conversation=conversation, user=user, username=data["username"].strip()
    )
    return JsonResponse(conversation_to_dict(conversation), status=201)


@api_view("DELETE")
def member_detail(request, user, conversation_id, username):
    conversation = selectors.conversation_get_for_user(user=user, conversation_id=conversation_id)
    username = check_text(username, "The username")
    services.conversation_member_remove(conversation=conversation, user=user, username=username)
    return HttpResponse(status=204)


# --- People --------------------------------------------------------------------

# A username is at most 150 characters (Django's User); a longer prefix matches nobody.
USER_SEARCH_MAX_CHARS = 150


@api_view("GET")
def users(request, user):
    """``GET /api/users/?q=prefix``: people to share with, as one types (``selectors.user_search``).

    Any signed-in user; a prefix shorter than two characters finds nobody.
    """
    prefix = check_text(request.GET.get("q", ""), "The search text").strip()
    if len(prefix) > USER_SEARCH_MAX_CHARS:
        raise InvalidInput(
            f"The search text is too long: {len(prefix)} characters; the limit is {USER_SEARCH_MAX_CHARS}.",
            code="too_long",
        )
    found = selectors.user_search(prefix=prefix)
    return JsonResponse({"users": [{"username": name, "full_name": full} for name, full in found]})


# --- Personal API tokens ------------------------------------------------------

TOKEN_FIELDS = {"name": str, "expires_at": str}


def _require_session(request) -> None:
    # A leaked token must not be able to mint tokens that outlive its revocation (docs/auth.md).
    if getattr(request, "api_token", None) is not None:
        raise Forbidden(
            "API tokens are managed from a signed-in session (the API tokens page), not with a token.",
            code="session_required",
        )


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
    services.api_token_revoke(token=token, actor=user, request=request)
    return HttpResponse(status=204)


@api_view("GET", "POST", "PUT", "PATCH", "DELETE")
def not_found(request, user):
    raise NotFound("There is nothing at this address.", code="not_found")


# --- Messages (async) ----------------------------------------------------------

MESSAGE_FIELDS = {"content": str, "model": str, "parent": (str, type(None))}

REGENERATE_FIELDS = {"model": str}


@api_view("POST", authenticates=True)
async def messages(request, conversation_id):
    accepted_at = time.monotonic()
    body = _deferred(_message_body, request, conversation_id)
    post = await adb(_message_accept)(request, conversation_id, body)
    return await _answer(request, post, accepted_at=accepted_at)


@api_view("POST", authenticates=True)
async def message_regenerate(request, conversation_id, message_id):
    accepted_at = time.monotonic()
    body = _deferred(_regenerate_body, request, conversation_id, message_id)
    post = await adb(_regenerate_accept)(request, conversation_id, message_id, body)
    return await _answer(request, post, accepted_at=accepted_at)


def _deferred(parse, *args):
    """``parse(*args)``, or the ChatError it raised: raised after authentication, as a 401 comes first."""
    try:
        return parse(*args)
    except ChatError as error:
        return error


def _message_body(request, conversation_id):
    """A post's checked body and its Idempotency-Key (key, hash) or None; InvalidInput or TooLarge if not fit."""
    data = parse_body(request, MESSAGE_FIELDS, required=("content",))
    if not data["content"].strip():
        raise InvalidInput("The message is empty.", code="empty_content")
    check_length(data, "content", settings.CHAT_MAX_MESSAGE_CHARS, too_large=True)
    # A body without "parent" hashes as before parents existed, so keys stored then still match.
    asked = [str(conversation_id), data["content"], data.get("model"), *([data["parent"]] if "parent" in data else [])]
    return data, parse_idempotency(request, asked)


def _regenerate_body(request, conversation_id, message_id):
    data = parse_body(request, REGENERATE_FIELDS)
    return data, parse_idempotency(request, ["regenerate", str(conversation_id), str(message_id), data.get("model")])


@dataclass
class _Post:
    """A message post or regenerate that passed every check, ready to be stored (``store``) and answered."""

    user: object
    conversation: chat_models.Conversation
    limits: dict | None = None
    # The (user message or None, reply) of an earlier post with the same Idempotency-Key: nothing new is made.
    replay: tuple | None = None
    # The reply's model and what it is sent (read before anything is stored).
    model: str = ""
    history: list | None = None
    # Stores the messages: (user message or None, reply).
    store: Callable | None = None


def _message_accept(request, conversation_id, body) -> _Post:
    """One database hop: authenticate, then the body's errors, the checks, and the history the model will get.

    Stores nothing: ``_answer`` sends the upstream request, then stores.
    """
    user = request_user(request)
    if isinstance(body, ChatError):
        raise body
    data, idempotency = body
    conversation, model, limits, replay, parent = _message_checks(user, conversation_id, data, idempotency)
    if replay is not None:
        return _Post(user, conversation, replay=replay)
    if parent is services.LATEST:
        parent = selectors.message_latest(conversation=conversation)
    history = selectors.message_history_for_post(conversation=conversation, parent=parent, content=data["content"])
    store = functools.partial(_message_store, user, conversation, data["content"], model, limits, idempotency, parent)
    return _Post(user, conversation, limits, model=model, history=history, store=store)


def _regenerate_accept(request, conversation_id, message_id, body) -> _Post:
    """One database hop for a regenerate, as ``_message_accept``."""
    user = request_user(request)
    if isinstance(body, ChatError):
        raise body
    data, idempotency = body
    conversation, reply, model, limits, replay = _regenerate_checks(
        user, conversation_id, message_id, data, idempotency
    )
    if replay is not None:
        return _Post(user, conversation, replay=(None, replay))
    # The new reply is the old one's sibling: the same history.
    history = selectors.message_history_for_generation(conversation=conversation, before_message=reply)
    store = functools.partial(_regenerate_store, user, conversation, reply, model, limits, idempotency)
    return _Post(user, conversation, limits, model=model, history=history, store=store)


def _message_checks(user, conversation_id, data, idempotency):
    """Visibility, an earlier post with the same Idempotency-Key, parent, model, the user's limits.

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
    model = selectors.model_check_for_user(user=user, model_id=data.get("model") or conversation.model).id
    limits = selectors.user_limits(user=user)
    selectors.message_allowance_check(user=user, limits=limits)
    selectors.message_post_check(conversation=conversation, author=user, per_minute=limits["messages_per_minute"])
    return conversation, model, limits, None, parent


def _regenerate_checks(user, conversation_id, message_id, data, idempotency):
    """Visibility, the reply to regenerate, a repeat's Idempotency-Key, model, the user's limits.

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
    offered = {m.id for m in selectors.model_list_for_user(user=user)}
    model = data.get("model") or (reply.model if reply.model in offered else conversation.model)
    model = selectors.model_check_for_user(user=user, model_id=model).id
    limits = selectors.user_limits(user=user)
    selectors.message_allowance_check(user=user, limits=limits)
    selectors.message_post_check(conversation=conversation, author=user, per_minute=limits["messages_per_minute"])
    return conversation, reply, model, limits, None


def _message_store(user, conversation, content, model, limits, idempotency, parent):
    """Store both messages: (user message, reply)."""
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
    return user_message, assistant_message


def _regenerate_store(user, conversation, reply, model, limits, idempotency):
    """Store the new sibling reply: (None, reply)."""
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
    return None, assistant_message


def _accepted_body(user_message, assistant_message) -> dict:
    body = {"assistant_message": message_to_dict(assistant_message)}
    if user_message is not None:
        body = {"user_message": message_to_dict(user_message), **body}
    return body


async def _answer(request, post: _Post, *, accepted_at):
    """Start generating ``post``'s reply; the answer to a post or a regenerate.

    The upstream request goes out first, while the messages are stored (a
    second database hop). JSON: 202 with the stored messages.
    ``Accept: text/event-stream``: that generation's events, ending after its
    final one; its stream (which needs Redis) opens before the messages are
    stored, so with Redis down the post is refused, never half-done. A post
    refused then has its upstream request closed unread. A repeat (same
    Idempotency-Key) is answered as the first was.
    """
    if post.replay is not None:
        return await _replay_post(request, post.user, post.conversation, *post.replay)
    generation = generation_request(
        conversation=post.conversation, model=post.model, history=post.history, accepted_at=accepted_at
    )
    stream = None
    try:
        if wants_sse(request):
            stream = await ReplyStream.open(request, post.user, post.conversation, post.limits)
        user_message, assistant_message = await adb(post.store)()
    except BaseException:
        generation.abandon()
        if stream is not None:
            await stream.abandon()
        raise
    # From here the post has succeeded whatever Redis does (generation_begin never raises for it).
    await generation_begin(generation, user_message=user_message, assistant_message=assistant_message)
    if stream is None:
        return JsonResponse(_accepted_body(user_message, assistant_message), status=202)
    return stream.response(user_message, assistant_message)


async def _replay_post(request, user, conversation, user_message, assistant_message):
    """Answer a repeated post or regenerate (same Idempotency-Key) as the first was answered, creating nothing.

    JSON: 202 with the messages as they are now (only the reply when
    ``user_message`` is None: a regenerate); or the reply's event stream.
    """
    if wants_sse(request):
        return await replay_stream(request, user, conversation, user_message, assistant_message)
    return JsonResponse(_accepted_body(user_message, assistant_message), status=202)


@api_view("POST")
async def message_stop(request, user, conversation_id, message_id):
    conversation = await selectors.aconversation_get_for_user(user=user, conversation_id=conversation_id)
    message = await adb(selectors.message_get)(conversation=conversation, message_id=message_id)
    if message.status != chat_models.Message.Status.STREAMING:
        raise Conflict(f"This message is not being generated (it is {message.status}).", code="not_streaming")
    # Who stopped it shows once it ends cancelled (contract v2: stopped_by).
    await adb(services.message_stop_record)(message_id=message.id, user=user)
    await generation_stop(message_id=message.id)
    return JsonResponse(message_to_dict(message), status=202)
