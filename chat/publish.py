"""Events published from sync code once its write has committed: conversation changes, access changes.

Sync callers (services, auth receivers, the admin) call these after the
commit; a failure is logged, never raised. Imports only the fan-out below it.
"""

import logging

from asgiref.sync import async_to_sync

from . import fanout
from .events import CONVERSATION_DELETED, CONVERSATION_UPDATED, dumps

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


def conversation_updated(*, conversation: dict) -> None:
    """Emit ``conversation.updated`` with the conversation's body (also ends removed members' streams); never raises."""
    data = dumps(conversation)
    _publish_after_commit("conversation.updated", fanout.publish, conversation["id"], CONVERSATION_UPDATED, data)


def conversation_deleted(*, conversation_id) -> None:
    """Emit ``conversation.deleted``: every open stream of the conversation ends; never raises."""
    conversation_id = str(conversation_id)
    data = dumps({"id": conversation_id})
    _publish_after_commit("conversation.deleted", fanout.publish, conversation_id, CONVERSATION_DELETED, data)


def access_changed(*, user_id, ended_session: str | None = None) -> None:
    """Tell ``user_id``'s open streams on every process to re-validate (or that one session ended); never raises."""
    _publish_after_commit(
        f"access change of user {user_id}", fanout.announce_access_change, user_id, ended_session=ended_session
    )
