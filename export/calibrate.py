"""Threshold calibration: the manifest's ``calibration`` block (docs/BUNDLE.md).

For a target share p of calls sent to the strong model, the threshold is the (1 - p) quantile of
the router's scores over a reference prompt set (NumPy's default linear interpolation). The ends are
exact: p = 0 gives a threshold just above every score (``nextafter(max, +inf)``, capped at 1.0 because
the manifest keeps thresholds in [0, 1]; only prompts scoring exactly 1.0 then still go strong), p = 1
gives the lowest score, so routing with ``score >= threshold`` sends none / all of the reference
prompts to the strong model. With distinct scores, threshold(p) sends a share within 1/n of p to
the strong model on the reference prompts themselves; tied scores can only move together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lmroute.bundle.manifest import Calibration

__all__ = [
    "DEFAULT_SHARES",
    "MIN_CALIBRATION_PROMPTS",
    "calibration_for_manifest",
    "calibration_table",
    "thresholds_for_shares",
]

DEFAULT_SHARES: NDArray[np.float64] = np.linspace(0.0, 1.0, 101)
"""The manifest's 101 strong-call shares 0.00, 0.01, ..., 1.00."""
MIN_CALIBRATION_PROMPTS = 100
"""The fewest distinct prompts a table is calibrated on (`calibrate --prompts`, an adaptation's recent
prompts): the grid runs in 1 % steps, so with fewer than 100 prompts neighbouring shares fall between the
same two scores and their thresholds only interpolate (one prompt: every threshold equal); a --quick
build calibrates on 200."""


def _check_shares(shares: ArrayLike) -> NDArray[np.float64]:
    p = np.asarray(shares, dtype=np.float64)
    if p.ndim != 1 or p.size < 2:
        raise ValueError(f"shares: expected a 1-D array of >= 2 values, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("shares: every value must be a finite fraction in [0, 1]")
    if not np.all(np.diff(p) > 0):
        raise ValueError("shares: must be strictly increasing")
    return p


def thresholds_for_shares(
    scores: ArrayLike, shares: ArrayLike = DEFAULT_SHARES, *, cap: float | None = 1.0
) -> NDArray[np.float64]:
    """Threshold per strong share: the (1 - p) quantile of ``scores``; non-increasing in p.

    p = 0 maps to ``nextafter(max(scores), +inf)`` (at most ``cap``; None for no cap) and p = 1 to
    ``min(scores)``.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores: expected a non-empty 1-D array, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores: contains NaN or infinite values")
    p = _check_shares(shares)
    t = np.quantile(s, 1.0 - p)
    top = np.nextafter(s.max(), np.inf)
    if cap is not None and top > cap >= s.max():
        top = np.float64(cap)
    t[p == 0.0] = top
    t[p == 1.0] = s.min()
    # Guard against rounding in the interpolation: never increase with p.
    return np.minimum.accumulate(t)


def calibration_table(
    scores_by_router: Mapping[str, ArrayLike],
    shares: ArrayLike = DEFAULT_SHARES,
    *,
    source: str | None = None,
) -> dict[str, Any]:
    """The manifest's ``calibration`` block for every router, as plain JSON-ready values.

    Args:
        scores_by_router: router name -> scores of the same reference prompts, same order [n].
        shares: strong-call shares, strictly increasing fractions in [0, 1] (default 101 points).
        source: description of the reference prompts; included as ``"source"`` when given.

    Returns:
        ``{"source"?, "n_prompts", "strong_share": [...], "thresholds": {router: [...]}}``.
    """
    if not scores_by_router:
        raise ValueError("scores_by_router: is empty")
    p = _check_shares(shares)
    sizes = {name: np.asarray(s).size for name, s in scores_by_router.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"scores_by_router: routers were scored on different numbers of prompts: {sizes}")
    thresholds: dict[str, list[float]] = {}
    for name, scores in scores_by_router.items():
        try:
            thresholds[name] = [float(v) for v in thresholds_for_shares(scores, p)]
        except ValueError as err:
            raise ValueError(f"scores_by_router[{name!r}]: {err}") from None
    block: dict[str, Any] = {}
    if source is not None:
        block["source"] = source
    block["n_prompts"] = int(next(iter(sizes.values())))
    block["strong_share"] = [float(v) for v in p]
    block["thresholds"] = thresholds
    return block


def calibration_for_manifest(
    scores_by_router: Mapping[str, ArrayLike],
    *,
    source: str,
    shares: ArrayLike = DEFAULT_SHARES,
) -> Calibration:
    """``calibration_table`` as the manifest's ``Calibration`` (checked: shares 0..1, thresholds in
    [0, 1] and non-increasing); hand it to ``write_bundle`` or ``update_calibration``."""
    block = calibration_table(scores_by_router, shares, source=source)
    calib = Calibration(
        source=source,
        n_prompts=block["n_prompts"],
        strong_share=tuple(block["strong_share"]),
        thresholds={name: tuple(v) for name, v in block["thresholds"].items()},
    )
    calib.check()
    return calib
