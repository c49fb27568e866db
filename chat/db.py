"""ORM calls from async code, on the shared thread pool.

channels' ``database_sync_to_async`` is thread-sensitive: inside a request it
runs in that request's own thread, which lives as long as the request, so
every open event stream and every generation would hold an OS thread. ``adb``
runs on the shared executor instead, closing stale connections before and
after the call as channels does (``CONN_MAX_AGE = 0``).

The in-process test suite turns this off (``CHAT_DB_SHARED_POOL = False``):
its test transaction lives on the test's own thread and connection.
"""

import functools

from channels.db import DatabaseSyncToAsync
from django.conf import settings


def adb(func):
    """``func`` as a coroutine function running on the shared thread pool."""

    @functools.wraps(func)
    async def call(*args, **kwargs):
        runner = DatabaseSyncToAsync(func, thread_sensitive=not settings.CHAT_DB_SHARED_POOL)
        return await runner(*args, **kwargs)

    return call
