"""Per-model quality heads from outcomes (`lmroute.adapt.quality_heads`): a planted per-model effect is
learnt as a correction of the base and as a new model's own head; models with too few outcomes are kept
at the base or left out; the gate accepts what predicts better on later outcomes, refuses what does not,
and names bad input."""

from __future__ import annotations

import numpy as np
import pytest

from lmroute.adapt.quality_heads import MIN_LEVEL_OUTCOMES, adapt_qualities, fit_quality_heads, gate_qualities

N, DIM = 1500, 16
MODELS = ["base-a", "base-b", "new-c", "new-d"]
FROM_BASE = [True, True, False, False]


def _problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """embeddings, log lengths, qualities [N, 4] (NaN: not judged) and the base's qualities [N, 4]:
    base-a and new-c depend on one direction of the embedding (oppositely); base-b is judged on a third of
    the prompts at a constant level; new-d only 10 times."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((N, DIM)) / 4
    lengths = np.log1p(rng.integers(20, 2000, N)).astype(float)
    u = np.random.default_rng(99).standard_normal(DIM)
    q = np.full((N, 4), np.nan)
    q[:, 0] = rng.random(N) < 1 / (1 + np.exp(-(0.5 + 3 * emb @ u)))
    q[::3, 1] = 0.7
    q[:, 2] = rng.random(N) < 1 / (1 + np.exp(-(-0.5 - 3 * emb @ u)))
    q[:10, 3] = 1.0
    base = np.full((N, 4), np.nan)
    base[:, :2] = 0.5
    return emb, lengths, q, base


def _mse(pred: np.ndarray, q: np.ndarray) -> float:
    judged = ~np.isnan(q)
    return float(np.mean((pred[judged] - q[judged]) ** 2))


def test_heads_learn_a_correction_and_a_new_model_and_leave_out_what_is_too_rare() -> None:
    emb, lengths, q, base = _problem()
    heads = fit_quality_heads(emb[:1000], lengths[:1000], q[:1000], base[:1000], MODELS, FROM_BASE, min_outcomes=30)
    assert heads.models == ("base-a", "base-b", "new-c", "new-d")
    assert heads.from_base == (True, True, False, False)
    assert heads.n_outcomes == (1000, 334, 1000, 10)
    assert heads.left_out == {}
    assert heads.weights.shape == (DIM, 4) and heads.length_weights.shape == (4,) and heads.bias.shape == (4,)
    # new-d, judged 10 times (under min_outcomes, at MIN_LEVEL_OUTCOMES): a constant head at its mean
    d = heads.models.index("new-d")
    assert not heads.weights[:, d].any() and heads.length_weights[d] == 0 and heads.penalties[d] is None
    assert heads.bias[d] == pytest.approx(np.nanmean(q[:1000, 3]))
    rare = q[:1000].copy()
    rare[np.flatnonzero(~np.isnan(rare[:, 3]))[MIN_LEVEL_OUTCOMES - 1 :], 3] = np.nan
    fewer = fit_quality_heads(emb[:1000], lengths[:1000], rare, base[:1000], MODELS, FROM_BASE, min_outcomes=30)
    assert fewer.left_out == {"new-d": MIN_LEVEL_OUTCOMES - 1} and "new-d" not in fewer.models
    pred = heads.predict(emb[1000:], lengths[1000:], np.nan_to_num(base[1000:, :4]))
    test = q[1000:, :3]
    # base-a: better than the base's flat 0.5; base-b: its level (0.7) learnt; new-c: better than its mean
    assert _mse(pred[:, 0], test[:, 0]) < 0.8 * _mse(np.full(500, 0.5), test[:, 0])
    assert np.allclose(pred[~np.isnan(test[:, 1]), 1], 0.7, atol=0.02)
    mean_c = float(np.nanmean(q[:1000, 2]))
    assert _mse(pred[:, 2], test[:, 2]) < 0.8 * _mse(np.full(500, mean_c), test[:, 2])
    assert np.all((pred >= 0) & (pred <= 1))


def test_a_base_model_with_too_few_outcomes_keeps_the_base_prediction() -> None:
    emb, lengths, q, base = _problem()
    q[30:, 1] = np.nan  # base-b judged 10 times
    heads = fit_quality_heads(emb, lengths, q, base, MODELS, FROM_BASE, min_outcomes=30)
    j = heads.models.index("base-b")
    assert heads.penalties[j] is None and heads.bias[j] == 0 and not heads.weights[:, j].any()
    pred = heads.predict(emb, lengths, np.nan_to_num(base[:, :4]))
    assert np.array_equal(pred[:, j], base[:, 1])


def test_the_gate_accepts_learnable_outcomes_and_refuses_outcomes_without_signal() -> None:
    emb, lengths, q, base = _problem()
    t = np.arange(N, dtype=float)
    learnt = adapt_qualities(emb, lengths, q, base, MODELS, FROM_BASE, base[:, :2], MODELS[:2], t)
    d = learnt.decision
    assert learnt.accepted, d.reason
    assert (
        d.candidate_error < d.champion_error and d.upper_bound <= 0 and d.n_held_out == N
    )  # every prompt held out once
    assert learnt.heads.models == ("base-a", "base-b", "new-c", "new-d")  # new-d: its mean
    # the same outcomes on other prompts, the champion already at each model's level: nothing to learn
    rng = np.random.default_rng(5)
    shuffled = q.copy()
    for j in range(4):
        shuffled[:, j] = q[rng.permutation(N), j]
    level = np.nanmean(shuffled, axis=0)
    champion = np.broadcast_to(level[:2], (N, 2))
    base_level = np.where(np.isnan(base), np.nan, level)
    refused = adapt_qualities(emb, lengths, shuffled, base_level, MODELS, FROM_BASE, champion, MODELS[:2], t)
    assert not refused.accepted, refused.decision.reason
    assert refused.decision.upper_bound > 0 and "refused" in refused.decision.reason


def test_gate_numbers_and_bad_input() -> None:
    rng = np.random.default_rng(0)
    q = (rng.random((200, 3)) < 0.5).astype(float)
    q[rng.random((200, 3)) < 0.3] = np.nan
    same = np.full((200, 3), 0.5)
    d = gate_qualities(same, same, q)
    assert d.accepted and d.difference == 0 and d.upper_bound == 0  # equal to the champion: accepted
    worse = np.clip(same + rng.normal(0, 0.3, (200, 3)), 0, 1)
    assert not gate_qualities(same, worse, q).accepted
    better = np.where(np.isnan(q), 0.5, 0.8 * q + 0.1)
    d = gate_qualities(same, better, q)
    assert d.accepted and d.candidate_error < d.champion_error and d.n_cells == int((~np.isnan(q)).sum())
    few = gate_qualities(same[:10], better[:10], q[:10])
    assert not few.accepted and "needs at least 20" in few.reason
    with pytest.raises(ValueError, match="must match"):
        gate_qualities(same, same[:, :2], q)
    nan_pred = better.copy()
    nan_pred[~np.isnan(q)] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        gate_qualities(same, nan_pred, q)
    with pytest.raises(ValueError, match="quality outside"):
        fit_quality_heads(np.zeros((5, 2)), np.zeros(5), np.full((5, 2), 2.0), np.zeros((5, 2)), ["a", "b"], [True] * 2)


def test_the_gate_refuses_right_levels_with_an_order_that_is_noise() -> None:
    """Squared error alone accepts a candidate that fixes each model's level but orders the prompts at
    random; the order condition refuses it and accepts one whose order follows the judged quality."""
    rng = np.random.default_rng(3)
    n, means = 400, np.array([0.2, 0.5, 0.8])
    hardness = rng.normal(0, 1, n)
    p = np.clip(means + 0.25 * np.tanh(hardness)[:, None], 0.01, 0.99)
    q = (rng.random((n, 3)) < p).astype(float)
    champion = np.full((n, 3), 0.5)  # wrong levels, no order
    noise = np.clip(means + rng.normal(0, 0.1, (n, 3)), 0, 1)
    d = gate_qualities(champion, noise, q)
    assert d.candidate_error < d.champion_error and d.upper_bound <= 0, d.reason  # the level test alone passes
    assert abs(d.candidate_order) < 0.1 and d.champion_order == pytest.approx(0, abs=1e-9)
    assert not d.accepted and d.order_lower_bound < -d.order_margin and "refused" in d.reason
    informed = np.clip(means + 0.2 * np.tanh(hardness)[:, None], 0, 1)
    d = gate_qualities(champion, informed, q)
    assert d.accepted, d.reason
    assert d.candidate_order > 0.3 and d.order_lower_bound > 0
    # a champion with the order: a candidate that drops it is refused though its levels are right
    d = gate_qualities(informed, noise, q)
    assert not d.accepted and d.order_difference < -0.3


def test_the_gate_reads_each_model_in_its_own_column_whatever_the_folds_kept() -> None:
    """A model judged 11 times is kept by the folds that hold out one of its prompts and left out by those
    that hold out two (10 random folds: one always does); the gate's numbers must not depend on where that
    model sits in the model list, which they did when each fold's columns were padded at the end."""
    rng = np.random.default_rng(4)
    n, dim = 600, 8
    emb = rng.standard_normal((n, dim)) / 4
    lengths = np.log1p(rng.integers(20, 2000, n)).astype(float)
    u, v = rng.standard_normal(dim), rng.standard_normal(dim)
    q = np.full((n, 3), np.nan)  # columns: a, rare, z
    q[:, 0] = rng.random(n) < 1 / (1 + np.exp(-3 * emb @ u))
    q[rng.choice(n, 11, replace=False), 1] = rng.random(11) < 0.5
    q[:, 2] = rng.random(n) < 1 / (1 + np.exp(-3 * emb @ v))
    base = np.full((n, 3), np.nan)
    t = np.arange(n, dtype=float)

    def gate(order: list[int]) -> tuple[float, ...]:
        models = [["a", "rare", "z"][j] for j in order]
        d = adapt_qualities(emb, lengths, q[:, order], base[:, order], models, [False] * 3, base[:, :0], [], t).decision
        return (d.n_cells, d.candidate_error, d.champion_error, d.candidate_order, d.champion_order)

    middle, last = gate([0, 1, 2]), gate([0, 2, 1])
    assert middle[0] > 2 * n - 11  # some of the rare model's held-out cells were judged
    assert middle == pytest.approx(last, rel=1e-9, abs=1e-12)


def test_a_model_judged_on_few_held_out_prompts_does_not_blind_the_order_bound() -> None:
    """Bootstrap resamples that draw none of a rarely judged model's prompts add nothing for it: the order
    bound stays a number (it was NaN, which refused every candidate)."""
    rng = np.random.default_rng(0)
    q = (rng.random((300, 2)) < 0.5).astype(float)
    q[3:, 1] = np.nan  # model 1 judged on 3 prompts: many resamples draw none of them
    candidate = np.where(np.isnan(q), 0.5, 0.6 * q + 0.2)
    d = gate_qualities(np.full((300, 2), 0.5), candidate, q)
    assert np.isfinite(d.order_lower_bound) and d.accepted, d.reason
