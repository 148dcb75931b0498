"""The gRPC service on 127.0.0.1 with a real bundle: the real all-MiniLM-L6-v2 encoder (exported once
per session by the shared `exported_encoder_dir` fixture) and real random / mf / sw_ranking / bert
routers from `lmroute.bundle.testing.make_tiny_bundle`.

Covers every RPC against the bundle's own math, batched == single for every router (random batch
sizes 1-64, <= 1e-6, within one request and across concurrent requests), truncation, broken bundles
refused (never SERVING), bad config, a plug-in that cannot be imported and a missing CUDA provider
(exit 2, exact message), SIGTERM.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from lmroute.bundle.errors import BundleError
from lmroute.bundle.loader import Bundle, load_bundle
from lmroute.bundle.routers import PromptBatch
from lmroute.bundle.testing import make_fake_classifier, make_tiny_bundle, synthetic_prompts
from lmroute.service.client import RouterClient
from lmroute.service.config import BatchPolicy, ServiceConfig
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread
from lmroute.v1 import router_pb2

TOL = 1e-6
SERVICE = "lmroute.v1.RouterService"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, exported_encoder_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("service_bundle")
    bert = make_fake_classifier(root / "bert.onnx")
    return make_tiny_bundle(root / "bundle", encoder_dir=exported_encoder_dir, bert_onnx=bert)


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


@pytest.fixture(scope="module")
def server(bundle_dir: Path) -> Iterator[ServerThread]:
    configure_logging("warning")
    cfg = ServiceConfig(
        bundle_path=bundle_dir,
        port=0,
        batch=BatchPolicy(max_wait_us=5000, max_batch_size=64, queue_timeout_ms=60_000),
        log_level="warning",
        grace_s=0.0,
    )
    srv = ServerThread(cfg).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[RouterClient]:
    with RouterClient(server.target, timeout_s=60) as c:
        yield c


def _prompts(n: int, seed: int) -> list[str]:
    """Synthetic prompts of mixed lengths (1 to ~120 words) so batches carry real padding."""
    rng = np.random.default_rng(seed)
    base = synthetic_prompts(n, seed=seed)
    return [" ".join([p] * int(rng.integers(1, 5))) for p in base]


def _matrix(resp: router_pb2.ScoreResponse, routers: list[str]) -> np.ndarray:
    out = np.full((len(resp.results), len(routers)), np.nan)
    for i, r in enumerate(resp.results):
        assert r.status.code == 0, r.status.message
        got = {s.router: s.strong_win_probability for s in r.scores}
        out[i] = [got[name] for name in routers]
    return out


def _direct(bundle: Bundle, text: str) -> dict[str, float]:
    tokens = bundle.encoder.tokenize([text])
    batch = PromptBatch([text], tokens, bundle.encoder.embed(tokens))
    return {name: float(r.score(batch)[0]) for name, r in bundle.routers.items()}


def test_auto_transport_serves_an_onnx_bundle_on_grpc_aio(server: ServerThread, bundle: Bundle) -> None:
    assert bundle.manifest.encoder.kind == "onnx"
    assert server.server.config.transport == "auto" and server.server.transport == "aio"


def test_list_get_router_describe_the_bundle(client: RouterClient, bundle: Bundle) -> None:
    lr = client.list_routers()
    m = bundle.manifest
    assert [r.name for r in lr.routers] == list(bundle.routers) == ["random", "mf", "sw_ranking", "bert"]
    assert [r.kind for r in lr.routers] == [r.kind for r in bundle.routers.values()]
    assert lr.bundle_version == bundle.version
    assert [x.name for x in lr.models] == list(m.models)
    assert (lr.default_pair.strong, lr.default_pair.weak) == (m.default_pair.strong, m.default_pair.weak)
    assert (lr.encoder.dim, lr.encoder.max_tokens) == (m.encoder.dim, m.encoder.max_tokens)
    assert m.calibration is not None
    g = client.get_router("sw_ranking").router
    assert list(g.calibration_strong_share) == list(m.calibration.strong_share)
    assert list(g.calibration_thresholds) == list(m.calibration.thresholds["sw_ranking"])
    assert client.health() == "SERVING" and client.health(SERVICE) == "SERVING"


def test_a_route_naming_no_router_needs_a_default_router(client: RouterClient, bundle: Bundle) -> None:
    """This bundle names no default router (a build names mf, an adaptation its own router:
    test_pipeline_quick.py, test_adapt_from_store.py): a Route without a router is refused, naming why."""
    assert bundle.manifest.default_router == "" == client.list_routers().default_router
    with pytest.raises(grpc.RpcError) as info:
        client.route("Which router decides?", strong_share=0.5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "router: required (the serving bundle names no default router)"
    with pytest.raises(grpc.RpcError) as info:
        client.route_among("Which router decides?", ["model-00", "model-01"], cost_weight=0.0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "router: required (the serving bundle names no default quality router)"


def test_score_and_route_equal_the_bundle_math(client: RouterClient, bundle: Bundle) -> None:
    text = "Write a proof that there are infinitely many primes, then a haiku about it."
    want = _direct(bundle, text)
    res = client.score([text])
    got = {s.router: s.strong_win_probability for s in res.results[0].scores}
    assert res.bundle_version == bundle.version
    for name in bundle.routers:
        assert abs(got[name] - want[name]) <= TOL, name
    for name in bundle.routers:
        for share in (0.1, 0.5, 0.9):
            d = client.route(text, router=name, strong_share=share)
            thr = bundle.threshold_for_share(name, share)
            assert d.threshold == pytest.approx(thr, abs=1e-12)
            assert abs(d.score - want[name]) <= TOL
            strong = d.score >= thr
            pair = bundle.manifest.default_pair
            assert d.chosen_model == (pair.strong if strong else pair.weak)
            assert d.tier == (router_pb2.TIER_STRONG if strong else router_pb2.TIER_WEAK)
        d = client.route(text, router=name, threshold=0.0)
        assert d.chosen_model == bundle.manifest.default_pair.strong and d.threshold == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_equals_single_every_router(client: RouterClient, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 64 if seed == 0 else int(rng.integers(1, 65))
    prompts = _prompts(n, seed=100 + seed)
    routers = ["random", "mf", "sw_ranking", "bert"]
    batched = _matrix(client.score(prompts, routers=routers), routers)
    single = np.vstack([_matrix(client.score([p], routers=routers), routers) for p in prompts])
    assert np.max(np.abs(batched - single)) <= TOL
    # the same prompts as concurrent single-prompt calls, batched by the server across requests
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(lambda p: client.score([p], routers=routers), prompts))
    across = np.vstack([_matrix(r, routers) for r in concurrent])
    assert np.max(np.abs(across - single)) <= TOL


def test_router_subsets_in_one_batch_share_the_encoding(server: ServerThread, client: RouterClient) -> None:
    prompts = _prompts(12, seed=7)
    full = _matrix(client.score(prompts), ["mf", "sw_ranking", "bert"])
    sched = server.server.scheduler
    assert sched is not None
    before = sched.stats.batches
    with ThreadPoolExecutor(12) as pool:
        subsets = [["mf"], ["sw_ranking"], ["bert", "mf"]]
        outs = list(pool.map(lambda i: client.score([prompts[i]], routers=subsets[i % 3]), range(12)))
    assert sched.stats.batches - before < 12  # some requests did share a batch
    cols = {"mf": 0, "sw_ranking": 1, "bert": 2}
    for i, out in enumerate(outs):
        got = {s.router: s.strong_win_probability for s in out.results[0].scores}
        assert list(got) == subsets[i % 3]
        for name, value in got.items():
            assert abs(value - full[i, cols[name]]) <= TOL


def test_server_timings_split_encoder_from_the_rest(server: ServerThread, client: RouterClient) -> None:
    """The scorer reports its encoder seconds (ScoredBatch.encoder_s); the timings keep them apart."""
    sched = server.server.scheduler
    assert sched is not None
    before = sched.timings.encoder_ms.count
    client.score(_prompts(6, seed=11), routers=["mf"])
    enc, score = sched.timings.encoder_ms, sched.timings.score_ms
    assert enc.count > before
    assert 0.0 < enc.total <= score.total  # the encoder is part of the scorer call, never more


def test_admitted_prompts_are_not_tokenised_twice(server: ServerThread, client: RouterClient) -> None:
    """The scheduler tokenises at admission (to count tokens); the scorer reuses those tokens."""
    from lmroute.service.bundle_scorer import BundleScorer

    sched = server.server.scheduler
    assert sched is not None and isinstance(sched.scorer, BundleScorer)
    before = (sched.scorer.tokenized_at_admission, sched.scorer.tokenized_in_score)
    prompts = _prompts(10, seed=13)
    with ThreadPoolExecutor(5) as pool:
        list(pool.map(lambda i: client.score(prompts[2 * i : 2 * i + 2]), range(5)))
    after = (sched.scorer.tokenized_at_admission, sched.scorer.tokenized_in_score)
    assert (after[0] - before[0], after[1] - before[1]) == (10, 0)


def test_idle_route_is_tokenised_once_by_the_scorer(bundle_dir: Path) -> None:
    """Idle fast path (server defaults: max_wait_us 0): a one-prompt call on an idle server skips the
    admission count; the scorer tokenises it, once, and the reply still reports its tokens."""
    from lmroute.service.bundle_scorer import BundleScorer

    srv = ServerThread(ServiceConfig(bundle_path=bundle_dir, port=0, log_level="warning", grace_s=0.0)).start()
    try:
        sched = srv.server.scheduler
        assert sched is not None and isinstance(sched.scorer, BundleScorer)
        assert sched.policy == BatchPolicy() and sched.policy.max_wait_us == 0 and sched.in_flight == 0
        with RouterClient(srv.target, timeout_s=60) as client:
            before = (sched.scorer.tokenized_at_admission, sched.scorer.tokenized_in_score)
            d = client.route("Name three prime numbers larger than 100.", router="mf", threshold=0.5)
            after = (sched.scorer.tokenized_at_admission, sched.scorer.tokenized_in_score)
            r = client.score(["two prompts", "are counted at admission"], routers=["mf"])
            last = (sched.scorer.tokenized_at_admission, sched.scorer.tokenized_in_score)
        assert (after[0] - before[0], after[1] - before[1]) == (0, 1)
        assert (last[0] - after[0], last[1] - after[1]) == (2, 0)
        enc = sched.scorer.bundle.encoder
        assert d.n_tokens == int(enc.tokenize(["Name three prime numbers larger than 100."]).n_tokens[0])
        assert not d.truncated
        want = enc.tokenize(["two prompts", "are counted at admission"]).n_tokens
        assert [x.n_tokens for x in r.results] == [int(n) for n in want]
    finally:
        srv.stop()


def test_remembered_thresholds_equal_the_bundle_table(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scorer keeps each (router, share)'s threshold; asked again, and after the table is full and starts
    again, it still answers the bundle's interpolation."""
    from lmroute.service import bundle_scorer

    monkeypatch.setattr(bundle_scorer, "_MAX_REMEMBERED_THRESHOLDS", 5)
    scorer = bundle_scorer.BundleScorer(bundle)
    shares = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    for _ in range(3):
        for name in bundle.routers:
            for share in shares:
                assert scorer.threshold_for_share(name, share) == bundle.threshold_for_share(name, share)
    assert len(scorer._thresholds) <= 5
    with pytest.raises(ValueError, match="outside"):
        scorer.threshold_for_share("mf", 1.5)


