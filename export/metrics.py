"""Routing metrics of the RouteLLM evaluation protocol (pure NumPy).

What this module holds:

- ``Curve``: the cost-quality curve of one router on one benchmark (share of calls sent to the strong
  model vs. mean quality of the chosen answers), built by ``quality_curve`` with thresholds at the
  deciles of the router's scores (the paper's 11 operating points) plus both end points.
- ``pgr``: performance gap recovered, (quality - weak) / (strong - weak).
- ``cpt``: call-performance threshold, the share of strong calls needed to reach a target PGR (linear
  interpolation on the curve, first crossing). Returned as a fraction in [0, 1]; multiply by 100 for %.
- ``apgr``: average PGR, the trapezoid area under the curve over strong share 0..1, normalised.
- ``router_metrics``: curve + APGR + CPT at several targets in one call.
- ``random_baseline``: the same metrics for U(0, 1) scores, mean and sample std over seeds.
- ``oracle_scores``: the scores of a perfect router (1 where the strong answer is strictly better,
  0.5 on a tie, 0 otherwise; or, graded, ordered by the strong model's quality gain).

Conventions: every share and PGR target is a fraction, not a percentage. Route to strong when
``score >= threshold`` (docs/BUNDLE.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_CPT_TARGETS",
    "Curve",
    "RandomBaseline",
    "RouterMetrics",
    "apgr",
    "cpt",
    "curve_on_grid",
    "oracle_scores",
    "pgr",
    "quality_curve",
    "random_baseline",
    "router_metrics",
]

DEFAULT_CPT_TARGETS: tuple[float, ...] = (0.2, 0.5, 0.8)
"""PGR targets reported by default: CPT(20 %), CPT(50 %), CPT(80 %)."""


@dataclass(frozen=True, kw_only=True)
class Curve:
    """Cost-quality curve of one router on one benchmark.

    Attributes:
        strong_share: fraction of prompts routed to the strong model at each point, increasing,
            distinct, first 0.0 and last 1.0 [k].
        quality: mean quality of the chosen model's answers at each point [k].
        thresholds: score threshold giving each point (route strong if score >= threshold) [k].
        strong_mean: mean quality when every prompt goes to the strong model (= quality[-1]).
        weak_mean: mean quality when every prompt goes to the weak model (= quality[0]).
    """

    strong_share: NDArray[np.float64]
    quality: NDArray[np.float64]
    thresholds: NDArray[np.float64]
    strong_mean: float
    weak_mean: float

    def pgr(self) -> NDArray[np.float64]:
        """PGR at every point of the curve."""
        return np.asarray(pgr(self.quality, self.strong_mean, self.weak_mean), dtype=np.float64)


@dataclass(frozen=True, kw_only=True)
class RouterMetrics:
    """Curve, APGR and CPT of one router on one benchmark.

    Attributes:
        curve: the cost-quality curve.
        apgr: average performance gap recovered.
        cpt: PGR target (fraction) -> share of strong calls needed (fraction).
    """

    curve: Curve
    apgr: float
    cpt: Mapping[float, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RandomBaseline:
    """Metrics of the random router (U(0, 1) scores) over several seeds.

    Attributes:
        seeds: the seeds used, one run each.
        apgr_values: APGR of each seed [n_seeds].
        cpt_values: PGR target -> CPT of each seed [n_seeds].
        apgr_mean, apgr_std: mean and sample standard deviation (ddof=1) of ``apgr_values``.
        cpt_mean, cpt_std: the same per PGR target.
        grid: strong shares of the averaged curve [g].
        quality_mean, quality_std: mean and sample std over seeds of the curves on ``grid`` [g].
    """

    seeds: tuple[int, ...]
    apgr_values: NDArray[np.float64]
    cpt_values: Mapping[float, NDArray[np.float64]]
    apgr_mean: float
    apgr_std: float
    cpt_mean: Mapping[float, float]
    cpt_std: Mapping[float, float]
    grid: NDArray[np.float64]
    quality_mean: NDArray[np.float64]
    quality_std: NDArray[np.float64]


def _as_1d(name: str, values: ArrayLike) -> NDArray[np.float64]:
    """Return ``values`` as a finite, non-empty float64 vector, or raise naming ``name``."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def _check_inputs(
    scores: ArrayLike, strong_q: ArrayLike, weak_q: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    s = _as_1d("scores", scores)
    sq = _as_1d("strong_q", strong_q)
    wq = _as_1d("weak_q", weak_q)
    if not (s.shape == sq.shape == wq.shape):
        raise ValueError(f"scores, strong_q, weak_q: lengths differ ({s.size}, {sq.size}, {wq.size})")
    return s, sq, wq


