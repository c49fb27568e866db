"""A model's route to its provider: the upstream model name, and retries while the provider is busy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from .base import ChatMessage, Provider, ProviderError, ProviderEvent

# A wait never shorter than this, even for "Retry-After: 0": a provider answering busy at once
# must not be asked again in a tight loop.
MIN_DELAY = 0.25
# Waits without Retry-After: 1, 2, 4, 8, 8 ... seconds.
BACKOFF_BASE = 1.0
BACKOFF_MAX = 8.0

OnRetry = Callable[[int, float], Awaitable[None]]


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (from 1) when the provider sent no Retry-After."""
    return min(BACKOFF_BASE * 2 ** (attempt - 1), BACKOFF_MAX)


class Route:
    """Streams one model's replies through its provider, retrying a busy provider before the first token.

    A ``ProviderError`` marked ``retryable`` (HTTP 429 or 503) that comes
    before any event is retried after the provider's Retry-After, else with
    exponential backoff, while the waits add up to at most ``retry_seconds``;
    a wait that would pass that is not started, and the error stands (its
    code as the provider's answer gave it). Nothing is retried once an event
    arrived.
    """

    def __init__(self, provider: Provider, *, upstream: str, retry_seconds: float) -> None:
        self.provider = provider
        self.upstream = upstream
        self.retry_seconds = retry_seconds

    async def stream(
        self, *, messages: list[ChatMessage], on_retry: OnRetry | None = None
    ) -> AsyncIterator[ProviderEvent]:
        """Yield the reply's events (see ``Provider.stream``).

        Before each retry awaits ``on_retry(attempt, delay)`` (attempt from 1,
        delay in seconds), then sleeps ``delay``. Cancelling the task (a stop)
        ends a wait at once; closing the iterator closes the upstream response.
        """
        waited, attempt = 0.0, 0
        while True:
            events = self.provider.stream(model=self.upstream, messages=messages)
            started = False
            try:
                async for event in events:
                    started = True
                    yield event
                return
            except ProviderError as exc:
                if started or not exc.retryable:
                    raise
                attempt += 1
                delay = max(MIN_DELAY, exc.retry_after if exc.retry_after is not None else backoff(attempt))
                if waited + delay > self.retry_seconds:
                    raise
                waited += delay
            finally:
                await events.aclose()
            if on_retry is not None:
                await on_retry(attempt, delay)
            await asyncio.sleep(delay)
