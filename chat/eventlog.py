"""The per-conversation replay log: every event gets its id here, and resume reads from here.

With ``REDIS_URL`` the log is a Redis Stream per conversation (entry ids are
the SSE ids), shared by every process; without it, the same structure in this
process. Each entry also records the id before it (``prev``), so a reader can
tell a complete sequence from one with a hole, and the log keeps the partial
state of each streaming message so a late joiner gets an exact snapshot.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass

from django.conf import settings

from .events import Event, parse_id

ZERO = "0-0"
# Idle conversations' keys vanish after a day; replay needs only CHAT_EVENT_RETENTION_SECONDS.
KEY_TTL_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class StateChange:
    """How an appended event changes the log's record of a streaming message.

    ``op``: "start" (``message`` is its JSON), "delta" (append ``content`` /
    ``reasoning``, now through ``seq``), "end" (forget it), "seed" (replace
    the record with the full ``content`` / ``reasoning`` after a lost state).
    """

    op: str
    message_id: str
    seq: int = 0
    content: str = ""
    reasoning: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class StreamingState:
    message: str  # the message's JSON as created
    seq: int
    content: str
    reasoning: str


class EventLog:
    """What every backend provides; all methods are coroutines on the process's loop."""

    async def append(self, conversation_id: str, event_type: str, data: str, change: StateChange | None = None):
        """Log one event; returns ``(event, state_lost)``. Never writes the database."""
        raise NotImplementedError

    async def tail(self, conversation_id: str) -> str:
        raise NotImplementedError

    async def seed(self, conversation_id: str, change: StateChange) -> None:
        """Restore a streaming message's state in full (after the store lost it)."""
        raise NotImplementedError

    async def cut(self, conversation_id: str) -> tuple[str, list[StreamingState]]:
        """The last id and the state of every streaming message as of that id, read atomically."""
        raise NotImplementedError

    async def _range_after(self, conversation_id: str, after_id: str, count: int) -> list[Event]:
        raise NotImplementedError

    async def after(self, conversation_id: str, after_id: str) -> list[Event] | None:
        """Every event after ``after_id``, in order; None when they cannot all be given.

        None means ``after_id`` is unknown, in the future, or older than what
        the log still holds with nothing lost in between: the reader must resync.
        """
        after_key = parse_id(after_id)
        tail = await self.tail(conversation_id)
        if after_key > parse_id(tail):
            return None
        events: list[Event] = []
        cursor = after_id
        while True:
            page = await self._range_after(conversation_id, cursor, 1000)
            if not page:
                break
            events.extend(page)
            cursor = page[-1].id
            if len(page) < 1000:
                break
        if not events:
            return [] if after_id == tail else None
        if events[0].prev != after_id:
            return None
        return events

    # Coordination of one generation across processes.
    async def request_stop(self, message_id: str) -> None:
        raise NotImplementedError

    async def stop_requested(self, message_id: str) -> bool:
        raise NotImplementedError

    async def renew_lease(self, message_id: str, seconds: float) -> None:
        raise NotImplementedError

    async def release_lease(self, message_id: str) -> None:
        raise NotImplementedError

    async def has_lease(self, message_id: str) -> bool:
        raise NotImplementedError

    async def ping(self) -> None:
        """Raise if the log's store is unreachable."""

    async def try_lock(self, name: str, seconds: float) -> bool:
        """Take the lock ``name`` for ``seconds`` unless anyone (any process) holds it; whether this call took it.

        Never released early: it lapses, so a job guarded by it runs at most
        once per ``seconds`` across every process sharing this log.
        """
        raise NotImplementedError

    # Open event streams per user, counted across processes.
    async def stream_open(self, user_id, token: str, *, limit: int, ttl: float) -> bool:
        """Register an open stream unless the user already has ``limit`` (0: no limit); expires after ``ttl``."""
        raise NotImplementedError

    async def stream_refresh(self, user_id, token: str, *, ttl: float) -> None:
        raise NotImplementedError

    async def stream_close(self, user_id, token: str) -> None:
        raise NotImplementedError


