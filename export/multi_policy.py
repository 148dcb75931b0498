"""Routing among N priced models: per-model quality predictors, an expected-cost predictor, three policies.

Predictors map prompt embeddings [n, d] to a predicted quality [n, m] (one column per model); all hold
plain NumPy arrays and score with NumPy only.

* ``LinearQuality``: per model, an intercept (the model's prior: its mean quality) plus a linear term
  of the centred embedding, through the identity (ridge, clipped to [0, 1]) or the logistic link.
  ``fit_ridge`` fits every model at once in closed form; ``fit_logistic`` by Newton steps (IRLS) with an
  L2 penalty on the weights only, accepting fractional targets; ``fit_low_rank`` is ridge whose weight
  matrix is cut to its top ``rank`` directions of fitted outputs (reduced-rank regression: models
  share a few prompt factors, the matrix-factorisation idea with the prompt side fixed to a linear map).
* ``KnnQuality``: the mean quality of the ``k`` most cosine-similar training prompts, shrunk toward
  each model's prior with ``shrink`` pseudo-neighbours.
* ``ClusterQuality``: per-cluster mean quality (shrunk toward the prior) over k-means clusters of the
  training embeddings, a prompt taking its nearest centroid's row: per-task priors learned from the
  embedding, without task labels (``fit_clusters``).
* ``BlendQuality``: a weighted mean of other predictors.
``fit_smoothed_ridge`` is ridge on kNN-smoothed targets: each training prompt's quality mixed with the
mean quality of its nearest other training prompts, which damps the noise of single 0/1 labels.

``CostModel`` predicts each model's cost per prompt: its training mean, or a ridge on the embedding.

The policies (each returns one model index per prompt) are the server's, `lmroute.bundle.model_choice`,
re-exported here: (a) ``choose_max_utility``: maximise predicted quality - ``lam`` x expected cost
(``lam`` = inf: the cheapest expected model); (b) ``choose_within_margin``: the cheapest model whose
predicted quality is within ``margin`` of the best predicted; (c) ``choose_quality_floor``: the
cheapest model predicted at or above ``floor``, else the best predicted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lmroute.bundle.model_choice import choose_max_utility, choose_quality_floor, choose_within_margin

__all__ = [
    "BlendQuality",
    "ClusterQuality",
    "CostModel",
    "KnnQuality",
    "LinearQuality",
    "QualityPredictor",
    "choose_max_utility",
    "choose_quality_floor",
    "choose_within_margin",
    "fit_clusters",
    "fit_cost",
    "fit_knn",
    "fit_logistic",
    "fit_low_rank",
    "fit_ridge",
    "fit_smoothed_ridge",
]


class QualityPredictor(Protocol):
    """Anything that predicts every model's quality [n, m] from prompt embeddings [n, d]."""

    def predict(self, emb: np.ndarray) -> np.ndarray: ...


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass(frozen=True, eq=False)
class LinearQuality:
    """q[:, j] = link((emb - center) @ weights[:, j] + bias[j]); link "identity" (clipped) or "logistic"."""

    center: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    link: str

    def __post_init__(self) -> None:
        if self.link not in ("identity", "logistic"):
            raise ValueError(f"LinearQuality.link: {self.link!r} is not identity or logistic")
        d, m = self.weights.shape
        if self.center.shape != (d,) or self.bias.shape != (m,):
            raise ValueError(f"LinearQuality: center {self.center.shape} / bias {self.bias.shape} vs weights {(d, m)}")

    def predict(self, emb: np.ndarray) -> np.ndarray:
        z = (np.asarray(emb, dtype=np.float64) - self.center) @ self.weights + self.bias
        return _sigmoid(z) if self.link == "logistic" else np.clip(z, 0.0, 1.0)


@dataclass(frozen=True, eq=False)
class KnnQuality:
    """Mean quality of the ``k`` nearest training prompts by cosine, with ``shrink`` pseudo-neighbours
    at each model's prior ``prior`` [m]: (sum of the k qualities + shrink x prior) / (k + shrink)."""

    train_emb: np.ndarray
    train_quality: np.ndarray
    prior: np.ndarray
    k: int
    shrink: float

    def predict(self, emb: np.ndarray) -> np.ndarray:
        x = _unit_rows(np.asarray(emb, dtype=np.float64))
        k = min(self.k, len(self.train_emb))
        out = np.empty((len(x), self.train_quality.shape[1]))
        for start in range(0, len(x), 1024):
            sims = x[start : start + 1024] @ self.train_emb.T
            nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            total = self.train_quality[nearest].sum(axis=1)
            out[start : start + 1024] = (total + self.shrink * self.prior) / (k + self.shrink)
        return out


