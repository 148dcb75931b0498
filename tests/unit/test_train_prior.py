"""The difficulty prior: ridge fit, robust standardisation, and the blend's reference math."""

from __future__ import annotations

import numpy as np
import pytest

from lmroute.export.train_prior import blend_params, fit_difficulty_prior, robust_center_scale
from lmroute.kernels.reference import LOGIT_EPS, blend_scores, score_logit


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ridge_recovers_a_linear_accuracy_model() -> None:
    x = _unit_rows(400, 8, 0)
    true_w = np.linspace(-0.3, 0.4, 8)
    y = x @ true_w + 0.45
    prior = fit_difficulty_prior(x, y, ridge=1e-6)
    np.testing.assert_allclose(prior.weights, true_w, atol=1e-5)
    assert prior.bias == pytest.approx(0.45, abs=1e-6)
    assert prior.train_r2 == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(prior.difficulty(x), -y, atol=1e-5)
    # a large ridge shrinks the weights towards 0, the bias towards the mean label
    shrunk = fit_difficulty_prior(x, y, ridge=1e6)
    assert np.abs(shrunk.weights).max() < 1e-3
    assert shrunk.bias == pytest.approx(y.mean(), abs=1e-3)


def test_standardisation_uses_median_and_iqr() -> None:
    x = _unit_rows(1001, 4, 1)
    prior = fit_difficulty_prior(x, np.clip(x[:, 0] * 0.5 + 0.5, 0, 1)).with_standardisation(x)
    d = prior.difficulty(x)
    q25, q50, q75 = np.percentile(d, [25, 50, 75])
    assert prior.center == pytest.approx(q50)
    assert prior.scale == pytest.approx((q75 - q25) / 1.349)


def test_robust_center_scale_falls_back_when_iqr_is_zero() -> None:
    values = np.array([1.0] * 10 + [5.0])
    center, scale = robust_center_scale(values)
    assert center == 1.0 and scale == pytest.approx(values.std())
    assert robust_center_scale(np.ones(4)) == (1.0, 1.0)
    with pytest.raises(ValueError, match="need finite values"):
        robust_center_scale(np.array([1.0, np.nan]))


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        (np.zeros((3, 2)), np.zeros(2), {}, "do not match"),
        (np.zeros((3, 2)), np.array([0.0, np.nan, 1.0]), {}, "non-finite"),
        (np.zeros((3, 2)), np.zeros(3), {"ridge": 0.0}, "ridge must be positive"),
    ],
)
def test_fit_rejects_bad_input(x: np.ndarray, y: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_difficulty_prior(x, y, **kwargs)


def test_blend_params_measure_the_router_logits() -> None:
    p = np.array([0.1, 0.2, 0.5, 0.8, 0.9])
    bp = blend_params(p, 2.0)
    logits = np.log(p / (1 - p))
    q25, q50, q75 = np.percentile(logits, [25, 50, 75])
    assert (bp.prior_weight, bp.center) == (2.0, pytest.approx(q50))
    assert bp.scale == pytest.approx((q75 - q25) / 1.349)
    with pytest.raises(ValueError, match="prior weight must be finite and >= 0"):
        blend_params(p, -1.0)


def test_blend_scores_by_hand() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 1.0]])
    w = np.array([0.2, -0.4])
    p = np.array([0.5, 0.75])
    got = blend_scores(p, emb, w, 0.1, -0.05, 0.5, weight=2.0, center=0.0, scale=2.0)
    # row 0: logit 0 -> z_r 0; difficulty -(0.2 + 0.1) = -0.3 -> z_d (-0.3 + 0.05) / 0.5 = -0.5
    # row 1: logit ln 3 -> z_r ln(3) / 2; difficulty -(-0.4 + 0.1) = 0.3 -> z_d 0.7
    z = np.array([0.0 + 2.0 * -0.5, np.log(3.0) / 2.0 + 2.0 * 0.7])
    np.testing.assert_allclose(got, 1.0 / (1.0 + np.exp(-z)), rtol=1e-15)


def test_score_logit_clips_the_ends() -> None:
    out = score_logit(np.array([0.0, 1.0, 0.5]))
    assert out[0] == pytest.approx(np.log(LOGIT_EPS), rel=1e-9)
    assert out[1] == pytest.approx(-np.log(LOGIT_EPS), rel=1e-3)
    assert out[2] == 0.0
    with pytest.raises(ValueError, match="scales must be positive"):
        blend_scores(np.array([0.5]), np.zeros((1, 2)), np.zeros(2), 0.0, 0.0, 0.0, weight=1.0, center=0.0, scale=1.0)
