"""End-to-end tier: clients in other languages against one real server on 127.0.0.1.

Session fixtures: a real tiny bundle (real all-MiniLM-L6-v2 encoder, random / mf / sw_ranking / bert
routers) served by ServerThread (on grpc.aio, what `--transport auto` picks for an ONNX bundle; the TLS
server on the thread transport, so the clients meet both), and `client_command(name)`, which builds a
client once per session through its project script (scripts/build_go_client.sh,
scripts/build_java_client.sh) and gives the command line that runs it. A client whose build script is
missing or fails makes its tests fail, with the reason, rather than skip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lmroute.bundle.testing import make_fake_classifier, make_tiny_bundle
from lmroute.bundle.writer import restamp_bundle
from lmroute.service.config import BatchPolicy, ServiceConfig
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread

REPO = Path(__file__).resolve().parents[2]
MAX_PROMPT_CHARS = 4000

# name -> (build script, command line of the built client, relative to the repository)
CLIENTS: dict[str, tuple[str, list[str]]] = {
    "go": ("scripts/build_go_client.sh", ["clients/go/bin/lmroute-go-client"]),
    "java": ("scripts/build_java_client.sh", ["java", "-jar", "clients/java/target/lmroute-java-client.jar"]),
}
BUILD_TIMEOUT_S = 900


@pytest.fixture(scope="session")
def e2e_bundle_dir(tmp_path_factory: pytest.TempPathFactory, exported_encoder_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("e2e_bundle")
    bert = make_fake_classifier(root / "bert.onnx")
    out = make_tiny_bundle(root / "bundle", encoder_dir=exported_encoder_dir, bert_onnx=bert)
    restamp_bundle(out, default_router="mf")  # as `lmroute-export build` names it
    return out


def _e2e_config(bundle: Path, store_dir: Path, **kw: Any) -> ServiceConfig:
    """The e2e servers' settings: each its own outcome store in `store_dir` (Feedback, SetTargets)."""
    return ServiceConfig(
        bundle_path=bundle,
        host="127.0.0.1",
        port=0,
        store=f"sqlite:{store_dir / 'outcomes.sqlite3'}",
        batch=BatchPolicy(
            max_wait_us=2000, max_batch_size=64, queue_timeout_ms=60_000, max_prompt_chars=MAX_PROMPT_CHARS
        ),
        log_level="warning",
        grace_s=0.0,
        **kw,
    )