class MemoryEventLog(EventLog):
    """The log inside one process: the zero-config default (no Redis)."""

    def __init__(self):
        self._events: dict[str, deque[tuple[float, Event]]] = {}
        self._tails: dict[str, str] = {}
        self._states: dict[str, dict[str, dict]] = {}
        self._stops: dict[str, float] = {}
        self._leases: dict[str, float] = {}
        self._locks: dict[str, float] = {}
        self._streams = _MemoryStreams()
        self._last_ms = 0
        self._n = 0

    def _next_id(self) -> str:
        ms = int(time.time() * 1000)
        if ms <= self._last_ms:
            ms, self._n = self._last_ms, self._n + 1
        else:
            self._n = 0
        self._last_ms = ms
        return f"{ms}-{self._n}"

    async def append(self, conversation_id, event_type, data, change=None):
        prev = self._tails.get(conversation_id, ZERO)
        event = Event(id=self._next_id(), type=event_type, data=data, prev=prev)
        now = time.monotonic()
        log = self._events.setdefault(conversation_id, deque())
        log.append((now, event))
        horizon = now - settings.CHAT_EVENT_RETENTION_SECONDS
        while log and log[0][0] < horizon:
            log.popleft()
        self._tails[conversation_id] = event.id
        lost = False
        if change is not None:
            states = self._states.setdefault(conversation_id, {})
            if change.op == "start" or change.op == "seed":
                states[change.message_id] = {
                    "message": change.message or states.get(change.message_id, {}).get("message", ""),
                    "seq": change.seq,
                    "content": change.content,
                    "reasoning": change.reasoning,
                }
            elif change.op == "delta":
                state = states.get(change.message_id)
                if state is None:
                    lost = True
                else:
                    state["seq"] = change.seq
                    state["content"] += change.content
                    state["reasoning"] += change.reasoning
            elif change.op == "end":
                states.pop(change.message_id, None)
        return event, lost

    async def tail(self, conversation_id):
        return self._tails.get(conversation_id, ZERO)

    async def seed(self, conversation_id, change):
        self._states.setdefault(conversation_id, {})[change.message_id] = {
            "message": change.message,
            "seq": change.seq,
            "content": change.content,
            "reasoning": change.reasoning,
        }

    async def cut(self, conversation_id):
        states = self._states.get(conversation_id, {})
        return self._tails.get(conversation_id, ZERO), [
            StreamingState(s["message"], s["seq"], s["content"], s["reasoning"]) for s in states.values()
        ]

    async def _range_after(self, conversation_id, after_id, count):
        after_key = parse_id(after_id)
        out = []
        for _, event in self._events.get(conversation_id, ()):
            if event.key > after_key:
                out.append(event)
                if len(out) == count:
                    break
        return out

    async def request_stop(self, message_id):
        self._stops[message_id] = time.monotonic()

    async def stop_requested(self, message_id):
        return message_id in self._stops

    async def renew_lease(self, message_id, seconds):
        self._leases[message_id] = time.monotonic() + seconds

    async def release_lease(self, message_id):
        self._leases.pop(message_id, None)
        self._stops.pop(message_id, None)

    async def has_lease(self, message_id):
        return self._leases.get(message_id, 0) > time.monotonic()

    async def try_lock(self, name, seconds):
        now = time.monotonic()
        if self._locks.get(name, 0) > now:
            return False
        self._locks[name] = now + seconds
        return True

    async def stream_open(self, user_id, token, *, limit, ttl):
        streams = self._streams.live(user_id)
        if limit and len(streams) >= limit:
            return False
        streams[token] = time.monotonic() + ttl
        return True

    async def stream_refresh(self, user_id, token, *, ttl):
        self._streams.live(user_id)[token] = time.monotonic() + ttl

    async def stream_close(self, user_id, token):
        self._streams.live(user_id).pop(token, None)


class _MemoryStreams:
    def __init__(self):
        self.open: dict[str, dict[str, float]] = {}

    def live(self, user_id) -> dict[str, float]:
        now = time.monotonic()
        streams = self.open.setdefault(str(user_id), {})
        for token in [t for t, expiry in streams.items() if expiry <= now]:
            del streams[token]
        return streams


# KEYS: stream, tail, streaming set, state hash, content, reasoning
# ARGV: type, data, retention_ms, key_ttl_ms, op, message_id, seq, content, reasoning, message
_APPEND = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prev = redis.call('GET', KEYS[2]) or '0-0'
local id = redis.call('XADD', KEYS[1], 'MINID', '~', tostring(now_ms - tonumber(ARGV[3])), '*',
                      't', ARGV[1], 'd', ARGV[2], 'p', prev)
