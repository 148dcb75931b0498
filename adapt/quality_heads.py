"""Routing among N models from a deployment's outcomes: per-model quality heads over a shipped `quality`
router, their gate, and one adaptation (`adapt_qualities`); what the `adapted_quality` router kind serves
(`lmroute.bundle.kinds.adapted_quality`).

Outcomes: per judged prompt, the quality in [0, 1] of any of the models (a `qualities` report judging
several, a `single` one judging the model that answered, a `paired` one judging the default pair); a
matrix [n prompts, m models] with NaN where a model was not judged.

Learner, on the design [embedding | log_length] (`lmroute.adapt.ridge`, intercepts unpenalised), in two
stages. The target of model j is its residual: quality - base_j when the base router predicts j, the
quality itself for a model it does not know.
1. Shared part: each model's mean residual, and one ridge of (residual - that mean) over every judged
   (prompt, model) cell: what a prompt does to every model alike (hard prompts are hard for all). It
   learns from all outcomes at once, which matters most when each prompt judges one model only.
2. Own part, per model j on the prompts where j was judged: a ridge of what stage 1 leaves.
Each penalty is chosen from `PENALTIES` by 5-fold cross-validation (folds by prompt), by out-of-fold
squared error (of the clipped prediction in stage 2: the level matters here, a policy weighs predicted
quality against cost). The served head of model j is the sum of both parts. A base model with fewer
than `min_outcomes` outcomes keeps the base's prediction (a zero head); a new model with fewer predicts
its mean judged quality (a constant head) when it has at least `MIN_LEVEL_OUTCOMES`, so a policy can
still choose it by its level and price, and is left out of the router below that. On LLMRouter's 9
models the shared stage lifted AIQ by 0.001-0.009 over per-model ridges alone
(`benchmarks/adaptation/n_models_curve.py`, one seed; largest with single outcomes).

Gate: the outcomes held out in turn as for the pair (`lmroute.adapt.gate.gate_splits`: 10 random folds
by default, or forward-chaining time blocks); each held-out part is predicted by heads fitted on the
rest, and by the champion (the serving router's qualities; for a model the champion does not predict,
the mean quality of that model on the training part). Two conditions, one one-sided paired bootstrap
over prompts for both (the same resampled prompts):
1. Level: the mean squared error over the held-out judged (prompt, model) cells; the upper `1 - alpha`
   bound of candidate - champion must be <= `margin`.
2. Order: how well each model's predicted quality orders the held-out prompts judged for it by that
   model's judged quality, `gain_area` (`lmroute.adapt.ranking`) of the prediction against the centred
   quality, summed over models (each weighted by its prompts) and divided by the same sum for the judged
   qualities themselves (the oracle order: 1; a constant or random order: 0). The lower `alpha` bound of
   candidate - champion must be >= -`order_margin`. A policy weighs predicted quality against cost
   prompt by prompt, so an order that is noise routes prompts to the wrong models even where the levels
   are right, and squared error alone can accept it. Where the champion predicts a constant (a model it
   does not know), the candidate must show an order that is better than none.
Neither condition sees how the models compare on one prompt unless outcomes judge several models on
it: with single outcomes a candidate can pass both and still route worse than per-model means
(`benchmarks/adaptation/n_models_curve.md`). Hence, where the outcomes come with the choices behind them
(`LoggedChoices`: the model that answered, the probability the serving policy gave it, every
candidate's expected cost):
3. Routing: the AIQ of the max-utility policy over a lambda sweep, estimated off-policy (doubly robust)
   on the held-out prompts with a logged choice (`lmroute.adapt.routing_value`); the lower `alpha`
   bound of candidate - champion must be >= -`routing_margin`. Judged when at least MIN_HELD_OUT
   held-out prompts have a usable logged choice (the candidate predicts the model that answered).
Then the heads are refitted on every outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from lmroute.adapt.gate import DEFAULT_ALPHA, DEFAULT_REPLICATES, MIN_HELD_OUT, check_settings, gate_splits
from lmroute.adapt.ranking import gain_areas
from lmroute.adapt.ridge import design, fit_ridge_path, fold_ids
from lmroute.adapt.routing_value import LoggedChoices, policy_choices, routing_values
from lmroute.bundle.kinds.adapted_quality import corrected_qualities
from lmroute.export.multi_select import lambda_grid

__all__ = [
    "DEFAULT_ORDER_MARGIN",
    "DEFAULT_QUALITY_MARGIN",
    "DEFAULT_ROUTING_MARGIN",
    "PENALTIES",
    "QualityAdaptation",
    "QualityGateDecision",
    "QualityHeads",
    "adapt_qualities",
    "fit_quality_heads",
    "gate_qualities",
]

FloatArray = npt.NDArray[np.float64]

PENALTIES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 10000.0)
MIN_MODEL_OUTCOMES = 30
MIN_LEVEL_OUTCOMES = 10  # a new model with fewer outcomes than MIN_MODEL_OUTCOMES but this many: its mean
DEFAULT_QUALITY_MARGIN = 0.0
"""Gate margin in mean squared error: the candidate must not be worse at all (upper bound <= 0)."""
DEFAULT_ORDER_MARGIN = 0.01  # of the oracle order (the paired gate's margin is 0.01 APGR)
DEFAULT_ROUTING_MARGIN = 0.01  # AIQ, in units of quality (set a priori, as the order margin)
ROUTING_LAMBDAS = 30  # log-spaced lambdas between "best predicted" and "cheapest" (`lambda_grid`)


@dataclass(frozen=True, eq=False)
class QualityHeads:
    """Fitted heads: `models` in order, `from_base[j]` whether model j's head corrects the base router;
    weights [dim, m], length_weights [m], bias [m] (the adapted_quality kind's files: the shared and the
    model's own part summed); per model the outcomes it learnt from and the penalty chosen (None: no
    head, too few outcomes)."""

    models: tuple[str, ...]
    from_base: tuple[bool, ...]
    weights: FloatArray
    length_weights: FloatArray
    bias: FloatArray
    n_outcomes: tuple[int, ...]
    penalties: tuple[float | None, ...]
    shared_penalty: float | None = None  # the shared part's penalty (None: not fitted, too few outcomes)
    left_out: dict[str, int] = field(default_factory=dict)  # new models with too few outcomes -> count

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    def predict(self, embeddings: npt.ArrayLike, lengths: npt.ArrayLike, base: npt.ArrayLike) -> FloatArray:
        """q [n, m]; base [n, m]: the base router's qualities in these columns (read where from_base)."""
        return corrected_qualities(
            embeddings, lengths, base, self.weights, self.length_weights, self.bias, np.asarray(self.from_base)
        )

    def summary(self) -> dict[str, Any]:
        return {
            "models": {
                m: {"from_base": b, "outcomes": n, "penalty": p}
                for m, b, n, p in zip(self.models, self.from_base, self.n_outcomes, self.penalties, strict=True)
            },
            "shared_penalty": self.shared_penalty,
            "left_out": dict(self.left_out),
        }


