"""Request middleware: a request id for every log line and response; 503 while the database is unreachable;
API tokens (``Authorization: Bearer``) on /api/.

Each class runs sync under WSGI and the test client and async under daphne
(no thread hop but the token's one query, on the shared pool), and none
touches a streaming response's body: event streams pass through as the views
made them.
"""

import logging
import re
import sys
import time
import uuid

import csp.middleware
from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.auth.models import AnonymousUser
from django.contrib.messages import middleware as message_middleware
from django.contrib.sessions import middleware as session_middleware
from django.core.signals import got_request_exception
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.middleware import clickjacking, common, csrf, security

from . import selectors, services
from .db import adb
from .logs import request_id

logger = logging.getLogger("chat.request")

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is kept only if it is this tame: it goes into every log line.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Probes hit these every few seconds; their successes are logged at DEBUG only.
_PROBE_PATHS = frozenset({"/healthz", "/readyz"})

DATABASE_ERRORS = (OperationalError, InterfaceError)
RETRY_AFTER_SECONDS = 5
DATABASE_UNAVAILABLE_MESSAGE = "The database cannot be reached right now; try again in a few seconds."


class _Middleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)


class RequestIdMiddleware(_Middleware):
    """Give each request an id (a sane incoming ``X-Request-ID``, else a new one) and log one line for it.

    The id sits in ``chat.logs.request_id`` while the request is served, so
    every log line made meanwhile carries it (as do tasks the request starts),
    and goes back in the ``X-Request-ID`` response header. The request's own
    line (logger ``chat.request``) has method, path, status and duration_ms;
    for a streaming response the duration is the time to its headers.
    """

    def __call__(self, request):
        if self.async_mode:
            return self.__acall__(request)
        started, token = self._begin(request)
        response = self.get_response(request)
        return self._finish(request, response, started, token)

    async def __acall__(self, request):
        started, token = self._begin(request)
        response = await self.get_response(request)
        return self._finish(request, response, started, token)

    def _begin(self, request):
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request.request_id = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        return time.monotonic(), request_id.set(request.request_id)

    def _finish(self, request, response, started, token):
        response[REQUEST_ID_HEADER] = request.request_id
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        status = response.status_code
        quiet = request.path in _PROBE_PATHS and status < 400
        logger.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s %s %.1fms%s",
            request.method,
            request.path,
            status,
            duration_ms,
            " (streaming)" if response.streaming else "",
            extra={
                "method": request.method,
                "path": request.path,
                "status": status,
                "duration_ms": duration_ms,
                "request_id": request.request_id,
            },
        )
        # A stream's body is produced after this returns, in this same context:
        # keep the id set for its log lines.
        if not response.streaming:
            request_id.reset(token)
        return response


def database_unavailable_response(request):
    """503 with ``Retry-After``: the contract's JSON error under /api/, a small page elsewhere."""
    if request.path.startswith("/api/"):
        response = JsonResponse(
            {"error": {"code": "database_unavailable", "message": DATABASE_UNAVAILABLE_MESSAGE}}, status=503
        )
    else:
        response = HttpResponse(
            "<!doctype html><html lang=en><title>Service unavailable</title>"
            f"<h1>Service unavailable</h1><p>{DATABASE_UNAVAILABLE_MESSAGE}</p></html>",
            status=503,
            content_type="text/html; charset=utf-8",
        )
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class DatabaseUnavailableMiddleware(_Middleware):
    """Answer 503 + ``Retry-After`` instead of 500 when the database cannot be reached.

    ``process_exception`` covers sync and async views alike (Django calls it
    for both). By then the exception has left every ``transaction.atomic``
    block of the view, so those were rolled back, not half-written; the
    response only stands in for the 500 page. A database error raised outside
    the view (say, a middleware saving the session) becomes Django's 500
    first; ``_note_database_error`` marks the request and this middleware,
    outside those, swaps that 500 for the 503 too.
    """

    def __call__(self, request):
        if self.async_mode:
            return self.__acall__(request)
        return self._swap(request, self.get_response(request))

    async def __acall__(self, request):
        return self._swap(request, await self.get_response(request))

    def process_exception(self, request, exception):
        if not isinstance(exception, DATABASE_ERRORS):
            return None
        logger.warning("database unavailable: %s: %s", type(exception).__name__, exception)
        return database_unavailable_response(request)

    def _swap(self, request, response):
        if response.status_code == 500 and not response.streaming and getattr(request, "database_error", None):
            return database_unavailable_response(request)
        return response


