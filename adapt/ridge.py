"""Weighted ridge regression and k-fold cross-validation of its penalty (pure NumPy), the fitting core of
every in-domain learner (`lmroute.adapt.learners`).

The design matrix is [embedding | log_length]; the intercept is not penalised (the columns are centred on
the weighted means first). A penalty is chosen by k-fold cross-validation on the outcomes given, and only
on them: the criterion is the out-of-fold weighted correlation between the prediction and the target (what
a router needs is the order of the prompts, not the level of the prediction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["RidgeFit", "cv_penalty", "design", "fit_ridge", "fit_ridge_path", "fold_ids", "out_of_fold"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class RidgeFit:
    """coef [p] on the design's columns and the intercept."""

    coef: FloatArray
    intercept: float

    def predict(self, x: npt.ArrayLike) -> FloatArray:
        out: FloatArray = np.asarray(x, dtype=np.float64) @ self.coef + self.intercept
        return out


def design(embeddings: npt.ArrayLike, lengths: npt.ArrayLike) -> FloatArray:
    """[embedding | log_length] as float64 [n, dim + 1]; raises naming the input whose shape is wrong."""
    emb = np.asarray(embeddings, dtype=np.float64)
    length = np.asarray(lengths, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings: expected [n, dim], got shape {emb.shape}")
    if length.shape != (emb.shape[0],):
        raise ValueError(f"lengths: expected shape ({emb.shape[0]},), got {length.shape}")
    if not (np.isfinite(emb).all() and np.isfinite(length).all()):
        raise ValueError("embeddings / lengths: contain NaN or inf")
    return np.hstack([emb, length[:, None]])


def fit_ridge(x: FloatArray, y: FloatArray, penalty: float | FloatArray, weights: FloatArray | None = None) -> RidgeFit:
    """argmin sum_i w_i (y_i - x_i b - c)^2 + sum_j penalty_j b_j^2 (intercept c unpenalised); `penalty`
    is one number for every column or one per column."""
    return fit_ridge_path(x, y, [penalty], weights)[0]


def fit_ridge_path(
    x: FloatArray, y: FloatArray, penalties: Sequence[float | FloatArray], weights: FloatArray | None = None
) -> list[RidgeFit]:
    """`fit_ridge` at each of `penalties` (a number or one per column each), sharing one Gram matrix."""
    n, p = x.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    if n == 0 or total <= 0:
        raise ValueError("fit_ridge: no rows with positive weight")
    mx = (w @ x) / total
    my = float(w @ y) / total
    xc = x - mx
    xw = xc * w[:, None]
    gram = xc.T @ xw
    rhs = xw.T @ (y - my)
    fits = []
    for penalty in penalties:
        a = gram.copy()
        a[np.diag_indices(p)] += np.broadcast_to(np.asarray(penalty, dtype=np.float64), (p,))
        coef: FloatArray = np.asarray(np.linalg.solve(a, rhs), dtype=np.float64)
        fits.append(RidgeFit(coef=coef, intercept=my - float(mx @ coef)))
    return fits


def fold_ids(n: int, k: int, seed: int) -> npt.NDArray[np.int64]:
    """A balanced random assignment of n rows to k folds (seeded)."""
    folds = np.arange(n, dtype=np.int64) % k
    np.random.default_rng(seed).shuffle(folds)
    return folds


def _weighted_corr(a: FloatArray, b: FloatArray, w: FloatArray) -> float:
    w = w / w.sum()
    ac, bc = a - w @ a, b - w @ b
    den = float(np.sqrt((w @ (ac * ac)) * (w @ (bc * bc))))
    return float(w @ (ac * bc)) / den if den > 0 else 0.0


def out_of_fold(
    x: FloatArray, y: FloatArray, penalty: float, folds: npt.NDArray[np.int64], weights: FloatArray | None = None
) -> FloatArray:
    """Predictions for each row from a ridge fitted on the other folds."""
    pred = np.empty(len(y))
    for f in np.unique(folds):
        test = folds == f
        train = ~test
        fit = fit_ridge(x[train], y[train], penalty, None if weights is None else weights[train])
        pred[test] = fit.predict(x[test])
    return pred


def cv_penalty(
    x: FloatArray,
    y: FloatArray,
    penalties: Sequence[float],
    *,
    folds: int = 5,
    seed: int = 0,
    weights: FloatArray | None = None,
) -> tuple[float, dict[float, float]]:
    """The penalty of `penalties` with the best out-of-fold weighted correlation, and every score.
    Fewer than 2 * folds rows: the middle penalty, unscored (too few outcomes to compare)."""
    if not penalties:
        raise ValueError("cv_penalty: no penalties to choose from")
    ordered = sorted(float(p) for p in penalties)
    n = len(y)
    if n < 2 * folds or float(np.std(y)) == 0.0:
        return ordered[len(ordered) // 2], {}
    ids = fold_ids(n, folds, seed)
    w = np.ones(n) if weights is None else weights
    scores = {p: _weighted_corr(out_of_fold(x, y, p, ids, weights), y, w) for p in ordered}
    best = max(ordered, key=lambda p: (scores[p], p))  # ties: the larger penalty
    return best, scores
