"""The in-domain learners (pure NumPy): arrays of outcomes in, a `Head` out.

- `fit_paired`: both models' quality on each judged prompt -> ridge regression of the gap (strong - weak,
  in [-1, 1]) on [embedding | log_length], its penalty chosen by 5-fold cross-validation on the outcomes.
- `fit_single`: one model's quality per prompt, with the probability the logging policy gave the model it
  chose -> the doubly robust learner: per-model outcome ridges weighted by 1 / propensity (cross-fitted),
  the doubly robust pseudo-outcome of the gap per prompt, and a ridge of that pseudo-outcome (the head).
  `method="direct"` returns the difference of the two outcome ridges instead (no off-policy correction).
- `choose_blend_n0`: the constant n0 of the blend weight n / (n + n0) that orders the outcomes best out
  of fold (`lmroute.adapt.head.blend_weight`).

Only the outcomes given are used for any choice (the adaptation protocol: the stream half).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from lmroute.adapt.head import BaseStandardisation, Head, base_logits, robust_center_scale
from lmroute.adapt.ranking import gain_area
from lmroute.adapt.ridge import cv_penalty, design, fit_ridge, fold_ids, out_of_fold

__all__ = [
    "DEFAULT_N0_GRID",
    "DEFAULT_PENALTIES",
    "choose_blend_n0",
    "dr_pseudo_gap",
    "fit_paired",
    "fit_single",
    "held_out_dr_gain",
]

FloatArray = npt.NDArray[np.float64]
DEFAULT_PENALTIES: tuple[float, ...] = (3.0, 10.0, 30.0, 100.0, 300.0)
DEFAULT_N0_GRID: tuple[float, ...] = (0.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
MAX_INVERSE_PROPENSITY = 20.0  # importance weights are clipped here (variance over a small bias)


def _vector(name: str, values: npt.ArrayLike, n: int, lo: float, hi: float) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf")
    bad = np.flatnonzero((arr < lo) | (arr > hi))
    if bad.size:
        raise ValueError(f"{name}[{int(bad[0])}]: {arr[bad[0]]} outside [{lo}, {hi}]")
    return arr


def _head(x: FloatArray, target: FloatArray, penalty: float, learner: str, settings: dict[str, float]) -> Head:
    fit = fit_ridge(x, target, penalty)
    center, scale = robust_center_scale(fit.predict(x))
    return Head(
        weights=fit.coef[:-1],
        length_weight=float(fit.coef[-1]),
        bias=fit.intercept,
        center=center,
        scale=scale,
        learner=learner,
        settings=settings,
    )


def fit_paired(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    gap: npt.ArrayLike,
    *,
    penalties: Sequence[float] = DEFAULT_PENALTIES,
    folds: int = 5,
    seed: int = 0,
) -> Head:
    """Ridge of the quality gap (strong - weak, in [-1, 1]) on [embedding | log_length]; the penalty is
    chosen from `penalties` by `folds`-fold cross-validation on these outcomes."""
    x = design(embeddings, lengths)
    y = _vector("gap", gap, x.shape[0], -1.0, 1.0)
    if x.shape[0] < 2:
        raise ValueError(f"fit_paired: needs at least 2 outcomes, got {x.shape[0]}")
    penalty, scores = cv_penalty(x, y, penalties, folds=folds, seed=seed)
    settings = {"penalty": penalty, "n_outcomes": float(len(y)), "cv_corr": scores.get(penalty, float("nan"))}
    return _head(x, y, penalty, "paired_ridge", {k: v for k, v in settings.items() if np.isfinite(v)})


def dr_pseudo_gap(
    x: FloatArray,
    chose_strong: npt.NDArray[np.bool_],
    quality: FloatArray,
    propensity: FloatArray,
    *,
    penalties: Sequence[float] = DEFAULT_PENALTIES,
    folds: int = 5,
    seed: int = 0,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(doubly robust pseudo-outcome of the gap, cross-fitted strong outcome, cross-fitted weak outcome)
    per event: gap_dr = m_s - m_w + [a = s] (q - m_s) / p - [a = w] (q - m_w) / p, where m_a is a ridge
    of quality on the events that model a answered, weighted by 1 / p (clipped at MAX_INVERSE_PROPENSITY),
    fitted on the other folds. E[gap_dr | x] = the true gap when either m or p is right."""
    n = len(quality)
    inv = np.minimum(1.0 / propensity, MAX_INVERSE_PROPENSITY)
    ids = fold_ids(n, folds, seed)
    means = {}
    for arm, mask in (("strong", chose_strong), ("weak", ~chose_strong)):
        rows = np.flatnonzero(mask)
        m = np.full(n, float(quality[rows].mean()) if rows.size else 0.5)
        if rows.size >= 2:
            penalty, _ = cv_penalty(x[rows], quality[rows], penalties, folds=folds, seed=seed, weights=inv[rows])
            if n < 2 * folds:  # too few to cross-fit
                m = fit_ridge(x[rows], quality[rows], penalty, inv[rows]).predict(x)
            for f in range(folds if n >= 2 * folds else 0):
                train = rows[ids[rows] != f]
                if train.size >= 2:
                    m[ids == f] = fit_ridge(x[train], quality[train], penalty, inv[train]).predict(x[ids == f])
        means[arm] = np.clip(m, 0.0, 1.0)
    m_s, m_w = means["strong"], means["weak"]
    resid = np.where(chose_strong, quality - m_s, -(quality - m_w))
    return m_s - m_w + inv * resid, m_s, m_w


