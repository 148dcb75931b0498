"""Bundle integrity: a manifest edited after it was written is refused at load, and optional Ed25519
signatures of manifest.json.

Every case starts from a real tiny bundle (lmroute.bundle.testing: a tiny real ONNX encoder and
classifier, real .npy files) and edits manifest.json only, as an operator or a script would, without
re-stamping it. The expected content version is computed here from the recipe docs/BUNDLE.md states,
independently of lmroute.bundle.manifest. Re-stamping with the project's tool (`lmroute-export restamp`)
then shows that each edit is accepted on purpose and what it changes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmroute.bundle import BundleError, load_bundle, read_manifest, update_calibration
from lmroute.bundle.loader import Bundle
from lmroute.bundle.manifest import Calibration, Manifest
from lmroute.bundle.signing import key_fingerprint, load_private_key, load_public_key
from lmroute.bundle.testing import make_fake_classifier, make_fake_encoder_dir, make_tiny_bundle, synthetic_prompts
from lmroute.bundle.writer import restamp_bundle
from lmroute.export.cli import main as export_main

DIM = 16
SIG = "manifest.json.sig"
# long enough that the encoder's max_tokens edit below cuts it
TEXTS = [*synthetic_prompts(6, seed=11), " ".join(synthetic_prompts(20, seed=12))]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    enc = make_fake_encoder_dir(root / "enc", dim=DIM)
    bert = make_fake_classifier(root / "bert.onnx")
    return make_tiny_bundle(root / "bundle", encoder_dir=enc, bert_onnx=bert)


@pytest.fixture(scope="module")
def pristine_bundle(pristine: Path) -> Bundle:
    return load_bundle(pristine)


@pytest.fixture
def bundle_dir(pristine: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(pristine, out)
    return out


def _manifest(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "manifest.json").read_text())
    return data


def _write(root: Path, data: dict[str, Any]) -> None:
    """Write manifest.json as an editor would: no re-stamp."""
    (root / "manifest.json").write_text(json.dumps(data, indent=2))


def _expected_version(data: dict[str, Any]) -> str:
    """The documented recipe: date of created_at + 8 hex of the sha256 of the sorted-key JSON of the
    manifest without bundle_version, created_at and library_versions."""
    content = {k: v for k, v in data.items() if k not in ("bundle_version", "created_at", "library_versions")}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return f"{data['created_at'][:10].replace('-', '')}-{digest[:8]}"


def _tampered(root: Path, data: dict[str, Any]) -> str:
    stored, recomputed = data["bundle_version"], _expected_version(data)
    return (
        f"manifest.json: bundle_version {stored!r} does not match the content version recomputed from the "
        f"manifest, {recomputed!r}: the manifest of {root} was edited after the bundle was written "
        f"(re-stamp a deliberate edit with `lmroute-export restamp --bundle {root}`)"
    )


def _refused(root: Path, **kwargs: Any) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(root, **kwargs)
    return str(info.value)


def _scores(bundle: Bundle, router: str) -> np.ndarray:
    return np.asarray(bundle.routers[router].score(bundle.prompt_batch(TEXTS)))


# ---- manifest-only tampering ---------------------------------------------------------------------
Edit = Callable[[Path, dict[str, Any]], None]


def _halve_thresholds(root: Path, d: dict[str, Any]) -> None:
    table = d["calibration"]["thresholds"]
    table["mf"] = [v / 2 for v in table["mf"]]


def _square_shares(root: Path, d: dict[str, Any]) -> None:
    d["calibration"]["strong_share"] = [p * p for p in d["calibration"]["strong_share"]]


def _shorter_encoder(root: Path, d: dict[str, Any]) -> None:
    d["encoder"]["max_tokens"] = 8
    d["routers"]["bert"]["params"]["max_tokens"] = 8  # bert must read the encoder's tokens


def _other_weak_model(root: Path, d: dict[str, Any]) -> None:
    d["default_pair"]["weak"] = "model-01"  # same tier as model-00, so the sw_ranking tiers still agree


def _drop_router(root: Path, d: dict[str, Any]) -> None:
    del d["routers"]["sw_ranking"]
    del d["calibration"]["thresholds"]["sw_ranking"]


def _swap_pair_vector(root: Path, d: dict[str, Any]) -> None:
    """Another pair vector with its checksum entry updated: the files match the manifest, the manifest
    no longer matches its version."""
    rel = "routers/mf/pair_vector.npy"
    np.save(root / rel, -np.load(root / rel), allow_pickle=False)
    blob = (root / rel).read_bytes()
    d["files"][rel] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}


def _set(*path: str, value: Any) -> Edit:
    def edit(root: Path, d: dict[str, Any]) -> None:
        node = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _add(*path: str, delta: float) -> Edit:
    def edit(root: Path, d: dict[str, Any]) -> None:
        node = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] += delta

    return edit


def _pop(*path: str) -> Edit:
    def edit(root: Path, d: dict[str, Any]) -> None:
        node = d
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


# (edit, what it changes once re-stamped: a router whose scores move, "calibration", or None)
TAMPERING: dict[str, tuple[Edit, str | None]] = {
    "mf prior weight 2 -> 0": (_set("routers", "mf", "blend", "prior_weight", value=0.0), "mf"),
    "mf blend removed": (_pop("routers", "mf", "blend"), "mf"),
    "bert blend center": (_set("routers", "bert", "blend", "center", value=-0.4), "bert"),
    "calibration thresholds halved": (_halve_thresholds, "calibration"),
    "calibration shares squared": (_square_shares, "calibration"),
    "prior bias + 1": (_add("difficulty_prior", "bias", delta=1.0), "mf"),
    "prior scale doubled": (_set("difficulty_prior", "scale", value=123.0), "mf"),
    "sw_ranking gamma 10 -> 1e5": (_set("routers", "sw_ranking", "params", "gamma", value=1e5), "sw_ranking"),
    "random seed": (_set("routers", "random", "params", "seed", value=7), "random"),
    "encoder max_tokens 256 -> 8": (_shorter_encoder, "mf"),
    "weak model renamed": (_other_weak_model, None),
    "elo rating": (_set("elo", "model-05", value=900.0), None),
    "router removed": (_drop_router, None),
    "pair vector swapped with its checksum": (_swap_pair_vector, None),
    "schema_version 3 -> 2": (_set("schema_version", value=2), None),
    "label added": (_set("label", value="prod"), None),
    "default router added": (_set("default_router", value="sw_ranking"), None),
    "tenant router added": (_set("tenant_routers", value={"app": "mf"}), None),
    "created_at date": (_set("created_at", value="2026-11-29T00:00:00Z"), None),
    "bundle_version itself": (_set("bundle_version", value="20261128-00000000"), None),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_manifest_edit_is_refused_until_restamped(
    case: str, bundle_dir: Path, pristine: Path, pristine_bundle: Bundle
) -> None:
    edit, effect = TAMPERING[case]
    data = _manifest(bundle_dir)
    edit(bundle_dir, data)
    _write(bundle_dir, data)
    assert _refused(bundle_dir) == _tampered(bundle_dir, data)
    assert _refused(bundle_dir, verify_checksums=False) == _tampered(bundle_dir, data)
    with pytest.raises(BundleError) as info:
        read_manifest(bundle_dir)
    assert str(info.value) == _tampered(bundle_dir, data)

    stamped = restamp_bundle(bundle_dir)  # the deliberate edit: now the loader takes it
    assert stamped.bundle_version == _expected_version(_manifest(bundle_dir))
    if case == "bundle_version itself":  # nothing else changed: re-stamping restores the version
        assert stamped.bundle_version == pristine_bundle.version
        return
    assert stamped.bundle_version != pristine_bundle.version
    if effect is None:
        return
    bundle = load_bundle(bundle_dir)
    if effect == "calibration":
        assert bundle.threshold_for_share("mf", 0.5) != pristine_bundle.threshold_for_share("mf", 0.5)
    else:
        assert np.max(np.abs(_scores(bundle, effect) - _scores(pristine_bundle, effect))) > 1e-3


def test_genuine_bundle_carries_its_content_version(pristine: Path, pristine_bundle: Bundle) -> None:
    data = _manifest(pristine)
    assert pristine_bundle.version == data["bundle_version"] == _expected_version(data)
    assert pristine_bundle.manifest.content_version() == pristine_bundle.version


def test_written_floats_verify(bundle_dir: Path) -> None:
    """Floats that print long or tiny survive the JSON round trip, so what the writer writes verifies."""
    awkward = (1.0, 1 - 1e-16, 2 / 3, 0.1 + 0.2, 1e-7, 5e-324, 0.0)
    share = tuple(np.linspace(0.0, 1.0, len(awkward)).tolist())
    manifest = read_manifest(bundle_dir)
    calib = Calibration(
        source="awkward floats",
        n_prompts=3,
        strong_share=share,
        thresholds={name: awkward for name in manifest.routers},
    )
    written = update_calibration(bundle_dir, calib)
    assert load_bundle(bundle_dir).manifest == written
    assert written.bundle_version == _expected_version(_manifest(bundle_dir))


def test_reformatted_manifest_still_verifies(bundle_dir: Path, pristine_bundle: Bundle) -> None:
    """The version hashes the decoded JSON, not the bytes: indentation and key order do not count."""
    data = _manifest(bundle_dir)
    (bundle_dir / "manifest.json").write_text(json.dumps(dict(reversed(data.items())), separators=(",", ":")))
    assert load_bundle(bundle_dir).version == pristine_bundle.version


def test_fields_that_change_no_score_are_not_covered(bundle_dir: Path, pristine_bundle: Bundle) -> None:
    """created_at's time of day and library_versions are outside the content version (docs/BUNDLE.md);
    a signature covers them."""
    data = _manifest(bundle_dir)
    data["created_at"] = "2026-11-28T23:59:59Z"
    data["library_versions"]["numpy"] = "0.0.1"
    _write(bundle_dir, data)
    assert load_bundle(bundle_dir).version == pristine_bundle.version


def test_an_update_never_stamps_an_earlier_edit(bundle_dir: Path) -> None:
    data = _manifest(bundle_dir)
    data["routers"]["mf"]["blend"]["prior_weight"] = 0.0
    _write(bundle_dir, data)
    calibration = Manifest.from_json((bundle_dir / "manifest.json").read_bytes()).calibration  # unchecked
    assert calibration is not None
    with pytest.raises(BundleError) as info:
        update_calibration(bundle_dir, calibration)
    assert str(info.value) == _tampered(bundle_dir, data)
    assert _manifest(bundle_dir) == data  # left as it was


def test_a_bundle_with_an_old_explicit_version_is_restamped_keeping_it_as_label(
    bundle_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What an older writer wrote for write_bundle(..., bundle_version="v7")."""
    data = _manifest(bundle_dir)
    data["bundle_version"] = "v7"
    _write(bundle_dir, data)
    assert _refused(bundle_dir) == _tampered(bundle_dir, data)
    assert export_main(["restamp", "--bundle", str(bundle_dir), "--label", "v7"]) == 0
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest.label == "v7" and _manifest(bundle_dir)["label"] == "v7"
    assert bundle.version == _expected_version(_manifest(bundle_dir))
    assert capsys.readouterr().out == f"bundle {bundle_dir} re-stamped: bundle_version {bundle.version}\n"
    (bundle_dir / "manifest.json.sig").write_text("a signature of the manifest before\n")
    assert export_main(["restamp", "--bundle", str(bundle_dir), "--label", "v8"]) == 0
    assert capsys.readouterr().out.endswith(  # said only of a signed bundle
        "its signature (manifest.json.sig) no longer matches: sign the bundle again\n"
    )
    assert export_main(["restamp", "--bundle", str(bundle_dir / "nope")]) == 1
    assert (
        capsys.readouterr().err == f"lmroute-export restamp: {bundle_dir / 'nope'}: bundle directory does not exist\n"
    )
    tenants = ["--tenant-router", "app=mf", "--tenant-router", "app=sw_ranking"]
    assert export_main(["restamp", "--bundle", str(bundle_dir), *tenants]) == 1
    assert "--tenant-router: tenant 'app' named twice" in capsys.readouterr().err


