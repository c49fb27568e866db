"""A fake LLM provider over a real socket, as awkward as the real ones.

HTTP/1.1 is written by hand on asyncio streams, so the framing is under
control: chunked or close-delimited bodies, SSE cut into separate TCP writes
anywhere (mid-line, mid-UTF-8 character), LF, CRLF or CR line endings,
comments, a BOM, resets and stalls.

Three ways to run it:

- in-process: ``fake = FakeProvider(); base_url = fake.start()`` ... ``fake.stop()``
  (``FakeProvider(tls=True)``: HTTPS with a certificate of a CA made for it, whose PEM is
  ``fake.ca_file``; a client that trusts that file verifies the server as ``127.0.0.1``)
  (its own thread and event loop, so sync and async tests can share it), or
  ``base_url = await fake.serve()`` ... ``await fake.aclose()`` inside a running loop;
- as a process: ``python tests/fakeprovider.py --port 8765`` prints its base URL
  (``http://127.0.0.1:8765/v1``) on stdout once it listens (``--tls``: the https URL, then the CA file);
- from benchmarks, either way.

Endpoints (any prefix, so ``{base_url}`` works for both APIs):

- ``POST .../chat/completions``: OpenAI-compatible stream (``data:`` chunks,
  usage-only last chunk when ``stream_options.include_usage``, ``data: [DONE]``);
- ``POST .../services/aigc/text-generation/generation``: DashScope native
  (``id:``/``event:result``/``:HTTP_STATUS/200``/``data:``, cumulative text
  with ``finish_reason: "null"`` unless the request's ``parameters`` ask for
  ``incremental_output``; ``result_format: "message"`` is honoured);
- ``GET /_log``: ``{"requests": [record, ...]}``; ``POST /_reset`` clears it.

The request's ``model`` picks the behaviour, so the app under test needs no
extra control::

    fake-echo                 stream back the last user message, word by word
    fake                      the default reply (below)
    fake:k=v;k=v;...          the default reply with parameters
    fake-echo:k=v;...         echo with parameters

Parameters are separated by ";" or "," (only ";" fits in the comma-separated
LLM_MODELS); values are percent-decoded (``%3B`` for ";", ``%2C`` for ",").
Parameters:

    chunks=5           content deltas; delta i (from 0) is "w{i}·你好👋 " (1-4 byte UTF-8)
    text=...           instead, this text cut into ``chunks`` nearly equal pieces
    stamp=1            each delta is "[<time.time_ns()>]", taken as it is written
    reasoning=0        reasoning deltas "think{i} " before the content
    reasoning_field=reasoning_content   or "reasoning" (Ollama)
    prompt_tokens=11, completion_tokens=<chunks> (DashScope: <chunks + reasoning>), usage=1 (0: none)
    finish=stop        the finish_reason
    first_ms=0, interval_ms=0           delay before the first / between deltas
    eol=lf             lf | crlf | cr
    comments=0         1: ": keep-alive" comment before every event
    bom=0              1: a UTF-8 BOM first
    split=0            cut the body into separate writes of this many bytes
    cut=K[/K2/...]     also cut the body at these byte offsets (separate writes; chunks when chunked)
    write_ms=0         pause between the writes of ``split``/``cut``
    framing=chunked    chunked | close (no Content-Length; the end is the close)
    done=1             0: end the body cleanly without [DONE] / without a finish event
    error_after=K      after K deltas an error event (OpenAI {"error"}, DashScope event:error)
    garbage_after=K    after K deltas a data line that is not JSON
    reset_after=K      after K deltas a TCP reset (SO_LINGER 0)
    drop_after=K       after K deltas close the socket inside a chunk (FIN; with framing=close a clean EOF)
    stall_after=K      after K deltas write nothing more, keep the socket open
    status=200         e.g. 401, 429, 500: a JSON error before any stream
    times=0            with ``status``: only the first N requests with this exact model string get it,
                       the later ones stream normally (a provider busy for a while; 0: every request)
    retry_after=...    Retry-After header value as given (e.g. 7)
    retry_date=S       Retry-After as an HTTP-date S seconds from now
    content_type=text/event-stream      e.g. application/json, text/html
    leak=0             1: error messages quote the request's Authorization header
                       (like OpenAI's "Incorrect API key provided") to test scrubbing
    leak_url=0         1: error messages also quote the request's path and query (like a gateway's 404 page)
    error_pad=0        N characters (" xxx...") after the error message's own words, before what ``leak`` quotes
                       (to put a cut at a chosen offset inside the key)
    usage_prompt=, usage_completion=, usage_total=
                       report this instead of the count, as JSON when it parses (-5, 1e30, true,
                       99999999999999999999) else as a string (abc)
    surrogate_at=K     delta K (from 0) ends with a lone surrogate, sent as the JSON escape "\ud800"
    nul_at=K           delta K ends with a NUL character (JSON "\u0000")
    longline=N         after the deltas, a data line of N bytes ("x") that never ends; then the body ends
    replay=NAME        send tests/data/NAME verbatim (eol, bom, split, cut, framing apply)

``reply_text(model, messages)`` gives the text a client must assemble.

Log: one record per request (``/_log`` and ``/_reset`` are not logged), in
order; in-process ``requests()`` returns it, ``reset()`` clears it and
``await wait_ended(index=-1)`` waits for a request's outcome::

    {"id": 1, "method": "POST", "path": "/v1/chat/completions",
     "headers": {"authorization": "...", ...}, "body": {...} | null,
     "model": "fake:chunks=3" | null, "started": 1754000000.123,
     "outcome": "open" | "completed" | "client_closed" | "reset" | "dropped" | "server_stopped",
     "ended": 1754000000.456 | null, "deltas_sent": 2, "connection": 1}

``connection`` numbers the TCP connection the request came on (from 1, in
accept order); ``connections`` counts those accepted since the start or the
last ``reset()``. The headers are as received, so a test sees which key
(``authorization``) reached which provider.

``completed`` means the server wrote its whole response (also a deliberate
error response); ``client_closed`` that the client closed the connection
before the end (e.g. on a stop, or giving up on a stall); ``reset`` and
``dropped`` are the deliberate failures; ``server_stopped`` an open stream
ended by ``stop()``.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import ipaddress
import json
import re
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

DATA_DIR = Path(__file__).parent / "data"
OPENAI_PATH = "/chat/completions"
DASHSCOPE_PATH = "/services/aigc/text-generation/generation"
_EOLS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
_REASONS |= {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


@dataclass
class Scenario:
    """The behaviour a model string asks for (see the module docstring)."""

    echo: bool = False
    chunks: int = 5
    text: str | None = None
    stamp: bool = False
    reasoning: int = 0
    reasoning_field: str = "reasoning_content"
    prompt_tokens: int = 11
    completion_tokens: int | None = None
    usage: bool = True
    finish: str = "stop"
    first_ms: float = 0
    interval_ms: float = 0
    eol: str | None = None
    comments: bool = False
    bom: bool = False
    split: int = 0
    cut: str = ""
    write_ms: float = 0
    framing: str = "chunked"
    done: bool = True
    error_after: int | None = None
    garbage_after: int | None = None
    reset_after: int | None = None
    drop_after: int | None = None
    stall_after: int | None = None
    status: int = 200
    times: int = 0
    retry_after: str | None = None
    retry_date: float | None = None
    content_type: str = "text/event-stream"
    leak: bool = False
    leak_url: bool = False
    error_pad: int = 0
    usage_prompt: str | None = None
    usage_completion: str | None = None
    usage_total: str | None = None
    surrogate_at: int | None = None
    nul_at: int | None = None
    longline: int = 0
    replay: str | None = None


_TYPES = {f.name: f.type for f in fields(Scenario)}


def parse_model(model: str) -> Scenario:
    """The Scenario of a ``fake...`` model string; ValueError for anything else."""
    name, _, params = model.partition(":")
    if name not in ("fake", "fake-echo"):
        raise ValueError(f"unknown model {model!r}: use fake, fake-echo, fake:k=v;k=v")
    scenario = Scenario(echo=name == "fake-echo")
    for item in filter(None, re.split(r"[,;]", params)):
        key, eq, raw = item.partition("=")
        kind = _TYPES.get(key)
        if not eq or kind is None:
            raise ValueError(f"bad fake parameter {item!r}")
        value = unquote(raw)
        if "bool" in kind:
            setattr(scenario, key, value not in ("0", "false", "no", ""))
        elif "int" in kind:
            setattr(scenario, key, int(value))
        elif "float" in kind:
            setattr(scenario, key, float(value))
        else:
            setattr(scenario, key, value)
    if scenario.eol not in (None, *_EOLS) or scenario.framing not in ("chunked", "close"):
        raise ValueError(f"bad eol or framing in {model!r}")
    if scenario.replay and not re.fullmatch(r"[\w.-]+", scenario.replay):
        raise ValueError(f"bad replay name {scenario.replay!r}")
    return scenario


def reply_pieces(scenario: Scenario, messages: list[dict[str, Any]] = ()) -> list[str]:
    """The content deltas of a reply (stamps excepted: those are made as they are sent)."""
    if scenario.echo:
        last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
        return re.findall(r"\s*\S+\s*", last) if isinstance(last, str) else []
    if scenario.text is not None:
        n = max(1, min(scenario.chunks, len(scenario.text)))
        cuts = [len(scenario.text) * i // n for i in range(n + 1)]
        pieces = [scenario.text[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]
    else:
        pieces = [f"w{i}·你好👋 " for i in range(scenario.chunks)]
    for at, odd in ((scenario.surrogate_at, "\ud800"), (scenario.nul_at, "\x00")):
        if at is not None and at < len(pieces):
            pieces[at] += odd
    return pieces


def reply_text(model: str, messages: list[dict[str, Any]] = ()) -> str:
    """The whole reply text a client must assemble for ``model`` (not for ``stamp``)."""
    return "".join(reply_pieces(parse_model(model), messages))


class _ClientClosed(Exception):
    pass


class _Response:
    """One response body on the wire: framing, cuts, pauses, and watching for the client to go away."""

    def __init__(self, writer: asyncio.StreamWriter, scenario: Scenario, watch: asyncio.Future, record: dict):
        self.writer, self.scenario, self.watch, self.record = writer, scenario, watch, record
        self.offset = 0
        self.eol = _EOLS[scenario.eol or "lf"]
        self.bom = scenario.bom
        self.cuts = [int(k) for k in scenario.cut.split("/") if k]

    async def head(self, content_type: str) -> None:
        lines = ["HTTP/1.1 200 OK", f"Content-Type: {content_type}", "Cache-Control: no-cache"]
        if self.scenario.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
        else:
            lines.append("Connection: close")
        await self.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def event(self, text: str) -> None:
        """Send SSE text written with "\\n" line endings, converted to the scenario's."""
        if self.scenario.comments:
            text = ": keep-alive\n\n" + text
        await self.body(text.replace("\n", self.eol).encode())

    async def body(self, data: bytes) -> None:
        if self.bom:
            data, self.bom = b"\xef\xbb\xbf" + data, False
        bounds = set()
        if self.scenario.split > 0:
            first = self.offset // self.scenario.split + 1
            bounds.update(range(first * self.scenario.split, self.offset + len(data), self.scenario.split))
        bounds.update(k for k in self.cuts if self.offset < k < self.offset + len(data))
        start = 0
        for bound in sorted(bounds):
            await self._piece(data[start : bound - self.offset])
            start = bound - self.offset
            await self.pause(self.scenario.write_ms / 1000)
        await self._piece(data[start:])
        self.offset += len(data)

    async def _piece(self, data: bytes) -> None:
        if data:
            await self.write(b"%x\r\n%s\r\n" % (len(data), data) if self.scenario.framing == "chunked" else data)

    async def end(self) -> None:
        if self.scenario.framing == "chunked":
            await self.write(b"0\r\n\r\n")

    async def write(self, data: bytes) -> None:
        if self.watch.done():
            raise _ClientClosed
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError:
            raise _ClientClosed from None

    async def pause(self, seconds: float) -> None:
        """Sleep; raise _ClientClosed if the client went away (checked after the sleep: cheaper than a wait)."""
        if seconds > 0:
            await asyncio.sleep(seconds)
        if self.watch.done():
            raise _ClientClosed

    async def reset(self) -> None:
        await self.pause(0.05)  # let the bytes already written reach the client before the RST
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def drop(self) -> None:
        if self.scenario.framing == "chunked":
            await self.write(b"40\r\npartial")  # promises 64 bytes, sends 7
        await self.pause(0.05)
        self.writer.close()


