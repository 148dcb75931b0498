"""Choosing a quality predictor for N-model routing on the training part only (inner cross-validation).

The training part is cut into ``folds`` folds by a fixed hash of the prompt; every candidate predictor
is fitted on all folds but one and predicts the one left out, so every training prompt gets an
out-of-fold prediction. A candidate's score is the AIQ (``lmroute.export.multi_eval.aiq``) of the
max-utility policy swept over ``lambda_grid``, computed from those out-of-fold predictions, the true
qualities and costs of the training part, and each model's mean training cost as the expected cost.
The held-out split is never seen here. Blends of the best linear and the best local (kNN or cluster)
candidate are scored from the same out-of-fold predictions (a blend of out-of-fold predictions is the
out-of-fold prediction of the blend).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmroute.export.multi_eval import aiq, single_model_points, sweep, upper_hull
from lmroute.export.multi_policy import (
    BlendQuality,
    QualityPredictor,
    choose_max_utility,
    fit_clusters,
    fit_knn,
    fit_logistic,
    fit_low_rank,
    fit_ridge,
    fit_smoothed_ridge,
)

__all__ = [
    "Candidate",
    "InnerScore",
    "default_candidates",
    "fold_ids",
    "lambda_grid",
    "policy_aiq",
    "select_predictor",
]


@dataclass(frozen=True)
class Candidate:
    """A way to fit a quality predictor: ``family`` (ridge, logistic, low_rank, knn, smoothed_ridge,
    clusters or blend) and its settings as (name, value) pairs; a blend holds its two ``parts``
    (linear, local) and the linear part's weight ``linear_weight``."""

    family: str
    params: tuple[tuple[str, float], ...]
    parts: tuple[Candidate, ...] = ()

    @property
    def name(self) -> str:
        """``family(k=v, ...)``; a blend names its parts and their weights."""
        if self.family == "blend":
            w = dict(self.params)["linear_weight"]
            return f"blend({w:g} x {self.parts[0].name} + {1 - w:g} x {self.parts[1].name})"
        return self.family + "(" + ", ".join(f"{k}={v:g}" for k, v in self.params) + ")"

    def fit(self, emb: np.ndarray, quality: np.ndarray) -> QualityPredictor:
        """Fit this candidate on embeddings [n, d] and qualities [n, m]."""
        p = dict(self.params)
        if self.family == "ridge":
            return fit_ridge(emb, quality, p["alpha"])
        if self.family == "logistic":
            return fit_logistic(emb, quality, p["alpha"])
        if self.family == "low_rank":
            return fit_low_rank(emb, quality, p["alpha"], int(p["rank"]))
        if self.family == "knn":
            return fit_knn(emb, quality, int(p["k"]), p["shrink"])
        if self.family == "smoothed_ridge":
            return fit_smoothed_ridge(emb, quality, p["alpha"], int(p["k"]), p["mix"])
        if self.family == "clusters":
            return fit_clusters(emb, quality, int(p["n"]), p["shrink"])
        if self.family == "blend":
            w = p["linear_weight"]
            return BlendQuality(tuple(part.fit(emb, quality) for part in self.parts), (w, 1.0 - w))
        raise ValueError(f"unknown predictor family {self.family!r}")


@dataclass(frozen=True)
class InnerScore:
    """A candidate's inner cross-validation result: AIQ of its max-utility curve and Brier score."""

    name: str
    family: str
    aiq: float
    brier: float


def default_candidates() -> list[Candidate]:
    """The grid searched by default: ridge, logistic, reduced-rank ridge, kNN, ridge on kNN-smoothed
    targets and k-means cluster priors."""
    out = [Candidate("ridge", (("alpha", a),)) for a in (1.0, 3.0, 10.0, 30.0, 100.0)]
    out += [Candidate("logistic", (("alpha", a),)) for a in (1.0, 3.0, 10.0, 30.0)]
    out += [Candidate("low_rank", (("alpha", a), ("rank", r))) for a in (3.0, 10.0, 30.0) for r in (1, 2, 4)]
    out += [Candidate("knn", (("k", k), ("shrink", s))) for k in (10, 25, 50, 100) for s in (0.0, 10.0)]
    out += [
        Candidate("smoothed_ridge", (("alpha", a), ("k", k), ("mix", mix)))
        for a in (10.0, 30.0)
        for k in (10, 25)
        for mix in (0.5, 1.0)
    ]
    out += [Candidate("clusters", (("n", c), ("shrink", 10.0))) for c in (3, 8, 20, 50)]
    return out


