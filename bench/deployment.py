"""The deployment under test and the tools to drive and observe it.

Everything runs on loopback: one Redis, the fake provider as its own
process, a SQLite file and daphne processes from ``tests.servers.Stack``,
and the viewer load in worker processes (``bench.sseload``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.servers import ROOT, PostgresServer, RedisServer, Stack, free_port, login, wait_for_port

HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
VIEWERS_PER_WORKER = 250
# Every viewer is one user (olivia): lift the per-user limits, which would
# otherwise (correctly) refuse her 21st stream and 21st message a minute.
SERVER_ENV = {
    "LLM_READ_TIMEOUT": "30",
    "CHAT_MAX_STREAMS_PER_USER": "0",
    "CHAT_MESSAGES_PER_MINUTE": "0",
    "CHAT_DAILY_TOKEN_QUOTA": "0",
}


# uvicorn as the comparison server: its C HTTP parser, no access log (the app logs each request, as under
# daphne), lifespan required (start-up fails loudly if the app's hook does), and open streams get 5 s at shutdown.
UVICORN_OPTIONS = (
    "--host",
    HOST,
    "--http",
    "httptools",
    "--lifespan",
    "on",
    "--no-access-log",
    "--timeout-graceful-shutdown",
    "5",
)


def model(*, chunks: int, interval_ms: float = 0, first_ms: float = 0) -> str:
    """A fake model whose deltas carry their write time (``;`` because LLM_MODELS is comma-separated)."""
    name = f"fake:chunks={chunks};stamp=1"
    if interval_ms:
        name += f";interval_ms={interval_ms:g}"
    if first_ms:
        name += f";first_ms={first_ms:g}"
    return name


def raise_fd_limit(wanted: int = 16_384) -> int:
    """Raise the soft open-files limit (children inherit it); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


AUTOGROUP = Path("/proc/self/autogroup")


