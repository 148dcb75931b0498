"""Tests of lmroute.export.calibrate: thresholds that hit the target strong share."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmroute.bundle.errors import BundleError
from lmroute.export.calibrate import (
    DEFAULT_SHARES,
    calibration_for_manifest,
    calibration_table,
    thresholds_for_shares,
)


def _routed_share(scores: np.ndarray, thresholds: list[float]) -> np.ndarray:
    return (scores[None, :] >= np.asarray(thresholds)[:, None]).mean(axis=1)


def test_block_shape_and_routing_share_on_reference_prompts() -> None:
    rng = np.random.default_rng(0)
    n = 2385
    scores = {"mf": rng.beta(2.0, 5.0, n), "bert": rng.random(n)}
    block = calibration_table(scores, source="arena-hard questions")
    assert block["source"] == "arena-hard questions"
    assert block["n_prompts"] == n
    assert len(block["strong_share"]) == 101
    assert block["strong_share"][0] == 0.0 and block["strong_share"][-1] == 1.0
    assert block["strong_share"][50] == pytest.approx(0.5)
    json.dumps(block)  # plain JSON values only
    for name, s in scores.items():
        t = block["thresholds"][name]
        assert len(t) == 101
        assert np.all(np.diff(t) <= 0), name
        assert t[0] > s.max() and t[-1] == s.min()
        got = _routed_share(s, t)
        np.testing.assert_array_less(np.abs(got - DEFAULT_SHARES), 1.0 / n + 1e-12)
        assert got[0] == 0.0 and got[-1] == 1.0


def test_median_threshold_is_the_median() -> None:
    # Five scores: the 0.5 quantile is the middle one, 0.3, and routes 3 of 5 (>= 0.3) to strong.
    s = np.array([0.9, 0.1, 0.3, 0.7, 0.2])
    t = thresholds_for_shares(s, [0.0, 0.5, 1.0])
    assert t[0] == np.nextafter(0.9, np.inf)
    assert t[1] == pytest.approx(0.3)
    assert t[2] == 0.1
    # p = 0.25: the 0.75 quantile sits at position 4 * 0.75 = 3 of the sorted scores -> 0.7.
    assert thresholds_for_shares(s, [0.0, 0.25, 1.0])[1] == pytest.approx(0.7)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=300),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_share_within_one_over_n_for_distinct_scores(n: int, seed: int) -> None:
    scores = np.random.default_rng(seed).random(n)
    assert np.unique(scores).size == n
    t = thresholds_for_shares(scores)
    assert np.all(np.diff(t) <= 0)
    got = _routed_share(scores, list(t))
    assert np.max(np.abs(got - DEFAULT_SHARES)) <= 1.0 / n + 1e-12


def test_top_threshold_is_capped_at_one_for_the_manifest() -> None:
    # A score of exactly 1.0 cannot be exceeded inside [0, 1]: the p = 0 threshold becomes 1.0.
    s = np.array([0.2, 0.6, 1.0])
    assert thresholds_for_shares(s)[0] == 1.0
    assert thresholds_for_shares(s, cap=None)[0] == np.nextafter(1.0, np.inf)
    calib = calibration_for_manifest({"mf": s, "random": np.array([0.1, 0.5, 0.9])}, source="test prompts")
    assert calib.n_prompts == 3 and calib.source == "test prompts"
    assert calib.thresholds["mf"][0] == 1.0
    assert calib.thresholds["random"][0] == np.nextafter(0.9, np.inf)
    assert calib.thresholds["random"][-1] == 0.1
    assert len(calib.strong_share) == 101


def test_manifest_check_refuses_scores_outside_unit_interval() -> None:
    with pytest.raises(BundleError, match=r"calibration.thresholds.mf\[0\]: .* outside \[0, 1\]"):
        calibration_for_manifest({"mf": np.array([0.5, 1.5])}, source="x")


def test_tied_scores_stay_monotone() -> None:
    s = np.array([0.5] * 10 + [0.2] * 5)
    t = thresholds_for_shares(s)
    assert np.all(np.diff(t) <= 0)
    assert t[0] > 0.5 and t[-1] == 0.2


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="different numbers of prompts"):
        calibration_table({"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(ValueError, match=r"scores_by_router\['a'\]: scores: contains NaN"):
        calibration_table({"a": np.array([0.1, np.nan])})
    with pytest.raises(ValueError, match="strictly increasing"):
        calibration_table({"a": np.zeros(3)}, shares=[0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="is empty"):
        calibration_table({})
