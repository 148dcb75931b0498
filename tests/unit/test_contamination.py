"""`lmroute.export.contamination`: which training prompts are near-copies of eval prompts."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest

from lmroute.export.contamination import find_contamination, main, near_duplicates


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_every_near_copy_of_an_eval_prompt_is_found_not_only_the_nearest() -> None:
    """Two training variants of one eval question (cosine 0.998 and 0.997) were reported as one: only each
    eval prompt's nearest training prompt was kept, so the other variant stayed in the training data."""
    rng = np.random.default_rng(0)
    question = _unit(rng.standard_normal(16))
    noise = _unit(rng.standard_normal((2, 16)))
    close = _unit(question + np.array([0.06, 0.08])[:, None] * noise)
    unrelated = _unit(rng.standard_normal((5, 16)))
    train = np.vstack([unrelated[:2], close[0], unrelated[2:], close[1]])
    names = ["u0", "u1", "variant a", "u2", "u3", "u4", "variant b"]
    hits = find_contamination(names, train, {"mt_bench": (["the question"], question[None, :])}, threshold=0.95)
    assert sorted(h.train_prompt for h in hits) == ["variant a", "variant b"]
    assert all(h.benchmark == "mt_bench" and h.eval_prompt == "the question" and h.cosine >= 0.95 for h in hits)
    rows, cols, cos = near_duplicates(question[None, :], train, threshold=0.95, chunk=1)
    assert rows.tolist() == [0, 0] and sorted(cols.tolist()) == [2, 6] and (cos >= 0.95).all()


@pytest.mark.parametrize("threshold", [0.0, 1.5, -1.0, math.nan])
def test_a_threshold_that_is_no_cosine_is_refused_before_anything_is_embedded(
    threshold: float, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(threshold=threshold, cache_dir=tmp_path / "never", data_dir=tmp_path / "none", out=None)
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"contamination: --threshold: {threshold} must be in (0, 1]")
    assert not (tmp_path / "never").exists()