def _cv_penalty(
    x: FloatArray, y: FloatArray, offset: FloatArray, folds: npt.NDArray[np.int64], clip: bool = True
) -> float:
    """The penalty of PENALTIES with the least out-of-fold squared error of offset + prediction (clipped
    to [0, 1] with `clip`); `folds` assigns each row (rows of one prompt share a fold)."""
    errors = np.zeros(len(PENALTIES))
    for f in np.unique(folds):
        test = folds == f
        fits = fit_ridge_path(x[~test], y[~test] - offset[~test], PENALTIES)
        for k, fit in enumerate(fits):
            pred = offset[test] + fit.predict(x[test])
            if clip:
                pred = np.clip(pred, 0.0, 1.0)
            errors[k] += float(np.sum((pred - y[test]) ** 2))
    best = min(range(len(PENALTIES)), key=lambda k: (errors[k], -k))  # ties: the larger penalty
    return PENALTIES[best]


def _shared_part(
    x: FloatArray, residual: FloatArray, judged: npt.NDArray[np.bool_], seed: int
) -> tuple[FloatArray, FloatArray, float | None]:
    """Stage 1: each model's mean residual over its judged prompts, and one ridge of the residual minus
    that mean on every judged (prompt, model) cell: what the prompt does to all models alike. Returns
    (means [m], coefficients [p + 1] with the intercept last, penalty; None: too few cells)."""
    counts = judged.sum(axis=0)
    means = np.where(counts > 0, np.where(judged, residual, 0.0).sum(axis=0) / np.maximum(counts, 1), 0.0)
    rows, cols = np.nonzero(judged)
    if rows.size < 2 * MIN_MODEL_OUTCOMES:
        return means, np.zeros(x.shape[1] + 1), None
    y = residual[rows, cols] - means[cols]
    folds = fold_ids(x.shape[0], 5, seed)[rows]
    penalty = _cv_penalty(x[rows], y, np.zeros(rows.size), folds, clip=False)
    fit = fit_ridge_path(x[rows], y, [penalty])[0]
    return means, np.append(fit.coef, fit.intercept), penalty


