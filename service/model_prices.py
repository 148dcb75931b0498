"""The deployment's model prices (`--models-file`) and the expected cost of one answer.

The models file is JSON:

    {"models": {
        "gpt-4-1106-preview":  {"input_price_per_mtok": 10.0, "output_price_per_mtok": 30.0,
                                "output_tokens": 350},
        "mixtral-8x7b-instruct-v0.1": {"input_price_per_mtok": 0.6, "output_price_per_mtok": 0.6}
    }}

Prices are USD per million tokens; `output_tokens` is how long that model's answers run on the
deployment's traffic (default: the server's `expected_output_tokens`). A Route candidate's own prices win
over the file's; a price of 0 in a request means "the file's".

Expected cost of an answer = (input tokens x input price + output tokens x output price) / 1e6, with
the prompt's input tokens estimated as ceil(characters / 4) (about four characters per token for
English text with the common BPE vocabularies; the encoder's own token count stops at its limit).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lmroute.bundle.jsonread import unique_keys

__all__ = [
    "MAX_OUTPUT_TOKENS",
    "MAX_PRICE_PER_MTOK",
    "ModelPrice",
    "expected_cost_usd",
    "input_tokens",
    "load_models_file",
    "price_problem",
    "tokens_of_chars",
]

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class ModelPrice:
    """One model's prices, USD per million tokens, and its expected answer length (None: the server's)."""

    input_per_mtok: float
    output_per_mtok: float
    output_tokens: int | None = None


def input_tokens(text: str) -> int:
    """The prompt's input tokens as the cost estimate counts them (module docstring)."""
    return tokens_of_chars(len(text))


def tokens_of_chars(chars: int) -> int:
    """Input tokens of a prompt of `chars` characters, as the cost estimate counts them."""
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


def expected_cost_usd(price: ModelPrice, n_input: int, default_output_tokens: int) -> float:
    out = price.output_tokens if price.output_tokens is not None else default_output_tokens
    return (n_input * price.input_per_mtok + out * price.output_per_mtok) / 1e6


MAX_PRICE_PER_MTOK = 1e6
"""The dearest price taken, USD per million tokens (one dollar a token): a price beyond it is a mistake,
and one large enough makes an expected cost overflow to inf, which would hold a spend controller."""

MAX_OUTPUT_TOKENS = 1_000_000
"""The longest expected answer a models file may give a model, tokens."""


def price_problem(value: float) -> str | None:
    """Why `value` is no price (USD per million tokens), or None."""
    if not (math.isfinite(value) and 0 <= value <= MAX_PRICE_PER_MTOK):
        return f"must be in [0, {MAX_PRICE_PER_MTOK:g}] USD per million tokens (got {value!r})"
    return None


def _price(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: must be a number (got {value!r})")
    problem = price_problem(float(value))
    if problem is not None:
        raise ValueError(f"{where}: {problem}")
    return float(value)


def load_models_file(path: Path) -> dict[str, ModelPrice]:
    """model -> ModelPrice from the file at `path`; ValueError naming the file and the bad key."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: cannot be read as JSON ({exc})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f'{path}: expected {{"models": {{name: {{...prices...}}}}}} with at least one model')
    unknown_top = set(data) - {"models", "source", "sources", "note", "notes", "license"}
    if unknown_top:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown_top)} (known: models, and source/note/license text)")
    out: dict[str, ModelPrice] = {}
    for name, entry in models.items():
        where = f"{path}: models.{name}"
        if not name.strip():
            raise ValueError(f"{path}: models: a model with an empty name")
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected an object of prices")
        unknown = set(entry) - {"input_price_per_mtok", "output_price_per_mtok", "output_tokens"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}")
        for key in ("input_price_per_mtok", "output_price_per_mtok"):
            if key not in entry:
                raise ValueError(f"{where}.{key}: required")
        tokens = entry.get("output_tokens")
        if tokens is not None and (
            isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_OUTPUT_TOKENS
        ):
            raise ValueError(f"{where}.output_tokens: must be an integer in [1, {MAX_OUTPUT_TOKENS}] (got {tokens!r})")
        out[str(name)] = ModelPrice(
            _price(entry["input_price_per_mtok"], f"{where}.input_price_per_mtok"),
            _price(entry["output_price_per_mtok"], f"{where}.output_price_per_mtok"),
            tokens,
        )
    return out