def test_restamp_refuses_a_manifest_the_parser_refuses(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _manifest(bundle_dir)
    data["routers"]["mf"]["blend"]["prior_weight"] = -1.0
    _write(bundle_dir, data)
    assert export_main(["restamp", "--bundle", str(bundle_dir)]) == 1
    assert capsys.readouterr().err == (
        "lmroute-export restamp: manifest.json: routers.mf.blend.prior_weight: must be >= 0, got -1.0\n"
    )
    assert _manifest(bundle_dir) == data


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nope", "default_router: 'nope' is not a router of this bundle (routers: random, mf, sw_ranking, bert)"),
        ("", "default_router: empty (a bundle without a default router has no default_router key)"),
        (3, "default_router: expected str, got int"),
    ],
)
@pytest.mark.parametrize("key", ["default_router", "default_quality_router"])
def test_a_default_router_must_name_a_router_of_the_bundle(
    bundle_dir: Path, value: object, message: str, key: str
) -> None:
    data = _manifest(bundle_dir)
    data[key] = value
    _write(bundle_dir, data)
    what = "a default quality router" if key == "default_quality_router" else "a default router"
    want = message.replace("a default router", what).replace("default_router", key)
    assert _refused(bundle_dir) == f"manifest.json: {want}"


def test_restamp_sets_and_removes_the_default_router(bundle_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "default_router" not in _manifest(bundle_dir)
    assert export_main(["restamp", "--bundle", str(bundle_dir), "--default-router", "sw_ranking"]) == 0
    assert _manifest(bundle_dir)["default_router"] == "sw_ranking"
    assert load_bundle(bundle_dir).manifest.default_router == "sw_ranking"
    assert export_main(["restamp", "--bundle", str(bundle_dir), "--default-router", "nope"]) == 1
    assert "default_router: 'nope' is not a router of this bundle" in capsys.readouterr().err
    assert _manifest(bundle_dir)["default_router"] == "sw_ranking"  # a refused edit leaves it as it was
    assert export_main(["restamp", "--bundle", str(bundle_dir), "--default-router", ""]) == 0
    assert "default_router" not in _manifest(bundle_dir)
    assert load_bundle(bundle_dir).manifest.default_router == ""


@pytest.mark.parametrize("flag", ["--label", "--default-router", "--tenant-router"])
def test_restamp_refuses_command_line_bytes_that_are_not_utf8_naming_the_flag(
    bundle_dir: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    before = (bundle_dir / "manifest.json").read_bytes()
    value = os.fsdecode(b"a\xffb")  # how Python reads such bytes from the command line: a lone surrogate
    with pytest.raises(SystemExit) as exited:
        export_main(
            ["restamp", "--bundle", str(bundle_dir), flag, value + ("=mf" if flag == "--tenant-router" else "")]
        )
    assert exited.value.code == 2
    assert f"restamp {flag}: holds bytes that are not UTF-8 ('a\\udcffb" in capsys.readouterr().err
    assert (bundle_dir / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in bundle_dir.iterdir() if p.name.startswith(".")) == []


def test_a_manifest_that_cannot_be_written_leaves_no_temporary_file(bundle_dir: Path) -> None:
    before = (bundle_dir / "manifest.json").read_bytes()
    with pytest.raises(UnicodeEncodeError):
        restamp_bundle(bundle_dir, label="a\udcffb")  # the library call takes any str
    assert (bundle_dir / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in bundle_dir.iterdir() if p.name.startswith(".")) == []


def test_an_empty_label_is_refused(bundle_dir: Path) -> None:
    data = _manifest(bundle_dir)
    data["label"] = ""
    _write(bundle_dir, data)
    assert _refused(bundle_dir) == "manifest.json: label: empty (a bundle without a label has no label key)"


# ---- signing -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    for name in ("good", "other"):
        assert export_main(["keygen", "--out", str(root / name)]) == 0
    return {name: root / name for name in ("good", "other")}


def _pub(keys: dict[str, Path], name: str = "good") -> Any:
    return load_public_key(f"{keys[name]}.pub")


def _sign(root: Path, keys: dict[str, Path], name: str = "good") -> None:
    assert export_main(["sign", "--bundle", str(root), "--key", f"{keys[name]}.key"]) == 0


def _not_verified(keys: dict[str, Path], name: str = "good") -> str:
    fingerprint = key_fingerprint(_pub(keys, name))
    return (
        f"manifest.json.sig: does not verify with key {fingerprint}: manifest.json was changed after it was "
        "signed, or it was signed with another key"
    )


def test_keygen_writes_a_pem_pair_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "k" / "bundles"
    assert export_main(["keygen", "--out", str(prefix)]) == 0
    private, public = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----\n")
    fingerprint = key_fingerprint(load_private_key(private))
    assert fingerprint == key_fingerprint(load_public_key(public))
    assert capsys.readouterr().out == f"key {fingerprint}: private {private} (keep it secret), public {public}\n"
    before = private.read_bytes()
    assert export_main(["keygen", "--out", str(prefix)]) == 1
    assert capsys.readouterr().err == f"lmroute-export keygen: {private}: already exists (a key is never overwritten)\n"
    assert private.read_bytes() == before
    # a directory as the prefix: refused (k/.key and k/.pub, or k.key beside k/, were written)
    for out in (f"{tmp_path / 'k'}/", str(tmp_path / "k")):
        assert export_main(["keygen", "--out", out]) == 1
        assert "a directory; the prefix names the files" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_signed_bundle_loads_with_its_key(
    bundle_dir: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _sign(bundle_dir, keys)
    fingerprint = key_fingerprint(_pub(keys))
    version = read_manifest(bundle_dir).bundle_version
    assert capsys.readouterr().out == (
        f"bundle {bundle_dir} ({version}) signed with key {fingerprint}: {bundle_dir / SIG}\n"
    )
    text = (bundle_dir / SIG).read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    signature = base64.b64decode(text, validate=False)
    assert len(signature) == 64
    _pub(keys).verify(signature, (bundle_dir / "manifest.json").read_bytes())  # over the exact bytes
    assert load_bundle(bundle_dir, public_key=_pub(keys)).version == version
    assert read_manifest(bundle_dir, public_key=_pub(keys)).bundle_version == version
    assert export_main(["verify", "--bundle", str(bundle_dir), "--public-key", f"{keys['good']}.pub"]) == 0
    assert capsys.readouterr().out == f"bundle {bundle_dir} ({version}) is valid, signed with key {fingerprint}\n"


def test_unsigned_bundle_is_refused_when_a_key_is_set(bundle_dir: Path, keys: dict[str, Path]) -> None:
    fingerprint = key_fingerprint(_pub(keys))
    assert _refused(bundle_dir, public_key=_pub(keys)) == (
        f"manifest.json.sig: missing: the bundle is not signed (a signature by key {fingerprint} is required)"
    )
    load_bundle(bundle_dir)  # without a key nothing is required


def test_signature_by_another_key_is_refused(bundle_dir: Path, keys: dict[str, Path]) -> None:
    _sign(bundle_dir, keys, "other")
    assert _refused(bundle_dir, public_key=_pub(keys)) == _not_verified(keys)
    assert load_bundle(bundle_dir, public_key=_pub(keys, "other")).version


def test_signature_of_another_manifest_is_refused(bundle_dir: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(bundle_dir, other)
    restamp_bundle(other, label="another bundle")
    _sign(other, keys)
    shutil.copyfile(other / SIG, bundle_dir / SIG)
    assert _refused(bundle_dir, public_key=_pub(keys)) == _not_verified(keys)


def test_manifest_edited_after_signing_is_refused(bundle_dir: Path, keys: dict[str, Path]) -> None:
    _sign(bundle_dir, keys)
    data = _manifest(bundle_dir)
    data["routers"]["mf"]["blend"]["prior_weight"] = 0.0
    _write(bundle_dir, data)
    restamp_bundle(bundle_dir)  # the content version agrees again; the signature does not
    load_bundle(bundle_dir)
    assert _refused(bundle_dir, public_key=_pub(keys)) == _not_verified(keys)


def test_any_byte_of_the_manifest_counts_for_the_signature(bundle_dir: Path, keys: dict[str, Path]) -> None:
    _sign(bundle_dir, keys)
    (bundle_dir / "manifest.json").write_bytes((bundle_dir / "manifest.json").read_bytes() + b"\n")
    load_bundle(bundle_dir)  # same content version
    assert _refused(bundle_dir, public_key=_pub(keys)) == _not_verified(keys)


@pytest.mark.parametrize("text", [b"not base64 at all!\n", base64.b64encode(b"\0" * 63) + b"\n", b""])
def test_a_malformed_signature_is_refused(bundle_dir: Path, keys: dict[str, Path], text: bytes) -> None:
    (bundle_dir / SIG).write_bytes(text)
    assert _refused(bundle_dir, public_key=_pub(keys)) == (
        "manifest.json.sig: not a signature (expected 64 bytes of Ed25519 signature in base64)"
    )


def test_edited_bundle_restamped_and_signed_again_is_accepted(bundle_dir: Path, keys: dict[str, Path]) -> None:
    _sign(bundle_dir, keys)
    data = _manifest(bundle_dir)
    data["difficulty_prior"]["bias"] += 1.0
    _write(bundle_dir, data)
    assert _refused(bundle_dir, public_key=_pub(keys)) == _not_verified(keys)
    assert export_main(["restamp", "--bundle", str(bundle_dir)]) == 0
    _sign(bundle_dir, keys)
    bundle = load_bundle(bundle_dir, public_key=_pub(keys))
    assert bundle.manifest.difficulty_prior is not None
    assert bundle.manifest.difficulty_prior.bias == data["difficulty_prior"]["bias"]


def test_a_tampered_manifest_is_never_signed(
    bundle_dir: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = _manifest(bundle_dir)
    data["routers"]["sw_ranking"]["params"]["gamma"] = 1e5
    _write(bundle_dir, data)
    assert export_main(["sign", "--bundle", str(bundle_dir), "--key", f"{keys['good']}.key"]) == 1
    assert capsys.readouterr().err == f"lmroute-export sign: {_tampered(bundle_dir, data)}\n"
    assert not (bundle_dir / SIG).exists()
    assert export_main(["verify", "--bundle", str(bundle_dir)]) == 1
    assert capsys.readouterr().err == f"lmroute-export verify: {_tampered(bundle_dir, data)}\n"


def test_key_files_that_hold_no_ed25519_key(keys: dict[str, Path], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    missing = tmp_path / "nope.pub"
    with pytest.raises(ValueError) as info:
        load_public_key(missing)
    assert str(info.value) == f"{missing}: no such public key file"
    private, public = Path(f"{keys['good']}.key"), Path(f"{keys['good']}.pub")
    with pytest.raises(ValueError) as info:
        load_public_key(private)
    assert str(info.value) == f"{private}: not a PEM public key (expected -----BEGIN PUBLIC KEY-----)"
    with pytest.raises(ValueError) as info:
        load_private_key(public)
    assert str(info.value) == f"{public}: not an unencrypted PEM private key (expected -----BEGIN PRIVATE KEY-----)"
    rsa_pub = tmp_path / "rsa.pub"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pub.write_bytes(
        rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValueError) as info:
        load_public_key(rsa_pub)
    assert str(info.value) == f"{rsa_pub}: not an Ed25519 public key (RSAPublicKey)"


def test_public_key_and_an_in_memory_manifest_do_not_mix(pristine: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"^load_bundle: public_key checks manifest.json, which manifest= replaces$"):
        load_bundle(pristine, manifest=read_manifest(pristine), public_key=_pub(keys))


def test_calibrate_refuses_a_bundle_it_cannot_use_in_one_line(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    assert export_main(["calibrate", "--bundle", str(missing)]) == 1
    assert capsys.readouterr().err == f"lmroute-export calibrate: {missing}: bundle directory does not exist\n"
    data = _manifest(bundle_dir)
    data["routers"]["sw_ranking"]["params"]["gamma"] = 1e5
    _write(bundle_dir, data)
    assert export_main(["calibrate", "--bundle", str(bundle_dir)]) == 1
    assert capsys.readouterr().err == f"lmroute-export calibrate: {_tampered(bundle_dir, data)}\n"


def test_calibrating_a_signed_bundle_says_to_sign_it_again(
    bundle_dir: Path, keys: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The new table changes manifest.json, so the signature no longer matches and a server that checks it
    refuses the bundle: calibrate says so (it said only that the table was updated). A table that comes out
    the same leaves the manifest and its signature as they were, and nothing more is said."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(120)), encoding="utf-8")
    assert export_main(["calibrate", "--bundle", str(bundle_dir), "--prompts", str(prompts)]) == 0
    assert capsys.readouterr().out == f"calibration table of {bundle_dir} updated\n"  # not signed: nothing more
    _sign(bundle_dir, keys)
    capsys.readouterr()
    assert export_main(["calibrate", "--bundle", str(bundle_dir), "--prompts", str(prompts)]) == 0
    assert capsys.readouterr().out == f"calibration table of {bundle_dir} updated\n"  # the same table
    load_bundle(bundle_dir, public_key=_pub(keys))
    prompts.write_text("".join(f"another {i} words long prompt {i * i}\n" for i in range(150)), encoding="utf-8")
    assert export_main(["calibrate", "--bundle", str(bundle_dir), "--prompts", str(prompts)]) == 0
    assert capsys.readouterr().out == (
        f"calibration table of {bundle_dir} updated\n"
        "its signature (manifest.json.sig) no longer matches: sign the bundle again\n"
    )
    with pytest.raises(BundleError):
        load_bundle(bundle_dir, public_key=_pub(keys))


def test_calibrate_refuses_too_few_prompts_of_your_own(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One prompt (or 99) would make a table whose thresholds say nothing (one prompt: all equal): refused,
    the manifest left as it was."""
    before = (bundle_dir / "manifest.json").read_bytes()
    prompts = tmp_path / "p.txt"
    for n in (1, 99):
        prompts.write_text("".join(f"prompt number {i}\n" for i in range(n)), encoding="utf-8")
        assert export_main(["calibrate", "--bundle", str(bundle_dir), "--prompts", str(prompts)]) == 1
        assert capsys.readouterr().err == (
            f"lmroute-export calibrate: --prompts: {prompts} holds {n} distinct prompts ({n} in all); a calibration "
            "table needs at least 100 distinct ones (one per step of its strong-share grid)\n"
        )
    assert (bundle_dir / "manifest.json").read_bytes() == before


def test_calibrate_counts_distinct_prompts_of_your_own(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """150 copies of one prompt (or 99 distinct prompts repeated) are too few: every threshold would be
    one score; refused, naming the distinct count, the manifest left as it was."""
    before = (bundle_dir / "manifest.json").read_bytes()
    prompts = tmp_path / "p.txt"
    for lines, distinct in ((["the same prompt"] * 150, 1), ([f"prompt {i % 99}" for i in range(300)], 99)):
        prompts.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        assert export_main(["calibrate", "--bundle", str(bundle_dir), "--prompts", str(prompts)]) == 1
        assert capsys.readouterr().err == (
            f"lmroute-export calibrate: --prompts: {prompts} holds {distinct} distinct prompts ({len(lines)} in "
            "all); a calibration table needs at least 100 distinct ones (one per step of its strong-share grid)\n"
        )
    assert (bundle_dir / "manifest.json").read_bytes() == before


def test_a_signature_file_is_read_only_when_it_is_a_small_regular_file(bundle_dir: Path, keys: dict[str, Path]) -> None:
    _sign(bundle_dir, keys)
    (bundle_dir / SIG).write_bytes(b"A" * 10_000)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_dir, public_key=_pub(keys))
    assert str(info.value) == f"{SIG}: 10000 bytes, over the limit of 4096"


# secp112r1 (openssl ecparam -name secp112r1): a curve the cryptography library cannot load
_EC112_PUBLIC = b"""-----BEGIN PUBLIC KEY-----
MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAEykWOgPG+6ViSuQsdsauvEEf70wiJgQQg
lk0rrg==
-----END PUBLIC KEY-----
"""
_EC112_PRIVATE = b"""-----BEGIN EC PRIVATE KEY-----
MD4CAQEEDiP2rl/TT1vYxiNIGGLBoAcGBSuBBAAGoSADHgAEykWOgPG+6ViSuQsd
sauvEEf70wiJgQQglk0rrg==
-----END EC PRIVATE KEY-----
"""


def test_a_key_on_an_unsupported_curve_is_a_bad_key_named_by_its_file(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """cryptography raises UnsupportedAlgorithm (not ValueError) for such a key: it was a traceback from
    `verify` and an unnamed error from the server; it is the one-line ValueError of any other bad key."""
    public, private = tmp_path / "ec112.pub", tmp_path / "ec112.key"
    public.write_bytes(_EC112_PUBLIC)
    private.write_bytes(_EC112_PRIVATE)
    why = "an unsupported algorithm: Curve 1.3.132.0.6 is not supported"
    with pytest.raises(ValueError) as info:
        load_public_key(public)
    assert str(info.value) == f"{public}: not an Ed25519 public key ({why})"
    with pytest.raises(ValueError) as info:
        load_private_key(private)
    assert str(info.value) == f"{private}: not an Ed25519 private key ({why})"
    assert export_main(["verify", "--bundle", str(bundle_dir), "--public-key", str(public)]) == 1
    assert capsys.readouterr().err == f"lmroute-export verify: {public}: not an Ed25519 public key ({why})\n"
    assert export_main(["sign", "--bundle", str(bundle_dir), "--key", str(private)]) == 1
    assert capsys.readouterr().err == f"lmroute-export sign: {private}: not an Ed25519 private key ({why})\n"
    assert not (bundle_dir / SIG).exists()


@pytest.mark.parametrize("what", ["directory", "device"])
def test_a_signature_that_is_not_a_regular_file_is_said_to_be_one(
    bundle_dir: Path, keys: dict[str, Path], what: str
) -> None:
    """Not "missing: the bundle is not signed": something is there, and it is not a signature file."""
    if what == "directory":
        (bundle_dir / SIG).mkdir()
    else:
        (bundle_dir / SIG).symlink_to("/dev/zero")
    says = "a directory" if what == "directory" else "a device, pipe or socket"
    assert _refused(bundle_dir, public_key=_pub(keys)) == f"{SIG}: not a regular file ({says})"


def test_keygen_under_a_file_says_the_file_is_not_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for prefix in (a_file / "k", a_file / "sub" / "k"):
        assert export_main(["keygen", "--out", str(prefix)]) == 1
        assert capsys.readouterr().err == (
            f"lmroute-export keygen: {prefix}: {a_file} is not a directory (the key files go in a directory)\n"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
