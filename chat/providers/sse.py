"""Server-sent events from an LLM provider.

``SSEDecoder`` follows the WHATWG event-stream interpretation rules exactly:
bytes may arrive cut anywhere (inside a line, a CRLF pair or a UTF-8
character), one leading BOM is dropped, and an event left unterminated at EOF
is discarded. ``open_event_stream`` POSTs a request and hands back the decoded
events, turning every HTTP and network failure into a ``ProviderError``.

httpx-sse 0.4.3 is not used: it keeps a BOM (losing the first event),
dispatches events that have no data (and an empty one on every extra blank
line once an ``id`` was seen), and cannot tell that a stream ended mid-event.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import email.utils
import json
import math
import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from .base import ProviderError
from .redact import public_error

_EOL = re.compile(r"\r\n|\r|\n")
_MAX_ERROR_BODY = 64 * 1024
# Longer than any real event (a DashScope event repeats the whole reply so far); past it the stream fails
# instead of growing the process with a line that never ends.
MAX_LINE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event; ``id`` is the last event ID in force, ``retry`` a retry field sent with it."""

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """Incremental event-stream decoder: ``feed()`` bytes as they arrive, ``end()`` at EOF.

    A line, or the data of one event, longer than ``max_line`` characters
    raises ProviderError("provider_bad_response").
    """

    def __init__(self, *, max_line: int = MAX_LINE) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._max_line = max_line
        self._started = False
        self._skip_lf = False  # the last text ended with CR: an LF opening the next one ends no line
        self._partial: list[str] = []
        self._partial_len = 0  # kept as it grows: measuring the partial line again on every read would be quadratic
        self._data: list[str] = []
        self._data_len = 0
        self._event = ""
        self._retry: int | None = None
        self._in_event = False
        self.last_event_id = ""
        self.retry: int | None = None  # the reconnection time last announced, in ms

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one network read; return the events it completed (often none)."""
        return self._decode(self._utf8.decode(chunk))

    def end(self) -> bool:
        """Finish the stream. Return True if it ended inside an event, which is discarded (per spec)."""
        self._decode(self._utf8.decode(b"", final=True))
        truncated = bool(self._partial) or self._in_event
        self._partial, self._data, self._event, self._in_event = [], [], "", False
        self._partial_len = self._data_len = 0
        return truncated

    def _decode(self, text: str) -> list[ServerSentEvent]:
        if text and not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if text and self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if not text:
            return []
        if "\n" not in text and "\r" not in text:
            self._partial_len += len(text)
            if self._partial_len > self._max_line:
                raise self._too_long("line")
            self._partial.append(text)
            return []
        # Most servers end lines with LF alone: str.split is several times cheaper than the regex.
        lines = _EOL.split(text) if "\r" in text else text.split("\n")
        self._skip_lf = text[-1] == "\r"
        if self._partial_len + len(lines[0]) > self._max_line or (
            len(text) > self._max_line and any(len(line) > self._max_line for line in lines)
        ):
            raise self._too_long("line")
        if self._partial:
            lines[0] = "".join(self._partial) + lines[0]
        rest = lines.pop()
        self._partial, self._partial_len = ([rest], len(rest)) if rest else ([], 0)
        return [event for line in lines if (event := self._line(line)) is not None]

    def _too_long(self, what: str) -> ProviderError:
        return ProviderError(
            "provider_bad_response",
            f"The provider sent an event {what} longer than {self._max_line:,} characters; the reply was stopped.",
        )

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            self._in_event = False
            event = None
            if self._data:
                event = ServerSentEvent(
                    "\n".join(self._data), self._event or "message", self.last_event_id, self._retry
                )
            self._data, self._data_len, self._event, self._retry = [], 0, "", None
            return event
        if line[0] == ":":
            return None
        self._in_event = True
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            # Many lines without a blank one would grow one event without bound, like one long line.
            self._data_len += len(value) + 1
            if self._data_len > self._max_line:
                raise self._too_long("data")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = self.retry = int(value)
        return None


class EventStream:
    """The decoded events of one response; after the iteration, ``truncated`` tells if EOF cut an event."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.truncated = False
        self._chunks = response.aiter_bytes()
        self._decoder = SSEDecoder()
        self._ready: deque[ServerSentEvent] = deque()
        self._ended = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ServerSentEvent:
        while not self._ready:
            if self._ended:
                raise StopAsyncIteration
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._ended = True
                self.truncated = self._decoder.end()
                raise
            self._ready.extend(self._decoder.feed(chunk))
        return self._ready.popleft()

    async def drain(self, timeout: float = 1.0) -> None:
        """Read what is left of the body (after the provider's last event) so the connection can be reused.

        Gives up quietly after ``timeout`` seconds or on any network error; the
        connection is then closed instead of reused.
        """
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            async with asyncio.timeout(timeout):
                async for _ in self._chunks:
                    pass


