"""The compiled scoring core (lmroute.kernels.compiled) against the NumPy reference, the spec.

Property tests over random shapes (hypothesis): sw_ranking scores and cell weights, the BT solve and mf
logits / pair scores agree with `lmroute.kernels.reference` to <= 1e-6 relative, including batch size 1,
tiers that appear in no cell, ties only, one training row, no training rows, a tier that only wins
(the ridge case), dense vs CSR counts, and 1 vs 2 threads. Plus the vectorised exp against numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmroute.kernels import compiled, reference

RTOL = 1e-6
ATOL = 1e-12  # scores are probabilities: this only matters for scores within 1e-12 of 0
# derandomize: the same 60 examples on every run, so CI cannot flake; a wider random search (4,000 cases
# of the sw property, 8,000 of the bt one) found the cases pinned in tests below.
PROPS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x.astype(np.float32)


def _all_cells(n_tiers: int, outcomes: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    return np.array(
        [(a, b, o) for a in range(n_tiers) for b in range(a + 1, n_tiers) for o in outcomes],
        dtype=np.int32,
    ).reshape(-1, 3)


def _problem(seed: int, n: int, d: int, n_tiers: int, density: float, outcomes=(0, 1, 2)):
    rng = np.random.default_rng(seed)
    x = _unit_rows(rng, n, d)
    cells = _all_cells(n_tiers, outcomes)
    counts = rng.poisson(density, size=(n, cells.shape[0])).astype(np.float32)
    return rng, x, cells, counts


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@PROPS
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 300),
    d=st.integers(1, 48),
    b=st.integers(1, 9),
    n_tiers=st.integers(2, 6),
    density=st.sampled_from([0.02, 0.3, 2.0]),
    gamma=st.sampled_from([1.5, 10.0, 1e5]),
)
def test_sw_scores_match_reference(seed, n, d, b, n_tiers, density, gamma):
    rng, x, cells, counts = _problem(seed, n, d, n_tiers, density)
    q = _unit_rows(rng, b, d)
    strong, weak = n_tiers - 1, 0
    want = reference.sw_scores(q, x, counts, cells, n_tiers, strong, weak, gamma=gamma)
    table = compiled.SWIndex(x, counts, cells, n_tiers)
    _assert_close(table.scores(q, strong, weak, gamma=gamma), want)
    sims = q.astype(np.float64) @ x.T.astype(np.float64)
    _assert_close(table.scores_from_sims(sims, strong, weak, gamma=gamma), want)
    np.testing.assert_allclose(
        table.cell_weights(q, gamma), reference.sw_cell_weights(q, x, counts, gamma), rtol=RTOL, atol=0
    )


@PROPS
@given(seed=st.integers(0, 2**31), n_tiers=st.integers(2, 7), n_cells=st.integers(1, 30))
def test_bt_ratings_match_reference(seed, n_tiers, n_cells):
    rng = np.random.default_rng(seed)
    full = _all_cells(n_tiers)
    cells = full[rng.choice(full.shape[0], size=min(n_cells, full.shape[0]), replace=False)]
    w = rng.exponential(size=cells.shape[0]) * rng.choice([0.0, 1.0, 1e6], size=cells.shape[0])
    want = reference.bt_ratings_from_cells(cells, w, n_tiers)
    got = compiled.bt_ratings(cells, w, n_tiers)
    # What a score is made of: every pairwise win probability sigmoid(R_i - R_j).
    _assert_close(_win_probabilities(got), _win_probabilities(want))
    # The ratings themselves where they are not saturated. In a ridge case with weights 8 orders
    # apart a tier can drift to |R| ~ 1e3-1e4, where both solvers stop at different floating-point
    # floors (1 seed in ~4000 here); every probability involving it is then exactly 0 or 1 in both.
    if np.abs(want).max() < 50.0:
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6)


def _win_probabilities(r: np.ndarray) -> np.ndarray:
    d = r[:, None] - r[None, :]
    return 0.5 * (1.0 + np.tanh(0.5 * d))


@pytest.mark.xfail(strict=True, reason="known: both solvers stop at different floating-point floors")
def test_known_ill_conditioned_case_still_disagrees():
    """Seed 5731 of the bt property's distribution: tier 3 is tied to tier 2 only by a tie of weight
    0.047 against losses of weight 1e5, so its rating rests on 7 orders of magnitude. The reference
    and the core agree on every other of 8,000 seeds (pairwise win probabilities to 1e-6) but not on
    this one; kept here so that a fix shows up as an XPASS."""
    rng = np.random.default_rng(5731)
    n_tiers = int(rng.integers(2, 8))
    full = _all_cells(n_tiers)
    cells = full[rng.choice(full.shape[0], size=min(int(rng.integers(1, 31)), full.shape[0]), replace=False)]
    w = rng.exponential(size=cells.shape[0]) * rng.choice([0.0, 1.0, 1e6], size=cells.shape[0])
    got, want = compiled.bt_ratings(cells, w, n_tiers), reference.bt_ratings_from_cells(cells, w, n_tiers)
    _assert_close(_win_probabilities(got), _win_probabilities(want))


def test_row_dots_match_matmul_and_a_row_does_not_depend_on_the_batch():
    rng = np.random.default_rng(11)
    for n, d, m in ((1, 1, 1), (7, 13, 3), (64, 256, 11), (5, 8, 1)):
        x, w = rng.standard_normal((n, d)), rng.standard_normal((m, d))
        got = compiled.row_dots(x, w)
        np.testing.assert_allclose(got, x @ w.T, rtol=1e-12, atol=1e-12)
        for i in range(n):
            assert np.array_equal(compiled.row_dots(x[i : i + 1], w)[0], got[i])
    with pytest.raises(ValueError, match=r"must be \[n, d\] and \[m, d\]"):
        compiled.row_dots(np.zeros((2, 3)), np.zeros((2, 4)))


def test_batch_of_one_equals_its_row_in_a_batch():
    rng, x, cells, counts = _problem(1, 200, 16, 4, 0.3)
    q = _unit_rows(rng, 12, 16)
    table = compiled.SWIndex(x, counts, cells, 4)
    batch = table.scores(q, 3, 0)
    single = np.array([table.scores(q[i : i + 1], 3, 0)[0] for i in range(12)])
    np.testing.assert_array_equal(batch, single)


def test_tiers_in_no_cell_and_strong_weak_in_one_cell():
    rng = np.random.default_rng(2)
    x = _unit_rows(rng, 40, 8)
    cells = np.array([[1, 4, 0], [1, 4, 1], [1, 4, 2]], dtype=np.int32)  # tiers 0, 2, 3, 5 never appear
    counts = rng.poisson(1.0, size=(40, 3)).astype(np.float32)
    q = _unit_rows(rng, 5, 8)
    want = reference.sw_scores(q, x, counts, cells, 6, 4, 1)
    _assert_close(compiled.SWIndex(x, counts, cells, 6).scores(q, 4, 1), want)


@pytest.mark.parametrize("small", [8.8e-9, 1e-3, 1.0])
def test_two_cells_fourteen_orders_apart_solve_exactly(small):
    """Found by the property test above: tier 0 beats tier 1 with weight 6.4e5 and loses with weight
    8.8e-9. The MLE is R0 - R1 = ln(w_win / w_loss) (~31.9); the solvers once stopped ~4 short
    (the gradient test alone passes while a cell 1e-14 of the total still moves R) and lost the
    tiny 1 - Y of the pair to cancellation. Both must land on the closed form."""
    cells = _all_cells(3)
    w = np.zeros(cells.shape[0])
    w[0], w[1] = 6.39707933e05, small  # (0, 1, a wins), (0, 1, b wins)
    want_gap = np.log(w[0] / w[1])
    for ratings in (reference.bt_ratings_from_cells(cells, w, 3), compiled.bt_ratings(cells, w, 3)):
        assert ratings[0] - ratings[1] == pytest.approx(want_gap, rel=1e-9)
        assert ratings[2] == 0.0  # tier 2 is in no positive cell


def test_ties_only():
    rng, x, cells, counts = _problem(3, 60, 8, 3, 0.5, outcomes=(2,))
    q = _unit_rows(rng, 4, 8)
    got = compiled.SWIndex(x, counts, cells, 3).scores(q, 2, 0)
    _assert_close(got, reference.sw_scores(q, x, counts, cells, 3, 2, 0))
    _assert_close(got, np.full(4, 0.5))  # ties only: every rating 0


def test_one_training_row():
    rng = np.random.default_rng(4)
    x = _unit_rows(rng, 1, 8)
    cells = _all_cells(3)
    counts = np.zeros((1, cells.shape[0]), dtype=np.float32)
    counts[0, [0, 4, 8]] = [3.0, 1.0, 2.0]
    q = _unit_rows(rng, 3, 8)
    want = reference.sw_scores(q, x, counts, cells, 3, 2, 0)
    _assert_close(compiled.SWIndex(x, counts, cells, 3).scores(q, 2, 0), want)


def test_no_training_rows_scores_one_half():
    cells = _all_cells(3)
    x = np.zeros((0, 8), dtype=np.float32)
    counts = np.zeros((0, cells.shape[0]), dtype=np.float32)
    q = _unit_rows(np.random.default_rng(5), 2, 8)
    got = compiled.SWIndex(x, counts, cells, 3).scores(q, 2, 0)
    _assert_close(got, reference.sw_scores(q, x, counts, cells, 3, 2, 0))
    _assert_close(got, np.full(2, 0.5))


def test_tier_that_only_wins_uses_the_ridge_like_the_reference():
    rng = np.random.default_rng(6)
    x = _unit_rows(rng, 30, 8)
    cells = np.array([[0, 1, 0], [1, 2, 0], [1, 2, 1], [0, 2, 0]], dtype=np.int32)  # tier 0 never loses
    counts = rng.poisson(2.0, size=(30, 4)).astype(np.float32) + 1
    q = _unit_rows(rng, 3, 8)
    want = reference.sw_scores(q, x, counts, cells, 3, 0, 2)
    got = compiled.SWIndex(x, counts, cells, 3).scores(q, 0, 2)
    assert np.all(want > 1 - 1e-5)  # separated: the ridge keeps it finite, just below 1
    _assert_close(got, want)


def test_query_pointing_away_from_every_prompt_weights_all_rows_gamma():
    x = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    cells = _all_cells(2)
    counts = np.array([[5, 0, 1], [0, 4, 2]], dtype=np.float32)
    q = np.array([[-0.6, -0.8]], dtype=np.float32)  # max similarity < 0
    table = compiled.SWIndex(x, counts, cells, 2)
    np.testing.assert_allclose(table.cell_weights(q, 10.0), [[50.0, 40.0, 30.0]], rtol=1e-15)
    _assert_close(table.scores(q, 1, 0), reference.sw_scores(q, x, counts, cells, 2, 1, 0))


def test_dense_and_csr_counts_agree():
    rng, x, cells, counts = _problem(7, 120, 12, 4, 0.2)
    rows, cols = np.nonzero(counts)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=120))])
    csr = (indptr, cols, counts[rows, cols].astype(np.float64))
    q = _unit_rows(rng, 6, 12)
    dense = compiled.SWIndex(x, counts, cells, 4).scores(q, 3, 0)
    np.testing.assert_array_equal(compiled.SWIndex(x, csr, cells, 4).scores(q, 3, 0), dense)


def test_two_threads_equal_one_thread():
    rng, x, cells, counts = _problem(8, 20_000, 64, 5, 0.1)  # 12.8M multiply-adds: enough for 2 threads
    q = _unit_rows(rng, 10, 64)
    table = compiled.SWIndex(x, counts, cells, 5)
    before = compiled.get_num_threads()
    try:
        compiled.set_num_threads(1)
        one = table.scores(q, 4, 0)
        compiled.set_num_threads(2)
        two = table.scores(q, 4, 0)
    finally:
        compiled.set_num_threads(before)
    np.testing.assert_allclose(two, one, rtol=1e-9)  # only the summation order differs


def test_float32_sims_from_faiss_style_scan_are_close():
    """The FAISS path: float32 similarities lose the exactness (measured in benchmarks/), not the answer."""
    rng, x, cells, counts = _problem(9, 500, 64, 4, 0.3)
    q = _unit_rows(rng, 8, 64)
    table = compiled.SWIndex(x, counts, cells, 4)
    got = table.scores_from_sims((q @ x.T).astype(np.float32), 3, 0)
    np.testing.assert_allclose(got, table.scores(q, 3, 0), rtol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cells": np.array([[0, 0, 1]])}, "same-tier cell"),
        ({"cells": np.array([[0, 3, 1]])}, "tier outside 0..2"),
        ({"cells": np.array([[0, 1, 5]])}, "outcome outside"),
        ({"cell_counts": np.ones((4, 2))}, "cell_counts must have shape (5, 1)"),
        ({"cell_counts": -np.ones((5, 1))}, "finite and >= 0"),
        ({"prompt_emb": np.ones(5)}, "prompt_emb must be 2-D"),
        ({"prompt_emb": np.array([[1, 1, 1]] * 4 + [[np.nan, 1, 1]])}, "prompt_emb must be finite"),
    ],
)
def test_bad_tables_are_refused_with_the_reason(kwargs, message):
    args = {
        "prompt_emb": np.ones((5, 3), dtype=np.float32),
        "cell_counts": np.ones((5, 1)),
        "cells": np.array([[0, 1, 0]]),
        "n_tiers": 3,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compiled.SWIndex(**args)


def test_bad_calls_are_refused_with_the_reason():
    table = compiled.SWIndex(np.ones((5, 3), dtype=np.float32), np.ones((5, 1)), np.array([[0, 1, 0]]), 2)
    with pytest.raises(ValueError, match=r"query_emb must have shape \[b, 3\]"):
        table.scores(np.ones((2, 4), dtype=np.float32), 1, 0)
    with pytest.raises(ValueError, match="strong_tier 2 is outside 0..1"):
        table.scores(np.ones((2, 3), dtype=np.float32), 2, 0)
    with pytest.raises(ValueError, match="gamma must be a positive finite number"):
        table.scores(np.ones((2, 3), dtype=np.float32), 1, 0, gamma=float("nan"))
    with pytest.raises(ValueError, match=r"sims must have shape \[b, 5\]"):
        table.scores_from_sims(np.ones((2, 4)), 1, 0)
    # a NaN gave plausible numbers (sims) or every score wrong (a query, a prompt row), with no error
    with pytest.raises(ValueError, match="query_emb must be finite"):
        table.scores(np.array([[1.0, np.nan, 0.0]]), 1, 0)
    with pytest.raises(ValueError, match="sims must be finite"):
        table.scores_from_sims(np.array([[0.1, 0.2, np.nan, 0.3, 0.4]]), 1, 0)
    with pytest.raises(ValueError, match="threads must be an integer"):
        compiled.set_num_threads(0)


@PROPS
@given(
    seed=st.integers(0, 2**31),
    b=st.integers(1, 40),
    d=st.integers(1, 64),
    k=st.integers(1, 16),
    m=st.integers(2, 12),
)
def test_mf_matches_reference(seed, b, d, k, m):
    rng = np.random.default_rng(seed)
    w_proj, p, w_cls = rng.normal(size=(k, d)), rng.normal(size=(m, k)), rng.normal(size=k)
    emb = rng.normal(size=(b, d)).astype(np.float32)
    index = compiled.MFIndex.from_factors(w_proj, p, w_cls)
    want = reference.mf_logits(emb, w_proj, p, w_cls)
    scale = float(np.abs(emb).sum(axis=1).max() * np.abs(index.vectors).max())
    np.testing.assert_allclose(index.logits(emb), want, rtol=RTOL, atol=1e-12 * scale)
    pairs = [(m - 1, 0), (0, 1)]
    diff = np.stack([want[:, s] - want[:, w] for s, w in pairs], axis=1)
    np.testing.assert_allclose(index.pair_scores(emb, pairs), 1 / (1 + np.exp(-diff)), rtol=RTOL, atol=1e-12)
    u = reference.mf_pair_vector(w_proj, p, w_cls, m - 1, 0)
    np.testing.assert_allclose(
        compiled.pair_probabilities(emb, u)[:, 0], 1 / (1 + np.exp(-(emb.astype(np.float64) @ u))), rtol=RTOL
    )


@PROPS
@given(
    seed=st.integers(0, 2**31),
    b=st.integers(1, 40),
    d=st.integers(1, 400),
    weight=st.sampled_from([0.0, 0.5, 4.0, 50.0]),
    extreme=st.booleans(),
)
def test_blend_matches_reference(seed, b, d, weight, extreme):
    """The difficulty-prior blend: batch size 1 and up, scores at and near 0 and 1 (clipped), large
    weights that push the result into either tail."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(b, d)).astype(np.float32)
    w = rng.normal(size=d) * 0.1
    scores = rng.uniform(size=b)
    if extreme:
        scores[::2] = rng.choice([0.0, 1.0, 1e-15, 1.0 - 1e-15], size=scores[::2].shape)
    args = (scores, emb, w, float(rng.normal()), float(rng.normal()), float(rng.uniform(0.1, 3)))
    kw = dict(weight=weight, center=float(rng.normal()), scale=float(rng.uniform(0.1, 3)))
    got = compiled.blend_scores(*args, **kw)
    want = reference.blend_scores(*args, **kw)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)
    assert got.dtype == np.float64 and got.shape == (b,)


