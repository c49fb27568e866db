"""LLM providers: one vendor streaming API each, behind the ``Provider`` interface of ``base``."""

from __future__ import annotations

import asyncio
import itertools

import httpx

from .base import Provider
from .dashscope import DashScopeProvider
from .demo import DemoProvider
from .openai import OpenAIProvider

# The values LLM_API may take (chat/checks.py names a misspelt one at start-up).
APIS = ("openai", "dashscope", "demo")

_clients: dict[tuple[asyncio.AbstractEventLoop, float, float], httpx.AsyncClient] = {}
_POOLS = 16


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


def shared_client(*, connect_timeout: float, read_timeout: float) -> httpx.AsyncClient:
    """The process's AsyncClient for the running event loop (created on first use).

    An AsyncClient's connections belong to the loop that opened them, so each
    loop gets its own. ``read_timeout`` is the longest wait for any byte,
    including the first token. Up to 1000 concurrent streams. Requires a
    running loop.
    """
    loop = asyncio.get_running_loop()
    key = (loop, connect_timeout, read_timeout)
    client = _clients.get(key)
    if client is None or client.is_closed:
        for stale in [k for k in _clients if k[0].is_closed()]:
            del _clients[stale]
        # Writes are small JSON bodies and the pool rarely waits: both get the connect budget.
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=connect_timeout, pool=connect_timeout)
        limits = httpx.Limits(max_connections=1000 // _POOLS, max_keepalive_connections=100 // _POOLS)
        ssl_context = httpx.create_ssl_context()  # loading the CA bundle once, not per pool, saves ~50 ms each
        pools = [httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits) for _ in range(_POOLS)]
        client = _clients[key] = httpx.AsyncClient(timeout=timeout, transport=_PooledTransport(pools))
    return client


class _PooledTransport(httpx.AsyncBaseTransport):
    """Requests spread round-robin over several connection pools.

    httpcore 1.0.9's pool does work quadratic in its connections on every
    request start and end: one pool of 300 streams spent seconds of event-loop
    CPU per burst (encode/httpcore#1035); 16 pools of 20 stay cheap.
    """

    def __init__(self, pools: list[httpx.AsyncHTTPTransport]) -> None:
        self._pools = pools
        self._next = itertools.cycle(pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
