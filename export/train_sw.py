"""Training of the sw_ranking router: per-prompt tier-cell counts (what the bundle ships).

The similarity-weighted Bradley-Terry likelihood depends on the training rows only through the
summed weights of each (tier_a, tier_b, outcome) cell, and the weight depends only on the prompt. So
training is bookkeeping: relabel every comparison with tiers (tier_a < tier_b after swapping sides
and flipping the outcome), drop same-tier battles (R_t - R_t = 0: their likelihood terms are
constant, they carry no information in a model without intercept), and count per unique prompt how
many comparisons fall in each cell. Scoring is `lmroute.kernels.reference.sw_scores`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lmroute.export.elo import comparison_weights
from lmroute.export.recipe import SHIPPED, Recipe

__all__ = ["SWRankingArtifacts", "train_sw_ranking", "train_sw_recipe"]


@dataclass(frozen=True)
class SWRankingArtifacts:
    """What the sw_ranking router ships.

    prompt_embeddings float32 [n_prompts, d] (L2-normalised, unique prompts that carry >= 1 counted
    comparison, in first-seen order of `comparisons.prompts`); prompts: their texts; cells int32
    [n_cells, 3] = (tier_a, tier_b, outcome), tier_a < tier_b, sorted; cell_counts float32
    [n_prompts, n_cells] (weighted counts, plain counts when no weights were given); params: the
    manifest params; n_same_tier_dropped: comparisons dropped because both models share a tier.
    """

    prompt_embeddings: NDArray[np.float32]
    prompts: tuple[str, ...]
    cells: NDArray[np.int32]
    cell_counts: NDArray[np.float32]
    params: dict[str, float | int]
    n_same_tier_dropped: int


def train_sw_ranking(
    comparisons: Any,
    prompt_emb: NDArray[np.floating],
    tiers: Mapping[str, int],
    *,
    n_tiers: int,
    strong: str,
    weak: str,
    gamma: float = SHIPPED.gamma,
    label_weights: Mapping[str, float] | None = None,
    source_weights: Mapping[str, float] | None = None,
    row_weights: NDArray[np.floating] | None = None,
    drop_unknown_models: bool = False,
) -> SWRankingArtifacts:
    """Build the sw_ranking artifacts from a Comparisons table and its prompt embeddings.

    prompt_emb: float32 [len(comparisons.prompts), d], L2-normalised, aligned with `prompts`.
    tiers: {model: tier} with tiers in 0..n_tiers-1; a model of a comparison missing from `tiers` is
    an error unless `drop_unknown_models`. Self-battles are dropped. Optional label-kind / source
    weights multiply each comparison's count, and so do `row_weights` (per comparison, >= 0). gamma
    (stored in the params; scoring reads it): default the shipped recipe's (`Recipe.gamma`).
    """
    emb = np.asarray(prompt_emb, dtype=np.float32)
    n_prompts_in = len(comparisons.prompts)
    if emb.ndim != 2 or emb.shape[0] != n_prompts_in:
        raise ValueError(f"prompt_emb must have shape [{n_prompts_in}, d] (one row per prompt), got {emb.shape}")
    if not np.all(np.isfinite(emb)):
        raise ValueError("prompt_emb contains NaN or inf")
    bad_tier = {m: t for m, t in tiers.items() if not 0 <= int(t) < n_tiers}
    if bad_tier:
        raise ValueError(f"tiers outside 0..{n_tiers - 1}: {bad_tier}")
    for role, name in (("strong", strong), ("weak", weak)):
        if name not in tiers:
            raise ValueError(f"{role} model {name!r} has no tier")
    if tiers[strong] == tiers[weak]:
        raise ValueError(f"strong {strong!r} and weak {weak!r} share tier {tiers[strong]}")

    models = tuple(comparisons.models)
    tier_of = np.array([int(tiers.get(m, -1)) for m in models], dtype=np.int64)
    a = np.asarray(comparisons.model_a, dtype=np.int64)
    b = np.asarray(comparisons.model_b, dtype=np.int64)
    outcome = np.asarray(comparisons.outcome, dtype=np.int64)
    prompt_idx = np.asarray(comparisons.prompt_idx, dtype=np.int64)
    weights = comparison_weights(comparisons, label_weights=label_weights, source_weights=source_weights)
    if row_weights is not None:
        extra = np.asarray(row_weights, dtype=np.float64)
        if extra.shape != weights.shape:
            raise ValueError(f"row_weights must have shape {weights.shape}, got {extra.shape}")
        if not np.all(np.isfinite(extra)) or np.any(extra < 0.0):
            raise ValueError("row_weights must be finite and >= 0")
        weights = weights * extra
    known = (tier_of[a] >= 0) & (tier_of[b] >= 0)
    if not drop_unknown_models and not np.all(known):
        missing = sorted({models[i] for i in np.concatenate([a[~known], b[~known]]) if tier_of[i] < 0})
        raise ValueError(f"models without a tier: {missing} (pass drop_unknown_models=True to drop them)")
    ta, tb = tier_of[a], tier_of[b]
    keep = known & (a != b) & (weights > 0.0)
    same_tier = keep & (ta == tb)
    keep &= ~same_tier

    swap = ta > tb
    lo = np.where(swap, tb, ta)[keep]
    hi = np.where(swap, ta, tb)[keep]
    out = np.where(swap & (outcome < 2), 1 - outcome, outcome)[keep]
    if lo.size == 0:
        raise ValueError("no comparison between two different tiers is left to train on")
    cells, cell_of_row = np.unique(np.stack([lo, hi, out], axis=1), axis=0, return_inverse=True)
    cell_of_row = cell_of_row.ravel()

    # unique prompts (by text), first-seen order, only those carrying a counted comparison
    first_of_text: dict[str, int] = {}
    canon = np.empty(n_prompts_in, dtype=np.int64)
    for i, text in enumerate(comparisons.prompts):
        canon[i] = first_of_text.setdefault(text, i)
    row_prompt = canon[prompt_idx[keep]]
    used = np.unique(row_prompt)
    slot = np.full(n_prompts_in, -1, dtype=np.int64)
    slot[used] = np.arange(used.size)
    counts = np.zeros((used.size, cells.shape[0]), dtype=np.float64)
    np.add.at(counts, (slot[row_prompt], cell_of_row), weights[keep])

    params: dict[str, float | int] = {
        "gamma": float(gamma),
        "n_tiers": int(n_tiers),
        "strong_tier": int(tiers[strong]),
        "weak_tier": int(tiers[weak]),
        "scale": 400,
        "base": 10,
    }
    return SWRankingArtifacts(
        prompt_embeddings=np.ascontiguousarray(emb[used]),
        prompts=tuple(comparisons.prompts[i] for i in used),
        cells=cells.astype(np.int32),
        cell_counts=counts.astype(np.float32),
        params=params,
        n_same_tier_dropped=int(same_tier.sum()),
    )


def train_sw_recipe(
    comparisons: Any,
    prompt_emb: NDArray[np.floating],
    tiers: Mapping[str, int],
    recipe: Recipe,
    *,
    strong: str,
    weak: str,
    row_weights: NDArray[np.floating] | None,
) -> SWRankingArtifacts:
    """`train_sw_ranking` with the knobs of `recipe`, over every tier of `tiers`, dropping the rows of
    models without a tier (the build's router kind and the validation harness train through this)."""
    return train_sw_ranking(
        comparisons,
        prompt_emb,
        tiers,
        n_tiers=max(tiers.values()) + 1,
        strong=strong,
        weak=weak,
        gamma=recipe.gamma,
        label_weights=dict(recipe.label_weights),
        row_weights=row_weights,
        drop_unknown_models=True,
    )
