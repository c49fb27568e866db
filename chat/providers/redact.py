"""What a person may see of a provider failure, and what the log keeps of it.

Everything secret is removed from the whole text first and only then is it
shortened: a cut made first can fall inside a key and leave most of it.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, unquote, urlsplit

from .base import ProviderError

logger = logging.getLogger(__name__)

REDACTED = "[redacted]"
# Users get a glimpse of the provider's words; the log gets enough to debug with.
MAX_PUBLIC_DETAIL = 200
MAX_LOGGED_DETAIL = 2000
# A run of this many characters of the API key is treated as the key (a provider may quote it cut).
KEY_FRAGMENT = 8

_AUTH_VALUE = re.compile(r"\b(Bearer|Basic|Token)\s+[^\s'\",;]+", re.IGNORECASE)
_SK_KEY = re.compile(r"\bsk-[\w*.~+/=-]+")
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
# Values of key=... and "token": "..." (a bare colon is left alone: "InvalidApiKey: ..." is an error code;
# numbers too: "total_tokens": 12 is no secret).
_KEY_VALUE = re.compile(
    r"(?P<name>[\w-]*(?:key|token|secret|password|passwd|signature|auth|credential)[\w-]*)"
    r"""(?P<sep>\s*=\s*["']?|["']\s*:\s*["']?)(?P<value>(?=[^\s"'&,;)]*[A-Za-z])[^\s"'&,;)]+)""",
    re.IGNORECASE,
)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b")
_IPV6 = re.compile(
    r"\[[0-9A-Fa-f:.]+\](?::\d+)?|\b(?:[0-9A-Fa-f]{1,4}:){3,7}[0-9A-Fa-f]{1,4}\b|(?<![\w:])[0-9A-Fa-f:]*::[0-9A-Fa-f]+\b"
)
# Host names end in a lower-case top-level label; DashScope codes like "Throttling.RateQuota" do not.
_HOST = re.compile(
    r"\b(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[a-z]{2,24}\b(?::\d+)?|\blocalhost(?::\d+)?\b"
)
_TOKEN = re.compile(r"[A-Za-z0-9_+/=~-]{20,}")
_SPACE = re.compile(r"\s+")


def public_error(error: ProviderError, *, api_key: str, url: str) -> ProviderError:
    """The error to show and store: the app's sentence plus at most a short, sanitised provider detail.

    Logs one warning with the code, the request URL without credentials and
    the whole detail with secrets removed (the request id comes from
    ``chat.logs``). Removed from what users see: the API key and any 8
    characters of it, the URL's user, password and query values, Bearer and
    Basic values, ``key=...`` values, ``sk-...`` and other random-looking
    tokens, URLs, host names and IP addresses.
    """
    secrets = _secrets(api_key, url)
    message = _redact(error.message, secrets)
    # One line whatever the provider sent: a newline in its words could forge a log record.
    detail = _SPACE.sub(" ", _redact(error.detail, secrets)).strip()
    logger.warning(
        "provider request to %s failed: %s: %s Details: %s",
        _location(url),
        error.code,
        message,
        _shorten(detail, MAX_LOGGED_DETAIL) or "none",
    )
    public = _shorten(_hide_locations(detail), MAX_PUBLIC_DETAIL)
    if public:
        message = f"{message} Details: {public}"
        message = message if message[-1] in ".!?。…" else message + "."
    return ProviderError(error.code, message, retry_after=error.retry_after, retryable=error.retryable)


def _secrets(api_key: str, url: str) -> list[str]:
    """The exact strings to remove, longest first: the key, and the URL's credentials and query values."""
    try:
        parts = urlsplit(url)
        values = [parts.username or "", parts.password or ""]
        values += [value for _, value in parse_qsl(parts.query, keep_blank_values=True)]
    except ValueError:
        values = []
    values += [unquote(value) for value in values]
    # Short values ("1", "true") are settings, not secrets; replacing them everywhere would garble the text.
    found = {value for value in values if len(value) >= 4}
    found.add(api_key)
    return sorted(filter(None, found), key=len, reverse=True)


def _redact(text: str, secrets: list[str]) -> str:
    """``text`` without any secret, whole or as a run of KEY_FRAGMENT characters, nor credential-shaped values."""
    if not text:
        return ""
    for secret in secrets:
        text = _without_fragments(text, secret)
    text = _URL_USERINFO.sub(REDACTED + "@", text)
    text = _AUTH_VALUE.sub(rf"\1 {REDACTED}", text)
    text = _SK_KEY.sub(REDACTED, text)
    return _KEY_VALUE.sub(rf"\g<name>\g<sep>{REDACTED}", text)


def _without_fragments(text: str, secret: str) -> str:
    if len(secret) <= KEY_FRAGMENT:
        return text.replace(secret, REDACTED)
    spans: list[list[int]] = []
    for start in range(len(secret) - KEY_FRAGMENT + 1):
        piece = secret[start : start + KEY_FRAGMENT]
        found = text.find(piece)
        while found != -1:
            spans.append([found, found + KEY_FRAGMENT])
            found = text.find(piece, found + 1)
    if not spans:
        return text
    spans.sort()
    merged = [spans[0]]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces, position = [], 0
    for start, end in merged:
        pieces += [text[position:start], REDACTED]
        position = end
    return "".join(pieces) + text[position:]


def _hide_locations(text: str) -> str:
    """``text`` without URLs, host names, IP addresses and random-looking tokens."""
    text = _URL.sub("[url]", text)
    text = _IPV6.sub("[host]", _IPV4.sub("[host]", text))
    text = _HOST.sub("[host]", text)
    return _TOKEN.sub(lambda match: REDACTED if _looks_random(match.group()) else match.group(), text)


def _looks_random(token: str) -> bool:
    """Keys, hashes and ids mix letters and digits in long runs; gpt-4o-mini-2024-07-18 or a path does not."""

    def mixed(text: str) -> bool:
        return any(c.islower() for c in text) + any(c.isupper() for c in text) + any(c.isdigit() for c in text) >= 2

    parts = re.split(r"[^A-Za-z0-9]", token)
    if any(len(part) >= 16 and mixed(part) for part in parts):
        return True
    return len(token) >= 32 and mixed(token) and sum(c.isdigit() for c in token) >= 4


def _location(url: str) -> str:
    """``url`` without user, password and query, for the log."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an invalid URL"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else "an invalid URL"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
