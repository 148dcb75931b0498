"""The validating loader refuses broken bundles with the exact message; the writer is atomic.

Every case starts from a real tiny bundle (lmroute.bundle.testing: a tiny real ONNX encoder and
classifier, real .npy files, a real FAISS index), breaks one thing, and, where the break is meant to get
past the checksum pass, re-signs the file in manifest.json the way a buggy writer would. An edited
manifest is stamped with its content version, as a writer stamps it, so that the check under test is
the one that refuses it (manifest edits left unstamped: tests/unit/test_bundle_integrity.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmroute.bundle import BundleError, load_bundle, update_calibration, write_bundle
from lmroute.bundle.loader import read_manifest
from lmroute.bundle.manifest import Calibration, content_version_of
from lmroute.bundle.testing import make_fake_classifier, make_fake_encoder_dir, make_tiny_bundle
from lmroute.bundle.writer import RouterArtifacts, stage_bundle

DIM = 16
N_PROMPTS = 50


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    enc = make_fake_encoder_dir(root / "enc", dim=DIM)
    bert = make_fake_classifier(root / "bert.onnx")
    return make_tiny_bundle(root / "bundle", encoder_dir=enc, bert_onnx=bert, n_prompts=N_PROMPTS)


@pytest.fixture
def bundle_dir(pristine: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(pristine, out)
    return out


def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())


def _edit_manifest(root: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    """Edit manifest.json and stamp it with the content version of the edit (as a writer would), so the
    check under test, not the integrity check, is the one that refuses it."""
    data = _manifest(root)
    edit(data)
    data["bundle_version"] = content_version_of(data)
    (root / "manifest.json").write_text(json.dumps(data, indent=2))


def _resign(root: Path, rel: str) -> None:
    """Make manifest.json agree with the file's current bytes (what a buggy writer would produce)."""
    blob = (root / rel).read_bytes()

    def edit(data: dict[str, Any]) -> None:
        data["files"][rel] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}

    _edit_manifest(root, edit)


def _save_npy(root: Path, rel: str, array: np.ndarray) -> None:
    np.save(root / rel, array, allow_pickle=False)
    _resign(root, rel)


def _refused(root: Path, **kwargs: Any) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(root, **kwargs)
    return str(info.value)


MF = "routers/mf"
SW = "routers/sw_ranking"


