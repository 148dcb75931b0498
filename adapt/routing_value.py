"""How well N-model quality predictions route, estimated off-policy from logged choices: the third
condition of the N-model gate (`lmroute.adapt.quality_heads.gate_qualities`).

A single outcome judges only the model that answered, so squared error and per-model order can both look
right while the predictions compare the models wrongly on one prompt (which model is better here), which
is all routing needs. When the model that answered was chosen by a policy that logged the probability of
its choice (`Route` among candidates with `--explore-rate`: every candidate has a chance), the value of
any other routing policy on the same prompts can be estimated without bias:

- The policies: for each lambda of a grid, every prompt to the model that maximises predicted quality -
  lambda x expected cost among the models available for it (a candidate with a prediction); lambda = 0
  is "best predicted", lambda = inf "cheapest" (ties: the better predicted).
- Quality of a policy pi: doubly robust over the logged prompts,
  mean_i [ b(pi(i)) + 1{pi(i) = a_i} (r_i - b(a_i)) / p_i ], with a_i the model that answered, r_i its
  judged quality, p_i its logged probability, b(j) model j's mean logged quality (the same baseline for
  every policy: it lowers the variance, it cannot favour one). Cost of pi: mean_i cost(i, pi(i)), known
  for every model without an outcome.
- The routing value: AIQ (`lmroute.export.multi_eval`) of the hull of those (cost, quality) points over
  budgets from the cheapest policy's cost to the mean cost of each prompt's dearest model.

Each bootstrap resample (counts per prompt, as the gate draws them) gives one value per predictor; the
gate compares the candidate's with the champion's on the same resamples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lmroute.export.multi_eval import aiq, upper_hull

__all__ = ["LoggedChoices", "policy_choices", "routing_values"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class LoggedChoices:
    """Per prompt [n]: `answered`, the column of the model that answered and was judged (-1: no logged
    choice), and `propensity`, the probability the serving policy gave that choice; `cost` [n, m], each
    model's expected cost on the prompt (inf where it was not a candidate)."""

    answered: IntArray
    propensity: FloatArray
    cost: FloatArray

    def __post_init__(self) -> None:
        a, p, c = self.answered, self.propensity, self.cost
        if not (a.ndim == 1 and p.shape == a.shape and c.ndim == 2 and c.shape[0] == a.shape[0]):
            raise ValueError(f"LoggedChoices: answered {a.shape}, propensity {p.shape}, cost {c.shape} disagree")
        logged = a >= 0
        if (a >= c.shape[1]).any():
            raise ValueError(f"LoggedChoices: answered holds a column outside [0, {c.shape[1]})")
        if not ((p[logged] > 0) & (p[logged] <= 1)).all():
            raise ValueError("LoggedChoices: a logged propensity is outside (0, 1]")
        if np.isnan(c).any() or (c < 0).any():
            raise ValueError("LoggedChoices: a cost is NaN or negative")
        if not np.isfinite(c[np.flatnonzero(logged), a[logged]]).all():
            raise ValueError("LoggedChoices: the model that answered has no finite cost")

    @classmethod
    def build(cls, answered: npt.ArrayLike, propensity: npt.ArrayLike, cost: npt.ArrayLike) -> LoggedChoices:
        return cls(
            np.asarray(answered, dtype=np.int64),
            np.asarray(propensity, dtype=np.float64),
            np.asarray(cost, dtype=np.float64),
        )

    def rows(self, index: npt.NDArray[np.bool_] | IntArray) -> LoggedChoices:
        """The choices of the prompts `index` (indices or a boolean mask)."""
        return LoggedChoices(self.answered[index], self.propensity[index], self.cost[index])

    @property
    def n_logged(self) -> int:
        return int((self.answered >= 0).sum())


def policy_choices(pred: npt.ArrayLike, cost: npt.ArrayLike, lambdas: Sequence[float]) -> IntArray:
    """[len(lambdas), n]: per lambda, each prompt's model under max predicted quality - lambda x cost
    among the models with a finite prediction and cost (module docstring); -1 where none has both."""
    q, c = np.asarray(pred, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    ok = np.isfinite(q) & np.isfinite(c)
    out = np.empty((len(lambdas), q.shape[0]), dtype=np.int64)
    q0, c0 = np.where(ok, q, 0.0), np.where(ok, c, 0.0)
    cheapest = np.where(ok, c, np.inf).min(axis=1, keepdims=True)
    for k, lam in enumerate(lambdas):
        if math.isinf(lam):
            utility = np.where(ok & (c0 <= cheapest), q0, -np.inf)
        else:
            utility = np.where(ok, q0 - lam * c0, -np.inf)
        out[k] = np.argmax(utility, axis=1)
    out[:, ~ok.any(axis=1)] = -1
    return out


def routing_values(
    choices: Sequence[IntArray], quality: npt.ArrayLike, logged: LoggedChoices, counts: npt.ArrayLike
) -> FloatArray:
    """The routing value (module docstring) of each policy family in `choices` ([K, n] each, from
    `policy_choices` on the same prompts, -1 nowhere among the logged ones) under each resample's counts
    [R, n]: [len(choices), R]. `quality` [n, m] holds the judged qualities (read at the answered column)."""
    q = np.asarray(quality, dtype=np.float64)
    w = np.asarray(counts, dtype=np.float64)
    rows = np.flatnonzero(logged.answered >= 0)
    a, p, cost = logged.answered[rows], logged.propensity[rows], logged.cost[rows]
    r = q[rows, a]
    if np.isnan(r).any():
        raise ValueError("routing_values: the answered model's quality is not judged on a logged prompt")
    m = cost.shape[1]
    judged = np.bincount(a, minlength=m)
    baseline = np.where(judged > 0, np.bincount(a, weights=r, minlength=m) / np.maximum(judged, 1), r.mean())
    w = w[:, rows]
    total = np.maximum(w.sum(axis=1), 1e-12)  # a resample that draws no logged prompt: every value 0
    ends = cost.copy()
    ends[~np.isfinite(ends)] = -np.inf
    dearest = (w @ ends.max(axis=1)) / total  # [R]
    out = np.empty((len(choices), w.shape[0]))
    at = np.arange(rows.size)
    for f, family in enumerate(choices):
        pi = np.asarray(family)[:, rows]
        if (pi < 0).any():
            raise ValueError("routing_values: a policy has no model for a logged prompt")
        value = baseline[pi] + (pi == a) * ((r - baseline[a]) / p)  # [K, rows]
        spend = cost[at, pi]  # [K, rows]
        quality_r = (w @ value.T) / total[:, None]  # [R, K]
        cost_r = (w @ spend.T) / total[:, None]
        for i in range(w.shape[0]):
            hull = upper_hull(np.stack([cost_r[i], quality_r[i]], axis=1))
            lo, hi = float(cost_r[i].min()), float(dearest[i])
            out[f, i] = aiq(hull, lo, hi) if hi > lo else float(hull[-1, 1])
    return out
