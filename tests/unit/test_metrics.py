"""Tests of lmroute.export.metrics on hand-computed curves."""

from __future__ import annotations

import numpy as np
import pytest

from lmroute.export.metrics import (
    Curve,
    apgr,
    cpt,
    curve_on_grid,
    oracle_scores,
    pgr,
    quality_curve,
    random_baseline,
    router_metrics,
)

# Four prompts, sorted by score: 0.1, 0.4, 0.6, 0.9.
#   score  strong  weak
#   0.9    1       0     strong better
#   0.6    1       1     tie
#   0.4    0       1     weak better
#   0.1    1       0     strong better
# strong mean = 3/4 = 0.75, weak mean = 2/4 = 0.5, gap 0.25.
SCORES = np.array([0.9, 0.6, 0.4, 0.1])
STRONG = np.array([1.0, 1.0, 0.0, 1.0])
WEAK = np.array([0.0, 1.0, 1.0, 0.0])


def test_quality_curve_hand_computed() -> None:
    # Deciles of 4 sorted scores sit at positions 3*q = 0, 0.3, ..., 2.7, 3: every position in
    # (0, 1) gives an edge between 0.1 and 0.4 (3 of 4 strong), (1, 2) -> 2 of 4, (2, 3) -> 1 of 4,
    # position 0 -> edge 0.1 (all strong), position 3 -> edge 0.9 (1 of 4). Plus the 0 % end.
    #   0 strong:              (0 + 1 + 1 + 0) / 4 = 0.5
    #   top 1 (0.9):           (1 + 1 + 1 + 0) / 4 = 0.75
    #   top 2 (0.9, 0.6):      (1 + 1 + 1 + 0) / 4 = 0.75
    #   top 3 (+0.4):          (1 + 1 + 0 + 0) / 4 = 0.5
    #   all 4:                 (1 + 1 + 0 + 1) / 4 = 0.75
    c = quality_curve(SCORES, STRONG, WEAK)
    np.testing.assert_allclose(c.strong_share, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(c.quality, [0.5, 0.75, 0.75, 0.5, 0.75])
    assert c.strong_mean == 0.75 and c.weak_mean == 0.5
    # The 0 % point's threshold is just above the highest score; the 100 % point's is the lowest.
    assert c.thresholds[0] > 0.9 and c.thresholds[0] == np.nextafter(0.9, np.inf)
    assert c.thresholds[-1] == 0.1
    assert np.all(np.diff(c.thresholds) < 0)
    np.testing.assert_allclose(c.pgr(), [0.0, 1.0, 1.0, 0.0, 1.0])


def test_apgr_and_cpt_hand_computed() -> None:
    c = quality_curve(SCORES, STRONG, WEAK)
    # Trapezoids of width 0.25: (0.5+0.75)/2 + (0.75+0.75)/2 + (0.75+0.5)/2 + (0.5+0.75)/2
    #   = 0.625 + 0.75 + 0.625 + 0.625 = 2.625; AUC = 2.625 * 0.25 = 0.65625
    # APGR = (0.65625 - 0.5) / 0.25 = 0.625
    assert apgr(c) == pytest.approx(0.625)
    assert apgr(c, 0.75, 0.5) == pytest.approx(0.625)
    # PGR goes 0 -> 1 between shares 0 and 0.25: CPT(x) = 0.25 * x.
    assert cpt(c, 0.5) == pytest.approx(0.125)
    assert cpt(c, 0.8) == pytest.approx(0.2)
    assert cpt(c, 1.0) == pytest.approx(0.25)
    assert cpt(c, 0.0) == 0.0
    m = router_metrics(SCORES, STRONG, WEAK)
    assert m.apgr == pytest.approx(0.625)
    assert m.cpt == pytest.approx({0.2: 0.05, 0.5: 0.125, 0.8: 0.2})


def _curve(shares: list[float], pgrs: list[float]) -> Curve:
    # weak 0, strong 1: quality == PGR.
    return Curve(
        strong_share=np.array(shares),
        quality=np.array(pgrs),
        thresholds=np.linspace(1.0, 0.0, len(shares)),
        strong_mean=1.0,
        weak_mean=0.0,
    )


def test_cpt_linear_interpolation() -> None:
    c = _curve([0.0, 0.2, 0.6, 1.0], [0.0, 0.3, 0.9, 1.0])
    # Target 0.5 lies between (0.2, 0.3) and (0.6, 0.9): 0.2 + (0.5 - 0.3) / 0.6 * 0.4 = 0.3333...
    assert cpt(c, 0.5) == pytest.approx(0.2 + 0.2 / 0.6 * 0.4)
    # Target 0.95 between (0.6, 0.9) and (1.0, 1.0): 0.6 + 0.05 / 0.1 * 0.4 = 0.8
    assert cpt(c, 0.95) == pytest.approx(0.8)


def test_cpt_takes_first_crossing() -> None:
    # PGR rises to 0.6, falls to 0.4, ends at 1: target 0.5 is first crossed in the first segment,
    # at 0.5 / 0.6 * 0.2 = 0.1667, not in the last one (0.5 + 0.1 / 0.6 * 0.5 = 0.583).
    c = _curve([0.0, 0.2, 0.5, 1.0], [0.0, 0.6, 0.4, 1.0])
    assert cpt(c, 0.5) == pytest.approx(0.5 / 0.6 * 0.2)


def test_apgr_of_perfect_router() -> None:
    # Strong better only on prompt 0; ties elsewhere. strong mean 0.75, weak mean 0.5.
    strong = np.array([1.0, 0.0, 1.0, 1.0])
    weak = np.array([0.0, 0.0, 1.0, 1.0])
    s = oracle_scores(strong, weak)
    np.testing.assert_array_equal(s, [1.0, 0.5, 0.5, 0.5])
    c = quality_curve(s, strong, weak)
    # Points: 0 -> 0.5; 1/4 (the score-1 prompt) -> 0.75; 1 -> 0.75.
    np.testing.assert_allclose(c.strong_share, [0.0, 0.25, 1.0])
    np.testing.assert_allclose(c.quality, [0.5, 0.75, 0.75])
    # AUC = 0.25 * (0.5 + 0.75) / 2 + 0.75 * 0.75 = 0.15625 + 0.5625 = 0.71875
    # APGR = (0.71875 - 0.5) / 0.25 = 0.875 (= 1 - f / 2 with f = 1/4 strong-better prompts)
    assert apgr(c) == pytest.approx(0.875)
    assert cpt(c, 0.5) == pytest.approx(0.125)


def test_oracle_scores_values() -> None:
    np.testing.assert_array_equal(oracle_scores([9.0, 8.0, 7.5], [8.5, 8.0, 9.0]), [1.0, 0.5, 0.0])


def test_graded_oracle_orders_by_gain() -> None:
    # Gains 1.0, 0, -2.0, 0.5 over max |gain| 2: 0.5 + 0.5 * gain / 2 = 0.75, 0.5, 0.0, 0.625.
    strong = np.array([9.0, 8.0, 6.0, 8.5])
    weak = np.array([8.0, 8.0, 8.0, 8.0])
    np.testing.assert_allclose(oracle_scores(strong, weak, graded=True), [0.75, 0.5, 0.0, 0.625])
    # On 0/1 correctness graded and ternary scores agree.
    s, w = np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(oracle_scores(s, w, graded=True), oracle_scores(s, w))
    np.testing.assert_array_equal(oracle_scores(w, w, graded=True), np.full(4, 0.5))


def test_pgr_scalar_and_array() -> None:
    assert pgr(8.745, 9.21, 8.28) == pytest.approx(0.5)
    np.testing.assert_allclose(pgr(np.array([0.681, 0.806]), 0.806, 0.681), [0.0, 1.0])
    with pytest.raises(ValueError, match="must differ"):
        pgr(0.5, 0.7, 0.7)


def test_random_router_is_about_half_on_large_n() -> None:
    rng = np.random.default_rng(123)
    n = 20_000
    strong = (rng.random(n) < 0.8).astype(float)
    weak = (rng.random(n) < 0.65).astype(float)
    base = random_baseline(n, strong, weak, seeds=10)
    assert base.apgr_values.shape == (10,)
    assert base.apgr_mean == pytest.approx(0.5, abs=0.02)
    assert base.cpt_mean[0.5] == pytest.approx(0.5, abs=0.04)
    assert 0.0 < base.apgr_std < 0.05
    assert base.apgr_std == pytest.approx(np.std(base.apgr_values, ddof=1))
    # The mean random curve is close to the straight line from weak to strong.
    line = strong.mean() * base.grid + weak.mean() * (1 - base.grid)
    np.testing.assert_allclose(base.quality_mean, line, atol=0.01)


def test_random_baseline_is_deterministic() -> None:
    strong = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    weak = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    a = random_baseline(6, strong, weak, seeds=3)
    b = random_baseline(6, strong, weak, seeds=3)
    np.testing.assert_array_equal(a.apgr_values, b.apgr_values)
    assert a.seeds == (0, 1, 2)


def test_curve_with_all_scores_tied_has_two_points() -> None:
    c = quality_curve(np.full(5, 0.3), np.ones(5), np.zeros(5))
    np.testing.assert_allclose(c.strong_share, [0.0, 1.0])
    assert apgr(c) == pytest.approx(0.5)
    np.testing.assert_allclose(curve_on_grid(c, [0.0, 0.5, 1.0]), [0.0, 0.5, 1.0])


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        quality_curve([0.1, 0.2], [1.0], [0.0])
    with pytest.raises(ValueError, match="scores: contains NaN"):
        quality_curve([np.nan, 0.2], [1.0, 1.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="target_pgr"):
        cpt(quality_curve(SCORES, STRONG, WEAK), 50.0)
    with pytest.raises(ValueError, match="n_prompts"):
        random_baseline(5, STRONG, WEAK)