def fit_single(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    chose_strong: npt.ArrayLike,
    quality: npt.ArrayLike,
    propensity: npt.ArrayLike,
    *,
    method: str = "dr",
    penalties: Sequence[float] = DEFAULT_PENALTIES,
    folds: int = 5,
    seed: int = 0,
) -> Head:
    """The head from single outcomes: `quality[i]` in [0, 1] of the model the logging policy chose
    (`chose_strong[i]`), chosen with probability `propensity[i]` in (0, 1]. method "dr": ridge of the
    doubly robust pseudo-gap (`dr_pseudo_gap`); "direct": difference of the two weighted outcome ridges."""
    x = design(embeddings, lengths)
    n = x.shape[0]
    arm = np.asarray(chose_strong)
    if arm.shape != (n,) or arm.dtype != np.bool_:
        raise ValueError(f"chose_strong: expected bool of shape ({n},), got {arm.dtype} {arm.shape}")
    q = _vector("quality", quality, n, 0.0, 1.0)
    p = _vector("propensity", propensity, n, 0.0, 1.0)
    if (p <= 0).any():
        raise ValueError(f"propensity[{int(np.argmin(p))}]: must be > 0 (the chosen model's probability)")
    if n < 2 or arm.all() or not arm.any():
        raise ValueError("fit_single: needs outcomes of both models")
    inv = np.minimum(1.0 / p, MAX_INVERSE_PROPENSITY)
    if method == "direct":
        coefs, settings = [], {"n_outcomes": float(n)}
        for name, mask in (("strong", arm), ("weak", ~arm)):
            penalty, _ = cv_penalty(x[mask], q[mask], penalties, folds=folds, seed=seed, weights=inv[mask])
            coefs.append(fit_ridge(x[mask], q[mask], penalty, inv[mask]))
            settings[f"penalty_{name}"] = penalty
        coef = coefs[0].coef - coefs[1].coef
        intercept = coefs[0].intercept - coefs[1].intercept
        center, scale = robust_center_scale(x @ coef + intercept)
        return Head(coef[:-1], float(coef[-1]), intercept, center, scale, "single_direct", settings)
    if method != "dr":
        raise ValueError(f"fit_single: unknown method {method!r} (known: dr, direct)")
    pseudo, _, _ = dr_pseudo_gap(x, arm, q, p, penalties=penalties, folds=folds, seed=seed)
    penalty, _ = cv_penalty(x, pseudo, penalties, folds=folds, seed=seed)
    settings = {"penalty": penalty, "n_outcomes": float(n), "max_inverse_propensity": MAX_INVERSE_PROPENSITY}
    return _head(x, pseudo, penalty, "single_dr", settings)


def choose_blend_n0(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    gain: npt.ArrayLike,
    base_scores: npt.ArrayLike,
    penalty: float,
    *,
    grid: Sequence[float] = DEFAULT_N0_GRID,
    folds: int = 5,
    seed: int = 0,
) -> tuple[float, dict[float, float]]:
    """n0 of `grid` whose blend (head fitted out of fold at `penalty`, weight n_train / (n_train + n0))
    orders the prompts best by `gain_area` of `gain` (the paired gap, or a doubly robust pseudo-gap);
    ties go to the larger n0 (more weight on the shipped router). Fewer than 2 * folds outcomes: the
    largest n0 of the grid."""
    x = design(embeddings, lengths)
    g = np.asarray(gain, dtype=np.float64)
    n = len(g)
    if n < 2 * folds:
        return max(grid), {}
    ids = fold_ids(n, folds, seed)
    raw = out_of_fold(x, g, penalty, ids)
    center, scale = robust_center_scale(raw)
    z_head = (raw - center) / scale
    base = BaseStandardisation.of(base_scores)
    z_base = (base_logits(base_scores) - base.center) / base.scale
    n_train = n * (folds - 1) / folds
    scores = {}
    for n0 in sorted(float(v) for v in grid):
        w = n_train / (n_train + n0) if n_train + n0 > 0 else 1.0
        scores[n0] = gain_area(w * z_head + (1.0 - w) * z_base, g)
    best = max(scores, key=lambda k: (scores[k], k))
    return best, scores


def held_out_dr_gain(
    train: tuple[FloatArray, npt.NDArray[np.bool_], FloatArray, FloatArray],
    held: tuple[FloatArray, npt.NDArray[np.bool_], FloatArray, FloatArray],
    *,
    penalties: Sequence[float] = DEFAULT_PENALTIES,
    folds: int = 5,
    seed: int = 0,
) -> FloatArray:
    """The doubly robust pseudo-gap of held-out events, (x, chose_strong, quality, propensity) each, with
    the outcome ridges fitted on the training events only (so the gate's estimate does not reuse the
    outcomes it judges)."""
    x_t, arm_t, q_t, p_t = train
    x_h, arm_h, q_h, p_h = held
    inv_t = np.minimum(1.0 / p_t, MAX_INVERSE_PROPENSITY)
    means = []
    for mask in (arm_t, ~arm_t):
        rows = np.flatnonzero(mask)
        if rows.size < 2:
            means.append(np.full(len(q_h), float(q_t[rows].mean()) if rows.size else 0.5))
            continue
        penalty, _ = cv_penalty(x_t[rows], q_t[rows], penalties, folds=folds, seed=seed, weights=inv_t[rows])
        means.append(np.clip(fit_ridge(x_t[rows], q_t[rows], penalty, inv_t[rows]).predict(x_h), 0.0, 1.0))
    m_s, m_w = means
    inv_h = np.minimum(1.0 / p_h, MAX_INVERSE_PROPENSITY)
    resid = np.where(arm_h, q_h - m_s, -(q_h - m_w))
    out: FloatArray = m_s - m_w + inv_h * resid
    return out