@pytest.fixture(scope="session")
def e2e_server(e2e_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    configure_logging("warning")
    srv = ServerThread(_e2e_config(e2e_bundle_dir, tmp_path_factory.mktemp("e2e_store"))).start()
    yield srv
    srv.stop()


MODEL_PRICES = {"model-00": 0.2, "model-01": 1.0, "model-03": 3.0, "model-05": 10.0}  # USD per million tokens


@pytest.fixture(scope="session")
def e2e_models_server(
    tmp_path_factory: pytest.TempPathFactory, exported_encoder_dir: Path
) -> Iterator[tuple[ServerThread, list[str]]]:
    """A server of a tiny bundle with a `quality` router (its default quality router, as a build names
    it) over six models, four of them priced in its models file (the list given with it): for routing
    among candidates."""
    import json

    root = tmp_path_factory.mktemp("e2e_models")
    bundle = make_tiny_bundle(root / "bundle", encoder_dir=exported_encoder_dir, quality=True, seed=5)
    restamp_bundle(bundle, default_router="mf", default_quality_router="quality")
    prices = root / "models.json"
    entries = {m: {"input_price_per_mtok": p, "output_price_per_mtok": p} for m, p in MODEL_PRICES.items()}
    prices.write_text(json.dumps({"models": entries}))
    configure_logging("warning")
    srv = ServerThread(_e2e_config(bundle, root, models_file=str(prices))).start()
    yield srv, list(MODEL_PRICES)
    srv.stop()


@pytest.fixture(scope="session")
def e2e_tenant_server(e2e_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """The e2e server again, holding a strong-share target for tenant `batch` only."""
    configure_logging("warning")
    store_dir = tmp_path_factory.mktemp("e2e_tenant_store")
    srv = ServerThread(_e2e_config(e2e_bundle_dir, store_dir, share_targets="batch=0.1")).start()
    yield srv
    srv.stop()


@dataclass(frozen=True)
class TlsServer:
    """The e2e server again, over TLS (a CA made by trustme) with a bearer token required."""

    server: ServerThread
    ca: Path  # the CA certificate the clients trust
    token_env: dict[str, str]  # LMROUTE_E2E_TOKEN -> the operator's token, for the clients' environment
    tenant_token_env: dict[str, str]  # LMROUTE_E2E_TOKEN -> a token bound to `tenant`
    tenant: str


def _server_certificate(ca: Any, root: Path) -> None:
    """root/server.pem + server.key: a certificate for 127.0.0.1 signed by `ca` (a trustme.CA), whose own
    certificate goes to root/ca.pem."""
    issued = ca.issue_cert("127.0.0.1", "localhost")
    issued.private_key_pem.write_to_path(str(root / "server.key"))
    (root / "server.pem").write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    ca.cert_pem.write_to_path(str(root / "ca.pem"))


@pytest.fixture(scope="session")
def e2e_tls_server(e2e_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    import trustme

    root = tmp_path_factory.mktemp("e2e_tls")
    _server_certificate(trustme.CA(), root)
    token, tenant_token = "e2e-token-0123456789abcdef", "e2e-tenant-token-fedcba9876543210"
    (root / "tokens").write_text(f"{token}\n{tenant_token} acme\n")
    cfg = _e2e_config(
        e2e_bundle_dir,
        root,
        tls_cert_file=str(root / "server.pem"),
        tls_key_file=str(root / "server.key"),
        auth_tokens_file=str(root / "tokens"),
        transport="threads",  # the clients' TLS and token cases on the thread transport (module docstring)
    )
    srv = ServerThread(cfg).start()
    yield TlsServer(srv, root / "ca.pem", {"LMROUTE_E2E_TOKEN": token}, {"LMROUTE_E2E_TOKEN": tenant_token}, "acme")
    srv.stop()


@dataclass(frozen=True)
class MtlsServer:
    """The e2e server over mTLS: clients present a certificate signed by `client_ca`."""

    server: ServerThread
    ca: Path  # the CA of the server's certificate
    cert: Path  # a client certificate chain signed by the client CA
    key: Path  # its private key, PKCS#8 (what every client reads)


@pytest.fixture(scope="session")
def e2e_mtls_server(e2e_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MtlsServer]:
    import trustme
    from cryptography.hazmat.primitives import serialization

    root = tmp_path_factory.mktemp("e2e_mtls")
    clients = trustme.CA()
    _server_certificate(trustme.CA(), root)
    clients.cert_pem.write_to_path(str(root / "clients-ca.pem"))
    client = clients.issue_cert("client@e2e.test")
    (root / "client.pem").write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    (root / "client.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cfg = _e2e_config(
        e2e_bundle_dir,
        root,
        tls_cert_file=str(root / "server.pem"),
        tls_key_file=str(root / "server.key"),
        tls_client_ca_file=str(root / "clients-ca.pem"),
    )
    srv = ServerThread(cfg).start()
    yield MtlsServer(srv, root / "ca.pem", root / "client.pem", root / "client.key")
    srv.stop()


class _Builds:
    """One build per client per session; a failed build is remembered and reported to every test."""

    def __init__(self) -> None:
        self.done: dict[str, list[str] | str] = {}

    def command(self, name: str) -> list[str]:
        if name not in self.done:
            self.done[name] = self._build(name)
        got = self.done[name]
        if isinstance(got, str):
            pytest.fail(got, pytrace=False)
        return got

    def _build(self, name: str) -> list[str] | str:
        script, cmd = CLIENTS[name]
        if not (REPO / script).exists():
            return f"{name} client: build script {script} does not exist, so the {name} client cannot be built"
        args = [sys.executable] if name == "go" else []  # the Go build runs protoc from this venv
        try:
            run = subprocess.run(
                ["nice", "-n", "10", "bash", script, *args],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return f"{name} client: {script} ran past {BUILD_TIMEOUT_S} s"
        if run.returncode != 0:
            tail = (run.stdout + run.stderr)[-4000:]
            return f"{name} client: {script} failed (exit {run.returncode}):\n{tail}"
        if cmd[0] == "java" and shutil.which("java") is None:
            return "java client: built, but `java` is not on PATH"
        exe = REPO / (cmd[-1] if cmd[0] == "java" else cmd[0])
        if not exe.exists():
            return f"{name} client: {script} succeeded but {exe.relative_to(REPO)} is missing"
        return [c if c == "java" or c.startswith("-") else str(REPO / c) for c in cmd]


@pytest.fixture(scope="session")
def client_builds() -> _Builds:
    return _Builds()


@pytest.fixture(scope="session")
def client_command(client_builds: _Builds) -> Callable[[str], list[str]]:
    """client_command("go") -> the command line of the built Go client (builds it on first use)."""
    return client_builds.command
