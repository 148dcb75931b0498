"""Tests of lmroute.kernels.reference: the NumPy scoring reference (BT solve, sw, mf, random)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from lmroute.kernels.reference import (
    bt_ratings_from_cells,
    mf_logits,
    mf_pair_vector,
    random_scores,
    sw_cell_weights,
    sw_scores,
)


def _direct_fit(a, b, outcome, w, n, ridge=0.0):
    """Independent row-level weighted BT-with-ties fit (scipy trust-region Newton), gauge sum 0."""
    y = np.select([outcome == 0, outcome == 1], [1.0, 0.0], default=0.5)

    def f(r):
        d = r[a] - r[b]
        return float(np.sum(w * (y * np.logaddexp(0, -d) + (1 - y) * np.logaddexp(0, d))) + ridge * r @ r)

    def g(r):
        d = r[a] - r[b]
        res = w * (1 / (1 + np.exp(-d)) - y)
        return np.bincount(a, res, minlength=n) - np.bincount(b, res, minlength=n) + 2 * ridge * r

    def h(r):
        d = r[a] - r[b]
        p = 1 / (1 + np.exp(-d))
        c = w * p * (1 - p)
        m = np.zeros((n, n))
        np.add.at(m, (a, a), c)
        np.add.at(m, (b, b), c)
        np.add.at(m, (a, b), -c)
        np.add.at(m, (b, a), -c)
        return m + 2 * ridge * np.eye(n)

    res = minimize(f, np.zeros(n), jac=g, hess=h, method="trust-exact", options={"gtol": 1e-11})
    r = res.x
    return r - r.mean()


def _random_cells(rng, n_tiers, n_rows):
    a = rng.integers(0, n_tiers, n_rows)
    b = (a + rng.integers(1, n_tiers, n_rows)) % n_tiers
    outcome = rng.integers(0, 3, n_rows)
    w = rng.uniform(0.1, 5.0, n_rows)
    return a, b, outcome, w


@pytest.mark.parametrize("seed", range(5))
def test_bt_matches_direct_row_level_fit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 6
    a, b, outcome, w = _random_cells(rng, n, 200)
    cells = np.stack([a, b, outcome], axis=1)
    r = bt_ratings_from_cells(cells, w, n)
    ref = _direct_fit(a, b, outcome, w, n)
    assert abs(r.sum()) < 1e-9
    np.testing.assert_allclose(r, ref, atol=1e-7)


def test_bt_matches_routellm_duplicated_logistic_regression() -> None:
    """RouteLLM's construction: rows duplicated, ties labelled once 1 once 0, X = +-log(base)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    n = 5
    a, b, outcome, w = _random_cells(rng, n, 150)
    m = len(a)
    x = np.zeros((2 * m, n))
    rows = np.arange(2 * m)
    x[rows, np.concatenate([a, a])] = math.log(10)
    x[rows, np.concatenate([b, b])] = -math.log(10)
    y = np.zeros(2 * m)
    y[np.concatenate([outcome == 0, outcome == 0])] = 1.0
    y[:m][outcome == 2] = 1.0
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=100000)
    lr.fit(x, y, sample_weight=np.concatenate([w, w]))
    coef = lr.coef_[0] - lr.coef_[0].mean()
    r = bt_ratings_from_cells(np.stack([a, b, outcome], axis=1), w, n) / math.log(10)
    np.testing.assert_allclose(r, coef, atol=1e-5)


def test_bt_gradient_is_zero_at_solution() -> None:
    rng = np.random.default_rng(3)
    a, b, outcome, w = _random_cells(rng, 8, 300)
    r = bt_ratings_from_cells(np.stack([a, b, outcome], axis=1), w * 1e4, 8)
    y = np.select([outcome == 0, outcome == 1], [1.0, 0.0], default=0.5)
    res = w * 1e4 * (1 / (1 + np.exp(-(r[a] - r[b]))) - y)
    grad = np.bincount(a, res, minlength=8) - np.bincount(b, res, minlength=8)
    assert np.linalg.norm(grad) < 1e-9 * (w * 1e4).sum()