def test_long_prompt_is_truncated_and_reported(client: RouterClient, bundle: Bundle) -> None:
    text = "explain quantum gravity " * 200
    r = client.score([text, "short"]).results
    assert r[0].truncated and r[0].n_tokens == bundle.manifest.encoder.max_tokens
    assert not r[1].truncated and 2 < r[1].n_tokens < 10
    d = client.route(text, router="mf", threshold=0.5)
    assert d.truncated and d.n_tokens == bundle.manifest.encoder.max_tokens


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("missing", "routers/mf/pair_vector.npy: missing"),
        ("grow", "routers/mf/pair_vector.npy: size"),
        ("manifest", "manifest.json"),
    ],
)
def test_broken_bundle_is_refused_and_never_serving(
    bundle_dir: Path, tmp_path: Path, breakage: str, message: str
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    if breakage == "missing":
        (bad / "routers/mf/pair_vector.npy").unlink()
    elif breakage == "grow":
        with open(bad / "routers/mf/pair_vector.npy", "ab") as fh:
            fh.write(b"\0")
    else:
        (bad / "manifest.json").write_text('{"schema_version": 7}')
    configure_logging("warning")
    srv = ServerThread(ServiceConfig(bundle_path=bad, port=0, log_level="warning"))
    with pytest.raises(BundleError) as e:
        srv.start(timeout_s=30)
    assert str(e.value).startswith(message), str(e.value)
    assert srv.server.scheduler is None and srv.server.servicer.scheduler is None
    srv.stop()


def _serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmroute.service.main", *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMROUTE_")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_bad_config_exits_2_with_exact_message() -> None:
    p = subprocess.run(
        _serve_cmd("--bundle", "x", "--max-batch-size", "0"),
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=REPO,
    )
    assert p.returncode == 2
    assert p.stderr == "lmroute-serve: config error: max_batch_size: must be >= 1 (got 0) (given by --max-batch-size)\n"
    env = _env() | {"LMROUTE_BUNDLE": "x", "LMROUTE_DEVICE": "gpu"}
    p = subprocess.run(_serve_cmd(), capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert p.returncode == 2
    assert (
        p.stderr
        == "lmroute-serve: config error: device: must be one of cpu, cuda (got 'gpu') (given by LMROUTE_DEVICE)\n"
    )


def test_plugin_that_cannot_be_imported_exits_2_with_exact_message(bundle_dir: Path) -> None:
    p = subprocess.run(
        _serve_cmd("--bundle", str(bundle_dir), "--port", "0", "--plugin", "no_such_kind", "--log-level", "error"),
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=REPO,
    )
    assert p.returncode == 2
    assert p.stderr == (
        "lmroute-serve: config error: plugins: router kind plugin 'no_such_kind' cannot be imported: "
        "No module named 'no_such_kind'\n"
    )


def test_cuda_without_provider_is_a_clear_error(bundle_dir: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA; the refusal cannot be shown here")
    p = subprocess.run(
        _serve_cmd("--bundle", str(bundle_dir), "--port", "0", "--device", "cuda", "--log-level", "error"),
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=REPO,
    )
    assert p.returncode == 2
    assert "device: cuda asked but onnxruntime has no CUDAExecutionProvider (available: " in p.stderr
    assert "install onnxruntime-gpu or use --device cpu" in p.stderr


def test_broken_bundle_cli_exits_1_naming_the_file(bundle_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    (bad / "encoder/model.onnx").unlink()
    p = subprocess.run(
        _serve_cmd("--bundle", str(bad), "--port", "0", "--log-level", "error"),
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=REPO,
    )
    assert p.returncode == 1
    assert "lmroute-serve: cannot load bundle: encoder/model.onnx: missing" in p.stderr


def test_sigterm_drains_and_exits_0(bundle_dir: Path) -> None:
    proc = subprocess.Popen(
        _serve_cmd("--bundle", str(bundle_dir), "--port", "0", "--grace-s", "5", "--log-level", "info"),
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    try:
        assert proc.stderr is not None
        port = None
        t_end = time.monotonic() + 60
        lines = []
        while port is None and time.monotonic() < t_end:
            line = proc.stderr.readline()
            lines.append(line)
            if m := re.search(r"serving on 127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
            assert line or proc.poll() is None, "".join(lines)
        assert port is not None
        with RouterClient(f"127.0.0.1:{port}", request_id="sigterm-test") as c:
            assert c.health() == "SERVING"
            assert c.score(["hello there"]).results[0].status.code == 0
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(30) == 0
        log = "".join(lines) + rest
        assert '"request_id": "sigterm-test"' in log and '"event": "stopped"' in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
