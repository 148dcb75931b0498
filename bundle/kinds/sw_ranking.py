"""The `sw_ranking` router kind: similarity-weighted Bradley-Terry over model tiers (RouteLLM's SW router).

Files: prompt_embeddings [n, dim] float32 (unit rows), cells [n_cells, 3] int32 (tier_a < tier_b,
outcome 0/1/2) and cell_counts [n, n_cells] float32 (each training prompt's weighted comparisons per
cell). Per request the compiled core weighs every training prompt by gamma ** (1 + sim / max sim), sums
the cell counts and solves the Bradley-Terry MLE over tiers exactly (float64). Training:
`lmroute.export.train_sw`.

Bundles of schema version 2 also carry `index`, a FAISS IndexFlatIP over the prompt rows; it is
accepted (checksummed) and never read: the exact scan needs every row in float64, which a FAISS
search does not give (benchmarks/RESULTS_sw_kernel.md), so schema 3 no longer ships it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from lmroute.bundle.errors import BundleError
from lmroute.bundle.jsonread import MANIFEST_NAME, fail
from lmroute.bundle.kinds.base import ArrayRole, LoadContext, RouterArtifacts, RouterKind, TrainContext
from lmroute.bundle.kinds.sw_routellm_fit import RouteLLMFit, sklearn_missing
from lmroute.bundle.routers import compiled_core, need_embeddings

if TYPE_CHECKING:
    from lmroute.bundle.manifest import Manifest, RouterSpec
    from lmroute.bundle.routers import PromptBatch

__all__ = ["KIND", "SWRankingKind", "SWRankingParams", "SWRankingRouter"]

_NORM_TOL = 1e-3  # |1 - ||x|| | allowed for float32 rows that claim to be L2-normalised
MAX_GAMMA = 1e100  # a prompt's weight is at most gamma ** 2: finite
MAX_TIERS = 1024  # the Bradley-Terry solve holds n_tiers ratings per query


@dataclass(frozen=True)
class SWRankingParams:
    """gamma: similarity weight base (> 1); n_tiers, strong_tier, weak_tier: the tiers; scale, base:
    the Elo units the ratings are reported in (they do not change the score); fit: how each request's
    ratings are found, "exact" (the likelihood's optimum, Newton in the compiled core) or "routellm"
    (RouteLLM 0.2.0's own scikit-learn fit, stopped where it stops: `sw_routellm_fit`)."""

    gamma: float
    n_tiers: int
    strong_tier: int
    weak_tier: int
    scale: float
    base: float
    fit: str = "exact"


FITS = ("exact", "routellm")


class SWRankingRouter:
    """Similarity-weighted Bradley-Terry over tiers, scored exactly over every training prompt.

    The scan runs in the compiled core (`compiled.SWIndex`, float64 accumulation): every training prompt
    carries weight >= gamma, so a top-k search would be a different model. `params.scale` does not
    change the score (the MLE probability is invariant to the rating scale) and is kept for reporting
    ratings in Elo units.
    """

    kind = "sw_ranking"
    uses_encoder = True

    def __init__(
        self,
        name: str,
        *,
        prompt_embeddings: npt.NDArray[np.float32],
        cell_counts: npt.NDArray[np.float32],
        cells: npt.NDArray[np.int32],
        params: SWRankingParams,
        rated_tiers: Collection[int] = (),
    ) -> None:
        """rated_tiers: the tiers the bundle's models belong to (a fit "routellm" gives only those a
        rating of their own)."""
        self.name = name
        self.prompt_embeddings = prompt_embeddings
        self.cell_counts = cell_counts
        self.cells = cells
        self.params = params
        self.table = compiled_core().SWIndex(prompt_embeddings, cell_counts, cells, params.n_tiers)
        self.device_table: Any = None
        self.scan_device = "cpu"
        self.routellm_fit = RouteLLMFit(cells, rated_tiers, params.base) if params.fit == "routellm" else None

    def use_device_scan(self, xp: str = "cupy") -> None:
        """Run the similarity scan on a GPU (lmroute.kernels.gpu; the loader calls this for
        --device cuda when CuPy sees a device). xp="numpy" runs the same code on the CPU (tests)."""
        from lmroute.kernels.gpu import DeviceSWIndex

        self.device_table = DeviceSWIndex(self.table, xp=xp)
        self.scan_device = "cuda" if xp == "cupy" else xp

    def score(self, batch: PromptBatch) -> npt.NDArray[np.float64]:
        emb = need_embeddings(self.name, self.kind, batch, self.prompt_embeddings.shape[1])
        if emb.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        table = self.device_table if self.device_table is not None else self.table
        p = self.params
        if self.routellm_fit is not None:
            return self.routellm_fit.scores(table.cell_weights(emb, p.gamma), p.strong_tier, p.weak_tier)
        scores: npt.NDArray[np.float64] = table.scores(emb, p.strong_tier, p.weak_tier, gamma=p.gamma, base=p.base)
        return scores


class SWRankingKind(RouterKind):
    name = "sw_ranking"
    uses_encoder = True
    reads_text = False  # its score reads only the embedding
    reads_tokens = False
    Params = SWRankingParams
    roles = (
        ArrayRole("prompt_embeddings", np.float32),
        ArrayRole("cell_counts", np.float32),
        ArrayRole("cells", np.int32),
    )
    retired_roles = {"index": 2}  # the FAISS index of schema <= 2 bundles: accepted, never read

    def check_params(self, params: SWRankingParams, where: str) -> None:
        self.positive(params, where, "gamma", "scale", "n_tiers")
        if not 1.0 < params.gamma <= MAX_GAMMA:
            raise fail(f"{where}.gamma: must be in (1, {MAX_GAMMA:g}], got {params.gamma}")
        if params.n_tiers > MAX_TIERS:
            raise fail(f"{where}.n_tiers: at most {MAX_TIERS}, got {params.n_tiers}")
        if params.base <= 1.0:
            raise fail(f"{where}.base: must be > 1, got {params.base}")
        for name in ("strong_tier", "weak_tier"):
            value = getattr(params, name)
            if not 0 <= value < params.n_tiers:
                raise fail(f"{where}.{name}: {value} out of range [0, {params.n_tiers})")
        if params.fit not in FITS:
            raise fail(f"{where}.fit: must be one of {', '.join(FITS)}, got {params.fit!r}")

    def check_manifest(self, router: str, spec: RouterSpec, manifest: Manifest) -> None:
        where = f"routers.{router}.params"
        params: SWRankingParams = spec.params
        for model, tier in manifest.tiers.items():
            if tier >= params.n_tiers:
                raise fail(f"tiers.{model}: tier {tier} out of range for {where}.n_tiers {params.n_tiers}")
        for role in ("strong", "weak"):
            model = getattr(manifest.default_pair, role)
            value = getattr(params, f"{role}_tier")
            if value != manifest.tiers[model]:
                raise fail(f"{where}.{role}_tier: {value} does not match tiers.{model} = {manifest.tiers[model]}")

    def load(self, ctx: LoadContext, router: str, spec: RouterSpec) -> SWRankingRouter:
        files, params = spec.files, spec.params
        dim = ctx.manifest.encoder.dim
        n_tiers = params.n_tiers
        prompts_rel, cells_rel, counts_rel = files["prompt_embeddings"], files["cells"], files["cell_counts"]
        prompts = ctx.npy(prompts_rel, np.float32, [("n_prompts", None), ("encoder.dim", dim)])
        norms = np.linalg.norm(prompts.astype(np.float64), axis=1)
        worst = float(np.max(np.abs(norms - 1.0)))
        if worst > _NORM_TOL:
            raise BundleError(prompts_rel, f"rows are not L2-normalised (max |norm - 1| {worst:.3g})")
        cells = ctx.npy(cells_rel, np.int32, [("n_cells", None), ("columns (tier_a, tier_b, outcome)", 3)])
        for row, (a, b, outcome) in enumerate(cells.tolist()):
            if not (0 <= a < n_tiers and 0 <= b < n_tiers):
                raise BundleError(cells_rel, f"row {row} {(a, b, outcome)}: tier out of range [0, {n_tiers})")
            if a >= b:
                raise BundleError(cells_rel, f"row {row} {(a, b, outcome)}: tier_a must be < tier_b")
            if outcome not in (0, 1, 2):
                raise BundleError(cells_rel, f"row {row} {(a, b, outcome)}: outcome must be 0, 1 or 2")
        if len({tuple(r) for r in cells.tolist()}) != cells.shape[0]:
            raise BundleError(cells_rel, "duplicate cells")
        present = set(cells[:, 0].tolist()) | set(cells[:, 1].tolist())
        for role in ("strong_tier", "weak_tier"):  # other tiers may be absent (their rating is then 0)
            if getattr(params, role) not in present:
                raise BundleError(cells_rel, f"params.{role} {getattr(params, role)} appears in no cell")
        counts_axes = [("prompt_embeddings rows", prompts.shape[0]), ("cells rows", cells.shape[0])]
        counts = ctx.npy(counts_rel, np.float32, counts_axes)
        if (counts < 0).any():
            raise BundleError(counts_rel, "contains negative counts")
        if params.fit == "routellm" and (missing := sklearn_missing()) is not None:
            raise BundleError(MANIFEST_NAME, f"routers.{router}.params.fit 'routellm' needs {missing}")
        rated = set(ctx.manifest.tiers.values())
        sw = SWRankingRouter(
            router, prompt_embeddings=prompts, cell_counts=counts, cells=cells, params=params, rated_tiers=rated
        )
        if "CUDAExecutionProvider" in ctx.providers:
            from lmroute.kernels.gpu import cuda_available

            if cuda_available():  # the scan goes to the GPU with the encoder; Newton stays on the CPU
                sw.use_device_scan()
        return sw

    def train(self, ctx: TrainContext) -> RouterArtifacts:
        from lmroute.export.train_sw import train_sw_recipe

        cfg, train = ctx.recipe, ctx.comparisons
        rows = train.pair_mask(ctx.strong, ctx.weak).astype(np.float64) if cfg.sw_pair_only else None
        sw = train_sw_recipe(
            train, ctx.embeddings, dict(ctx.tiers), cfg, strong=ctx.strong, weak=ctx.weak, row_weights=rows
        )
        ctx.notes.update(
            n_prompts=len(sw.prompts), n_cells=int(sw.cells.shape[0]), n_same_tier_dropped=sw.n_same_tier_dropped
        )
        arrays = {"prompt_embeddings": sw.prompt_embeddings, "cell_counts": sw.cell_counts, "cells": sw.cells}
        return RouterArtifacts(kind=self.name, params=sw.params, arrays=arrays)


KIND = SWRankingKind()
