"""N-model routing: the cost-quality metrics (hull, AIQ, oracle, match point), the three policies and the
quality predictors, on small matrices whose right answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmroute.export.multi_eval import (
    aiq,
    cost_to_reach,
    hull_quality_at,
    operating_point,
    oracle_choice,
    single_model_points,
    sweep,
    upper_hull,
)
from lmroute.export.multi_policy import (
    BlendQuality,
    choose_max_utility,
    choose_quality_floor,
    choose_within_margin,
    fit_clusters,
    fit_cost,
    fit_knn,
    fit_logistic,
    fit_low_rank,
    fit_ridge,
    fit_smoothed_ridge,
)
from lmroute.export.multi_select import fold_ids, lambda_grid, policy_aiq

# ------------------------------------------------------------------------------------------- hull / AIQ


def test_upper_hull_drops_points_under_the_chord_and_dearer_worse_points():
    pts = np.array([(1.0, 0.5), (2.0, 0.6), (3.0, 0.9), (4.0, 0.85), (2.0, 0.4), (0.5, 0.2)])
    hull = upper_hull(pts)
    # (2, 0.6) lies under the chord (1, 0.5)-(3, 0.9) (0.7 at cost 2); (4, 0.85) costs more for less
    np.testing.assert_allclose(hull, [(0.5, 0.2), (1.0, 0.5), (3.0, 0.9)])


def test_upper_hull_keeps_the_best_of_equal_costs_and_is_non_decreasing():
    hull = upper_hull(np.array([(1.0, 0.3), (1.0, 0.6), (2.0, 0.6), (3.0, 0.7)]))
    np.testing.assert_allclose(hull, [(1.0, 0.6), (3.0, 0.7)])
    assert np.all(np.diff(hull[:, 1]) > 0)


def test_aiq_of_a_hand_built_curve():
    hull = upper_hull(np.array([(1.0, 0.5), (3.0, 0.9)]))
    # [1, 5]: trapezoid 1..3 = (0.5 + 0.9) / 2 x 2 = 1.4, flat 3..5 = 0.9 x 2 = 1.8 -> 3.2 / 4
    assert aiq(hull, 1.0, 5.0) == pytest.approx(0.8, abs=1e-12)
    # below the first point the curve counts 0: [0, 5] -> 3.2 / 5
    assert aiq(hull, 0.0, 5.0) == pytest.approx(0.64, abs=1e-12)
    # a range inside one segment: [2, 3] -> mean of 0.7 and 0.9
    assert aiq(hull, 2.0, 3.0) == pytest.approx(0.8, abs=1e-12)
    with pytest.raises(ValueError, match="hi > lo"):
        aiq(hull, 2.0, 2.0)


def test_random_mix_line_is_the_hull_of_single_models():
    quality = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cost = np.tile([4.0, 1.0, 2.0], (4, 1))
    singles = single_model_points(quality, cost)
    np.testing.assert_allclose(singles, [(4.0, 0.75), (1.0, 0.5), (2.0, 0.25)])
    hull = upper_hull(singles)  # model 2 (cost 2, 0.25) is dominated by model 1 (cost 1, 0.5)
    np.testing.assert_allclose(hull, [(1.0, 0.5), (4.0, 0.75)])
    # [1, 4]: (0.5 + 0.75) / 2
    assert aiq(hull, 1.0, 4.0) == pytest.approx(0.625)


def test_cost_to_reach_and_quality_at_budget():
    hull = upper_hull(np.array([(1.0, 0.5), (3.0, 0.9)]))
    assert cost_to_reach(hull, 0.7) == pytest.approx(2.0)
    assert cost_to_reach(hull, 0.4) == pytest.approx(1.0)
    assert cost_to_reach(hull, 0.9) == pytest.approx(3.0)
    assert cost_to_reach(hull, 0.95) is None
    assert hull_quality_at(hull, 0.5) == 0.0
    assert hull_quality_at(hull, 2.5) == pytest.approx(0.8)
    assert hull_quality_at(hull, 10.0) == pytest.approx(0.9)


def test_match_point_share_of_the_best_single_model():
    # best single model: cost 10, quality 0.8; the router's hull passes (2, 0.6) and (6, 1.0)
    router = upper_hull(np.array([(2.0, 0.6), (6.0, 1.0)]))
    share = cost_to_reach(router, 0.8)
    assert share is not None and share / 10.0 == pytest.approx(0.4)


# ----------------------------------------------------------------------------------- oracle / points


def test_oracle_picks_the_cheapest_of_the_best():
    quality = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.2, 0.9, 0.9]])
    cost = np.array([[3.0, 1.0, 0.5], [1.0, 2.0, 0.5], [1.0, 2.0, 3.0], [0.1, 5.0, 4.0]])
    np.testing.assert_array_equal(oracle_choice(quality, cost), [1, 2, 1, 2])
    c, q = operating_point(quality, cost, oracle_choice(quality, cost))
    assert c == pytest.approx((1.0 + 0.5 + 2.0 + 4.0) / 4)
    assert q == pytest.approx((1.0 + 0.0 + 1.0 + 0.9) / 4)


def test_operating_point_rejects_bad_choices():
    quality = np.zeros((2, 3))
    with pytest.raises(ValueError, match="model indices"):
        operating_point(quality, quality, np.array([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        operating_point(quality, quality, np.array([0]))


def test_sweep_reports_shares_per_model():
    quality = np.array([[1.0, 0.0], [0.0, 1.0]])
    cost = np.array([[1.0, 2.0], [1.0, 2.0]])
    pts = sweep(quality, cost, lambda p: np.array([0, 1]) if p > 0 else np.array([0, 0]), [0.0, 1.0])
    assert pts[0].shares == (1.0, 0.0) and pts[0].quality == 0.5 and pts[0].cost == 1.0
    assert pts[1].shares == (0.5, 0.5) and pts[1].quality == 1.0 and pts[1].cost == 1.5


# ------------------------------------------------------------------------------------------ policies

Q_HAT = np.array([[0.90, 0.85, 0.20], [0.50, 0.50, 0.40]])
C_HAT = np.array([10.0, 1.0, 0.1])


def test_max_utility_policy():
    np.testing.assert_array_equal(choose_max_utility(Q_HAT, C_HAT, 0.0), [0, 1])  # row 1: tie -> cheaper
    # lam 0.01: row 0 utilities 0.80, 0.84, 0.199 -> model 1; row 1: 0.40, 0.49, 0.399 -> model 1
    np.testing.assert_array_equal(choose_max_utility(Q_HAT, C_HAT, 0.01), [1, 1])
    np.testing.assert_array_equal(choose_max_utility(Q_HAT, C_HAT, 10.0), [2, 2])
    np.testing.assert_array_equal(choose_max_utility(Q_HAT, C_HAT, math.inf), [2, 2])
    with pytest.raises(ValueError, match="lam"):
        choose_max_utility(Q_HAT, C_HAT, -1.0)


def test_within_margin_policy():
    np.testing.assert_array_equal(choose_within_margin(Q_HAT, C_HAT, 0.0), [0, 1])
    np.testing.assert_array_equal(choose_within_margin(Q_HAT, C_HAT, 0.1), [1, 2])
    np.testing.assert_array_equal(choose_within_margin(Q_HAT, C_HAT, 0.8), [2, 2])


def test_quality_floor_policy():
    np.testing.assert_array_equal(choose_quality_floor(Q_HAT, C_HAT, 0.95), [0, 1])  # none above: best
    np.testing.assert_array_equal(choose_quality_floor(Q_HAT, C_HAT, 0.8), [1, 1])  # row 1: none -> best
    np.testing.assert_array_equal(choose_quality_floor(Q_HAT, C_HAT, 0.45), [1, 1])
    np.testing.assert_array_equal(choose_quality_floor(Q_HAT, C_HAT, 0.1), [2, 2])


def test_per_prompt_costs_steer_the_choice():
    q = np.array([[0.9, 0.8], [0.9, 0.8]])
    c = np.array([[1.0, 0.9], [10.0, 0.9]])  # model 0 dear on the second prompt only
    np.testing.assert_array_equal(choose_max_utility(q, c, 0.05), [0, 1])


def test_policy_curve_on_true_qualities_reaches_the_oracle():
    rng = np.random.default_rng(0)
    quality = (rng.random((200, 4)) < [0.3, 0.5, 0.6, 0.8]).astype(float)
    cost = np.tile([0.1, 0.3, 1.0, 3.0], (200, 1))
    lams = lambda_grid(cost.mean(axis=0))
    pts = sweep(quality, cost, lambda lam: choose_max_utility(quality, cost, lam), lams)
    top = max(p.quality for p in pts)
    assert top == pytest.approx(operating_point(quality, cost, oracle_choice(quality, cost))[1])
    singles = single_model_points(quality, cost)
    lo, hi = singles[:, 0].min(), singles[:, 0].max()
    random_mix = aiq(upper_hull(singles), lo, hi)
    assert policy_aiq(quality, cost, quality, cost.mean(axis=0), lams) > random_mix + 0.1


# ---------------------------------------------------------------------------------------- predictors


def _toy(n: int = 400, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two clusters of 8-d embeddings; model 0 is right on cluster A, model 1 on cluster B."""
    rng = np.random.default_rng(seed)
    side = rng.random(n) < 0.5
    emb = rng.normal(size=(n, 8)) * 0.3
    emb[:, 0] += np.where(side, 2.0, -2.0)
    quality = np.stack([side, ~side], axis=1).astype(float)
    return emb, quality


