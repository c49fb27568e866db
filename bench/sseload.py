"""Many light event-stream readers on raw sockets, and the worker process that runs them.

A reader is an ``asyncio.Protocol``: it takes the clock once per
``data_received`` (before any parsing), decodes HTTP/1.1 chunked framing
(sizes are bytes), splits Server-Sent Events on blank lines and, for each
delta event, records ``read time - stamp`` where the stamp is the fake
provider's ``[<time.time_ns()>]`` content. The same code reads the app's
``/events/`` streams and the fake provider's own streams (the baseline), so
the client's cost is in both figures.

Worker protocol (``python -m bench.sseload``), one JSON line each way:
stdin gets the config, stdout says ``ready <open> <failed>``; stdin's
``go`` line starts the requests of ``send_on_go`` streams (else they were
sent at connect) and, in ``hold`` mode, closes everything; stdout's last
line is the result (see ``StreamSet.result``); the worker then exits at
the next line or end of stdin.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time

STAMP = re.compile(rb"\[(\d{16,20})\]")
SEQ = re.compile(rb'"seq":(\d+)')
FINAL_TYPES = {b"message.completed", b"message.failed", b"message.cancelled", b"message.interrupted"}
CONNECT_CONCURRENCY = 32


class SSEReader(asyncio.Protocol):
    """One HTTP request answered by an event stream; records stamp latencies.

    ``kind`` is "app" (deltas are ``event: message.delta`` with ``seq``; a
    final ``message.*`` event ends the read) or "provider" (deltas are the
    OpenAI chunks with a stamp; ``data: [DONE]`` or the last chunk ends it).
    """

    def __init__(self, request: bytes, kind: str):
        self.request = request
        self.kind = kind
        self.port = 0
        self.transport: asyncio.Transport | None = None
        self.connected = asyncio.get_running_loop().create_future()
        self.head_received = asyncio.get_running_loop().create_future()
        self.done = asyncio.get_running_loop().create_future()
        self.status = 0
        self.sent_ns = 0
        self.first_delta_ns = 0
        self.first_stamp_ns = 0
        self.stamps: list[int] = []
        self.latencies_us: list[int] = []
        self.events = 0
        self.seq = 0
        self.gaps = 0
        self.resyncs = 0
        self.final = b""
        self.error = ""
        self._raw = b""
        self._text = b""
        self._chunked = False
        self._in_head = True
        self._remaining = 0  # bytes left in the current chunk
        self._chunk_end = False  # the CRLF after a chunk's data is due
        self._eof = False  # the last (empty) chunk came

    # --- asyncio.Protocol ---

    def connection_made(self, transport):
        self.transport = transport
        self.connected.set_result(None)

    def send(self) -> None:
        self.sent_ns = time.time_ns()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        raw = self._raw + data if self._raw else data
        self._raw = b""
        if self._in_head:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                self._raw = raw
                return
            head = raw[:end].decode("latin-1").lower()
            self.status = int(head.split(" ", 2)[1])
            self._chunked = "transfer-encoding: chunked" in head
            self._in_head = False
            raw = raw[end + 4 :]
            if not self.head_received.done():
                self.head_received.set_result(self.status)
            if self.status != 200:
                self._end(f"HTTP {self.status}")
                return
        body = self._dechunk(raw) if self._chunked else raw
        if body:
            self._text += body
            if b"\r" in self._text and not self._text.endswith(b"\r"):
                self._text = self._text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            *events, self._text = self._text.split(b"\n\n")
            for event in events:
                if not self.done.done():
                    self._on_event(event, now)
        if self._eof and not self.done.done():
            self._end("" if self.kind == "provider" else "stream ended before the final event")

    def connection_lost(self, exc):
        if not self.head_received.done():
            self.head_received.set_result(0)
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("connection failed"))
        self._end("" if self.kind == "provider" and self.stamps else "connection closed by the server")

    # --- parsing ---

    def _dechunk(self, raw: bytes) -> bytes:
        out = []
        pos, size = 0, len(raw)
        while pos < size:
            if self._remaining:
                take = min(self._remaining, size - pos)
                out.append(raw[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._remaining:
                    break
                self._chunk_end = True
            if self._chunk_end is True:
                if size - pos < 2:
                    break
                pos += 2  # CRLF after the chunk's data
                self._chunk_end = False
            line_end = raw.find(b"\r\n", pos)
            if line_end < 0:
                break
            length = int(raw[pos:line_end].split(b";", 1)[0], 16)
            pos = line_end + 2
            if length == 0:
                self._eof = True
                pos = size
                break
            self._remaining = length
        self._raw = raw[pos:]
        return b"".join(out)

    def _on_event(self, event: bytes, now: int) -> None:
        event_type, data = b"message", b""
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:].lstrip(b" ")
            elif line.startswith(b"event:"):
                event_type = line[6:].strip()
        if not data:
            return  # comment, retry: or heartbeat
        self.events += 1
        if self.kind == "app":
            if event_type == b"message.delta":
                match = SEQ.search(data)
                seq = int(match.group(1)) if match else -1
                if seq != self.seq + 1:
                    self.gaps += 1
                self.seq = seq
                self._stamp(data, now)
            elif event_type in FINAL_TYPES:
                self.final = event_type
                self._end("" if event_type == b"message.completed" else event_type.decode())
            elif event_type == b"resync":
                self.resyncs += 1
        elif data == b"[DONE]":
            self._end("")
        else:
            self._stamp(data, now)

    def _stamp(self, data: bytes, now: int) -> None:
        # The app merges chunks that arrive while it is busy into one delta:
        # every stamp in it counts, each measured from its own write.
        for match in STAMP.finditer(data):
            stamp = int(match.group(1))
            if not self.first_delta_ns:
                self.first_delta_ns, self.first_stamp_ns = now, stamp
            self.stamps.append(stamp)
            self.latencies_us.append((now - stamp) // 1000)

    def _end(self, error: str) -> None:
        if self.done.done():
            return
        self.error = error
        self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_reader(host: str, port: int, request: bytes, kind: str, *, send: bool) -> SSEReader:
    """Connect; with ``send`` also send the request and wait for the response head."""
    loop = asyncio.get_running_loop()
    reader = SSEReader(request, kind)
    reader.port = port
    await loop.create_connection(lambda: reader, host, port)
    if send:
        reader.send()
        await reader.head_received
    return reader


class StreamSet:
    """The streams of one worker: open them, start them, wait, report."""

    def __init__(self, config: dict):
        self.config = config
        self.readers: list[SSEReader] = []
        self.failed: list[str] = []

    async def open(self) -> None:
        host, kind, send = self.config["host"], self.config["kind"], not self.config["send_on_go"]
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(stream):
            async with gate:
                try:
                    reader = await asyncio.wait_for(
                        open_reader(host, stream["port"], stream["request"].encode(), kind, send=send), 30
                    )
                except (OSError, TimeoutError) as exc:
                    self.failed.append(f"connect: {exc!r}")
                    return None
                if send and reader.status != 200:
                    self.failed.append(f"HTTP {reader.status}")
                    reader.close()
                    return None
                return reader

        results = await asyncio.gather(*(one(s) for s in self.config["streams"]))
        self.readers = [r for r in results if r is not None]

    async def run(self) -> None:
        """Send the requests not yet sent (spread over ``ramp_seconds``), wait for every stream's end."""
        if self.config["send_on_go"]:
            ramp = self.config.get("ramp_seconds", 0.0)
            start = time.monotonic()
            for i, reader in enumerate(self.readers):
                due = start + ramp * i / max(1, len(self.readers))
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                reader.send()
        waiting = [r.done for r in self.readers]
        if waiting:
            await asyncio.wait(waiting, timeout=self.config["deadline_seconds"])

    def close(self) -> None:
        for reader in self.readers:
            reader.close()

    def result(self) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "opened": len(self.readers),
            "failed": self.failed,
            "streams": [
                {
                    "port": r.port,
                    "stamps": r.stamps,
                    "latencies_us": r.latencies_us,
                    "events": r.events,
                    "gaps": r.gaps,
                    "resyncs": r.resyncs,
                    "finished": r.done.done(),
                    "error": r.error,
                    "sent_ns": r.sent_ns,
                    "first_delta_ns": r.first_delta_ns,
                }
                for r in self.readers
            ],
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
        }


async def _read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _worker() -> None:
    config = json.loads(await _read_line())
    streams = StreamSet(config)
    await streams.open()
    print(f"ready {len(streams.readers)} {len(streams.failed)}", flush=True)
    if (await _read_line()).strip() != "go":
        streams.close()
        return
    if config.get("hold"):
        streams.close()
    else:
        await streams.run()
        streams.close()
    sys.stdout.write(json.dumps(streams.result()) + "\n")
    sys.stdout.flush()
    await _read_line()  # stay alive (for the driver's CPU accounting) until told to go


if __name__ == "__main__":
    asyncio.run(_worker())