def fit_quality_heads(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    quality: npt.ArrayLike,
    base: npt.ArrayLike,
    models: Sequence[str],
    from_base: Sequence[bool],
    *,
    min_outcomes: int = MIN_MODEL_OUTCOMES,
    seed: int = 0,
) -> QualityHeads:
    """Heads for `models` (module docstring). quality [n, m] in [0, 1] with NaN where not judged; base
    [n, m]: the base router's qualities (read in the from_base columns)."""
    x = design(embeddings, lengths)
    q = np.asarray(quality, dtype=np.float64)
    b = np.asarray(base, dtype=np.float64)
    m = len(models)
    if q.shape != (x.shape[0], m) or b.shape != q.shape or len(from_base) != m:
        raise ValueError(f"fit_quality_heads: quality {q.shape}, base {b.shape}, {m} models, {len(from_base)} flags")
    judged = ~np.isnan(q)
    if np.any((q[judged] < 0) | (q[judged] > 1)):
        raise ValueError("fit_quality_heads: quality outside [0, 1]")
    flags = np.asarray(from_base, dtype=bool)
    offset = np.where(flags[None, :], np.nan_to_num(b), 0.0)
    learnt = judged & (judged.sum(axis=0) >= min_outcomes)[None, :]
    means, shared, shared_penalty = _shared_part(x, q - offset, learnt, seed)
    shared_pred = x @ shared[:-1] + shared[-1]
    folds = fold_ids(x.shape[0], 5, seed + 1)
    dim = x.shape[1] - 1
    keep: list[int] = []
    weights, length_w, bias = [], [], []
    counts: list[int] = []
    penalties: list[float | None] = []
    left_out: dict[str, int] = {}
    for j in range(m):
        rows = judged[:, j]
        n_j = int(rows.sum())
        if n_j < min_outcomes:
            if from_base[j] or n_j >= MIN_LEVEL_OUTCOMES:  # the base's prediction, or the model's mean
                keep.append(j)
                weights.append(np.zeros(dim))
                length_w.append(0.0)
                bias.append(0.0 if from_base[j] else float(q[rows, j].mean()))
                counts.append(n_j)
                penalties.append(None)
            else:
                left_out[models[j]] = n_j
            continue
        # stage 2: the model's own part, on top of the base (if any), its mean and the shared part
        start = offset[rows, j] + means[j] + shared_pred[rows]
        xj, yj = x[rows], q[rows, j]
        penalty = _cv_penalty(xj, yj, start, folds[rows])
        own = fit_ridge_path(xj, yj - start, [penalty])[0]
        keep.append(j)
        weights.append(shared[:dim] + own.coef[:dim])
        length_w.append(float(shared[dim] + own.coef[dim]))
        bias.append(float(shared[-1] + means[j] + own.intercept))
        counts.append(n_j)
        penalties.append(penalty)
    return QualityHeads(
        models=tuple(models[j] for j in keep),
        from_base=tuple(bool(from_base[j]) for j in keep),
        weights=np.stack(weights, axis=1) if weights else np.zeros((dim, 0)),
        length_weights=np.asarray(length_w, dtype=np.float64),
        bias=np.asarray(bias, dtype=np.float64),
        n_outcomes=tuple(counts),
        penalties=tuple(penalties),
        shared_penalty=shared_penalty,
        left_out=left_out,
    )


