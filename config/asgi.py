"""ASGI entry point: daphne serves ``config.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

django_application = get_asgi_application()

from django.conf import settings  # noqa: E402

if settings.SERVE_STATIC:
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    django_application = ASGIStaticFilesHandler(django_application)

from chat.streaming import ensure_background  # noqa: E402  (needs Django set up)


async def application(scope, receive, send):
    # Daphne has no lifespan events: start the process's reaper with the
    # first connection (``manage.py serve`` starts it before any).
    ensure_background()
    if scope["type"] != "http":
        raise ValueError(f"unsupported connection type {scope['type']!r}")
    await django_application(scope, receive, send)
