"""8. The same app under another ASGI server: uvicorn against daphne

daphne is the server the project ships and measures; this section runs two
steps of the sections above, in the same run, once on daphne and once on
two uvicorn processes (``uvicorn config.asgi:application`` with httptools and
its lifespan events, the same database, Redis and settings): the fan-out to
500 viewers over two processes (section 1) and 100 concurrent generations on
one process (section 3). The `app` column is uvicorn, the `baseline` column
daphne; the fake provider's figures for the same load are in the notes.
uvicorn sends the lifespan shutdown (which ends the process's generations as
``interrupted``) only once its connections have closed, and an event stream
does not close by itself: run it with ``--timeout-graceful-shutdown`` (the
bench gives 5 s), as tests/test_lifespan.py's processes do.
"""

from __future__ import annotations

from importlib.metadata import version

from . import capacity, fanout
from .deployment import Deployment
from .stats import fmt


def settings(quick: bool) -> dict:
    return {"viewers": 100 if quick else 500, "generations": 25 if quick else 100}


def models(quick: bool) -> list[str]:
    return fanout.models(quick) + capacity.models(quick)


def _row(measure: str, unit: str, uvicorn: float, daphne: float, *, summary: bool = False, **extra) -> dict:
    return {
        "measure": measure,
        "unit": unit,
        "app": uvicorn,
        "baseline": daphne,
        "baseline_label": "daphne",
        "added": uvicorn - daphne,
        "target": "",
        "verdict": "",
        "problems": [],
        "summary": summary,
        **extra,
    }


async def run(dep: Deployment, quick: bool) -> dict:
    cfg = settings(quick)
    c, d = dep.start_uvicorn(), dep.start_uvicorn()
    servers = {"daphne": {"daphne a": dep.a, "daphne b": dep.b}, "uvicorn": {"uvicorn c": c, "uvicorn d": d}}
    try:
        fan, cap = {}, {}
        for name, pair in servers.items():
            fan[name] = await fanout.measure(dep, cfg["viewers"], quick, pair)
            print(
                f"  {name}: fan-out {cfg['viewers']} viewers p50 {fmt(fan[name]['app']['p50_ms'])}"
                f" p99 {fmt(fan[name]['app']['p99_ms'])} ms,"
                f" {fmt(fan[name]['cpu_us_per_viewer_delta']['servers'], 0)} us CPU per viewer-delta"
                f" | {'; '.join(fan[name]['problems']) or 'clean'}",
                flush=True,
            )
        model_name = capacity.models(quick)[0]
        for name, pair in servers.items():
            label, port = next(iter(pair.items()))
            conversations = dep.conversations(cfg["generations"], model_name)
            cap[name] = await capacity.measure(dep, conversations, [port] * len(conversations), {label: port}, quick)
            print(
                f"  {name}: {cfg['generations']} generations on one process, steady p99"
                f" {fmt(cap[name]['app_steady']['p99_ms'])} ms, {fmt(cap[name]['server_cpu_us_per_delta'], 0)} us"
                f" CPU per delta | {'held' if cap[name]['held'] else 'failed'}",
                flush=True,
            )
    finally:
        dep.stop_server(c)
        dep.stop_server(d)
    viewers, generations = cfg["viewers"], cfg["generations"]
    u, v = fan["uvicorn"], fan["daphne"]
    rows = [
        _row(
            f"uvicorn: fan-out p99, {viewers} viewers over two processes",
            "ms",
            u["app"]["p99_ms"],
            v["app"]["p99_ms"],
            summary=True,
            problems=u["problems"],
        ),
        _row(f"uvicorn: fan-out p50, {viewers} viewers", "ms", u["app"]["p50_ms"], v["app"]["p50_ms"]),
        _row(
            f"uvicorn: server CPU per viewer-delta, {viewers} viewers",
            "us",
            u["cpu_us_per_viewer_delta"]["servers"],
            v["cpu_us_per_viewer_delta"]["servers"],
        ),
    ]
    u, v = cap["uvicorn"], cap["daphne"]
    rows += [
        _row(
            f"uvicorn: capacity step, {generations} generations on one process, steady p99",
            "ms",
            u["app_steady"]["p99_ms"],
            v["app_steady"]["p99_ms"],
            summary=True,
            verdict=f"{'held' if u['held'] else 'failed'} (daphne: {'held' if v['held'] else 'failed'})",
            target=f"<= {capacity.LIMIT_P99_MS:g} ms",
            problems=u["problems"],
        ),
        _row(
            f"uvicorn: CPU per delta on the generating process, {generations} generations",
            "us",
            u["server_cpu_us_per_delta"],
            v["server_cpu_us_per_delta"],
        ),
    ]
    notes = [
        f"Fan-out, {viewers} viewers, on {name}: p50 {fmt(f['app']['p50_ms'])} / p99 {fmt(f['app']['p99_ms'])} ms"
        f" ({f['app']['n']} deltas read), {fmt(f['cpu_us_per_viewer_delta']['servers'], 0)} us of server CPU per"
        f" viewer-delta; fake provider in its baseline p99 {fmt(f['baseline']['p99_ms'])} ms. Other work on the"
        f" machine: {f['background_cores']['app']:.2f} cores.{_problems(f)}"
        for name, f in fan.items()
    ] + [f"{name}: {capacity.note(s)}" for name, s in cap.items()]
    notes.append(
        f"uvicorn {version('uvicorn')} with httptools {version('httptools')} on asyncio's event loop. The"
        " transport budget that cuts off a viewer who stops reading (chat/transport.py) is daphne's alone;"
        " uvicorn's own send waits while a client's socket buffer is full."
    )
    return {
        "title": "uvicorn against daphne",
        "rows": rows,
        "details": {"fanout": fan, "capacity": cap},
        "notes": notes,
        "config": cfg,
    }


def _problems(detail: dict) -> str:
    return f" Problems: {'; '.join(detail['problems'])}." if detail["problems"] else ""
