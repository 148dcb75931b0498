"""Choosing among N priced models from predicted qualities: the cost policies, for the server and the
offline evaluation alike.

Every policy takes q_hat [n, m] (each model's predicted quality on each prompt, in [0, 1]) and c_hat
[n, m] or [m] (each model's expected cost of answering it, USD) and returns one column per row:

    max_utility(lam)      argmax q_hat - lam x c_hat            (lam = inf: the cheapest model)
    within_margin(margin) the cheapest model predicted within `margin` of the best predicted
    quality_floor(floor)  the cheapest model predicted at or above `floor`; none: the best predicted

Ties go to the cheaper model, then the better predicted one, then the lower column. `runner_up` is
the column each policy would pick with the chosen one left out: what the server reports next to its
choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["POLICIES", "choose", "choose_max_utility", "choose_quality_floor", "choose_within_margin", "runner_up"]

Array = npt.NDArray[np.float64]
Columns = npt.NDArray[np.int64]


def _cheapest_among(ok: npt.NDArray[np.bool_], q_hat: Array, c_hat: Array) -> Columns:
    """Per row, among the columns where `ok` holds, the cheapest; ties: higher q_hat, then lower index."""
    cost = np.where(ok, c_hat, np.inf)
    least = cost.min(axis=1, keepdims=True)
    tied = ok & (cost <= least)
    picked: Columns = np.argmax(np.where(tied, q_hat, -np.inf), axis=1)
    return picked


def _as_cost(c_hat: npt.ArrayLike, shape: tuple[int, ...]) -> Array:
    c = np.asarray(c_hat, dtype=np.float64)
    return c if c.shape == shape else np.broadcast_to(c, shape)


def _usable(q_hat: Array, allowed: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.bool_]:
    return np.ones(q_hat.shape, dtype=bool) if allowed is None else allowed


def choose_max_utility(
    q_hat: Array, c_hat: npt.ArrayLike, lam: float, allowed: npt.NDArray[np.bool_] | None = None
) -> Columns:
    """argmax_j q_hat[i, j] - lam x c_hat[i, j] per prompt (`lam` = inf: the cheapest expected model)."""
    if math.isnan(lam) or lam < 0:
        raise ValueError(f"lam: must be >= 0 (got {lam})")
    c = _as_cost(c_hat, q_hat.shape)
    ok = _usable(q_hat, allowed)
    if math.isinf(lam):
        return _cheapest_among(ok, q_hat, c)
    utility = np.where(ok, q_hat - lam * c, -np.inf)
    best = utility.max(axis=1, keepdims=True)
    return _cheapest_among(ok & (utility >= best - 1e-12), q_hat, c)


def choose_within_margin(
    q_hat: Array, c_hat: npt.ArrayLike, margin: float, allowed: npt.NDArray[np.bool_] | None = None
) -> Columns:
    """The cheapest model whose predicted quality is >= the best predicted - `margin`."""
    c = _as_cost(c_hat, q_hat.shape)
    ok = _usable(q_hat, allowed)
    best = np.where(ok, q_hat, -np.inf).max(axis=1, keepdims=True)
    return _cheapest_among(ok & (q_hat >= best - margin - 1e-12), q_hat, c)


def choose_quality_floor(
    q_hat: Array, c_hat: npt.ArrayLike, floor: float, allowed: npt.NDArray[np.bool_] | None = None
) -> Columns:
    """The cheapest model predicted at or above `floor`; where none is, the best predicted."""
    c = _as_cost(c_hat, q_hat.shape)
    usable = _usable(q_hat, allowed)
    ok = usable & (q_hat >= floor)
    best = choose_within_margin(q_hat, c, 0.0, usable)
    return np.where(ok.any(axis=1), _cheapest_among(ok, q_hat, c), best)


POLICIES: dict[str, Callable[..., Columns]] = {
    "cost_weight": choose_max_utility,
    "quality_margin": choose_within_margin,
    "quality_floor": choose_quality_floor,
}
"""The policies by their proto field name (lmroute.v1.ModelPolicy)."""


def choose(policy: str, value: float, q_hat: Array, c_hat: npt.ArrayLike) -> Columns:
    """The column `POLICIES[policy]` picks per row at `value`."""
    return POLICIES[policy](q_hat, c_hat, value)


def runner_up(
    policy: str, value: float, q_hat: Array, c_hat: npt.ArrayLike, chosen: Sequence[int] | Columns
) -> Columns:
    """Per row, the column the policy picks with `chosen` left out; -1 where only one column exists."""
    n, m = q_hat.shape
    if m < 2:
        return np.full(n, -1, dtype=np.int64)
    allowed = np.ones((n, m), dtype=bool)
    allowed[np.arange(n), np.asarray(chosen, dtype=np.int64)] = False
    return POLICIES[policy](q_hat, _as_cost(c_hat, q_hat.shape), value, allowed)