@pytest.mark.parametrize(
    "fit",
    [
        lambda x, y: fit_ridge(x, y, 1.0),
        lambda x, y: fit_logistic(x, y, 1.0),
        lambda x, y: fit_low_rank(x, y, 1.0, 1),
        lambda x, y: fit_knn(x, y, 5),
        lambda x, y: fit_smoothed_ridge(x, y, 1.0, 5, 0.5),
        lambda x, y: fit_clusters(x, y, 2, 1.0),
        lambda x, y: BlendQuality((fit_ridge(x, y, 1.0), fit_knn(x, y, 5)), (0.5, 0.5)),
    ],
    ids=["ridge", "logistic", "low_rank", "knn", "smoothed_ridge", "clusters", "blend"],
)
def test_predictors_learn_which_model_is_right_where(fit):
    emb, quality = _toy()
    pred = fit(emb[:300], quality[:300]).predict(emb[300:])
    assert pred.shape == (100, 2) and np.all((pred >= 0) & (pred <= 1))
    assert np.mean(np.argmax(pred, axis=1) == np.argmax(quality[300:], axis=1)) > 0.95


def test_ridge_with_a_huge_penalty_is_the_per_model_prior():
    emb, quality = _toy()
    quality[:, 1] = 0.25
    pred = fit_ridge(emb, quality, 1e12).predict(emb[:3])
    np.testing.assert_allclose(pred, np.tile(quality.mean(axis=0), (3, 1)), atol=1e-6)


def test_cost_model_mean_and_ridge():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(300, 4))
    cost = np.stack([0.5 + 0.1 * emb[:, 0], np.full(300, 2.0)], axis=1)
    mean_model = fit_cost(emb, cost, None)
    np.testing.assert_allclose(mean_model.predict(emb[:2]), np.tile(cost.mean(axis=0), (2, 1)))
    ridge = fit_cost(emb, cost, 1e-3)
    assert np.max(np.abs(ridge.predict(emb) - cost)) < 1e-3


def test_fold_ids_are_stable_and_cover_all_folds():
    prompts = [f"q{i}" for i in range(200)] + ["q0"]
    folds = fold_ids(prompts, 5)
    assert set(folds.tolist()) == {0, 1, 2, 3, 4}
    assert folds[0] == folds[-1]
    np.testing.assert_array_equal(folds, fold_ids(prompts, 5))