@dataclass(frozen=True)
class QualityGateDecision:
    """The gate's verdict on N-model heads and every number behind it (mean squared error: lower is
    better; `to_dict` for the record)."""

    accepted: bool
    reason: str
    metric: str
    test: str
    n_held_out: int  # prompts
    n_cells: int  # judged (prompt, model) cells
    champion_error: float
    candidate_error: float
    difference: float
    upper_bound: float
    margin: float
    champion_order: float  # the order condition (module docstring): 1 = the oracle's, 0 = none
    candidate_order: float
    order_difference: float
    order_lower_bound: float
    order_margin: float
    alpha: float
    replicates: int
    seed: int
    # the routing condition (module docstring), NaN where it was not judged (fewer logged choices than
    # MIN_HELD_OUT): AIQ estimated off-policy from the held-out prompts' logged choices
    n_logged: int = 0
    champion_routing: float = float("nan")
    candidate_routing: float = float("nan")
    routing_difference: float = float("nan")
    routing_lower_bound: float = float("nan")
    routing_margin: float = DEFAULT_ROUTING_MARGIN

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _order_areas(
    pred: FloatArray, quality: FloatArray, judged: npt.NDArray[np.bool_], counts: FloatArray
) -> FloatArray:
    """The order term of each resample, summed over models: row r of `counts` [R, n] says how many times
    each prompt is drawn; per model j, over the prompts where j is judged, W_j x gain_area of pred[:, j]
    against the quality centred on its resample mean (W_j = the draws of those prompts; a prompt drawn
    k times counts as k tied copies, as `gain_area` takes them). Models judged on fewer than two prompts
    add 0, and so does a model in a resample that draws none of its prompts. Returns [R]."""
    total = np.zeros(counts.shape[0])
    for j in range(quality.shape[1]):
        rows = np.flatnonzero(judged[:, j])
        if rows.size < 2:
            continue
        weight = counts[:, rows].sum(axis=1)  # W_j per resample
        drawn = np.flatnonzero(weight > 0)
        w, q = counts[np.ix_(drawn, rows)], quality[rows, j]
        mean = (w @ q) / weight[drawn]
        # the area of a constant gain c is c / 2 whatever the order: centring subtracts mean / 2
        total[drawn] += weight[drawn] * (gain_areas(pred[rows, j], q, w) - mean / 2.0)
    return total


_RESAMPLE_CHUNK = 250  # bootstrap resamples drawn and scored at once (memory: chunk x prompts)