def _note_database_error(sender, request=None, **kwargs):
    # Sent while Django handles an uncaught exception: sys.exc_info() is it.
    error = sys.exc_info()[1]
    if request is not None and isinstance(error, DATABASE_ERRORS):
        request.database_error = error


got_request_exception.connect(_note_database_error, dispatch_uid="chat.middleware.database_error")


# What a secret this app makes looks like (token_urlsafe's alphabet, 46 characters): anything
# else is refused before the database sees it (PostgreSQL rejects a NUL in a query, say).
_SECRET_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,200}")


def _bearer_secret(request) -> str | None:
    """The secret of an /api/ request's ``Authorization: Bearer`` header ("" if empty), else None."""
    if not request.path.startswith("/api/"):
        return None
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else None


def _live_token(secret: str):
    """The live ApiToken for ``secret`` (its last_used_at brought up to date), or None."""
    if not _SECRET_SHAPE.fullmatch(secret):
        return None
    token = selectors.api_token_authenticate(secret=secret)
    if token is not None:
        services.api_token_touch(token=token)
    return token


class ApiTokenMiddleware(_Middleware):
    """Authenticate /api/ requests that carry ``Authorization: Bearer <token>``: its user, no session, no CSRF.

    Sets ``request.api_token`` (the live ApiToken, or None for an unknown,
    revoked or expired one, which ``api_view`` answers with 401
    ``invalid_token``) and ``request.user`` (its user, else anonymous),
    ignoring any session cookie that came along, and exempts the request
    from the CSRF check: browsers never add this header on their own, so
    another site cannot make a request with it. Requests without the header
    are left to the session. One query (two at most once a minute per token,
    for ``last_used_at``), on the shared pool under daphne.

    It comes after AuthenticationMiddleware, whose user it replaces; the CSRF
    check runs in ``process_view``, after every middleware's request part.
    """

    def __call__(self, request):
        if self.async_mode:
            return self.__acall__(request)
        if (secret := _bearer_secret(request)) is not None:
            self._authenticate(request, _live_token(secret))
        return self.get_response(request)

    async def __acall__(self, request):
        if (secret := _bearer_secret(request)) is not None:
            self._authenticate(request, await adb(_live_token)(secret))
        return await self.get_response(request)

    @staticmethod
    def _authenticate(request, token) -> None:
        user = token.user if token is not None else AnonymousUser()
        request.api_token = token
        request.user = user

        async def auser():
            return user

        request.auser = auser
        request._dont_enforce_csrf_checks = True


# --- Django's middleware, without a thread hop per hook under ASGI -------------------------------------------------
#
# Django's MiddlewareMixin runs each process_request / process_view / process_response of an async request in
# sync_to_async(thread_sensitive=True): a hop to the process's one sync thread and back, 15 per API request with
# settings.MIDDLEWARE (measured: 2 ms before a post's view, 8 ms after it while its reply starts). The hooks below
# do no I/O in the common case, so they run on the event loop; the cases that may touch the database (a session to
# save, messages to store, a CSRF failure page) still go to the thread, as Django would send them. The ASGI
# handler (config/asgi.py) loads these in place of the classes settings.MIDDLEWARE names (ON_THE_LOOP), which
# stay there for Django's checks, WSGI and the test client.


