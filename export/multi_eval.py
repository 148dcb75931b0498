"""Cost-quality evaluation of routing among N priced models.

Every router here is judged by the (mean cost, mean quality) of the answers it picks, given the true
quality [n, m] and cost [n, m] matrices of a held-out set:

* ``operating_point``: one choice per prompt -> (mean cost, mean quality).
* ``single_model_points``: each model answering everything.
* ``oracle_choice``: per prompt, the cheapest model among those with the best true quality.
* ``upper_hull``: the non-decreasing concave hull of a set of points. Any point on a segment between
  two points is reachable by flipping a biased coin per prompt between the two configurations, and
  paying more may always be declined, so the hull is what a router with these points can deliver at
  each budget. The hull of the single models is the "random mix" line.
* ``aiq``: RouterBench's Average Improvement in Quality (Hu et al. 2024, arXiv 2403.12031): the mean
  of the hull's quality over a cost range [lo, hi]. Here the hull is flat beyond its last point and 0
  below its first (a budget under the cheapest configuration buys nothing); the benchmark uses the
  cheapest to the dearest single model as the range, so every curve that contains the cheapest model
  covers it whole.
* ``cost_to_reach``: the least budget at which a hull reaches a quality (None if never);
  ``hull_quality_at``: the hull's quality at a budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CurvePoint",
    "aiq",
    "cost_to_reach",
    "hull_quality_at",
    "operating_point",
    "oracle_choice",
    "single_model_points",
    "sweep",
    "upper_hull",
]


@dataclass(frozen=True)
class CurvePoint:
    """One operating point: the knob value that made it, mean cost (USD per prompt), mean quality,
    and the share of prompts sent to each model."""

    param: float
    cost: float
    quality: float
    shares: tuple[float, ...]


def _check(quality: np.ndarray, cost: np.ndarray) -> None:
    if quality.ndim != 2 or quality.shape != cost.shape:
        raise ValueError(f"quality {quality.shape} and cost {cost.shape} must be equal [n, m] shapes")


def operating_point(quality: np.ndarray, cost: np.ndarray, choice: np.ndarray) -> tuple[float, float]:
    """(mean cost, mean quality) when prompt i is answered by model ``choice[i]``."""
    _check(quality, cost)
    choice = np.asarray(choice, dtype=np.int64)
    if choice.shape != (quality.shape[0],):
        raise ValueError(f"choice has shape {choice.shape}, expected ({quality.shape[0]},)")
    if choice.size and (choice.min() < 0 or choice.max() >= quality.shape[1]):
        raise ValueError(f"choice values must be model indices in [0, {quality.shape[1]})")
    rows = np.arange(quality.shape[0])
    return float(cost[rows, choice].mean()), float(quality[rows, choice].mean())


def single_model_points(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """[m, 2]: (mean cost, mean quality) of each model answering every prompt."""
    _check(quality, cost)
    return np.stack([cost.mean(axis=0), quality.mean(axis=0)], axis=1)


def oracle_choice(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per prompt, the cheapest model among those with the highest true quality (ties: lower index)."""
    _check(quality, cost)
    best = quality.max(axis=1, keepdims=True)
    masked = np.where(quality >= best, cost, np.inf)
    return np.asarray(np.argmin(masked, axis=1))


def sweep(
    quality: np.ndarray,
    cost: np.ndarray,
    choose: Callable[[float], np.ndarray],
    params: Sequence[float],
) -> list[CurvePoint]:
    """The operating point of ``choose(p)`` (one model index per prompt) for every knob value ``p``."""
    points = []
    m = quality.shape[1]
    for p in params:
        choice = np.asarray(choose(float(p)), dtype=np.int64)
        c, q = operating_point(quality, cost, choice)
        shares = np.bincount(choice, minlength=m) / max(len(choice), 1)
        points.append(CurvePoint(float(p), c, q, tuple(float(s) for s in shares)))
    return points


def upper_hull(points: np.ndarray) -> np.ndarray:
    """The non-decreasing concave hull of (cost, quality) points, as its vertices [k, 2] by cost.

    Starts at the cheapest point (the best quality among equally cheap ones) and ends at the cheapest
    point of the highest quality; between them, the upper convex hull."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 0:
        raise ValueError("upper_hull: no points")
    # sort by cost, then by quality descending, and keep the best quality per cost
    order = np.lexsort((-pts[:, 1], pts[:, 0]))
    pts = pts[order]
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = pts[1:, 0] != pts[:-1, 0]
    pts = pts[keep]
    # drop everything after the first point of the highest quality (paying more buys nothing)
    top = int(np.argmax(pts[:, 1]))
    pts = pts[: top + 1]
    hull: list[np.ndarray] = []
    for p in pts:
        if hull and p[1] <= hull[-1][1]:
            continue  # a dearer point that is no better never lies on a non-decreasing hull
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            # drop the middle point when it lies on or below the chord from hull[-2] to p
            if (y2 - y1) * (p[0] - x1) <= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    return np.array(hull)


def hull_quality_at(hull: np.ndarray, budget: float) -> float:
    """The hull's quality at mean cost ``budget``: 0 below its first vertex, flat beyond its last."""
    if budget < hull[0, 0]:
        return 0.0
    return float(np.interp(budget, hull[:, 0], hull[:, 1]))


def aiq(hull: np.ndarray, lo: float, hi: float) -> float:
    """Mean of the hull's quality over budgets [lo, hi] (RouterBench's AIQ): the exact area under the
    piecewise-linear hull (0 below its first vertex, flat beyond its last) divided by hi - lo."""
    if not hi > lo:
        raise ValueError(f"aiq: need hi > lo, got [{lo}, {hi}]")
    xs = np.concatenate([[lo], hull[(hull[:, 0] > lo) & (hull[:, 0] < hi), 0], [hi]])
    start = hull[0, 0]
    if lo < start < hi:
        xs = np.unique(np.concatenate([xs, [start]]))
    area = 0.0
    for a, b in zip(xs[:-1], xs[1:], strict=True):
        if b <= start:
            continue  # quality 0 there
        ya, yb = hull_quality_at(hull, max(a, start)), hull_quality_at(hull, b)
        area += 0.5 * (ya + yb) * (b - max(a, start))
    return area / (hi - lo)


def cost_to_reach(hull: np.ndarray, target: float, *, atol: float = 1e-12) -> float | None:
    """The least budget at which the hull's quality is >= ``target`` (None when it never is)."""
    if hull[-1, 1] < target - atol:
        return None
    if hull[0, 1] >= target - atol:
        return float(hull[0, 0])
    k = int(np.argmax(hull[:, 1] >= target - atol))
    (x1, y1), (x2, y2) = hull[k - 1], hull[k]
    return float(x1 + (target - y1) * (x2 - x1) / (y2 - y1))
