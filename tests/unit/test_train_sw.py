"""Tests of lmroute.export.train_sw: the sw_ranking cell tables equal a direct row-level BT fit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from lmroute.export.data import Comparisons
from lmroute.export.recipe import Recipe
from lmroute.export.train_sw import train_sw_ranking
from lmroute.kernels.reference import sw_scores

MODELS = ("m0", "m1", "m2", "m3", "m4", "m5")
TIERS = {"m0": 0, "m1": 0, "m2": 1, "m3": 1, "m4": 2, "m5": 2}


def make_comparisons(prompt_idx, a, b, outcome, n_prompts, models=MODELS, kinds=None):
    n = len(prompt_idx)
    return Comparisons(
        prompts=tuple(f"prompt number {i}" for i in range(n_prompts)),
        prompt_idx=np.asarray(prompt_idx, dtype=np.int32),
        model_a=np.asarray(a, dtype=np.int32),
        model_b=np.asarray(b, dtype=np.int32),
        outcome=np.asarray(outcome, dtype=np.int8),
        label_kind=np.asarray(kinds if kinds is not None else [0] * n, dtype=np.int8),
        source=np.zeros(n, dtype=np.int8),
        models=tuple(models),
        sources=("src",),
    )


def random_data(seed, n_rows=150, n_prompts=12, d=8):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, n_rows)
    b = (a + rng.integers(1, 6, n_rows)) % 6
    comps = make_comparisons(rng.integers(0, n_prompts, n_rows), a, b, rng.integers(0, 3, n_rows), n_prompts)
    emb = rng.normal(size=(n_prompts, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = rng.normal(size=(5, d))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return comps, emb.astype(np.float32), queries.astype(np.float32)


def direct_row_fit_score(comps, emb, query, gamma=10.0, strong_tier=2, weak_tier=0, n_tiers=3, keep_same_tier=False):
    """Independent reference: weighted BT with ties over every individual row (no aggregation),
    each row weighted by its prompt's similarity weight, solved with scipy to convergence."""
    tier = np.array([TIERS[m] for m in comps.models])
    ta, tb = tier[comps.model_a], tier[comps.model_b]
    rows = ta != tb if not keep_same_tier else np.ones(len(ta), dtype=bool)
    ta, tb = ta[rows], tb[rows]
    y = np.select([comps.outcome[rows] == 0, comps.outcome[rows] == 1], [1.0, 0.0], default=0.5)
    sims = emb.astype(np.float64) @ query.astype(np.float64)
    w = (gamma ** (1 + sims / sims.max()))[comps.prompt_idx[rows]]

    def f(r):
        d = r[ta] - r[tb]
        return float(np.sum(w * (y * np.logaddexp(0, -d) + (1 - y) * np.logaddexp(0, d))))

    def g(r):
        d = r[ta] - r[tb]
        res = w * (1 / (1 + np.exp(-d)) - y)
        return np.bincount(ta, res, minlength=n_tiers) - np.bincount(tb, res, minlength=n_tiers)

    res = minimize(f, np.zeros(n_tiers), jac=g, method="BFGS", options={"gtol": 1e-12, "maxiter": 10000})
    r = res.x
    return 1 / (1 + np.exp(r[weak_tier] - r[strong_tier])), r - r.mean()


@pytest.mark.parametrize("seed", range(4))
def test_aggregated_cells_equal_direct_row_level_fit(seed: int) -> None:
    comps, emb, queries = random_data(seed)
    art = train_sw_ranking(comps, emb, TIERS, n_tiers=3, strong="m4", weak="m1")
    got = sw_scores(
        queries,
        art.prompt_embeddings,
        art.cell_counts,
        art.cells,
        3,
        art.params["strong_tier"],
        art.params["weak_tier"],
        gamma=10.0,
    )
    for i, q in enumerate(queries):
        ref, _ = direct_row_fit_score(comps, emb, q)
        assert abs(got[i] - ref) <= 1e-6
        one = sw_scores(queries[i : i + 1], art.prompt_embeddings, art.cell_counts, art.cells, 3, 2, 0)
        assert one.shape == (1,) and abs(one[0] - got[i]) <= 1e-9  # batch size 1 == batched


def test_same_tier_battles_carry_no_information() -> None:
    """The likelihood term of a same-tier row depends on R_t - R_t = 0: a constant. A direct fit with
    and without those rows gives the same ratings, which is why training drops them."""
    comps, emb, queries = random_data(11)
    with_same, r1 = direct_row_fit_score(comps, emb, queries[0], keep_same_tier=True)
    without, r2 = direct_row_fit_score(comps, emb, queries[0], keep_same_tier=False)
    np.testing.assert_allclose(r1, r2, atol=1e-7)
    assert abs(with_same - without) < 1e-8
    art = train_sw_ranking(comps, emb, TIERS, n_tiers=3, strong="m4", weak="m1")
    tier = np.array([TIERS[m] for m in MODELS])
    n_same = int(np.sum(tier[comps.model_a] == tier[comps.model_b]))
    assert n_same > 0 and art.n_same_tier_dropped == n_same
    assert art.cell_counts.sum() == pytest.approx(len(comps) - n_same)