@dataclass(frozen=True, eq=False)
class ClusterQuality:
    """``table[c]`` [m] is the predicted quality of a prompt whose nearest (cosine) centroid is
    ``centroids[c]``."""

    centroids: np.ndarray
    table: np.ndarray

    def predict(self, emb: np.ndarray) -> np.ndarray:
        nearest = np.argmax(_unit_rows(np.asarray(emb, dtype=np.float64)) @ self.centroids.T, axis=1)
        return np.asarray(self.table[nearest])


@dataclass(frozen=True, eq=False)
class BlendQuality:
    """sum_i weights[i] x parts[i].predict(emb), weights summing to 1."""

    parts: tuple[QualityPredictor, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.parts) != len(self.weights) or not self.parts:
            raise ValueError("BlendQuality: need one weight per part, at least one part")
        if not math.isclose(sum(self.weights), 1.0, abs_tol=1e-9) or min(self.weights) < 0:
            raise ValueError(f"BlendQuality.weights: must be >= 0 and sum to 1, got {self.weights}")

    def predict(self, emb: np.ndarray) -> np.ndarray:
        return sum((w * p.predict(emb) for p, w in zip(self.parts, self.weights, strict=True)), np.zeros(1))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need embeddings [n, d] and targets [n, m] with n > 0, got {x.shape} and {y.shape}")
    return x, y


def fit_ridge(emb: np.ndarray, quality: np.ndarray, alpha: float) -> LinearQuality:
    """Per-model ridge regression of quality on the centred embedding (penalty ``alpha`` on the weights;
    the intercept is each model's mean quality)."""
    x, y = _check_xy(emb, quality)
    center, bias = x.mean(axis=0), y.mean(axis=0)
    xc = x - center
    gram = xc.T @ xc + alpha * np.eye(x.shape[1])
    weights = np.linalg.solve(gram, xc.T @ (y - bias))
    return LinearQuality(center, weights, bias, "identity")


def fit_low_rank(emb: np.ndarray, quality: np.ndarray, alpha: float, rank: int) -> LinearQuality:
    """Ridge, then its weights projected onto the top ``rank`` right singular vectors of the fitted
    outputs: every model's prediction is a mix of ``rank`` shared prompt factors."""
    full = fit_ridge(emb, quality, alpha)
    if rank >= full.weights.shape[1]:
        return full
    fitted = (np.asarray(emb, dtype=np.float64) - full.center) @ full.weights
    _, _, vt = np.linalg.svd(fitted, full_matrices=False)
    proj = vt[:rank].T @ vt[:rank]
    return LinearQuality(full.center, full.weights @ proj, full.bias, "identity")


def fit_logistic(emb: np.ndarray, quality: np.ndarray, alpha: float, *, max_iter: int = 25) -> LinearQuality:
    """Per-model L2-penalised logistic regression (penalty ``alpha`` on the weights, intercept free) by
    Newton steps; targets may be fractional (the cross-entropy of a score in [0, 1])."""
    x, y = _check_xy(emb, quality)
    center = x.mean(axis=0)
    xa = np.hstack([x - center, np.ones((len(x), 1))])
    d = x.shape[1]
    penalty = alpha * np.eye(d + 1)
    penalty[d, d] = 0.0
    weights = np.zeros((d, y.shape[1]))
    bias = np.zeros(y.shape[1])
    for j in range(y.shape[1]):
        prior = float(np.clip(y[:, j].mean(), 1e-4, 1 - 1e-4))
        w = np.zeros(d + 1)
        w[d] = math.log(prior / (1 - prior))
        for _ in range(max_iter):
            p = _sigmoid(xa @ w)
            grad = xa.T @ (p - y[:, j]) + penalty @ w
            hess = (xa * (p * (1 - p))[:, None]).T @ xa + penalty + 1e-9 * np.eye(d + 1)
            step = np.linalg.solve(hess, grad)
            w -= step
            if np.max(np.abs(step)) < 1e-6:
                break
        weights[:, j], bias[j] = w[:d], w[d]
    return LinearQuality(center, weights, bias, "logistic")


