"""Score calls of every allowed size against a real bundle (the real all-MiniLM-L6-v2 encoder and the
random / mf / sw_ranking / bert routers of `make_tiny_bundle`), served on 127.0.0.1 with the default
admission and queue settings: alone on an idle server, and while closed-loop Route callers keep the
scorer busy, none of whom may fail. The server is in-process (ServerThread); the callers are threads
with one channel each."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from lmroute.bundle.testing import make_fake_classifier, make_tiny_bundle, synthetic_prompts
from lmroute.service.client import RouterClient
from lmroute.service.config import ServiceConfig
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread

ROUTERS = ["random", "mf", "sw_ranking", "bert"]
SIZES = (1, 16, 64, 256)  # 256 = the default max_prompts_per_request
ROUTE_CALLERS = 8  # with a Score call in flight the scorer is always busy: at least 1x its capacity


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, exported_encoder_dir: Path) -> Iterator[ServerThread]:
    configure_logging("warning")
    root = tmp_path_factory.mktemp("big_calls")
    bert = make_fake_classifier(root / "bert.onnx")
    bundle_dir = make_tiny_bundle(root / "bundle", encoder_dir=exported_encoder_dir, bert_onnx=bert)
    cfg = ServiceConfig(bundle_path=bundle_dir, port=0, log_level="warning", grace_s=0.0)
    assert cfg.max_prompts_per_request == max(SIZES)
    srv = ServerThread(cfg).start()
    yield srv
    srv.stop()


def _prompts(n: int, seed: int) -> list[str]:
    return [f"{p} (variant {seed}-{i})" for i, p in enumerate(synthetic_prompts(n, seed=seed))]


def _score_all(target: str, n: int, seed: int) -> None:
    with RouterClient(target, timeout_s=120) as client:
        res = client.score(_prompts(n, seed), routers=ROUTERS)
    assert len(res.results) == n
    for r in res.results:
        assert r.status.code == 0, r.status.message
        assert [s.router for s in r.scores] == ROUTERS


@pytest.mark.parametrize("n", SIZES)
def test_score_call_of_any_allowed_size_succeeds_on_an_idle_server(server: ServerThread, n: int) -> None:
    _score_all(server.target, n, seed=n)


def test_a_call_over_the_limit_is_refused_at_the_edge(server: ServerThread) -> None:
    with RouterClient(server.target, timeout_s=30) as client, pytest.raises(grpc.RpcError) as e:
        client.score(_prompts(257, seed=9), routers=ROUTERS)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "prompts: 257 prompts (limit 256)"


def test_score_calls_alongside_route_callers_none_fails(server: ServerThread) -> None:
    stop = threading.Event()
    failures: list[str] = []
    counts = [0] * ROUTE_CALLERS

    def route_caller(k: int) -> None:
        prompts = _prompts(32, seed=1000 + k)
        with RouterClient(server.target, timeout_s=60) as client:
            i = 0
            while not stop.is_set():
                try:
                    d = client.route(prompts[i % len(prompts)], router=ROUTERS[k % 4], strong_share=0.5)
                    assert d.chosen_model
                    counts[k] += 1
                except grpc.RpcError as exc:
                    failures.append(f"route caller {k}: {exc.code().name} {exc.details()}")
                i += 1

    with ThreadPoolExecutor(ROUTE_CALLERS) as pool:
        callers = [pool.submit(route_caller, k) for k in range(ROUTE_CALLERS)]
        try:
            time.sleep(1.0)  # the Route callers reach a steady state
            for n in SIZES:
                _score_all(server.target, n, seed=500 + n)
        finally:
            stop.set()
            for f in callers:
                f.result()
    assert failures == []
    assert min(counts) > 0, counts
