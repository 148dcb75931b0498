"""What the encoder keeps of a prompt longer than its token limit (`encoder.truncation` of the manifest).

A prompt of L tokens (the tokenizer's special tokens included) that fits `max_tokens` is kept whole.
A longer one keeps its leading and trailing special tokens ([CLS] and [SEP] for BERT) and a budget of
`max_tokens - specials` content tokens, chosen by the rule:

- `head`: the first `budget` content tokens (what HF tokenizers' own truncation keeps; bundles whose
  manifest states no rule use it).
- `tail`: the last `budget` content tokens (the end of a prompt usually holds its question).
- `head_tail`: the first `head_tokens` content tokens and the last `budget - head_tokens` (the start of
  a long prompt states its task, its end the question; a few-shot preamble in the middle is dropped).
  A `head_tokens` of `budget` or more keeps the head only.

Holds `Truncation` (the rule, frozen; text form "head", "tail", "head_tail:64") and `cut_positions`
(for each kept token of a batch, the position it comes from). The cut itself, on a whole batch, is
`lmroute.bundle.encoder.cut_and_pad`; the serving encoder, the bert router and every training path
tokenise through `lmroute.bundle.encoder.PromptTokenizer`, so training and serving cut alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["HEAD", "TRUNCATION_RULES", "Truncation", "cut_positions"]

#: The rules a bundle may state, in the order of the manifest's documentation.
TRUNCATION_RULES: tuple[str, ...] = ("head", "tail", "head_tail")


@dataclass(frozen=True, kw_only=True)
class Truncation:
    """How a prompt longer than the encoder's limit is cut: `rule` (one of TRUNCATION_RULES) and, for
    `head_tail` only, `head_tokens` >= 1 (0 for the other rules). Invalid values raise ValueError."""

    rule: str = "head"
    head_tokens: int = 0

    def __post_init__(self) -> None:
        if self.rule not in TRUNCATION_RULES:
            raise ValueError(f"truncation rule {self.rule!r} is unknown (known: {', '.join(TRUNCATION_RULES)})")
        if isinstance(self.head_tokens, bool) or not isinstance(self.head_tokens, int):
            raise ValueError(f"truncation head_tokens must be an int, got {self.head_tokens!r}")
        if self.rule == "head_tail" and self.head_tokens < 1:
            raise ValueError(f"truncation head_tail needs head_tokens >= 1, got {self.head_tokens}")
        if self.rule != "head_tail" and self.head_tokens != 0:
            raise ValueError(f"truncation {self.rule} takes no head_tokens, got {self.head_tokens}")

    def __str__(self) -> str:
        return f"head_tail:{self.head_tokens}" if self.rule == "head_tail" else self.rule

    @classmethod
    def parse(cls, text: str) -> Truncation:
        """The text form back to a rule: "head", "tail" or "head_tail:<head_tokens>"."""
        rule, sep, count = text.strip().partition(":")
        if rule == "head_tail":
            if not sep or not count.strip().isdigit():
                raise ValueError(f"truncation {text!r}: head_tail needs its head tokens, e.g. 'head_tail:64'")
            return cls(rule=rule, head_tokens=int(count))
        if sep:
            raise ValueError(f"truncation {text!r}: only head_tail takes a count ('head', 'tail', 'head_tail:64')")
        return cls(rule=rule)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's form: {"rule": ..., "head_tokens": ...}."""
        return {"rule": self.rule, "head_tokens": self.head_tokens}

    def cache_key(self) -> str:
        """A file-name-safe spelling ("head", "tail", "head_tail64"), for cache keys."""
        return str(self).replace(":", "")

    def head_kept(self, budget: int) -> int:
        """Content tokens kept from the start of a prompt that is cut to `budget` content tokens."""
        if self.rule == "head":
            return budget
        if self.rule == "tail":
            return 0
        return min(self.head_tokens, budget)


HEAD = Truncation()
"""The rule of a bundle whose manifest states none: keep the first tokens."""


def cut_positions(
    lengths: npt.NDArray[np.int64], *, max_tokens: int, truncation: Truncation, front: int, back: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """For a batch of token rows of `lengths` (special tokens included; `front` of them lead and `back`
    trail every row), the source position of each kept token and where a kept token is.

    Returns (positions int64 [n, width], valid bool [n, width]) with width = the longest kept row;
    positions are 0 where not valid. A row of L <= max_tokens keeps positions 0..L-1; a longer one keeps
    positions 0..front+h-1 and L-(max_tokens-front-h)..L-1, h = truncation.head_kept(budget)."""
    budget = max_tokens - front - back
    if budget < 0:
        raise ValueError(f"max_tokens {max_tokens} leaves no room for the {front + back} special tokens")
    lengths = np.asarray(lengths, dtype=np.int64)
    kept = np.minimum(lengths, max_tokens)
    width = int(kept.max()) if kept.size else 0
    j = np.arange(width, dtype=np.int64)[None, :]
    shift = np.maximum(lengths - max_tokens, 0)[:, None]
    head_end = front + truncation.head_kept(budget)
    positions = np.where(j < head_end, j, j + shift)
    valid = j < kept[:, None]
    return np.where(valid, positions, 0), valid
