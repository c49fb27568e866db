"""1. Fan-out latency: the provider writes a chunk, every viewer has read it

One generation of 150 chunks at 20 a second on process a; its 1, 10, 100,
250, 500 or 1,000 viewers, connected to ``/events/`` before the POST, spread
evenly over processes a and b (one viewer: on b, the cross-process path),
read by load worker processes (at most 250 streams each). Baseline: as many
readers, each streaming the same model straight from the fake provider.
The marginal CPU per viewer-delta is the servers' extra CPU from the step
below 500 viewers to 500, per extra delta read.
"""

from __future__ import annotations

from . import plots
from .deployment import Deployment, model
from .profile import describe
from .runs import app_run, busy_machine, cost_per_event, provider_run
from .stats import fmt, latency_summary, problems

TARGET_P99_MS = 40.0
TARGET_VIEWERS = 500
TARGET_MARGINAL_US = 30.0
INTERVAL_MS = 50  # 20 chunks/s


def settings(quick: bool) -> dict:
    return {"viewers": (1, 10, 100) if quick else (1, 10, 100, 250, 500, 1000), "chunks": 60 if quick else 150}


def models(quick: bool) -> list[str]:
    return [model(chunks=settings(quick)["chunks"], interval_ms=INTERVAL_MS)]


async def measure(dep: Deployment, count: int, quick: bool, servers: dict[str, int] | None = None) -> dict:
    """One fan-out step and its baseline: ``count`` viewers over ``servers`` (two labelled ports, the first generates).

    Default: daphne a and b. Returns the step's detail (latencies, CPU, problems).
    """
    servers = servers or {"daphne a": dep.a, "daphne b": dep.b}
    (gen_label, gen_port), (other_label, other_port) = servers.items()
    model_name, chunks = models(quick)[0], settings(quick)["chunks"]
    duration = chunks * INTERVAL_MS / 1000
    conversation = dep.conversations(1, model_name)[0]
    ports = [other_port] if count == 1 else [(gen_port, other_port)[i % 2] for i in range(count)]
    app = await app_run(
        dep,
        [(port, conversation) for port in ports],
        [(gen_port, conversation)],
        model_name=model_name,
        chunks=chunks,
        duration=duration,
        servers=servers,
        profile=gen_label if count == (settings(quick)["viewers"][-1] if quick else TARGET_VIEWERS) else None,
    )
    base = await provider_run(dep, count, model_name=model_name, chunks=chunks, duration=duration)
    a, b = latency_summary(app["latencies_us"]), latency_summary(base["latencies_us"])
    by_process = {
        (f"{gen_label} (generating)" if port == gen_port else f"{other_label} (other)"): latency_summary(
            [lat for s in app["streams"] if s["port"] == port for lat in s["latencies_us"]]
        )
        for port in sorted(set(ports), key=lambda p: p != gen_port)
    }
    issues = problems(app["tally"], failed_connects=app["failed_connects"], failed_posts=len(app["failed_posts"]))
    issues += busy_machine(app, "app run")
    base_issues = problems(base["tally"], failed_connects=base["failed_connects"]) + busy_machine(base, "baseline run")
    load = lambda run: tuple(k for k in run["cpu_seconds"] if k.startswith("load"))  # noqa: E731
    return {
        "viewers": count,
        "servers": list(servers),
        "app": a,
        "baseline": b,
        "by_process": by_process,
        "problems": issues,
        "baseline_problems": base_issues,
        "cpu": {"app": _per_second(app), "baseline": _per_second(base)},
        "client_cpu_seconds": {"app": app["client_cpu_seconds"], "baseline": base["client_cpu_seconds"]},
        "server_cpu_seconds": sum(app["cpu_seconds"][label] for label in servers),
        "baseline_server_cpu_seconds": base["cpu_seconds"]["fake provider"],
        "baseline_deltas": b["n"],
        "cpu_us_per_viewer_delta": {
            "servers": cost_per_event(app, tuple(servers)),
            "fake provider (baseline)": cost_per_event(base, ("fake provider",)),
            "load workers (app)": cost_per_event(app, load(app)),
            "load workers (baseline)": cost_per_event(base, load(base)),
        },
        "background_cores": {"app": app["background_cores"], "baseline": base["background_cores"]},
        "quiet_wait": {"app": app["quiet"], "baseline": base["quiet"]},
        "profile": app["profile"],
    }


