"""OpenAI-compatible chat completions: OpenAI, DeepSeek, Qwen compatible mode, Ollama, vLLM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from .base import ChatMessage, Finish, ProviderError, ProviderEvent, ReasoningDelta, TextDelta, checked_usage, storable
from .sse import endpoint, error_detail, load_json, open_event_stream


class OpenAIProvider:
    """Streams ``POST {base_url}/chat/completions`` with ``include_usage``; ``max_tokens`` is sent when set."""

    def __init__(
        self, *, base_url: str, api_key: str, client: httpx.AsyncClient, max_tokens: int | None = None
    ) -> None:
        self._url = endpoint(base_url, "/chat/completions")
        self._api_key = api_key
        self._client = client
        self._max_tokens = max_tokens

    async def stream(self, *, model: str, messages: list[ChatMessage]) -> AsyncIterator[ProviderEvent]:
        """Yield TextDelta and ReasoningDelta as they arrive, then Usage (if reported) and Finish at ``[DONE]``.

        Text is made storable (``base.storable``); unusable token counts become
        None (``base.checked_usage``).

        Raises ProviderError: an ``error`` object in the stream is ``provider_error``,
        EOF before ``[DONE]`` is ``provider_incomplete``; HTTP and network
        failures as described in ``sse.open_event_stream``.
        """
        headers = {"Accept": "text/event-stream"}
        # Local servers (Ollama, vLLM) take no key; an empty Bearer would confuse some proxies.
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        body = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self._max_tokens is not None:
            body["max_tokens"] = self._max_tokens
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        async with open_event_stream(
            self._client, self._url, body=body, headers=headers, api_key=self._api_key
        ) as events:
            async for event in events:
                if event.data == "[DONE]":
                    if usage is not None:
                        yield checked_usage(
                            usage.get("prompt_tokens"),
                            usage.get("completion_tokens"),
                            usage.get("total_tokens"),
                            provider="The provider",
                        )
                    yield Finish(finish_reason)
                    await events.drain()
                    return
                if event.event == "error":
                    raise _stream_error(error_detail(event.data))
                chunk = load_json(event.data)
                if chunk.get("error"):
                    raise _stream_error(error_detail(chunk))
                if chunk.get("usage"):
                    usage = _usage(chunk["usage"])
                if chunk.get("choices"):
                    reasoning, content, reason = _read_choice(chunk["choices"])
                    if reasoning:
                        yield ReasoningDelta(storable(reasoning))
                    if content:
                        yield TextDelta(storable(content))
                    finish_reason = reason or finish_reason
            cut = " in the middle of an event" if events.truncated else ""
            raise ProviderError(
                "provider_incomplete", f"The provider's stream ended{cut} before the reply was complete."
            )


def _read_choice(choices: Any) -> tuple[str, str, str | None]:
    """(reasoning, content, finish_reason) of the first choice."""
    try:
        choice = choices[0]
        delta = choice.get("delta") or {}
        # Some servers send the same thinking under both names; take one.
        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
        content = delta.get("content") or ""
        reason = choice.get("finish_reason")
    except (AttributeError, KeyError, IndexError, TypeError):
        reasoning = content = reason = None
    if not isinstance(reasoning, str) or not isinstance(content, str) or not isinstance(reason, str | None):
        raise ProviderError("provider_bad_response", "The provider sent a chunk that is not a chat completion chunk.")
    return reasoning, content, reason


def _stream_error(detail: str) -> ProviderError:
    return ProviderError("provider_error", "The provider reported an error mid-reply.", detail=detail)


def _usage(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ProviderError("provider_bad_response", "The provider sent usage that is not a JSON object.")
    return data
