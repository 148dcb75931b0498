"""Per-token prices of the LLMRouter models, and the token counts that turn them into a cost per answer.

LLMRouter's data (``data/train/llmrouter``) gives every model's score on every question but no cost, so
the cost of an answer is computed here:

    cost (USD) = input_tokens * input_price + output_tokens * output_price      (prices per token)

* Prices: the dataset's own candidate list, ulab-uiuc/LLMRouter
  ``llmrouter/data/example_data/llm_candidates/default_llm.json`` @ ebdba864a97f116de148276559e473da63239a86
  (https://github.com/ulab-uiuc/LLMRouter/blob/ebdba864a97f116de148276559e473da63239a86/llmrouter/data/example_data/llm_candidates/default_llm.json,
  seen 2026-12-03): the ``input_price`` / ``output_price`` fields, USD per million tokens (NVIDIA API
  catalogue). Its free-text ``feature`` of qwen2.5-7b-instruct says $0.30 while the numeric fields say
  $0.20; the numeric fields are used.
* Input tokens: ``approx_tokens``, 4 tokens per 3 whitespace-separated words (the common "100 tokens
  ~ 75 words" rule), rounded up; the models' own tokenizers differ from each other and are not used.
* Output tokens: a fixed ``OUTPUT_TOKENS`` per answer for every model and question (the data holds no
  answers to count). Every price here has input = output, so this figure scales all costs of a question
  alike and moves no model's cost relative to another's on that question.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "LLMROUTER_PRICES",
    "OUTPUT_TOKENS",
    "PRICE_SOURCE",
    "ModelPrice",
    "answer_cost_usd",
    "approx_tokens",
]

PRICE_SOURCE = (
    "ulab-uiuc/LLMRouter llmrouter/data/example_data/llm_candidates/default_llm.json "
    "@ ebdba864a97f116de148276559e473da63239a86 "
    "(https://github.com/ulab-uiuc/LLMRouter/blob/ebdba864a97f116de148276559e473da63239a86/"
    "llmrouter/data/example_data/llm_candidates/default_llm.json), seen 2026-12-03"
)

#: Output tokens assumed for every answer (no answers are in the data to count).
OUTPUT_TOKENS = 200


@dataclass(frozen=True)
class ModelPrice:
    """A model's list price in USD per million input and per million output tokens."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float

    def __post_init__(self) -> None:
        for name in ("input_usd_per_mtok", "output_usd_per_mtok"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ModelPrice.{name}: must be finite and >= 0 (got {value!r})")


#: Normalised model name -> price (``PRICE_SOURCE``).
LLMROUTER_PRICES: Mapping[str, ModelPrice] = MappingProxyType(
    {
        "qwen2.5-7b-instruct": ModelPrice(0.20, 0.20),
        "codegemma-7b": ModelPrice(0.20, 0.20),
        "gemma-2-9b-it": ModelPrice(0.10, 0.10),
        "llama-3.1-8b-instruct": ModelPrice(0.20, 0.20),
        "llama3-chatqa-1.5-8b": ModelPrice(0.20, 0.20),
        "mistral-7b-instruct-v0.3": ModelPrice(0.20, 0.20),
        "llama-3.3-nemotron-super-49b-v1": ModelPrice(0.90, 0.90),
        "llama-3.1-nemotron-51b-instruct": ModelPrice(0.90, 0.90),
        "llama3-chatqa-1.5-70b": ModelPrice(0.90, 0.90),
    }
)


def approx_tokens(text: str) -> int:
    """Approximate token count of ``text``: ceil(4/3 x whitespace-separated words), at least 1."""
    return max(1, math.ceil(len(text.split()) * 4 / 3))


def answer_cost_usd(price: ModelPrice, input_tokens: int, output_tokens: int = OUTPUT_TOKENS) -> float:
    """USD cost of one answer with ``input_tokens`` in and ``output_tokens`` out at ``price``."""
    return (input_tokens * price.input_usd_per_mtok + output_tokens * price.output_usd_per_mtok) / 1e6
