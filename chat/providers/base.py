"""The provider-neutral side of LLM streaming.

A provider turns one vendor's streaming HTTP API into these events. Vendor
JSON never leaves ``chat.providers``; this package imports neither
``chat.models`` nor ``django.db``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts exactly as the provider reported them (None = not reported)."""

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
    for a person and never contains the API key or request headers;
    ``retry_after`` is the provider's Retry-After in seconds, when it sent one.
    """

    def __init__(self, code: str, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


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
