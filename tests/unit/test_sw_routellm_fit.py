"""sw_ranking's fit "routellm": RouteLLM's per-request scikit-learn fit from a bundle's cells.

The rows RouteLLM builds (every battle twice, a tie one win each way, +log(base) / -log(base) columns,
a same-tier battle's first entry overwritten) are built here battle by battle, as its
`compute_elo_mle_with_tie` does, and fitted with scikit-learn at RouteLLM's settings; `RouteLLMFit`
must give the same ratings from the cells alone. (RouteLLM's own code is compared in
tests/integration/test_import_routellm.py, which installs it.) The bundle side: a tiny real bundle whose
manifest says fit "routellm" loads, scores as `RouteLLMFit` over the table's cell weights, differs from
the exact fit by the amount lbfgs stops short, and is refused by name where scikit-learn is missing.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from lmroute.bundle import BundleError, load_bundle
from lmroute.bundle.kinds.sw_routellm_fit import RouteLLMFit
from lmroute.bundle.testing import make_fake_encoder_dir, make_tiny_bundle, synthetic_prompts
from lmroute.bundle.writer import restamp_bundle


def _battles(rng: np.random.Generator, n: int, n_tiers: int) -> list[tuple[int, int, str]]:
    """Battles between tiers, some within one tier; the better tier (lower index) wins more often."""
    out = []
    for _ in range(n):
        a, b = (int(t) for t in rng.integers(0, n_tiers, size=2))
        p_a = 1.0 / (1.0 + math.exp(0.8 * (a - b)))
        u = rng.random()
        out.append((a, b, "tie" if u < 0.2 else "model_a" if u < 0.2 + 0.8 * p_a else "model_b"))
    return out


def _routellm_rows(
    battles: list[tuple[int, int, str]], weights: np.ndarray, tiers: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X, Y and sample weights as RouteLLM's compute_elo_mle_with_tie builds them (base 10)."""
    col = {t: j for j, t in enumerate(tiers)}
    rows = battles + battles
    x = np.zeros((len(rows), len(tiers)))
    y = np.zeros(len(rows))
    for i, (a, b, winner) in enumerate(rows):
        x[i, col[a]] = math.log(10)
        x[i, col[b]] = -math.log(10)  # overwrites model_a's entry in a same-tier battle
        if winner == "model_a" or (winner == "tie" and i < len(battles)):
            y[i] = 1.0
    return x, y, np.concatenate([weights, weights])


def _cells(battles: list[tuple[int, int, str]], weights: np.ndarray, virtual: int) -> tuple[np.ndarray, np.ndarray]:
    """The import's cells (a same-tier battle as the virtual tier, as model_a, against the tier) and the
    summed weight of each cell's battles."""
    keys: dict[tuple[int, int, int], float] = {}
    for (a, b, winner), w in zip(battles, weights.tolist(), strict=True):
        if a == b:
            a = virtual
        outcome = 2 if winner == "tie" else 0 if winner == "model_a" else 1
        if a > b:
            a, b, outcome = b, a, {0: 1, 1: 0, 2: 2}[outcome]
        keys[(a, b, outcome)] = keys.get((a, b, outcome), 0.0) + w
    cells = sorted(keys)
    return np.array(cells, dtype=np.int32), np.array([keys[c] for c in cells])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ratings_equal_routellms_fit_over_its_own_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_tiers = 4
    battles = _battles(rng, 300, n_tiers)
    weights = 10.0 * 10.0 ** rng.uniform(0.0, 1.0, size=len(battles))  # RouteLLM's 10 * 10 ** (sim / max)
    tiers = sorted({t for a, b, _ in battles for t in (a, b)})
    x, y, w = _routellm_rows(battles, weights, tiers)
    theirs = LogisticRegression(fit_intercept=False, C=math.inf).fit(x, y, sample_weight=w).coef_[0]
    cells, cell_weights = _cells(battles, weights, virtual=n_tiers)
    fit = RouteLLMFit(cells, tiers, 10.0)
    ours = fit.ratings(cell_weights)
    assert np.abs(ours - theirs).max() <= 1e-9
    strong, weak = 0, n_tiers - 1
    [p] = fit.scores(cell_weights[None, :], strong, weak)
    assert p == pytest.approx(1.0 - 1.0 / (1.0 + 10.0 ** (theirs[strong] - theirs[weak])), abs=1e-12)


def test_a_tier_without_a_column_is_fixed_at_zero() -> None:
    """The virtual opponent of same-tier battles gets no column: its rating is 0, not fitted."""
    cells = np.array([[0, 1, 0], [0, 2, 2], [1, 2, 1]], dtype=np.int32)  # tier 2: no model
    fit = RouteLLMFit(cells, [0, 1], 10.0)
    assert fit.columns == {0: 0, 1: 1}
    r = fit.ratings(np.array([3.0, 2.0, 5.0]))
    assert r.shape == (2,) and r[1] < 0.0  # tier 1 lost to tier 2, whose rating stays 0
    [p] = fit.scores(np.array([[3.0, 2.0, 5.0]]), 1, 2)
    assert p == pytest.approx(1.0 - 1.0 / (1.0 + 10.0 ** r[1]))


@pytest.fixture(scope="module")
def routellm_fit_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real bundle, and a copy whose sw_ranking router says fit "routellm" (restamped)."""
    root = tmp_path_factory.mktemp("swfit")
    enc = make_fake_encoder_dir(root / "enc", dim=16)
    exact = make_tiny_bundle(root / "exact", encoder_dir=enc, n_prompts=60, n_models=6, n_tiers=3)
    out = root / "routellm"
    shutil.copytree(exact, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "fit" not in manifest["routers"]["sw_ranking"]["params"]  # exact: the default, not written
    manifest["routers"]["sw_ranking"]["params"]["fit"] = "routellm"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    restamp_bundle(out)
    return out


def test_a_routellm_fit_bundle_scores_with_routellms_fit(routellm_fit_bundle: Path) -> None:
    routellm = load_bundle(routellm_fit_bundle)
    exact = load_bundle(routellm_fit_bundle.parent / "exact")
    assert routellm.manifest.routers["sw_ranking"].params.fit == "routellm"
    assert exact.manifest.routers["sw_ranking"].params.fit == "exact"
    batch = routellm.prompt_batch(synthetic_prompts(12, seed=4))
    router = routellm.routers["sw_ranking"]
    ours = router.score(batch)
    p = router.params
    assert router.routellm_fit is not None
    weights = router.table.cell_weights(batch.embeddings, p.gamma)
    direct = router.routellm_fit.scores(weights, p.strong_tier, p.weak_tier)
    np.testing.assert_array_equal(ours, direct)
    gap = np.abs(ours - exact.routers["sw_ranking"].score(batch))
    assert 0.0 < gap.max() <= 1e-3  # the same model; lbfgs stops at tol 1e-4 short of the optimum


def test_a_routellm_fit_bundle_without_scikit_learn_is_refused_by_name(
    routellm_fit_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)  # what an image without it imports
    with pytest.raises(BundleError) as info:
        load_bundle(routellm_fit_bundle)
    message = str(info.value)
    assert message.startswith("manifest.json: routers.sw_ranking.params.fit 'routellm' needs scikit-learn")
    assert "pip install 'lmroute[routellm]'" in message
