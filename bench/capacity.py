"""3. Concurrent generations one daphne process sustains

Each step runs N generations at once on process a (Redis configured), each
in its own conversation with one viewer on the same process, 200 chunks at
50 a second (4 s); the POSTs are spread over 1 s. The step holds when the
p99 fan-out latency of the steady part (deltas written while every
generation was under way) is at most 100 ms and nothing was lost or
refused; the steps stop at the first that fails. The baseline streams N
requests straight from the fake provider, ramped alike.
"""

from __future__ import annotations

from .deployment import Deployment, model
from .runs import app_run, busy_machine, cost_per_event, provider_run, steady_window
from .stats import fmt, latency_summary, problems

LIMIT_P99_MS = 100.0
TARGET_GENERATIONS = 200
INTERVAL_MS = 20  # 50 chunks/s
RAMP_SECONDS = 1.0


def settings(quick: bool) -> dict:
    steps = (1, 10, 25) if quick else (1, 10, 25, 50, 100, 150, 200, 300, 400)
    return {"steps": steps, "chunks": 100 if quick else 200}


def models(quick: bool) -> list[str]:
    return [model(chunks=settings(quick)["chunks"], interval_ms=INTERVAL_MS)]


async def run(dep: Deployment, quick: bool) -> dict:
    cfg = settings(quick)
    model_name, chunks = models(quick)[0], cfg["chunks"]
    duration = chunks * INTERVAL_MS / 1000
    conversations = dep.conversations(max(cfg["steps"]), model_name)
    steps, held = [], 0
    for count in cfg["steps"]:
        mine = conversations[:count]
        app = await app_run(
            dep,
            [(dep.a, conv) for conv in mine],
            mine,
            model_name=model_name,
            chunks=chunks,
            duration=duration,
            ramp_seconds=RAMP_SECONDS,
        )
        base = await provider_run(
            dep, count, model_name=model_name, chunks=chunks, duration=duration, ramp_seconds=RAMP_SECONDS
        )
        a_steady, b_steady = latency_summary(steady_window(app)), latency_summary(steady_window(base))
        a_all, b_all = latency_summary(app["latencies_us"]), latency_summary(base["latencies_us"])
        issues = problems(app["tally"], failed_connects=app["failed_connects"], failed_posts=len(app["failed_posts"]))
        ok = not issues and a_steady["p99_ms"] <= LIMIT_P99_MS
        issues += busy_machine(app, "app run")
        wall = app["wall_seconds"] or 1
        step = {
            "generations": count,
            "app_steady": a_steady,
            "app_all": a_all,
            "baseline_steady": b_steady,
            "baseline_all": b_all,
            "held": ok,
            "problems": issues,
            "post_failures": sorted(set(app["failed_posts"]))[:5],
            "baseline_problems": problems(base["tally"], failed_connects=base["failed_connects"]),
            "daphne_cpu": round(app["cpu_seconds"]["daphne a"] / wall, 2),
            "daphne_cpu_us_per_delta": cost_per_event(app, ("daphne a",)),
            "background_cores": {"app": app["background_cores"], "baseline": base["background_cores"]},
            "cpu": {name: round(used / wall, 2) for name, used in app["cpu_seconds"].items()},
            "client_cpu_seconds": {"app": app["client_cpu_seconds"], "baseline": base["client_cpu_seconds"]},
        }
        steps.append(step)
        print(
            f"  {count:>4} generations: steady p99 {fmt(a_steady['p99_ms'])} ms (all {fmt(a_all['p99_ms'])})"
            f" p50 {fmt(a_steady['p50_ms'])} | baseline steady p99 {fmt(b_steady['p99_ms'])} ms"
            f" | daphne {step['daphne_cpu']} cores, {fmt(step['daphne_cpu_us_per_delta'], 0)} us/delta"
            f" | {'held' if ok else 'FAILED: ' + ('; '.join(issues) or 'p99')}",
            flush=True,
        )
        if not ok:
            break
        held = count
    rows = [
        {
            "measure": f"capacity: {s['generations']} generation{'s' if s['generations'] != 1 else ''}, steady p99",
            "unit": "ms",
            "app": s["app_steady"]["p99_ms"],
            "baseline": s["baseline_steady"]["p99_ms"],
            "added": s["app_steady"]["p99_ms"] - s["baseline_steady"]["p99_ms"],
            "target": f"<= {LIMIT_P99_MS:g} ms",
            "verdict": "held" if s["held"] else "failed",
            "problems": s["problems"],
            "summary": not s["held"],
        }
        for s in steps
    ]
    rows.append(
        {
            "measure": "capacity: concurrent generations held (one process)",
            "unit": "",
            "app": held,
            "baseline": None,
            "added": None,
            "target": f">= {TARGET_GENERATIONS}",
            "verdict": "met" if held >= TARGET_GENERATIONS else "missed",
            "problems": [],
            "summary": True,
        }
    )
    return {
        "title": "Concurrent generations on one process",
        "rows": rows,
        "details": steps,
        "notes": [_note(s) for s in steps],
        "held": held,
        "config": {"chunks": chunks, "chunks_per_second": 1000 / INTERVAL_MS, "ramp_seconds": RAMP_SECONDS},
    }


def _note(s: dict) -> str:
    return (
        f"{s['generations']} generation{'s' if s['generations'] != 1 else ''}:"
        f" steady p50 {fmt(s['app_steady']['p50_ms'])} / p99"
        f" {fmt(s['app_steady']['p99_ms'])} ms ({s['app_steady']['n']} deltas; all deltas p99"
        f" {fmt(s['app_all']['p99_ms'])} ms); baseline steady p99 {fmt(s['baseline_steady']['p99_ms'])} ms."
        f" daphne a busy {s['daphne_cpu']} cores, {fmt(s['daphne_cpu_us_per_delta'], 0)} us CPU per delta."
        f" Other work on the machine: {s['background_cores']['app']:.2f} cores."
        f"{' Problems: ' + '; '.join(s['problems']) if s['problems'] else ''}"
        f"{' POST failures: ' + '; '.join(s['post_failures']) if s['post_failures'] else ''}"
    )
