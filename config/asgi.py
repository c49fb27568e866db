"""ASGI entry point: daphne serves ``config.asgi:application``."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

import django  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402

django.setup(set_prefix=False)


class ChatASGIHandler(ASGIHandler):
    """Django's handler, but event streams run outside a per-request thread context.

    Django gives each request its own thread for thread-sensitive sync code
    (middleware hooks) for as long as the request lasts: for an event stream
    that is as long as the tab is open, an OS thread per viewer. Event streams
    (and message posts, which may stream) use the process's single shared sync
    thread instead; their ORM calls run on the shared pool (see chat.db).
    """

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/api/") and path.endswith(("/events/", "/messages/")):
            await self.handle(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


django_application = ChatASGIHandler()

from django.conf import settings  # noqa: E402

if settings.SERVE_STATIC:
    from chat.staticfiles import StaticFilesHandler

    django_application = StaticFilesHandler(django_application)

from chat.streaming import ensure_background  # noqa: E402  (needs Django set up)


async def application(scope, receive, send):
    # Daphne has no lifespan events: start the process's reaper with the
    # first connection (``manage.py serve`` starts it before any).
    ensure_background()
    if scope["type"] != "http":
        raise ValueError(f"unsupported connection type {scope['type']!r}")
    await django_application(scope, receive, send)