def quality_curve(scores: ArrayLike, strong_q: ArrayLike, weak_q: ArrayLike, n_edges: int = 11) -> Curve:
    """Cost-quality curve with thresholds at ``n_edges`` evenly spaced quantiles of ``scores``.

    At each edge t, a prompt goes to the strong model when ``score >= t``; the point is
    (fraction routed strong, mean quality of the chosen answers). The end points 0 % strong
    (threshold just above the highest score) and 100 % strong (threshold = lowest score) are
    always present. Points with the same strong share (tied scores) are merged; the result is
    sorted by strong share.

    Args:
        scores: router score per prompt [n].
        strong_q: quality of the strong model's answer per prompt [n].
        weak_q: quality of the weak model's answer per prompt [n].
        n_edges: number of quantile edges (11 = the deciles, the paper's protocol); >= 2.
    """
    if n_edges < 2:
        raise ValueError(f"n_edges: must be >= 2, got {n_edges}")
    s, sq, wq = _check_inputs(scores, strong_q, weak_q)
    edges = np.quantile(s, np.linspace(0.0, 1.0, n_edges))
    above_all = np.nextafter(s.max(), np.inf)
    thresholds = np.unique(np.concatenate([edges, [s.min(), above_all]]))  # sorted, distinct
    routed = s[None, :] >= thresholds[:, None]  # [k, n]
    share = routed.mean(axis=1)
    quality = np.where(routed, sq[None, :], wq[None, :]).mean(axis=1)
    # Thresholds ascend, so shares descend; keep one point per distinct share, ascending share.
    order = np.argsort(share, kind="stable")
    share, quality, thresholds = share[order], quality[order], thresholds[order]
    keep = np.concatenate([[True], np.diff(share) > 0])
    return Curve(
        strong_share=share[keep],
        quality=quality[keep],
        thresholds=thresholds[keep],
        strong_mean=float(sq.mean()),
        weak_mean=float(wq.mean()),
    )


def pgr(quality: ArrayLike, strong_mean: float, weak_mean: float) -> float | NDArray[np.float64]:
    """Performance gap recovered: (quality - weak_mean) / (strong_mean - weak_mean).

    Works on a scalar (returns float) or an array (returns an array).
    """
    gap = float(strong_mean) - float(weak_mean)
    if gap == 0.0 or not np.isfinite(gap):
        raise ValueError(f"pgr: strong_mean ({strong_mean}) and weak_mean ({weak_mean}) must differ and be finite")
    q = np.asarray(quality, dtype=np.float64)
    out = (q - float(weak_mean)) / gap
    return float(out) if out.ndim == 0 else out


def cpt(curve: Curve, target_pgr: float) -> float:
    """Share of strong calls (fraction) needed to first reach PGR = ``target_pgr`` on ``curve``.

    Walks the curve by increasing strong share and linearly interpolates inside the first segment
    whose end reaches the target. ``target_pgr`` is a fraction in [0, 1] (0.5 for CPT(50 %)); the
    curve always ends at PGR 1, so every such target is reached.
    """
    if not 0.0 <= target_pgr <= 1.0:
        raise ValueError(f"cpt: target_pgr must be a fraction in [0, 1], got {target_pgr}")
    p = curve.pgr()
    x = curve.strong_share
    hits = np.nonzero(p >= target_pgr)[0]
    if hits.size == 0:  # only through float rounding at target 1.0
        return float(x[-1])
    i = int(hits[0])
    if i == 0:
        return float(x[0])
    p0, p1, x0, x1 = p[i - 1], p[i], x[i - 1], x[i]
    return float(x0 + (target_pgr - p0) / (p1 - p0) * (x1 - x0))


def apgr(curve: Curve, strong_mean: float | None = None, weak_mean: float | None = None) -> float:
    """Average PGR: (AUC - weak_mean) / (strong_mean - weak_mean).

    AUC is the trapezoid integral of quality over the strong share from 0 to 1. The means default
    to the curve's own (all-strong and all-weak quality).
    """
    sm = curve.strong_mean if strong_mean is None else strong_mean
    wm = curve.weak_mean if weak_mean is None else weak_mean
    x, q = curve.strong_share, curve.quality
    if x[0] != 0.0 or x[-1] != 1.0:
        raise ValueError(f"apgr: curve must span strong share 0..1, spans {x[0]}..{x[-1]}")
    auc = float(np.sum((x[1:] - x[:-1]) * (q[1:] + q[:-1]) / 2.0))
    return float(pgr(auc, sm, wm))


