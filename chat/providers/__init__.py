"""LLM providers: one vendor streaming API each, behind the ``Provider`` interface of ``base``."""

from __future__ import annotations

import asyncio

import httpx

from .base import Provider
from .dashscope import DashScopeProvider
from .demo import DemoProvider
from .openai import OpenAIProvider

_clients: dict[tuple[asyncio.AbstractEventLoop, float, float], httpx.AsyncClient] = {}


def build_provider(*, api: str, base_url: str, api_key: str, client: httpx.AsyncClient) -> Provider:
    """The provider for ``api`` ("openai", "dashscope" or "demo"); raise ValueError for any other."""
    if api == "openai":
        return OpenAIProvider(base_url=base_url, api_key=api_key, client=client)
    if api == "dashscope":
        return DashScopeProvider(base_url=base_url, api_key=api_key, client=client)
    if api == "demo":
        return DemoProvider()
    raise ValueError(f"Unknown LLM_API {api!r}: use 'openai', 'dashscope' or 'demo'.")


def shared_client(*, connect_timeout: float, read_timeout: float) -> httpx.AsyncClient:
    """The process's AsyncClient for the running event loop (created on first use).

    An AsyncClient's connections belong to the loop that opened them, so each
    loop gets its own. ``read_timeout`` is the longest wait for any byte,
    including the first token. Requires a running loop.
    """
    loop = asyncio.get_running_loop()
    key = (loop, connect_timeout, read_timeout)
    client = _clients.get(key)
    if client is None:
        for stale in [k for k in _clients if k[0].is_closed()]:
            del _clients[stale]
        # Writes are small JSON bodies and the pool rarely waits: both get the connect budget.
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=connect_timeout, pool=connect_timeout)
        client = _clients[key] = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=30),
            http2=False,
        )
    return client
