"""Events published from sync code once its write has committed: conversation changes, access changes.

Sync callers (services, auth receivers, the admin) call these after the
commit; a failure is logged, never raised. A conversation's change goes to
its own log (its open streams) and, fanned out on write, to the own logs of
the people it concerns (``GET /api/events/``: their conversation lists).
Imports only the fan-out below it.
"""

import logging

from asgiref.sync import async_to_sync

from . import fanout
from .events import CONVERSATION_ADDED, CONVERSATION_DELETED, CONVERSATION_REMOVED, CONVERSATION_UPDATED, dumps

logger = logging.getLogger(__name__)


def _publish_after_commit(what: str, publish_call, *args, **kwargs) -> None:
    """Run the coroutine function ``publish_call`` from sync code after its write committed.

    A failure is logged, never raised: the write stands, and streams that
    missed the event catch up through their periodic re-check or ``resync``.
    """
    try:
        async_to_sync(publish_call)(*args, **kwargs)
    except Exception as exc:
        logger.warning("%s not published (%s); open streams catch up on their next check", what, exc)


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
    _publish_after_commit("conversation.updated", _to_logs, None, user_events)


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


def _removed(conversation_id: str, user_ids) -> list[tuple]:
    data = dumps({"id": str(conversation_id)})
    return [(user_id, CONVERSATION_REMOVED, data) for user_id in user_ids]


def access_changed(*, user_id, ended_session: str | None = None) -> None:
    """Tell ``user_id``'s open streams on every process to re-validate (or that one session ended); never raises."""
    _publish_after_commit(
        f"access change of user {user_id}", fanout.announce_access_change, user_id, ended_session=ended_session
    )
