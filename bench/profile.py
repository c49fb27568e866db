"""Where a server process spends its CPU during a run: py-spy samples it (``python -m bench --profile``).

py-spy reads the process's stacks from outside (``--nonblocking``: the
process is never paused), so the profiled run costs the server nothing but
the sampler's own CPU on the other core. The summary keeps the shares of
samples by package (the frame that was running: django, twisted, chat/...,
asyncio) and the functions with the most samples of their own and in all.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path

RATE = 100  # samples a second: enough for shares of a few percent, little CPU for the sampler
TOP = 12


def py_spy() -> str | None:
    """The py-spy executable (a dev requirement) beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profile:
    """py-spy recording one process from ``start()`` to ``stop()``; ``stop()`` returns the summary."""

    def __init__(self, pid: int, label: str):
        self.pid, self.label = pid, label
        self.output = Path(tempfile.mkstemp(prefix="bench-profile-", suffix=".txt")[1])
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Profile:
        executable = py_spy()
        if executable is None:
            raise RuntimeError("--profile needs py-spy (requirements/dev.in): make install")
        self.proc = await asyncio.create_subprocess_exec(
            executable,
            *("record", "--pid", str(self.pid), "--rate", str(RATE), "--format", "raw", "--function"),
            *("--nonblocking", "--output", str(self.output)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return self

    async def stop(self) -> dict:
        from .deployment import cpu_seconds

        sampler_cpu = cpu_seconds(self.proc.pid)
        # py-spy writes its samples when interrupted, as after Ctrl-C.
        self.proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(self.proc.communicate(), 60)
        try:
            text = self.output.read_text()
        finally:
            self.output.unlink(missing_ok=True)
        summary = summarize(text)
        summary["process"] = self.label
        summary["sampler_cpu_seconds"] = round(sampler_cpu, 2)
        if not summary["samples"]:
            summary["error"] = err.decode(errors="replace").strip().splitlines()[-1:] or ["no samples"]
        return summary


def _package(frame: str) -> str:
    """``f (django/core/handlers/asgi.py:160)`` -> ``django``; the project's modules stay whole (``chat/fanout.py``)."""
    path = frame.rsplit("(", 1)[-1].split(":", 1)[0]
    parts = path.replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    if parts[0] in ("chat", "config", "bench", "tests"):
        return "/".join(parts[:2])
    if len(parts) == 1:
        return parts[0].removesuffix(".py")  # a stdlib module of its own (selectors.py, ssl.py)
    return parts[0]


def summarize(raw: str) -> dict:
    """Shares (0-1) of the samples in py-spy's raw output: by package of the running frame, by function."""
    own, total, packages = Counter(), Counter(), Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        packages[_package(frames[-1])] += n
        for frame in set(frames):
            total[frame] += n
    share = lambda counter: [(name, round(c / samples, 3)) for name, c in counter.most_common(TOP)]  # noqa: E731
    # Inclusive shares: the project's own functions, where a change in this repository would act.
    # (Not the entry points every stack passes through: manage.py serve, the ASGI application.)
    ours = Counter(
        {
            f: c
            for f, c in total.items()
            if _package(f).startswith(("chat/", "config/"))
            and not _package(f).startswith(("chat/management",))
            and "(config/asgi.py" not in f
        }
    )
    return {
        "samples": samples,
        "seconds": round(samples / RATE, 1),
        "by_package": share(packages) if samples else [],
        "own": share(own) if samples else [],
        "inclusive_project": share(ours) if samples else [],
    }


def describe(summary: dict, top: int = 6) -> str:
    """One line of a summary for the document."""
    if not summary.get("samples"):
        return f"profile of {summary.get('process', '?')}: no samples ({'; '.join(summary.get('error', []))})"
    pct = lambda items: ", ".join(f"{name} {share:.0%}" for name, share in items[:top])  # noqa: E731
    return (
        f"Profile of {summary['process']} (py-spy, {summary['samples']} samples over about {summary['seconds']:g} s"
        f" of CPU; the sampler itself used {summary['sampler_cpu_seconds']:g} s of CPU): running frame by package:"
        f" {pct(summary['by_package'])}. Most samples of their own: {pct(summary['own'])}. The project's"
        f" functions, inclusive: {pct(summary['inclusive_project'])}."
    )