def set_niceness(wanted: int) -> int:
    """Set this process's niceness (its children inherit it) to ``wanted`` if allowed; return the niceness in force.

    The machine may be shared: a negative niceness (root only) puts the
    servers, Redis, the fake provider and the load ahead of other work, so
    that work slows the figures less; what it still takes is recorded.
    """
    if wanted:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, wanted)
            # With the kernel's autogroups, niceness only ranks processes of one session against each
            # other; the group's own niceness ranks this session against the others' (other work).
            if AUTOGROUP.exists():
                AUTOGROUP.write_text(str(wanted))
        except (PermissionError, OSError):
            pass
    return os.getpriority(os.PRIO_PROCESS, 0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)  # idle and iowait are not busy


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds used by named processes between ``start()`` and ``stop()``, and by everything else.

    The machine may be shared: ``background_cores`` is what all other
    processes used meanwhile (1.0 = one core busy), so a run slowed by
    someone else's work says so.
    """

    def __init__(self, pids: dict[str, int]):
        self.pids = dict(pids)
        self.pids["bench driver"] = os.getpid()
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0
        self.background_cores = 0.0
        self._ticks = (0, 0)

    def start(self) -> CpuMeter:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._ticks = machine_ticks()
        self.wall = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        self.wall = time.monotonic() - self.wall
        busy, total = machine_ticks()
        self.used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        busy_cores = (busy - self._ticks[0]) / max(1, total - self._ticks[1]) * (os.cpu_count() or 1)
        self.background_cores = max(0.0, busy_cores - sum(self.used.values()) / max(self.wall, 1e-6))
        return self.used


# Seconds the whole bench may spend waiting for other work on the machine to pause.
_quiet_budget = [120.0]


async def wait_for_quiet(max_busy_cores: float = 0.3, max_wait: float = 15.0) -> dict:
    """Wait (at most ``max_wait`` s, and within the bench's budget) for a nearly idle second.

    Called between runs, when the bench's own processes are idle, so what
    it sees is other work on a shared machine. Returns what it saw.
    """
    start = time.monotonic()
    while True:
        before = machine_ticks()
        await asyncio.sleep(0.5)
        after = machine_ticks()
        busy = (after[0] - before[0]) / max(1, after[1] - before[1]) * (os.cpu_count() or 1)
        waited = time.monotonic() - start
        if busy <= max_busy_cores or waited >= min(max_wait, _quiet_budget[0]):
            _quiet_budget[0] = max(0.0, _quiet_budget[0] - waited)
            return {"busy_cores": round(busy, 2), "waited_seconds": round(waited, 1)}


@dataclass
class Session:
    """A logged-in user's cookies, for raw HTTP requests."""

    sessionid: str
    csrftoken: str

    def headers(self, port: int) -> str:
        return (
            f"Host: {HOST}:{port}\r\nCookie: sessionid={self.sessionid}; csrftoken={self.csrftoken}\r\n"
            f"X-CSRFToken: {self.csrftoken}\r\n"
        )


def events_request(port: int, session: Session, conversation_id: str) -> str:
    return (
        f"GET /api/conversations/{conversation_id}/events/ HTTP/1.1\r\n{session.headers(port)}"
        "Accept: text/event-stream\r\n\r\n"
    )


def message_request(port: int, session: Session, conversation_id: str, model_name: str, *, sse: bool) -> str:
    body = json.dumps({"content": "Benchmark, please reply.", "model": model_name})
    accept = "text/event-stream" if sse else "application/json"
    return (
        f"POST /api/conversations/{conversation_id}/messages/ HTTP/1.1\r\n{session.headers(port)}"
        f"Content-Type: application/json\r\nAccept: {accept}\r\nContent-Length: {len(body.encode())}\r\n\r\n{body}"
    )


def provider_request(port: int, model_name: str) -> str:
    """What the app sends upstream, sent straight to the fake provider."""
    body = json.dumps(
        {
            "model": model_name,
            "messages": [{"role": "user", "content": "Benchmark, please reply."}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Bearer sk-bench\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    )


async def http_exchange(port: int, request: str, timeout: float = 30) -> tuple[int, bytes]:
    """Send one request on a new connection; the status and body of a Content-Length response."""

    async def exchange():
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.decode("latin-1").lower().split("\r\n"):
                if line.startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            return status, await reader.readexactly(length)
        finally:
            writer.close()

    return await asyncio.wait_for(exchange(), timeout)


class FakeProviderProcess:
    """``tests/fakeprovider.py`` as its own process, so its CPU is not the driver's."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "tests/fakeprovider.py", "--port", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.base_url = self.proc.stdout.readline().strip()
        wait_for_port(self.port, proc=self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Deployment:
    """Redis, the fake provider, and a Stack with two daphne processes (``a`` runs the generations)."""

    def __init__(self, models: list[str], *, postgres: bool = False):
        self.models = sorted(set(models))
        self.postgres: PostgresServer | None = PostgresServer() if postgres else None
        self.redis: RedisServer | None = None
        self.fake: FakeProviderProcess | None = None
        self.stack: Stack | None = None
        self.a = self.b = 0
        self.session: Session | None = None
        self._client = None

    def start(self) -> Deployment:
        self.redis = RedisServer().start()
        self.fake = FakeProviderProcess()
        if self.postgres is not None:
            self.postgres.start()
        self.stack = Stack(
            redis_url=self.redis.url,
            llm_base_url=self.fake.base_url,
            llm_models=",".join(self.models),
            extra_env=SERVER_ENV,
            # A SQLite file unless asked, whatever DATABASE_URL the shell has.
            database=self.postgres or "sqlite",
        ).setup()
        self.a = self.stack.start_server()
        self.b = self.stack.start_server()
        # One login (PBKDF2 is slow) serves every viewer: sessions live in the shared database.
        self._client = login(self.a, "olivia")
        self.session = Session(self._client.cookies["sessionid"], self._client.cookies["csrftoken"])
        return self

    def start_server(self, extra_env: dict | None = None) -> int:
        return self.stack.start_server(extra_env)

    def start_uvicorn(self, extra_env: dict | None = None) -> int:
        """One more server process on the same database and Redis, under uvicorn instead of daphne.

        uvicorn serves ``config.asgi:application`` with its lifespan events
        (which start the reaper) and httptools; returns its port.
        """
        port = free_port()
        log = self.stack.dir / f"uvicorn-{port}.log"
        self.stack.logs[port] = log
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", *UVICORN_OPTIONS, "--port", str(port)],
            cwd=ROOT,
            env={**self.stack.env, **(extra_env or {})},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.stack.procs[port] = proc
        wait_for_port(port, proc=proc, timeout=30)
        return port

    def pid(self, port: int) -> int:
        return self.stack.procs[port].pid

    def stop_server(self, port: int) -> None:
        proc = self.stack.procs.pop(port)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()

    def conversations(self, count: int, model_name: str) -> list[str]:
        """New conversations owned by olivia (ids)."""
        ids = []
        for _ in range(count):
            response = self._client.post("/api/conversations/", json={"model": model_name, "title": "bench"})
            response.raise_for_status()
            ids.append(response.json()["id"])
        return ids

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        for stop in (
            self.stack and self.stack.stop,
            self.fake and self.fake.stop,
            self.redis and self.redis.stop,
            self.postgres and self.postgres.remove,
        ):
            if stop:
                try:
                    stop()
                except Exception as exc:  # keep stopping the others
                    print(f"bench: could not stop {stop!r}: {exc}", file=sys.stderr)


class LoadWorkers:
    """Worker processes holding event streams (``bench.sseload``), ``VIEWERS_PER_WORKER`` each."""

    def __init__(self, streams: list[dict], *, kind: str, send_on_go: bool, deadline_seconds: float, **extra):
        self.streams, self.kind, self.send_on_go = streams, kind, send_on_go
        self.deadline_seconds, self.extra = deadline_seconds, extra
        self.procs: list[asyncio.subprocess.Process] = []
        self.opened = 0
        self.failed = 0

    @staticmethod
    def split(streams: list[dict]) -> list[list[dict]]:
        """Even shares of at most VIEWERS_PER_WORKER streams, keeping each worker on as few ports as possible."""
        count = max(1, math.ceil(len(streams) / VIEWERS_PER_WORKER))
        ordered = sorted(streams, key=lambda s: s["port"])
        size = math.ceil(len(ordered) / count)
        return [ordered[i : i + size] for i in range(0, len(ordered), size)]

    async def open(self, timeout: float = 120) -> None:
        for share in self.split(self.streams):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.sseload",
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 28,
            )
            self.procs.append(proc)
            config = {
                "host": HOST,
                "kind": self.kind,
                "send_on_go": self.send_on_go,
                "deadline_seconds": self.deadline_seconds,
                "streams": share,
                **self.extra,
            }
            proc.stdin.write(json.dumps(config).encode() + b"\n")
            await proc.stdin.drain()
        for proc in self.procs:
            line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode().split()
            if not line or line[0] != "ready":
                raise RuntimeError(f"load worker failed to start: {line}")
            self.opened += int(line[1])
            self.failed += int(line[2])

    async def go(self) -> None:
        for proc in self.procs:
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()

    async def results(self, timeout: float) -> list[dict]:
        """Each worker's result; the workers stay alive until ``close()``."""
        deadline = time.monotonic() + timeout
        out = []
        for proc in self.procs:
            line = await asyncio.wait_for(proc.stdout.readline(), max(1.0, deadline - time.monotonic()))
            out.append(json.loads(line))
        return out

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                try:
                    proc.stdin.write(b"exit\n")
                    proc.stdin.close()
                    await asyncio.wait_for(proc.wait(), 10)
                except (OSError, TimeoutError):
                    proc.kill()
                    await proc.wait()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]
