"""How far the token estimate (chat/tokens.py) is from what real providers reported.

``python -m bench.estimates``: each recorded stream in tests/data/*.sse that
carries the provider's usage is replayed by the fake provider over a real
socket and read by the app's own provider (OpenAI-compatible or DashScope);
the estimate of the completion (``count_tokens`` of the content plus the
reasoning) is printed next to the completion tokens the provider reported,
with the relative error. The prompts of the recordings were not kept, so only
completions are compared. Figures: docs/usage.md.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from chat.providers.base import ChatMessage, ReasoningDelta, TextDelta, Usage
from chat.providers.dashscope import DashScopeProvider
from chat.providers.openai import OpenAIProvider
from chat.tokens import _CJK, count_tokens
from tests.fakeprovider import FakeProvider

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
ASK = [ChatMessage("user", "hello")]


async def measure(name: str, provider) -> tuple[int, int, str] | None:
    """(estimated, reported completion tokens, the text's scripts) for one recording; None without usage."""
    text, reasoning, usage = [], [], None
    async for event in provider.stream(model=f"fake:replay={name}", messages=ASK):
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, Usage):
            usage = event
    if usage is None or not usage.completion_tokens:
        return None
    received = "".join(text) + "".join(reasoning)
    kind = "CJK" if len(_CJK.findall(received)) > len(received) / 2 else "Latin"
    return count_tokens("".join(text)) + count_tokens("".join(reasoning)), usage.completion_tokens, kind


async def main() -> None:
    fake = FakeProvider()
    base_url = await fake.serve()
    rows = []
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for path in sorted(DATA.glob("*.sse")):
                api = DashScopeProvider if path.name.startswith("dashscope") else OpenAIProvider
                try:
                    result = await measure(path.name, api(base_url=base_url, api_key="sk-bench", client=client))
                except Exception as exc:  # a recording of a failure: nothing to compare
                    print(f"{path.name:28} skipped ({type(exc).__name__})")
                    continue
                if result is not None:
                    rows.append((path.name, *result))
    finally:
        await fake.aclose()
    print(f"{'recording':28} {'text':6} {'estimated':>9} {'reported':>8} {'error':>7}")
    for name, estimated, reported, kind in rows:
        print(f"{name:28} {kind:6} {estimated:9d} {reported:8d} {(estimated - reported) / reported:+7.0%}")
    total_estimated, total_reported = sum(r[1] for r in rows), sum(r[2] for r in rows)
    error = (total_estimated - total_reported) / total_reported
    print(f"{'all':28} {'':6} {total_estimated:9d} {total_reported:8d} {error:+7.0%}")


if __name__ == "__main__":
    import django

    django.setup()
    asyncio.run(main())
