"""DashScope's native text-generation API (Qwen on Alibaba Cloud Model Studio)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from .base import (
    ChatMessage,
    Finish,
    ProviderError,
    ProviderEvent,
    ReasoningDelta,
    TextDelta,
    Usage,
    checked_usage,
    storable,
)
from .sse import endpoint, error_detail, load_json, open_event_stream


class DashScopeProvider:
    """Streams ``POST {base_url}/services/aigc/text-generation/generation`` with ``X-DashScope-SSE: enable``.

    By default DashScope repeats the whole text so far in every event
    (``incremental_output: false``); with ``incremental_output=True`` each
    event carries only the new text. ``max_tokens`` is sent as ``parameters.max_tokens`` when set.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        client: httpx.AsyncClient,
        incremental_output: bool = False,
        max_tokens: int | None = None,
    ) -> None:
        self._url = endpoint(base_url, "/services/aigc/text-generation/generation")
        self._api_key = api_key
        self._client = client
        self._incremental = incremental_output
        self._max_tokens = max_tokens

    async def stream(self, *, model: str, messages: list[ChatMessage]) -> AsyncIterator[ProviderEvent]:
        """Yield TextDelta and ReasoningDelta (new text only), then Usage and Finish at the first real finish_reason.

        Raises ProviderError: ``event:error`` is ``provider_error``; cumulative
        text that does not continue what was already yielded is
        ``provider_bad_response``; EOF before a finish_reason is
        ``provider_incomplete``; HTTP and network failures as described in
        ``sse.open_event_stream``. Text is made storable (``base.storable``);
        unusable token counts become None (``base.checked_usage``).
        """
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "X-DashScope-SSE": "enable",
            "Accept": "text/event-stream",
        }
        body = {
            "model": model,
            "input": {"messages": [{"role": m.role, "content": m.content} for m in messages]},
            "parameters": {"incremental_output": self._incremental},
        }
        if self._max_tokens is not None:
            body["parameters"]["max_tokens"] = self._max_tokens
        text = reasoning = ""  # all yielded so far
        usage: dict[str, Any] = {}
        async with open_event_stream(
            self._client, self._url, body=body, headers=headers, api_key=self._api_key
        ) as events:
            async for event in events:
                if event.event == "error":
                    raise _error(error_detail(event.data))
                if event.event not in ("result", "message"):
                    continue
                payload = load_json(event.data)
                if "output" not in payload and payload.get("code"):
                    raise _error(error_detail(payload))
                new_reasoning, new_text, finish = _read_output(payload.get("output"))
                # The text so far is kept as received: the next cumulative event must continue it.
                if delta := self._delta(reasoning, new_reasoning):
                    reasoning += delta
                    yield ReasoningDelta(storable(delta))
                if delta := self._delta(text, new_text):
                    text += delta
                    yield TextDelta(storable(delta))
                if isinstance(payload.get("usage"), dict):
                    usage = payload["usage"]
                # Until the end DashScope sends the string "null", not JSON null.
                if finish and finish != "null":
                    if usage:
                        yield _usage(usage)
                    yield Finish(finish)
                    await events.drain()
                    return
            cut = " in the middle of an event" if events.truncated else ""
            raise ProviderError("provider_incomplete", f"DashScope's stream ended{cut} before the reply was complete.")

    def _delta(self, sent: str, received: str) -> str:
        if self._incremental:
            return received
        if not received.startswith(sent):
            raise ProviderError(
                "provider_bad_response", "DashScope sent cumulative text that does not continue the text so far."
            )
        return received[len(sent) :]


def _read_output(output: Any) -> tuple[str, str, str | None]:
    """(reasoning, text, finish_reason) from ``output`` in text or message result format."""
    try:
        if "choices" in output:
            choice = output["choices"][0]
            message = choice.get("message") or {}
            reasoning, text = message.get("reasoning_content") or "", message.get("content") or ""
            finish = choice.get("finish_reason") or output.get("finish_reason")
        else:
            reasoning, text, finish = "", output.get("text") or "", output.get("finish_reason")
    except (AttributeError, KeyError, IndexError, TypeError):
        reasoning = text = finish = None
    if isinstance(text, list):  # multimodal models send [{"text": ...}]
        text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
    if not isinstance(reasoning, str) or not isinstance(text, str) or not isinstance(finish, str | None):
        raise ProviderError("provider_bad_response", "DashScope sent an event without a readable output.")
    return reasoning, text, finish


def _usage(data: dict[str, Any]) -> Usage:
    prompt, completion, total = data.get("input_tokens"), data.get("output_tokens"), data.get("total_tokens")
    if total is None and type(prompt) is int and type(completion) is int:
        total = prompt + completion
    return checked_usage(prompt, completion, total, provider="DashScope")


def _error(detail: str) -> ProviderError:
    return ProviderError("provider_error", "DashScope reported an error.", detail=detail)