def test_bt_absent_tiers_get_zero_and_components_sum_to_zero() -> None:
    # tiers 0-1 form one group, tiers 3-4 another, tier 2 and 5 absent; a zero-weight cell is ignored
    cells = np.array([[0, 1, 0], [0, 1, 1], [0, 1, 0], [3, 4, 2], [3, 4, 1], [2, 5, 0]])
    w = np.array([1.0, 1.0, 1.0, 2.0, 1.0, 0.0])
    r = bt_ratings_from_cells(cells, w, 6)
    assert r[2] == 0.0 and r[5] == 0.0
    assert abs(r[0] + r[1]) < 1e-12 and abs(r[3] + r[4]) < 1e-12
    # tier 0 beats 1 two times in three: r0 - r1 = log 2
    assert r[0] - r[1] == pytest.approx(math.log(2.0), abs=1e-12)
    # 3 vs 4: one tie (weight 2) and one win of 4 (weight 1): P(3 beats 4) = 1/3
    assert r[3] - r[4] == pytest.approx(math.log(0.5), abs=1e-12)


def test_bt_ties_only_gives_equal_ratings() -> None:
    cells = np.array([[0, 1, 2], [1, 2, 2], [0, 2, 2]])
    r = bt_ratings_from_cells(cells, np.array([3.0, 1.0, 0.5]), 4)
    np.testing.assert_allclose(r, 0.0, atol=1e-15)


def test_bt_no_weight_returns_zeros() -> None:
    r = bt_ratings_from_cells(np.zeros((0, 3), dtype=np.int32), np.zeros(0), 3)
    np.testing.assert_array_equal(r, np.zeros(3))


def test_bt_tier_that_only_wins_stays_finite_with_documented_ridge() -> None:
    from lmroute.kernels.reference import RIDGE_REL

    # tier 2 beats everyone and never loses or ties: the unpenalised MLE is infinite
    cells = np.array([[0, 1, 0], [0, 1, 1], [0, 2, 1], [1, 2, 1]])
    w = np.array([1.0, 2.0, 1.0, 1.0])
    r = bt_ratings_from_cells(cells, w, 3)
    assert np.all(np.isfinite(r)) and abs(r.sum()) < 1e-9
    ref = _direct_fit(cells[:, 0], cells[:, 1], cells[:, 2], w, 3, ridge=RIDGE_REL * w.sum())
    # the ridged optimum is flat (curvature ~1e-8) along the separated direction: compare loosely
    # there and exactly in probability space
    np.testing.assert_allclose(r, ref, atol=1e-4)
    prob = lambda x: 1 / (1 + np.exp(-(x[:, None] - x[None, :])))  # noqa: E731
    np.testing.assert_allclose(prob(r), prob(ref), atol=1e-9)
    assert r[2] - r[1] > 15.0  # pushed far apart, P ~ 1
    assert r[1] - r[0] == pytest.approx(math.log(2.0), abs=1e-6)  # the well-posed part is intact


def test_bt_single_row() -> None:
    r = bt_ratings_from_cells(np.array([[1, 3, 1]]), np.array([1.0]), 4)
    assert np.all(np.isfinite(r)) and r[3] > r[1] + 15 and r[0] == 0 and r[2] == 0


@pytest.mark.parametrize(
    "cells,weights,msg",
    [
        (np.array([[0, 0, 1]]), np.array([1.0]), "same-tier"),
        (np.array([[0, 5, 1]]), np.array([1.0]), "outside"),
        (np.array([[0, 1, 3]]), np.array([1.0]), "outcome"),
        (np.array([[0, 1, 0]]), np.array([-1.0]), ">= 0"),
        (np.array([[0, 1, 0]]), np.array([1.0, 2.0]), "shape"),
    ],
)
def test_bt_rejects_bad_input(cells, weights, msg) -> None:
    with pytest.raises(ValueError, match=msg):
        bt_ratings_from_cells(cells, weights, 3)


def _unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sw_cell_weights_formula() -> None:
    rng = np.random.default_rng(0)
    q, x = _unit(rng, 3, 8), _unit(rng, 20, 8)
    counts = rng.integers(0, 4, size=(20, 5)).astype(np.float32)
    got = sw_cell_weights(q, x, counts, 10.0)
    for i in range(3):
        sims = x @ q[i]
        w = np.array([10.0 ** (1 + s / sims.max()) for s in sims])
        np.testing.assert_allclose(got[i], w @ counts, rtol=1e-12)


