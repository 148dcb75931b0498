"""The label budget (which decisions to judge) and exploration (which to flip, with propensities), the
ranking metric behind the gate, and the protocol's split."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from lmroute.adapt.protocol import grouped_split, near_duplicate_groups, stream_mask
from lmroute.adapt.ranking import gain_area, gain_area_apgr
from lmroute.adapt.selection import (
    ExplorationRule,
    design_inverse,
    exploration_probability,
    explore,
    judged_inverse,
    label_budget,
)
from lmroute.export.metrics import router_metrics


def _window(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, 8))
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), rng.uniform(3.0, 7.0, n)


def test_label_budget_picks_k_distinct_decisions_deterministically() -> None:
    emb, lengths = _window(200, 0)
    inv0 = design_inverse(8, 30.0)
    picks, inv = label_budget(emb, lengths, 40, inv0, seed=3)
    again, _ = label_budget(emb, lengths, 40, inv0, seed=3)
    assert picks.size == 40 and np.unique(picks).size == 40
    assert np.array_equal(picks, again)
    assert np.array_equal(inv0, design_inverse(8, 30.0))  # not modified
    rows = np.hstack([emb[picks], lengths[picks, None], np.ones((40, 1))])
    np.testing.assert_allclose(inv, np.linalg.inv(30.0 * np.eye(10) + rows.T @ rows), atol=1e-10)


def test_label_budget_greedy_part_covers_more_than_random_picks() -> None:
    emb, lengths = _window(400, 1)
    picks, inv = label_budget(emb, lengths, 60, design_inverse(8, 30.0), random_share=0.0)
    random_rows = np.random.default_rng(0).choice(400, 60, replace=False)
    rows = np.hstack([emb, lengths[:, None], np.ones((400, 1))])
    inv_random = np.linalg.inv(30.0 * np.eye(10) + rows[random_rows].T @ rows[random_rows])
    # the greedy choice leaves less posterior variance over the window than a random one
    assert np.einsum("ij,jk,ik->", rows, inv, rows) < np.einsum("ij,jk,ik->", rows, inv_random, rows)


def test_judged_inverse_is_the_posterior_the_budget_builds_pick_by_pick() -> None:
    emb, lengths = _window(50, 4)
    _, built = label_budget(emb, lengths, 50, design_inverse(8, 30.0), random_share=1.0)
    np.testing.assert_allclose(judged_inverse(emb, lengths, 30.0), built, atol=1e-10)
    np.testing.assert_array_equal(judged_inverse(np.zeros((0, 8)), np.zeros(0), 30.0), design_inverse(8, 30.0))


def test_label_budget_refuses_bad_arguments() -> None:
    emb, lengths = _window(10, 2)
    with pytest.raises(ValueError, match=r"k: must be in \[0, 10\], got 11"):
        label_budget(emb, lengths, 11, design_inverse(8, 30.0))
    with pytest.raises(ValueError, match=r"inverse: shape \(9, 9\), expected \(10, 10\)"):
        label_budget(emb, lengths, 2, np.eye(9))


def test_exploration_is_concentrated_near_the_threshold_and_logs_propensities() -> None:
    rng = np.random.default_rng(4)
    scores = rng.random(20000)
    rule = ExplorationRule(floor=0.02, band=0.08, band_rate=0.45, max_rate=0.10)
    p = exploration_probability(scores, scores, 0.5, rule)
    assert set(np.round(np.unique(p), 6)) == {0.02, 0.47}
    assert np.allclose(p[np.abs(scores - 0.5) < 0.07], 0.47) and np.allclose(p[np.abs(scores - 0.5) > 0.09], 0.02)
    ex = explore(scores, 0.5, scores, 0.5, rule, rng)
    assert ex.mean_rate <= 0.10 and abs(ex.explored.mean() - ex.mean_rate) < 0.01
    assert np.array_equal(ex.chose_strong, (scores >= 0.5) ^ ex.explored)
    np.testing.assert_allclose(ex.propensity, np.where(ex.explored, p, 1.0 - p))


def test_exploration_over_the_allowed_rate_is_refused() -> None:
    scores = np.linspace(0.0, 1.0, 1000)
    rule = ExplorationRule(floor=0.1, band=0.3, band_rate=0.3, max_rate=0.10)
    with pytest.raises(ValueError, match="exploration rate 0.2.* exceeds max_rate 0.1"):
        explore(scores, 0.5, scores, 0.5, rule, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"ExplorationRule.floor: must be in \[0, 1\], got -0.1"):
        ExplorationRule(floor=-0.1)


def test_gain_area_ties_take_the_expectation_over_orders() -> None:
    scores = np.array([0.3, 0.7, 0.7, 0.1, 0.7])
    gain = np.array([1.0, -1.0, 1.0, 0.0, 1.0])
    tied = [1, 2, 4]
    areas = []
    for perm in itertools.permutations(tied):
        s = scores.copy()
        s[list(perm)] = [0.72, 0.71, 0.70]
        areas.append(gain_area(s, gain))
    assert gain_area(scores, gain) == pytest.approx(np.mean(areas), abs=1e-12)
    assert gain_area(np.zeros(5), gain) == pytest.approx(gain.mean() / 2)  # all tied = random order


def test_gain_area_apgr_is_close_to_the_protocols_decile_apgr() -> None:
    rng = np.random.default_rng(5)
    weak = (rng.random(5000) < 0.6).astype(float)
    strong = np.maximum(weak, (rng.random(5000) < 0.8).astype(float))
    scores = (strong - weak) + rng.standard_normal(5000)
    assert gain_area_apgr(scores, strong, weak) == pytest.approx(router_metrics(scores, strong, weak).apgr, abs=0.01)


def test_stream_mask_is_the_sha256_first_digit_rule() -> None:
    texts = [f"prompt {i}" for i in range(200)]
    expected = [hashlib.sha256(t.encode()).hexdigest()[0] in "01234567" for t in texts]
    assert stream_mask(texts).tolist() == expected
    assert 60 < sum(expected) < 140


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_near_duplicate_groups_join_chains_of_close_prompts_and_nothing_else() -> None:
    rng = np.random.default_rng(3)
    a = _unit(rng.standard_normal(64))
    side = rng.standard_normal(64)
    side = _unit(side - (side @ a) * a)  # a unit direction orthogonal to a
    # b at angle 0.25 rad from a, c at 0.5 rad: a-b and b-c have cosine 0.969, a-c 0.878 (< 0.95)
    b, c = (np.cos(t) * a + np.sin(t) * side for t in (0.25, 0.5))
    others = rng.standard_normal((20, 64))
    emb = np.vstack([others[:5], c, others[5:12], a * 3.0, others[12:], b])  # c first, a scaled (cosine only)
    groups = near_duplicate_groups(emb)
    chain = [5, 13, emb.shape[0] - 1]
    assert len({int(groups[i]) for i in chain}) == 1 and groups[chain[0]] == 5  # the group's first index
    rest = [i for i in range(emb.shape[0]) if i not in chain]
    assert sorted(groups[rest].tolist()) == rest  # random 64-d directions: every other prompt alone
    with pytest.raises(ValueError, match="embeddings"):
        near_duplicate_groups(np.zeros(5))


def test_grouped_split_never_parts_a_group_and_covers_every_prompt_once() -> None:
    groups = np.repeat(np.arange(40), np.random.default_rng(0).integers(1, 6, 40))  # groups of 1-5 prompts
    splits = set()
    for seed in range(10):
        head, rest = grouped_split(groups, 50, seed)
        assert sorted(np.concatenate([head, rest]).tolist()) == list(range(groups.size))
        assert 50 <= head.size < 55 and not set(groups[head]) & set(groups[rest])
        splits.add(tuple(sorted(head.tolist())))
    assert len(splits) == 10  # seeded, and different seeds draw different splits
    assert np.array_equal(grouped_split(groups, 50, 4)[0], grouped_split(groups, 50, 4)[0])
    with pytest.raises(ValueError, match="first"):
        grouped_split(groups, groups.size + 1, 0)
