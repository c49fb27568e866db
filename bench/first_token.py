"""2. Added time to first token

From writing the request to reading the first content delta, one request at
a time on an already-open connection, the provider answering at once
(``first_ms=0``):

- app, streaming POST: ``POST .../messages/`` with ``Accept: text/event-stream``
  until its first ``message.delta``;
- app, POST + open viewer: a 202 POST while a viewer of the conversation is
  already connected, on the same process (a) and on the other one (b);
- baseline: the same request sent straight to the fake provider until its
  first content chunk.

Runs alternate between the variants so drift hits all alike. Each app run
uses a fresh conversation (no history to load).
"""

from __future__ import annotations

import asyncio
import time

from bench.sseload import open_reader

from .deployment import (
    CpuMeter,
    Deployment,
    events_request,
    http_exchange,
    message_request,
    model,
    provider_request,
    wait_for_quiet,
)
from .runs import dep_pids
from .stats import fmt, percentile

TARGET_MEDIAN_MS = 8.0
TIMEOUT = 30


def settings(quick: bool) -> dict:
    return {"runs": 15 if quick else 50, "warmup": 3 if quick else 5}


def models(quick: bool) -> list[str]:
    return [model(chunks=3)]


async def _streaming_post(dep: Deployment, conversation: str, model_name: str) -> tuple[float, float]:
    """(ms to first delta, ms of that to the provider's stamp) for a streaming POST."""
    reader = await open_reader(
        "127.0.0.1",
        dep.a,
        message_request(dep.a, dep.session, conversation, model_name, sse=True).encode(),
        "app",
        send=False,
    )
    try:
        reader.send()
        await asyncio.wait_for(reader.done, TIMEOUT)
    finally:
        reader.close()
    if reader.error or not reader.first_delta_ns:
        raise RuntimeError(f"streaming POST failed: {reader.error or 'no delta'} (HTTP {reader.status})")
    return _split(reader.sent_ns, reader.first_stamp_ns, reader.first_delta_ns)


async def _post_with_viewer(dep: Deployment, port: int, conversation: str, model_name: str) -> tuple[float, float]:
    viewer = await open_reader(
        "127.0.0.1", port, events_request(port, dep.session, conversation).encode(), "app", send=True
    )
    try:
        if viewer.status != 200:
            raise RuntimeError(f"viewer got HTTP {viewer.status}")
        request = message_request(dep.a, dep.session, conversation, model_name, sse=False)
        sent = time.time_ns()
        status, body = await http_exchange(dep.a, request)
        if status != 202:
            raise RuntimeError(f"POST got HTTP {status}: {body[:200]!r}")
        await asyncio.wait_for(viewer.done, TIMEOUT)
    finally:
        viewer.close()
    if viewer.error or not viewer.first_delta_ns:
        raise RuntimeError(f"viewer failed: {viewer.error or 'no delta'}")
    return _split(sent, viewer.first_stamp_ns, viewer.first_delta_ns)


async def _provider(dep: Deployment, model_name: str) -> tuple[float, float]:
    port = dep.fake.port
    reader = await open_reader("127.0.0.1", port, provider_request(port, model_name).encode(), "provider", send=False)
    try:
        reader.send()
        await asyncio.wait_for(reader.done, TIMEOUT)
    finally:
        reader.close()
    if reader.error or not reader.first_delta_ns:
        raise RuntimeError(f"provider request failed: {reader.error or 'no delta'}")
    return _split(reader.sent_ns, reader.first_stamp_ns, reader.first_delta_ns)


def _split(sent_ns: int, stamp_ns: int, read_ns: int) -> tuple[float, float]:
    """Total ms, and the part before the provider wrote the first chunk."""
    return (read_ns - sent_ns) / 1e6, (stamp_ns - sent_ns) / 1e6


async def run(dep: Deployment, quick: bool) -> dict:
    cfg = settings(quick)
    model_name = models(quick)[0]
    total = cfg["runs"] + cfg["warmup"]
    conversations = {name: dep.conversations(total, model_name) for name in ("sse", "viewer a", "viewer b")}
    variants = {
        "streaming POST": lambda i: _streaming_post(dep, conversations["sse"][i], model_name),
        "POST + viewer on a": lambda i: _post_with_viewer(dep, dep.a, conversations["viewer a"][i], model_name),
        "POST + viewer on b": lambda i: _post_with_viewer(dep, dep.b, conversations["viewer b"][i], model_name),
        "provider direct": lambda i: _provider(dep, model_name),
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    failures: dict[str, list[str]] = {name: [] for name in variants}
    quiet = await wait_for_quiet()
    meter = CpuMeter(dep_pids(dep)).start()
    for i in range(total):
        for name, measure in variants.items():
            try:
                sample = await measure(i)
            except (RuntimeError, OSError, TimeoutError) as exc:
                failures[name].append(str(exc))
                continue
            if i >= cfg["warmup"]:
                samples[name].append(sample)
            await asyncio.sleep(0.02)
    meter.stop()
    summary = {
        name: {
            "n": len(values),
            "median_ms": percentile([v[0] for v in values], 50),
            "p90_ms": percentile([v[0] for v in values], 90),
            "to_provider_median_ms": percentile([v[1] for v in values], 50),
            "after_provider_median_ms": percentile([v[0] - v[1] for v in values], 50),
            "failures": failures[name],
        }
        for name, values in samples.items()
    }
    base = summary["provider direct"]
    rows = []
    for name in ("streaming POST", "POST + viewer on a", "POST + viewer on b"):
        app = summary[name]
        for label, key in (("median", "median_ms"), ("p90", "p90_ms")):
            target = label == "median" and name == "streaming POST"
            added = app[key] - base[key]
            rows.append(
                {
                    "measure": f"time to first token, {name}, {label}",
                    "unit": "ms",
                    "app": app[key],
                    "baseline": base[key],
                    "added": added,
                    "target": f"added <= {TARGET_MEDIAN_MS:g} ms" if target else "",
                    "verdict": ("met" if added <= TARGET_MEDIAN_MS else "missed") if target else "",
                    "problems": [f"{len(app['failures'])} failed runs"] if app["failures"] and label == "p90" else [],
                    "summary": target,
                }
            )
        print(
            f"  first token, {name}: median {fmt(app['median_ms'])} p90 {fmt(app['p90_ms'])} ms"
            f" (provider wrote it after {fmt(app['to_provider_median_ms'])} ms)"
            f" | direct median {fmt(base['median_ms'])} p90 {fmt(base['p90_ms'])} ms",
            flush=True,
        )
    return {
        "title": "Added time to first token",
        "rows": rows,
        "details": summary,
        "background_cores": round(meter.background_cores, 2),
        "quiet_wait": quiet,
        "daphne_a_cpu_ms_per_exchange": meter.used["daphne a"] / (3 * total) * 1000,
        "notes": [
            f"{name}: the provider had the request and wrote its first chunk after {fmt(v['to_provider_median_ms'])} ms"
            f" (median); from that chunk to the reader {fmt(v['after_provider_median_ms'])} ms."
            + (f" {len(v['failures'])} runs failed: {v['failures'][0]}" if v["failures"] else "")
            for name, v in summary.items()
        ]
        + [
            f"daphne a used {fmt(meter.used['daphne a'] / (3 * total) * 1000)} ms of CPU per app exchange (a"
            f" 3-chunk reply). Other work on the machine: {meter.background_cores:.2f} cores meanwhile."
        ],
        "config": {"runs": cfg["runs"], "warmup": cfg["warmup"], "model": model_name},
    }