def fold_ids(prompts: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Fold of each prompt, 0..folds-1, from sha256(seed, "fold", text): stable, repeats share a fold."""
    return np.array(
        [int.from_bytes(hashlib.sha256(f"{seed}\0fold\0{p}".encode()).digest()[:8], "little") % folds for p in prompts],
        dtype=np.int64,
    )


def lambda_grid(mean_cost: np.ndarray, n: int = 81) -> list[float]:
    """0, then ``n`` values log-spaced over 1e-3..1e3 divided by the median model's mean cost (quality
    per USD), then inf: from "best predicted quality" to "cheapest model"."""
    scale = float(np.median(mean_cost))
    if not scale > 0:
        raise ValueError("lambda_grid: the median mean cost must be > 0")
    return [0.0, *(float(v) / scale for v in np.logspace(-3, 3, n)), math.inf]


def policy_aiq(
    quality: np.ndarray, cost: np.ndarray, q_hat: np.ndarray, c_hat: np.ndarray, lams: Sequence[float]
) -> float:
    """AIQ of the max-utility policy swept over ``lams``, over the single models' cost range."""
    singles = single_model_points(quality, cost)
    points = sweep(quality, cost, lambda lam: choose_max_utility(q_hat, c_hat, lam), lams)
    hull = upper_hull(np.array([(p.cost, p.quality) for p in points]))
    return aiq(hull, float(singles[:, 0].min()), float(singles[:, 0].max()))


def _score(
    name: str, family: str, quality: np.ndarray, cost: np.ndarray, oof: np.ndarray, lams: list[float]
) -> InnerScore:
    mean_cost = cost.mean(axis=0)
    return InnerScore(
        name, family, policy_aiq(quality, cost, oof, mean_cost, lams), float(np.mean((oof - quality) ** 2))
    )


def select_predictor(
    emb: np.ndarray,
    quality: np.ndarray,
    cost: np.ndarray,
    prompts: Sequence[str],
    *,
    candidates: Sequence[Candidate] | None = None,
    folds: int = 5,
    seed: int = 0,
    blend_weights: Sequence[float] = (0.25, 0.5, 0.75),
) -> tuple[Candidate, list[InnerScore]]:
    """The candidate with the highest inner-CV AIQ (ties: the earlier one), and every candidate's score
    (blends of the best linear and the best local candidate included), best first."""
    cands = list(default_candidates() if candidates is None else candidates)
    fold = fold_ids(prompts, folds, seed)
    lams = lambda_grid(cost.mean(axis=0))
    oof: dict[str, np.ndarray] = {}
    scores: list[InnerScore] = []
    by_name: dict[str, Candidate] = {}
    for cand in cands:
        pred = np.empty_like(quality)
        for f in range(folds):
            test = fold == f
            pred[test] = cand.fit(emb[~test], quality[~test]).predict(emb[test])
        oof[cand.name], by_name[cand.name] = pred, cand
        scores.append(_score(cand.name, cand.family, quality, cost, pred, lams))
    linear = [s for s in scores if s.family in ("ridge", "logistic", "low_rank", "smoothed_ridge")]
    local = [s for s in scores if s.family in ("knn", "clusters")]
    if linear and local:
        lin_best = max(linear, key=lambda s: s.aiq)
        local_best = max(local, key=lambda s: s.aiq)
        a, b = by_name[lin_best.name], by_name[local_best.name]
        for w in blend_weights:
            blend = Candidate("blend", (("linear_weight", w),), (a, b))
            pred = w * oof[a.name] + (1 - w) * oof[b.name]
            by_name[blend.name] = blend
            scores.append(_score(blend.name, "blend", quality, cost, pred, lams))
    best = max(scores, key=lambda s: s.aiq)
    return by_name[best.name], sorted(scores, key=lambda s: -s.aiq)
