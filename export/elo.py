"""Global model ratings and tiers: Bradley-Terry-with-ties Elo over all comparisons, optimal 1-D tiers.

`compute_elo` fits one rating per model by the (weighted) Bradley-Terry maximum likelihood with ties
(a tie = half a win each way, as RouteLLM's `compute_elo_mle_with_tie`), solved exactly by
`lmroute.kernels.reference.bt_ratings_from_cells`, and reports it on RouteLLM's Elo scale
(Elo = INIT + SCALE * R / ln(BASE), R in natural log-odds). `segment_tiers` splits the sorted ratings
into tiers of minimum total within-tier sum of squares (exact dynamic programme); tier 0 is the
weakest. `format_elo_table` renders the table as Markdown.

Label kinds and sources can be weighted: the AlpacaEval judge's length bias lifts small fine-tuned
models above GPT-4 when every label counts the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lmroute.export.data import LABEL_KINDS
from lmroute.kernels.reference import bt_ratings_from_cells

__all__ = [
    "BASE",
    "INIT",
    "SCALE",
    "EloTable",
    "aggregate_cells",
    "comparison_weights",
    "compute_elo",
    "format_elo_table",
    "segment_tiers",
]

SCALE = 400.0
BASE = 10.0
INIT = 1000.0


@dataclass(frozen=True)
class EloTable:
    """Global ratings: `elo[i]` (Elo scale) and `log_odds[i]` (natural, sum 0) of `models[i]`;
    `n_comparisons[i]` counts the non-self comparisons the model took part in (0: rating INIT)."""

    models: tuple[str, ...]
    elo: NDArray[np.float64]
    log_odds: NDArray[np.float64]
    n_comparisons: NDArray[np.int64]

    def as_dict(self, *, min_comparisons: int = 1) -> dict[str, float]:
        """{model: Elo} for the models with at least `min_comparisons` comparisons."""
        return {
            m: float(e)
            for m, e, n in zip(self.models, self.elo, self.n_comparisons, strict=True)
            if n >= min_comparisons
        }


def comparison_weights(
    comparisons: Any,
    *,
    label_weights: Mapping[str, float] | None = None,
    source_weights: Mapping[str, float] | None = None,
) -> NDArray[np.float64]:
    """Per-comparison weight [n] = label_weights[kind] * source_weights[source] (missing keys: 1).

    Keys of label_weights are LABEL_KINDS names; keys of source_weights are `comparisons.sources`.
    """
    n = len(comparisons.outcome)
    weights = np.ones(n, dtype=np.float64)
    if label_weights:
        unknown = set(label_weights) - set(LABEL_KINDS)
        if unknown:
            raise ValueError(f"label_weights has unknown label kinds {sorted(unknown)}; know {LABEL_KINDS}")
        table = np.array([float(label_weights.get(k, 1.0)) for k in LABEL_KINDS])
        weights *= table[np.asarray(comparisons.label_kind, dtype=np.int64)]
    if source_weights:
        unknown = set(source_weights) - set(comparisons.sources)
        if unknown:
            raise ValueError(f"source_weights has unknown sources {sorted(unknown)}")
        table = np.array([float(source_weights.get(s, 1.0)) for s in comparisons.sources])
        weights *= table[np.asarray(comparisons.source, dtype=np.int64)]
    if np.any(weights < 0.0) or not np.all(np.isfinite(weights)):
        raise ValueError("comparison weights must be finite and >= 0")
    return weights


def compute_elo(
    comparisons: Any,
    *,
    label_weights: Mapping[str, float] | None = None,
    source_weights: Mapping[str, float] | None = None,
    exclude_models: Sequence[str] = (),
) -> EloTable:
    """Global BT-with-ties MLE ratings of every model in `comparisons.models` (weights optional).

    Self-battles and comparisons involving `exclude_models` are ignored; excluded models and models
    without comparisons get rating INIT and n_comparisons 0.
    """
    models = tuple(comparisons.models)
    unknown = set(exclude_models) - set(models)
    if unknown:
        raise ValueError(f"exclude_models names models not in the table: {sorted(unknown)}")
    a = np.asarray(comparisons.model_a, dtype=np.int64)
    b = np.asarray(comparisons.model_b, dtype=np.int64)
    outcome = np.asarray(comparisons.outcome, dtype=np.int64)
    weights = comparison_weights(comparisons, label_weights=label_weights, source_weights=source_weights)
    excluded = np.zeros(len(models), dtype=bool)
    excluded[[models.index(m) for m in exclude_models]] = True
    keep = (a != b) & ~excluded[a] & ~excluded[b] & (weights > 0.0)
    cells, cell_weights = aggregate_cells(a[keep], b[keep], outcome[keep], weights[keep])
    log_odds = bt_ratings_from_cells(cells, cell_weights, len(models))
    n_comp = np.bincount(a[keep], minlength=len(models)) + np.bincount(b[keep], minlength=len(models))
    elo = INIT + SCALE * log_odds / math.log(BASE)
    return EloTable(models=models, elo=elo, log_odds=log_odds, n_comparisons=n_comp.astype(np.int64))


def aggregate_cells(
    a: NDArray[np.integer],
    b: NDArray[np.integer],
    outcome: NDArray[np.integer],
    weights: NDArray[np.floating],
) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
    """Sum row weights into cells (lo, hi, outcome) with lo < hi (sides swapped, outcome flipped).

    Rows with a == b are rejected. Returns (cells int32 [c, 3] sorted, summed weights float64 [c]).
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    outcome = np.asarray(outcome, dtype=np.int64)
    if np.any(a == b):
        raise ValueError("aggregate_cells got rows with model_a == model_b")
    swap = a > b
    lo = np.where(swap, b, a)
    hi = np.where(swap, a, b)
    out = np.where(swap & (outcome < 2), 1 - outcome, outcome)
    if lo.size == 0:
        return np.zeros((0, 3), dtype=np.int32), np.zeros(0, dtype=np.float64)
    keys = np.stack([lo, hi, out], axis=1)
    cells, inverse = np.unique(keys, axis=0, return_inverse=True)
    summed = np.bincount(inverse.ravel(), np.asarray(weights, dtype=np.float64), minlength=len(cells))
    return cells.astype(np.int32), summed


