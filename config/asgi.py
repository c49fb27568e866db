"""ASGI entry point: daphne serves ``config.asgi:application`` (``manage.py serve``).

Any other ASGI server can serve it too (uvicorn, for the bench's comparison):
the process's start-up and shutdown hooks run on ASGI lifespan events, which
daphne does not send; under daphne, ``serve`` runs the same hooks.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

import asyncio  # noqa: E402

import django  # noqa: E402
from asgiref.sync import sync_to_async  # noqa: E402
from django.core import signals  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler, get_script_prefix  # noqa: E402
from django.urls import set_script_prefix  # noqa: E402

django.setup(set_prefix=False)

from chat.transport import EventStreamResponse, send_event_stream  # noqa: E402  (needs Django set up)


class ChatASGIHandler(ASGIHandler):
    """Django's handler, but event streams run outside a per-request thread context.

    Django gives each request its own thread for thread-sensitive sync code
    (middleware hooks) for as long as the request lasts: for an event stream
    that is as long as the tab is open, an OS thread per viewer. Event streams
    (and message posts, which may stream) use the process's single shared sync
    thread instead; their ORM calls run on the shared pool (see chat.db).
    """

    def load_middleware(self, is_async=False):
        """settings.MIDDLEWARE, with chat.middleware's on-the-loop twins of Django's classes (``ON_THE_LOOP``)."""
        from django.conf import settings

        from chat.middleware import ON_THE_LOOP

        names = settings.MIDDLEWARE
        settings.MIDDLEWARE = [_path(ON_THE_LOOP[name]) if name in ON_THE_LOOP else name for name in names]
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = names

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/api/") and path.endswith(("/events/", "/messages/")):
            await self.handle_stream(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def handle_stream(self, scope, receive, send):
        """Django's ``handle`` for a request whose answer may be an event stream, lighter for a long stream.

        The same steps and signals; the response runs in this task while one
        listener task waits for the client's disconnect, which cancels it (as
        Django's does), and the request (its session, user, headers, body) is
        let go once the view has answered, instead of living as long as the stream.
        """
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        await signals.request_started.asend(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await sync_to_async(error_response.close)()
            return
        task = asyncio.current_task()
        listener = asyncio.ensure_future(self.listen_for_disconnect(receive))

        def disconnected(future):
            if not future.cancelled() and isinstance(future.exception(), RequestAborted):
                task.cancel()

        listener.add_done_callback(disconnected)
        response = None
        try:
            response = await self.run_get_response(request)
            if isinstance(response, EventStreamResponse):
                # Django closes the request with the response; a stream's may last
                # hours, so close it now and let the request go.
                response._resource_closers.remove(request.close)
                request.close()
            del request
            body_file.close()
            await self.send_response(response, send)
        except asyncio.CancelledError:
            if not (listener.done() and not listener.cancelled()):
                raise  # not the client leaving: the server is shutting down
            task.uncancel()
        finally:
            listener.remove_done_callback(disconnected)
            listener.cancel()
            body_file.close()
        if response is None:
            await signals.request_finished.asend(sender=self.__class__)
        else:
            await sync_to_async(response.close)()

    async def send_response(self, response, send):
        """Event streams go straight to ASGI ``send``, one message per batch (chat.transport); the rest as Django does.

        A client disconnect still cancels this (Django's ``handle``), which
        ends the stream and leaves its feed.
        """
        if isinstance(response, EventStreamResponse):
            await send_event_stream(response, _response_start(response), send)
        else:
            await super().send_response(response, send)


def _path(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _response_start(response) -> dict:
    """The ``http.response.start`` message Django would send for ``response`` (headers, cookies)."""
    headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
    headers += [(b"Set-Cookie", c.output(header="").encode("ascii").strip()) for c in response.cookies.values()]
    return {"type": "http.response.start", "status": response.status_code, "headers": headers}


django_application = ChatASGIHandler()

from django.conf import settings  # noqa: E402

if settings.SERVE_STATIC:
    from chat.staticfiles import StaticFilesHandler

    django_application = StaticFilesHandler(django_application)

from chat.reaper import ensure_background, shutdown  # noqa: E402  (needs Django set up)


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    # Daphne has no lifespan events: start the process's reaper with the
    # first connection (``manage.py serve`` starts it before any).
    ensure_background()
    if scope["type"] != "http":
        raise ValueError(f"unsupported connection type {scope['type']!r}")
    await django_application(scope, receive, send)


async def lifespan(receive, send) -> None:
    """The ASGI lifespan protocol, for servers that send it (uvicorn, hypercorn; not daphne).

    ``lifespan.startup`` starts this process's reaper and purge loops;
    ``lifespan.shutdown`` ends its generations as ``interrupted`` with their
    content (viewers told, as on daphne's SIGTERM) and stops the loops.
    Replies ``*.complete``, or ``lifespan.shutdown.failed`` with the error.
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            ensure_background()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await shutdown()
            except Exception as exc:  # the server reports it; the process ends all the same
                await send({"type": "lifespan.shutdown.failed", "message": repr(exc)})
            else:
                await send({"type": "lifespan.shutdown.complete"})
            return
