"""5. Memory per idle viewer connection

A fresh daphne process (Redis configured) first serves 10 warm-up viewers,
which stay open; then its VmRSS is read, 1,000 more event streams are
opened and held, and 3 s later VmRSS is read again: (after - before) /
1,000. Once with the viewers spread over 20 conversations, once all in one.
Baseline: a fresh fake provider process holding as many idle streams (a
plain asyncio server).
"""

from __future__ import annotations

import asyncio

from .deployment import Deployment, FakeProviderProcess, LoadWorkers, events_request, provider_request, rss_kib
from .stats import fmt

TARGET_KIB = 32
CONVERSATIONS = 20
WARMUP_VIEWERS = 10
SETTLE_SECONDS = 3.0


def settings(quick: bool) -> dict:
    return {"viewers": 250 if quick else 1000}


def models(quick: bool) -> list[str]:
    return ["fake:chunks=1;stall_after=0"]


async def _hold(streams: list[dict], kind: str, pid: int) -> dict:
    """RSS before and after opening ``streams`` (the warm-up ones first), in KiB."""
    warm, rest = streams[:WARMUP_VIEWERS], streams[WARMUP_VIEWERS:]
    warm_workers = LoadWorkers(warm, kind=kind, send_on_go=False, deadline_seconds=0, hold=True)
    workers = LoadWorkers(rest, kind=kind, send_on_go=False, deadline_seconds=0, hold=True)
    try:
        await warm_workers.open()
        await asyncio.sleep(SETTLE_SECONDS)
        before = rss_kib(pid)
        await workers.open(timeout=300)
        await asyncio.sleep(SETTLE_SECONDS)
        after = rss_kib(pid)
        opened, failed = workers.opened, workers.failed
        await workers.go()
        await warm_workers.go()
        reasons = sorted({reason for result in await workers.results(60) for reason in result["failed"]})
        await warm_workers.results(60)
        await asyncio.sleep(SETTLE_SECONDS)
        released = rss_kib(pid)
    finally:
        await workers.close()
        await warm_workers.close()
    return {
        "before_kib": before,
        "after_kib": after,
        "after_close_kib": released,
        "opened": opened,
        "failed": failed,
        "failure_reasons": reasons,
        "per_viewer_kib": (after - before) / max(1, opened),
    }


async def run(dep: Deployment, quick: bool) -> dict:
    count = settings(quick)["viewers"]
    total = count + WARMUP_VIEWERS
    cases = {}
    for label, spread in ((f"over {CONVERSATIONS} conversations", CONVERSATIONS), ("in one conversation", 1)):
        conversations = dep.conversations(spread, "fake:chunks=1;stall_after=0")
        warm_conversation = dep.conversations(1, "fake:chunks=1;stall_after=0")[0]
        port = dep.start_server()
        try:
            streams = [
                {
                    "port": port,
                    "request": events_request(
                        port, dep.session, warm_conversation if i < WARMUP_VIEWERS else conversations[i % spread]
                    ),
                }
                for i in range(total)
            ]
            cases[label] = await _hold(streams, "app", dep.pid(port))
        finally:
            dep.stop_server(port)
    fake = FakeProviderProcess()
    try:
        streams = [{"port": fake.port, "request": provider_request(fake.port, models(quick)[0])} for _ in range(total)]
        baseline = await _hold(streams, "provider", fake.pid)
    finally:
        fake.stop()
    rows = []
    for label, case in cases.items():
        problems = (
            [f"{case['failed']} of {count} viewers failed to connect: {', '.join(case['failure_reasons'])}"]
            if case["failed"]
            else []
        )
        rows.append(
            {
                "measure": f"memory per idle viewer, {count} viewers {label}",
                "unit": "KiB",
                "app": case["per_viewer_kib"],
                "baseline": baseline["per_viewer_kib"],
                "added": case["per_viewer_kib"] - baseline["per_viewer_kib"],
                "target": f"<= {TARGET_KIB} KiB",
                "verdict": "met" if case["per_viewer_kib"] <= TARGET_KIB else "missed",
                "problems": problems,
                "summary": True,
            }
        )
        print(
            f"  memory, {case['opened']} idle viewers {label}: {fmt(case['per_viewer_kib'])} KiB each"
            f" (RSS {case['before_kib'] // 1024} -> {case['after_kib'] // 1024} MiB,"
            f" {case['after_close_kib'] // 1024} MiB after closing)"
            f" | fake provider {fmt(baseline['per_viewer_kib'])} KiB each",
            flush=True,
        )
    notes = [
        f"{label}: VmRSS {c['before_kib'] // 1024} MiB with {WARMUP_VIEWERS} warm-up viewers, {c['after_kib'] // 1024}"
        f" MiB with {c['opened']} more ({c['failed']} failed to connect), {c['after_close_kib'] // 1024} MiB"
        f" {SETTLE_SECONDS:g} s after they closed."
        for label, c in cases.items()
    ]
    notes.append(
        f"baseline (fake provider): {baseline['before_kib'] // 1024} -> {baseline['after_kib'] // 1024} MiB for"
        f" {baseline['opened']} idle streams."
    )
    return {
        "title": "Memory per idle viewer",
        "notes": notes,
        "rows": rows,
        "details": {"app": cases, "baseline": baseline},
        "config": {"viewers": count, "settle_seconds": SETTLE_SECONDS},
    }
