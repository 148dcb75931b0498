"""The static encoder tier end to end: `lmroute-export build --encoder static` in quick mode (the real
all-MiniLM-L6-v2 export distilled into a token table, real data, mf and sw_ranking trained on the
table's embeddings), the bundle loaded and served on 127.0.0.1: its manifest says how the table was made,
the served scores equal the bundle's own math, batched == single exactly, and a tampered table is
refused at load."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lmroute.bundle.errors import BundleError
from lmroute.bundle.loader import Bundle, load_bundle
from lmroute.bundle.routers import PromptBatch
from lmroute.bundle.static_encoder import StaticEncoder
from lmroute.export.pipeline import BuildConfig, build_bundle
from lmroute.export.recipe import Recipe
from lmroute.service.bundle_scorer import BundleScorer
from lmroute.service.client import RouterClient
from lmroute.service.config import BatchPolicy, ServiceConfig
from lmroute.service.logs import configure_logging
from lmroute.service.server import transport_for
from lmroute.service.testing import ServerThread

pytestmark = pytest.mark.slow
ROUTERS = ["random", "mf", "sw_ranking"]
PROMPTS = [
    "Write a proof that there are infinitely many primes, then a haiku about it.",
    "hi",
    "?",
    "Translate 'good morning' into French, German and Japanese.",
    "¿Qué tal? 日本語 🚀 " * 40,
    "Question: what is 17 * 23? Think step by step. " * 30,
]


@pytest.fixture(scope="module")
def static_bundle(tmp_path_factory: pytest.TempPathFactory, exported_encoder_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("static_tier")
    cfg = BuildConfig(
        out_dir=root / "bundle",
        cache_dir=root / "cache",
        exported_encoder_dir=exported_encoder_dir,
        routers=tuple(ROUTERS),
        quick=True,
        recipe=Recipe(encoder="static"),
    )
    report = build_bundle(cfg)
    assert report.encoder["static"]["dim"] == 256
    return cfg.out_dir


@pytest.fixture(scope="module")
def bundle(static_bundle: Path) -> Bundle:
    return load_bundle(static_bundle)


@pytest.fixture(scope="module")
def server(static_bundle: Path) -> Iterator[ServerThread]:
    configure_logging("warning")
    cfg = ServiceConfig(
        bundle_path=static_bundle,
        port=0,
        batch=BatchPolicy(max_wait_us=5000, max_batch_size=64, queue_timeout_ms=60_000),
        log_level="warning",
        grace_s=0.0,
    )
    with ServerThread(cfg) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[RouterClient]:
    with RouterClient(server.target, timeout_s=60) as c:
        yield c


def test_auto_transport_serves_a_static_bundle_on_threads(server: ServerThread, tmp_path: Path) -> None:
    assert server.server.config.transport == "auto" and server.server.transport == "threads"
    assert transport_for(tmp_path) == "aio"  # no manifest to read: loading will say what is wrong
    # off loopback a static bundle is served on grpc.aio: a caller opening calls without sending their
    # request would hold a thread each on the thread transport and keep every other caller out
    assert transport_for(server.server.config.bundle_path, loopback=False) == "aio"
    assert transport_for(server.server.config.bundle_path, loopback=True) == "threads"


def test_manifest_says_how_the_table_was_made(bundle: Bundle, exported_encoder_dir: Path) -> None:
    enc = bundle.manifest.encoder
    assert enc.kind == "static" and isinstance(bundle.encoder, StaticEncoder)
    assert dict(enc.files) == {"table": "encoder/table.npy", "tokenizer": "encoder/tokenizer.json"}
    assert enc.dim == 256 and enc.max_tokens == 256 and str(enc.truncation) == "head_tail:96"
    how = enc.distillation
    assert how is not None and how.dim == 256 and how.sif_a == pytest.approx(1e-3)
    from lmroute.bundle.files import sha256_file

    assert how.source_sha256 == sha256_file(exported_encoder_dir / "model.onnx")
    assert how.n_texts > 1000 and how.n_tokens > how.n_texts  # the whole training set, not the quick sample
    raw = json.loads((bundle.path / "manifest.json").read_text())
    assert raw["encoder"]["kind"] == "static"
    assert not (bundle.path / "encoder" / "model.onnx").exists()


def test_served_scores_equal_the_bundle_math(client: RouterClient, bundle: Bundle) -> None:
    tokens = bundle.encoder.tokenize(PROMPTS)
    batch = PromptBatch(PROMPTS, tokens, bundle.encoder.embed(tokens))
    want = {name: bundle.routers[name].score(batch) for name in ROUTERS}
    res = client.score(PROMPTS, routers=ROUTERS)
    assert res.bundle_version == bundle.version
    for i, item in enumerate(res.results):
        assert item.status.code == 0, item.status.message
        got = {s.router: s.strong_win_probability for s in item.scores}
        for name in ROUTERS:
            assert got[name] == pytest.approx(float(want[name][i]), abs=1e-9), (i, name)


def test_batched_equals_single_exactly(client: RouterClient) -> None:
    batched = client.score(PROMPTS, routers=ROUTERS)
    for i, text in enumerate(PROMPTS):
        single = client.score([text], routers=ROUTERS)
        a = [(s.router, s.strong_win_probability) for s in batched.results[i].scores]
        b = [(s.router, s.strong_win_probability) for s in single.results[0].scores]
        assert a == b, text[:40]


def test_a_batch_without_tokens_is_embedded_straight_from_its_text(bundle: Bundle) -> None:
    """The service's idle path hands `score` texts without tokens: with a static encoder they go from
    text to embeddings in one compiled call, and score exactly as tokenised prompts do."""
    scorer = BundleScorer(bundle)
    n, names = len(PROMPTS), scorer.router_names
    tokenised = scorer.score(PROMPTS, [names] * n, scorer.tokenize(PROMPTS))
    assert scorer.embedded_from_text == 0
    for routers in (names, ("mf",), ("random", "sw_ranking")):
        straight = scorer.score(PROMPTS, [routers] * n, [None] * n)
        for name in routers:
            assert np.array_equal(straight.scores[name], tokenised.scores[name]), name
        assert np.array_equal(straight.n_tokens, tokenised.n_tokens)
        assert np.array_equal(straight.truncated, tokenised.truncated) and straight.truncated.any()
        assert np.array_equal(straight.embeddings, tokenised.embeddings)
    assert scorer.embedded_from_text == 3 * n
    for i, text in enumerate(PROMPTS):  # one prompt a call, as Route sends it
        alone = scorer.score([text], [("mf",)], [None])
        assert alone.scores["mf"][0] == tokenised.scores["mf"][i]
    assert scorer.embedded_from_text == 4 * n
    left = "Words left to HF: \u0378x"  # the compiled tokenizer leaves it to HF: the general path
    assert scorer.score([left], [("mf",)], [None]).n_tokens[0] > 2 and scorer.embedded_from_text == 4 * n


def test_list_routers_names_the_encoder_kind(client: RouterClient) -> None:
    enc = client.list_routers().encoder
    assert (enc.kind, enc.dim, enc.quantized, enc.truncation) == ("static", 256, False, "head_tail:96")


def test_route_decides_with_the_static_encoder(client: RouterClient, bundle: Bundle) -> None:
    d = client.route(PROMPTS[0], router="mf", strong_share=0.5)
    assert d.chosen_model in (bundle.manifest.default_pair.strong, bundle.manifest.default_pair.weak)
    assert d.bundle_version == bundle.version


def test_tampered_table_is_refused(static_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(static_bundle, copy)
    table = np.load(copy / "encoder" / "table.npy")
    table[1000] *= 2.0
    np.save(copy / "encoder" / "table.npy", table)
    with pytest.raises(BundleError, match=r"encoder/table.npy: sha256 mismatch"):
        load_bundle(copy)