def gate_qualities(
    champion: npt.ArrayLike,
    candidate: npt.ArrayLike,
    quality: npt.ArrayLike,
    *,
    margin: float = DEFAULT_QUALITY_MARGIN,
    order_margin: float = DEFAULT_ORDER_MARGIN,
    logged: LoggedChoices | None = None,
    routing_margin: float = DEFAULT_ROUTING_MARGIN,
    alpha: float = DEFAULT_ALPHA,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
) -> QualityGateDecision:
    """Compare predicted qualities [n, m] of the champion and the candidate with the judged ones [n, m]
    (NaN: not judged, or a model the candidate left out: NaN predictions there too): their level by mean
    squared error over the judged cells, their order of the prompts per model by gain area, and, with
    `logged` choices of the same n prompts, their routing value (module docstring)."""
    champ, cand = np.asarray(champion, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    if not (q.ndim == 2 and champ.shape == cand.shape == q.shape):
        raise ValueError(
            f"gate_qualities: champion {champ.shape}, candidate {cand.shape} and quality {q.shape} must match"
        )
    judged = ~np.isnan(q)
    if not (np.isfinite(champ[judged]).all() and np.isfinite(cand[judged]).all()):
        raise ValueError("gate_qualities: a prediction for a judged cell is NaN or inf")
    check_settings(
        "gate_qualities", alpha, replicates, margin=margin, order_margin=order_margin, routing_margin=routing_margin
    )
    if logged is not None and logged.cost.shape != q.shape:
        raise ValueError(f"gate_qualities: logged costs {logged.cost.shape} and quality {q.shape} must match")
    rows = judged.any(axis=1)
    champ, cand, q, judged = champ[rows], cand[rows], q[rows], judged[rows]
    routing = _Routing.of(champ, cand, q, logged.rows(np.flatnonzero(rows))) if logged is not None else None
    n_logged = 0 if routing is None else routing.n_logged
    qz = np.where(judged, q, 0.0)
    se_champ = np.where(judged, (np.where(judged, champ, 0.0) - qz) ** 2, 0.0).sum(axis=1)
    se_cand = np.where(judged, (np.where(judged, cand, 0.0) - qz) ** 2, 0.0).sum(axis=1)
    cells = judged.sum(axis=1).astype(np.float64)
    n = int(rows.sum())
    test = (
        f"one-sided paired bootstrap over prompts, {replicates} replicates, alpha {alpha}; level: margin "
        f"{margin}; order: margin {order_margin}; routing: margin {routing_margin}"
    )
    metric = (
        "level: mean squared error of predicted quality over judged (prompt, model) cells; order: per-model "
        "gain area of the predicted quality against the judged one, over the oracle's; routing: AIQ of the "
        "max-utility policy estimated off-policy (doubly robust) from the logged choices"
    )
    nan = float("nan")

    def decision(
        accepted: bool,
        reason: str,
        errors: tuple[float, float, float],
        orders: tuple[float, float, float],
        routes: tuple[float, float, float] = (nan, nan, nan),
    ) -> QualityGateDecision:
        return QualityGateDecision(
            accepted=accepted,
            reason=reason,
            metric=metric,
            test=test,
            n_held_out=n,
            n_cells=int(cells.sum()),
            champion_error=errors[0],
            candidate_error=errors[1],
            difference=errors[1] - errors[0],
            upper_bound=errors[2],
            margin=margin,
            champion_order=orders[0],
            candidate_order=orders[1],
            order_difference=orders[1] - orders[0],
            order_lower_bound=orders[2],
            order_margin=order_margin,
            alpha=alpha,
            replicates=replicates,
            seed=seed,
            n_logged=n_logged,
            champion_routing=routes[0],
            candidate_routing=routes[1],
            routing_difference=routes[1] - routes[0],
            routing_lower_bound=routes[2],
            routing_margin=routing_margin,
        )

    if n < MIN_HELD_OUT:
        reason = f"refused: {n} held-out prompts, the gate needs at least {MIN_HELD_OUT}"
        return decision(False, reason, (nan, nan, nan), (nan, nan, nan))
    champ_err = float(se_champ.sum() / cells.sum())
    cand_err = float(se_cand.sum() / cells.sum())
    ones = np.ones((1, n))
    oracle = float(_order_areas(q, q, judged, ones)[0])  # the fixed denominator of every resample
    scale = oracle if oracle > 0 else nan
    champ_order = float(_order_areas(champ, q, judged, ones)[0]) / scale
    cand_order = float(_order_areas(cand, q, judged, ones)[0]) / scale
    by_route = routing if n_logged >= MIN_HELD_OUT else None  # the routing condition, when there is enough to judge
    if by_route is not None:
        champ_route, cand_route = by_route.values(ones)[:, 0]
    rng = np.random.default_rng(seed)
    err_diffs = np.empty(replicates)
    order_diffs = np.empty(replicates)
    route_diffs = np.empty(replicates)
    for first in range(0, replicates, _RESAMPLE_CHUNK):
        size = min(_RESAMPLE_CHUNK, replicates - first)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)  # bootstrap draws
        part = slice(first, first + size)
        err_diffs[part] = (counts @ (se_cand - se_champ)) / (counts @ cells)
        if oracle > 0:
            areas = _order_areas(cand, q, judged, counts) - _order_areas(champ, q, judged, counts)
            order_diffs[part] = areas / oracle
        if by_route is not None:
            champ_v, cand_v = by_route.values(counts)
            route_diffs[part] = cand_v - champ_v
    upper = float(np.quantile(err_diffs, 1.0 - alpha))
    level_ok = upper <= margin
    level = (
        f"error {cand_err:.5f} vs champion {champ_err:.5f} (difference {cand_err - champ_err:+.5f}), one-sided "
        f"{1 - alpha:.0%} upper bound {upper:+.5f} {'at or below' if level_ok else 'above'} {margin}"
    )
    if oracle > 0:
        lower = float(np.quantile(order_diffs, alpha))
        order_ok = lower >= -order_margin
        order = (
            f"order {cand_order:.4f} vs champion {champ_order:.4f} of the oracle's, lower bound of the "
            f"difference {lower:+.4f} {'at or above' if order_ok else 'below'} -{order_margin}"
        )
    else:  # every model's held-out quality is constant: there is no order to judge
        lower, order_ok = nan, True
        order = "order: not judged (no model's held-out quality varies)"
    if by_route is not None:
        route_lower = float(np.quantile(route_diffs, alpha))
        routing_ok = route_lower >= -routing_margin
        route = (
            f"routing AIQ {cand_route:.4f} vs champion {champ_route:.4f} (off-policy, {n_logged} "
            f"logged choices), lower bound of the difference {route_lower:+.4f} "
            f"{'at or above' if routing_ok else 'below'} -{routing_margin}"
        )
        routes = (champ_route, cand_route, route_lower)
    else:
        routing_ok, routes = True, (nan, nan, nan)
        route = f"routing: not judged ({n_logged} logged choices, needs {MIN_HELD_OUT})"
    accepted = level_ok and order_ok and routing_ok
    reason = f"{'accepted' if accepted else 'refused'}: {level}; {order}; {route}; on {n} held-out prompts"
    return decision(accepted, reason, (champ_err, cand_err, upper), (champ_order, cand_order, lower), routes)


