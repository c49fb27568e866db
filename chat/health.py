"""Health checks for load balancers and orchestrators: /healthz (alive) and /readyz (database and Redis answer)."""

import asyncio
import copy
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import load_backend
from django.http import JsonResponse

from .eventlog import get_event_log

logger = logging.getLogger(__name__)

# Each readiness check gives up after this long (seconds).
READY_TIMEOUT_SECONDS = 2.0


def healthz(request):
    """The process answers: 200, touching neither the database nor Redis."""
    return JsonResponse({"status": "ok"})


def _check_database():
    """Read the migrations table on a connection of its own that gives up after READY_TIMEOUT_SECONDS.

    Its own connection: the shared one could be mid-transaction in this
    thread, and the configured timeouts (SQLite's 20 s lock wait, libpq's
    none) are too long for a probe.
    """
    settings_dict = copy.deepcopy(connections.settings[DEFAULT_DB_ALIAS])
    options = settings_dict.setdefault("OPTIONS", {})
    if settings_dict["ENGINE"] == "django.db.backends.postgresql":
        options["connect_timeout"] = max(1, round(READY_TIMEOUT_SECONDS))
    elif settings_dict["ENGINE"] == "django.db.backends.sqlite3":
        options["timeout"] = READY_TIMEOUT_SECONDS
    database = load_backend(settings_dict["ENGINE"]).DatabaseWrapper(settings_dict, DEFAULT_DB_ALIAS)
    try:
        with database.cursor() as cursor:
            cursor.execute("SELECT 1 FROM django_migrations LIMIT 1")
    finally:
        database.close()


async def _ready(name, check):
    try:
        await asyncio.wait_for(check, timeout=READY_TIMEOUT_SECONDS)
    except Exception as exc:  # any failure means not ready
        logger.warning("readyz: %s unreachable: %s: %s", name, type(exc).__name__, exc)
        return name
    return None


async def readyz(request):
    """200 when the database and Redis (when REDIS_URL is set) answer; 503 naming what failed.

    Both are checked at once, each given READY_TIMEOUT_SECONDS, so a probe
    gets its answer within about that long even when a host drops packets.
    """
    results = await asyncio.gather(
        _ready("database", sync_to_async(_check_database, thread_sensitive=False)()),
        _ready("redis", get_event_log().ping()),
    )
    failed = [name for name in results if name]
    if failed:
        return JsonResponse(
            {
                "status": "unavailable",
                "failed": failed,
                "error": {"code": "not_ready", "message": f"Not ready: {' and '.join(failed)} unreachable."},
            },
            status=503,
        )
    return JsonResponse(
        {"status": "ok", "checks": {"database": "ok", "redis": "ok" if settings.REDIS_URL else "not configured"}}
    )