class _OnTheLoop:
    """Mixin for a MiddlewareMixin subclass: under ASGI its hooks run on the event loop unless ``_needs_thread``."""

    def __init__(self, get_response):
        super().__init__(get_response)
        if self.async_mode and hasattr(self, "process_view"):
            # Django adapts a sync process_view with sync_to_async; an async one it awaits as it is.
            self.process_view = self._process_view_on_loop

    def _needs_thread(self, request, response=None) -> bool:
        """Whether this hook may do I/O for ``request`` (``response`` None: the request's side)."""
        return False

    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            if self._needs_thread(request):
                response = await sync_to_async(self.process_request, thread_sensitive=True)(request)
            else:
                response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self._needs_thread(request, response):
                response = await sync_to_async(self.process_response, thread_sensitive=True)(request, response)
            else:
                response = self.process_response(request, response)
        return response

    async def _process_view_on_loop(self, request, callback, callback_args, callback_kwargs):
        view = type(self).process_view.__get__(self)
        return view(request, callback, callback_args, callback_kwargs)


class SecurityMiddleware(_OnTheLoop, security.SecurityMiddleware):
    """Django's SecurityMiddleware; its hooks only read settings and set headers."""


class CSPMiddleware(_OnTheLoop, csp.middleware.CSPMiddleware):
    """django-csp's middleware; it only makes a nonce and sets headers."""


class CommonMiddleware(_OnTheLoop, common.CommonMiddleware):
    """Django's CommonMiddleware; its hooks read the URL conf and set headers."""


class XFrameOptionsMiddleware(_OnTheLoop, clickjacking.XFrameOptionsMiddleware):
    """Django's XFrameOptionsMiddleware; it sets a header."""


class AuthenticationMiddleware(_OnTheLoop, auth_middleware.AuthenticationMiddleware):
    """Django's AuthenticationMiddleware; it sets a lazy ``request.user``, loaded where it is used."""


class SessionMiddleware(_OnTheLoop, session_middleware.SessionMiddleware):
    """Django's SessionMiddleware; a session is read where it is used, and saved on the sync thread as before."""

    def _needs_thread(self, request, response=None) -> bool:
        if response is None:
            return False
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class MessageMiddleware(_OnTheLoop, message_middleware.MessageMiddleware):
    """Django's MessageMiddleware; messages that were read or added are stored on the sync thread as before."""

    def _needs_thread(self, request, response=None) -> bool:
        storage = getattr(request, "_messages", None) if response is not None else None
        return storage is not None and (storage.used or storage.added_new)


class _CsrfRejected(Exception):
    pass


class CsrfViewMiddleware(_OnTheLoop, csrf.CsrfViewMiddleware):
    """Django's CSRF check on the event loop; a refusal's page is made on the sync thread, as before.

    With ``CSRF_USE_SESSIONS`` the secret lives in the session: every hook then runs on the thread.
    """

    def _needs_thread(self, request, response=None) -> bool:
        return settings.CSRF_USE_SESSIONS

    async def _process_view_on_loop(self, request, callback, callback_args, callback_kwargs):
        check = super(_OnTheLoop, self).process_view
        if not settings.CSRF_USE_SESSIONS:
            request._chat_csrf_on_loop = True
            try:
                return check(request, callback, callback_args, callback_kwargs)
            except _CsrfRejected:
                pass
            finally:
                request._chat_csrf_on_loop = False
        return await sync_to_async(check, thread_sensitive=True)(request, callback, callback_args, callback_kwargs)

    def _reject(self, request, reason):
        if getattr(request, "_chat_csrf_on_loop", False):
            raise _CsrfRejected
        return super()._reject(request, reason)


# settings.MIDDLEWARE's entry -> the class the ASGI handler loads instead.
ON_THE_LOOP = {
    "django.middleware.security.SecurityMiddleware": SecurityMiddleware,
    "csp.middleware.CSPMiddleware": CSPMiddleware,
    "django.contrib.sessions.middleware.SessionMiddleware": SessionMiddleware,
    "django.middleware.common.CommonMiddleware": CommonMiddleware,
    "django.middleware.csrf.CsrfViewMiddleware": CsrfViewMiddleware,
    "django.contrib.auth.middleware.AuthenticationMiddleware": AuthenticationMiddleware,
    "django.contrib.messages.middleware.MessageMiddleware": MessageMiddleware,
    "django.middleware.clickjacking.XFrameOptionsMiddleware": XFrameOptionsMiddleware,
}