def test_sw_cell_weights_query_pointing_away_gets_equal_weights() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    counts = np.array([[1.0, 0.0], [0.0, 1.0]])
    got = sw_cell_weights(np.array([[-0.6, -0.8]]), x, counts, 10.0)
    np.testing.assert_allclose(got, [[10.0, 10.0]])


def test_sw_scores_base_is_cosmetic_and_batched_equals_single() -> None:
    rng = np.random.default_rng(1)
    q, x = _unit(rng, 7, 16), _unit(rng, 30, 16)
    cells = np.array([[0, 1, 0], [0, 1, 1], [0, 2, 2], [1, 2, 0], [1, 2, 1], [0, 2, 1], [0, 2, 0]])
    counts = rng.integers(0, 3, size=(30, len(cells))).astype(np.float32)
    counts[0] = 1.0  # every cell present
    s10 = sw_scores(q, x, counts, cells, 3, strong_tier=2, weak_tier=0)
    se = sw_scores(q, x, counts, cells, 3, strong_tier=2, weak_tier=0, base=math.e)
    np.testing.assert_allclose(s10, se, atol=1e-12)
    for i in range(7):
        one = sw_scores(q[i : i + 1], x, counts, cells, 3, strong_tier=2, weak_tier=0)
        assert one.shape == (1,) and abs(one[0] - s10[i]) <= 1e-12
    assert np.all((s10 > 0) & (s10 < 1))
    flipped = sw_scores(q, x, counts, cells, 3, strong_tier=0, weak_tier=2)
    np.testing.assert_allclose(s10 + flipped, 1.0, atol=1e-12)


def test_sw_scores_rejects_bad_tiers() -> None:
    with pytest.raises(ValueError, match="strong_tier 3"):
        sw_scores(np.ones((1, 2)), np.ones((1, 2)), np.ones((1, 1)), np.array([[0, 1, 0]]), 3, 3, 0)


def test_mf_logits_and_pair_vector_collapse() -> None:
    rng = np.random.default_rng(2)
    d, k, m = 24, 8, 5
    w_proj = rng.normal(size=(k, d)).astype(np.float32)
    p = rng.normal(size=(m, k)).astype(np.float32)
    cls = rng.normal(size=k).astype(np.float32)
    e = _unit(rng, 11, d)
    logits = mf_logits(e, w_proj, p, cls)
    for i in range(11):
        z = w_proj.astype(np.float64) @ e[i]
        for j in range(m):
            pj = p[j].astype(np.float64)
            assert logits[i, j] == pytest.approx(cls @ (pj / np.linalg.norm(pj) * z), rel=1e-9)
    u = mf_pair_vector(w_proj, p, cls, strong_idx=3, weak_idx=1)
    sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    np.testing.assert_allclose(sig(e @ u), sig(logits[:, 3] - logits[:, 1]), atol=1e-6)
    np.testing.assert_allclose(e @ u, logits[:, 3] - logits[:, 1], atol=1e-9)
    # model embeddings are normalised: scaling a row changes nothing
    p2 = p.copy()
    p2[3] *= 7.0
    np.testing.assert_allclose(mf_logits(e, w_proj, p2, cls), logits, rtol=1e-6)


def test_mf_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="mf shapes disagree"):
        mf_logits(np.ones((1, 4)), np.ones((3, 4)), np.ones((2, 5)), np.ones(3))
    with pytest.raises(ValueError, match="weak_idx 9"):
        mf_pair_vector(np.ones((3, 4)), np.ones((2, 3)), np.ones(3), 0, 9)


def test_random_scores_deterministic_and_uniform() -> None:
    texts = [f"prompt {i}" for i in range(4000)]
    s = random_scores(texts, seed=0)
    assert s.dtype == np.float64 and s.shape == (4000,)
    assert np.all((s >= 0) & (s < 1))
    np.testing.assert_array_equal(s, random_scores(texts, seed=0))
    assert abs(s.mean() - 0.5) < 0.02 and abs(np.mean(s < 0.25) - 0.25) < 0.03
    assert random_scores(texts[17:18], seed=0)[0] == s[17]
    assert np.mean(random_scores(texts, seed=1) == s) < 0.01
    # pinned values: the hash is part of the contract between runtime and evaluation
    assert random_scores(["hello"], 0)[0] == pytest.approx(PINNED_HELLO_0, abs=0, rel=0)
    assert random_scores([], 3).shape == (0,)
    with pytest.raises(TypeError):
        random_scores("hello", 0)