def test_pristine_bundle_loads(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert list(bundle.routers) == ["random", "mf", "sw_ranking", "bert"]
    assert bundle.encoder.dim == DIM
    assert bundle.version == bundle.manifest.bundle_version
    assert bundle.version.startswith("20261128-")


def test_shares_0_and_1_are_never_and_always_strong(bundle_dir: Path) -> None:
    """The calibration table's end points are thresholds a prompt scoring beyond them crosses: share 0
    routed such a prompt strong. 0 and 1 are just above 1.0 (finite: JSON encoders refuse inf) and 0.0
    (scores lie in [0, 1])."""
    import math

    bundle = load_bundle(bundle_dir)
    for name in bundle.routers:
        never = bundle.threshold_for_share(name, 0.0)
        assert 1.0 < never < math.inf and bundle.threshold_for_share(name, 1) == 0.0
        inner = bundle.threshold_for_share(name, 0.5)
        assert 0.0 <= inner <= 1.0 and math.isfinite(inner)


def test_a_kind_that_says_it_predicts_qualities_must_load_routers_that_do(
    bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmroute.bundle import kinds

    monkeypatch.setattr(kinds.get("mf"), "predicts_qualities", True)  # as a plug-in kind might say wrongly
    assert _refused(bundle_dir) == (
        "manifest.json: routers.mf: kind 'mf' says it predicts each model's quality (predicts_qualities), but the"
        " router it loaded has no models and qualities() (lmroute.bundle.routers.ModelQualities)"
    )


# ---- difficulty prior ----------------------------------------------------------------------------
PRIOR = "difficulty_prior/weights.npy"


def test_blended_routers_follow_the_reference_formula(bundle_dir: Path) -> None:
    from lmroute.bundle import BlendedRouter
    from lmroute.bundle.testing import synthetic_prompts
    from lmroute.kernels.reference import blend_scores

    bundle = load_bundle(bundle_dir)
    prior = bundle.manifest.difficulty_prior
    assert prior is not None
    blended = {n for n, r in bundle.routers.items() if isinstance(r, BlendedRouter)}
    assert blended == {"mf", "bert"}
    assert bundle.routers["mf"].uses_encoder and bundle.routers["bert"].uses_encoder
    batch = bundle.prompt_batch(synthetic_prompts(12, seed=5))
    weights = np.load(bundle_dir / PRIOR).astype(np.float64)
    for name in sorted(blended):
        router = bundle.routers[name]
        blend = bundle.manifest.routers[name].blend
        assert blend is not None
        raw = router.inner.score(batch)
        expected = blend_scores(
            raw,
            batch.embeddings,
            weights,
            prior.bias,
            prior.center,
            prior.scale,
            weight=blend.prior_weight,
            center=blend.center,
            scale=blend.scale,
        )
        got = router.score(batch)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        assert not np.allclose(got, raw)  # the prior moved the scores
        # weight 0 leaves the router's order alone (a monotone map of its score)
        plain = blend_scores(
            raw,
            batch.embeddings,
            weights,
            prior.bias,
            prior.center,
            prior.scale,
            weight=0.0,
            center=blend.center,
            scale=blend.scale,
        )
        assert (np.argsort(plain, kind="stable") == np.argsort(raw, kind="stable")).all()


def test_missing_prior_file(bundle_dir: Path) -> None:
    (bundle_dir / PRIOR).unlink()
    assert _refused(bundle_dir) == f"{PRIOR}: missing"


def test_prior_wrong_dimension(bundle_dir: Path) -> None:
    _save_npy(bundle_dir, PRIOR, np.zeros(DIM + 2, dtype=np.float32))
    assert _refused(bundle_dir) == f"{PRIOR}: shape ({DIM + 2},) does not match encoder.dim {DIM}"


def test_prior_nan(bundle_dir: Path) -> None:
    weights = np.load(bundle_dir / PRIOR)
    weights[3] = np.nan
    _save_npy(bundle_dir, PRIOR, weights)
    assert _refused(bundle_dir) == f"{PRIOR}: contains NaN"


def test_blend_without_prior(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, lambda d: d.update(difficulty_prior=None))
    assert _refused(bundle_dir) == "manifest.json: routers.mf.blend: needs a difficulty_prior, the bundle has none"


# ---- files ---------------------------------------------------------------------------------------
def test_missing_router_file(bundle_dir: Path) -> None:
    (bundle_dir / MF / "pair_vector.npy").unlink()
    assert _refused(bundle_dir) == "routers/mf/pair_vector.npy: missing"


def test_missing_encoder_model(bundle_dir: Path) -> None:
    (bundle_dir / "encoder/model.onnx").unlink()
    assert _refused(bundle_dir) == "encoder/model.onnx: missing"


def test_missing_manifest(bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").unlink()
    assert _refused(bundle_dir) == "manifest.json: missing"


def test_checksum_mismatch(bundle_dir: Path) -> None:
    rel = f"{SW}/cell_counts.npy"
    path = bundle_dir / rel
    expected = _manifest(bundle_dir)["files"][rel]["sha256"]
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01  # same size, different content
    path.write_bytes(bytes(blob))
    actual = hashlib.sha256(bytes(blob)).hexdigest()
    assert _refused(bundle_dir) == (f"{rel}: sha256 mismatch (manifest {expected[:12]}..., file {actual[:12]}...)")
    # Skipping the sha256 pass loads it (the flipped bit lands in a valid float32).
    load_bundle(bundle_dir, verify_checksums=False)


def test_size_mismatch_even_without_checksums(bundle_dir: Path) -> None:
    rel = f"{MF}/classifier.npy"
    size = (bundle_dir / rel).stat().st_size
    with open(bundle_dir / rel, "ab") as fh:
        fh.write(b"\0")
    assert _refused(bundle_dir, verify_checksums=False) == (
        f"{rel}: size {size + 1} bytes does not match manifest {size}"
    )


def test_truncated_npy(bundle_dir: Path) -> None:
    rel = f"{MF}/text_proj.npy"
    blob = (bundle_dir / rel).read_bytes()
    (bundle_dir / rel).write_bytes(blob[: len(blob) // 2])
    _resign(bundle_dir, rel)
    assert re.fullmatch(
        rf"{re.escape(rel)}: unreadable \.npy file: its header says shape \(\d+, \d+\) of float32 \(\d+ bytes\), "
        r"the file holds \d+",
        _refused(bundle_dir),
    ), _refused(bundle_dir)


def test_pickled_object_array_is_refused(bundle_dir: Path) -> None:
    rel = f"{MF}/classifier.npy"
    np.save(bundle_dir / rel, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    _resign(bundle_dir, rel)
    assert _refused(bundle_dir) == f"{rel}: unreadable .npy file: holds Python objects (a pickle): refused"


def test_an_npy_header_claiming_a_huge_shape_is_refused_before_it_is_allocated(bundle_dir: Path) -> None:
    rel = f"{MF}/classifier.npy"
    header = {"descr": "<f4", "fortran_order": False, "shape": (4_000_000_000_000,)}
    with open(bundle_dir / rel, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 64)
    _resign(bundle_dir, rel)
    assert _refused(bundle_dir) == (
        f"{rel}: unreadable .npy file: its header says shape (4000000000000,) of float32 (16000000000000 "
        "bytes), the file holds 64"
    )


def test_an_npz_in_place_of_an_npy_is_refused(bundle_dir: Path) -> None:
    rel = f"{MF}/classifier.npy"
    with open(bundle_dir / rel, "wb") as fh:
        np.savez(fh, a=np.zeros(3, dtype=np.float32))
    _resign(bundle_dir, rel)
    assert _refused(bundle_dir).startswith(f"{rel}: unreadable .npy file: not a .npy array (")


@pytest.mark.parametrize("what", ["directory", "fifo", "device"])
def test_a_listed_file_that_is_not_a_regular_file_is_refused_not_read(bundle_dir: Path, what: str) -> None:
    """A directory, a FIFO (never waited on) or a device (a link to /dev/zero) in a listed file's place."""
    rel = f"{MF}/classifier.npy"
    (bundle_dir / rel).unlink()
    if what == "directory":
        (bundle_dir / rel).mkdir()
    elif what == "fifo":
        os.mkfifo(bundle_dir / rel)
    else:
        (bundle_dir / rel).symlink_to("/dev/zero")
    kind = "a directory" if what == "directory" else "a device, pipe or socket"
    assert _refused(bundle_dir) == f"{rel}: not a regular file ({kind})"


def test_a_file_replaced_after_its_checksum_was_checked_is_never_parsed(bundle_dir: Path) -> None:
    """Every listed file is read once and what is parsed is what was hashed: here the encoder's model is
    replaced (an atomic rename of a broken graph of the same size) right after the loader has read it,
    while the loader reads the files after it. A loader that hashed by path and parsed by path again would
    parse the replacement; this one loads the bundle as it was checked."""
    manifest = _manifest(bundle_dir)
    rels = sorted(manifest["files"])
    target = manifest["encoder"]["files"]["model"]
    later = next(r for r in rels if r > target)  # a file the loader reads after the target
    swap = bundle_dir / (target + ".swap")
    swap.write_bytes(b"\0" * (bundle_dir / target).stat().st_size)
    state = {"armed": True}

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if state["armed"] and event == "open" and str(args[0]) == str(bundle_dir / later):
            state["armed"] = False
            os.replace(swap, bundle_dir / target)

    state["armed"] = True
    sys.addaudithook(hook)
    try:
        bundle = load_bundle(bundle_dir)
    finally:
        state["armed"] = False  # an audit hook cannot be removed: disarmed for the rest of the run
    assert not swap.exists() and (bundle_dir / target).read_bytes() == b"\0" * len((bundle_dir / target).read_bytes())
    assert bundle.encoder.encode(["still the checked encoder"]).shape == (1, DIM)
    assert _refused(bundle_dir).startswith(f"{target}: sha256 mismatch")  # the replacement itself is refused


# ---- arrays --------------------------------------------------------------------------------------
def test_wrong_dimension(bundle_dir: Path) -> None:
    rel = f"{MF}/pair_vector.npy"
    _save_npy(bundle_dir, rel, np.zeros(DIM - 1, dtype=np.float32))
    assert _refused(bundle_dir) == f"{rel}: shape ({DIM - 1},) does not match encoder.dim {DIM}"


def test_wrong_rank(bundle_dir: Path) -> None:
    rel = f"{MF}/classifier.npy"
    _save_npy(bundle_dir, rel, np.zeros((8, 1), dtype=np.float32))
    assert _refused(bundle_dir) == f"{rel}: shape (8, 1) has 2 dimensions, expected 1"


def test_wrong_dtype(bundle_dir: Path) -> None:
    rel = f"{MF}/model_emb.npy"
    arr = np.load(bundle_dir / rel)
    _save_npy(bundle_dir, rel, arr.astype(np.float64))
    assert _refused(bundle_dir) == f"{rel}: dtype float64, expected float32"


def test_model_emb_rows_must_match_models(bundle_dir: Path) -> None:
    rel = f"{MF}/model_emb.npy"
    arr = np.load(bundle_dir / rel)
    _save_npy(bundle_dir, rel, arr[:-1])
    assert _refused(bundle_dir) == f"{rel}: shape (5, 8) does not match number of models 6"


def test_nan_in_cell_counts(bundle_dir: Path) -> None:
    rel = f"{SW}/cell_counts.npy"
    arr = np.load(bundle_dir / rel)
    arr[3, 2] = np.nan
    _save_npy(bundle_dir, rel, arr)
    assert _refused(bundle_dir) == f"{rel}: contains NaN"


def test_inf_in_prompt_embeddings(bundle_dir: Path) -> None:
    rel = f"{SW}/prompt_embeddings.npy"
    arr = np.load(bundle_dir / rel)
    arr[0, 0] = np.inf
    _save_npy(bundle_dir, rel, arr)
    assert _refused(bundle_dir) == f"{rel}: contains inf"


def test_cells_and_cell_counts_disagree(bundle_dir: Path) -> None:
    rel = f"{SW}/cell_counts.npy"
    arr = np.load(bundle_dir / rel)
    _save_npy(bundle_dir, rel, arr[:, :-1])
    n_cells = arr.shape[1]
    assert _refused(bundle_dir) == (f"{rel}: shape ({N_PROMPTS}, {n_cells - 1}) does not match cells rows {n_cells}")


def test_cell_counts_rows_must_match_prompts(bundle_dir: Path) -> None:
    rel = f"{SW}/cell_counts.npy"
    arr = np.load(bundle_dir / rel)
    _save_npy(bundle_dir, rel, arr[:-1])
    assert _refused(bundle_dir) == (
        f"{rel}: shape ({N_PROMPTS - 1}, {arr.shape[1]}) does not match prompt_embeddings rows {N_PROMPTS}"
    )


def test_cells_tier_order(bundle_dir: Path) -> None:
    rel = f"{SW}/cells.npy"
    cells = np.load(bundle_dir / rel)
    cells[4] = (2, 1, 0)
    _save_npy(bundle_dir, rel, cells)
    assert _refused(bundle_dir) == f"{rel}: row 4 (2, 1, 0): tier_a must be < tier_b"


def test_weak_tier_in_no_cell(bundle_dir: Path) -> None:
    rel = f"{SW}/cells.npy"
    cells = np.load(bundle_dir / rel)
    keep = (cells[:, 0] != 0) & (cells[:, 1] != 0)  # drop every cell of tier 0 (the weak tier)
    _save_npy(bundle_dir, rel, cells[keep])
    counts_rel = f"{SW}/cell_counts.npy"
    _save_npy(bundle_dir, counts_rel, np.load(bundle_dir / counts_rel)[:, keep])
    assert _refused(bundle_dir) == f"{rel}: params.weak_tier 0 appears in no cell"


def test_negative_counts(bundle_dir: Path) -> None:
    rel = f"{SW}/cell_counts.npy"
    arr = np.load(bundle_dir / rel)
    arr[0, 0] = -1.0
    _save_npy(bundle_dir, rel, arr)
    assert _refused(bundle_dir) == f"{rel}: contains negative counts"


def test_prompt_rows_not_normalised(bundle_dir: Path) -> None:
    rel = f"{SW}/prompt_embeddings.npy"
    arr = np.load(bundle_dir / rel)
    arr[7] *= 2.0
    _save_npy(bundle_dir, rel, arr)
    assert _refused(bundle_dir) == f"{rel}: rows are not L2-normalised (max |norm - 1| 1)"


def _as_schema_2_with_faiss_index(root: Path) -> str:
    """Turn the bundle into what schema 2 wrote: sw_ranking also ships prompts.faiss (any bytes; the
    file is checksummed, never read)."""
    rel = f"{SW}/prompts.faiss"
    (root / rel).write_bytes(b"an IndexFlatIP over the prompt rows")

    def edit(data: dict[str, Any]) -> None:
        data["schema_version"] = 2
        data["routers"]["sw_ranking"]["files"]["index"] = rel

    _edit_manifest(root, edit)
    _resign(root, rel)
    return rel


def test_schema_2_bundle_with_faiss_index_loads_and_scores_the_same(bundle_dir: Path, pristine: Path) -> None:
    _as_schema_2_with_faiss_index(bundle_dir)
    old, new = load_bundle(bundle_dir), load_bundle(pristine)
    assert old.manifest.schema_version == 2 and new.manifest.schema_version == 3
    texts = ["explain recursion", "write a haiku about taxes"]
    for name in new.routers:
        np.testing.assert_array_equal(
            old.routers[name].score(old.prompt_batch(texts)), new.routers[name].score(new.prompt_batch(texts))
        )


def test_schema_2_faiss_index_is_still_checksummed(bundle_dir: Path) -> None:
    rel = _as_schema_2_with_faiss_index(bundle_dir)
    (bundle_dir / rel).write_bytes(b"an IndexFlatIP over the prompt rowz")
    assert _refused(bundle_dir).startswith(f"{rel}: sha256 mismatch (manifest ")


def test_pair_vector_inconsistent_with_factors(bundle_dir: Path) -> None:
    rel = f"{MF}/pair_vector.npy"
    u = np.load(bundle_dir / rel)
    _save_npy(bundle_dir, rel, -u)
    message = _refused(bundle_dir)
    assert message.startswith(f"{rel}: does not match text_proj/model_emb/classifier for the default pair (max |diff| ")


# ---- manifest (through the loader) ----------------------------------------------------------------
def test_unknown_schema_version(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, lambda d: d.update(schema_version=7))
    assert _refused(bundle_dir) == "manifest.json: unknown schema_version 7 (this build reads 1, 2, 3)"


def test_unknown_router_kind(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, lambda d: d["routers"]["mf"].update(kind="causal_llm"))
    assert _refused(bundle_dir) == (
        "manifest.json: routers.mf.kind: unknown router kind 'causal_llm' "
        "(known: adapted, adapted_kernel, adapted_quality, bert, mf, quality, random, sw_ranking)"
    )


def test_default_pair_not_in_models(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, lambda d: d["default_pair"].update(weak="model-99"))
    assert _refused(bundle_dir) == "manifest.json: default_pair.weak: 'model-99' is not in models"


def test_non_monotone_calibration(bundle_dir: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        th = data["calibration"]["thresholds"]["sw_ranking"]
        th[10], th[11] = th[11] - 0.01, th[11] + 0.01
        th[10] = 0.1
        th[11] = 0.9

    _edit_manifest(bundle_dir, edit)
    assert _refused(bundle_dir) == (
        "manifest.json: calibration.thresholds.sw_ranking: not non-increasing at index 11 (0.1 -> 0.9)"
    )


def test_extra_unknown_key(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, lambda d: d["encoder"].update(revision="main"))
    assert _refused(bundle_dir) == "manifest.json: encoder.revision: unknown key"


def test_sw_tiers_disagree_with_manifest_tiers(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, lambda d: d["tiers"].update({"model-05": 1}))
    assert _refused(bundle_dir) == (
        "manifest.json: routers.sw_ranking.params.strong_tier: 2 does not match tiers.model-05 = 1"
    )


def test_encoder_dim_disagrees_with_graph(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, lambda d: d["encoder"].update(dim=DIM + 1))
    assert _refused(bundle_dir) == (
        f"encoder/model.onnx: output 'sentence_embedding' has dimension {DIM}, expected encoder.dim {DIM + 1}"
    )


def test_bert_graph_without_logits(bundle_dir: Path) -> None:
    rel = "routers/bert/model.onnx"
    shutil.copyfile(bundle_dir / "encoder/model.onnx", bundle_dir / rel)
    _resign(bundle_dir, rel)
    assert _refused(bundle_dir) == f"{rel}: no output 'logits' (outputs: ['sentence_embedding'])"


def test_bert_graph_garbage(bundle_dir: Path) -> None:
    rel = "routers/bert/model.onnx"
    (bundle_dir / rel).write_bytes(b"\x08\x01garbage")
    _resign(bundle_dir, rel)
    assert _refused(bundle_dir).startswith(f"{rel}: not a loadable ONNX model (")


def test_uncalibrated_bundle(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, lambda d: d.update(calibration=None))
    assert _refused(bundle_dir) == "manifest.json: calibration: missing (the bundle is not calibrated)"
    bundle = load_bundle(bundle_dir, require_calibration=False)
    with pytest.raises(BundleError, match="not calibrated"):
        bundle.threshold_for_share("mf", 0.5)


def test_not_a_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert _refused(missing) == f"{missing}: bundle directory does not exist"
    a_file = tmp_path / "manifest.json"  # a file where a bundle directory is named
    a_file.write_text("{}")
    assert _refused(a_file) == f"{a_file}: is not a directory (a bundle is one)"


# ---- writer --------------------------------------------------------------------------------------
def _rewrite_args(root: Path) -> dict[str, Any]:
    """write_bundle arguments that reproduce the mf + random part of an existing bundle."""
    m = read_manifest(root)
    mf = {role: np.load(root / rel) for role, rel in m.routers["mf"].files.items()}
    return dict(
        encoder_dir=root / "encoder",
        encoder=m.encoder,
        routers={
            "random": RouterArtifacts(kind="random", params={"seed": 1}),
            "mf": RouterArtifacts(kind="mf", params={"d_model": 8}, arrays=mf),
        },
        models=m.models,
        default_pair=m.default_pair,
        elo=m.elo,
        tiers=m.tiers,
        training_data=m.training_data,
    )


def test_writer_refuses_existing_dir_and_leaves_no_temp(pristine: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FileExistsError):
        write_bundle(out, **_rewrite_args(pristine))
    args = _rewrite_args(pristine)
    bad = dict(args["routers"]["mf"].arrays)
    bad["pair_vector"] = -bad["pair_vector"]
    args["routers"]["mf"] = RouterArtifacts(kind="mf", params={"d_model": 8}, arrays=bad)
    target = tmp_path / "bad"
    with pytest.raises(BundleError, match=r"^routers/mf/pair_vector\.npy: does not match"):
        write_bundle(target, **args)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dir left behind


def test_staged_bundle_loads_before_its_manifest_is_written_and_commits_once(pristine: Path, tmp_path: Path) -> None:
    """The build's path: stage, load under the in-memory manifest, fix blends and calibration, commit."""
    out = tmp_path / "out"
    with stage_bundle(out, **_rewrite_args(pristine)) as staged:
        assert not (staged.tmp / "manifest.json").exists() and not out.exists()
        bundle = staged.load()
        assert list(bundle.routers) == ["random", "mf"] and bundle.manifest is staged.manifest
        scores = bundle.routers["mf"].score(bundle.prompt_batch(["explain recursion", "list taxes"]))
        calibration = Calibration(
            source="test", n_prompts=2, strong_share=(0.0, 1.0), thresholds={"random": (1.0, 0.0), "mf": (1.0, 0.0)}
        )
        staged.manifest = dataclasses.replace(staged.manifest, calibration=calibration)
        assert bundle.with_manifest(staged.manifest).manifest.calibration == calibration
        written = staged.commit()
    assert written.calibration == calibration and written.bundle_version == written.content_version()
    assert read_manifest(out) == written
    again = load_bundle(out)
    np.testing.assert_array_equal(
        again.routers["mf"].score(again.prompt_batch(["explain recursion", "list taxes"])), scores
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_bundle_left_uncommitted_leaves_nothing(pristine: Path, tmp_path: Path) -> None:
    with stage_bundle(tmp_path / "out", **_rewrite_args(pristine)) as staged:
        bundle = staged.load()
        other = dataclasses.replace(staged.manifest, models=(*staged.manifest.models, "zzz-extra"))
        with pytest.raises(ValueError, match="differ in more than blends and calibration"):
            bundle.with_manifest(other)
    assert list(tmp_path.iterdir()) == []


def test_writer_overwrite_replaces_only_a_bundle(pristine: Path, tmp_path: Path) -> None:
    """overwrite=True replaces a bundle or an empty directory; a directory of other files (it was deleted
    without a word) or a file is refused by name and left as it was."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious\n")
    with pytest.raises(FileExistsError, match=f"^{mine} holds files but no manifest.json \\(not a bundle"):
        write_bundle(mine, overwrite=True, **_rewrite_args(pristine))
    a_file = tmp_path / "a_file"
    a_file.write_text("mine too\n")
    with pytest.raises(FileExistsError, match=f"^{a_file} exists and is not a directory"):
        write_bundle(a_file, overwrite=True, **_rewrite_args(pristine))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and a_file.read_text() == "mine too\n"
    app = tmp_path / "app"  # a web app's directory: its manifest.json is no bundle's
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text('{"name": "my web app"}')
    (app / "src" / "app.js").write_text("precious\n")
    with pytest.raises(FileExistsError, match=f"^{app}/manifest.json is not a bundle's manifest"):
        write_bundle(app, overwrite=True, **_rewrite_args(pristine))
    kept = tmp_path / "kept"  # a bundle the user put a file of theirs in
    shutil.copytree(pristine, kept)
    (kept / "routers" / "notes.txt").write_text("precious\n")
    unlisted = f"^{kept} holds files its manifest.json does not list \\(routers/notes.txt\\)"
    with pytest.raises(FileExistsError, match=unlisted):
        write_bundle(kept, overwrite=True, **_rewrite_args(pristine))
    assert (app / "src" / "app.js").read_text() == (kept / "routers" / "notes.txt").read_text() == "precious\n"
    shutil.rmtree(app)
    (kept / "routers" / "notes.txt").unlink()
    write_bundle(kept, overwrite=True, **_rewrite_args(pristine))  # a bundle as written: replaced
    shutil.rmtree(kept)
    with stage_bundle(tmp_path / "late", overwrite=True, **_rewrite_args(pristine)) as staged:
        (tmp_path / "late").mkdir()  # another writer's directory, put there while this one staged
        (tmp_path / "late" / "notes.txt").write_text("precious\n")
        with pytest.raises(FileExistsError, match="holds files but no manifest.json"):
            staged.commit()
    assert [p.name for p in (tmp_path / "late").iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    write_bundle(empty, overwrite=True, **_rewrite_args(pristine))
    assert (empty / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty", "late", "mine"]


def test_writer_overwrite_and_checksums(pristine: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = write_bundle(out, **_rewrite_args(pristine))
    assert first.calibration is None
    second = write_bundle(out, overwrite=True, label="v2", **_rewrite_args(pristine))
    assert read_manifest(out) == second and second.label == "v2"
    assert second.bundle_version == second.content_version() != first.bundle_version
    for rel, entry in second.files.items():
        blob = (out / rel).read_bytes()
        assert (hashlib.sha256(blob).hexdigest(), len(blob)) == (entry.sha256, entry.bytes)
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted([*second.files, "manifest.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_default_version_follows_the_content(pristine: Path, tmp_path: Path) -> None:
    """Same content -> same version; other router parameters, a new calibration or a label -> another
    version; a label survives an update."""
    created = "2026-11-28T03:00:00Z"
    a = write_bundle(tmp_path / "a", created_at=created, **_rewrite_args(pristine))
    b = write_bundle(tmp_path / "b", created_at=created, **_rewrite_args(pristine))
    assert a.bundle_version == b.bundle_version == a.content_version()
    assert re.fullmatch(r"20261128-[0-9a-f]{8}", a.bundle_version)
    args = _rewrite_args(pristine)
    args["routers"]["random"] = RouterArtifacts(kind="random", params={"seed": 2})
    c = write_bundle(tmp_path / "c", created_at=created, **args)
    assert c.training_data == a.training_data and c.bundle_version != a.bundle_version
    calib = Calibration(
        source="t", n_prompts=9, strong_share=(0.0, 1.0), thresholds={"random": (1.0, 0.0), "mf": (0.9, 0.1)}
    )
    recalibrated = update_calibration(tmp_path / "a", calib)
    assert recalibrated.bundle_version == recalibrated.content_version() != a.bundle_version
    d = write_bundle(tmp_path / "d", created_at=created, label="v7", **_rewrite_args(pristine))
    assert d.label == "v7" and d.bundle_version == d.content_version() != a.bundle_version
    relabelled = update_calibration(tmp_path / "d", calib)
    assert relabelled.label == "v7" and relabelled.bundle_version == relabelled.content_version()
    assert relabelled.bundle_version != recalibrated.bundle_version


def test_update_calibration(pristine: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_bundle(out, **_rewrite_args(pristine))
    share = (0.0, 0.5, 1.0)
    calib = Calibration(
        source="t", n_prompts=9, strong_share=share, thresholds={"random": (1.0, 0.5, 0.0), "mf": (0.9, 0.4, 0.1)}
    )
    updated = update_calibration(out, calib)
    assert read_manifest(out) == updated
    assert load_bundle(out).threshold_for_share("mf", 0.25) == pytest.approx(0.65)
    with pytest.raises(BundleError) as info:
        update_calibration(
            out, Calibration(source="t", n_prompts=9, strong_share=share, thresholds={"mf": (0.9, 0.4, 0.1)})
        )
    assert str(info.value) == "manifest.json: calibration.thresholds: no entry for router 'random'"
    assert read_manifest(out) == updated  # a refused update leaves the manifest alone


def test_update_blends_sets_and_clears(bundle_dir: Path) -> None:
    from lmroute.bundle.manifest import Blend
    from lmroute.bundle.writer import update_blends

    m = update_blends(bundle_dir, {"sw_ranking": Blend(prior_weight=0.5, center=0.0, scale=2.0), "mf": None})
    assert m.routers["sw_ranking"].blend == Blend(prior_weight=0.5, center=0.0, scale=2.0)
    assert m.routers["mf"].blend is None and m.routers["bert"].blend is not None
    bundle = load_bundle(bundle_dir)  # still valid: checksums untouched, manifest re-parsed
    assert type(bundle.routers["mf"]).__name__ == "MFRouter"
    assert type(bundle.routers["sw_ranking"]).__name__ == "BlendedRouter"
    with pytest.raises(ValueError, match=r"update_blends: unknown router\(s\) \['knn'\]"):
        update_blends(bundle_dir, {"knn": None})


# ---- a static encoder (encoder.kind "static") -----------------------------------------------------
@pytest.fixture(scope="module")
def static_pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle whose encoder is a token table distilled from the fake encoder."""
    from lmroute.bundle.encoder import OnnxEncoder
    from lmroute.export.static_distill import ensure_static_encoder

    root = tmp_path_factory.mktemp("tiny_static")
    enc = make_fake_encoder_dir(root / "enc", dim=DIM)
    source = OnnxEncoder(enc / "model.onnx", enc / "tokenizer.json")
    static_dir, _ = ensure_static_encoder(source, "fake", root / "cache", lambda: ["a b c", "the cat"], "t", dim=8)
    return make_tiny_bundle(root / "bundle", encoder_dir=static_dir, n_prompts=N_PROMPTS)


@pytest.fixture
def static_dir(static_pristine: Path, tmp_path: Path) -> Path:
    out = tmp_path / "static_bundle"
    shutil.copytree(static_pristine, out)
    return out


def test_static_bundle_loads_and_scores(static_dir: Path) -> None:
    from lmroute.bundle.static_encoder import StaticEncoder

    bundle = load_bundle(static_dir)
    assert isinstance(bundle.encoder, StaticEncoder) and bundle.encoder.dim == 8
    assert bundle.manifest.encoder.kind == "static" and _manifest(static_dir)["encoder"]["kind"] == "static"
    assert "encoder/model.onnx" not in bundle.manifest.files


def test_onnx_manifest_has_no_kind_key(bundle_dir: Path) -> None:
    """`kind` onnx is written as no key, so bundles from before encoder kinds keep their versions."""
    assert "kind" not in _manifest(bundle_dir)["encoder"] and load_bundle(bundle_dir).manifest.encoder.kind == "onnx"


def test_unknown_encoder_kind(static_dir: Path) -> None:
    _edit_manifest(static_dir, lambda d: d["encoder"].update(kind="word2vec"))
    assert _refused(static_dir) == "manifest.json: encoder.kind: unknown kind 'word2vec' (known: onnx, static, remote)"


def test_static_encoder_without_distillation(static_dir: Path) -> None:
    _edit_manifest(static_dir, lambda d: d["encoder"].pop("distillation"))
    assert _refused(static_dir) == (
        "manifest.json: encoder.distillation: a static encoder says how it was distilled, another kind has none"
    )


def test_static_files_under_onnx_kind(static_dir: Path) -> None:
    _edit_manifest(static_dir, lambda d: d["encoder"].pop("kind"))
    assert _refused(static_dir) == "manifest.json: encoder.files.model: missing"


def test_static_table_wrong_rows(static_dir: Path) -> None:
    table = np.load(static_dir / "encoder/table.npy")
    _save_npy(static_dir, "encoder/table.npy", table[:-1])
    assert _refused(static_dir) == (
        f"encoder/table.npy: table has {table.shape[0] - 1} rows, the tokenizer has {table.shape[0]} ids"
    )


def test_static_table_nan(static_dir: Path) -> None:
    table = np.load(static_dir / "encoder/table.npy")
    table[7, 0] = np.nan
    _save_npy(static_dir, "encoder/table.npy", table)
    assert _refused(static_dir) == "encoder/table.npy: table holds NaN or infinite values"


def test_static_dim_disagrees_with_table(static_dir: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["encoder"]["dim"] = 9
        data["encoder"]["distillation"]["dim"] = 9

    _edit_manifest(static_dir, edit)
    assert _refused(static_dir) == "encoder/table.npy: the table's rows have dimension 8, expected encoder.dim 9"


def _hello_id(static_dir: Path) -> int:
    return int(load_bundle(static_dir).encoder.tokenize(["hello"]).input_ids[0][1])


def test_static_table_value_so_large_a_prompt_would_overflow_float32_is_refused(static_dir: Path) -> None:
    """A finite 3e38 passes the finiteness check, but "hello hello" would sum to inf in float32 (every
    router's score NaN): max_tokens (256) x the largest value must stay under 1e30."""
    table = np.load(static_dir / "encoder/table.npy")
    table[_hello_id(static_dir)] = 3e38
    _save_npy(static_dir, "encoder/table.npy", table)
    assert _refused(static_dir) == (
        "encoder/table.npy: table holds a value of magnitude 3e+38; a prompt of 256 tokens could sum to"
        " 7.68e+40, above 1e+30 (float32 overflows at 3.4e38): values must be at most 3.91e+27"
    )


def test_static_table_values_under_the_bound_embed_every_prompt_finitely(static_dir: Path) -> None:
    table = np.load(static_dir / "encoder/table.npy")
    table[_hello_id(static_dir)] = 3.9e27  # 256 x 3.9e27 < 1e30: allowed
    _save_npy(static_dir, "encoder/table.npy", table)
    bundle = load_bundle(static_dir)
    batch = bundle.prompt_batch(["hello", "hello hello", "hello " * 300, "world"])
    assert batch.embeddings is not None and np.isfinite(batch.embeddings).all()
    for name, router in bundle.routers.items():
        assert np.isfinite(np.asarray(router.score(batch))).all(), name


def test_static_table_of_tiny_values_embeds_in_float64(static_dir: Path) -> None:
    """Subnormal rows: their float32 sum is too small to normalise in float32 (1/norm overflows); the
    row is summed again in float64, so the bundle loads and every prompt has a unit embedding."""
    table = np.load(static_dir / "encoder/table.npy")
    _save_npy(static_dir, "encoder/table.npy", (table * np.float32(1e-39)).astype(np.float32))
    bundle = load_bundle(static_dir)
    texts = ["", "hello", "the cat sat on the mat"]
    emb = bundle.encoder.encode(texts)
    assert np.isfinite(emb).all()
    assert np.allclose(np.linalg.norm(emb.astype(np.float64), axis=1), 1.0, atol=1e-5)
    from lmroute.bundle.static_encoder import StaticEncoder

    assert isinstance(bundle.encoder, StaticEncoder) and bundle.encoder.embed_texts(texts) is None


def test_static_table_whose_special_rows_sum_to_zero(static_dir: Path) -> None:
    table = np.load(static_dir / "encoder/table.npy")
    table[[101, 102]] = 0.0  # [CLS] and [SEP]
    _save_npy(static_dir, "encoder/table.npy", table)
    assert _refused(static_dir) == (
        "encoder/table.npy: the empty prompt embeds to zero: the rows of its special tokens (ids [101, 102])"
        " sum to zero, so it has no direction"
    )


@pytest.fixture(scope="module")
def with_quality(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_quality")
    enc = make_fake_encoder_dir(root / "enc", dim=DIM)
    return make_tiny_bundle(root / "bundle", encoder_dir=enc, n_prompts=N_PROMPTS, quality=True)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p.update(models=[*p["models"][:-1], "nope"]),
            "routers.quality.params.models[5]: nope is not a model of the bundle",
        ),
        (
            lambda p: p.update(models=p["models"][1:]),  # the weak model of the default pair dropped
            "routers.quality.params.models: the default pair's model-00 is missing",
        ),
        (lambda p: p.update(models=["model-00"]), "routers.quality.params.models: at least two models, each once"),
        (lambda p: p.update(link="softmax"), "routers.quality.params.link: must be one of logistic, identity"),
        (lambda p: p.update(alpha=-1.0), "routers.quality.params.alpha: must be >= 0 (got -1.0)"),
    ],
)
def test_quality_router_params_are_checked(
    with_quality: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], Any], message: str
) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(with_quality, root)
    assert load_bundle(root).routers["quality"].models[0] == "model-00"  # type: ignore[attr-defined]
    _edit_manifest(root, lambda d: edit(d["routers"]["quality"]["params"]))
    assert message in _refused(root)


def test_quality_router_weights_of_the_wrong_shape_are_refused(with_quality: Path, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(with_quality, root)
    _save_npy(root, "routers/quality/weights.npy", np.zeros((DIM, 3), dtype=np.float32))
    assert "routers/quality/weights.npy" in _refused(root) and "number of params.models" in _refused(root)


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda d: d.update(default_quality_router="mf"), "default_quality_router"),
        (lambda d: d.update(tenant_quality_routers={"app": "sw_ranking"}), "tenant_quality_routers.app"),
    ],
)
def test_routing_among_candidates_is_given_only_to_a_router_that_predicts_qualities(
    bundle_dir: Path, edit: Callable[[dict[str, Any]], Any], where: str
) -> None:
    """A bundle naming a two-model router (mf) as a quality router was loaded, and every Route among
    candidates naming no router then failed; it is refused at load (restamp, verify, the server)."""
    _edit_manifest(bundle_dir, edit)
    name = _manifest(bundle_dir).get("default_quality_router") or "sw_ranking"
    kind = _manifest(bundle_dir)["routers"][name]["kind"]
    assert _refused(bundle_dir) == (
        f"manifest.json: {where}: {name!r} is a router of kind {kind}, which predicts no per-model quality "
        "(routing among candidates needs one of kind adapted_quality or quality)"
    )


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`replace_directory` exchanges the two directories in one step where the system can (Linux); where
    it cannot, an interrupt between its two renames (SIGINT and SIGTERM are KeyboardInterrupts in the
    commands) puts the old directory back: `out` holds the old or the new, never neither (it held
    neither: the old hidden in a .old- folder, the new removed by its writer's cleanup)."""
    import lmroute.bundle.writer as writer

    def fresh(name: str, text: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "manifest.json").write_text(text)
        return folder

    out, new = fresh("out", "old"), fresh(".out.tmp-1", "new")
    writer.replace_directory(new, out)
    assert (out / "manifest.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    monkeypatch.setattr(writer, "_exchange", lambda a, b: False)  # a system without renameat2
    real, calls = os.replace, []

    def interrupted(a: Any, b: Any) -> None:
        calls.append((a, b))
        if len(calls) == 2:  # the second rename: as if a signal arrived between the two
            raise KeyboardInterrupt
        real(a, b)

    monkeypatch.setattr(writer.os, "replace", interrupted)
    new = fresh(".out.tmp-2", "newer")
    with pytest.raises(KeyboardInterrupt):
        writer.replace_directory(new, out)
    monkeypatch.setattr(writer.os, "replace", real)
    assert (out / "manifest.json").read_text() == "new"  # the old one, back in place
    new3 = fresh(".out.tmp-3", "newest")
    writer.replace_directory(new3, out)
    assert (out / "manifest.json").read_text() == "newest"
