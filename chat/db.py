"""ORM calls from async code, on the process's ORM threads.

channels' ``database_sync_to_async`` is thread-sensitive: inside a request it
runs in that request's own thread, which lives as long as the request, so
every open event stream and every generation would hold an OS thread. ``adb``
runs on a small pool of threads shared by the whole process instead, closing
broken connections before and after the call as channels does.

Those threads keep their SQLite connection: opening one costs about a
millisecond of CPU (the PRAGMAs, Django's SQL function registrations), and
closing the last one of a process checkpoints the WAL. Django's own request
threads keep ``CONN_MAX_AGE = 0``: a thread per request would otherwise leave
its connection open until the garbage collector finds it. On PostgreSQL,
connections come from the psycopg pool when it is installed (see settings),
so closing one after a call only hands it back.

The in-process test suite turns this off (``CHAT_DB_SHARED_POOL = False``):
its test transaction lives on the test's own thread and connection.
"""

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from channels.db import DatabaseSyncToAsync
from django.conf import settings
from django.db import connections
from django.db.backends.signals import connection_created
from django.dispatch import receiver

# As many as asyncio's default executor would have on this machine's 2 cores; SQLite writes
# queue on one lock whatever the count, and every thread holds a connection.
ORM_THREADS = 6

_orm_thread = threading.local()
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _mark_orm_thread() -> None:
    _orm_thread.keeps_connections = True


def orm_executor() -> ThreadPoolExecutor:
    """The process's ORM threads (created on first use)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(ORM_THREADS, thread_name_prefix="orm", initializer=_mark_orm_thread)
        return _executor


@receiver(connection_created, dispatch_uid="chat.db.keep_orm_thread_connections")
def _keep_orm_thread_connections(sender, connection, **kwargs):
    # No expiry for a SQLite connection an ORM thread opened: close_old_connections()
    # then closes it only after an error that leaves it unusable, or an open transaction.
    if connection.vendor == "sqlite" and getattr(_orm_thread, "keeps_connections", False):
        connection.close_at = None
        connection.chat_file = _file_identity(connection)


def _file_identity(connection) -> tuple[int, int] | None:
    """(device, inode) of the SQLite file at the connection's path now; None if there is none."""
    try:
        found = os.stat(connection.settings_dict["NAME"])
    except (OSError, TypeError, ValueError):
        return None
    return found.st_dev, found.st_ino


def _close_moved_databases() -> None:
    """Close this thread's kept SQLite connection if its file is no longer the one at its path.

    A kept connection goes on using the file it opened: after the file was
    moved away or replaced (a restore from a backup), the next connection
    must open what is at the path now, or fail as a fresh one would.
    """
    for connection in connections.all(initialized_only=True):
        kept = getattr(connection, "chat_file", None)
        if connection.connection is not None and kept is not None and _file_identity(connection) != kept:
            connection.close()


class _OrmCall(DatabaseSyncToAsync):
    def thread_handler(self, loop, *args, **kwargs):
        _close_moved_databases()
        return super().thread_handler(loop, *args, **kwargs)


def adb(func):
    """``func`` as a coroutine function running on the process's ORM threads."""

    @functools.wraps(func)
    async def call(*args, **kwargs):
        if settings.CHAT_DB_SHARED_POOL:
            runner = _OrmCall(func, thread_sensitive=False, executor=orm_executor())
        else:
            runner = DatabaseSyncToAsync(func, thread_sensitive=True)
        return await runner(*args, **kwargs)

    return call
