"""One measured generation run through the app, and its baseline straight from the fake provider."""

from __future__ import annotations

import asyncio
import time

from .deployment import (
    CpuMeter,
    Deployment,
    LoadWorkers,
    events_request,
    http_exchange,
    message_request,
    provider_request,
    wait_for_quiet,
)
from .profile import Profile
from .stats import tally

# ``python -m bench --profile``: py-spy samples the server a step names in ``app_run(profile=...)``.
PROFILING = False


def _collect(workers: LoadWorkers, results: list[dict], expected: int, meter: CpuMeter):
    streams = [s for result in results for s in result["streams"]]
    return {
        "streams": streams,
        "latencies_us": [lat for s in streams for lat in s["latencies_us"]],
        "tally": tally(streams, expected),
        "failed_connects": sum(len(r["failed"]) for r in results),
        "failure_reasons": sorted({f for r in results for f in r["failed"]}),
        "client_cpu_seconds": sum(r["cpu_seconds"] for r in results),
        "cpu_seconds": meter.used,
        "wall_seconds": meter.wall,
        "background_cores": round(meter.background_cores, 2),
    }


async def app_run(
    dep: Deployment,
    viewers: list[tuple[int, str]],
    posts: list[tuple[int, str]],
    *,
    model_name: str,
    chunks: int,
    duration: float,
    ramp_seconds: float = 0.0,
    servers: dict[str, int] | None = None,
    profile: str | None = None,
) -> dict:
    """Viewers ``(port, conversation)`` connect first; then one POST per ``(port, conversation)`` in ``posts``.

    The POSTs are spread over ``ramp_seconds``. ``servers`` names the server
    processes whose CPU is metered (``{label: port}``, default daphne a and b).
    With ``--profile``, the server labelled ``profile`` is sampled by py-spy
    during the run (the result's ``profile``).
    """
    servers = servers or {"daphne a": dep.a, "daphne b": dep.b}
    streams = [{"port": port, "request": events_request(port, dep.session, conv)} for port, conv in viewers]
    workers = LoadWorkers(streams, kind="app", send_on_go=False, deadline_seconds=duration + ramp_seconds + 30)
    failed_posts: list[str] = []

    async def post(i: int, post_port: int, conv: str, start: float):
        due = start + ramp_seconds * i / max(1, len(posts))
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        try:
            status, body = await http_exchange(
                post_port, message_request(post_port, dep.session, conv, model_name, sse=False)
            )
        except (OSError, TimeoutError) as exc:
            failed_posts.append(repr(exc))
            return
        if status != 202:
            failed_posts.append(f"HTTP {status}: {body[:200]!r}")

    quiet = await wait_for_quiet()
    sampler = None
    try:
        await workers.open()
        meter = CpuMeter(dep_pids(dep, workers, servers))
        await workers.go()
        if PROFILING and profile:
            sampler = await Profile(dep.pid(servers[profile]), profile).start()
        meter.start()
        start = time.monotonic()
        await asyncio.gather(*(post(i, port, conv, start) for i, (port, conv) in enumerate(posts)))
        results = await workers.results(timeout=duration + ramp_seconds + 90)
        meter.stop()
        summary = await sampler.stop() if sampler else None
    finally:
        if sampler is not None and sampler.proc.returncode is None:
            sampler.proc.kill()
        await workers.close()
    run = _collect(workers, results, chunks, meter)
    run["profile"] = summary
    run["failed_posts"] = failed_posts
    run["quiet"] = quiet
    return run


async def provider_run(
    dep: Deployment, count: int, *, model_name: str, chunks: int, duration: float, ramp_seconds: float = 0.0
) -> dict:
    """The baseline: ``count`` readers, each with its own streaming request to the fake provider."""
    port = dep.fake.port
    streams = [{"port": port, "request": provider_request(port, model_name)} for _ in range(count)]
    workers = LoadWorkers(
        streams,
        kind="provider",
        send_on_go=True,
        deadline_seconds=duration + ramp_seconds + 30,
        ramp_seconds=ramp_seconds,
    )
    quiet = await wait_for_quiet()
    try:
        await workers.open()
        meter = CpuMeter(dep_pids(dep, workers))
        meter.start()
        await workers.go()
        results = await workers.results(timeout=duration + ramp_seconds + 90)
        meter.stop()
    finally:
        await workers.close()
    run = _collect(workers, results, chunks, meter)
    run["failed_posts"] = []
    run["quiet"] = quiet
    return run


def dep_pids(
    dep: Deployment, workers: LoadWorkers | None = None, servers: dict[str, int] | None = None
) -> dict[str, int]:
    """The pids to meter, by label: the servers (default daphne a and b), Redis, the fake provider, the workers."""
    servers = servers or {"daphne a": dep.a, "daphne b": dep.b}
    pids = {label: dep.pid(port) for label, port in servers.items()}
    pids["redis"] = dep.redis.proc.pid
    pids["fake provider"] = dep.fake.pid
    pids.update({f"load worker {i}": pid for i, pid in enumerate(workers.pids if workers else ())})
    return pids


def steady_window(run: dict) -> list[int]:
    """Latencies of deltas written while every stream was under way (all started, none finished)."""
    spans = [(s["stamps"][0], s["stamps"][-1]) for s in run["streams"] if s["stamps"]]
    if not spans:
        return []
    low, high = max(a for a, _ in spans), min(b for _, b in spans)
    if high <= low:
        return run["latencies_us"]
    return [
        lat
        for s in run["streams"]
        for stamp, lat in zip(s["stamps"], s["latencies_us"], strict=True)
        if low <= stamp <= high
    ]


def cost_per_event(run: dict, processes: tuple[str, ...]) -> float:
    """CPU microseconds the named processes spent per delta a reader received."""
    received = len(run["latencies_us"])
    return sum(run["cpu_seconds"][p] for p in processes) / max(1, received) * 1e6


def busy_machine(run: dict, label: str = "", limit: float = 0.3) -> list[str]:
    """A note when other work on the machine took more than ``limit`` cores during the run."""
    if run["background_cores"] > limit:
        return [f"other work on the machine used {run['background_cores']:.2f} cores during the {label or 'run'}"]
    return []