local ttl = tonumber(ARGV[4])
redis.call('SET', KEYS[2], id, 'PX', ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
local op = ARGV[5]
local lost = 0
if op == 'start' or op == 'seed' then
  if ARGV[10] ~= '' then redis.call('HSET', KEYS[4], 'message', ARGV[10]) end
  redis.call('HSET', KEYS[4], 'seq', ARGV[7])
  redis.call('SET', KEYS[5], ARGV[8], 'PX', ttl)
  redis.call('SET', KEYS[6], ARGV[9], 'PX', ttl)
  redis.call('PEXPIRE', KEYS[4], ttl)
  redis.call('SADD', KEYS[3], ARGV[6])
  redis.call('PEXPIRE', KEYS[3], ttl)
elseif op == 'delta' then
  if redis.call('EXISTS', KEYS[4]) == 0 then
    lost = 1
  else
    redis.call('HSET', KEYS[4], 'seq', ARGV[7])
    if ARGV[8] ~= '' then redis.call('APPEND', KEYS[5], ARGV[8]) end
    if ARGV[9] ~= '' then redis.call('APPEND', KEYS[6], ARGV[9]) end
  end
elseif op == 'end' then
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
  redis.call('SREM', KEYS[3], ARGV[6])
end
return {id, prev, lost}
"""

# KEYS: tail, streaming set. ARGV: key prefix
_CUT = """
local tail = redis.call('GET', KEYS[1]) or '0-0'
local out = {tail}
for _, mid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local base = ARGV[1] .. mid
  local message = redis.call('HGET', base .. ':state', 'message')
  if message then
    table.insert(out, message)
    table.insert(out, redis.call('HGET', base .. ':state', 'seq') or '0')
    table.insert(out, redis.call('GET', base .. ':content') or '')
    table.insert(out, redis.call('GET', base .. ':reasoning') or '')
  end
end
return out
"""

# KEYS: the user's open streams (a sorted set, score = expiry ms). ARGV: token, limit, ttl_ms
_STREAM_OPEN = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local limit = tonumber(ARGV[2])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""


class RedisEventLog(EventLog):
    """The log in Redis, shared by every process: one Stream per conversation."""

    prefix = "chat:"

    def __init__(self, url: str):
        self.url = url
        self._clients: dict[asyncio.AbstractEventLoop, object] = {}

    @property
    def redis(self):
        # A client per event loop: redis.asyncio connections are bound to their loop.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import redis.asyncio as aioredis

            # A blocking pool waits for a free connection instead of failing with
            # "Too many connections" under a burst.
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, decode_responses=True, max_connections=100, timeout=10, health_check_interval=30
            )
            client = aioredis.Redis(connection_pool=pool)
            client._append = client.register_script(_APPEND)
            client._cut = client.register_script(_CUT)
            client._stream_open = client.register_script(_STREAM_OPEN)
            self._clients[loop] = client
        return client

    def _conv_keys(self, conversation_id):
        base = f"{self.prefix}conv:{conversation_id}"
        return f"{base}:log", f"{base}:tail", f"{base}:streaming"

    def _msg_keys(self, message_id):
        base = f"{self.prefix}msg:{message_id}"
        return f"{base}:state", f"{base}:content", f"{base}:reasoning"

    async def append(self, conversation_id, event_type, data, change=None):
        keys = [*self._conv_keys(conversation_id), *self._msg_keys(change.message_id if change else "none")]
        args = [event_type, data, settings.CHAT_EVENT_RETENTION_SECONDS * 1000, KEY_TTL_MS]
        if change is None:
            args += ["", "", 0, "", "", ""]
        else:
            args += [change.op, change.message_id, change.seq, change.content, change.reasoning, change.message]
        client = self.redis
        event_id, prev, lost = await client._append(keys=keys, args=args, client=client)
        return Event(id=event_id, type=event_type, data=data, prev=prev), bool(lost)

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
        states = [StreamingState(out[i], int(out[i + 1]), out[i + 2], out[i + 3]) for i in range(1, len(out) - 1, 4)]
        return out[0], states

    async def _range_after(self, conversation_id, after_id, count):
        rows = await self.redis.xrange(self._conv_keys(conversation_id)[0], min=f"({after_id}", count=count)
        return [Event(id=entry_id, type=f["t"], data=f["d"], prev=f.get("p", ZERO)) for entry_id, f in rows]

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

    async def stream_close(self, user_id, token):
        await self.redis.zrem(self._streams_key(user_id), token)


_log: EventLog | None = None


def get_event_log() -> EventLog:
    """The process's event log: Redis when REDIS_URL is set, else in-process."""
    global _log
    if _log is None:
        _log = RedisEventLog(settings.REDIS_URL) if settings.REDIS_URL else MemoryEventLog()
    return _log
