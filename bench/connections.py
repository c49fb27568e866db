"""9. Warm provider connections over TLS

The provider client of the app (``chat.providers.client_for``: one pooled
``httpx.AsyncClient`` per provider, 60 s keep-alive, the first pool filled
first) against a fake provider serving HTTPS with a certificate of a CA made
for the run (``FakeProvider(tls=True)``), in this process:

- connections the provider accepted for 32 sequential replies, one started
  every 0.5 s (2 replies/s) and every 0.05 s (20 replies/s); baseline: the
  client before issue 15 (16 pools taken round robin, httpx's 5 s keep-alive),
  the same replies;
- time to first token (request written to the first content delta parsed) on
  the warm connection, and with a new connection each reply (TCP + TLS
  handshake, what most replies paid before); baseline: the same request
  written by hand on an open TLS connection until its first content chunk.

The deployment's daphne processes are not involved: the figure is the
client's, and the app's replies go through exactly this client.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time

import httpx

from chat.providers import OpenAIProvider, client_for, provider_for
from chat.providers.base import ChatMessage, TextDelta
from chat.providers.catalog import ProviderConfig
from tests.fakeprovider import FakeProvider

from .stats import fmt, percentile

REPLIES = 32
PACES = (2, 20)  # replies started per second
TARGET_CONNECTIONS = 2
MODEL = "fake:chunks=3"
MESSAGES = [ChatMessage("user", "Hello 你好")]


def models(quick: bool) -> list[str]:
    return []  # nothing for the deployment: this scenario runs its own TLS fake provider


class _RoundRobin(httpx.AsyncBaseTransport):
    """The client before issue 15: requests handed to 16 pools in turn."""

    def __init__(self, context: ssl.SSLContext) -> None:
        limits = httpx.Limits(max_connections=62, max_keepalive_connections=6)  # keep-alive: httpx's 5 s
        self._pools = [httpx.AsyncHTTPTransport(verify=context, limits=limits) for _ in range(16)]
        self._next = itertools.cycle(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


def _config(fake: FakeProvider, name: str) -> ProviderConfig:
    return ProviderConfig(name, "openai", fake.base_url, "k", (), 10.0, 30.0, ca_file=fake.ca_file)


async def _first_token(provider) -> float:
    """Seconds from the call to the first TextDelta; the reply is read to its end."""
    started, first = time.perf_counter(), None
    async for event in provider.stream(model=MODEL, messages=MESSAGES):
        if first is None and isinstance(event, TextDelta):
            first = time.perf_counter() - started
    return first


async def _paced(provider, pace: float) -> list[float]:
    """REPLIES sequential replies started ``1 / pace`` s apart; their times to first token."""
    times = []
    for _ in range(REPLIES):
        started = time.perf_counter()
        times.append(await _first_token(provider))
        await asyncio.sleep(max(0.0, 1 / pace - (time.perf_counter() - started)))
    return times


async def _connections(fake: FakeProvider, pace: float, *, old: bool) -> tuple[int, list[float]]:
    fake.reset()
    config = _config(fake, f"bench-{pace}-{old}")
    if old:
        context = ssl.create_default_context(cafile=fake.ca_file)
        client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0), transport=_RoundRobin(context))
        provider = OpenAIProvider(base_url=fake.base_url, api_key="k", client=client)
    else:
        client = client_for(config)
        provider = provider_for(config)
    try:
        times = await _paced(provider, pace)
    finally:
        await client.aclose()
    return fake.connections, times


async def _cold(fake: FakeProvider, runs: int) -> list[float]:
    """Time to first token when every reply opens a new TLS connection (a new client each time)."""
    times = []
    for index in range(runs):
        config = _config(fake, f"bench-cold-{index}")
        try:
            times.append(await _first_token(provider_for(config)))
        finally:
            await client_for(config).aclose()
    return times


async def _direct(fake: FakeProvider, runs: int) -> list[float]:
    """The baseline: the request by hand on one open TLS connection, until the first content chunk."""
    import json

    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Hello 你好"}], "stream": True}
    ).encode()
    host = fake.base_url.split("//", 1)[1].split("/", 1)[0]
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer k\r\nAccept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    context = ssl.create_default_context(cafile=fake.ca_file)
    reader, writer = await asyncio.open_connection(fake.host, fake.port, ssl=context)
    times = []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            writer.write(head + body)
            received, first = b"", None
            while not received.endswith(b"0\r\n\r\n"):
                chunk = await reader.read(65536)
                if not chunk:
                    raise RuntimeError("the fake provider closed the connection")
                received += chunk
                if first is None and b'"content":"w0' in received:
                    first = time.perf_counter() - started
            times.append(first)
    finally:
        writer.close()
    return times


async def run(dep, quick: bool) -> dict:
    fake = FakeProvider(tls=True)
    fake.start()
    rows, details = [], {}
    try:
        for pace in PACES:
            app, app_times = await _connections(fake, pace, old=False)
            before, _ = await _connections(fake, pace, old=True)
            details[f"{pace}/s"] = {"app": app, "before": before, "ttft_ms": [round(t * 1000, 2) for t in app_times]}
            rows.append(
                {
                    "measure": f"connections opened per {REPLIES} sequential replies at {pace} replies/s, TLS",
                    "unit": "connections",
                    "app": app,
                    "baseline": before,
                    "baseline_label": "before: 16 round-robin pools, 5 s keep-alive",
                    "added": app - before,
                    "target": f"<= {TARGET_CONNECTIONS}",
                    "verdict": "met" if app <= TARGET_CONNECTIONS else "missed",
                    "summary": True,
                }
            )
            print(f"  {pace} replies/s: {app} connections for {REPLIES} replies (before: {before})", flush=True)
        runs = 10 if quick else 40
        warm = [t for times in (d["ttft_ms"] for d in details.values()) for t in times[1:]]
        cold = [t * 1000 for t in await _cold(fake, runs)]
        direct = [t * 1000 for t in await _direct(fake, runs + 1)][1:]
        for label, values in (("warm connection", warm), ("new TLS connection each reply", cold)):
            rows.append(
                {
                    "measure": f"time to first token over TLS, {label}, median",
                    "unit": "ms",
                    "app": percentile(values, 50),
                    "baseline": percentile(direct, 50),
                    "baseline_label": "by hand on an open connection",
                    "added": percentile(values, 50) - percentile(direct, 50),
                    "target": "",
                    "verdict": "",
                }
            )
            print(
                f"  first token, {label}: median {fmt(percentile(values, 50))} ms"
                f" (direct {fmt(percentile(direct, 50))} ms)",
                flush=True,
            )
    finally:
        fake.stop()
    return {
        "title": "Warm provider connections over TLS",
        "rows": rows,
        "details": details,
        "notes": [
            "Connections are the TCP connections the fake provider accepted (it numbers them); a reply on a kept "
            "connection pays no TCP or TLS handshake.",
            f"The new-connection figure is {fmt(percentile(cold, 50) - percentile(warm, 50))} ms more than the warm"
            " one on loopback; against a real provider the round trips of the handshake add to it.",
        ],
        "config": {"replies": REPLIES, "paces": list(PACES), "model": MODEL, "ttft_runs": runs},
    }