def fit_knn(emb: np.ndarray, quality: np.ndarray, k: int, shrink: float = 0.0) -> KnnQuality:
    """A kNN predictor over the training prompts (cosine on the embeddings)."""
    x, y = _check_xy(emb, quality)
    if k < 1 or shrink < 0:
        raise ValueError(f"fit_knn: need k >= 1 and shrink >= 0, got k={k}, shrink={shrink}")
    return KnnQuality(_unit_rows(x), y, y.mean(axis=0), k, float(shrink))


def _neighbour_mean(x_unit: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Per training row, the mean target of its ``k`` most similar *other* training rows."""
    k = min(k, len(x_unit) - 1)
    out = np.empty_like(y)
    for start in range(0, len(x_unit), 1024):
        sims = x_unit[start : start + 1024] @ x_unit.T
        rows = np.arange(start, min(start + 1024, len(x_unit)))
        sims[rows - start, rows] = -np.inf  # never a row's own label
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[start : start + 1024] = y[nearest].mean(axis=1)
    return out


def fit_smoothed_ridge(emb: np.ndarray, quality: np.ndarray, alpha: float, k: int, mix: float) -> LinearQuality:
    """Ridge on targets (1 - mix) x quality + mix x (mean quality of the k nearest other training prompts)."""
    x, y = _check_xy(emb, quality)
    if not 0.0 <= mix <= 1.0 or k < 1 or len(x) < 2:
        raise ValueError(f"fit_smoothed_ridge: need 0 <= mix <= 1, k >= 1, n >= 2 (mix={mix}, k={k}, n={len(x)})")
    smooth = (1.0 - mix) * y + mix * _neighbour_mean(_unit_rows(x), y, k)
    return fit_ridge(x, smooth, alpha)


def fit_clusters(
    emb: np.ndarray, quality: np.ndarray, n_clusters: int, shrink: float, *, seed: int = 0
) -> ClusterQuality:
    """Spherical k-means (cosine, 30 rounds, k-means++-style seeding from ``seed``) of the training
    embeddings; each cluster's mean quality with ``shrink`` pseudo-prompts at the overall mean."""
    x, y = _check_xy(emb, quality)
    xu = _unit_rows(x)
    rng = np.random.default_rng(seed)
    n_clusters = min(n_clusters, len(xu))
    centroids = [xu[rng.integers(len(xu))]]
    for _ in range(n_clusters - 1):
        dist = 1.0 - np.max(xu @ np.array(centroids).T, axis=1)
        p = np.maximum(dist, 0.0)
        centroids.append(xu[rng.choice(len(xu), p=p / p.sum())] if p.sum() > 0 else xu[rng.integers(len(xu))])
    cents = np.array(centroids)
    for _ in range(30):
        assign = np.argmax(xu @ cents.T, axis=1)
        for c in range(n_clusters):
            members = xu[assign == c]
            if len(members):
                cents[c] = members.sum(axis=0)
        cents = _unit_rows(cents)
    assign = np.argmax(xu @ cents.T, axis=1)
    prior = y.mean(axis=0)
    counts = np.bincount(assign, minlength=n_clusters)[:, None]
    sums = np.zeros((n_clusters, y.shape[1]))
    np.add.at(sums, assign, y)
    return ClusterQuality(cents, (sums + shrink * prior) / (counts + shrink))


@dataclass(frozen=True, eq=False)
class CostModel:
    """Expected cost [n, m] (USD) of each model's answer: ``mean`` [m] plus, when ``weights`` is given,
    a linear term of the centred embedding; never below ``floor`` [m] (the least training cost)."""

    mean: np.ndarray
    floor: np.ndarray
    center: np.ndarray | None = None
    weights: np.ndarray | None = None

    def predict(self, emb: np.ndarray) -> np.ndarray:
        n = len(emb)
        if self.weights is None or self.center is None:
            return np.broadcast_to(self.mean, (n, len(self.mean))).copy()
        z = (np.asarray(emb, dtype=np.float64) - self.center) @ self.weights + self.mean
        return np.asarray(np.maximum(z, self.floor))


def fit_cost(emb: np.ndarray, cost: np.ndarray, alpha: float | None) -> CostModel:
    """Each model's mean training cost (``alpha`` None), or a ridge of cost on the embedding."""
    x, c = _check_xy(emb, cost)
    mean, floor = c.mean(axis=0), c.min(axis=0)
    if alpha is None:
        return CostModel(mean, floor)
    center = x.mean(axis=0)
    xc = x - center
    weights = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (c - mean))
    return CostModel(mean, floor, center, weights)
