"""1. Fan-out latency: the provider writes a chunk, every viewer has read it

One generation of 150 chunks at 20 a second on process a; its 1, 100 or
500 viewers, connected to ``/events/`` before the POST, spread evenly over
processes a and b (one viewer: on b, the cross-process path), read by 1-2
load worker processes (at most 250 streams each). Baseline: as many
readers, each streaming the same model straight from the fake provider.
"""

from __future__ import annotations

from .deployment import Deployment, model
from .runs import app_run, busy_machine, cost_per_event, provider_run
from .stats import fmt, latency_summary, problems

TARGET_P99_MS = 50.0
INTERVAL_MS = 50  # 20 chunks/s


def settings(quick: bool) -> dict:
    return {"viewers": (1, 100) if quick else (1, 100, 500), "chunks": 60 if quick else 150}


def models(quick: bool) -> list[str]:
    return [model(chunks=settings(quick)["chunks"], interval_ms=INTERVAL_MS)]


async def run(dep: Deployment, quick: bool) -> dict:
    cfg = settings(quick)
    model_name, chunks = models(quick)[0], cfg["chunks"]
    duration = chunks * INTERVAL_MS / 1000
    rows, details = [], []
    for count in cfg["viewers"]:
        conversation = dep.conversations(1, model_name)[0]
        ports = [dep.b] if count == 1 else [(dep.a, dep.b)[i % 2] for i in range(count)]
        app = await app_run(
            dep,
            [(port, conversation) for port in ports],
            [conversation],
            model_name=model_name,
            chunks=chunks,
            duration=duration,
        )
        base = await provider_run(dep, count, model_name=model_name, chunks=chunks, duration=duration)
        a, b = latency_summary(app["latencies_us"]), latency_summary(base["latencies_us"])
        by_process = {
            ("a (generating)" if port == dep.a else "b (other)"): latency_summary(
                [lat for s in app["streams"] if s["port"] == port for lat in s["latencies_us"]]
            )
            for port in sorted(set(ports))
        }
        issues = problems(app["tally"], failed_connects=app["failed_connects"], failed_posts=len(app["failed_posts"]))
        issues += busy_machine(app, "app run")
        base_issues = problems(base["tally"], failed_connects=base["failed_connects"]) + busy_machine(
            base, "baseline run"
        )
        detail = {
            "viewers": count,
            "app": a,
            "baseline": b,
            "by_process": by_process,
            "problems": issues,
            "baseline_problems": base_issues,
            "cpu": {"app": _per_second(app), "baseline": _per_second(base)},
            "client_cpu_seconds": {"app": app["client_cpu_seconds"], "baseline": base["client_cpu_seconds"]},
            "daphne_cpu_seconds": app["cpu_seconds"]["daphne a"] + app["cpu_seconds"]["daphne b"],
            "cpu_us_per_viewer_delta": {
                "daphne a+b": cost_per_event(app, ("daphne a", "daphne b")),
                "fake provider (baseline)": cost_per_event(base, ("fake provider",)),
                "load workers (app)": cost_per_event(app, tuple(k for k in app["cpu_seconds"] if k.startswith("load"))),
                "load workers (baseline)": cost_per_event(
                    base, tuple(k for k in base["cpu_seconds"] if k.startswith("load"))
                ),
            },
            "background_cores": {"app": app["background_cores"], "baseline": base["background_cores"]},
            "quiet_wait": {"app": app["quiet"], "baseline": base["quiet"]},
        }
        details.append(detail)
        for label, key in (("p50", "p50_ms"), ("p99", "p99_ms")):
            target = TARGET_P99_MS if (label == "p99" and count == 500) else None
            rows.append(
                {
                    "measure": f"fan-out {label}, {count} viewer{'s' if count > 1 else ''}",
                    "unit": "ms",
                    "app": a[key],
                    "baseline": b[key],
                    "added": a[key] - b[key],
                    "target": f"<= {TARGET_P99_MS:g} ms" if target else "",
                    "verdict": ("met" if a[key] <= target else "missed") if target else "",
                    "problems": issues if label == "p99" else [],
                    "summary": bool(target),
                }
            )
        print(
            f"  fan-out {count:>4} viewers: app p50 {fmt(a['p50_ms'])} p99 {fmt(a['p99_ms'])} ms"
            f" | baseline p50 {fmt(b['p50_ms'])} p99 {fmt(b['p99_ms'])} ms"
            f" | daphne {fmt(detail['cpu_us_per_viewer_delta']['daphne a+b'], 0)} us CPU per viewer-delta"
            f" | {'; '.join(issues + base_issues) or 'clean'}",
            flush=True,
        )
    notes = [_note(d) for d in details]
    if len(details) >= 2 and details[-1]["viewers"] > details[-2]["viewers"]:
        small, large = details[-2], details[-1]
        marginal = (large["daphne_cpu_seconds"] - small["daphne_cpu_seconds"]) / (large["app"]["n"] - small["app"]["n"])
        notes.append(
            f"Marginal CPU per delta per extra viewer ({small['viewers']} -> {large['viewers']} viewers, daphne a+b):"
            f" {marginal * 1e6:.0f} us, i.e. one core delivers at most {1 / marginal:,.0f} viewer-deltas a second."
        )
    return {
        "title": "Fan-out latency",
        "rows": rows,
        "details": details,
        "notes": notes,
        "config": {"chunks": chunks, "chunks_per_second": 1000 / INTERVAL_MS, "model": model_name},
    }


def _per_second(run: dict) -> dict:
    """CPU seconds per wall second (1.0 = one core busy) of each server-side process."""
    wall = run["wall_seconds"] or 1
    return {name: round(used / wall, 2) for name, used in run["cpu_seconds"].items()}


def _note(d: dict) -> str:
    cost = d["cpu_us_per_viewer_delta"]
    parts = ", ".join(
        f"on {name} p50 {fmt(v['p50_ms'])} / p99 {fmt(v['p99_ms'])} ms" for name, v in d["by_process"].items()
    )
    return (
        f"{d['viewers']} viewer(s), {d['app']['n']} deltas read ({parts}). CPU per delta read by a viewer"
        f"{' (with one viewer: mostly generating and publishing it)' if d['viewers'] == 1 else ''}:"
        f" daphne a+b {fmt(cost['daphne a+b'], 0)} us, fake provider in the baseline"
        f" {fmt(cost['fake provider (baseline)'], 0)} us; the load workers {fmt(cost['load workers (app)'], 0)} us"
        f" (app) / {fmt(cost['load workers (baseline)'], 0)} us (baseline). Other work on the machine:"
        f" {d['background_cores']['app']:.2f} cores during the app run, {d['background_cores']['baseline']:.2f}"
        f" during the baseline.{' Problems: ' + '; '.join(d['problems']) if d['problems'] else ''}"
    )
