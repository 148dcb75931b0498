"""An adapted bundle end to end: a small real bundle (a real tiny ONNX encoder, `make_tiny_bundle`), a head
learnt from outcomes of its own prompts (the default kernel learner: kind `adapted_kernel`; the ridge:
kind `adapted`), `write_adapted_bundle`, the validating loader, and the served score equal to the offline
math; lineage in the manifest; bad arrays and references refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmroute.adapt.bundle_out import OutcomeSpan, write_adapted_bundle
from lmroute.adapt.head import log_length
from lmroute.adapt.pipeline import Adaptation, adapt_paired
from lmroute.bundle.errors import BundleError
from lmroute.bundle.files import sha256_file
from lmroute.bundle.loader import Bundle, load_bundle
from lmroute.bundle.routers import PromptBatch
from lmroute.bundle.testing import make_fake_encoder_dir, make_tiny_bundle, synthetic_prompts
from lmroute.bundle.writer import restamp_bundle

SPAN = OutcomeSpan(kind="paired", n_outcomes=600, first_at="2026-11-01T00:00:00Z", last_at="2026-11-30T23:59:59Z")


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapt")
    encoder = make_fake_encoder_dir(root / "encoder", dim=16, seed=3)
    return make_tiny_bundle(root / "parent", encoder_dir=encoder, seed=5)


@pytest.fixture(scope="module")
def learnt(parent: Path) -> tuple[Bundle, list[str], Adaptation]:
    bundle = load_bundle(parent)
    texts = synthetic_prompts(600, seed=9)
    batch = bundle.prompt_batch(texts)
    assert batch.embeddings is not None
    emb, lengths = batch.embeddings, log_length(texts)
    # outcomes of a learnable problem on these prompts: the strong model gains along one direction
    u = np.random.default_rng(1).standard_normal(emb.shape[1])
    rng = np.random.default_rng(2)
    weak = (rng.random(600) < 1.0 / (1.0 + np.exp(-(1.0 - 6.0 * (emb @ u))))).astype(float)
    strong = np.maximum(weak, (rng.random(600) < 0.8).astype(float))
    base = bundle.routers["mf"].score(batch)
    result = adapt_paired(emb, lengths, strong - weak, base, base, np.arange(600.0))
    return bundle, texts, result


@pytest.fixture(scope="module")
def adapted_dir(
    parent: Path, learnt: tuple[Bundle, list[str], Adaptation], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    bundle, texts, result = learnt
    batch = bundle.prompt_batch(texts[:200])
    assert batch.embeddings is not None
    recent = result.scores(batch.embeddings, log_length(texts[:200]), bundle.routers["mf"].score(batch))
    out = tmp_path_factory.mktemp("adapted") / "bundle"
    write_adapted_bundle(parent, out, result.head, "mf", result.weight, result.base, SPAN, recent)
    return out


def test_the_adapted_bundle_loads_and_serves_the_offline_scores(
    adapted_dir: Path, learnt: tuple[Bundle, list[str], Adaptation]
) -> None:
    parent, texts, result = learnt
    bundle = load_bundle(adapted_dir)
    assert list(bundle.routers) == [*parent.routers, "adapted"]
    probe = synthetic_prompts(50, seed=31)
    batch = bundle.prompt_batch(probe)
    assert batch.embeddings is not None
    assert bundle.routers["adapted"].kind == "adapted_kernel"
    served = bundle.routers["adapted"].score(batch)
    offline = result.scores(batch.embeddings, log_length(probe), parent.routers["mf"].score(parent.prompt_batch(probe)))
    np.testing.assert_allclose(served, offline, rtol=0, atol=1e-6)
    assert served.min() >= 0.0 and served.max() <= 1.0
    # the parent's routers score as before
    np.testing.assert_allclose(bundle.routers["mf"].score(batch), parent.routers["mf"].score(batch), atol=0)
    # batched == single: within the encoder's own batch noise (its runs differ by batch shape) ...
    singles = np.concatenate([bundle.routers["adapted"].score(bundle.prompt_batch([t])) for t in probe[:8]])
    np.testing.assert_allclose(singles, served[:8], rtol=0, atol=1e-6)
    # ... and exactly for the same embeddings (the kernel term and the linear part do not depend on the batch)
    rows = [PromptBatch([t], batch.tokens.select([i]), batch.embeddings[i : i + 1]) for i, t in enumerate(probe[:8])]
    assert np.array_equal(np.concatenate([bundle.routers["adapted"].score(r) for r in rows]), served[:8])


def test_thresholds_are_calibrated_on_the_recent_prompts_and_lineage_is_recorded(
    adapted_dir: Path, learnt: tuple[Bundle, list[str], Adaptation]
) -> None:
    parent, texts, result = learnt
    bundle = load_bundle(adapted_dir)
    batch = bundle.prompt_batch(texts[:200])
    recent = bundle.routers["adapted"].score(batch)
    share = np.mean(recent >= bundle.threshold_for_share("adapted", 0.3))
    assert abs(share - 0.3) <= 0.02
    lineage = bundle.manifest.lineage
    assert lineage is not None
    assert lineage.parent_version == parent.version and lineage.router == "adapted"
    assert (lineage.outcome_kind, lineage.n_outcomes, lineage.calibration_prompts) == ("paired", 600, 200)
    assert (lineage.first_outcome_at, lineage.last_outcome_at) == (SPAN.first_at, SPAN.last_at)
    assert lineage.learner == "paired_kernel_ridge" and lineage.settings == result.head.settings
    assert lineage.settings["support"] == 600.0 and lineage.settings["kernel_gamma"] == 4.0
    assert bundle.version != parent.version
    assert bundle.manifest.calibration is not None and parent.manifest.calibration is not None
    assert bundle.manifest.calibration.thresholds["mf"] == parent.manifest.calibration.thresholds["mf"]
    spec = bundle.manifest.routers["adapted"]
    assert spec.kind == "adapted_kernel" and spec.params.kernel_gamma == 4.0
    assert spec.params.base_router == "mf" and spec.params.blend_weight == pytest.approx(result.weight)


def test_a_ridge_head_is_written_as_the_linear_kind_and_replaced_by_a_kernel_one(
    parent: Path, learnt: tuple[Bundle, list[str], Adaptation], tmp_path: Path
) -> None:
    bundle, texts, kernel_result = learnt
    batch = bundle.prompt_batch(texts)
    assert batch.embeddings is not None
    emb, lengths, base = batch.embeddings, log_length(texts), bundle.routers["mf"].score(batch)
    gap = np.clip(np.round(2.0 * (emb[:, 0] - emb[:, 0].mean()) / emb[:, 0].std()), -1, 1)
    ridge = adapt_paired(emb, lengths, gap, base, base, np.arange(600.0), learner="ridge")
    assert ridge.head.kernel is None and ridge.head.learner == "paired_ridge"
    first = tmp_path / "ridge"
    write_adapted_bundle(parent, first, ridge.head, "mf", ridge.weight, ridge.base, SPAN, base[:200])
    linear = load_bundle(first)
    assert linear.manifest.routers["adapted"].kind == linear.routers["adapted"].kind == "adapted"
    assert sorted(linear.manifest.routers["adapted"].files) == ["weights"]
    np.testing.assert_allclose(
        linear.routers["adapted"].score(batch), ridge.scores(emb, lengths, base), rtol=0, atol=1e-6
    )
    second = tmp_path / "kernel"
    r = kernel_result
    write_adapted_bundle(first, second, r.head, "mf", r.weight, r.base, SPAN, base[:200], replace=True)
    again = load_bundle(second)
    assert again.manifest.routers["adapted"].kind == "adapted_kernel"
    assert sorted(again.manifest.routers["adapted"].files) == ["alpha", "support", "weights"]


def _edit(bundle_dir: Path, change: object) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    change(manifest)  # type: ignore[operator]
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    restamp_bundle(bundle_dir)


def _with_array(adapted_dir: Path, tmp_path: Path, rel: str, array: np.ndarray) -> Path:
    """A copy of the adapted bundle with `rel` replaced by `array`, checksums and version restamped (so only
    the array's own check can refuse it)."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(adapted_dir, broken)
    np.save(broken / rel, array, allow_pickle=False)

    def fix_checksum(m: dict) -> None:
        m["files"][rel] = {"sha256": sha256_file(broken / rel), "bytes": (broken / rel).stat().st_size}

    _edit(broken, fix_checksum)
    return broken


def test_a_weights_file_of_the_wrong_shape_is_refused_by_name(adapted_dir: Path, tmp_path: Path) -> None:
    rel = "routers/adapted/weights.npy"
    broken = _with_array(adapted_dir, tmp_path, rel, np.zeros(15, dtype=np.float32))
    with pytest.raises(BundleError) as err:
        load_bundle(broken)
    assert str(err.value) == f"{rel}: shape (15,) does not match encoder.dim 16"


@pytest.mark.parametrize(
    ("role", "array", "message"),
    [
        ("support", np.zeros((600, 15), np.float32), "shape (600, 15) does not match encoder.dim 16"),
        ("alpha", np.zeros(599, np.float32), "shape (599,) does not match support prompts 600"),
        ("alpha", np.full(600, np.nan, np.float32), "contains NaN"),
    ],
)
def test_a_bad_kernel_file_is_refused_by_name(
    adapted_dir: Path, tmp_path: Path, role: str, array: np.ndarray, message: str
) -> None:
    rel = f"routers/adapted/{role}.npy"
    broken = _with_array(adapted_dir, tmp_path, rel, array)
    with pytest.raises(BundleError) as err:
        load_bundle(broken)
    assert str(err.value) == f"{rel}: {message}"


def test_a_kernel_width_that_is_not_positive_is_refused_by_name(adapted_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(adapted_dir, broken)

    def zero_gamma(m: dict) -> None:
        m["routers"]["adapted"]["params"]["kernel_gamma"] = 0.0

    with pytest.raises(BundleError) as err:
        _edit(broken, zero_gamma)
    assert "routers.adapted.params.kernel_gamma: must be finite and > 0, got 0.0" in str(err.value)


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ("knn", "manifest.json: routers.adapted.params.base_router: 'knn' is not a router of this bundle"),
        ("adapted", "manifest.json: routers.adapted.params.base_router: a router cannot blend with itself"),
    ],
)
def test_a_bad_base_router_is_refused_by_name(adapted_dir: Path, tmp_path: Path, base: str, message: str) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(adapted_dir, broken)

    def set_base(m: dict) -> None:
        m["routers"]["adapted"]["params"]["base_router"] = base

    with pytest.raises(BundleError) as err:
        _edit(broken, set_base)
    assert str(err.value).startswith(message)


