"""Tests of lmroute.export.train_mf: the mf trainer learns, is deterministic, and collapses to u."""

from __future__ import annotations

import numpy as np
import pytest

from lmroute.export.data import Comparisons
from lmroute.export.train_mf import pairwise_accuracy, train_mf
from lmroute.kernels.reference import mf_logits, mf_pair_vector

MODELS = ("strong", "weak", "zother")


def synthetic(seed: int, n_rows: int = 1500, n_prompts: int = 300, d: int = 16, extra=None):
    """Strong beats weak on prompts with e[0] > 0, loses on e[0] < 0 (90 % label accuracy).
    extra: optional list of additional (prompt, a, b, outcome, source) rows."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_prompts, d))
    emb[:, 1] = 1.0  # a direction shared by every prompt, as real sentence embeddings have
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    p = rng.integers(0, n_prompts, n_rows)
    strong_wins = (emb[p, 0] > 0) ^ (rng.random(n_rows) < 0.1)
    flip = rng.random(n_rows) < 0.5  # strong written as side a or side b
    a = np.where(flip, 1, 0)
    b = 1 - a
    outcome = np.where(strong_wins, np.where(flip, 1, 0), np.where(flip, 0, 1))
    src = np.zeros(n_rows, dtype=np.int64)
    if extra:
        p = np.concatenate([p, [r[0] for r in extra]])
        a = np.concatenate([a, [r[1] for r in extra]])
        b = np.concatenate([b, [r[2] for r in extra]])
        outcome = np.concatenate([outcome, [r[3] for r in extra]])
        src = np.concatenate([src, [r[4] for r in extra]])
    comps = Comparisons(
        prompts=tuple(f"p{i}" for i in range(n_prompts)),
        prompt_idx=p.astype(np.int32),
        model_a=a.astype(np.int32),
        model_b=b.astype(np.int32),
        outcome=outcome.astype(np.int8),
        label_kind=np.zeros(len(p), dtype=np.int8),
        source=src.astype(np.int8),
        models=MODELS,
        sources=("s0", "s1"),
    )
    return comps, emb.astype(np.float32)


FAST = dict(dim=8, epochs=10, batch_size=128, lr=2e-2)


def test_learns_the_prompt_dependent_winner_and_collapses() -> None:
    comps, emb = synthetic(0)
    art = train_mf(comps, emb, **FAST)
    assert art.models == MODELS and len(art.history) == 10
    assert art.history[-1] < art.history[0]
    assert art.text_proj.shape == (8, 16) and art.model_emb.shape == (3, 8) and art.classifier.shape == (8,)
    val, val_emb = synthetic(1)  # fresh prompts and labels from the same rule
    acc, n = pairwise_accuracy(art, val, val_emb, strong="strong", weak="weak")
    assert n == len(val) and acc > 0.8
    u = mf_pair_vector(art.text_proj, art.model_emb, art.classifier, 0, 1)
    logits = mf_logits(val_emb, art.text_proj, art.model_emb, art.classifier)
    sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
    np.testing.assert_allclose(sig(val_emb.astype(np.float64) @ u), sig(logits[:, 0] - logits[:, 1]), atol=1e-6)


def test_deterministic_for_a_seed() -> None:
    comps, emb = synthetic(2, n_rows=400)
    one = train_mf(comps, emb, **{**FAST, "epochs": 3})
    two = train_mf(comps, emb, **{**FAST, "epochs": 3})
    other = train_mf(comps, emb, **{**FAST, "epochs": 3}, seed=1)
    np.testing.assert_array_equal(one.text_proj, two.text_proj)
    np.testing.assert_array_equal(one.model_emb, two.model_emb)
    assert one.history == two.history
    assert not np.array_equal(one.text_proj, other.text_proj)


def test_ties_and_self_battles_are_dropped() -> None:
    comps, emb = synthetic(3, n_rows=400)
    noisy, _ = synthetic(3, n_rows=400, extra=[(0, 0, 1, 2, 0), (5, 2, 2, 0, 0), (7, 1, 1, 1, 0), (9, 2, 0, 2, 0)])
    clean = train_mf(comps, emb, **{**FAST, "epochs": 2})
    with_extra = train_mf(noisy, emb, **{**FAST, "epochs": 2})
    np.testing.assert_array_equal(clean.text_proj, with_extra.text_proj)
    np.testing.assert_array_equal(clean.classifier, with_extra.classifier)


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    return float(np.mean(score[label][:, None] > score[~label][None, :]))


def test_source_bias_absorbs_a_source_base_rate() -> None:
    """Source s1 labels only prompts of one region of embedding space, always 'weak wins' (a base-rate
    artefact, like exam questions in golden data). Without the per-(source, model) bias the pair
    vector learns 'this region -> weak'; with it, the ranking of fresh prompts follows the s0 rule.
    Routing thresholds are quantiles, so the ranking (AUC) is what matters, not the offset."""
    _, emb = synthetic(4)
    region = np.flatnonzero(emb[:, 2] > 0.15)
    rng = np.random.default_rng(4)
    extra = [(int(p), 0, 1, 1, 1) for p in rng.choice(region, 1500)]
    comps, emb = synthetic(4, extra=extra)
    _, val_emb = synthetic(5)
    truth = val_emb[:, 0] > 0
    aucs = {}
    for flag in (True, False):
        art = train_mf(comps, emb, **FAST, source_bias=flag)
        u = mf_pair_vector(art.text_proj, art.model_emb, art.classifier, 0, 1)
        aucs[flag] = _auc(val_emb.astype(np.float64) @ u, truth)
        if flag:
            b = art.source_bias
            assert b.shape == (2, 3) and b[1, 1] - b[1, 0] > b[0, 1] - b[0, 0] + 1.0  # s1 favours weak
            share = np.array([0.5, 0.5])  # both sources hold half the rows of each model
            np.testing.assert_allclose(share @ b[:, :2], 0.0, atol=1e-5)  # centred
        else:
            assert np.all(art.source_bias == 0)
    assert aucs[True] > 0.9 and aucs[True] > aucs[False] + 0.1


def test_rejects_bad_input() -> None:
    comps, emb = synthetic(6, n_rows=50)
    with pytest.raises(ValueError, match="prompt_emb must have shape"):
        train_mf(comps, emb[:10], epochs=1)
    with pytest.raises(ValueError, match="unknown label kinds"):
        train_mf(comps, emb, epochs=1, label_weights={"gold": 1.0})
    with pytest.raises(ValueError, match="no non-tie comparison"):
        train_mf(comps, emb, epochs=1, label_weights={"human": 0.0})


def test_row_weights_zero_equals_dropping_the_rows() -> None:
    comps, emb = synthetic(5, n_rows=400, n_prompts=80)
    w = (np.arange(len(comps)) % 3 != 0).astype(np.float64)
    weighted = train_mf(comps, emb, **FAST, seed=2, row_weights=w)
    sub = comps.select(w > 0)
    kept = np.unique(comps.prompt_idx[w > 0])
    dropped = train_mf(sub, emb[kept], **FAST, seed=2)
    np.testing.assert_allclose(weighted.text_proj, dropped.text_proj, atol=1e-5)
    np.testing.assert_allclose(weighted.model_emb, dropped.model_emb, atol=1e-5)
    with pytest.raises(ValueError, match="row_weights must have shape"):
        train_mf(comps, emb, **FAST, row_weights=np.ones(3))
    with pytest.raises(ValueError, match="row_weights must be finite and >= 0"):
        train_mf(comps, emb, **FAST, row_weights=-np.ones(len(comps)))
    with pytest.raises(ValueError, match="no non-tie comparison"):
        train_mf(comps, emb, **FAST, row_weights=np.zeros(len(comps)))
