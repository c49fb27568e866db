"""The log in Redis, shared by every process: one Stream per conversation, one pub/sub channel for its live events."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path

from django.conf import settings
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.exceptions import NoScriptError

from ..events import PRESENCE, Event
from .base import KEY_TTL_MS, ZERO, EventLog, LiveEvents, StreamingState

logger = logging.getLogger(__name__)

_HERE = Path(__file__).parent
# log.lua defines the append that append.lua and presence.lua share.
_LOG = (_HERE / "log.lua").read_text()
_APPEND = _LOG + (_HERE / "append.lua").read_text()
_PRESENCE = _LOG + (_HERE / "presence.lua").read_text()
_CUT = (_HERE / "cut.lua").read_text()
_STREAM_OPEN = (_HERE / "stream_open.lua").read_text()


class RedisEventLog(EventLog):
    """The log in Redis: appending is one script call that also publishes the event.

    The appends an event loop makes in one pass (the deltas of its
    generations whose windows end together) go to Redis together, as one
    pipeline of script calls: one write and one read for all of them.
    """

    prefix = "chat:"

    def __init__(self, url: str):
        self.url = url
        self._clients: dict[asyncio.AbstractEventLoop, Redis] = {}

    @property
    def redis(self) -> Redis:
        # A client per event loop: redis.asyncio connections are bound to their loop.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # A blocking pool waits for a free connection instead of failing with
            # "Too many connections" under a burst.
            pool = BlockingConnectionPool.from_url(
                self.url, decode_responses=True, max_connections=100, timeout=10, health_check_interval=30
            )
            client = Redis(connection_pool=pool)
            client._append = client.register_script(_APPEND)
            client._cut = client.register_script(_CUT)
            client._stream_open = client.register_script(_STREAM_OPEN)
            client._presence = client.register_script(_PRESENCE)
            # Names this loop's own publications, which its subscription skips (see append).
            client._origin = uuid.uuid4().hex[:16]
            # Appends waiting for this loop pass's batch: (keys, args, future).
            client._appends = []
            self._clients[loop] = client
        return client

    def _conv_keys(self, conversation_id):
        base = f"{self.prefix}conv:{conversation_id}"
        return f"{base}:log", f"{base}:tail", f"{base}:streaming"

    def _live_channel(self, conversation_id) -> str:
        return f"{self.prefix}conv:{conversation_id}:live"

    def _msg_keys(self, message_id):
        base = f"{self.prefix}msg:{message_id}"
        return f"{base}:state", f"{base}:content", f"{base}:reasoning"

    def _append_keys_args(self, conversation_id, event_type, data, change=None, message_id=None, final=False):
        """The keys and arguments of append.lua for one event."""
        keys = [*self._conv_keys(conversation_id), *self._msg_keys(change.message_id if change else "none")]
        args = [event_type, data, settings.CHAT_EVENT_RETENTION_SECONDS * 1000, KEY_TTL_MS]
        if change is None:
            args += ["", "", 0, "", "", ""]
        else:
            args += [change.op, change.message_id, change.seq, change.content, change.reasoning, change.message]
        args += [message_id or "", "1" if final else "", self._live_channel(conversation_id), self.redis._origin]
        return keys, args

    async def _run_scripts(self, script, calls: list[tuple[list, list]]) -> list:
        """``script`` with each ``(keys, args)`` of ``calls``, in order, in one round trip; their results.

        A pipeline of EVALSHA (redis-py's own script pipelines ask SCRIPT
        EXISTS first: a second round trip every time); a script Redis lost
        (it restarted) is loaded and the calls it refused run again, in order.
        Raises the first error.
        """
        client = self.redis
        results: list = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(2):
            async with client.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys, args = calls[i]
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                answers = await pipe.execute(raise_on_error=False)
            for i, answer in zip(todo, answers, strict=True):
                results[i] = answer
            todo = [i for i in todo if isinstance(results[i], NoScriptError)]
            if not todo:
                break
            script.sha = await client.script_load(script.script)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def append(self, conversation_id, event_type, data, change=None, *, message_id=None, final=False):
        client = self.redis
        future = asyncio.get_running_loop().create_future()
        client._appends.append(
            (*self._append_keys_args(conversation_id, event_type, data, change, message_id, final), future)
        )
        if len(client._appends) == 1:
            # The first of this loop pass: the batch goes once the pass's other callbacks have added theirs.
            asyncio.get_running_loop().call_soon(self._send_appends, client)
        event_id, prev, lost = await future
        return Event(event_id, event_type, data, prev, message_id, final, conversation_id), bool(lost)

    def _send_appends(self, client) -> None:
        batch, client._appends = client._appends, []
        task = asyncio.get_running_loop().create_task(self._appends_sent(client, batch))
        _sending.add(task)
        task.add_done_callback(_sending.discard)

    async def _appends_sent(self, client, batch) -> None:
        try:
            if len(batch) == 1:
                keys, args, _ = batch[0]
                results = [await client._append(keys=keys, args=args, client=client)]
            else:
                results = await self._run_scripts(client._append, [(keys, args) for keys, args, _ in batch])
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for *_, future in batch:
                future.cancel()
            raise
        for (*_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def append_batch(self, conversation_id, appends):
        if not appends:
            return []
        calls = [
            self._append_keys_args(conversation_id, event_type, data, change, message_id, final)
            for event_type, data, change, message_id, final in appends
        ]
        results = await self._run_scripts(self.redis._append, calls)
        return [
            (Event(event_id, event_type, data, prev, message_id, final, conversation_id), bool(lost))
            for (event_type, data, _, message_id, final), (event_id, prev, lost) in zip(appends, results, strict=True)
        ]

    async def append_many(self, items):
        if not items:
            return []
        calls = [self._append_keys_args(key, event_type, data) for key, event_type, data in items]
        results = await self._run_scripts(self.redis._append, calls)
        return [
            Event(event_id, event_type, data, prev, None, False, key)
            for (key, event_type, data), (event_id, prev, _) in zip(items, results, strict=True)
        ]

    def live(self, deliver, resume):
        return _RedisLive(self, self.redis, deliver, resume)

    async def tail(self, conversation_id):
        return await self.redis.get(self._conv_keys(conversation_id)[1]) or ZERO

    async def seed(self, conversation_id, change):
        state, content, reasoning = self._msg_keys(change.message_id)
        streaming = self._conv_keys(conversation_id)[2]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(state, mapping={"message": change.message, "seq": change.seq})
            pipe.pexpire(state, KEY_TTL_MS)
            pipe.set(content, change.content, px=KEY_TTL_MS)
            pipe.set(reasoning, change.reasoning, px=KEY_TTL_MS)
            pipe.sadd(streaming, change.message_id)
            pipe.pexpire(streaming, KEY_TTL_MS)
            await pipe.execute()

    async def cut(self, conversation_id):
        _, tail_key, streaming_key = self._conv_keys(conversation_id)
        client = self.redis
        out = await client._cut(keys=[tail_key, streaming_key], args=[f"{self.prefix}msg:"], client=client)
        states = [
            StreamingState(out[i], out[i + 1], int(out[i + 2]), out[i + 3], out[i + 4]) for i in range(1, len(out), 5)
        ]
        return out[0], states

    async def _range_after(self, conversation_id, after_id, count):
        rows = await self.redis.xrange(self._conv_keys(conversation_id)[0], min=f"({after_id}", count=count)
        return [
            Event(entry_id, f["t"], f["d"], f.get("p", ZERO), f.get("m"), f.get("f") == "1", conversation_id)
            for entry_id, f in rows
        ]

    async def request_stop(self, message_id):
        await self.redis.set(f"{self.prefix}msg:{message_id}:stop", "1", px=KEY_TTL_MS)

    async def stop_requested(self, message_id):
        return bool(await self.redis.exists(f"{self.prefix}msg:{message_id}:stop"))

    async def renew_lease(self, message_id, seconds):
        await self.redis.set(f"{self.prefix}msg:{message_id}:lease", str(os.getpid()), px=int(seconds * 1000))

    async def release_lease(self, message_id):
        await self.redis.delete(f"{self.prefix}msg:{message_id}:lease", f"{self.prefix}msg:{message_id}:stop")

    async def has_lease(self, message_id):
        return bool(await self.redis.exists(f"{self.prefix}msg:{message_id}:lease"))

    async def ping(self):
        await self.redis.ping()

    async def try_lock(self, name, seconds):
        # SET NX PX: one atomic step, so of any number of processes exactly one gets it.
        key = f"{self.prefix}lock:{name}"
        return bool(await self.redis.set(key, str(os.getpid()), nx=True, px=max(1, int(seconds * 1000))))

    def _streams_key(self, user_id):
        return f"{self.prefix}user:{user_id}:streams"

    async def stream_open(self, user_id, token, *, limit, ttl):
        client = self.redis
        keys = [self._streams_key(user_id)]
        return bool(await client._stream_open(keys=keys, args=[token, limit, int(ttl * 1000)], client=client))

    async def stream_refresh(self, user_id, token, *, ttl):
        client = self.redis
        key = self._streams_key(user_id)
        now_ms = int(time.time() * 1000)
        async with client.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {token: now_ms + int(ttl * 1000)}, xx=True)
            pipe.pexpire(key, int(ttl * 1000))
            await pipe.execute()

    async def stream_refresh_many(self, slots, *, ttl):
        await self.refresh_many(slots, slot_ttl=ttl)

    async def stream_close(self, user_id, token):
        await self.redis.zrem(self._streams_key(user_id), token)

    def _presence_call(self, client, op, conversation_id, members, ttl):
        base = f"{self.prefix}conv:{conversation_id}:presence"
        stream, tail, _ = self._conv_keys(conversation_id)
        args = [op, int(ttl * 1000), KEY_TTL_MS, settings.CHAT_EVENT_RETENTION_SECONDS * 1000]
        own = self.redis
        args += [self._live_channel(conversation_id), own._origin, PRESENCE, *members]
        return own._presence(keys=[base, f"{base}:announced", stream, tail], args=args, client=client)

    @staticmethod
    def _announced(conversation_id, result) -> Event | None:
        if not result:
            return None
        event_id, prev, data = result
        return Event(event_id, PRESENCE, data, prev, None, False, conversation_id)

    async def presence_enter(self, conversation_id, member, *, ttl):
        return await self._presence_call(self.redis, "enter", conversation_id, [member], ttl)

    async def presence_leave(self, conversation_id, member):
        await self.redis.zrem(f"{self.prefix}conv:{conversation_id}:presence", member)

    async def presence_announce(self, conversation_id, members, *, ttl):
        result = await self._presence_call(self.redis, "announce", conversation_id, members, ttl)
        return self._announced(conversation_id, result)

    async def refresh_many(self, slots, *, slot_ttl, presence=(), presence_ttl=0.0):
        if not slots and not presence:
            return []
        ttl_ms = int(slot_ttl * 1000)
        expiry = int(time.time() * 1000) + ttl_ms
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, token in slots:
                key = self._streams_key(user_id)
                pipe.zadd(key, {token: expiry}, xx=True)
                pipe.pexpire(key, ttl_ms)
            for conversation_id, members in presence:
                await self._presence_call(pipe, "announce", conversation_id, members, presence_ttl)
            results = await pipe.execute()
        announced = results[2 * len(slots) :]
        events = [self._announced(cid, result) for (cid, _), result in zip(presence, announced, strict=True)]
        return [event for event in events if event is not None]


# Batches of appends on their way to Redis, kept referenced until sent.
_sending: set[asyncio.Task] = set()


class _PubSub(PubSub):
    """redis-py's PubSub (which re-subscribes on every reconnection), telling us when it (re)connected."""

    on_connected = None

    async def on_connect(self, connection):
        await super().on_connect(connection)
        if self.on_connected is not None:
            self.on_connected()