PINNED_HELLO_0 = 0.11698555748908568


def test_train_random_params_and_scores_match_the_kernel() -> None:
    from lmroute.export.train_random import random_router_scores, train_random

    params = train_random(seed=3)
    assert params.as_manifest_params() == {"seed": 3}
    texts = ["a", "b", "c"]
    np.testing.assert_array_equal(random_router_scores(texts, params), random_scores(texts, 3))
    with pytest.raises(ValueError, match="seed must be >= 0"):
        train_random(seed=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        train_random(seed=1.5)  # type: ignore[arg-type]


def test_extreme_weight_range_does_not_raise() -> None:
    """Cell weights spanning 1e16..1e40 (sw_ranking with gamma = 1e20) made the Newton Hessian
    numerically singular (LinAlgError); the fit must still return finite ratings that beat the start."""
    cells = np.array(
        [
            [0, 8, 0],
            [0, 8, 1],
            [0, 8, 2],
            [1, 7, 0],
            [1, 7, 1],
            [1, 7, 2],
            [1, 8, 0],
            [1, 8, 1],
            [1, 8, 2],
            [2, 8, 0],
            [2, 8, 1],
            [2, 8, 2],
            [3, 7, 0],
            [3, 7, 1],
            [3, 7, 2],
            [3, 8, 0],
            [3, 8, 1],
            [3, 8, 2],
            [4, 8, 0],
            [4, 8, 1],
            [4, 8, 2],
            [5, 7, 0],
            [5, 7, 1],
            [5, 7, 2],
            [5, 8, 0],
            [5, 8, 1],
            [5, 8, 2],
            [6, 7, 0],
            [6, 7, 1],
            [6, 7, 2],
            [6, 8, 0],
            [6, 8, 1],
            [6, 8, 2],
            [7, 8, 0],
            [7, 8, 1],
            [7, 8, 2],
            [8, 9, 0],
            [8, 9, 1],
            [8, 9, 2],
        ],
        dtype=np.int32,
    )
    weights = np.array(
        [
            6.471095707779577e18,
            1.3787411461096409e22,
            1.0869051472799627e17,
            1.3143543658341184e17,
            2.0041462233142624e20,
            3.200479510616134e18,
            1.591777130036494e19,
            2.383451964335104e22,
            1.879268395319982e17,
            4.503998110386689e19,
            2.754283811538118e22,
            1.0456866524779131e17,
            2.400008469677217e17,
            3.625455720636772e20,
            4.090588076806783e19,
            2.6702159366814155e19,
            2.2052224298569106e22,
            1.112793497804789e18,
            4.13078122499752e19,
            1.375262207498547e22,
            6.2651272489801e16,
            5.080697612671277e17,
            1.9860036578997964e20,
            4.617213664644625e18,
            1.5607474942954826e19,
            1.0039876894660913e22,
            1.1296778526200855e18,
            4.540920157088536e18,
            1.9811670002084112e20,
            1.9731512358310897e20,
            1.8698424830650637e21,
            1.0291425137476688e22,
            1.5724672518869382e20,
            2.7530625707380325e27,
            4.700565062044118e34,
            1.0825732337125146e40,
            1.9981636106803366e21,
            3.9135203490928415e21,
            2.7047233092505456e16,
        ]
    )
    r = bt_ratings_from_cells(cells, weights, 10)
    assert np.all(np.isfinite(r))
    y = np.select([cells[:, 2] == 0, cells[:, 2] == 1], [1.0, 0.0], default=0.5)
    d = r[cells[:, 0]] - r[cells[:, 1]]
    nll = np.dot(weights, y * np.logaddexp(0.0, -d) + (1.0 - y) * np.logaddexp(0.0, d))
    assert nll < np.dot(weights, np.full(len(weights), np.log(2.0)))
    assert r[8] > r[7]  # the heavy cell (7, 8): tier 8 won 1e40 vs lost 5e34
