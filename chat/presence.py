"""Who is viewing each conversation, on every process: ``presence`` events in the conversation's log.

Each open stream that shows presence enters the conversation's viewers in
the event log (Redis: a sorted set per conversation, member = the stream's
token + username, score = expiry; in-process without Redis) and leaves when
it ends. An entry expires unless its process's heartbeat round refreshes it,
so a crashed process's viewers drop out within a heartbeat or two. A change
is announced as an event appended to the conversation's log (so it crosses
processes, has an id, is ordered and resumable), and only when the viewers
differ from the last ones announced: ``EventLog.presence_announce`` compares
and appends in one atomic step. Changes in this process are coalesced
(``CHAT_PRESENCE_COALESCE_SECONDS``, 0.3 s): a burst of tabs opening makes a handful of events.
The process's hub (``chat.fanout``) owns one, and gives it the event log.
"""

from __future__ import annotations

import asyncio
import uuid

from django.conf import settings

from .events import Event


def presence_ttl(heartbeat_seconds: float) -> float:
    """How long a viewer's entry lives unless refreshed: the heartbeat round refreshes it every heartbeat."""
    return heartbeat_seconds * 1.5


class Presence:
    """This process's viewers per conversation, entered in the log, and the announcements of their changes.

    ``hub``: its ``log``, its ``spawn`` (tasks it keeps), its
    ``dispatch(conversation_id, event)``, which hands an announcement this
    process appended to its own viewers (the log publishes it to the others).
    """

    def __init__(self, hub):
        self.hub = hub
        # conversation -> token -> username, for every stream here that shows presence.
        self.local: dict[str, dict[str, str]] = {}
        self.changed: set[str] = set()
        self.flush_at: asyncio.TimerHandle | None = None

    async def enter(self, conversation_id: str, username: str) -> tuple[str, list[str]]:
        """Count a new stream of ``username`` as viewing; its token (for ``leave``) and the viewers now."""
        token = uuid.uuid4().hex
        viewers = await self.hub.log.presence_enter(conversation_id, token + username, ttl=self.ttl)
        self.local.setdefault(conversation_id, {})[token] = username
        self._changed(conversation_id)
        return token, viewers

    @property
    def ttl(self) -> float:
        return presence_ttl(self.hub.heartbeat_seconds)

    def leave(self, conversation_id: str, token: str) -> None:
        """The stream ``token`` ended: it drops out at once, and the change is announced."""
        entries = self.local.get(conversation_id, {})
        username = entries.pop(token, None)
        if not entries:
            self.local.pop(conversation_id, None)
        if username is not None:
            self.hub.spawn(self._leave(conversation_id, token + username))

    async def _leave(self, conversation_id: str, member: str) -> None:
        try:
            await self.hub.log.presence_leave(conversation_id, member)
        finally:
            self._changed(conversation_id)

    def _changed(self, conversation_id: str) -> None:
        self.changed.add(conversation_id)
        if self.flush_at is None:
            self.flush_at = asyncio.get_running_loop().call_later(
                settings.CHAT_PRESENCE_COALESCE_SECONDS, self._flush_soon
            )

    def _flush_soon(self) -> None:
        self.flush_at = None
        changed, self.changed = self.changed, set()
        self.hub.spawn(self._announce(changed))

    async def _announce(self, conversation_ids) -> None:
        # Every changed conversation in one round trip.
        presence = [(conversation_id, self.members(conversation_id)) for conversation_id in conversation_ids]
        self.announced(await self.hub.log.refresh_many([], slot_ttl=0, presence=presence, presence_ttl=self.ttl))

    def members(self, conversation_id: str) -> list[str]:
        return [token + username for token, username in self.local.get(conversation_id, {}).items()]

    def entries(self) -> list[tuple[str, list[str]]]:
        """Each conversation viewed here with its members: what the heartbeat round refreshes and re-announces."""
        return [(conversation_id, self.members(conversation_id)) for conversation_id in list(self.local)]

    def announced(self, events: list[Event]) -> None:
        """Deliver the announcements the heartbeat round appended (viewers that expired elsewhere)."""
        for event in events:
            self.hub.dispatch(event.log_key, event)
