"""Holding a strong-model share live: the threshold follows the traffic the router actually sees.

A threshold calibrated once on Arena prompts sends a different share of real traffic to the strong model
as soon as the traffic is not Arena-like (docs/CONTROL.md has the measured gaps). `ShareController` holds
one target share for one router by deciding each prompt against a threshold it keeps moving:

    feed-forward   the threshold is the (1 - s) quantile of the last `window` scores the router gave,
                   so it follows a drifting score distribution within `window` decisions
    feedback       s = target + deficit / repay, where deficit is a leaky sum of (target - decided
                   strong) over the decisions made (leak 1 / horizon): a run of decisions that went strong
                   more (or less) often than the target is paid back over the next `repay` decisions,
                   which keeps every stretch of a few hundred decisions near the target

The window starts as the score distribution the bundle's calibration table describes, so before any
traffic the threshold is the static calibrated one; real scores replace the seed as they come.

The controller's state is a function of the decisions it made and the targets they were made at:
replaying a tenant's recent decisions from the outcome store (`record` in order, each at its own target,
the deficit restarted where the target changed) restores it after a restart (`lmroute.service.targets`).
It is not thread-safe: the server calls it from its event loop only. Cost per decision: two list
insertions into a sorted window (O(window) memory moves).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmroute.bundle.loader import NEVER_STRONG

__all__ = ["ControlSettings", "ControlState", "ShareController", "seed_scores"]


@dataclass(frozen=True)
class ControlSettings:
    """The controller's constants (module docstring), in decisions."""

    window: int = 1000
    horizon: int = 2000
    repay: int = 50
    report_window: int = 500  # the realised share reported is over this many latest decisions

    def __post_init__(self) -> None:
        for name in ("window", "horizon", "repay", "report_window"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1 (got {value!r})")


@dataclass(frozen=True)
class ControlState:
    """What a controller reports: its target, the share it realised over its latest `report_window`
    decisions (NaN before the first), the threshold the next decision meets, and decisions made."""

    target: float
    realised: float
    threshold: float
    decisions: int
    deficit: float


def seed_scores(shares: Sequence[float], thresholds: Sequence[float], n: int) -> list[float]:
    """n scores distributed as a calibration table describes them: the table says a share `shares[k]`
    of calibration prompts scores at least `thresholds[k]`; the k-th of n evenly spaced share levels
    maps to the score at that level (linear between table points, clamped at its ends)."""
    if not shares:
        return [0.5] * n
    s = np.asarray(shares, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    levels = (np.arange(n, dtype=np.float64) + 0.5) / n  # share of prompts at or above the seed score
    return [float(x) for x in np.interp(levels, s, t)]


class ShareController:
    """Decides strong-or-weak for one router at a target strong share, holding it on drifting traffic."""

    def __init__(self, target: float, seed: Sequence[float], settings: ControlSettings | None = None) -> None:
        if not (math.isfinite(target) and 0.0 <= target <= 1.0):
            raise ValueError(f"target: must be in [0, 1] (got {target})")
        self.settings = settings or ControlSettings()
        self.target = float(target)
        window = self.settings.window
        seed = list(seed)[-window:] or [0.5]
        self._ring: deque[float] = deque(seed, maxlen=window)
        self._sorted = sorted(self._ring)
        self._recent: deque[bool] = deque(maxlen=self.settings.report_window)
        self._leak = 1.0 - 1.0 / self.settings.horizon
        self.deficit = 0.0
        self.decisions = 0
        self._threshold = self._quantile()

    def _quantile(self) -> float:
        """The score that the share s = target + deficit / repay of the window reaches or passes."""
        if self.target in (0.0, 1.0):  # never / always strong, whatever the scores
            return NEVER_STRONG if self.target == 0.0 else 0.0  # scores lie in [0, 1]; finite, for JSON
        s = min(1.0, max(0.0, self.target + self.deficit / self.settings.repay))
        ordered = self._sorted
        n = len(ordered)
        k = n - round(s * n)  # the k lowest scores go weak, the rest strong
        if k <= 0:
            return 0.0
        if k >= n:
            return math.nextafter(ordered[-1], math.inf)
        return ordered[k]

    @property
    def threshold(self) -> float:
        """The threshold the next decision meets: strong when score >= threshold."""
        return self._threshold

    def record(self, score: float, strong: bool, made_at: float | None = None) -> None:
        """Account one decision made (by this controller's threshold, or flipped by exploration); `made_at`:
        the target it was made at when that was another (a decision replayed after a restart)."""
        if math.isfinite(score):
            if len(self._ring) == self._ring.maxlen:
                old = self._ring[0]
                del self._sorted[bisect.bisect_left(self._sorted, old)]
            self._ring.append(score)
            bisect.insort(self._sorted, score)
        target = self.target if made_at is None else made_at
        self.deficit = self.deficit * self._leak + (target - float(strong))
        self._recent.append(strong)
        self.decisions += 1
        self._threshold = self._quantile()

    def decide(self, score: float) -> bool:
        """Decide one prompt at the current threshold and account it; True = strong."""
        strong = score >= self._threshold
        self.record(score, strong)
        return strong

    def retarget(self, target: float) -> None:
        """Hold a new target from the next decision on (the window is kept; the deficit restarts)."""
        if not (math.isfinite(target) and 0.0 <= target <= 1.0):
            raise ValueError(f"target: must be in [0, 1] (got {target})")
        self.target = float(target)
        self.deficit = 0.0
        self._threshold = self._quantile()

    def reseeded(self, seed: Sequence[float]) -> ShareController:
        """This controller with its window seeded afresh (another bundle's scores are not comparable with
        these), its deficit, decisions and latest outcomes (the realised share) carried over: what a
        restart replays from the store for decisions of another bundle version."""
        fresh = ShareController(self.target, seed, self.settings)
        fresh.deficit = self.deficit
        fresh.decisions = self.decisions
        fresh._recent.extend(self._recent)
        fresh._threshold = fresh._quantile()
        return fresh

    def state(self) -> ControlState:
        recent = self._recent
        realised = sum(recent) / len(recent) if recent else math.nan
        return ControlState(self.target, realised, self._threshold, self.decisions, self.deficit)