def curve_on_grid(curve: Curve, grid: ArrayLike) -> NDArray[np.float64]:
    """Quality of ``curve`` linearly interpolated at the strong shares ``grid``."""
    return np.interp(np.asarray(grid, dtype=np.float64), curve.strong_share, curve.quality)


def router_metrics(
    scores: ArrayLike,
    strong_q: ArrayLike,
    weak_q: ArrayLike,
    targets: Sequence[float] = DEFAULT_CPT_TARGETS,
    n_edges: int = 11,
) -> RouterMetrics:
    """Curve, APGR and CPT at each of ``targets`` for one router's scores."""
    curve = quality_curve(scores, strong_q, weak_q, n_edges=n_edges)
    return RouterMetrics(
        curve=curve,
        apgr=apgr(curve),
        cpt={float(t): cpt(curve, float(t)) for t in targets},
    )


def random_baseline(
    n_prompts: int,
    strong_q: ArrayLike,
    weak_q: ArrayLike,
    seeds: int = 10,
    targets: Sequence[float] = DEFAULT_CPT_TARGETS,
    grid_points: int = 101,
    n_edges: int = 11,
) -> RandomBaseline:
    """Metrics of a random router: U(0, 1) scores from ``numpy.random.default_rng(seed)``.

    Runs seeds 0 .. ``seeds`` - 1 and reports mean and sample std (ddof=1) of APGR and CPT, and the
    mean curve on an even grid of ``grid_points`` strong shares (for plots).
    """
    if seeds < 2:
        raise ValueError(f"random_baseline: seeds must be >= 2 for a std, got {seeds}")
    sq = _as_1d("strong_q", strong_q)
    wq = _as_1d("weak_q", weak_q)
    if not (n_prompts == sq.size == wq.size):
        raise ValueError(
            f"random_baseline: n_prompts ({n_prompts}), len(strong_q) ({sq.size}) and "
            f"len(weak_q) ({wq.size}) must agree"
        )
    grid = np.linspace(0.0, 1.0, grid_points)
    seed_list = tuple(range(seeds))
    apgrs = np.empty(seeds)
    cpts = {float(t): np.empty(seeds) for t in targets}
    curves = np.empty((seeds, grid_points))
    for k, seed in enumerate(seed_list):
        scores = np.random.default_rng(seed).random(n_prompts)
        m = router_metrics(scores, sq, wq, targets=targets, n_edges=n_edges)
        apgrs[k] = m.apgr
        for t, v in m.cpt.items():
            cpts[t][k] = v
        curves[k] = curve_on_grid(m.curve, grid)
    return RandomBaseline(
        seeds=seed_list,
        apgr_values=apgrs,
        cpt_values=cpts,
        apgr_mean=float(apgrs.mean()),
        apgr_std=float(apgrs.std(ddof=1)),
        cpt_mean={t: float(v.mean()) for t, v in cpts.items()},
        cpt_std={t: float(v.std(ddof=1)) for t, v in cpts.items()},
        grid=grid,
        quality_mean=curves.mean(axis=0),
        quality_std=curves.std(axis=0, ddof=1),
    )


def oracle_scores(strong_q: ArrayLike, weak_q: ArrayLike, *, graded: bool = False) -> NDArray[np.float64]:
    """Scores of a perfect router: 1 where strong is strictly better, 0.5 on a tie, 0 otherwise.

    With ``graded=True`` the score is ``0.5 + 0.5 * gain / max|gain|`` (gain = strong_q - weak_q):
    the same values on 0/1 correctness, but on graded quality (MT-Bench's 1-10 scores) it also
    orders the prompts by how much the strong model gains, which is the best possible order.
    """
    sq = _as_1d("strong_q", strong_q)
    wq = _as_1d("weak_q", weak_q)
    if sq.shape != wq.shape:
        raise ValueError(f"strong_q, weak_q: lengths differ ({sq.size}, {wq.size})")
    if graded:
        gain = sq - wq
        top = float(np.abs(gain).max())
        return np.full(sq.shape, 0.5) if top == 0.0 else 0.5 + 0.5 * gain / top
    return np.where(sq > wq, 1.0, np.where(sq == wq, 0.5, 0.0))
