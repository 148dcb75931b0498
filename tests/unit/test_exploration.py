"""The exploration rule of Route (lmroute.service.exploration): the flip probability is the floor
everywhere plus the band rate near the threshold in strong-share units, its mean over calibration-like
traffic is the configured rate, and every choice carries the probability of the model it chose."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lmroute.service.exploration import BAND_RATE, Exploration, choose_among

# a calibration table: share p of prompts score at least 1 - p (uniform scores)
SHARES = [0.0, 0.25, 0.5, 0.75, 1.0]
THRESHOLDS = [1.0, 0.75, 0.5, 0.25, 0.0]


def test_off_by_default_means_the_policy_with_propensity_one() -> None:
    rule = Exploration(0.0)
    rng = random.Random(0)
    for score in np.linspace(0, 1, 21):
        c = rule.choose(float(score), 0.5, SHARES, THRESHOLDS, rng)
        assert (c.strong, c.flipped, c.propensity) == (score >= 0.5, False, 1.0)


def test_flip_probability_is_the_floor_far_away_and_more_near_the_threshold() -> None:
    rule = Exploration(0.1)
    assert rule.floor == pytest.approx(0.02)
    assert rule.flip_probability(0.95, 0.5, SHARES, THRESHOLDS) == pytest.approx(0.02)
    assert rule.flip_probability(0.52, 0.5, SHARES, THRESHOLDS) == pytest.approx(0.02 + BAND_RATE)
    assert rule.flip_probability(0.5 + rule.band + 0.01, 0.5, SHARES, THRESHOLDS) == pytest.approx(0.02)


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.2, 0.4])
def test_the_mean_flip_rate_on_calibration_like_traffic_is_the_rate(rate: float) -> None:
    rule = Exploration(rate)
    rng = random.Random(7)
    choices = [rule.choose(rng.random(), 0.5, SHARES, THRESHOLDS, rng) for _ in range(40_000)]
    flipped = np.mean([c.flipped for c in choices])
    assert abs(flipped - rate) < 0.01
    for c in choices[:2000]:  # the propensity is the probability of what was chosen
        p = c.propensity if c.flipped else 1.0 - c.propensity
        assert p in (pytest.approx(rule.floor), pytest.approx(rule.floor + rule.band_rate))
    assert rule.floor + rule.band_rate <= 0.5


def test_a_rate_above_half_is_refused() -> None:
    with pytest.raises(ValueError, match=r"explore_rate: must be in \[0, 0.5\] \(got 0.6\)"):
        Exploration(0.6)


def test_choose_among_draws_every_candidate_with_its_stated_propensity() -> None:
    rng = random.Random(7)
    n, rate, policy, draws = 4, 0.2, 2, 40_000
    picks = [choose_among(rate, policy, n, rng) for _ in range(draws)]
    for j in range(n):
        share = sum(p == j for p, _ in picks) / draws
        want = (1 - rate + rate / n) if j == policy else rate / n
        assert abs(share - want) < 0.01
        assert all(prop == pytest.approx(want) for p, prop in picks if p == j)
    assert choose_among(0.0, 1, 3, rng) == (1, 1.0)
    with pytest.raises(ValueError, match="outside 3 candidates"):
        choose_among(0.1, 3, 3, rng)
