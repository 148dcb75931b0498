"""A toy router kind, written as a user would write one outside this repository: one module that
registers itself on import (`lmroute-export build --plugin constant_kind`, `lmroute-serve --plugin
constant_kind`).

`constant` scores every prompt with one number learnt from the training split: the share of the direct
strong-vs-weak comparisons that the strong model won (a tie counts half). It stores that number as a
param and the per-outcome counts it came from as an array file, so the writer's and the loader's
handling of a plug-in's files is exercised too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lmroute.bundle import kinds
from lmroute.bundle.errors import BundleError
from lmroute.bundle.jsonread import fail


@dataclass(frozen=True)
class ConstantParams:
    value: float


class ConstantRouter:
    kind = "constant"
    uses_encoder = False

    def __init__(self, name: str, value: float) -> None:
        self.name, self.value = name, value

    def score(self, batch: Any) -> npt.NDArray[np.float64]:
        return np.full(len(batch.texts), self.value, dtype=np.float64)


class ConstantKind(kinds.RouterKind):
    name = "constant"
    uses_encoder = False
    Params = ConstantParams
    roles = (kinds.ArrayRole("outcome_counts", np.float64),)

    def check_params(self, params: ConstantParams, where: str) -> None:
        if not 0.0 <= params.value <= 1.0:
            raise fail(f"{where}.value: {params.value} outside [0, 1]")

    def load(self, ctx: kinds.LoadContext, router: str, spec: Any) -> ConstantRouter:
        rel = spec.files["outcome_counts"]
        counts = ctx.npy(rel, np.float64, [("outcomes (strong, weak, tie)", 3)])
        if abs((counts[0] + 0.5 * counts[2]) / counts.sum() - spec.params.value) > 1e-12:
            raise BundleError(rel, "does not give params.value")
        return ConstantRouter(router, spec.params.value)

    def train(self, ctx: kinds.TrainContext) -> kinds.RouterArtifacts:
        counts = strong_weak_tie_counts(ctx.comparisons, ctx.strong, ctx.weak)
        value = (counts[0] + 0.5 * counts[2]) / counts.sum()
        ctx.notes["n_pair_comparisons"] = int(counts.sum())
        return kinds.RouterArtifacts(
            kind=self.name, params=ConstantParams(value=float(value)), arrays={"outcome_counts": counts}
        )


def strong_weak_tie_counts(comps: Any, strong: str, weak: str) -> npt.NDArray[np.float64]:
    """[strong wins, weak wins, ties] over the comparisons between the two models (outcome 0: model_a
    won, 1: model_b won, 2: tie)."""
    s, w = comps.models.index(strong), comps.models.index(weak)
    a, b, y = np.asarray(comps.model_a), np.asarray(comps.model_b), np.asarray(comps.outcome)
    pair = comps.pair_mask(strong, weak)
    strong_won = pair & (((a == s) & (y == 0)) | ((b == s) & (y == 1)))
    weak_won = pair & (((a == w) & (y == 0)) | ((b == w) & (y == 1)))
    tie = pair & (y == 2)
    return np.array([strong_won.sum(), weak_won.sum(), tie.sum()], dtype=np.float64)


kinds.register(ConstantKind())
