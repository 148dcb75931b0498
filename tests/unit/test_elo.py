"""Tests of lmroute.export.elo: global BT-with-ties Elo, optimal tiers, the Markdown table."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lmroute.export.data import Comparisons
from lmroute.export.elo import (
    BASE,
    INIT,
    SCALE,
    aggregate_cells,
    compute_elo,
    format_elo_table,
    segment_tiers,
)


def make_comparisons(rows, models, sources=("s0", "s1"), kinds=None, srcs=None):
    """rows: (prompt_text, a_idx, b_idx, outcome)."""
    prompts: dict[str, int] = {}
    p = [prompts.setdefault(r[0], len(prompts)) for r in rows]
    n = len(rows)
    return Comparisons(
        prompts=tuple(prompts),
        prompt_idx=np.asarray(p, dtype=np.int32),
        model_a=np.asarray([r[1] for r in rows], dtype=np.int32),
        model_b=np.asarray([r[2] for r in rows], dtype=np.int32),
        outcome=np.asarray([r[3] for r in rows], dtype=np.int8),
        label_kind=np.asarray(kinds if kinds is not None else [0] * n, dtype=np.int8),
        source=np.asarray(srcs if srcs is not None else [0] * n, dtype=np.int8),
        models=tuple(models),
        sources=tuple(sources),
    )


def test_elo_two_models_closed_form() -> None:
    # m1 beats m0 3 times, m0 beats m1 once, one tie: P(m1 beats m0) = (3 + 0.5) / 5 = 0.7
    rows = [("p", 0, 1, 1)] * 3 + [("q", 0, 1, 0), ("r", 1, 0, 2)] + [("x", 2, 2, 0)]
    table = compute_elo(make_comparisons(rows, ["m0", "m1", "m2"]))
    expected = SCALE * math.log(0.7 / 0.3) / math.log(BASE)
    assert table.elo[1] - table.elo[0] == pytest.approx(expected, abs=1e-9)
    assert table.elo[0] + table.elo[1] == pytest.approx(2 * INIT, abs=1e-9)
    assert table.elo[2] == INIT and table.n_comparisons.tolist() == [5, 5, 0]  # self-battle ignored
    assert set(table.as_dict()) == {"m0", "m1"}


def test_elo_side_swap_invariance_and_label_weights() -> None:
    rng = np.random.default_rng(0)
    rows = [(f"p{i}", *rng.choice(4, 2, replace=False), int(rng.integers(0, 3))) for i in range(300)]
    kinds = rng.integers(0, 3, 300)
    c = make_comparisons(rows, ["a", "b", "c", "d"], kinds=kinds)
    swapped = [(p, b, a, {0: 1, 1: 0, 2: 2}[o]) for p, a, b, o in rows]
    t1 = compute_elo(c)
    t2 = compute_elo(make_comparisons(swapped, ["a", "b", "c", "d"], kinds=kinds))
    np.testing.assert_allclose(t1.elo, t2.elo, atol=1e-8)
    # weighting a label kind 0 is the same as dropping its rows
    w = compute_elo(c, label_weights={"judge": 0.0})
    keep = [r for r, k in zip(rows, kinds) if k != 1]
    d = compute_elo(make_comparisons(keep, ["a", "b", "c", "d"], kinds=[k for k in kinds if k != 1]))
    np.testing.assert_allclose(w.elo, d.elo, atol=1e-8)
    # doubling the human weight == duplicating the human rows
    w2 = compute_elo(c, label_weights={"human": 2.0})
    dup = rows + [r for r, k in zip(rows, kinds) if k == 0]
    d2 = compute_elo(make_comparisons(dup, ["a", "b", "c", "d"], kinds=list(kinds) + [0] * int((kinds == 0).sum())))
    np.testing.assert_allclose(w2.elo, d2.elo, atol=1e-8)
    with pytest.raises(ValueError, match="unknown label kinds"):
        compute_elo(c, label_weights={"humans": 1.0})


def test_elo_exclude_models() -> None:
    rows = [("p", 0, 1, 0), ("p", 1, 0, 0), ("q", 1, 2, 0), ("q", 2, 1, 0), ("r", 0, 2, 1)]
    table = compute_elo(make_comparisons(rows, ["a", "b", "example"]), exclude_models=["example"])
    assert table.elo[2] == INIT and table.n_comparisons[2] == 0
    assert table.elo[0] == pytest.approx(INIT) and table.elo[1] == pytest.approx(INIT)
    with pytest.raises(ValueError, match="not in the table"):
        compute_elo(make_comparisons(rows, ["a", "b", "example"]), exclude_models=["nope"])


def test_aggregate_cells_swaps_and_flips() -> None:
    cells, w = aggregate_cells(
        np.array([2, 0, 2, 1]), np.array([0, 2, 0, 0]), np.array([0, 1, 2, 1]), np.array([1.0, 2.0, 3.0, 4.0])
    )
    got = {tuple(c): x for c, x in zip(cells.tolist(), w)}
    assert got == {(0, 2, 1): 3.0, (0, 2, 2): 3.0, (0, 1, 0): 4.0}


def _brute_force_sse(x, k):
    best = math.inf
    n = len(x)
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        sse = sum(np.var(x[i:j]) * (j - i) for i, j in zip(bounds, bounds[1:]))
        best = min(best, sse)
    return best


@pytest.mark.parametrize("seed", range(4))
def test_segment_tiers_is_optimal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ratings = {f"m{i}": float(v) for i, v in enumerate(rng.normal(1000, 150, 9))}
    k = 4
    tiers = segment_tiers(ratings, n_tiers=k)
    assert sorted(set(tiers.values())) == list(range(k))
    names = sorted(ratings, key=ratings.get)
    assert [tiers[m] for m in names] == sorted(tiers[m] for m in names)  # monotone, 0 = weakest
    x = np.array([ratings[m] for m in names])
    sse = sum(
        float(np.sum((x[[tiers[m] == t for m in names]] - x[[tiers[m] == t for m in names]].mean()) ** 2))
        for t in range(k)
    )
    assert sse == pytest.approx(_brute_force_sse(x, k), rel=1e-9, abs=1e-9)


def test_segment_tiers_clear_clusters_and_errors() -> None:
    ratings = {"a": 1.0, "b": 1.1, "c": 5.0, "d": 5.2, "e": 9.0}
    assert segment_tiers(ratings, n_tiers=3) == {"a": 0, "b": 0, "c": 1, "d": 1, "e": 2}
    assert segment_tiers(ratings, n_tiers=5) == {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}
    with pytest.raises(ValueError, match="at least n_tiers=6"):
        segment_tiers(ratings, n_tiers=6)


def test_format_elo_table() -> None:
    rows = [("p", 2, 0, 1), ("q", 2, 0, 1), ("r", 2, 0, 0)]
    table = compute_elo(make_comparisons(rows, ["strong", "unused", "weak"]))
    text = format_elo_table(table, {"weak": 0, "strong": 1})
    lines = text.strip().splitlines()
    assert lines[0] == "| rank | model | Elo | tier | comparisons |"
    assert lines[2].startswith("| 1 | strong | 1060.2 | 1 | 3 |")
    assert lines[3].startswith("| 2 | weak | 939.8 | 0 | 3 |")
    assert len(lines) == 4  # the model without comparisons is left out