def marginal(small: dict, large: dict) -> dict:
    """Extra server CPU per extra viewer-delta from step ``small`` to ``large`` (app and baseline), in us."""
    extra = large["app"]["n"] - small["app"]["n"]
    extra_base = large["baseline_deltas"] - small["baseline_deltas"]
    return {
        "from": small["viewers"],
        "to": large["viewers"],
        "app_us": (large["server_cpu_seconds"] - small["server_cpu_seconds"]) / max(1, extra) * 1e6,
        "baseline_us": (large["baseline_server_cpu_seconds"] - small["baseline_server_cpu_seconds"])
        / max(1, extra_base)
        * 1e6,
    }


async def run(dep: Deployment, quick: bool) -> dict:
    cfg = settings(quick)
    model_name, chunks = models(quick)[0], cfg["chunks"]
    rows, details = [], []
    for count in cfg["viewers"]:
        detail = await measure(dep, count, quick)
        details.append(detail)
        a, b = detail["app"], detail["baseline"]
        for label, key in (("p50", "p50_ms"), ("p99", "p99_ms")):
            target = TARGET_P99_MS if (label == "p99" and count == TARGET_VIEWERS) else None
            rows.append(
                {
                    "measure": f"fan-out {label}, {count} viewer{'s' if count > 1 else ''}",
                    "unit": "ms",
                    "app": a[key],
                    "baseline": b[key],
                    "added": a[key] - b[key],
                    "target": f"<= {TARGET_P99_MS:g} ms" if target else "",
                    "verdict": ("met" if a[key] <= target and not detail["problems"] else "missed") if target else "",
                    "problems": detail["problems"] if label == "p99" else [],
                    "summary": bool(target),
                }
            )
        print(
            f"  fan-out {count:>4} viewers: app p50 {fmt(a['p50_ms'])} p99 {fmt(a['p99_ms'])} ms"
            f" | baseline p50 {fmt(b['p50_ms'])} p99 {fmt(b['p99_ms'])} ms"
            f" | daphne {fmt(detail['cpu_us_per_viewer_delta']['servers'], 0)} us CPU per viewer-delta"
            f" | {'; '.join(detail['problems'] + detail['baseline_problems']) or 'clean'}",
            flush=True,
        )
    notes = [_note(d) for d in details]
    margins = [marginal(small, large) for small, large in zip(details, details[1:], strict=False)]
    # The verdict's step pair ends at the target's 500 viewers (the last step in --quick).
    counts = [d["viewers"] for d in details]
    end = counts.index(TARGET_VIEWERS) if TARGET_VIEWERS in counts else len(counts) - 1
    if end >= 1:
        m = margins[end - 1]
        rows.append(
            {
                "measure": f"fan-out: marginal server CPU per viewer-delta ({m['from']} -> {m['to']} viewers,"
                " daphne a+b)",
                "unit": "us",
                "app": m["app_us"],
                "baseline": m["baseline_us"],
                "added": m["app_us"] - m["baseline_us"],
                "target": f"<= {TARGET_MARGINAL_US:g} us",
                "verdict": "met" if m["app_us"] <= TARGET_MARGINAL_US else "missed",
                "problems": [],
                "summary": True,
            }
        )
    notes += [
        f"Marginal CPU per delta per extra viewer ({m['from']} -> {m['to']} viewers): daphne a+b"
        f" {fmt(m['app_us'], 0)} us (one core delivers at most {1e6 / max(m['app_us'], 1e-9):,.0f} viewer-deltas a"
        f" second); the fake provider in the baseline {fmt(m['baseline_us'], 0)} us."
        for m in margins
        if m["from"] >= 10
    ]
    return {
        "title": "Fan-out latency",
        "rows": rows,
        "details": details,
        "marginal": margins,
        "notes": notes,
        "config": {"chunks": chunks, "chunks_per_second": 1000 / INTERVAL_MS, "model": model_name},
    }


