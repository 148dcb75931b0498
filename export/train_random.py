"""The random router: its manifest params and its score function (a seeded hash, no training).

The score of a prompt is `lmroute.kernels.reference.random_scores` (sha256 of seed + text mapped to
[0, 1)), so the runtime and the evaluation compute the same numbers, batched == single, and restarts
agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lmroute.kernels.reference import random_scores

__all__ = ["RandomRouterParams", "random_router_scores", "train_random"]


@dataclass(frozen=True)
class RandomRouterParams:
    """Manifest params of one random router: `seed` picks the hash stream."""

    seed: int

    def as_manifest_params(self) -> dict[str, int]:
        """The router's `params` object in manifest.json."""
        return {"seed": self.seed}


def train_random(seed: int = 0) -> RandomRouterParams:
    """'Train' a random router: validates and records the seed."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return RandomRouterParams(seed=int(seed))


def random_router_scores(texts: Sequence[str], params: RandomRouterParams) -> NDArray[np.float64]:
    """Scores in [0, 1) of `texts` under the random router `params`."""
    return random_scores(texts, params.seed)
