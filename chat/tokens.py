"""Token estimates for replies whose provider reported no usage (stopped, capped, failed, interrupted).

A heuristic, not a tokenizer: byte-pair tokenizers (OpenAI's, Qwen's) give
about one token per CJK character and about one per four characters of
English text and code. Each chat message adds a few tokens of framing (role
and separators; OpenAI documents 3 to 4). The estimate only has to be close
enough for quotas and the usage report, which say it is an estimate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from .providers.base import Usage

# Han (with extensions A and B and compatibility ideographs), CJK punctuation,
# kana, Hangul syllables and full-width forms: about one token each.
_CJK = re.compile(
    "[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\U00020000-\U0002a6df]"
)
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4


def count_tokens(text: str) -> int:
    """About how many tokens ``text`` is: one per CJK character, one per 4 other characters (rounded up)."""
    if not text:
        return 0
    cjk = len(text) - len(_CJK.sub("", text))
    return cjk + math.ceil((len(text) - cjk) / CHARS_PER_TOKEN)


def estimate_usage(*, system_prompt: str, history: Iterable[tuple[str, str]], received: Iterable[str]) -> Usage:
    """A Usage estimated from what a generation sent upstream and the text it received.

    Prompt: the system prompt (when there is one) and each (role, content)
    of ``history``, each with its framing; completion: the ``received`` texts
    (content and reasoning).
    """
    sent = [system_prompt] if system_prompt else []
    sent += [content for _, content in history]
    prompt = sum(count_tokens(text) + TOKENS_PER_MESSAGE for text in sent)
    completion = sum(count_tokens(text) for text in received)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
