"""One LLM reply: provider -> event log / fan-out -> services.

A ``Generation`` is an asyncio task of the process that accepted the POST,
independent of any HTTP response: closing every tab does not stop it. It
holds a lease in the event log while it runs; a streaming message whose lease
lapsed (its process died) is ended ``interrupted`` by any process's reaper
(``chat.reaper``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import InterfaceError, OperationalError

from . import services
from .db import adb
from .eventlog import StateChange, get_event_log
from .events import FINAL_EVENTS, MESSAGE_CREATED, MESSAGE_DELTA, MESSAGE_RETRYING, dumps
from .fanout import generation_group, publish, publish_batch
from .providers import provider_for
from .providers.base import ChatMessage, Finish, ProviderError, ReasoningDelta, TextDelta, Usage, storable
from .providers.catalog import configured
from .providers.retry import Route
from .serializers import message_to_dict
from .tokens import estimate_usage

logger = logging.getLogger(__name__)

INTERRUPTED_REASON = "The server generating this reply stopped before it finished. Send the message again to retry."

STORAGE_FAILED_REASON = (
    "The reply could not be stored as it was received; what could be stored is shown. Send the message again to retry."
)

# The delta window (CHAT_DELTA_WINDOW_SECONDS) applies while this process runs at least this many
# generations: below that, publishing each chunk costs CPU the process has to spare.
COALESCE_FROM_GENERATIONS = 8

# This process's running generations, by message id (also keeps their tasks referenced).
running: dict[str, Generation] = {}


def get_provider(model: str) -> Route:
    """The route to the provider serving ``model`` (a catalog id), retrying for up to LLM_RETRY_SECONDS.

    Raises ProviderError (``unknown_model``) when no provider serves it any more.
    """
    catalog = configured()
    info = catalog.model(model)
    if info is None:
        raise ProviderError("unknown_model", f"The model {model!r} is no longer offered; choose another one.")
    provider = provider_for(catalog.providers[info.provider])
    return Route(provider, upstream=info.upstream, retry_seconds=settings.LLM_RETRY_SECONDS)


class ReplyLimitReached(Exception):
    """The reply passed CHAT_MAX_REPLY_CHARS or CHAT_MAX_REPLY_SECONDS; it ends ``failed`` with ``code``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Generation:
    """Streams one assistant message from the provider to the event log, then stores it once."""

    def __init__(self, *, conversation, history, accepted_at: float, message=None, user_message=None, model=None):
        self.conversation_id = str(conversation.id)
        self.system_prompt = conversation.system_prompt
        self.conversation = conversation
        self.model = model or message.model
        self.accepted_at = accepted_at
        self.history = history
        # Set once message.created is logged for both messages: no delta may precede it.
        self.announced = asyncio.Event()
        self.seq = 0
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None
        self.stopping = False
        self.pump: asyncio.Task | None = None
        self.task: asyncio.Task | None = None
        self._publisher: asyncio.Task | None = None
        self._published_at = 0.0
        self._pending: list[tuple[str, str]] = []
        self._published_chars = 0
        self._published_reasoning_chars = 0
        # Content + reasoning characters taken, against CHAT_MAX_REPLY_CHARS.
        self._chars = 0
        self._checkpointed_at = time.monotonic()
        # (seq, content chars, reasoning chars) the last checkpoint stored: the next one appends after it.
        # None until then: the first checkpoint writes in full, whatever the placeholder held.
        self._stored: tuple[int, int, int] | None = None
        self._publish_ok = True
        if message is not None:
            self.bind(message, user_message)

    def bind(self, message, user_message=None) -> None:
        """The stored reply this generation fills (and the user's message it answers, None for a regenerate)."""
        self.message = message
        self.message_id = str(message.id)
        self.user_message = user_message
        self._message_json = dumps(message_to_dict(message))

    def request(self) -> None:
        """Send the upstream request now (the pump), before the reply is stored; ``start`` or ``abandon`` follows.

        What arrives meanwhile waits here: nothing is published before
        ``message.created`` of both messages.
        """
        if self.pump is None:
            self.pump = asyncio.create_task(self._pump())

    def abandon(self) -> None:
        """Drop a generation whose messages were not stored: its upstream request is closed, nothing is published."""
        for task in (self.pump, self._publisher):
            if task is not None:
                task.cancel()
                # Whatever it raised has nobody to tell.
                task.add_done_callback(lambda done: done.cancelled() or done.exception())

    def request_stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            if self.pump is not None:
                self.pump.cancel()

    def start(self) -> asyncio.Task:
        """Run in a task of this process (``self.task``), registered in ``running`` until it has ended."""
        running[self.message_id] = self
        self.task = asyncio.create_task(self.run(), name=f"generation {self.message_id}")
        return self.task

    async def run(self) -> None:
        """Open the upstream request, announce both messages, stream, then store the final message and emit its
        final event (once)."""
        log = get_event_log()
        helpers = []
        status, error, shutting_down = "complete", (None, None), False
        try:
            if self.pump is None:
                self.request()
                # The upstream request goes out first; Redis bookkeeping runs alongside it.
                await asyncio.sleep(0)
            await self._announce()
            helpers = [asyncio.create_task(self._keep_lease()), asyncio.create_task(self._listen_for_stop())]
            await self.pump
        except (ProviderError, ReplyLimitReached) as exc:
            status, error = "failed", (exc.code, exc.message)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                # The process is shutting down: record what we have, then stop.
                status, error, shutting_down = "interrupted", ("interrupted", INTERRUPTED_REASON), True
                self.pump.cancel()
            else:
                status = "cancelled"
        except Exception:
            logger.exception("generation %s failed", self.message_id)
            status, error = "failed", ("internal_error", "The reply failed because of a server error. Try again.")
        finally:
            for helper in helpers:
                helper.cancel()
        try:
            await self._finish(status, error)
        finally:
            running.pop(self.message_id, None)
            try:
                await log.release_lease(self.message_id)
            except Exception:
                logger.warning("could not release the lease of %s", self.message_id)
        if shutting_down:
            raise asyncio.CancelledError

    async def _announce(self) -> None:
        """Log ``message.created`` for the user's message (if any) and the reply (with its streaming state), in one
        round trip.

        Never raises: both messages are stored and the reply goes on; viewers
        whose feed missed these events resync from the REST endpoint. Sets
        ``announced`` either way.
        """
        items = []
        if self.user_message is not None:
            items.append((MESSAGE_CREATED, dumps(message_to_dict(self.user_message)), None, str(self.user_message.id)))
        start = StateChange("start", self.message_id, message=self._message_json)
        items.append((MESSAGE_CREATED, self._message_json, start, None))
        try:
            # Both in one round trip to the store.
            await publish_batch(self.conversation_id, items)
        except Exception as exc:
            logger.warning("conversation %s: announcing a new reply failed (%s)", self.conversation_id, exc)
        finally:
            self.announced.set()

    async def _pump(self) -> None:
        messages = [ChatMessage("system", self.system_prompt)] if self.system_prompt else []
        messages += [ChatMessage(role, content) for role, content in self.history]
        stream = get_provider(self.model).stream(messages=messages, on_retry=self._retrying)
        limit = settings.CHAT_MAX_REPLY_SECONDS
        deadline = asyncio.timeout_at(self.accepted_at + limit if limit else None)
        try:
            async with deadline:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        self._delta(content=event.text)
                    elif isinstance(event, ReasoningDelta):
                        self._delta(reasoning=event.text)
                    elif isinstance(event, Usage):
                        self.usage = event
                    elif isinstance(event, Finish):
                        self.finish_reason = event.reason
        except TimeoutError:
            if not deadline.expired():
                raise
            raise ReplyLimitReached(
                "reply_timeout", f"The reply was stopped at the server's time limit of {limit:g} seconds."
            ) from None
        finally:
            # Closes the upstream response at once, also when stopped.
            await stream.aclose()

    async def _retrying(self, attempt: int, delay: float) -> None:
        """Tell viewers the provider is busy: ``message.retrying`` (not logged as state: nothing was received)."""
        await self.announced.wait()
        data = {"message_id": self.message_id, "attempt": attempt, "delay": delay}
        try:
            await publish(self.conversation_id, MESSAGE_RETRYING, dumps(data), message_id=self.message_id)
        except Exception as exc:
            logger.warning("generation %s: retry notice not published (%s)", self.message_id, exc)

    def _delta(self, *, content: str = "", reasoning: str = "") -> None:
        """Take one provider delta; publishing happens in ``_publish_pending``.

        While a publish is in flight, further provider chunks are merged into
        the next delta: no added latency when the provider is slow, far fewer
        Redis round trips when it is fast or the process is busy.
        """
        if not content and not reasoning:
            return
        cap = settings.CHAT_MAX_REPLY_CHARS
        over = bool(cap) and self._chars + len(content) + len(reasoning) > cap
        if over:
            # Keep the text through the cap: viewers get it, and it is what is stored.
            room = cap - self._chars
            content = content[:room]
            reasoning = reasoning[: room - len(content)]
        self._chars += len(content) + len(reasoning)
        if content or reasoning:
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            self.content.append(content)
            self.reasoning.append(reasoning)
            self._pending.append((content, reasoning))
            if self._publisher is None or self._publisher.done():
                self._publisher = asyncio.create_task(self._publish_pending())
        if over:
            raise ReplyLimitReached(
                "reply_too_long", f"The reply was stopped at the server's limit of {cap:,} characters."
            )

    async def _publish_pending(self) -> None:
        await self.announced.wait()
        while self._pending:
            # A process with CPU to spare sends every chunk as it comes; a busy one coalesces.
            window = settings.CHAT_DELTA_WINDOW_SECONDS if len(running) >= COALESCE_FROM_GENERATIONS else 0.0
            # Leading edge: a delta after a quiet spell goes at once; the ones that
            # follow within the window go together at its end, as one delta. The
            # windows end on one clock for the whole process (multiples of the
            # window), so its generations' deltas reach the log in one batch.
            if window and time.monotonic() - self._published_at < window:
                await _window_end(int(self._published_at // window) + 1, window)
            self._published_at = time.monotonic()
            content = "".join(c for c, _ in self._pending)
            reasoning = "".join(r for _, r in self._pending)
            self._pending.clear()
            self.seq += 1
            self._published_chars += len(content)
            self._published_reasoning_chars += len(reasoning)
            data = {"message_id": self.message_id, "seq": self.seq, "content": content}
            if reasoning:
                data["reasoning"] = reasoning
            change = StateChange("delta", self.message_id, seq=self.seq, content=content, reasoning=reasoning)
            try:
                _, lost = await publish(self.conversation_id, MESSAGE_DELTA, dumps(data), change)
                if lost or not self._publish_ok:
                    # The log's store restarted: give it the whole message again for snapshots.
                    await get_event_log().seed(self.conversation_id, self._full_state())
                self._publish_ok = True
            except Exception:
                # Keep generating: the final message is stored either way, and
                # viewers whose feed saw a hole resync from the REST endpoint.
                if self._publish_ok:
                    logger.exception("generation %s: publishing failed; continuing", self.message_id)
                self._publish_ok = False
            self._maybe_checkpoint()

    def _maybe_checkpoint(self) -> None:
        """Have the process's checkpoint writer store the published part, if this reply's checkpoint is due.

        With Redis holding the partial reply (crash recovery reads it there)
        one is due every CHAT_CHECKPOINT_REDIS_SECONDS; without Redis, or
        while publishing to it fails, every CHAT_CHECKPOINT_SECONDS.
        """
        redis_holds_it = bool(settings.REDIS_URL) and self._publish_ok
        every = settings.CHAT_CHECKPOINT_REDIS_SECONDS if redis_holds_it else settings.CHAT_CHECKPOINT_SECONDS
        now = time.monotonic()
        if now - self._checkpointed_at >= every:
            self._checkpointed_at = now
            checkpoints().add(self)

    def checkpoint(self) -> dict:
        """The arguments of ``services.message_checkpoint`` for what is published now (through delta ``seq``)."""
        return dict(
            message_id=self.message_id,
            content="".join(self.content)[: self._published_chars],
            reasoning="".join(self.reasoning)[: self._published_reasoning_chars],
            seq=self.seq,
            stored=self._stored,
        )

    def checkpointed(self, entry: dict, written: bool) -> None:
        """Record that ``entry`` (from ``checkpoint``) was stored, so the next one appends after it."""
        if written:
            self._stored = (entry["seq"], len(entry["content"]), len(entry["reasoning"]))

    def _full_state(self) -> StateChange:
        return StateChange(
            "seed",
            self.message_id,
            seq=self.seq,
            content="".join(self.content)[: self._published_chars],
            reasoning="".join(self.reasoning)[: self._published_reasoning_chars],
            message=self._message_json,
        )

    async def _finish(self, status: str, error) -> None:
        # The final event follows both message.created events (a reply can fail at once).
        await self.announced.wait()
        # Every delta is published before the final event, so they add up to the stored content.
        while self._publisher is not None and not self._publisher.done():
            await asyncio.gather(self._publisher, return_exceptions=True)
        # The final state supersedes a checkpoint still waiting (one being written is a no-op after it).
        checkpoints().discard(self)
        now = time.monotonic()
        ttft = None if self.first_token_at is None else int((self.first_token_at - self.accepted_at) * 1000)
        content, reasoning = "".join(self.content), "".join(self.reasoning)
        reported = self.usage is not None and any(
            count is not None
            for count in (self.usage.prompt_tokens, self.usage.completion_tokens, self.usage.total_tokens)
        )
        estimate = self._estimate(status, error[0], content, reasoning)
        fields = dict(
            message_id=self.message_id,
            status=status,
            content=content,
            reasoning=reasoning,
            seq=self.seq,
            usage=self.usage if reported else estimate,
            usage_estimated=not reported and estimate is not None,
            finish_reason=self.finish_reason,
            error_code=error[0],
            error_message=error[1],
            time_to_first_token_ms=ttft,
            duration_ms=int((now - self.accepted_at) * 1000),
        )
        message = await self._store(fields, estimate)
        if message is not None:
            await publish_final(message)

    def _estimate(self, status: str, error_code: str | None, content: str, reasoning: str) -> Usage | None:
        """The usage estimated from the text sent and received (``chat.tokens``).

        None for a request the provider refused outright (failed before any
        text): providers bill nothing for it.
        """
        if status == "failed" and not self._chars and error_code != "reply_timeout":
            return None
        return estimate_usage(system_prompt=self.system_prompt, history=self.history, received=[content, reasoning])

    async def _store(self, fields: dict, estimate: Usage | None):
        """Write the final state: as received; if the database refuses that row, once made safe; if it refuses
        that too, as ``failed`` with ``storage_failed`` and the safe content.

        Returns the stored message, or None: it had ended already, or the
        database stayed unreachable (the reaper ends it from its checkpoint).
        """
        # Text without NULs and lone surrogates, and the estimate instead of the provider's counts.
        safe = {name: _storable(fields[name]) for name in ("content", "reasoning", "finish_reason", "error_message")}
        safe = {**fields, **safe, "usage": estimate, "usage_estimated": estimate is not None}
        failed = {
            **safe,
            "status": "failed",
            "finish_reason": None,
            "error_code": "storage_failed",
            "error_message": STORAGE_FAILED_REASON,
        }
        for attempt in (fields, safe, failed):
            for tries in range(5):
                try:
                    return await adb(services.message_finish)(**attempt)
                except (OperationalError, InterfaceError):
                    # The database may be briefly unreachable: the same write again.
                    logger.exception("generation %s: storing the final message failed (try %d)", self.message_id, tries)
                    await asyncio.sleep(0.5 * (tries + 1))
                except Exception:
                    # The row itself was refused (a value a column or a constraint rejects): a safer row next.
                    logger.exception("generation %s: the database refused the final message", self.message_id)
                    break
            else:
                return None
        return None

    async def _keep_lease(self) -> None:
        log = get_event_log()
        while True:
            try:
                await log.renew_lease(self.message_id, settings.CHAT_LEASE_SECONDS)
                if await log.stop_requested(self.message_id):
                    self.request_stop()
            except Exception:
                logger.warning("generation %s: lease renewal failed", self.message_id)
            await asyncio.sleep(settings.CHAT_LEASE_SECONDS / 4)

    async def _listen_for_stop(self) -> None:
        layer = get_channel_layer()
        channel = await layer.new_channel()  # the same prefix as the feeds' (see fanout.Feed.start)
        group = generation_group(self.message_id)
        await layer.group_add(group, channel)
        try:
            # A stop that came before we listened is in the log.
            if await get_event_log().stop_requested(self.message_id):
                self.request_stop()
                return
            while True:
                message = await layer.receive(channel)
                if message.get("type") == "generation.stop":
                    self.request_stop()
                    return
        finally:
            try:
                await layer.group_discard(group, channel)
            except Exception:
                pass


# The ends of delta windows some generation of this process waits for: (loop, index) -> its future.
_window_ends: dict[tuple[asyncio.AbstractEventLoop, int], asyncio.Future] = {}


async def _window_end(index: int, window: float) -> None:
    """Wait until ``index * window`` on the monotonic clock: one timer for every generation waiting for it."""
    loop = asyncio.get_running_loop()
    key = (loop, index)
    end = _window_ends.get(key)
    if end is None:
        end = _window_ends[key] = loop.create_future()
        loop.call_at(index * window, _window_ended, key)
    # Shielded: a generation stopped while it waits leaves the others' wait alone.
    await asyncio.shield(end)


def _window_ended(key) -> None:
    end = _window_ends.pop(key)
    if not end.done():
        end.set_result(None)


class CheckpointWriter:
    """Stores the partial replies of this process's generations: one hop and one transaction for all that are due.

    A generation whose checkpoint is due joins ``due``; one task at a time
    writes everything due then (``services.message_checkpoints``), each
    reply through its latest published delta, and goes on while more came
    meanwhile. A failed write is logged; the reply's next checkpoint covers it.
    """

    def __init__(self):
        self.due: dict[str, Generation] = {}
        self.task: asyncio.Task | None = None

    def add(self, generation: Generation) -> None:
        self.due[generation.message_id] = generation
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._write(), name="checkpoints")

    def discard(self, generation: Generation) -> None:
        self.due.pop(generation.message_id, None)

    async def _write(self) -> None:
        while self.due:
            generations = list(self.due.values())
            self.due.clear()
            entries = [generation.checkpoint() for generation in generations]
            try:
                written = await adb(services.message_checkpoints)(entries=entries)
            except Exception:
                logger.exception("checkpoints of %d replies not stored; their next ones cover it", len(entries))
                continue
            for generation, entry, ok in zip(generations, entries, written, strict=True):
                generation.checkpointed(entry, ok)


_checkpoints: dict[asyncio.AbstractEventLoop, CheckpointWriter] = {}


def checkpoints() -> CheckpointWriter:
    """The checkpoint writer of the running event loop (one per process in production)."""
    loop = asyncio.get_running_loop()
    writer = _checkpoints.get(loop)
    if writer is None:
        for stale in [other for other in _checkpoints if other.is_closed()]:
            del _checkpoints[stale]
        writer = _checkpoints[loop] = CheckpointWriter()
    return writer


def generation_request(*, conversation, model: str, history, accepted_at: float) -> Generation:
    """A generation of a reply not stored yet, its upstream request sent now (``Generation.request``).

    The caller stores the reply meanwhile, then calls ``generation_begin``;
    or ``abandon()`` when storing failed, which closes the request unread.
    """
    generation = Generation(conversation=conversation, history=history, accepted_at=accepted_at, model=model)
    generation.request()
    return generation


async def generation_begin(generation: Generation, *, user_message, assistant_message) -> Generation:
    """Run ``generation`` (``generation_request``) for the stored ``assistant_message``; return once both messages
    are announced."""
    generation.bind(assistant_message, user_message)
    generation.start()
    await generation.announced.wait()
    return generation


async def generation_start(*, conversation, user_message, assistant_message, history, accepted_at: float) -> Generation:
    """Start generating the assistant's reply, already stored, in this process; return once both messages are
    announced: ``generation_request`` then ``generation_begin``, the path a post takes.

    The upstream request goes out first; meanwhile ``message.created`` is
    logged for each message (the assistant's records its streaming state),
    and no delta is published before that. ``user_message`` is None for a
    regenerate (the reply follows an existing message). Never raises for
    Redis. Returns the running Generation.
    """
    generation = generation_request(
        conversation=conversation, model=assistant_message.model, history=history, accepted_at=accepted_at
    )
    return await generation_begin(generation, user_message=user_message, assistant_message=assistant_message)


async def generation_stop(*, message_id) -> None:
    """Ask the generation of ``message_id`` to stop, wherever it runs.

    The flag in the log covers a stop that arrives before the generation
    listens; the group message reaches it at once on any process.
    """
    message_id = str(message_id)
    await get_event_log().request_stop(message_id)
    local = running.get(message_id)
    if local is not None:
        local.request_stop()
        return
    await get_channel_layer().group_send(generation_group(message_id), {"type": "generation.stop"})


def _storable(text: str | None) -> str | None:
    """``text`` as any database column takes it (see ``providers.base.storable``); None stays None."""
    return storable(text) if text else text


async def publish_final(message) -> None:
    """Emit the message's final event; the stored message stands even if this fails."""
    try:
        await _publish_final_event(message)
    except Exception as exc:
        logger.warning("final event of %s not published (%s); viewers resync", message.id, exc)


async def _publish_final_event(message) -> None:
    await publish(
        message.conversation_id,
        FINAL_EVENTS[message.status],
        dumps(message_to_dict(message)),
        StateChange("end", str(message.id)),
    )
