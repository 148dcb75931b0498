"""The one place that normalises model names across data sources.

Sources spell the same model differently (``gpt4_1106_preview`` in AlpacaEval, ``gpt-4-1106-preview``
in MT-Bench, ``mistralai/mixtral-8x7b-chat`` in RouterBench, ...). ``normalize_model_name`` maps every
spelling to one canonical name:

1. strip surrounding whitespace and lower-case;
2. drop an organisation prefix (everything up to the last ``/``);
3. ``_`` -> ``-``; a leading ``gpt4`` / ``gpt35`` token becomes ``gpt-4`` / ``gpt-3.5``;
4. drop a trailing ``-hf`` (Hugging Face checkpoint suffix);
5. look the result up in ``ALIASES`` (explicit, reviewed identities; anything not listed stays as is).

Only names known to denote the same model are merged; prompted variants (``..._concise``,
``..._verbose``) and unversioned names whose version is ambiguous stay distinct.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType

__all__ = ["ALIASES", "STRONG", "WEAK", "normalize_model_name"]

STRONG = "gpt-4-1106-preview"
WEAK = "mixtral-8x7b-instruct-v0.1"

ALIASES: Mapping[str, str] = MappingProxyType(
    {
        # RouterBench calls Mixtral-8x7B-Instruct-v0.1 (the only Mixtral instruct release then) "chat".
        "mixtral-8x7b-chat": WEAK,
        # RouterBench / AlpacaEval spellings of the Anthropic models Chatbot Arena calls claude-1/2.
        "claude-v1": "claude-1",
        "claude-v2": "claude-2",
        "claude-instant-v1": "claude-instant-1",
        "claude": "claude-1",
        # AlpacaEval's "chatgpt" is gpt-3.5-turbo (the Arena name).
        "chatgpt": "gpt-3.5-turbo",
        # Chatbot Arena's "palm-2" is the chat-bison-001 endpoint.
        "palm-2-chat-bison-001": "palm-2",
        # Vicuna-33B was only released as v1.3.
        "vicuna-33b": "vicuna-33b-v1.3",
        # RouterBench's name for Code Llama 34B Instruct.
        "code-llama-instruct-34b-chat": "codellama-34b-instruct",
    }
)

_GPT_PREFIX = re.compile(r"^gpt(4|35)(?=-|$)")
_GPT_VERSIONS = {"4": "gpt-4", "35": "gpt-3.5"}


@lru_cache(maxsize=4096)
def normalize_model_name(name: str) -> str:
    """Return the canonical name of model ``name``; raise ``ValueError`` for an empty name."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    text = name.strip().lower()
    text = text.rsplit("/", 1)[-1].strip()
    if not text:
        raise ValueError(f"empty model name {name!r}")
    text = text.replace("_", "-")
    text = _GPT_PREFIX.sub(lambda m: _GPT_VERSIONS[m.group(1)], text)
    if text.endswith("-hf"):
        text = text[: -len("-hf")]
    return ALIASES.get(text, text)
