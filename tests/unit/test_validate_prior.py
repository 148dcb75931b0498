"""Tests of lmroute.export.validate_prior on synthetic labels: the gap target, the variants' fits and
their evaluation on a quality table."""

from __future__ import annotations

import numpy as np
import pytest

from lmroute.export.data import DifficultyLabels
from lmroute.export.validate_prior import big_small_gap, evaluate_variants, fit_prior_variants, log_length, z_table
from lmroute.export.validation_tables import PairTable

BIG, SMALL_A, SMALL_B = "llama3-chatqa-1.5-70b", "mistral-7b-instruct-v0.3", "qwen2.5-7b-instruct"


def labels_of(prompts, scores, models=(BIG, SMALL_A, SMALL_B)) -> DifficultyLabels:
    scores = np.asarray(scores, dtype=np.float64)
    return DifficultyLabels(
        prompts=tuple(prompts),
        mean_score=np.nanmean(scores, axis=1),
        models=tuple(models),
        issues=[],
        scores=scores,
    )


def test_gap_is_big_mean_minus_small_mean_with_missing_scores() -> None:
    labels = labels_of(["q0", "q1", "q2"], [[1.0, 0.0, 1.0], [0.0, np.nan, 1.0], [np.nan, 1.0, 0.0]])
    gap = big_small_gap(labels)
    np.testing.assert_allclose(gap[:2], [0.5, -1.0])
    assert np.isnan(gap[2])  # no big model answered


def test_gap_refuses_unknown_models_and_one_sided_tables() -> None:
    with pytest.raises(ValueError, match="no parameter count for mystery-13b"):
        big_small_gap(labels_of(["q"], [[1.0, 0.0]], models=(BIG, "mystery-13b")))
    with pytest.raises(ValueError, match="need models on both sides of 40 B"):
        big_small_gap(labels_of(["q"], [[1.0, 0.0]], models=(SMALL_A, SMALL_B)))


def test_variants_learn_what_their_target_says() -> None:
    """Embedding axis 0 marks questions every model fails, axis 1 questions only the big model gets
    right, and long questions (unseen by the embedding) are failed too: each variant must rank along
    its own signal."""
    rng = np.random.default_rng(0)
    n = 600
    hard_emb, gapq, long = (rng.random(n) < 0.3 for _ in range(3))
    emb = np.column_stack([hard_emb, gapq, rng.normal(0, 0.1, n)]).astype(np.float32)
    prompts = [("x" * (300 if ln else 20)) + f" {i}" for i, ln in enumerate(long)]
    hard = hard_emb | long
    big = np.where(hard, 0.0, 1.0)
    small = np.where(hard | gapq, 0.0, 1.0)
    labels = labels_of(prompts, np.column_stack([big, small, small]))
    variants = {v.name: v for v in fit_prior_variants(labels, emb, ridge=1e-3)}
    assert set(variants) == {"mean", "mean+length", "gap"}

    probe = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)  # hard, gap, easy
    short = ["x" * 20] * 3
    mean = variants["mean"].score(probe, short)
    assert mean[0] > mean[1] > mean[2]  # harder -> strong (the gap question is harder than the easy one)
    gap = variants["gap"].score(probe, short)
    assert gap[1] > gap[0] + 0.5 and gap[1] > gap[2] + 0.5
    easy_twice = probe[[2, 2]]
    long_short = ["x" * 300, "x" * 20]
    with_len = variants["mean+length"].score(easy_twice, long_short)
    assert with_len[0] > with_len[1] + 0.2  # only the length differs
    np.testing.assert_allclose(*variants["mean"].score(easy_twice, long_short))  # the plain prior cannot see it
    np.testing.assert_allclose(log_length(["", "abc"]), [0.0, np.log(4.0)])


def test_evaluate_variants_drops_near_copies_and_ranks_by_z() -> None:
    rng = np.random.default_rng(1)
    n = 60
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    prompts = [f"p{i}" for i in range(n)]
    strong_wins = emb[:, 0] > 0  # quality follows axis 0
    table = PairTable("routerbench_arc", "correctness", tuple(prompts), strong_wins.astype(float), np.zeros(n))
    by_text = dict(zip(prompts, emb, strict=True))

    def emb_of(texts):
        return np.stack([by_text[t] for t in texts])

    from lmroute.export.validate_prior import PriorVariant

    good = PriorVariant("good", lambda e, t: np.asarray(e[:, 0], np.float64))
    bad = PriorVariant("bad", lambda e, t: -np.asarray(e[:, 0], np.float64))
    prior_emb = emb[:5]  # five validation prompts are copies of prior questions: dropped
    results = evaluate_variants([good, bad], {"routerbench_arc": table}, emb_of, prior_emb, random_seeds=50)
    assert [r.router for r in results] == ["good", "bad"]
    assert all(r.n_prompts == n - 5 for r in results)
    good_r, bad_r = results
    assert good_r.apgr > good_r.random_apgr_mean + 2 * good_r.random_apgr_std
    assert bad_r.apgr < bad_r.random_apgr_mean - 2 * bad_r.random_apgr_std
    md = z_table(results)
    assert "| good |" in md and "| bad |" in md and "| length (baseline) |" in md
    assert f"routerbench_arc (n={n - 5})" in md
