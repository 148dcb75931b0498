"""The in-domain learners (pure NumPy): arrays of outcomes in, a `Head` out.

- `fit_paired`: both models' quality on each judged prompt -> a model of the gap (strong - weak, in
  [-1, 1]): by default kernel ridge on the embedding with a linear log_length term
  (`lmroute.adapt.kernel_ridge`, served by the `adapted_kernel` kind); `learner="ridge"`: ridge regression
  on [embedding | log_length], its penalty chosen by 5-fold cross-validation on the outcomes (`adapted`).
  `paired_out_of_fold`: the same learner's out-of-fold predictions (what the blend's n0 is chosen on).
- `fit_single`: one model's quality per prompt, with the probability the logging policy gave the model it
  chose. Default `method="shared"` (`fit_shared`): one ridge of quality on [x | s x | s] over every event
  (s = +1 strong answered, -1 weak), the shared part f (how hard the prompt is for both) learning from
  every event and the gap part carrying its own larger penalty (n / 16); the head is the gap part.
  `method="dr"`: per-model outcome ridges weighted by 1 / propensity (cross-fitted), the doubly robust
  pseudo-outcome of the gap per prompt, and a ridge of that pseudo-outcome. `method="direct"`: the
  difference of the two weighted outcome ridges. On a validation split of the MMLU stream half (5,000
  events routed by the default `mf` with exploration, APGR on the other 2,021 stream prompts, 5 seeds) the
  shared learner measured 0.621 +- 0.013, the doubly robust 0.585 +- 0.050, the direct 0.593 +- 0.042.
- `choose_blend_n0`: the constant n0 of the blend weight n / (n + n0) that orders the outcomes best out
  of fold, bagged over bootstrap resamples (`lmroute.adapt.head.blend_weight`).

Only the outcomes given are used for any choice (the adaptation protocol: the stream half).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lmroute.adapt.head import BaseStandardisation, Head, base_logits, robust_center_scale
from lmroute.adapt.kernel_ridge import DEFAULT_KERNEL, KernelSettings, fit_kernel_ridge
from lmroute.adapt.ranking import gain_area, gain_areas
from lmroute.adapt.ridge import cv_penalty, design, fit_ridge, fit_ridge_path, fold_ids, out_of_fold

__all__ = [
    "BLEND_RESAMPLES",
    "DEFAULT_N0_GRID",
    "DEFAULT_PENALTIES",
    "DEFAULT_GAP_PENALTIES",
    "PAIRED_LEARNERS",
    "SharedFit",
    "choose_blend_n0",
    "dr_pseudo_gap",
    "fit_paired",
    "fit_shared",
    "fit_single",
    "held_out_dr_gain",
    "paired_out_of_fold",
    "shared_head",
    "single_events",
]

FloatArray = npt.NDArray[np.float64]
DEFAULT_PENALTIES: tuple[float, ...] = (3.0, 10.0, 30.0, 100.0, 300.0)
DEFAULT_N0_GRID: tuple[float, ...] = (0.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
BLEND_RESAMPLES = 300  # bootstrap resamples of the blend's n0 choice
_TIE_TOLERANCE = 1e-9  # relative: gain areas this close are a tie
MAX_INVERSE_PROPENSITY = 20.0  # importance weights are clipped here (variance over a small bias)
# The shared learner's penalties: 3 on the quality both models share, n / 16 on the gap (at least 10; n =
# the number of events). Chosen on validation splits of the stream halves: on MMLU, gap penalty 30-100
# was best at 500 events and 300 at 5,000 (100-1,000 flat there, 30 worse); on GSM8K (457 events) 10-30.
# Cross-validating the gap penalty on the outcomes (`gap_penalties` with several values) measured noisier.
SHARED_QUALITY_PENALTY = 3.0
GAP_PENALTY_PER_EVENT = 1.0 / 16.0
MIN_GAP_PENALTY = 10.0
DEFAULT_GAP_PENALTIES: tuple[float, ...] = ()  # empty: one penalty, max(MIN_GAP_PENALTY, n * GAP_PENALTY_PER_EVENT)
# The gap penalty's criterion clips inverse propensities here, looser than the learner's 20: with a tight
# clip the pseudo-gap leans on the model being scored and favours the smallest penalty.
CRITERION_INVERSE_PROPENSITY = 100.0
_UNPENALISED = 1e-8  # the gap's intercept column (a tiny penalty keeps the solve well posed)
PAIRED_LEARNERS: tuple[str, ...] = ("kernel", "ridge")  # the first is the default


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


def single_events(
    chose_strong: npt.ArrayLike, quality: npt.ArrayLike, propensity: npt.ArrayLike, n: int
) -> tuple[npt.NDArray[np.bool_], FloatArray, FloatArray]:
    """n single outcomes checked: (which model answered, its quality in [0, 1], its propensity in (0, 1]);
    ValueError naming the first value that is not."""
    arm = np.asarray(chose_strong)
    if arm.shape != (n,) or arm.dtype != np.bool_:
        raise ValueError(f"chose_strong: expected bool of shape ({n},), got {arm.dtype} {arm.shape}")
    q = _vector("quality", quality, n, 0.0, 1.0)
    p = _vector("propensity", propensity, n, 0.0, 1.0)
    if (p <= 0).any():
        raise ValueError(f"propensity[{int(np.argmin(p))}]: must be > 0 (the chosen model's probability)")
    return arm, q, p


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
    learner: str = PAIRED_LEARNERS[0],
    kernel: KernelSettings = DEFAULT_KERNEL,
    penalties: Sequence[float] = DEFAULT_PENALTIES,
    folds: int = 5,
    seed: int = 0,
) -> Head:
    """A head of the quality gap (strong - weak, in [-1, 1]). learner "kernel": kernel ridge on the
    embedding with a linear log_length term (`kernel` settings); "ridge": ridge on [embedding |
    log_length], the penalty chosen from `penalties` by `folds`-fold cross-validation on these outcomes."""
    x = design(embeddings, lengths)
    y = _vector("gap", gap, x.shape[0], -1.0, 1.0)
    if x.shape[0] < 2:
        raise ValueError(f"fit_paired: needs at least 2 outcomes, got {x.shape[0]}")
    if learner not in PAIRED_LEARNERS:
        raise ValueError(f"learner: must be one of {', '.join(PAIRED_LEARNERS)} (got {learner!r})")
    if learner == "kernel":
        return _kernel_head(x, y, kernel, seed)
    penalty, scores = cv_penalty(x, y, penalties, folds=folds, seed=seed)
    settings = {"penalty": penalty, "n_outcomes": float(len(y)), "cv_corr": scores.get(penalty, float("nan"))}
    return _head(x, y, penalty, "paired_ridge", {k: v for k, v in settings.items() if np.isfinite(v)})


def _kernel_head(x: FloatArray, y: FloatArray, settings: KernelSettings, seed: int) -> Head:
    fit = fit_kernel_ridge(x[:, :-1], x[:, -1], y, settings, seed=seed)
    center, scale = robust_center_scale(fit.predict(x[:, :-1], x[:, -1]))
    return Head(
        weights=np.zeros(x.shape[1] - 1),
        length_weight=fit.length_weight,
        bias=fit.bias,
        center=center,
        scale=scale,
        learner="paired_kernel_ridge",
        settings={
            "kernel_gamma": settings.gamma,
            "kernel_penalty": settings.penalty,
            "support": float(fit.kernel.support.shape[0]),
            "n_outcomes": float(len(y)),
        },
        kernel=fit.kernel,
    )


def paired_out_of_fold(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    gap: npt.ArrayLike,
    head: Head,
    *,
    folds: int = 5,
    seed: int = 0,
) -> FloatArray:
    """Raw values of `head`'s learner for each outcome from a fit on the other folds (at the head's
    settings: its kernel's, or its ridge penalty)."""
    x = design(embeddings, lengths)
    y = _vector("gap", gap, x.shape[0], -1.0, 1.0)
    ids = fold_ids(len(y), folds, seed)
    if head.kernel is None:
        return out_of_fold(x, y, head.settings.get("penalty", 30.0), ids)
    settings = KernelSettings(
        gamma=head.kernel.gamma,
        penalty=head.settings["kernel_penalty"],
        max_support=max(2, int(head.settings.get("support", DEFAULT_KERNEL.max_support))),
    )
    raw = np.empty(len(y))
    for f in np.unique(ids):
        test = ids == f
        fit = fit_kernel_ridge(x[~test, :-1], x[~test, -1], y[~test], settings, seed=seed)
        raw[test] = fit.predict(x[test, :-1], x[test, -1])
    return raw


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
    fitted on the other folds. The correction's 1 / p is clipped there too (a learner's target: variance
    over a small bias), so E[gap_dr | x] = the true gap when m is right, or when no propensity is below
    1 / MAX_INVERSE_PROPENSITY; the gate's gains (`held_out_dr_gain`) are clipped alike."""
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


