"""Exploration for single outcomes: some Route decisions are flipped on purpose, with their propensity.

A single outcome (task success, a thumbs signal) only shows the model that answered. To learn which
prompts the other model would have served better, a small share of decisions is flipped, most of them
where the router is least sure: prompts whose score is near the threshold, measured in strong-share units
through the router's calibration table (`share_above(score)`: the share of calibration prompts scoring
at least `score`). The rule (the one lmroute.adapt.selection measures offline):

    flip probability = floor                 everywhere
                     + band_rate             when |share_above(score) - share_above(threshold)| <= band

For a mean flip rate `rate` (the setting `explore_rate`): floor = rate / 5, band_rate = 0.45 (less when
floor + band_rate would pass 0.5: a flip is never likelier than the policy's choice), and band
chosen so that floor + 2 * band * band_rate = rate on calibration-like traffic. Every decision reports
the probability of the model it chose (`propensity`: 1 - p when it follows the policy, p when flipped),
which the doubly robust learner and the gate need. rate 0 turns exploration off (propensity 1).

Among N candidates (`Route` with `candidates`, `choose_among`): with probability `rate` the model is
drawn uniformly among all the candidates, the policy's own choice included. Its propensity is
(1 - rate) + rate / n for the policy's choice and rate / n for any other, so every candidate keeps
some probability on every prompt: what an off-policy estimate of another policy's value (a candidate
router's, at the gate) needs. The share of decisions that differ from the policy's is rate (n - 1) / n.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Exploration", "ExploredChoice", "choose_among"]

BAND_RATE = 0.45


@dataclass(frozen=True)
class ExploredChoice:
    """One decision: whether it routes strong, whether that was a flip, and its propensity."""

    strong: bool
    flipped: bool
    propensity: float


@dataclass(frozen=True)
class Exploration:
    """The exploration rule at mean flip rate `rate` (module docstring)."""

    rate: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 0.5:
            raise ValueError(f"explore_rate: must be in [0, 0.5] (got {self.rate})")

    @property
    def floor(self) -> float:
        return self.rate / 5.0

    @property
    def band_rate(self) -> float:
        """Added near the threshold; floor + band_rate stays <= 0.5, so a flip is never the likelier choice."""
        return min(BAND_RATE, 0.5 - self.floor)

    @property
    def band(self) -> float:
        return (self.rate - self.floor) / (2.0 * self.band_rate)

    def flip_probability(
        self, score: float, threshold: float, shares: Sequence[float], thresholds: Sequence[float]
    ) -> float:
        """p for one decision; `shares` (increasing) and `thresholds` are the router's calibration table."""
        if self.rate == 0.0:
            return 0.0
        if not shares:  # no calibration table: the floor only
            return self.floor
        distance = abs(_share_above(score, shares, thresholds) - _share_above(threshold, shares, thresholds))
        return self.floor + (self.band_rate if distance <= self.band else 0.0)

    def choose(
        self,
        score: float,
        threshold: float,
        shares: Sequence[float],
        thresholds: Sequence[float],
        rng: random.Random,
    ) -> ExploredChoice:
        """The policy's choice (score >= threshold), flipped with the flip probability."""
        policy = score >= threshold
        p = self.flip_probability(score, threshold, shares, thresholds)
        if p > 0.0 and rng.random() < p:
            return ExploredChoice(strong=not policy, flipped=True, propensity=p)
        return ExploredChoice(strong=policy, flipped=False, propensity=1.0 - p)


def choose_among(rate: float, policy: int, n: int, rng: random.Random) -> tuple[int, float]:
    """Among `n` candidates whose policy chooses `policy`: the candidate served and its propensity
    (module docstring); rate 0 gives (policy, 1.0)."""
    if not 0 <= policy < n:
        raise ValueError(f"choose_among: policy {policy} outside {n} candidates")
    if rate > 0.0 and rng.random() < rate:
        pick = rng.randrange(n)
    else:
        pick = policy
    share = rate / n
    return pick, (1.0 - rate + share) if pick == policy else share


def _share_above(score: float, shares: Sequence[float], thresholds: Sequence[float]) -> float:
    """The calibration share sent strong at threshold `score` (thresholds fall as shares rise)."""
    th = np.asarray(thresholds, dtype=np.float64)[::-1]  # increasing
    sh = np.asarray(shares, dtype=np.float64)[::-1]
    return float(np.interp(score, th, sh))