@dataclass(frozen=True, eq=False)
class _Routing:
    """The routing condition's fixed parts: both predictors' choices per lambda on the logged prompts."""

    choices: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]  # champion, candidate: [lambdas, n]
    quality: FloatArray
    logged: LoggedChoices
    n_logged: int

    @classmethod
    def of(cls, champion: FloatArray, candidate: FloatArray, quality: FloatArray, logged: LoggedChoices) -> _Routing:
        """Logged prompts count where the candidate predicts the model that answered (a model its fold
        left out was not judged there) and both predictors have a model to choose."""
        available = np.where(np.isnan(candidate), np.inf, logged.cost)
        a = logged.answered
        usable = (a >= 0) & np.isfinite(available.min(axis=1))
        usable[usable] &= np.isfinite(available[np.flatnonzero(usable), a[usable]])
        usable[usable] &= ~np.isnan(quality[np.flatnonzero(usable), a[usable]])
        kept = LoggedChoices(np.where(usable, a, -1), logged.propensity, available)
        priced = np.isfinite(available[usable])
        counts = priced.sum(axis=0)
        mean_cost = np.where(priced, available[usable], 0.0).sum(axis=0)[counts > 0] / counts[counts > 0]
        if mean_cost.size == 0 or not np.median(mean_cost) > 0:  # nothing logged, or every model free
            return cls((np.zeros((0, 0), np.int64),) * 2, quality, kept, 0)
        lams = lambda_grid(mean_cost, ROUTING_LAMBDAS)  # scaled by the median model's mean cost
        champ_pick = policy_choices(np.where(np.isnan(candidate), np.nan, champion), available, lams)
        cand_pick = policy_choices(candidate, available, lams)
        return cls((champ_pick, cand_pick), quality, kept, int(usable.sum()))

    def values(self, counts: FloatArray) -> FloatArray:
        """[2, R]: the champion's and the candidate's routing value under each resample's counts."""
        return routing_values(self.choices, self.quality, self.logged, counts)


@dataclass(frozen=True, eq=False)
class QualityAdaptation:
    """The refitted heads and the gate's decision on heads fitted without the held-out outcomes."""

    heads: QualityHeads
    decision: QualityGateDecision

    @property
    def accepted(self) -> bool:
        return self.decision.accepted


def _champion_columns(
    champion: FloatArray, champion_models: Sequence[str], models: Sequence[str], fallback: FloatArray
) -> FloatArray:
    """The champion's predictions in `models` order; a model it does not predict gets `fallback[j]`."""
    out = np.empty((champion.shape[0], len(models)))
    for j, model in enumerate(models):
        out[:, j] = champion[:, champion_models.index(model)] if model in champion_models else fallback[j]
    return out


