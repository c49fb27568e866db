"""The provider-neutral side of LLM streaming.

A provider turns one vendor's streaming HTTP API into these events. Vendor
JSON never leaves ``chat.providers``; this package imports neither
``chat.models`` nor ``django.db``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# What a text column cannot hold: NUL (PostgreSQL) and lone surrogates (no UTF-8 form: SQLite and
# PostgreSQL refuse them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Token counts are stored in 32-bit integer columns.
MAX_TOKENS_COUNT = 2**31 - 1


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the provider reported them (None = not reported, or not a usable count)."""

    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


@dataclass(frozen=True, slots=True)
class Finish:
    """The provider ended the reply normally; ``reason`` as it reported it."""

    reason: str | None


ProviderEvent = TextDelta | ReasoningDelta | Usage | Finish


class ProviderError(Exception):
    """The reply cannot go on.

    ``code`` is snake_case and stable (stored on the message); ``message`` is
    the app's own sentence for a person; ``detail`` is the provider's own
    words or the network's reason, unfiltered: ``redact.public_error`` makes
    the error users see from both. ``retry_after`` is the provider's
    Retry-After in seconds, when it sent one. ``retryable``: the provider
    said it is busy (HTTP 429 or 503), so the same request may succeed later.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        detail: str = "",
        retry_after: float | None = None,
        retryable: bool = False,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail
        self.retry_after = retry_after
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


class Provider(Protocol):
    async def stream(self, *, model: str, messages: list[ChatMessage]) -> AsyncIterator[ProviderEvent]:
        """Yield the reply's events; raise ProviderError when it fails.

        The iterator ends after the provider's normal end (``Finish`` has been
        yielded, and ``Usage`` if the provider reported any). Closing the
        iterator (``aclose()``) or cancelling the task closes the upstream
        HTTP response at once.
        """
        ...


def storable(text: str) -> str:
    """``text`` with NUL characters and lone surrogates replaced by U+FFFD, so any database can store it.

    Called on every delta: the common case (nothing to replace) costs one scan and no copy.
    """
    clean = "\0" not in text if text.isascii() else _UNSTORABLE.search(text) is None
    if clean:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def checked_usage(prompt: Any, completion: Any, total: Any, *, provider: str) -> Usage:
    """A Usage keeping each count that is an int in [0, 2**31 - 1]; any other becomes None.

    Logs one warning naming the unusable values (call it once per reply).
    """
    counts = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
    bad = {}
    for name, value in counts.items():
        # bool is an int to Python, not to a provider; None means "not reported", which is no error.
        if value is not None and (type(value) is not int or not 0 <= value <= MAX_TOKENS_COUNT):
            bad[name] = value
            counts[name] = None
    if bad:
        shown = ", ".join(f"{name}={value!r:.40}" for name, value in bad.items())
        logger.warning("%s reported unusable token counts (%s); stored as null", provider, shown)
    return Usage(**counts)
