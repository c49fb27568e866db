"""LLM providers: one vendor streaming API each, behind the ``Provider`` interface of ``base``.

``catalog`` says which providers and models are configured; ``client_for``
gives each provider its own pooled ``httpx.AsyncClient``; ``Route`` streams a
model's reply through its provider, retrying a busy provider (``retry``).
"""

from __future__ import annotations

import asyncio
import functools
import ssl

import certifi
import httpx

from .base import Provider
from .catalog import ProviderConfig
from .dashscope import DashScopeProvider
from .demo import DemoProvider
from .openai import OpenAIProvider

# The values LLM_API may take (chat/checks.py names a misspelt one at start-up).
APIS = ("openai", "dashscope", "demo")

# Seconds an idle connection is kept for the next reply. httpx's default (5 s) made a team's
# normal pace open a new TCP + TLS connection for most replies; servers commonly keep 60-75 s.
KEEPALIVE_SECONDS = 60.0

_clients: dict[tuple, httpx.AsyncClient] = {}
_POOLS = 16
# Streams a pool takes before the next pool is used (see _PooledTransport).
_FILL = 20


def build_provider(
    *, api: str, base_url: str, api_key: str, client: httpx.AsyncClient, max_tokens: int | None = None
) -> Provider:
    """The provider for ``api`` ("openai", "dashscope" or "demo"); raise ValueError for any other.

    ``max_tokens`` (None: not sent) caps each reply at the provider; the demo model ignores it.
    """
    if api == "openai":
        return OpenAIProvider(base_url=base_url, api_key=api_key, client=client, max_tokens=max_tokens)
    if api == "dashscope":
        return DashScopeProvider(base_url=base_url, api_key=api_key, client=client, max_tokens=max_tokens)
    if api == "demo":
        return DemoProvider()
    raise ValueError(f"Unknown LLM_API {api!r}: use one of {', '.join(APIS)}.")


def provider_for(config: ProviderConfig, *, keepalive: float = KEEPALIVE_SECONDS) -> Provider:
    """``config``'s provider, on that provider's own client (``client_for``). Requires a running loop (but demo)."""
    if config.api == "demo":
        return DemoProvider()
    client = client_for(config, keepalive=keepalive)
    return build_provider(
        api=config.api, base_url=config.base_url, api_key=config.api_key, client=client, max_tokens=config.max_tokens
    )


def client_for(config: ProviderConfig, *, keepalive: float = KEEPALIVE_SECONDS) -> httpx.AsyncClient:
    """The AsyncClient of ``config``'s provider for the running loop: its own pools, timeouts and trusted CAs.

    A provider that is down fills only its own pools and waits only on its
    own timeouts, so the others are not slowed.
    """
    return _pooled_client(
        key=(config.name, config.base_url),
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        ca_file=config.ca_file,
        keepalive=keepalive,
    )


def shared_client(*, connect_timeout: float, read_timeout: float) -> httpx.AsyncClient:
    """A pooled AsyncClient for the running loop not tied to a configured provider (tests and benchmarks)."""
    return _pooled_client(key=("",), connect_timeout=connect_timeout, read_timeout=read_timeout)


def _pooled_client(
    *, key: tuple, connect_timeout: float, read_timeout: float, ca_file: str = "", keepalive: float = KEEPALIVE_SECONDS
) -> httpx.AsyncClient:
    """The client for ``key`` and these settings on the running loop (created on first use).

    An AsyncClient's connections belong to the loop that opened them, so each
    loop gets its own. ``read_timeout`` is the longest wait for any byte,
    including the first token. Up to 1000 concurrent streams. Requires a
    running loop.
    """
    loop = asyncio.get_running_loop()
    key = (loop, *key, connect_timeout, read_timeout, ca_file, keepalive)
    client = _clients.get(key)
    if client is None or client.is_closed:
        for stale in [k for k in _clients if k[0].is_closed()]:
            del _clients[stale]
        # Writes are small JSON bodies and the pool rarely waits: both get the connect budget.
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=connect_timeout, pool=connect_timeout)
        limits = httpx.Limits(
            max_connections=1000 // _POOLS, max_keepalive_connections=100 // _POOLS, keepalive_expiry=keepalive
        )
        context = _ssl_context(ca_file)
        pools = [httpx.AsyncHTTPTransport(verify=context, limits=limits) for _ in range(_POOLS)]
        client = _clients[key] = httpx.AsyncClient(timeout=timeout, transport=_PooledTransport(pools))
    return client


@functools.cache
def _ssl_context(ca_file: str) -> ssl.SSLContext:
    """The public CAs (certifi), plus ``ca_file``'s when given; loaded once per file, not per pool (~50 ms each)."""
    context = httpx.create_ssl_context()
    if ca_file:
        context = ssl.create_default_context(cafile=certifi.where())
        context.load_verify_locations(cafile=ca_file)
    return context


class _PooledTransport(httpx.AsyncBaseTransport):
    """Requests spread over several connection pools, filling the first before using the next.

    httpcore 1.0.9's pool does work quadratic in its connections on every
    request start and end: one pool of 300 streams spent seconds of event-loop
    CPU per burst (encode/httpcore#1035); pools of 20 stay cheap. Round robin
    kept them small but sent sequential replies to 16 different pools, each
    with its own idle connection, so at a team's pace most replies opened a
    new connection (22 of 32 at 2 replies/s). Filling the first pool up to
    ``_FILL`` streams keeps a quiet provider on one warm connection and a
    busy one on pools of at most ``_FILL``.
    """

    def __init__(self, pools: list[httpx.AsyncHTTPTransport]) -> None:
        self._pools = pools
        self._streams = [0] * len(pools)

    def _choose(self) -> int:
        for index, streams in enumerate(self._streams):
            if streams < _FILL:
                return index
        return min(range(len(self._pools)), key=self._streams.__getitem__)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._choose()
        self._streams[index] += 1
        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            self._streams[index] -= 1
            raise
        response.stream = _Counted(response.stream, functools.partial(self._release, index))
        return response

    def _release(self, index: int) -> None:
        self._streams[index] -= 1

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _Counted(httpx.AsyncByteStream):
    """A response body that tells its pool once, when closed, that the stream is over."""

    def __init__(self, stream: httpx.AsyncByteStream, release) -> None:
        self._stream = stream
        self._release = release

    async def __aiter__(self):
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._release is not None:
                release, self._release = self._release, None
                release()