def _in_columns(part: FloatArray, cols: Sequence[int], width: int) -> FloatArray:
    """`part` [k, len(cols)] placed in columns `cols` of a [k, width] matrix, NaN elsewhere: every fold's
    held-out predictions in one column per model, whichever models the fold's heads kept (a column NaN
    where they left its model out: not judged there)."""
    out = np.full((part.shape[0], width), np.nan)
    out[:, list(cols)] = part
    return out


def _judged_means(quality: FloatArray) -> FloatArray:
    """Each column's mean over its judged cells (0.5 for a column judged nowhere)."""
    judged = ~np.isnan(quality)
    count = judged.sum(axis=0)
    total = np.where(judged, quality, 0.0).sum(axis=0)
    out: FloatArray = np.where(count > 0, total / np.maximum(count, 1), 0.5)
    return out


def adapt_qualities(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    quality: npt.ArrayLike,
    base: npt.ArrayLike,
    models: Sequence[str],
    from_base: Sequence[bool],
    champion: npt.ArrayLike,
    champion_models: Sequence[str],
    timestamps: npt.ArrayLike,
    *,
    splits: str = "cross_fit",
    margin: float = DEFAULT_QUALITY_MARGIN,
    order_margin: float = DEFAULT_ORDER_MARGIN,
    logged: LoggedChoices | None = None,
    routing_margin: float = DEFAULT_ROUTING_MARGIN,
    unseen: npt.ArrayLike | None = None,
    min_outcomes: int = MIN_MODEL_OUTCOMES,
    seed: int = 0,
    gate_quality: npt.ArrayLike | None = None,
) -> QualityAdaptation:
    """Gate, then refit (module docstring). quality and base [n, m] over `models`; champion [n, k] over
    `champion_models` (what serves now); `logged`: the choices behind the n prompts' outcomes, columns
    over `models` (the routing condition); `unseen`: the outcomes the champion was not fitted on, the
    only ones held out (`lmroute.adapt.gate.gate_splits`); `gate_quality` [n, m]: the qualities the
    gate judges by (the trusted reporters' alone, NaN where they judged none; only prompts with one are
    held out), None = `quality`."""
    emb = np.asarray(embeddings, dtype=np.float64)
    length = np.asarray(lengths, dtype=np.float64)
    q, b, champ = (np.asarray(a, dtype=np.float64) for a in (quality, base, champion))
    judged, held_out = q, None if unseen is None else np.asarray(unseen, dtype=np.bool_)
    if gate_quality is not None:
        judged = np.asarray(gate_quality, dtype=np.float64)
        if judged.shape != q.shape:
            raise ValueError(f"gate_quality: {judged.shape} for qualities {q.shape}")
        has_gate = np.asarray(np.isfinite(judged).any(axis=1), dtype=np.bool_)
        held_out = has_gate if held_out is None else has_gate & held_out
    none = np.zeros((0, len(models)))  # no fold left (every outcome seen): nothing held out
    cand_h, champ_h, q_h, held_rows = [none], [none], [none], [np.zeros(0, dtype=np.int64)]
    for train, held in gate_splits(timestamps, splits, seed, held_out):
        held_rows.append(np.asarray(held))
        heads = fit_quality_heads(
            emb[train], length[train], q[train], b[train], models, from_base, min_outcomes=min_outcomes, seed=seed
        )
        cols = [list(models).index(mdl) for mdl in heads.models]
        cand_h.append(_in_columns(heads.predict(emb[held], length[held], b[held][:, cols]), cols, len(models)))
        fallback = _judged_means(q[train][:, cols])
        champ_cols = _champion_columns(champ[held], champion_models, heads.models, fallback)
        champ_h.append(_in_columns(champ_cols, cols, len(models)))
        # judged cells of models the fold's heads left out do not count
        q_h.append(_in_columns(judged[held][:, cols], cols, len(models)))
    decision = gate_qualities(
        np.concatenate(champ_h),
        np.concatenate(cand_h),
        np.concatenate(q_h),
        margin=margin,
        order_margin=order_margin,
        logged=None if logged is None else logged.rows(np.concatenate(held_rows).astype(np.int64)),
        routing_margin=routing_margin,
        seed=seed,
    )
    heads = fit_quality_heads(emb, length, q, b, models, from_base, min_outcomes=min_outcomes, seed=seed)
    return QualityAdaptation(heads=heads, decision=decision)