@contextlib.asynccontextmanager
async def open_event_stream(
    client: httpx.AsyncClient, url: str, *, body: dict[str, Any], headers: dict[str, str], api_key: str
) -> AsyncIterator[EventStream]:
    """POST the JSON ``body`` to ``url`` and yield its ``EventStream``.

    Raises ProviderError for an HTTP error status, a response that is not an
    event stream, and any network failure or timeout, also while the body of
    the ``async with`` runs. Every ProviderError leaving it went through
    ``redact.public_error``: logged whole (secrets removed), its message fit
    for users. Leaving the block closes the response at once.
    """
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            await _check_response(response)
            yield EventStream(response)
    except ProviderError as exc:
        raise public_error(exc, api_key=api_key, url=url) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        code, message, detail = _describe_http_error(exc, client)
        raise public_error(ProviderError(code, message, detail=detail), api_key=api_key, url=url) from None


def endpoint(base_url: str, path: str) -> str:
    """``path`` appended to the path of ``base_url``, keeping its query (a gateway's ``?api-version=...``)."""
    base, question, query = base_url.partition("?")
    return base.rstrip("/") + path + question + query


async def _check_response(response: httpx.Response) -> None:
    status = response.status_code
    content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    if 200 <= status < 300 and content_type == "text/event-stream":
        return
    detail = error_detail(await _read_head(response))
    if 200 <= status < 300:
        message = f"The provider sent {content_type or 'no content type'} instead of an event stream."
        raise ProviderError("provider_bad_response", message, detail=detail)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        wait = f" Retry after {retry_after:g} s." if retry_after is not None else ""
        message = "The provider is rate limiting requests (HTTP 429)." + wait
        raise ProviderError("provider_rate_limited", message, detail=detail, retry_after=retry_after, retryable=True)
    if status in (401, 403):
        message = f"The provider refused the API key (HTTP {status}). Check LLM_API_KEY."
        raise ProviderError("provider_auth_failed", message, detail=detail)
    if 400 <= status < 500:
        message = f"The provider rejected the request (HTTP {status})."
        raise ProviderError("provider_bad_request", message, detail=detail)
    if status == 503:
        # Overloaded or down for maintenance: like a 429, worth another try (Route retries both).
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        message = "The provider is unavailable (HTTP 503). Try again later."
        raise ProviderError("provider_unavailable", message, detail=detail, retry_after=retry_after, retryable=True)
    if status >= 500:
        message = f"The provider failed (HTTP {status}). Try again later."
        raise ProviderError("provider_unavailable", message, detail=detail)
    # 1xx/3xx: httpx follows no redirects, so this is usually a wrong base URL.
    raise ProviderError("provider_bad_response", f"Unexpected HTTP {status} from the provider; check LLM_BASE_URL.")


async def _read_head(response: httpx.Response) -> bytes:
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= _MAX_ERROR_BODY:
            break
    return body


def _describe_http_error(exc: httpx.HTTPError | httpx.InvalidURL, client: httpx.AsyncClient) -> tuple[str, str, str]:
    """(code, the app's sentence, the exception's own text). The URL is left out: it may carry credentials."""
    timeout = client.timeout
    if isinstance(exc, httpx.ConnectTimeout):
        return "provider_timeout", f"No connection to the provider within {timeout.connect:g} s.", str(exc)
    if isinstance(exc, httpx.ReadTimeout):
        return "provider_timeout", f"The provider sent nothing for {timeout.read:g} s.", ""
    if isinstance(exc, httpx.TimeoutException):
        return "provider_timeout", f"The request to the provider timed out ({type(exc).__name__}).", ""
    if isinstance(exc, httpx.ConnectError):
        return "provider_unreachable", "Cannot connect to the provider; check LLM_BASE_URL.", str(exc)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return "provider_unreachable", "The provider URL is not a valid http(s) URL; check LLM_BASE_URL.", str(exc)
    if isinstance(exc, httpx.DecodingError):
        return "provider_bad_response", "The provider's response could not be decoded.", str(exc)
    # A reset surfaces as a ReadError or WriteError without any text.
    reason = str(exc) or ("reset by the provider" if isinstance(exc, httpx.NetworkError) else type(exc).__name__)
    return "provider_connection_lost", "The connection to the provider was lost.", reason


def load_json(data: str) -> dict[str, Any]:
    """Parse one event's data as a JSON object; raise ProviderError("provider_bad_response") otherwise."""
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ProviderError("provider_bad_response", "The provider sent data that is not a JSON object.", detail=data)
    return value


def error_detail(body: bytes | str | dict[str, Any]) -> str:
    """The provider's own error message from an error body (OpenAI, DashScope, Ollama, vLLM JSON or text).

    Whole: ``redact.public_error`` removes secrets before anything shortens it.
    """
    value: Any = body
    if isinstance(body, bytes | str):
        text = (body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body).strip()
        try:
            value = json.loads(text)
        except ValueError:
            # A plain-text body says something; an HTML error page says nothing readable.
            return "" if text.startswith("<") else text
    if not isinstance(value, dict):
        return ""
    error = value.get("error", value)
    if isinstance(error, str):
        return error
    if not isinstance(error, dict):
        return ""
    message = error.get("message") or error.get("detail") or ""
    code = error.get("code") or ""
    return f"{code}: {message}" if code and message and isinstance(code, str) else str(message or code)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None
