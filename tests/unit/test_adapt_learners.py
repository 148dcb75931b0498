"""The in-domain learners on learnable synthetic problems: paired kernel ridge and ridge of the gap, the
single-outcome doubly robust learner, the blend with a base router, and their refusals of bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmroute.adapt.head import BaseStandardisation, Head, blend_weight, blended_scores, robust_center_scale
from lmroute.adapt.kernel_ridge import KernelSettings, fit_kernel_ridge
from lmroute.adapt.learners import (
    choose_blend_n0,
    fit_paired,
    fit_shared,
    fit_single,
    held_out_dr_gain,
    paired_out_of_fold,
)
from lmroute.adapt.ranking import gain_area_apgr
from lmroute.adapt.selection import ExplorationRule, explore
from lmroute.bundle.kinds.adapted import AdaptedParams, KernelTerm, adapted_scores, log_length

DIM = 16


def _problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unit embeddings, log lengths, and both models' 0/1 quality: the strong model helps where
    e . u is high (a learnable gap), the weak model is right more often on short prompts."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lengths = rng.uniform(3.0, 7.0, n)
    u = np.linspace(-1.0, 1.0, DIM)
    u /= np.linalg.norm(u)
    p_weak = 1.0 / (1.0 + np.exp(-(2.0 - 3.0 * (emb @ u) - 0.3 * (lengths - 5.0))))
    weak = (rng.random(n) < p_weak).astype(float)
    strong = np.maximum(weak, (rng.random(n) < 0.7).astype(float))
    return emb, lengths, strong, weak


def _topic_problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Prompts from 40 topics (clusters of unit embeddings around fixed centres), each topic with its own
    difficulty for the weak model (more topics than dimensions: no linear head of the embedding can give
    each its own level), and the weak model fails more on long prompts. Also returns the true order."""
    centres = np.random.default_rng(100).standard_normal((40, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    difficulty = np.random.default_rng(101).standard_normal(40)
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 40, n)
    emb = centres[topic] + 0.1 * rng.standard_normal((n, DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lengths = rng.uniform(3.0, 7.0, n)
    p_weak = 1.0 / (1.0 + np.exp(-(1.0 - 2.0 * difficulty[topic] - 0.3 * (lengths - 5.0))))
    weak = (rng.random(n) < p_weak).astype(float)
    strong = np.maximum(weak, (rng.random(n) < 0.7).astype(float))
    return emb, lengths, strong, weak, 2.0 * difficulty[topic] + 0.3 * lengths


def test_paired_kernel_learner_finds_a_gap_no_linear_head_can() -> None:
    emb, lengths, strong, weak, _ = _topic_problem(2000, seed=1)
    head = fit_paired(emb, lengths, strong - weak)
    ridge = fit_paired(emb, lengths, strong - weak, learner="ridge")
    t_emb, t_len, t_strong, t_weak, truth = _topic_problem(3000, seed=2)
    learnt = gain_area_apgr(head.raw(t_emb, t_len), t_strong, t_weak)
    assert learnt > gain_area_apgr(truth, t_strong, t_weak) - 0.03
    assert learnt > gain_area_apgr(ridge.raw(t_emb, t_len), t_strong, t_weak) + 0.03
    assert head.learner == "paired_kernel_ridge" and head.kernel is not None
    assert head.settings["support"] == 2000.0 and head.settings["kernel_gamma"] == 4.0
    assert head.length_weight > 0  # longer prompts: the weak model fails more, the gap grows
    shuffled = fit_paired(emb, lengths, np.random.default_rng(0).permutation(strong - weak))
    assert gain_area_apgr(shuffled.raw(t_emb, t_len), t_strong, t_weak) < learnt - 0.05
    scores = head.score(t_emb, t_len)
    assert scores.min() >= 0.0 and scores.max() <= 1.0


def test_kernel_ridge_above_its_support_cap_fits_a_random_subset_exactly() -> None:
    emb, lengths, strong, weak, _ = _topic_problem(1200, seed=3)
    gap = strong - weak
    exact = fit_kernel_ridge(emb, lengths, gap)
    capped = fit_kernel_ridge(emb, lengths, gap, KernelSettings(max_support=600), seed=1)
    assert exact.kernel.support.shape == (1200, DIM) and capped.kernel.support.shape == (600, DIM)
    assert capped.kernel.support.dtype == np.float32 and capped.kernel.alpha.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(capped.kernel.support, axis=1), 1.0, rtol=1e-6)
    # the support is 600 of the outcomes' own prompts, and the capped fit is that subset's exact fit
    unit = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    rows = [int(np.flatnonzero((unit == s).all(axis=1))[0]) for s in capped.kernel.support]
    assert len(set(rows)) == 600
    subset = fit_kernel_ridge(emb[rows], lengths[rows], gap[rows])
    np.testing.assert_allclose(subset.kernel.alpha, capped.kernel.alpha, rtol=1e-5, atol=1e-6)
    t_emb, t_len, _, _, _ = _topic_problem(2000, seed=4)
    assert np.corrcoef(exact.predict(t_emb, t_len), capped.predict(t_emb, t_len))[0, 1] > 0.8
    # the exact fit solves its equations: residual = penalty * alpha at the support points
    residual = gap - exact.predict(emb, lengths)
    np.testing.assert_allclose(residual, 3.0 * exact.kernel.alpha, atol=1e-4)


def test_kernel_ridge_on_prompts_of_one_length_fits_the_intercept_alone() -> None:
    """Templated traffic whose prompts all have one length: the length slope is 0, not a singular solve."""
    emb, lengths, strong, weak, _ = _topic_problem(300, seed=5)
    gap = strong - weak
    same = np.full_like(lengths, lengths[0])
    fit = fit_kernel_ridge(emb, same, gap)
    assert fit.length_weight == 0.0 and np.isfinite(fit.bias) and np.isfinite(fit.kernel.alpha).all()
    # it solves its equations (residual = penalty * alpha), and reads every length alike
    np.testing.assert_allclose(gap - fit.predict(emb, same), 3.0 * fit.kernel.alpha, atol=1e-4)
    np.testing.assert_array_equal(fit.predict(emb, same), fit.predict(emb, same + 2.0))
    assert np.corrcoef(fit.predict(emb, same), gap)[0, 1] > 0.3


def test_paired_out_of_fold_never_predicts_an_outcome_it_was_fitted_on() -> None:
    emb, lengths, strong, weak, _ = _topic_problem(300, seed=5)
    gap = strong - weak
    head = fit_paired(emb, lengths, gap)
    oof = paired_out_of_fold(emb, lengths, gap, head, folds=5, seed=0)
    in_sample = head.raw(emb, lengths)
    # in-sample predictions lean towards each outcome's own gap; out-of-fold ones much less
    assert np.corrcoef(in_sample, gap)[0, 1] > np.corrcoef(oof, gap)[0, 1] + 0.1
    ridge = fit_paired(emb, lengths, gap, learner="ridge")
    assert paired_out_of_fold(emb, lengths, gap, ridge).shape == (300,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": 0.0}, r"KernelSettings.gamma: must be finite and > 0, got 0.0"),
        ({"penalty": -1.0}, r"KernelSettings.penalty: must be finite and > 0, got -1.0"),
        ({"max_support": 1}, r"KernelSettings.max_support: must be >= 2, got 1"),
    ],
)
def test_kernel_settings_name_the_bad_value(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KernelSettings(**kwargs)  # type: ignore[arg-type]


def test_kernel_term_and_head_check_their_arrays() -> None:
    with pytest.raises(ValueError, match=r"support \[m, dim\] and alpha \[m\] expected"):
        KernelTerm(np.ones((3, 4), np.float32), np.ones(2, np.float32), 1.0)
    with pytest.raises(ValueError, match="KernelTerm.gamma: must be finite and > 0"):
        KernelTerm(np.ones((3, 4), np.float32), np.ones(3, np.float32), float("nan"))
    term = KernelTerm(np.eye(4, dtype=np.float32), np.ones(4, np.float32), 2.0)
    with pytest.raises(ValueError, match="read-only"):
        term.alpha[0] = 0.0
    with pytest.raises(ValueError, match="Head.kernel: support of dimension 4, weights of 3"):
        Head(np.zeros(3), 0.0, 0.0, 0.0, 1.0, "x", kernel=term)
    # a row's scale does not matter (cosine), and a support row itself scores 1 + 3 exp(-2)
    np.testing.assert_allclose(term.values(np.array([[5.0, 0, 0, 0]])), [1.0 + 3.0 * np.exp(-2.0)])
    emb, lengths, strong, weak = _problem(3, seed=0)
    with pytest.raises(ValueError, match="learner: must be one of kernel, ridge"):
        fit_paired(emb, lengths, strong - weak, learner="forest")


def test_paired_ridge_learner_orders_fresh_prompts_far_better_than_random() -> None:
    emb, lengths, strong, weak = _problem(1500, seed=1)
    head = fit_paired(emb, lengths, strong - weak, learner="ridge")
    t_emb, t_len, t_strong, t_weak = _problem(3000, seed=2)
    learnt = gain_area_apgr(head.raw(t_emb, t_len), t_strong, t_weak)
    shuffled = fit_paired(emb, lengths, np.random.default_rng(0).permutation(strong - weak), learner="ridge")
    u = np.linspace(-1.0, 1.0, DIM) / np.linalg.norm(np.linspace(-1.0, 1.0, DIM))
    truth = gain_area_apgr(3.0 * (t_emb @ u) + 0.3 * t_len, t_strong, t_weak)  # the true order: 0.665
    assert learnt > truth - 0.03
    assert gain_area_apgr(shuffled.raw(t_emb, t_len), t_strong, t_weak) < learnt - 0.05
    assert head.settings["penalty"] in (3.0, 10.0, 30.0, 100.0, 300.0)
    assert head.learner == "paired_ridge"
    scores = head.score(t_emb, t_len)
    assert scores.min() >= 0.0 and scores.max() <= 1.0


def test_single_learner_learns_the_gap_from_a_biased_exploring_log() -> None:
    emb, lengths, strong, weak = _problem(4000, seed=3)
    # logging policy: a biased router (strong on long prompts) exploring near its threshold
    policy = lengths + 0.1 * np.random.default_rng(4).standard_normal(lengths.size)
    ex = explore(policy, float(np.median(policy)), policy, 0.5, ExplorationRule(), np.random.default_rng(5))
    assert ex.mean_rate <= 0.10
    quality = np.where(ex.chose_strong, strong, weak)
    t_emb, t_len, t_strong, t_weak = _problem(3000, seed=6)
    random = gain_area_apgr(np.random.default_rng(7).random(t_len.size), t_strong, t_weak)
    for method, learner in (("shared", "single_shared"), ("dr", "single_dr"), ("direct", "single_direct")):
        head = fit_single(emb, lengths, ex.chose_strong, quality, ex.propensity, method=method)
        assert head.learner == learner
        assert gain_area_apgr(head.raw(t_emb, t_len), t_strong, t_weak) > random + 0.05
    assert fit_single(emb, lengths, ex.chose_strong, quality, ex.propensity).learner == "single_shared"


def test_shared_learner_cross_validates_its_gap_penalty_and_cross_fits_its_pseudo_gap() -> None:
    emb, lengths, strong, weak = _problem(2000, seed=11)
    chose = np.random.default_rng(12).random(2000) < 0.5
    quality = np.where(chose, strong, weak)
    x = np.hstack([emb, lengths[:, None]])
    fit = fit_shared(x, chose, quality, np.full(2000, 0.5), gap_penalties=(10.0, 300.0, 1e6))
    assert set(fit.scores) == {10.0, 300.0, 1e6} and fit.penalty == max(fit.scores, key=lambda k: fit.scores[k])
    assert fit.penalty != 1e6  # a gap penalised to nothing orders no better than chance
    assert fit.oof_gap.shape == fit.pseudo_gap.shape == (2000,)
    # the doubly robust pseudo-gap is unbiased: its mean is near the true mean gap
    assert abs(float(fit.pseudo_gap.mean()) - float((strong - weak).mean())) < 0.05


def test_blend_weight_rule_and_the_blend_is_the_router_kinds_math() -> None:
    assert blend_weight(0, 100.0) == 0.0
    assert blend_weight(100, 100.0) == 0.5
    assert blend_weight(900, 100.0) == pytest.approx(0.9)
    assert blend_weight(10, 0.0) == 1.0
    emb, lengths, strong, weak = _problem(400, seed=7)
    head = fit_paired(emb, lengths, strong - weak)
    base = np.random.default_rng(8).uniform(0.05, 0.95, 400)
    std = BaseStandardisation.of(base)
    for w in (0.0, 0.3, 1.0):
        ours = blended_scores(head, emb, lengths, base, w, std)
        params = AdaptedParams("mf", w, head.length_weight, head.bias, head.center, head.scale, std.center, std.scale)
        served = adapted_scores(emb, lengths, base, head.weights, params, head.kernel)
        np.testing.assert_allclose(ours, served, rtol=0, atol=1e-15)
    # w = 1 orders as the head, w = 0 as the base
    assert np.array_equal(
        np.argsort(blended_scores(head, emb, lengths, base, 1.0, std)), np.argsort(head.raw(emb, lengths))
    )
    assert np.array_equal(np.argsort(blended_scores(head, emb, lengths, base, 0.0, std)), np.argsort(base))


def test_choose_blend_n0_prefers_the_head_over_a_useless_base_and_the_base_when_it_is_the_truth() -> None:
    emb, lengths, strong, weak = _problem(1000, seed=9)
    gap = strong - weak
    noise = np.random.default_rng(10).uniform(0.01, 0.99, gap.size)
    n0, scores = choose_blend_n0(emb, lengths, gap, noise, 30.0)
    assert n0 <= 100.0 and set(scores) == {0.0, 30.0, 100.0, 300.0, 1000.0, 3000.0}
    oracle = np.clip(0.5 + 0.45 * gap + 0.01 * noise, 0.01, 0.99)  # a base that already knows the gap
    n0_oracle, _ = choose_blend_n0(emb, lengths, gap, oracle, 30.0)
    assert n0_oracle >= 1000.0


def test_choose_blend_n0_bags_the_grid_choice_over_resamples() -> None:
    emb, lengths, strong, weak = _problem(600, seed=4)
    gap = strong - weak
    rng = np.random.default_rng(5)
    partial = np.clip(0.5 + 0.2 * gap + 0.3 * rng.standard_normal(gap.size), 0.01, 0.99)  # a base that half knows
    single, scores = choose_blend_n0(emb, lengths, gap, partial, 30.0, resamples=0)
    assert single == max(scores, key=lambda k: (scores[k], k))  # the rule before bagging: the best grid point
    bagged, scores_bagged = choose_blend_n0(emb, lengths, gap, partial, 30.0)
    assert scores_bagged == pytest.approx(scores, rel=1e-12)  # the grid's areas on all the outcomes, either way
    assert bagged not in scores and min(scores) < bagged < max(scores)  # resamples disagree: between grid points
    assert choose_blend_n0(emb, lengths, gap, partial, 30.0)[0] == bagged  # seeded


def test_log_length_counts_characters() -> None:
    np.testing.assert_allclose(log_length(["", "abc", "é" * 9]), np.log1p([0.0, 3.0, 9.0]))


def test_robust_center_scale_falls_back_on_constant_input() -> None:
    assert robust_center_scale([2.0, 2.0, 2.0]) == (2.0, 1.0)
    center, scale = robust_center_scale(np.arange(101.0))
    assert center == 50.0 and scale == pytest.approx(50.0 / 1.349)


@pytest.mark.parametrize(
    ("gap", "message"),
    [
        (np.array([0.0, 1.5, 0.0]), r"gap\[1\]: 1.5 outside \[-1.0, 1.0\]"),
        (np.array([0.0, np.nan, 0.0]), "gap: contains NaN or inf"),
        (np.zeros(4), r"gap: expected shape \(3,\), got \(4,\)"),
    ],
)
def test_fit_paired_names_the_bad_input(gap: np.ndarray, message: str) -> None:
    emb, lengths, _, _ = _problem(3, seed=0)
    with pytest.raises(ValueError, match=message):
        fit_paired(emb, lengths, gap)


def test_fit_paired_refuses_mismatched_embeddings_and_lengths() -> None:
    emb, lengths, strong, weak = _problem(5, seed=0)
    with pytest.raises(ValueError, match=r"lengths: expected shape \(5,\), got \(4,\)"):
        fit_paired(emb, lengths[:4], strong - weak)


def test_fit_single_names_the_bad_input() -> None:
    emb, lengths, strong, _ = _problem(6, seed=0)
    arm = np.array([True, False] * 3)
    with pytest.raises(ValueError, match=r"propensity\[2\]: must be > 0"):
        fit_single(emb, lengths, arm, strong, np.array([1.0, 1.0, 0.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"quality\[0\]: 2.0 outside"):
        fit_single(emb, lengths, arm, np.array([2.0, 0, 0, 0, 0, 0]), np.ones(6))
    with pytest.raises(ValueError, match="needs outcomes of both models"):
        fit_single(emb, lengths, np.ones(6, dtype=bool), strong, np.ones(6))
    with pytest.raises(ValueError, match="unknown method 'ips'"):
        fit_single(emb, lengths, arm, strong, np.ones(6), method="ips")


def test_head_is_frozen_and_checks_its_arrays() -> None:
    head = Head(np.zeros(3), 0.0, 0.0, 0.0, 1.0, "paired_ridge")
    with pytest.raises(ValueError, match="read-only"):
        head.weights[0] = 1.0
    with pytest.raises(ValueError, match="Head.scale: must be positive"):
        Head(np.zeros(3), 0.0, 0.0, 0.0, 0.0, "x")
    with pytest.raises(ValueError, match=r"embeddings: shape \(2, 4\), expected \(n, 3\)"):
        head.raw(np.zeros((2, 4)), np.zeros(2))


def test_the_gates_held_out_gains_unclipped_are_unbiased_and_clipped_lean_to_the_outcome_model() -> None:
    """Events logged with propensities 0.98 / 0.02 (exploration's flips), the outcome model blind to what
    decides quality (here: it sees no feature): unclipped, the held-out doubly robust gains average the
    true gain (0), given the logged propensities; clipped at 20 (the default, held_out_dr_gain's docstring
    says why) they lean to the outcome model's gap (+0.10)."""
    means: dict[float, list[float]] = {math.inf: [], 20.0: []}
    for seed in range(8):
        rng = np.random.default_rng(seed)
        n = 20_000
        z = rng.random(n)  # what decides quality, unseen by the outcome model
        p_strong = np.where(z > 0.5, 0.98, 0.02)
        arm = rng.random(n) < p_strong
        quality = np.where(arm, rng.random(n) < z, rng.random(n) < 0.5).astype(float)  # true mean gain 0
        p = np.where(arm, p_strong, 1.0 - p_strong)
        x = np.zeros((n, 2))
        h = n // 2
        for clip, got in means.items():
            gains = held_out_dr_gain(
                (x[:h], arm[:h], quality[:h], p[:h]),
                (x[h:], arm[h:], quality[h:], p[h:]),
                seed=seed,
                max_inverse_propensity=clip,
            )
            got.append(float(gains.mean()))
    assert abs(np.mean(means[math.inf])) < 0.03, means
    assert 0.07 < np.mean(means[20.0]) < 0.13, means


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("propensity", 0.0, "propensity[3]: must be > 0 (the chosen model's probability)"),
        ("propensity", 1.5, "propensity[3]: 1.5 outside [0.0, 1.0]"),
        ("quality", float("nan"), "quality: contains NaN or inf"),
    ],
)
def test_adapt_single_called_as_a_library_refuses_outcomes_no_store_holds(field: str, value: float, said: str) -> None:
    """The command line's outcomes are checked by the store; adapt_single took propensity 0 (a division
    by zero, then the clip) and 1.5 silently, and a NaN quality failed later naming the head's weights."""
    from lmroute.adapt.pipeline import adapt_single

    rng = np.random.default_rng(0)
    n = 60
    events = {"quality": rng.random(n), "propensity": np.full(n, 0.9)}
    events[field][3] = value
    with pytest.raises(ValueError) as err:
        adapt_single(
            rng.standard_normal((n, 4)),
            np.full(n, 3.0),
            np.arange(n) % 3 == 0,
            events["quality"],
            events["propensity"],
            rng.random(n),
            rng.random(n),
            np.arange(n),
        )
    assert str(err.value) == said
