"""A router kind added from outside: one module (plugins/constant_kind.py) that registers itself, with no
edit anywhere else. The real pipeline builds a bundle with it (quick mode, real data, the real encoder),
the validating loader reads it back, and a real `lmroute-serve --plugin constant_kind` subprocess scores
it over gRPC; without the plug-in the same bundle is refused with an exact message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lmroute.bundle import kinds, load_bundle
from lmroute.bundle.encoder import OnnxEncoder
from lmroute.export.pipeline import BuildConfig, build_bundle
from lmroute.service.client import RouterClient

REPO = Path(__file__).resolve().parents[2]
PLUGINS = Path(__file__).resolve().parent / "plugins"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def constant_kind() -> Iterator[object]:
    sys.path.insert(0, str(PLUGINS))
    try:
        kinds.load_plugins(["constant_kind"])
        import constant_kind

        yield constant_kind
    finally:
        sys.path.remove(str(PLUGINS))
        sys.modules.pop("constant_kind", None)
        kinds.unregister("constant")  # the registry is process-wide: later tests see the built-in kinds


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, exported_encoder_dir: Path, constant_kind: object) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    cfg = BuildConfig(
        out_dir=root / "bundle",
        cache_dir=root / "cache",
        exported_encoder_dir=exported_encoder_dir,
        quick=True,
        routers=("random", "constant"),
    )
    report = build_bundle(cfg)
    assert report.routers["constant"]["n_pair_comparisons"] > 0
    return cfg.out_dir


def test_the_registry_knows_the_plugin(constant_kind: object) -> None:
    assert kinds.names() == (
        "adapted",
        "adapted_kernel",
        "adapted_quality",
        "bert",
        "constant",
        "mf",
        "quality",
        "random",
        "sw_ranking",
    )
    assert kinds.get("constant").uses_encoder is False
    with pytest.raises(ValueError, match="router kind 'constant' is already"):

        class Other(kinds.RouterKind):
            name = "constant"

            def load(self, ctx: object, router: str, spec: object) -> object:
                raise AssertionError

            def train(self, ctx: object) -> object:
                raise AssertionError

        kinds.register(Other())


def test_pipeline_builds_and_loader_reads_the_plugin_router(bundle_dir: Path, constant_kind: object) -> None:
    bundle = load_bundle(bundle_dir)
    spec = bundle.manifest.routers["constant"]
    assert spec.kind == "constant" and spec.files == {"outcome_counts": "routers/constant/outcome_counts.npy"}
    assert isinstance(spec.params, constant_kind.ConstantParams)
    # the value the kind learnt is the strong model's win share on the training split's direct pair rows
    counts = np.load(bundle_dir / spec.files["outcome_counts"])
    assert counts.sum() > 0 and spec.params.value == pytest.approx((counts[0] + 0.5 * counts[2]) / counts.sum())
    assert 0.0 < spec.params.value < 1.0
    scores = bundle.routers["constant"].score(bundle.prompt_batch(["a", "quite another prompt"]))
    assert scores.tolist() == [spec.params.value] * 2
    assert bundle.manifest.calibration is not None and "constant" in bundle.manifest.calibration.thresholds
    assert bundle.manifest.bundle_version == bundle.manifest.content_version()


def _serve(bundle_dir: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMROUTE_")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(PLUGINS)}
    cmd = [sys.executable, "-m", "lmroute.service.main", "--bundle", str(bundle_dir), "--port", "0", *extra]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _port(proc: subprocess.Popen[str]) -> int:
    assert proc.stderr is not None
    lines: list[str] = []
    t_end = time.monotonic() + 120
    while time.monotonic() < t_end:
        line = proc.stderr.readline()
        lines.append(line)
        if m := re.search(r"serving on 127\.0\.0\.1:(\d+)", line):
            return int(m.group(1))
        assert line or proc.poll() is None, "".join(lines)
    raise AssertionError("no 'serving on' line: " + "".join(lines))


def test_served_over_grpc_with_the_plugin(bundle_dir: Path, constant_kind: object) -> None:
    value = load_bundle(bundle_dir).manifest.routers["constant"].params.value
    proc = _serve(bundle_dir, "--plugin", "constant_kind", "--log-level", "warning")
    try:
        port = _port(proc)
        with RouterClient(f"127.0.0.1:{port}") as client:
            listed = {r.name: r.kind for r in client.list_routers().routers}
            assert listed == {"random": "random", "constant": "constant"}
            resp = client.score(["hi", "Prove that there are infinitely many primes."], routers=["constant", "random"])
            for result in resp.results:
                assert result.status.code == 0
                got = {s.router: s.strong_win_probability for s in result.scores}
                assert got["constant"] == pytest.approx(value, abs=1e-12)
            assert client.route("hi", router="constant", threshold=value).chosen_model == "gpt-4-1106-preview"
            assert client.route("hi", router="constant", threshold=min(1.0, value + 1e-6)).chosen_model != (
                "gpt-4-1106-preview"
            )
    finally:
        proc.terminate()
        proc.wait(30)


def test_without_the_plugin_the_bundle_is_refused(bundle_dir: Path) -> None:
    proc = _serve(bundle_dir, "--log-level", "error")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert (
        "lmroute-serve: cannot load bundle: manifest.json: routers.constant.kind: unknown router kind "
        "'constant' (known: adapted, adapted_kernel, adapted_quality, bert, mf, quality, random, sw_ranking)"
    ) in err


def test_encoder_is_untouched_by_a_kind_without_embeddings(bundle_dir: Path, constant_kind: object) -> None:
    """Neither router reads embeddings, so the bundle's prompt batches carry none."""
    bundle = load_bundle(bundle_dir)
    assert isinstance(bundle.encoder, OnnxEncoder) and not bundle.needs_embeddings
    assert bundle.prompt_batch(["x"]).embeddings is None
