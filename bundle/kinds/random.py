"""The `random` router kind: a baseline whose score depends only on (seed, prompt text).

score = the first 8 bytes of sha256(str(seed) NUL utf-8 text), top 53 bits / 2**53
(`lmroute.kernels.reference.random_scores`); no files; `train` only records the recipe's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from lmroute.bundle.kinds.base import LoadContext, RouterArtifacts, RouterKind, TrainContext
from lmroute.kernels import reference

if TYPE_CHECKING:
    from lmroute.bundle.manifest import RouterSpec
    from lmroute.bundle.routers import PromptBatch

__all__ = ["KIND", "RandomKind", "RandomParams", "RandomRouter"]


@dataclass(frozen=True)
class RandomParams:
    """seed: picks the hash stream."""

    seed: int


class RandomRouter:
    """Scores a batch by the seeded hash of each text."""

    kind = "random"
    uses_encoder = False

    def __init__(self, name: str, *, seed: int) -> None:
        self.name = name
        self.seed = seed

    def score(self, batch: PromptBatch) -> npt.NDArray[np.float64]:
        return reference.random_scores(list(batch.texts), self.seed)


class RandomKind(RouterKind):
    name = "random"
    uses_encoder = False
    reads_tokens = False  # its score hashes the text
    Params = RandomParams

    def load(self, ctx: LoadContext, router: str, spec: RouterSpec) -> RandomRouter:
        return RandomRouter(router, seed=spec.params.seed)

    def train(self, ctx: TrainContext) -> RouterArtifacts:
        from lmroute.export.train_random import train_random  # checks the seed

        return RouterArtifacts(kind=self.name, params=RandomParams(seed=train_random(ctx.recipe.seed).seed))


KIND = RandomKind()
