"""6. Memory per viewer that stops reading

A fresh daphne process (Redis configured) serves one warm-up reply to a
viewer that reads it; then 10 viewers open the conversation's event stream,
read its first frame and never read again (4 KiB socket receive buffers, so
the kernel takes little off the server's hands, as on a slow link). A reply
of about 5 MB is generated on another fresh process (its reply cap raised);
the measured process only fans it out. Its VmRSS is read before the reply,
its peak (VmHWM) during it, 18 s after the reply ended (a heartbeat and 3 s;
the viewers still connected, still not reading), and 3 s after they closed;
each minus "before", divided by 10. Once with the default budget of
``CHAT_VIEWER_MAX_PENDING_BYTES`` (4 MiB), once, as the same-run baseline,
with no budget (``0``: the behaviour before the budget).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

from tests.fakeprovider import reply_text

from .deployment import HOST, Deployment, events_request, http_exchange, message_request, rss_kib
from .stats import fmt

MIB = 1024 * 1024
SETTLE_SECONDS = 3.0
# A viewer over its budget is cut at its next write: a heartbeat (15 s by default) at the latest.
AFTER_REPLY_SECONDS = 18.0
WARMUP_MODEL = "fake:chunks=2000"
CUT_OFF_LINE = "viewer cut off"
REPLY_CHARS = 5_000_000


def settings(quick: bool) -> dict:
    # quick: a 2.7 MB reply and a 256 KiB budget, so that the budget still trips.
    if quick:
        return {"viewers": 3, "model": "fake:chunks=150000", "budget": 256 * 1024}
    return {"viewers": 10, "model": "fake:chunks=280000", "budget": 4 * MIB}


def models(quick: bool) -> list[str]:
    return [settings(quick)["model"], WARMUP_MODEL]


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def open_non_reader(port: int, request: str) -> socket.socket:
    """An event stream whose client reads its first frame (the stream is live) and then nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, port))
    sock.sendall(request.encode())
    sock.settimeout(30)
    received = b""
    while b"retry: 2000" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"the event stream ended before its first frame: {received[:200]!r}")
        received += chunk
    return sock


def drain(sock: socket.socket) -> None:
    """Read whatever the server sends until it ends the stream or goes quiet for a second."""
    sock.settimeout(1.0)
    try:
        while sock.recv(1 << 20):
            pass
    except (OSError, TimeoutError):
        pass