def plots_of(result: dict) -> list[tuple[str, str, str]]:
    """(file name, alt text, SVG) of the fan-out charts: latency and server CPU per viewer-delta by viewers."""
    details = result["details"]
    viewers = [d["viewers"] for d in details]
    point = lambda f: [(d["viewers"], f(d)) for d in details]  # noqa: E731
    # From one viewer to ten the fixed cost of the generation itself dominates: no marginal there.
    margins = [m for m in result.get("marginal", []) if m["from"] >= 10]
    latency = plots.Chart(
        title="Fan-out latency by viewers of one generation (20 chunks/s, daphne a+b)",
        x_label="viewers",
        y_label="provider write -> viewer read, ms",
        x_ticks=viewers,
        series=[
            plots.Series("app p99", point(lambda d: d["app"]["p99_ms"]), plots.BLUE),
            plots.Series("app p50", point(lambda d: d["app"]["p50_ms"]), plots.BLUE, plots.DASHED),
            plots.Series("baseline p99 (fake provider)", point(lambda d: d["baseline"]["p99_ms"]), plots.GREY),
            plots.Series("baseline p50", point(lambda d: d["baseline"]["p50_ms"]), plots.GREY, plots.DASHED),
        ],
        references=[plots.Reference(f"target p99 at {TARGET_VIEWERS}: {TARGET_P99_MS:g} ms", TARGET_P99_MS)],
    )
    cpu = plots.Chart(
        title="Server CPU per viewer-delta by viewers",
        x_label="viewers",
        y_label="CPU per delta read by a viewer, us",
        x_ticks=viewers,
        series=[
            plots.Series("daphne a+b (app)", point(lambda d: d["cpu_us_per_viewer_delta"]["servers"]), plots.BLUE),
            plots.Series(
                "fake provider (baseline)",
                point(lambda d: d["cpu_us_per_viewer_delta"]["fake provider (baseline)"]),
                plots.GREY,
            ),
            plots.Series(
                "daphne a+b, marginal from the step before",
                [(m["to"], m["app_us"]) for m in margins],
                plots.BLUE,
                plots.DASHED,
            ),
            plots.Series(
                "fake provider, marginal",
                [(m["to"], m["baseline_us"]) for m in margins],
                plots.GREY,
                plots.DASHED,
            ),
        ],
        references=[plots.Reference(f"target (marginal): {TARGET_MARGINAL_US:g} us", TARGET_MARGINAL_US)],
    )
    return [
        ("fanout-latency.svg", "Fan-out latency p50 and p99 by viewers, app and baseline", plots.line_chart(latency)),
        ("fanout-cpu.svg", "Server CPU per viewer-delta by viewers, app and baseline", plots.line_chart(cpu)),
    ]


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
        f" {'+'.join(d['servers'])} {fmt(cost['servers'], 0)} us, fake provider in the baseline"
        f" {fmt(cost['fake provider (baseline)'], 0)} us; the load workers {fmt(cost['load workers (app)'], 0)} us"
        f" (app) / {fmt(cost['load workers (baseline)'], 0)} us (baseline). Other work on the machine:"
        f" {d['background_cores']['app']:.2f} cores during the app run, {d['background_cores']['baseline']:.2f}"
        f" during the baseline.{' Problems: ' + '; '.join(d['problems']) if d['problems'] else ''}"
        + (f" {describe(d['profile'])}" if d.get("profile") else "")
    )