@pytest.mark.parametrize(
    ("scores", "emb", "w", "scale", "message"),
    [
        (np.zeros(2), np.zeros((3, 4), np.float32), np.zeros(4), 1.0, "do not match"),
        (np.zeros(3), np.zeros((3, 4), np.float32), np.zeros(5), 1.0, "do not match"),
        (np.zeros(3), np.zeros(4, np.float32), np.zeros(4), 1.0, "must be 2-D"),
        (np.zeros(3), np.zeros((3, 4), np.float32), np.zeros(4), 0.0, "scales must be positive"),
    ],
)
def test_blend_refuses_what_the_reference_refuses(scores, emb, w, scale, message):
    for impl in (compiled.blend_scores, reference.blend_scores):
        with pytest.raises(ValueError, match=message):
            impl(scores, emb, w, 0.0, 0.0, 1.0, weight=1.0, center=0.0, scale=scale)


def test_fast_exp_is_accurate_over_the_double_range():
    x = np.concatenate([np.linspace(-745.2, 709.7, 400_001), [-800.0, -746.0, 710.0, 800.0, 0.0]])
    out = np.empty_like(x)
    compiled._core.fast_exp(x, out)
    with np.errstate(over="ignore"):
        want = np.exp(x)
    normal = (want > 2.3e-308) & np.isfinite(want)
    rel = np.abs(out[normal] - want[normal]) / want[normal]
    assert rel.max() <= 4 * np.finfo(np.float64).eps
    assert out[x <= -746.0].tolist() == [0.0, 0.0] and np.all(np.isinf(out[x >= 710.0]))


