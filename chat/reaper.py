"""Crash recovery and housekeeping: the reaper and purge loops each process runs in the background.

The reaper ends as ``interrupted`` a streaming message whose generation is
gone (no process holds its lease); the purge loop deletes what the retention
settings say has expired; ``shutdown`` ends this process's generations on SIGTERM.
"""

import asyncio
import json
import logging

from django.conf import settings

from . import generation, selectors, services
from .db import adb
from .eventlog import get_event_log

logger = logging.getLogger(__name__)

# This process's background loops (reaper, purge), by event loop and name.
_background: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Task] = {}

# Expired conversations are purged at most once this often across all processes
# (a lock in the event log); each process asks every PURGE_CHECK_SECONDS, so a
# run is at most that late. The first ask waits too: start-up stays light.
PURGE_EVERY_SECONDS = 3600
PURGE_CHECK_SECONDS = 300

# Streaming messages without a lease on the last pass: ended if still so on the next.
_suspects: set[str] = set()


async def reap_interrupted(*, grace_seconds: float | None = None, confirm: bool = True) -> int:
    """End as ``interrupted`` every streaming message whose generation is gone.

    A message is gone when no process holds its lease, on two passes in a
    row (one with ``confirm=False``), and it is older than ``grace_seconds``
    (default: the lease length). Emits
    ``message.interrupted`` for each; returns how many it ended.
    """
    grace = settings.CHAT_LEASE_SECONDS if grace_seconds is None else grace_seconds
    log = get_event_log()
    ended = 0
    missing = set()
    for message_id, conversation_id in await adb(selectors.message_streaming_list)(older_than_seconds=grace):
        message_id = str(message_id)
        if message_id in generation.running or await log.has_lease(message_id):
            continue
        missing.add(message_id)
        # A Redis restart wipes every lease until the generations renew them:
        # only a lease missing on two passes in a row means the process is gone.
        if confirm and message_id not in _suspects:
            continue
        message = await adb(services.message_interrupt)(
            message_id=message_id,
            reason=generation.INTERRUPTED_REASON,
            partial=await _partial_in_log(log, str(conversation_id), message_id),
        )
        if message is not None:
            logger.warning("message %s interrupted: its generation is gone", message_id)
            await generation.publish_final(message)
            ended += 1
    _suspects.clear()
    _suspects.update(missing)
    return ended


async def _partial_in_log(log, conversation_id: str, message_id: str) -> tuple[int, str, str] | None:
    """(seq, content, reasoning) of the message as the event log last had it, or None.

    With Redis that is everything published before the generating process
    died, newer than its last database checkpoint; the in-process log of a
    process that died had nothing to give.
    """
    try:
        _, states = await log.cut(conversation_id)
    except Exception as exc:
        logger.warning("reaper: the partial reply of %s not read from the event log (%s)", message_id, exc)
        return None
    for state in states:
        if json.loads(state.message).get("id") == message_id:
            return state.seq, state.content, state.reasoning
    return None


async def _reaper_loop() -> None:
    # At start-up with the in-process log no generation of an earlier process can be alive.
    first_grace = 0.0 if not settings.REDIS_URL else None
    try:
        await reap_interrupted(grace_seconds=first_grace, confirm=bool(settings.REDIS_URL))
    except Exception:
        logger.exception("reaper: first pass failed")
    while True:
        await asyncio.sleep(settings.CHAT_REAPER_INTERVAL_SECONDS)
        try:
            await reap_interrupted()
        except Exception:
            logger.exception("reaper: pass failed; trying again later")


async def purge_when_due(*, log=None):
    """Purge what the retention settings say has expired, unless a process did in the last hour.

    Takes the ``purge`` lock in the event log (``log``, default this
    process's) for PURGE_EVERY_SECONDS; only its taker runs
    ``services.conversation_purge_expired`` (which writes one ``purged``
    audit row). Returns that run's result, or None when not due.
    """
    if not await (log or get_event_log()).try_lock("purge", PURGE_EVERY_SECONDS):
        return None
    result = await adb(services.conversation_purge_expired)(dry_run=False)
    logger.info("purge: %s", result.counts)
    return result


async def _purge_loop() -> None:
    while True:
        await asyncio.sleep(PURGE_CHECK_SECONDS)
        try:
            await purge_when_due()
        except Exception:
            logger.exception("purge: run failed; trying again later")


def ensure_background() -> None:
    """Start this process's reaper and purge loops on the running loop, once each."""
    loop = asyncio.get_running_loop()
    for name, job in (("reaper", _reaper_loop), ("purge", _purge_loop)):
        task = _background.get((loop, name))
        if task is None or task.done():
            _background[(loop, name)] = loop.create_task(job(), name=name)


async def shutdown(timeout: float = 10.0) -> None:
    """End this process's generations as ``interrupted`` with their content (SIGTERM)."""
    tasks = [g.task for g in list(generation.running.values()) if g.task is not None]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    for task in _background.values():
        task.cancel()