def segment_tiers(ratings: Mapping[str, float], n_tiers: int = 10) -> dict[str, int]:
    """Optimal 1-D segmentation of the sorted ratings into exactly `n_tiers` contiguous tiers.

    Minimises the total within-tier sum of squared deviations (exact DP, O(n_tiers * n^2)).
    Tier 0 holds the weakest models. Needs at least `n_tiers` models.
    """
    if n_tiers < 1:
        raise ValueError(f"n_tiers must be >= 1, got {n_tiers}")
    names = sorted(ratings, key=lambda m: (ratings[m], m))
    n = len(names)
    if n < n_tiers:
        raise ValueError(f"segment_tiers needs at least n_tiers={n_tiers} models, got {n}")
    x = np.array([float(ratings[m]) for m in names], dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("segment_tiers got a non-finite rating")
    s1 = np.concatenate([[0.0], np.cumsum(x)])
    s2 = np.concatenate([[0.0], np.cumsum(x * x)])

    def sse(i: int, j: int) -> float:  # within-segment sum of squares of x[i:j]
        total = s1[j] - s1[i]
        return max(float(s2[j] - s2[i] - total * total / (j - i)), 0.0)

    inf = math.inf
    cost = np.full((n_tiers + 1, n + 1), inf)
    cut = np.zeros((n_tiers + 1, n + 1), dtype=np.int64)
    cost[0, 0] = 0.0
    for k in range(1, n_tiers + 1):
        for j in range(k, n - (n_tiers - k) + 1):
            best, arg = inf, k - 1
            for i in range(k - 1, j):
                c = cost[k - 1, i] + sse(i, j)
                if c < best:
                    best, arg = c, i
            cost[k, j], cut[k, j] = best, arg
    tiers: dict[str, int] = {}
    j = n
    for k in range(n_tiers, 0, -1):
        i = int(cut[k, j])
        for m in names[i:j]:
            tiers[m] = k - 1
        j = i
    return tiers


def format_elo_table(table: EloTable, tiers: Mapping[str, int] | None = None) -> str:
    """Markdown table of the models with comparisons, strongest first: rank, model, Elo, tier, n."""
    rows = [
        (m, float(e), int(n)) for m, e, n in zip(table.models, table.elo, table.n_comparisons, strict=True) if n > 0
    ]
    rows.sort(key=lambda r: (-r[1], r[0]))
    lines = ["| rank | model | Elo | tier | comparisons |", "|---:|---|---:|---:|---:|"]
    for rank, (m, e, n) in enumerate(rows, start=1):
        tier = "" if tiers is None or m not in tiers else str(tiers[m])
        lines.append(f"| {rank} | {m} | {e:.1f} | {tier} | {n} |")
    return "\n".join(lines) + "\n"