def test_device_scan_code_matches_the_cpu_core_on_numpy():
    """lmroute.kernels.gpu runs on CuPy where present; the same code on NumPy + SciPy must agree."""
    from lmroute.kernels.gpu import DeviceSWIndex

    rng, x, cells, counts = _problem(10, 400, 24, 5, 0.2)
    q = _unit_rows(rng, 9, 24)
    table = compiled.SWIndex(x, counts, cells, 5)
    device = DeviceSWIndex(table, xp="numpy")
    np.testing.assert_allclose(device.cell_weights(q, 1e5), table.cell_weights(q, 1e5), rtol=1e-9)
    _assert_close(device.scores(q, 4, 0, gamma=1e5), table.scores(q, 4, 0, gamma=1e5))
    _assert_close(device.scores(q, 4, 0, gamma=1e5), reference.sw_scores(q, x, counts, cells, 5, 4, 0, gamma=1e5))


def test_an_output_array_of_another_dtype_or_layout_is_refused_not_converted() -> None:
    """A converted output was a copy the core wrote and dropped: the caller's array stayed as it was."""
    core = compiled._core
    x = np.array([0.0, 1.0, -2.0])
    with pytest.raises(TypeError):
        core.fast_exp(x, np.zeros(3, np.float32))
    rows = np.ones((3, 4))
    with pytest.raises(TypeError):
        core.row_dots(rows, rows, np.zeros((3, 3)).T)  # not C-contiguous
    out = np.zeros(3)
    core.fast_exp(x, out)
    np.testing.assert_allclose(out, np.exp(x), rtol=1e-15)
    nan = np.zeros(2)
    core.fast_exp(np.array([np.nan, -np.nan]), nan)  # the exponent bits of a NaN: no undefined shift
    assert np.isnan(nan).all()