async def wait_for_reply(dep: Deployment, message_id: str, timeout: float = 600) -> float:
    """Seconds until the message is no longer streaming (read from the database)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        (status,) = dep.stack.query("SELECT status FROM chat_message WHERE id = ?", (dep.stack.uuid(message_id),))[0]
        if status != "streaming":
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the reply {message_id} was still streaming after {timeout:.0f} s")


async def post(dep: Deployment, port: int, conversation: str, model_name: str) -> str:
    status, body = await http_exchange(port, message_request(port, dep.session, conversation, model_name, sse=False))
    if status != 202:
        raise RuntimeError(f"POST answered {status}: {body[:200]!r}")
    return json.loads(body)["assistant_message"]["id"]


async def _case(dep: Deployment, config: dict, budget: int) -> dict:
    # The generating process allows the long reply; the measured one only fans it out.
    generator = dep.start_server({"CHAT_MAX_REPLY_CHARS": str(2 * REPLY_CHARS)})
    port = dep.start_server({"CHAT_VIEWER_MAX_PENDING_BYTES": str(budget)})
    pid = dep.pid(port)
    log = dep.stack.logs[port]
    sockets: list[socket.socket] = []
    try:
        warm = dep.conversations(1, WARMUP_MODEL)[0]
        reader = open_non_reader(port, events_request(port, dep.session, warm))
        await wait_for_reply(dep, await post(dep, generator, warm, WARMUP_MODEL))
        drain(reader)
        reader.close()
        conversation = dep.conversations(1, config["model"])[0]
        sockets = [
            open_non_reader(port, events_request(port, dep.session, conversation)) for _ in range(config["viewers"])
        ]
        await asyncio.sleep(SETTLE_SECONDS)
        before = rss_kib(pid)
        seconds = await wait_for_reply(dep, await post(dep, generator, conversation, config["model"]))
        await asyncio.sleep(AFTER_REPLY_SECONDS)
        after_reply, peak = rss_kib(pid), vm_kib(pid, "VmHWM")
        cut_off = log.read_text(errors="replace").count(CUT_OFF_LINE)
        for sock in sockets:
            sock.close()
        sockets = []
        await asyncio.sleep(SETTLE_SECONDS)
        after_close = rss_kib(pid)
    finally:
        for sock in sockets:
            sock.close()
        dep.stop_server(port)
        dep.stop_server(generator)
    count = config["viewers"]
    return {
        "budget": budget,
        "reply_seconds": seconds,
        "before_kib": before,
        "peak_kib": peak,
        "after_reply_kib": after_reply,
        "after_close_kib": after_close,
        "cut_off": cut_off,
        "peak_per_viewer_kib": (peak - before) / count,
        "after_reply_per_viewer_kib": (after_reply - before) / count,
        "after_close_per_viewer_kib": (after_close - before) / count,
    }


def _budget_label(budget: int) -> str:
    return f"budget {fmt(budget / 1024)} KiB" if budget else "no budget"


async def run(dep: Deployment, quick: bool) -> dict:
    config = settings(quick)
    count, budget = config["viewers"], config["budget"]
    reply_bytes = len(reply_text(config["model"]).encode())
    cases = {"budget": await _case(dep, config, budget), "none": await _case(dep, config, 0)}
    with_budget, without = cases["budget"], cases["none"]
    rows = []
    for key, label, target, limit in (
        ("peak_per_viewer", "peak", f"<= {budget // 1024} KiB (the budget)", budget / 1024),
        ("after_reply_per_viewer", f"{AFTER_REPLY_SECONDS:g} s after the reply", "", None),
        ("after_close_per_viewer", "3 s after the viewers closed", "", None),
    ):
        app, baseline = with_budget[f"{key}_kib"], without[f"{key}_kib"]
        rows.append(
            {
                "measure": f"RSS growth per non-reading viewer of a {reply_bytes / MIB:.1f} MB reply, {label}",
                "unit": "KiB",
                "app": app,
                "baseline": baseline,
                "baseline_label": "no budget",
                "added": app - baseline,
                "target": target,
                "verdict": "" if limit is None else ("met" if app <= limit else "missed"),
                "problems": [],
                "summary": key != "after_close_per_viewer",
            }
        )
    for case in cases.values():
        print(
            f"  slow readers, {_budget_label(case['budget'])}:"
            f" {count} non-readers of {reply_bytes / MIB:.1f} MB in {case['reply_seconds']:.1f} s,"
            f" {case['cut_off']} cut off; RSS {case['before_kib'] // 1024} MiB before, peak"
            f" {case['peak_kib'] // 1024}, {case['after_reply_kib'] // 1024} after the reply,"
            f" {case['after_close_kib'] // 1024} after closing",
            flush=True,
        )
    notes = [
        f"{_budget_label(c['budget'])}: VmRSS"
        f" {c['before_kib'] // 1024} MiB before the reply, peak {c['peak_kib'] // 1024} MiB,"
        f" {c['after_reply_kib'] // 1024} MiB {AFTER_REPLY_SECONDS:g} s after it ({c['cut_off']} of {count} viewers cut"
        f" off), {c['after_close_kib'] // 1024} MiB {SETTLE_SECONDS:g} s after the viewers closed; the reply took"
        f" {c['reply_seconds']:.1f} s."
        for c in cases.values()
    ]
    return {
        "title": "Memory per viewer that stops reading",
        "notes": notes,
        "rows": rows,
        "details": cases,
        "config": {
            **config,
            "reply_bytes": reply_bytes,
            "settle_seconds": SETTLE_SECONDS,
            "after_reply_seconds": AFTER_REPLY_SECONDS,
        },
    }