class FakeProvider:
    """The fake server; see the module docstring. ``requests()`` is the log."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tls: bool = False) -> None:
        self.host, self.port = host, port
        self.tls = tls
        self.ca_file: str | None = None
        self._ssl = _server_context(self) if tls else None
        self.connections = 0
        self._seen: dict[str, int] = {}  # requests per model string, for ``times``
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/v1"

    # --- running it ---------------------------------------------------------

    async def serve(self) -> str:
        """Listen in the running loop; return the base URL."""
        self._server = await asyncio.start_server(self._connection, self.host, self.port, backlog=4096, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.base_url

    async def aclose(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def start(self) -> str:
        """Serve from a thread with its own loop; return the base URL."""
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve())
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fakeprovider", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.base_url

    def stop(self) -> None:
        """Stop the thread started by ``start()``."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeProvider:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the log ------------------------------------------------------------

    def requests(self) -> list[dict[str, Any]]:
        """A copy of the log (see the module docstring)."""
        with self._lock:
            return [dict(record) for record in self._log]

    def reset(self) -> None:
        with self._lock:
            self._log.clear()
            self._seen.clear()
            self.connections = 0

    async def wait_ended(self, index: int = -1, timeout: float = 5.0) -> dict[str, Any]:
        """Wait until request ``index`` of the log has an outcome other than "open"; return its record."""
        # Imported here: this file also runs as a script (bench/), where the tests package is not importable.
        from tests.servers import aeventually

        def ended():
            records = self.requests()
            return records[index] if records and records[index]["outcome"] != "open" else None

        def still_open():
            records = self.requests()
            return f"request {index} still open: {records[index] if records else None}"

        return await aeventually(ended, timeout=timeout, message=still_open)

    def _set(self, record: dict[str, Any], **changes: Any) -> None:
        with self._lock:
            record.update(changes)

    # --- HTTP ---------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        with self._lock:
            self.connections += 1
            connection = self.connections
        try:
            while await self._exchange(reader, writer, connection):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # aclose(): the task ends here (asyncio.streams mishandles a handler that re-raises)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: int = 0) -> bool:
        """Read one request and answer it; return whether the connection stays open."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in filter(None, header_lines):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if path == "/_log" and method == "GET":
            return await self._json(writer, 200, {"requests": self.requests()})
        if path == "/_reset" and method == "POST":
            self.reset()
            return await self._json(writer, 200, {"ok": True})
        model = body.get("model") if isinstance(body, dict) else None
        record = {"id": 0, "method": method, "path": path, "headers": headers, "body": body, "model": model}
        record |= {"started": time.time(), "outcome": "open", "ended": None, "deltas_sent": 0}
        record["connection"] = connection
        with self._lock:
            record["id"] = len(self._log) + 1
            self._log.append(record)
            seen = self._seen[model or ""] = self._seen.get(model or "", 0) + 1
        route = path.partition("?")[0]  # a gateway's key may ride in the query
        api = "openai" if route.endswith(OPENAI_PATH) else "dashscope" if route.endswith(DASHSCOPE_PATH) else None
        try:
            scenario = parse_model(model or "")
        except ValueError as exc:
            scenario, problem = None, str(exc)
        if scenario is not None and scenario.times and seen > scenario.times:
            scenario.status = 200
        if api is None or scenario is None:
            self._set(record, outcome="completed", ended=time.time())
            status, problem = (404, f"no such endpoint: {method} {path}") if api is None else (400, problem)
            return await self._json(writer, status, _error_body(api, status, problem))
        # The response runs while a task watches for the client closing (EOF on its side).
        watch = asyncio.ensure_future(reader.read(1))
        response = _Response(writer, scenario, watch, record)
        try:
            outcome = await self._respond(api, scenario, body, headers, response)
        except _ClientClosed:
            outcome = "client_closed"
        except asyncio.CancelledError:
            self._set(record, outcome="server_stopped", ended=time.time())
            raise
        finally:
            watch.cancel()
        self._set(record, outcome=outcome, ended=time.time())
        await asyncio.wait([watch])  # the reader is free again for the next request
        return outcome == "completed" and scenario.framing == "chunked" and headers.get("connection") != "close"

    async def _json(self, writer: asyncio.StreamWriter, status: int, value: Any) -> bool:
        data = json.dumps(value, ensure_ascii=False).encode()
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: application/json\r\n"
        writer.write(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        return True

    async def _respond(
        self, api: str, scenario: Scenario, body: dict, headers: dict[str, str], response: _Response
    ) -> str:
        key = headers.get("authorization", "")
        if scenario.status != 200:
            extra = {}
            if scenario.retry_after is not None:
                extra["Retry-After"] = scenario.retry_after
            if scenario.retry_date is not None:
                extra["Retry-After"] = email.utils.formatdate(time.time() + scenario.retry_date, usegmt=True)
            message = f"fake HTTP {scenario.status}" + _leaked(scenario, key, response.record["path"])
            data = json.dumps(_error_body(api, scenario.status, message)).encode()
            extra["Content-Length"] = str(len(data))
            head = f"HTTP/1.1 {scenario.status} {_REASONS.get(scenario.status, 'Status')}\r\n"
            head += "Content-Type: application/json\r\n" + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
            await response.write(head.encode() + b"\r\n" + data)
            return "completed"
        await response.head(scenario.content_type)
        if scenario.replay:
            data = (DATA_DIR / scenario.replay).read_bytes()
            if scenario.eol:
                data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", response.eol.encode())
            await response.body(data)
            return await self._finish(scenario, response)
        stream = _openai_events if api == "openai" else _dashscope_events
        await response.pause(scenario.first_ms / 1000)
        for kind, text in stream(scenario, body):
            if kind == "delta":
                if response.record["deltas_sent"] and scenario.interval_ms:
                    await response.pause(scenario.interval_ms / 1000)
                failure = self._failure(scenario, response.record["deltas_sent"])
                if failure:
                    return await self._fail(failure, scenario, response, api, key)
                await response.event(text())
                self._set(response.record, deltas_sent=response.record["deltas_sent"] + 1)
            elif kind == "end":
                if scenario.longline:
                    await self._long_line(scenario.longline, response)
                    return await self._finish(scenario, response)
                failure = self._failure(scenario, None)
                if failure:
                    return await self._fail(failure, scenario, response, api, key)
            elif kind == "event" or scenario.done:
                await response.event(text())
        return await self._finish(scenario, response)

    @staticmethod
    def _failure(scenario: Scenario, sent: int | None) -> str | None:
        """The failure due now: before a delta when ``sent`` deltas are out, or after all of them (None)."""
        for name in ("error_after", "garbage_after", "reset_after", "drop_after", "stall_after"):
            after = getattr(scenario, name)
            if after is not None and (sent is None or sent >= after):
                return name
        return None

    async def _fail(self, failure: str, scenario: Scenario, response: _Response, api: str, key: str) -> str:
        if failure == "error_after":
            message = "fake failure mid-stream" + _leaked(scenario, key, response.record["path"])
            if api == "openai":
                error = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
                await response.event(f"data: {json.dumps(error)}\n\n")
            else:
                error = {"code": "InternalError", "message": message, "request_id": "fake"}
                await response.event(f"id:99\nevent:error\n:HTTP_STATUS/500\ndata:{json.dumps(error)}\n\n")
            return await self._finish(scenario, response)
        if failure == "garbage_after":
            await response.event("data: this is not json\n\n")
            return await self._finish(scenario, response)
        if failure == "reset_after":
            await response.reset()
            return "reset"
        if failure == "drop_after":
            await response.drop()
            return "dropped"
        await asyncio.wait([response.watch])  # stall until the client goes away
        return "client_closed"

    @staticmethod
    async def _long_line(size: int, response: _Response) -> None:
        """Write a data line of ``size`` bytes without its end, a block at a time (it may be 100 MB)."""
        await response.body(b"data: ")
        block = b"x" * 65536
        for start in range(0, size, len(block)):
            await response.body(block[: size - start])

    async def _finish(self, scenario: Scenario, response: _Response) -> str:
        await response.end()
        if scenario.framing == "close":
            response.writer.close()
        return "completed"


def _server_context(fake: FakeProvider) -> ssl.SSLContext:
    """A TLS server context for 127.0.0.1 and localhost, its certificate signed by a CA made now.

    The CA's certificate is written to a temporary file, ``fake.ca_file``: the
    one thing a client must trust (no verification is switched off anywhere).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fakeprovider test CA")])

    def certificate(subject, public_key, *, ca: bool):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if ca:
            usage = dict(key_cert_sign=True, crl_sign=True, digital_signature=False, key_encipherment=False)
        else:
            usage = dict(key_cert_sign=False, crl_sign=False, digital_signature=True, key_encipherment=False)
            alt = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        builder = builder.add_extension(
            x509.KeyUsage(
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
                **usage,
            ),
            critical=True,
        )
        return builder.sign(ca_key, hashes.SHA256())

    ca_cert = certificate(ca_name, ca_key.public_key(), ca=True)
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    leaf = certificate(leaf_name, key.public_key(), ca=False)
    folder = Path(tempfile.mkdtemp(prefix="fakeprovider-tls-"))
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (folder / "server.pem").write_bytes(leaf.public_bytes(pem))
    (folder / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    fake.ca_file = str(folder / "ca.pem")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return context


def _leaked(scenario: Scenario, key: str, path: str) -> str:
    """What an error message adds after its own words: padding, then the key and path as asked."""
    text = (" " + "x" * (scenario.error_pad - 1)) if scenario.error_pad else ""
    if scenario.leak:
        text += f"; you sent {key!r}"
    if scenario.leak_url:
        text += f"; cannot POST {path}"
    return text


def _reported(value: str) -> Any:
    """A ``usage_*`` parameter as the provider reports it: JSON when it parses, else the string."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def _usage_overrides(scenario: Scenario, names: tuple[str, str, str]) -> dict[str, Any]:
    given = (scenario.usage_prompt, scenario.usage_completion, scenario.usage_total)
    return {name: _reported(value) for name, value in zip(names, given, strict=True) if value is not None}


def _dumps(value: Any) -> str:
    """Compact JSON, UTF-8 left as it is but lone surrogates escaped as a real provider sends them."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return re.sub("[\ud800-\udfff]", lambda match: f"\\u{ord(match.group()):04x}", text)


def _error_body(api: str | None, status: int, message: str) -> dict[str, Any]:
    if api == "dashscope":
        code = {401: "InvalidApiKey", 429: "Throttling.RateQuota", 400: "InvalidParameter"}.get(status, "InternalError")
        return {"code": code, "message": message, "request_id": "fake"}
    kind = {401: "invalid_request_error", 429: "rate_limit_exceeded", 400: "invalid_request_error"}
    return {"error": {"message": message, "type": kind.get(status, "server_error"), "param": None, "code": None}}


def _openai_events(scenario: Scenario, body: dict) -> Iterator[tuple[str, Callable[[], str] | None]]:
    """(kind, make_text) pairs: "delta" for content, "end" before the closing chunks, "done" for [DONE]."""
    created, rid, model = int(time.time()), f"chatcmpl-fake{time.monotonic_ns()}", body.get("model")

    def chunk(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
        data["usage"] = usage
        return f"data: {_dumps(data)}\n\n"

    yield "event", lambda: chunk({"role": "assistant", "content": ""})
    for i in range(scenario.reasoning):
        yield "event", lambda i=i: chunk({"content": None, scenario.reasoning_field: f"think{i} "})
    pieces = reply_pieces(scenario, body.get("messages") or [])
    for piece in pieces if not scenario.stamp else range(scenario.chunks):
        yield "delta", lambda piece=piece: chunk({"content": f"[{time.time_ns()}]" if scenario.stamp else piece})
    yield "end", None
    yield "event", lambda: chunk({"content": ""}, scenario.finish)
    if scenario.usage and (body.get("stream_options") or {}).get("include_usage"):
        completion = scenario.completion_tokens if scenario.completion_tokens is not None else scenario.chunks
        usage = {"prompt_tokens": scenario.prompt_tokens, "completion_tokens": completion}
        usage["total_tokens"] = scenario.prompt_tokens + completion
        usage |= _usage_overrides(scenario, ("prompt_tokens", "completion_tokens", "total_tokens"))
        yield "event", lambda: chunk(None, usage=usage)
    yield "done", lambda: "data: [DONE]\n\n"


def _dashscope_events(scenario: Scenario, body: dict) -> Iterator[tuple[str, Callable[[], str] | None]]:
    """Like ``_openai_events`` for DashScope; the last event ("done") carries finish_reason."""
    parameters = body.get("parameters") or {}
    incremental, as_message = parameters.get("incremental_output"), parameters.get("result_format") == "message"
    state = {"id": 0, "text": "", "reasoning": "", "tokens": 0}

    def event(text: str = "", reasoning: str = "", finish: str = "null") -> str:
        state["id"] += 1
        state["text"] += text
        state["reasoning"] += reasoning
        state["tokens"] += bool(text or reasoning)
        text, reasoning = (text, reasoning) if incremental else (state["text"], state["reasoning"])
        if as_message or scenario.reasoning:
            message = {"role": "assistant", "content": text, "reasoning_content": reasoning}
            output = {"choices": [{"message": message, "finish_reason": finish}]}
        else:
            output = {"finish_reason": finish, "text": text}
        usage = {"input_tokens": scenario.prompt_tokens, "output_tokens": state["tokens"]}
        if scenario.completion_tokens is not None and finish != "null":
            usage["output_tokens"] = scenario.completion_tokens
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        usage |= _usage_overrides(scenario, ("input_tokens", "output_tokens", "total_tokens"))
        data = {"output": output, "usage": usage if scenario.usage else None, "request_id": "fake"}
        return f"id:{state['id']}\nevent:result\n:HTTP_STATUS/200\ndata:{_dumps(data)}\n\n"

    for i in range(scenario.reasoning):
        yield "event", lambda i=i: event(reasoning=f"think{i} ")
    pieces = reply_pieces(scenario, (body.get("input") or {}).get("messages") or [])
    for piece in pieces if not scenario.stamp else range(scenario.chunks):
        yield "delta", lambda piece=piece: event(f"[{time.time_ns()}]" if scenario.stamp else piece)
    yield "end", None
    yield "done", lambda: event(finish=scenario.finish)


async def _main() -> None:
    parser = argparse.ArgumentParser(description="A fake LLM provider (see the module docstring).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", action="store_true", help="serve HTTPS; prints the CA file to trust after the URL")
    args = parser.parse_args()
    fake = FakeProvider(args.host, args.port, tls=args.tls)
    print(await fake.serve(), flush=True)
    if args.tls:
        print(fake.ca_file, flush=True)
    stop = asyncio.Event()
    for signal_name in ("SIGINT", "SIGTERM"):
        asyncio.get_running_loop().add_signal_handler(getattr(signal, signal_name), stop.set)
    await stop.wait()
    await fake.aclose()


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