def test_writing_refuses_a_head_of_the_wrong_dimension_and_a_taken_name(
    parent: Path, learnt: tuple[Bundle, list[str], Adaptation], tmp_path: Path
) -> None:
    _, _, result = learnt
    with pytest.raises(ValueError, match="already has a router named 'mf'"):
        write_adapted_bundle(parent, tmp_path / "x", result.head, "mf", 0.5, result.base, SPAN, [0.5], router="mf")
    with pytest.raises(ValueError, match="base_router: 'bert' is not a router"):
        write_adapted_bundle(parent, tmp_path / "x", result.head, "bert", 0.5, result.base, SPAN, [0.5])
    assert not (tmp_path / "x").exists()


def test_a_bundle_another_writer_put_at_out_meanwhile_is_kept_without_overwrite(
    parent: Path, learnt: tuple[Bundle, list[str], Adaptation], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers to one --out: the one that finishes second, without overwrite, is refused and the first
    one's bundle stays (the other writer's bundle appears while this one validates its own)."""
    import shutil

    import lmroute.adapt.bundle_out as bundle_out

    _, _, result = learnt
    out = tmp_path / "out"
    validate = bundle_out.load_bundle

    def other_writer_finishes_first(path: Path) -> Bundle:
        shutil.copytree(parent, out)
        return validate(path)

    monkeypatch.setattr(bundle_out, "load_bundle", other_writer_finishes_first)
    with pytest.raises(FileExistsError, match=f"bundle directory {out} already exists"):
        write_adapted_bundle(parent, out, result.head, "mf", 0.5, result.base, SPAN, [0.5])
    assert load_bundle(out).version == load_bundle(parent).version  # the other writer's bundle, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it


def test_a_lineage_time_that_is_not_an_iso_second_is_refused_by_name(adapted_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(adapted_dir, broken)

    def bad_time(m: dict) -> None:
        m["lineage"]["last_outcome_at"] = "yesterday"

    with pytest.raises(BundleError) as err:  # restamping reads the manifest too
        _edit(broken, bad_time)
        load_bundle(broken)
    assert "lineage.last_outcome_at: must be an ISO-8601 UTC second like 2026-11-30T23:59:59Z, got 'yesterday'" in str(
        err.value
    )
    assert load_bundle(adapted_dir).manifest.lineage.last_outcome_ms == 1796083199000  # type: ignore[union-attr]
