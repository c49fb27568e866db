"""The SSE decoder against the WHATWG rules and recorded provider streams cut at every byte."""

import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from chat.providers.base import ProviderError
from chat.providers.sse import ServerSentEvent, SSEDecoder, error_detail, parse_retry_after

DATA = Path(__file__).resolve().parent.parent / "data"
STREAMS = sorted(DATA.glob("*.sse"))
EOLS = {"as-recorded": None, "lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def decode(pieces):
    """(events, truncated) after feeding ``pieces`` one read at a time."""
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    return events, decoder.end()


def cuts(raw: bytes):
    """``raw`` whole, in 1-byte reads, and cut in two at every offset."""
    yield "whole", [raw]
    yield "bytes", [raw[i : i + 1] for i in range(len(raw))]
    for k in range(len(raw) + 1):
        yield f"cut {k}", [raw[:k], raw[k:]]


def recorded(path: Path) -> list[ServerSentEvent]:
    rows = json.loads(path.with_suffix(".events.json").read_text(encoding="utf-8"))
    return [ServerSentEvent(**row) for row in rows]


def with_eol(raw: bytes, eol: bytes | None) -> bytes:
    if eol is None:
        return raw
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", eol)


def test_recorded_streams_are_there():
    names = {path.name for path in STREAMS}
    assert {"qwen_compatible.sse", "dashscope_native.sse", "bom_cr.sse", "openrouter_crlf.sse"} <= names
    assert len(recorded(DATA / "qwen_compatible.sse")) == 10
    assert recorded(DATA / "qwen_compatible.sse")[-1] == ServerSentEvent("[DONE]")


@pytest.mark.parametrize("eol", EOLS.values(), ids=EOLS.keys())
@pytest.mark.parametrize("path", STREAMS, ids=lambda path: path.stem)
def test_recorded_stream_decodes_the_same_however_it_is_cut(path, eol):
    raw = with_eol(path.read_bytes(), eol)
    want = recorded(path)
    for how, pieces in cuts(raw):
        assert decode(pieces) == (want, False), how
    rng = random.Random(path.name)
    for _ in range(50):
        offsets = sorted(rng.sample(range(1, len(raw)), 5))
        pieces = [raw[a:b] for a, b in zip([0, *offsets], [*offsets, len(raw)], strict=True)]
        assert decode(pieces) == (want, False), offsets


def event(data, event="message", id="", retry=None):
    return ServerSentEvent(data, event, id, retry)


SPEC_CASES = {
    "lf": (b"data: a\n\n", [event("a")]),
    "crlf": (b"data: a\r\n\r\n", [event("a")]),
    "cr": (b"data: a\r\rdata: b\r\r", [event("a"), event("b")]),
    "mixed endings": (b"data: a\r\ndata: b\rdata: c\n\r\n", [event("a\nb\nc")]),
    "multi-line data": (b"data: a\ndata:b\ndata\ndata:\n\n", [event("a\nb\n\n")]),
    "one space removed": (b"data:  two\n\n", [event(" two")]),
    "no colon": (b"data\n\n", [event("")]),
    "event type": (b"event: delta\ndata: x\n\ndata: y\n\n", [event("x", "delta"), event("y")]),
    "event without data": (b"event: delta\n\ndata: y\n\n", [event("y")]),
    "comment": (b": ping\n\n:\ndata: x\n\n", [event("x")]),
    "unknown field": (b"foo: bar\ndata: x\nData: y\n\n", [event("x")]),
    "id persists": (b"id: 1\ndata: a\n\ndata: b\n\n", [event("a", id="1"), event("b", id="1")]),
    "empty id resets": (b"id: 1\ndata: a\n\nid\ndata: b\n\n", [event("a", id="1"), event("b")]),
    "id with NUL ignored": (b"id: 7\n\nid: a\x00b\ndata: x\n\n", [event("x", id="7")]),
    "blank lines after id": (b"id: 1\ndata: x\n\n\n\n\r\n", [event("x", id="1")]),
    "retry": (
        b"retry: 3000\ndata: a\n\nretry: 3s\ndata: b\n\nretry: -1\ndata: c\n\n",
        [event("a", retry=3000)] + [event("b"), event("c")],
    ),
    "bom": (b"\xef\xbb\xbfdata: x\n\n", [event("x")]),
    "only one bom": (b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n", [event("y")]),
    "bom later is data": (b"data: \xef\xbb\xbfx\n\n", [event("\ufeffx")]),
    "invalid utf-8": (b"data: a\xffb\n\n", [event("a\ufffdb")]),
    "utf-8": ("data: 你好👋\n\n".encode(), [event("你好👋")]),
    "colon in value": (b'data: {"a": "b:c"}\n\n', [event('{"a": "b:c"}')]),
}


@pytest.mark.parametrize("raw, want", SPEC_CASES.values(), ids=SPEC_CASES.keys())
def test_spec_cases(raw, want):
    for how, pieces in cuts(raw):
        assert decode(pieces) == (want, False), how


TRUNCATED = {
    "partial line": (b"data: a\n\ndata: b", True),
    "line without blank line": (b"data: a\n\ndata: b\n", True),
    "field without data": (b"data: a\n\nid: 2\n", True),
    "partial utf-8": (b"data: a\n\n\xe4\xbd", True),
    "complete": (b"data: a\n\n", False),
    "trailing comment": (b"data: a\n\n: bye\n", False),
    "trailing blank lines": (b"data: a\n\n\n\n", False),
}


@pytest.mark.parametrize("raw, truncated", TRUNCATED.values(), ids=TRUNCATED.keys())
def test_an_unterminated_event_is_not_dispatched_but_reported(raw, truncated):
    for how, pieces in cuts(raw):
        assert decode(pieces) == ([event("a")], truncated), how


def test_cr_at_the_end_of_a_read_then_lf_is_one_line_ending():
    assert decode([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == ([event("a\nb")], False)
    # Two reads ending in CR, then LF: the CRs end two lines, the LF none.
    assert decode([b"data: a\r", b"\r", b"\ndata: b\n\n"]) == ([event("a"), event("b")], False)


def test_an_event_is_dispatched_as_soon_as_its_blank_line_arrives():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\r") == [event("a")]
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: b\n\n") == [event("b")]
    assert decoder.retry is None and not decoder.end()


@pytest.mark.parametrize(
    "value, seconds",
    [(None, None), ("", None), ("7", 7.0), (" 0 ", 0.0), ("1.5", 1.5), ("soon", None), ("-3", 0.0), ("nan", None)],
)
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_date():
    when = datetime.now(UTC) + timedelta(seconds=120)
    assert 115 <= parse_retry_after(format_datetime(when, usegmt=True)) <= 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    "body, detail",
    [
        (b'{"error": {"message": "Bad model", "type": "invalid_request_error", "code": null}}', "Bad model"),
        (b'{"error": {"message": "Slow down", "code": "rate_limit"}}', "rate_limit: Slow down"),
        (
            b'{"code": "InvalidApiKey", "message": "Invalid API-key provided.", "request_id": "x"}',
            "InvalidApiKey: Invalid API-key provided.",
        ),
        (b'{"error": "model \\"x\\" not found"}', 'model "x" not found'),
        (b'{"object": "error", "message": "too long", "code": 400}', "too long"),
        (b"upstream connect error", "upstream connect error"),
        (b"<html><body>502 Bad Gateway</body></html>", ""),
        (b"", ""),
        (b"[1, 2]", ""),
        # Whole: secrets are removed before anything shortens it (chat.providers.redact).
        (b'{"error": {"message": "' + b"x" * 1000 + b'"}}', "x" * 1000),
    ],
)
def test_error_detail(body, detail):
    assert error_detail(body) == detail


# --- the line cap ------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_a_line_at_the_cap_is_read_and_one_past_it_fails_however_it_is_cut(eol):
    at_cap = b"data: " + b"y" * 94  # 100 characters
    raw = b"\xef\xbb\xbf" + at_cap + eol + eol
    for name, pieces in cuts(raw):
        decoder = SSEDecoder(max_line=100)
        events = [event for piece in pieces for event in decoder.feed(piece)]
        assert events == [ServerSentEvent("y" * 94)], name
    over = b"data: " + "ü".encode() * 95 + eol + eol  # 101 characters, 196 bytes
    for name, pieces in cuts(over):
        decoder = SSEDecoder(max_line=100)
        with pytest.raises(ProviderError) as raised:
            for piece in pieces:
                decoder.feed(piece)
        error = raised.value
        assert error.code == "provider_bad_response" and "longer than 100 characters" in error.message, name


def test_a_line_that_never_ends_fails_as_soon_as_it_passes_the_cap():
    decoder = SSEDecoder(max_line=1000)
    assert decoder.feed(b"data: ok\n\n") == [ServerSentEvent("ok")]
    fed = 0
    with pytest.raises(ProviderError):
        while True:
            decoder.feed(b"x" * 7)
            fed += 7
    assert fed == 1000 // 7 * 7  # the read that crossed 1000 failed


def test_many_data_lines_in_one_event_share_the_cap():
    decoder = SSEDecoder(max_line=100)
    assert decoder.feed(b"data: " + b"a" * 40 + b"\n" + b"data: " + b"b" * 40 + b"\n\n") == [
        ServerSentEvent("a" * 40 + "\n" + "b" * 40)
    ]
    with pytest.raises(ProviderError) as raised:
        decoder.feed((b"data: " + b"c" * 40 + b"\n") * 3)
    assert "event data longer than 100 characters" in raised.value.message
