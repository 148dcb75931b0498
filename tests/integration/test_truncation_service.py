"""Few-shot prompts that share a preamble longer than the encoder's limit, served over gRPC on 127.0.0.1.

Two real bundles around the real all-MiniLM-L6-v2 encoder (`exported_encoder_dir`) with the routers of
`lmroute.bundle.testing.make_tiny_bundle`: one whose manifest states no truncation rule (it loads with
`head`, as bundles did before the key), one that states the shipped rule. Under the shipped rule the
prompts get different scores from every router that reads the prompt (mf, sw_ranking, bert); under
`head` all get one and the same score, which is what the test would see if the rule dropped the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lmroute.bundle.loader import load_bundle
from lmroute.bundle.manifest import MANIFEST_NAME, Manifest
from lmroute.bundle.testing import make_fake_classifier, make_tiny_bundle
from lmroute.bundle.truncation import HEAD, Truncation
from lmroute.export.recipe import SHIPPED
from lmroute.service.client import RouterClient
from lmroute.service.config import BatchPolicy, ServiceConfig
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread

ROUTERS_THAT_READ_THE_PROMPT = ("mf", "sw_ranking", "bert")

_SHOT = (
    "Question: Which of these is a mammal?\nA. shark\nB. whale\nC. trout\nD. eel\nAnswer: B\n\n"
    "Question: What gas do plants take in?\nA. oxygen\nB. helium\nC. carbon dioxide\nD. neon\nAnswer: C\n\n"
)
PREAMBLE = "The following are multiple choice questions about science.\n\n" + _SHOT * 8  # ~400 tokens
PROMPTS = [
    PREAMBLE + "Question: Which planet is closest to the sun?\nA. Mercury\nB. Venus\nC. Earth\nD. Mars\nAnswer:",
    PREAMBLE + "Question: Prove that the square root of two is irrational, then generalise the proof.\nAnswer:",
    PREAMBLE + "Question: Which organ pumps blood through the body?\nA. lung\nB. heart\nC. liver\nD. kidney\nAnswer:",
]


def state_rule(bundle_dir: Path, rule: Truncation) -> None:
    """Rewrite the bundle's manifest to state `rule`, stamped with its new content version."""
    path = bundle_dir / MANIFEST_NAME
    manifest = Manifest.from_json(path.read_bytes())
    manifest = dataclasses.replace(manifest, encoder=dataclasses.replace(manifest.encoder, truncation=rule))
    path.write_text(dataclasses.replace(manifest, bundle_version=manifest.content_version()).to_json())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, exported_encoder_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("truncation_bundles")
    bert = make_fake_classifier(root / "bert.onnx")
    plain = make_tiny_bundle(root / "plain", encoder_dir=exported_encoder_dir, bert_onnx=bert)
    shipped = make_tiny_bundle(root / "shipped", encoder_dir=exported_encoder_dir, bert_onnx=bert)
    state_rule(shipped, SHIPPED.truncation_rule)
    return {"head": plain, "shipped": shipped}


@pytest.fixture(scope="module")
def clients(bundles: dict[str, Path]) -> Iterator[dict[str, RouterClient]]:
    configure_logging("warning")
    servers, out = [], {}
    try:
        for name, path in bundles.items():
            cfg = ServiceConfig(
                bundle_path=path,
                port=0,
                batch=BatchPolicy(max_wait_us=0, max_batch_size=16, queue_timeout_ms=60_000),
                log_level="warning",
                grace_s=0.0,
            )
            servers.append(ServerThread(cfg).start())
            out[name] = RouterClient(servers[-1].target, timeout_s=60)
        yield out
    finally:
        for c in out.values():
            c.close()
        for s in servers:
            s.stop()


def _scores(client: RouterClient) -> dict[str, np.ndarray]:
    results = client.score(PROMPTS, routers=list(ROUTERS_THAT_READ_THE_PROMPT)).results
    assert all(r.truncated and r.n_tokens == 256 for r in results)
    return {
        name: np.array([r.scores[i].strong_win_probability for r in results])
        for i, name in enumerate(ROUTERS_THAT_READ_THE_PROMPT)
    }


def test_a_bundle_without_the_key_loads_with_head(bundles: dict[str, Path]) -> None:
    plain = load_bundle(bundles["head"])
    assert plain.manifest.encoder.truncation == HEAD and plain.encoder.truncation == HEAD
    shipped = load_bundle(bundles["shipped"])
    assert shipped.manifest.encoder.truncation == shipped.encoder.truncation == SHIPPED.truncation_rule
    assert SHIPPED.truncation_rule != HEAD


def test_prompts_that_share_a_long_preamble_get_their_own_scores(clients: dict[str, RouterClient]) -> None:
    shipped = _scores(clients["shipped"])
    for name, s in shipped.items():
        gaps = [abs(s[i] - s[j]) for i in range(len(s)) for j in range(i + 1, len(s))]
        assert min(gaps) > 1e-6, (name, s)
    # The head rule sees the same first 256 tokens of every prompt: one score per router.
    for name, s in _scores(clients["head"]).items():
        assert np.ptp(s) == 0.0, (name, s)


def test_list_routers_reports_the_rule(clients: dict[str, RouterClient]) -> None:
    assert clients["shipped"].list_routers().encoder.truncation == str(SHIPPED.truncation_rule)
    assert clients["head"].list_routers().encoder.truncation == "head"