class _RedisLive(LiveEvents):
    """One event loop's pub/sub connection: one subscription per conversation with local viewers, one reader task."""

    def __init__(self, log: RedisEventLog, client: Redis, deliver, resume):
        self.log = log
        self.deliver = deliver
        # Its own connection without health checks: a check's PING would read the
        # socket while the reader task is reading it.
        pool = BlockingConnectionPool.from_url(log.url, decode_responses=True, max_connections=1, socket_keepalive=True)
        self.pubsub = _PubSub(pool, ignore_subscribe_messages=True)
        # Messages may have been published while the connection was down: the caller checks the tails.
        self.pubsub.on_connected = resume
        self.origin = client._origin
        self.channel_prefix = log._live_channel("")[: -len(":live")]
        self.task: asyncio.Task | None = None
        self.lock = asyncio.Lock()

    async def subscribe(self, conversation_id):
        # One at a time: two first subscriptions at once would both wait for the one connection.
        async with self.lock:
            await self.pubsub.subscribe(self.log._live_channel(conversation_id))
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name="event log subscription")

    async def unsubscribe(self, conversation_id):
        await self.pubsub.unsubscribe(self.log._live_channel(conversation_id))

    async def close(self):
        if self.task is not None:
            self.task.cancel()
        await self.pubsub.aclose()
        await self.pubsub.connection_pool.aclose()

    async def _run(self) -> None:
        own = self.origin + "\n"
        start = len(self.channel_prefix)
        while True:
            try:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Redis restarting: redis-py reconnects and re-subscribes on the next read.
                logger.warning("event log subscription: read failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if message is None or message["type"] != "message":
                continue
            payload = message["data"]
            if payload.startswith(own):
                continue  # appended on this loop, which delivered it already
            try:
                _, event_id, prev, event_type, message_id, final, data = payload.split("\n", 6)
            except ValueError:
                logger.warning("event log subscription: malformed message on %s", message["channel"])
                continue
            conversation_id = message["channel"][start : -len(":live")]
            try:
                event = Event(event_id, event_type, data, prev, message_id or None, final == "1", conversation_id)
                self.deliver(conversation_id, event)
            except Exception:
                logger.exception("event log subscription: delivery to %s failed", conversation_id)
