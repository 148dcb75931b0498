"""How well a score orders prompts by what the strong model gains on them: `gain_area` (pure NumPy).

Route the top fraction s of prompts (by score) to the strong model; the mean quality then is
mean(weak) + G(s), where G(s) = (sum of the gains of the routed prompts) / n and gain = strong quality -
weak quality. `gain_area` = the integral of G over s in [0, 1], exact over every operating point (one per
prompt), with tied scores taking their expected value under a random order among the tie. APGR on the
same prompts at full resolution is gain_area / mean(gain); a random order scores mean(gain) / 2.

The gain may be an estimate per prompt (a doubly robust pseudo-outcome from single outcomes): the area
is linear in the gains, so an unbiased gain per prompt gives an unbiased area.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["gain_area", "gain_area_apgr", "gain_areas"]


def gain_area(scores: npt.ArrayLike, gain: npt.ArrayLike) -> float:
    """The integral over the strong share s of G(s) (module docstring); scores and gain are [n], n >= 1."""
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(gain, dtype=np.float64)
    if s.ndim != 1 or s.shape != g.shape or s.size == 0:
        raise ValueError(f"gain_area: scores {s.shape} and gain {g.shape} must be the same non-empty 1-D shape")
    return float(gain_areas(s, g, np.ones((1, s.size)))[0])


def gain_areas(scores: npt.ArrayLike, gain: npt.ArrayLike, weights: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """`gain_area` of the same prompts under several weightings at once: row r of `weights` [R, n] counts
    each prompt that many times (a bootstrap resample: a prompt drawn k times is k tied copies); each
    row's weights must sum to more than 0. Returns [R]. The order is sorted once for every row."""
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(gain, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    # tie groups: the curve is linear inside a group, so its end points carry the expectation exactly
    ends = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))
    w_sorted = w[:, order]
    total = w_sorted.sum(axis=1, keepdims=True)
    zero = np.zeros_like(total)
    x = np.hstack([zero, np.cumsum(w_sorted, axis=1)[:, ends]]) / total
    cum = np.hstack([zero, np.cumsum(w_sorted * g[order], axis=1)[:, ends]]) / total
    out: npt.NDArray[np.float64] = np.sum((x[:, 1:] - x[:, :-1]) * (cum[:, 1:] + cum[:, :-1]) / 2.0, axis=1)
    return out


def gain_area_apgr(scores: npt.ArrayLike, strong_q: npt.ArrayLike, weak_q: npt.ArrayLike) -> float:
    """APGR at full resolution: gain_area / mean(gain) (gain = strong_q - weak_q, whose mean must not be 0)."""
    gain = np.asarray(strong_q, dtype=np.float64) - np.asarray(weak_q, dtype=np.float64)
    mean = float(gain.mean())
    if mean == 0.0:
        raise ValueError("gain_area_apgr: the strong and weak models have the same mean quality")
    return gain_area(scores, gain) / mean