@dataclass(frozen=True, eq=False)
class SharedFit:
    """The shared learner's result: the gap head's coefficients on the design, its intercept, the gap
    penalty chosen, every penalty's out-of-fold score, and per event the out-of-fold gap prediction and
    the doubly robust pseudo-gap built on the out-of-fold outcome model (both cross-fitted)."""

    coef: FloatArray
    intercept: float
    penalty: float
    quality_penalty: float
    scores: dict[float, float]
    oof_gap: FloatArray
    pseudo_gap: FloatArray


def _shared_rows(x: FloatArray, chose_strong: npt.NDArray[np.bool_]) -> FloatArray:
    sign = np.where(chose_strong, 1.0, -1.0)[:, None]
    return np.hstack([x, sign * x, sign])


def _shared_penalty(dim: int, gap_penalty: float, quality_penalty: float) -> FloatArray:
    return np.concatenate([np.full(dim, quality_penalty), np.full(dim, gap_penalty), [_UNPENALISED]])


def _shared_arms(fit_coef: FloatArray, intercept: float, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(strong, weak) quality predicted by one shared fit: c + x f +- (x h + d)."""
    dim = x.shape[1]
    level = x @ fit_coef[:dim] + intercept
    half_gap = x @ fit_coef[dim : 2 * dim] + fit_coef[2 * dim]
    return level + half_gap, level - half_gap


def fit_shared(
    x: FloatArray,
    chose_strong: npt.NDArray[np.bool_],
    quality: FloatArray,
    propensity: FloatArray,
    *,
    gap_penalties: Sequence[float] = DEFAULT_GAP_PENALTIES,
    quality_penalty: float = SHARED_QUALITY_PENALTY,
    folds: int = 5,
    seed: int = 0,
    weighted: bool = False,
) -> SharedFit:
    """The shared outcome model: one ridge of quality on [x | s x | s] over every event (s = +1 when the
    strong model answered, -1 when the weak one did), so quality = c + x f + s (x h + d): f, what both
    models share (how hard the prompt is), learns from every event, and the gap 2 (x h + d) carries its
    own, larger penalty. Unweighted by default (`weighted=True`: by 1 / propensity, clipped; measured
    worse on the stream half): the propensities enter the criterion and the pseudo-gap. The gap penalty is
    chosen from `gap_penalties` (empty: one, max(MIN_GAP_PENALTY, n * GAP_PENALTY_PER_EVENT)) by
    `folds`-fold cross-validation: out-of-fold `gain_area` of the predicted
    gap against the doubly robust pseudo-gap built on the same out-of-fold outcome model (unbiased
    whatever the model, given the propensities); ties go to the larger penalty."""
    n, dim = x.shape
    rows = _shared_rows(x, chose_strong)
    ordered = sorted(float(v) for v in gap_penalties) or [max(MIN_GAP_PENALTY, n * GAP_PENALTY_PER_EVENT)]
    vectors = [_shared_penalty(dim, lg, quality_penalty) for lg in ordered]
    inv = np.minimum(1.0 / propensity, MAX_INVERSE_PROPENSITY)
    loose = np.minimum(1.0 / propensity, CRITERION_INVERSE_PROPENSITY)
    sign = np.where(chose_strong, 1.0, -1.0)

    def pseudo(m_s: FloatArray, m_w: FloatArray) -> FloatArray:
        out: FloatArray = m_s - m_w + inv * sign * (quality - np.where(chose_strong, m_s, m_w))
        return out

    oof_s = np.zeros((len(ordered), n))
    oof_w = np.zeros((len(ordered), n))
    cross_fit = n >= 2 * folds and bool(chose_strong.any()) and not bool(chose_strong.all())
    if cross_fit:
        ids = fold_ids(n, folds, seed)
        for f in range(folds):
            held, train = ids == f, ids != f
            w_train = inv[train] if weighted else None
            for j, fit in enumerate(fit_ridge_path(rows[train], quality[train], vectors, w_train)):
                oof_s[j, held], oof_w[j, held] = _shared_arms(fit.coef, fit.intercept, x[held])
    scores: dict[float, float] = {}
    if cross_fit:
        for j, lg in enumerate(ordered):
            m_s, m_w = np.clip(oof_s[j], 0.0, 1.0), np.clip(oof_w[j], 0.0, 1.0)
            unclipped = m_s - m_w + loose * sign * (quality - np.where(chose_strong, m_s, m_w))
            scores[lg] = gain_area(oof_s[j] - oof_w[j], unclipped)
        best = max(ordered, key=lambda v: (scores[v], v))
    else:
        best = ordered[len(ordered) // 2]
    j = ordered.index(best)
    fit = fit_ridge(rows, quality, vectors[j], inv if weighted else None)
    coef = 2.0 * fit.coef[dim : 2 * dim]
    intercept = 2.0 * float(fit.coef[2 * dim])
    if cross_fit:
        m_s, m_w = np.clip(oof_s[j], 0.0, 1.0), np.clip(oof_w[j], 0.0, 1.0)
        oof_gap = oof_s[j] - oof_w[j]
    else:
        m_s, m_w = (np.clip(v, 0.0, 1.0) for v in _shared_arms(fit.coef, fit.intercept, x))
        oof_gap = m_s - m_w
    return SharedFit(coef, intercept, best, quality_penalty, scores, oof_gap, pseudo(m_s, m_w))


def shared_head(x: FloatArray, shared: SharedFit, n: int) -> Head:
    """The `Head` of a `fit_shared` result (its gap part) over the design rows `x` it was fitted on."""
    center, scale = robust_center_scale(x @ shared.coef + shared.intercept)
    settings = {"gap_penalty": shared.penalty, "quality_penalty": shared.quality_penalty, "n_outcomes": float(n)}
    return Head(shared.coef[:-1], float(shared.coef[-1]), shared.intercept, center, scale, "single_shared", settings)


def fit_single(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    chose_strong: npt.ArrayLike,
    quality: npt.ArrayLike,
    propensity: npt.ArrayLike,
    *,
    method: str = "shared",
    penalties: Sequence[float] = DEFAULT_PENALTIES,
    folds: int = 5,
    seed: int = 0,
) -> Head:
    """The head from single outcomes: `quality[i]` in [0, 1] of the model the logging policy chose
    (`chose_strong[i]`), chosen with probability `propensity[i]` in (0, 1]. method "shared" (default):
    the gap part of one shared outcome ridge (`fit_shared`); "dr": ridge of the doubly robust pseudo-gap
    (`dr_pseudo_gap`); "direct": difference of the two weighted outcome ridges."""
    x = design(embeddings, lengths)
    n = x.shape[0]
    arm, q, p = single_events(chose_strong, quality, propensity, n)
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
    if method == "shared":
        shared = fit_shared(x, arm, q, p, folds=folds, seed=seed)
        return shared_head(x, shared, n)
    if method != "dr":
        raise ValueError(f"fit_single: unknown method {method!r} (known: shared, dr, direct)")
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
    out_of_fold_raw: npt.ArrayLike | None = None,
    resamples: int = BLEND_RESAMPLES,
) -> tuple[float, dict[float, float]]:
    """n0 of the blend weight n_train / (n_train + n0), bagged over `grid`: on each of `resamples`
    bootstrap resamples of the outcomes the n0 of `grid` whose blend (head fitted out of fold at
    `penalty`) orders them best by `gain_area` of `gain` (the paired gap, or a doubly robust pseudo-gap;
    ties go to the larger n0, more weight on the shipped router), and n0 is what the mean of those
    resamples' weights comes to (so it may fall between grid points). Returns n0 and every grid point's
    `gain_area` on all the outcomes. Fewer than 2 * folds outcomes: the largest n0 of the grid.
    `out_of_fold_raw`: the head's out-of-fold raw values when the learner cross-fitted them itself
    (`fit_shared`, or `paired_out_of_fold` for a kernel head); else a ridge of `gain` at `penalty` is
    fitted out of fold. `resamples=0`: the best grid point on all the outcomes alone (the choice before
    bagging, kept for comparison).

    Why bagged: the best grid point on one sample of a few hundred or thousand outcomes is a noisy pick,
    swinging between 0 and 3,000 from seed to seed. `benchmarks/adaptation/blend_validation.py`
    (validation splits of the stream halves; RESULTS_blend_validation.md) measured the bagged choice
    against the single pick with a near-random shipped router and with an in-domain one."""
    x = design(embeddings, lengths)
    g = np.asarray(gain, dtype=np.float64)
    n = len(g)
    if n < 2 * folds:
        return max(grid), {}
    if out_of_fold_raw is None:
        raw = out_of_fold(x, g, penalty, fold_ids(n, folds, seed))
    else:
        raw = np.asarray(out_of_fold_raw, dtype=np.float64)
        if raw.shape != (n,):
            raise ValueError(f"out_of_fold_raw: expected shape ({n},), got {raw.shape}")
    center, scale = robust_center_scale(raw)
    z_head = (raw - center) / scale
    base = BaseStandardisation.of(base_scores)
    z_base = (base_logits(base_scores) - base.center) / base.scale
    n_train = n * (folds - 1) / folds
    n0s = np.array(sorted(float(v) for v in grid))
    weights = np.array([n_train / (n_train + v) if n_train + v > 0 else 1.0 for v in n0s])
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    rows = np.vstack([np.ones((1, n)), counts])  # row 0: every outcome once
    areas = np.array([gain_areas(w * z_head + (1.0 - w) * z_base, g, rows) for w in weights])  # [grid, 1 + B]
    # per resample the best grid point, ties (within rounding: blends that order the outcomes alike sum
    # their areas in different orders) to the larger n0
    boot = areas[:, 1:] if resamples > 0 else areas[:, :1]  # resamples 0: the single best on all outcomes
    near_best = boot >= boot.max(axis=0) - _TIE_TOLERANCE * np.maximum(1.0, np.abs(boot).max(axis=0))
    best = n0s.size - 1 - np.argmax(near_best[::-1], axis=0)
    mean_weight = float(weights[best].mean())
    n0 = round(n_train * (1.0 - mean_weight) / mean_weight, 6)  # rounded: all resamples at one point give it
    return n0, {float(v): float(a) for v, a in zip(n0s, areas[:, 0], strict=True)}


def held_out_dr_gain(
    train: tuple[FloatArray, npt.NDArray[np.bool_], FloatArray, FloatArray],
    held: tuple[FloatArray, npt.NDArray[np.bool_], FloatArray, FloatArray],
    *,
    penalties: Sequence[float] = DEFAULT_PENALTIES,
    folds: int = 5,
    seed: int = 0,
    max_inverse_propensity: float = MAX_INVERSE_PROPENSITY,
) -> FloatArray:
    """The doubly robust pseudo-gap of held-out events, (x, chose_strong, quality, propensity) each, with
    the outcome ridges fitted on the training events only (so the gate's estimate does not reuse the
    outcomes it judges). Each held-out residual is weighed by 1 / propensity clipped at
    `max_inverse_propensity` (default MAX_INVERSE_PROPENSITY, 20, as the learners' weights): variance
    traded for a bias where propensities fall below 1 / 20 and the outcome ridges are wrong, which pulls
    the gains towards the ridges' gap, so towards candidates that resemble it (exploration's flips,
    logged at 0.02, keep 40 % of their correction; in the unit test's simulated log the mean gain is
    +0.10 where the true one is 0, and about 0 with `max_inverse_propensity=math.inf`). Unclipped, the
    gains are unbiased but so noisy at these propensities that the gate, on the adaptation benchmark,
    held back good candidates for thousands of outcomes (docs/ADAPTATION.md, "The gate")."""
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
    resid = np.where(arm_h, q_h - m_s, -(q_h - m_w))
    out: FloatArray = m_s - m_w + np.minimum(1.0 / p_h, max_inverse_propensity) * resid
    return out