def test_artifact_structure() -> None:
    comps, emb, _ = random_data(5)
    art = train_sw_ranking(comps, emb, TIERS, n_tiers=3, strong="m4", weak="m1", gamma=10.0)
    assert art.cells.dtype == np.int32 and art.cells.shape[1] == 3
    assert np.all(art.cells[:, 0] < art.cells[:, 1])
    assert [tuple(c) for c in art.cells] == sorted({tuple(c) for c in art.cells})
    assert art.cell_counts.dtype == np.float32 and art.prompt_embeddings.dtype == np.float32
    assert art.cell_counts.shape == (len(art.prompts), len(art.cells))
    assert np.all(art.cell_counts.sum(axis=1) > 0)
    assert art.params == {"gamma": 10.0, "n_tiers": 3, "strong_tier": 2, "weak_tier": 0, "scale": 400, "base": 10}
    default = train_sw_ranking(comps, emb, TIERS, n_tiers=3, strong="m4", weak="m1")
    assert default.params["gamma"] == Recipe().gamma == 1e5  # the shipped recipe's gamma
    for text, row in zip(art.prompts, art.prompt_embeddings):
        np.testing.assert_array_equal(row, emb[comps.prompts.index(text)])


def test_side_swap_flips_outcome() -> None:
    # m4 (tier 2) beats m0 (tier 0) written both ways round: both land in cell (0, 2, b wins)
    comps = make_comparisons([0, 1, 1], [4, 0, 2], [0, 4, 3], [0, 1, 2], 2)
    emb = np.eye(2, dtype=np.float32)
    art = train_sw_ranking(comps, emb, TIERS, n_tiers=3, strong="m4", weak="m0")
    assert art.cells.tolist() == [[0, 2, 1]]
    np.testing.assert_array_equal(art.cell_counts, [[1.0], [1.0]])
    assert art.n_same_tier_dropped == 1


def test_ties_only_data_scores_one_half() -> None:
    comps = make_comparisons([0, 1, 2], [0, 2, 4], [5, 4, 1], [2, 2, 2], 3)
    emb = np.eye(3, 4, dtype=np.float32)
    art = train_sw_ranking(comps, emb, TIERS, n_tiers=3, strong="m4", weak="m0")
    q = np.eye(4, dtype=np.float32)[:3]
    np.testing.assert_allclose(
        sw_scores(q, art.prompt_embeddings, art.cell_counts, art.cells, 3, 2, 0), 0.5, atol=1e-12
    )


def test_one_training_row() -> None:
    comps = make_comparisons([0], [0], [4], [1], 1)  # m4 (tier 2) beats m0 (tier 0) once
    emb = np.array([[1.0, 0.0]], dtype=np.float32)
    art = train_sw_ranking(comps, emb, TIERS, n_tiers=3, strong="m4", weak="m0")
    s = sw_scores(np.array([[0.6, 0.8]]), art.prompt_embeddings, art.cell_counts, art.cells, 3, 2, 0)
    assert s.shape == (1,) and np.isfinite(s[0]) and s[0] > 1 - 1e-6  # MLE at infinity, tiny ridge
    # the opposite pair is the mirror image; a tier with no data gets rating 0, score 1/2 vs itself
    flipped = sw_scores(np.array([[0.6, 0.8]]), art.prompt_embeddings, art.cell_counts, art.cells, 3, 0, 2)
    assert flipped[0] == pytest.approx(1 - s[0], abs=1e-12)


def test_label_weights_scale_counts_and_errors() -> None:
    comps = make_comparisons([0, 0], [0, 0], [4, 4], [1, 0], 1, kinds=[0, 1])
    emb = np.array([[1.0, 0.0]], dtype=np.float32)
    art = train_sw_ranking(comps, emb, TIERS, n_tiers=3, strong="m4", weak="m0", label_weights={"judge": 0.5})
    assert dict(zip(map(tuple, art.cells.tolist()), art.cell_counts[0])) == {(0, 2, 0): 0.5, (0, 2, 1): 1.0}
    with pytest.raises(ValueError, match=r"models without a tier: \['m5'\]"):
        train_sw_ranking(
            make_comparisons([0], [5], [0], [0], 1),
            emb,
            {k: v for k, v in TIERS.items() if k != "m5"},
            n_tiers=3,
            strong="m4",
            weak="m0",
        )
    with pytest.raises(ValueError, match="share tier"):
        train_sw_ranking(comps, emb, TIERS, n_tiers=3, strong="m4", weak="m5")
    with pytest.raises(ValueError, match="prompt_emb must have shape"):
        train_sw_ranking(comps, np.ones((2, 2), dtype=np.float32), TIERS, n_tiers=3, strong="m4", weak="m0")
    dropped = train_sw_ranking(
        make_comparisons([0, 0], [5, 0], [0, 4], [0, 1], 1),
        emb,
        {k: v for k, v in TIERS.items() if k != "m5"},
        n_tiers=3,
        strong="m4",
        weak="m0",
        drop_unknown_models=True,
    )
    assert dropped.cells.tolist() == [[0, 2, 1]]


def test_row_weights_multiply_counts_and_are_checked() -> None:
    comps = make_comparisons([0, 0, 0], [0, 0, 2], [4, 4, 4], [1, 0, 0], 1, kinds=[0, 1, 0])
    emb = np.array([[1.0, 0.0]], dtype=np.float32)
    art = train_sw_ranking(
        comps,
        emb,
        TIERS,
        n_tiers=3,
        strong="m4",
        weak="m0",
        label_weights={"judge": 0.5},
        row_weights=np.array([2.0, 4.0, 0.0]),
    )
    assert dict(zip(map(tuple, art.cells.tolist()), art.cell_counts[0])) == {(0, 2, 0): 2.0, (0, 2, 1): 2.0}
    with pytest.raises(ValueError, match=r"row_weights must have shape \(3,\)"):
        train_sw_ranking(comps, emb, TIERS, n_tiers=3, strong="m4", weak="m0", row_weights=np.ones(2))
    with pytest.raises(ValueError, match="row_weights must be finite and >= 0"):
        train_sw_ranking(comps, emb, TIERS, n_tiers=3, strong="m4", weak="m0", row_weights=np.array([1.0, -1.0, 1.0]))
