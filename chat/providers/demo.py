"""The offline ``demo`` model: the app works, and says how to connect a real model, with zero configuration."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from .base import ChatMessage, Finish, ProviderEvent, TextDelta, Usage

REPLY = """\
## This is the demo model

I received your message ({words} words). I am not a language model: I run \
offline inside this app and always give this answer, so that everything works \
before a real model is configured.

To talk to a real model, set these environment variables and restart:

- `LLM_BASE_URL`: the API's base URL
- `LLM_API_KEY`: your API key (leave it empty for Ollama)
- `LLM_MODELS`: model names, comma-separated; the first is the default
- `LLM_API=dashscope` for DashScope's native API (the default, `openai`, \
speaks any OpenAI-compatible `/chat/completions`)

| Provider | `LLM_API` | `LLM_BASE_URL` | `LLM_MODELS` |
| --- | --- | --- | --- |
| OpenAI | `openai` | `https://api.openai.com/v1` | `gpt-4o-mini` |
| Ollama | `openai` | `http://127.0.0.1:11434/v1` | `llama3.2` |
| DashScope | `dashscope` | `https://dashscope.aliyuncs.com/api/v1` | `qwen-plus` |

For example, in a `.env` file at the project root:

```bash
LLM_BASE_URL=https://api.openai.com/v1
LLM_API_KEY=sk-...
LLM_MODELS=gpt-4o-mini,gpt-4o
```
"""


class DemoProvider:
    """Streams ``REPLY`` locally, one word at a time, ``delay`` seconds apart; no network."""

    def __init__(self, *, delay: float = 0.02) -> None:
        self._delay = delay

    async def stream(self, *, model: str, messages: list[ChatMessage]) -> AsyncIterator[ProviderEvent]:
        """Yield the reply as word-sized TextDeltas, then Usage (words counted as tokens) and Finish("stop")."""
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        reply = REPLY.format(words=len(last_user.split()))
        for index, piece in enumerate(re.findall(r"\s*\S+\s*", reply)):
            if index:
                await asyncio.sleep(self._delay)
            yield TextDelta(piece)
        prompt_tokens = sum(len(m.content.split()) for m in messages)
        completion_tokens = len(reply.split())
        yield Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
        yield Finish("stop")
