"""Events published from sync code once its write has committed: conversation changes, access changes.

Sync callers (services, auth receivers, the admin) call these after the
commit; a failure is logged, never raised. A conversation's change goes to
its own log (its open streams) and, fanned out on write, to the own logs of
the people it concerns (``GET /api/events/``: their conversation lists).
Imports only the fan-out below it.
"""

import asyncio
import logging
import os

from asgiref.sync import SyncToAsync, async_to_sync

from . import fanout
from .events import CONVERSATION_ADDED, CONVERSATION_DELETED, CONVERSATION_REMOVED, CONVERSATION_UPDATED, dumps

logger = logging.getLogger(__name__)

# Publications handed to the event loop by ``_publish_after_commit(wait=False)``, kept referenced until done.
_handed_over: set[asyncio.Task] = set()


def _publish_after_commit(what: str, publish_call, *args, wait: bool = True, **kwargs) -> None:
    """Run the coroutine function ``publish_call`` from sync code after its write committed.

    A failure is logged, never raised: the write stands, and streams that
    missed the event catch up through their periodic re-check or ``resync``.
    ``wait=False`` on an ORM thread of an event loop (``sync_to_async``,
    ``chat.db.adb``): the publication is handed to that loop, which runs it
    after this call returns, and this thread goes on at once instead of
    waiting for the store (a message post's store hop). Elsewhere it waits.
    """
    loop = None if wait else _caller_loop()
    if loop is not None:
        try:
            loop.call_soon_threadsafe(_hand_over, what, publish_call, args, kwargs)
            return
        except RuntimeError:
            pass  # the loop closed meanwhile: publish from here
    try:
        async_to_sync(publish_call)(*args, **kwargs)
    except Exception as exc:
        _not_published(what, exc)


def _not_published(what: str, exc: BaseException) -> None:
    logger.warning("%s not published (%s); open streams catch up on their next check", what, exc)


def _caller_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop whose ``sync_to_async`` call this thread is serving, if any."""
    try:
        asyncio.get_running_loop()
        return None  # on a loop's own thread: async_to_sync refuses; nothing to hand over to
    except RuntimeError:
        pass
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) != os.getpid():
        return None
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    return loop if loop is not None and loop.is_running() else None


def _hand_over(what: str, publish_call, args, kwargs) -> None:
    """On the loop: run the publication in a task, a failure logged."""
    task = asyncio.get_running_loop().create_task(publish_call(*args, **kwargs), name=what)
    _handed_over.add(task)
    task.add_done_callback(lambda done: _handed_over.discard(done) or _task_done(what, done))


def _task_done(what: str, task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        _not_published(what, task.exception())


async def _to_logs(conversation_event: tuple | None, user_events: list[tuple]) -> None:
    """The conversation's own event (if any), then the users' events in one round trip."""
    if conversation_event is not None:
        await fanout.publish(*conversation_event)
    if user_events:
        await fanout.publish_to_users(user_events)


def conversation_updated(*, conversation: dict, user_ids=(), added=(), removed=()) -> None:
    """Emit ``conversation.updated`` with the conversation's body (also ends removed members' streams); never raises.

    On the users' own streams: ``conversation.updated`` to ``user_ids`` (who
    can see it), ``conversation.added`` to ``added`` (just given access; the
    body), ``conversation.removed`` to ``removed`` (just lost it).
    """
    data = dumps(conversation)
    user_events = [(user_id, CONVERSATION_UPDATED, data) for user_id in user_ids if user_id not in added]
    user_events += [(user_id, CONVERSATION_ADDED, data) for user_id in added]
    user_events += _removed(conversation["id"], removed)
    conversation_event = (conversation["id"], CONVERSATION_UPDATED, data)
    _publish_after_commit("conversation.updated", _to_logs, conversation_event, user_events)


def conversation_touched(*, conversation: dict, user_ids) -> None:
    """A message was posted: ``conversation.updated`` on ``user_ids``' own streams only (their lists reorder).

    Nothing goes to the conversation's log, whose streams see the message itself.
    """
    data = dumps(conversation)
    user_events = [(user_id, CONVERSATION_UPDATED, data) for user_id in user_ids]
    # Handed to the post's event loop: the store's ORM thread does not wait for Redis.
    _publish_after_commit("conversation.updated", _to_logs, None, user_events, wait=False)


def conversation_added(*, conversation: dict, user_ids) -> None:
    """``conversation.added`` on ``user_ids``' own streams (created; restored by an admin); never raises."""
    data = dumps(conversation)
    user_events = [(user_id, CONVERSATION_ADDED, data) for user_id in user_ids]
    _publish_after_commit("conversation.added", _to_logs, None, user_events)


def conversation_deleted(*, conversation_id, user_ids=()) -> None:
    """Emit ``conversation.deleted``: every open stream of the conversation ends; never raises.

    ``conversation.removed`` on ``user_ids``' own streams (the owner and every member).
    """
    conversation_id = str(conversation_id)
    data = dumps({"id": conversation_id})
    conversation_event = (conversation_id, CONVERSATION_DELETED, data)
    _publish_after_commit("conversation.deleted", _to_logs, conversation_event, _removed(conversation_id, user_ids))


def conversations_purged(*, people: dict) -> None:
    """The retention purge deleted these conversations for good; never raises.

    ``people``: conversation id -> the users who could see it (owner and
    members). Each conversation's open streams end (``conversation.deleted``,
    a round trip each), then those users get ``conversation.removed`` on
    their own streams (one round trip for all).
    """
    if people:
        _publish_after_commit("conversations purged", _purged_to_logs, people)


async def _purged_to_logs(people: dict) -> None:
    for conversation_id in people:
        await fanout.publish(str(conversation_id), CONVERSATION_DELETED, dumps({"id": str(conversation_id)}))
    user_events = [event for cid, user_ids in people.items() for event in _removed(cid, user_ids)]
    if user_events:
        await fanout.publish_to_users(user_events)


def _removed(conversation_id: str, user_ids) -> list[tuple]:
    data = dumps({"id": str(conversation_id)})
    return [(user_id, CONVERSATION_REMOVED, data) for user_id in user_ids]


def access_changed(*, user_id, ended_session: str | None = None) -> None:
    """Tell ``user_id``'s open streams on every process to re-validate (or that one session ended); never raises."""
    _publish_after_commit(
        f"access change of user {user_id}", fanout.announce_access_change, user_id, ended_session=ended_session
    )
