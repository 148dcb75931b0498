"""The server and a tampered or unsigned bundle: a real RouterServer on 127.0.0.1 and `lmroute-serve`
itself, over a real tiny bundle (lmroute.bundle.testing).

A manifest edited after it was written is refused at startup with the loader's exact message, and
health never says SERVING; with `--bundle-public-key` only a bundle signed with that key is served; a
key file that holds no Ed25519 public key is a config error (exit 2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from lmroute.bundle.errors import BundleError
from lmroute.bundle.manifest import content_version_of
from lmroute.bundle.signing import generate_key_pair, key_fingerprint, load_private_key, sign_bundle
from lmroute.bundle.testing import make_fake_encoder_dir, make_tiny_bundle
from lmroute.service.client import RouterClient
from lmroute.service.config import ServiceConfig
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("integrity_service")
    enc = make_fake_encoder_dir(root / "enc", dim=16)
    return make_tiny_bundle(root / "bundle", encoder_dir=enc)


@pytest.fixture(scope="module")
def key_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("keys") / "bundles"
    generate_key_pair(prefix)
    return prefix


@pytest.fixture
def tampered(pristine: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy whose mf prior weight was set to 0 in manifest.json alone; and the loader's message."""
    bad = tmp_path / "tampered"
    shutil.copytree(pristine, bad)
    data = json.loads((bad / "manifest.json").read_text())
    stored = data["bundle_version"]
    data["routers"]["mf"]["blend"]["prior_weight"] = 0.0
    (bad / "manifest.json").write_text(json.dumps(data, indent=2))
    message = (
        f"manifest.json: bundle_version {stored!r} does not match the content version recomputed from the "
        f"manifest, {content_version_of(data)!r}: the manifest of {bad} was edited after the bundle was "
        f"written (re-stamp a deliberate edit with `lmroute-export restamp --bundle {bad}`)"
    )
    return bad, message


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LMROUTE_")} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lmroute.service.main", "--port", "0", "--log-level", "error", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=base | (env or {}),
        cwd=REPO,
    )


def test_server_refuses_a_tampered_bundle_and_never_serves(tampered: tuple[Path, str]) -> None:
    bad, message = tampered
    configure_logging("warning")
    srv = ServerThread(ServiceConfig(bundle_path=bad, port=0, log_level="warning")).start(wait_ready=False)
    seen = []
    try:
        with RouterClient(srv.target, timeout_s=5) as client:
            while srv.loaded is not None and not srv.loaded.done():
                try:
                    seen.append(client.health())
                except grpc.RpcError:  # the failed load stops the server: connection refused
                    break
        assert srv.loaded is not None
        with pytest.raises(BundleError) as info:
            srv.loaded.result(30)
        assert str(info.value) == message
        assert "SERVING" not in seen
        assert srv.server.scheduler is None and srv.server.servicer.scheduler is None
        for service in ("", "lmroute.v1.RouterService"):  # what the health service would still answer
            request = health_pb2.HealthCheckRequest(service=service)
            answer = srv.call(srv.server.health.Check(request, None))
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        srv.stop()


def test_lmroute_serve_exits_1_on_a_tampered_bundle(tampered: tuple[Path, str]) -> None:
    bad, message = tampered
    p = _serve("--bundle", str(bad))
    assert p.returncode == 1
    assert f"lmroute-serve: cannot load bundle: {message}" in p.stderr.splitlines()
    assert "serving on" not in p.stderr


def test_signed_bundle_is_served_with_its_key(pristine: Path, key_prefix: Path, tmp_path: Path) -> None:
    signed = tmp_path / "signed"
    shutil.copytree(pristine, signed)
    sign_bundle(signed, load_private_key(f"{key_prefix}.key"))
    configure_logging("warning")
    cfg = ServiceConfig(bundle_path=signed, bundle_public_key=f"{key_prefix}.pub", port=0, log_level="warning")
    with ServerThread(cfg) as srv, RouterClient(srv.target, timeout_s=30) as client:
        assert client.health() == "SERVING"
        version = json.loads((signed / "manifest.json").read_text())["bundle_version"]
        assert client.list_routers().bundle_version == version


def test_unsigned_bundle_is_refused_when_a_key_is_set(pristine: Path, key_prefix: Path) -> None:
    fingerprint = key_fingerprint(load_private_key(f"{key_prefix}.key"))
    p = _serve("--bundle", str(pristine), env={"LMROUTE_BUNDLE_PUBLIC_KEY": f"{key_prefix}.pub"})
    assert p.returncode == 1
    assert (
        "lmroute-serve: cannot load bundle: manifest.json.sig: missing: the bundle is not signed "
        f"(a signature by key {fingerprint} is required)"
    ) in p.stderr.splitlines()


def test_bundle_signed_then_edited_is_refused(pristine: Path, key_prefix: Path, tmp_path: Path) -> None:
    from lmroute.bundle.writer import restamp_bundle

    edited = tmp_path / "edited"
    shutil.copytree(pristine, edited)
    sign_bundle(edited, load_private_key(f"{key_prefix}.key"))
    restamp_bundle(edited, label="edited after signing")
    fingerprint = key_fingerprint(load_private_key(f"{key_prefix}.key"))
    p = _serve("--bundle", str(edited), "--bundle-public-key", f"{key_prefix}.pub")
    assert p.returncode == 1
    assert (
        f"lmroute-serve: cannot load bundle: manifest.json.sig: does not verify with key {fingerprint}: "
        "manifest.json was changed after it was signed, or it was signed with another key"
    ) in p.stderr.splitlines()


def test_a_key_file_that_is_not_a_public_key_exits_2(pristine: Path, key_prefix: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pub"
    p = _serve("--bundle", str(pristine), "--bundle-public-key", str(missing))
    assert p.returncode == 2
    assert (
        p.stderr
        == f"lmroute-serve: config error: bundle_public_key: no file at {missing} (given by --bundle-public-key)\n"
    )  # before binding
    p = _serve("--bundle", str(pristine), "--bundle-public-key", f"{key_prefix}.key")
    assert p.returncode == 2
    assert p.stderr == (
        f"lmroute-serve: config error: bundle_public_key: {key_prefix}.key: not a PEM public key "
        "(expected -----BEGIN PUBLIC KEY-----)\n"
    )
