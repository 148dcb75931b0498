"""End to end through the offline pipeline in quick mode: real data (a few rows per source), the real
exported encoder, every router trained by our code, a bundle written, validated, calibrated and
evaluated. Numbers are not meaningful at this size; the wiring and the contracts are what is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmroute_bundle import load_bundle
from lmroute_export import names
from lmroute_export.cli import main as cli_main
from lmroute_export.evaluate import score_bundle
from lmroute_export.pipeline import BuildConfig, build_bundle

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_bundle(tmp_path_factory: pytest.TempPathFactory, exported_encoder_dir: Path) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("pipeline")
    cfg = BuildConfig(
        out_dir=root / "bundle",
        cache_dir=root / "cache",
        exported_encoder_dir=exported_encoder_dir,
        quick=True,
        bert_time_budget_s=60.0,
    )
    report = build_bundle(cfg)
    return cfg.out_dir, report


def test_bundle_has_every_router_and_is_calibrated(quick_bundle: tuple[Path, object]) -> None:
    path, report = quick_bundle
    bundle = load_bundle(path)  # validates checksums, shapes, calibration
    assert list(bundle.routers) == ["random", "mf", "sw_ranking", "bert"]
    m = bundle.manifest
    assert (m.default_pair.strong, m.default_pair.weak) == (names.STRONG, names.WEAK)
    assert m.tiers[names.STRONG] > m.tiers[names.WEAK]
    assert m.training_data.n_comparisons == report.data["n_train_comparisons"]
    assert report.data["n_bad_rows"] > 0  # the AlpacaEval file has known bad rows: they are counted
    # calibration: on the calibration prompts themselves, threshold(p) sends ~p to strong
    assert m.calibration is not None
    assert m.calibration.n_prompts == 200


def test_scores_are_probabilities_and_deterministic(quick_bundle: tuple[Path, object]) -> None:
    path, _ = quick_bundle
    bundle = load_bundle(path)
    texts = ["What is 17 * 23?", "Write a haiku about autumn.", "Explain the CAP theorem in detail."]
    first = score_bundle(bundle, texts)
    again = score_bundle(load_bundle(path), list(reversed(texts)))
    for name, s in first.items():
        assert s.shape == (3,)
        assert np.all((s >= 0.0) & (s <= 1.0)), name
        np.testing.assert_allclose(s, again[name][::-1], rtol=0, atol=1e-6, err_msg=name)


def test_threshold_for_share_routes_that_share(quick_bundle: tuple[Path, object]) -> None:
    path, _ = quick_bundle
    bundle = load_bundle(path)
    from lmroute_export.data import load_calibration_prompts

    prompts = load_calibration_prompts(REPO / "data")[:200]
    scores = score_bundle(bundle, prompts)
    for name in ("mf", "sw_ranking", "bert"):
        for p in (0.2, 0.5, 0.8):
            share = float(np.mean(scores[name] >= bundle.threshold_for_share(name, p)))
            assert abs(share - p) <= 0.02, (name, p, share)


def test_evaluate_command_writes_report(quick_bundle: tuple[Path, object], tmp_path: Path) -> None:
    path, _ = quick_bundle
    out = tmp_path / "report"
    rc = cli_main(["evaluate", "--bundle", str(path), "--out", str(out), "--data-dir", str(REPO / "data"),
                   "--limit", "60"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    md = (out / "report.md").read_text()
    assert "lmroute-export evaluate" in md
    for bench in ("mt_bench", "mmlu", "gsm8k"):
        assert (out / f"{bench}.png").is_file() or any(out.glob(f"*{bench}*.png"))
    assert set(results) >= {"bundle"}
