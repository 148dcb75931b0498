"""Runtime routers of a loaded bundle: scores equal an independent NumPy computation, batched == single,
threshold_for_share interpolates the calibration table.

The bundle is a real tiny one (lmroute.bundle.testing): a tiny real ONNX encoder and classifier, real
.npy arrays and FAISS index. The expected values below are computed here from the bundle's own files,
without going through lmroute.bundle.routers or lmroute.kernels (the sw_ranking fit is an independent
Newton solve of the weighted Bradley-Terry-with-ties likelihood).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmroute.bundle import Bundle, PromptBatch, load_bundle
from lmroute.bundle.testing import (
    make_fake_classifier,
    make_fake_encoder_dir,
    make_tiny_bundle,
    synthetic_prompts,
)

TEXTS = [
    "Explain quantum entanglement to a child.",
    "write a haiku about rust",
    "",
    "Prove that there are infinitely many primes. " * 40,  # longer than max_tokens: truncated
    "¿Qué es un contrato? 合同是什么？ 🚀",
    "debug this: for i in range(10) print(i)",
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("runtime")
    enc = make_fake_encoder_dir(root / "enc", dim=24, seed=5)
    bert = make_fake_classifier(root / "bert.onnx", seed=6)
    path = make_tiny_bundle(root / "bundle", encoder_dir=enc, bert_onnx=bert, seed=3, n_tiers=4, n_models=7)
    return load_bundle(path)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _npy(bundle: Bundle, router: str, role: str) -> np.ndarray:
    return np.load(bundle.path / bundle.manifest.routers[router].files[role]).astype(np.float64)


# ---- independent expectations -------------------------------------------------------------------
def _expected_random(bundle: Bundle, texts: list[str]) -> np.ndarray:
    seed = bundle.manifest.routers["random"].params.seed
    out = []
    for t in texts:
        digest = hashlib.sha256(f"{seed}\x00{t}".encode()).digest()
        out.append((int.from_bytes(digest[:8], "big") >> 11) / 2.0**53)
    return np.array(out)


def _blended(bundle: Bundle, router: str, p: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """The router's score blended with the difficulty prior as docs/BUNDLE.md states it (p unchanged
    when the router has no blend)."""
    blend = bundle.manifest.routers[router].blend
    prior = bundle.manifest.difficulty_prior
    if blend is None or prior is None:
        return p
    w = np.load(bundle.path / prior.files["weights"]).astype(np.float64)
    q = np.clip(p, 1e-12, 1 - 1e-12)
    z_router = (np.log(q / (1 - q)) - blend.center) / blend.scale
    z_prior = (-(emb.astype(np.float64) @ w + prior.bias) - prior.center) / prior.scale
    return _sigmoid(z_router + blend.prior_weight * z_prior)


def _expected_mf(bundle: Bundle, emb: np.ndarray) -> np.ndarray:
    m = bundle.manifest
    w_proj, p, w = (_npy(bundle, "mf", r) for r in ("text_proj", "model_emb", "classifier"))
    p_unit = p / np.linalg.norm(p, axis=1, keepdims=True)
    logits = (emb.astype(np.float64) @ w_proj.T) @ (p_unit * w).T  # [n, n_models]
    s, k = m.models.index(m.default_pair.strong), m.models.index(m.default_pair.weak)
    return _blended(bundle, "mf", _sigmoid(logits[:, s] - logits[:, k]), emb)


def _bt_exact(cells: np.ndarray, weights: np.ndarray, n_tiers: int) -> np.ndarray:
    """Weighted BT with ties (tie = half a win each way), R_0 pinned then centred, Newton to 1e-13."""
    a, b, o = cells[:, 0], cells[:, 1], cells[:, 2]
    y = np.where(o == 0, 1.0, np.where(o == 1, 0.0, 0.5))
    r = np.zeros(n_tiers)
    for _ in range(200):
        prob = _sigmoid(r[a] - r[b])
        g = weights * (y - prob)
        grad = np.zeros(n_tiers)
        np.add.at(grad, a, g)
        np.add.at(grad, b, -g)
        h = weights * prob * (1 - prob)
        hess = np.zeros((n_tiers, n_tiers))
        np.add.at(hess, (a, a), h)
        np.add.at(hess, (b, b), h)
        np.add.at(hess, (a, b), -h)
        np.add.at(hess, (b, a), -h)
        step = np.linalg.solve(hess[1:, 1:], grad[1:])
        r[1:] += step
        if np.max(np.abs(step)) < 1e-13:
            break
    return r - r.mean()


def _expected_sw(bundle: Bundle, emb: np.ndarray) -> np.ndarray:
    params = bundle.manifest.routers["sw_ranking"].params
    x = _npy(bundle, "sw_ranking", "prompt_embeddings")
    counts = _npy(bundle, "sw_ranking", "cell_counts")
    cells = np.load(bundle.path / bundle.manifest.routers["sw_ranking"].files["cells"])
    out = []
    for q in emb.astype(np.float64):
        sim = x @ q
        w = params.gamma ** (1.0 + sim / sim.max())
        r = _bt_exact(cells, w @ counts, params.n_tiers)
        # Elo units: r * scale / ln(base); score = 1 / (1 + base ** ((elo_weak - elo_strong) / scale))
        elo = r * params.scale / math.log(params.base)
        diff = (elo[params.weak_tier] - elo[params.strong_tier]) / params.scale
        out.append(1.0 / (1.0 + params.base**diff))
    return np.array(out)


def _expected_bert(bundle: Bundle, batch: PromptBatch) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle.path / bundle.manifest.routers["bert"].files["model"]))
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    tok = batch.tokens
    emb = init["table"][tok.input_ids] + init["type_table"][tok.token_type_ids]
    mask = tok.attention_mask.astype(np.float64)[:, :, None]
    pooled = (emb * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
    logits = pooled @ init["head"]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs[:, 0] / probs.sum(axis=1)


# ---- tests ---------------------------------------------------------------------------------------
def test_routers_in_manifest_order(bundle: Bundle) -> None:
    assert list(bundle.routers) == ["random", "mf", "sw_ranking", "bert"]
    for name, router in bundle.routers.items():
        spec = bundle.manifest.routers[name]
        assert (router.name, router.kind) == (name, spec.kind)
        # a router blended with the difficulty prior needs the embeddings even if its kind does not
        assert router.uses_encoder == (spec.uses_encoder or spec.blend is not None)


def test_scores_equal_direct_numpy(bundle: Bundle) -> None:
    batch = bundle.prompt_batch(TEXTS)
    assert batch.tokens.truncated.tolist() == [False, False, False, True, False, False]
    emb = batch.embeddings
    assert emb is not None and emb.shape == (len(TEXTS), bundle.encoder.dim)
    expected = {
        "random": _expected_random(bundle, TEXTS),
        "mf": _expected_mf(bundle, emb),
        "sw_ranking": _expected_sw(bundle, emb),
        "bert": _blended(bundle, "bert", _expected_bert(bundle, batch), emb),
    }
    tolerance = {"random": 0.0, "mf": 1e-6, "sw_ranking": 1e-6, "bert": 1e-5}
    for name, router in bundle.routers.items():
        got = router.score(batch)
        assert got.dtype == np.float64 and got.shape == (len(TEXTS),)
        assert np.all((got >= 0.0) & (got <= 1.0))
        np.testing.assert_allclose(got, expected[name], rtol=0, atol=tolerance[name], err_msg=name)
    # The scores are not constant: the routers see the prompts.
    for name in ("mf", "sw_ranking", "bert"):
        assert np.ptp(expected[name]) > 1e-4, name


def test_embedding_routers_need_embeddings(bundle: Bundle) -> None:
    tokens = bundle.encoder.tokenize(["hi"])
    batch = PromptBatch(texts=("hi",), tokens=tokens, embeddings=None)
    with pytest.raises(ValueError, match=r"router 'mf' \(mf\) needs embeddings"):
        bundle.routers["mf"].score(batch)
    # bert tokenises for itself, but blended with the difficulty prior it needs the embeddings too
    with pytest.raises(ValueError, match=r"router 'bert' \(bert\) needs embeddings"):
        bundle.routers["bert"].score(batch)
    assert bundle.routers["bert"].inner.score(batch).shape == (1,)
    assert bundle.routers["random"].score(batch).shape == (1,)


def test_empty_batch(bundle: Bundle) -> None:
    batch = bundle.prompt_batch([])
    for router in bundle.routers.values():
        assert router.score(batch).shape == (0,)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 63), min_size=1, max_size=16))
def test_batched_equals_single(bundle: Bundle, picks: list[int]) -> None:
    pool = synthetic_prompts(64, seed=11) + TEXTS
    texts = [pool[i % len(pool)] for i in picks]
    batched = bundle.prompt_batch(texts)
    singles = [bundle.prompt_batch([t]) for t in texts]
    for name, router in bundle.routers.items():
        together = router.score(batched)
        alone = np.concatenate([router.score(s) for s in singles])
        np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6, err_msg=name)


def test_threshold_for_share_interpolates(bundle: Bundle) -> None:
    calib = bundle.manifest.calibration
    assert calib is not None and len(calib.strong_share) == 101
    for name in bundle.routers:
        table = calib.thresholds[name]
        for i in (1, 37, 99):
            assert bundle.threshold_for_share(name, calib.strong_share[i]) == pytest.approx(table[i], abs=1e-12)
        # the table's ends are never and always, not its end points (a score beyond them crossed them)
        assert calib.strong_share[0] == 0.0 and bundle.threshold_for_share(name, 0.0) > 1.0
        assert calib.strong_share[100] == 1.0 and bundle.threshold_for_share(name, 1.0) == 0.0
        mid = 0.5 * (calib.strong_share[20] + calib.strong_share[21])
        assert bundle.threshold_for_share(name, mid) == pytest.approx(0.5 * (table[20] + table[21]), abs=1e-12)
        assert bundle.threshold_for_share(name, 0.0) >= bundle.threshold_for_share(name, 1.0)


def test_threshold_routes_the_requested_share(bundle: Bundle) -> None:
    """make_tiny_bundle calibrates on synthetic_prompts(64, seed=seed + 2): a threshold for share p sends
    about p of those prompts to the strong model."""
    texts = synthetic_prompts(64, seed=3 + 2)
    scores = bundle.routers["mf"].score(bundle.prompt_batch(texts))
    for p in (0.1, 0.25, 0.5, 0.8):
        share = float(np.mean(scores >= bundle.threshold_for_share("mf", p)))
        assert abs(share - p) <= 2.0 / len(texts), (p, share)


@pytest.mark.parametrize("p", [-0.01, 1.0001, float("nan"), float("inf")])
def test_threshold_for_share_rejects_p(bundle: Bundle, p: float) -> None:
    with pytest.raises(ValueError) as info:
        bundle.threshold_for_share("mf", p)
    assert str(info.value) == f"strong share p={p!r} outside [0, 1]"


def test_threshold_for_share_unknown_router(bundle: Bundle) -> None:
    with pytest.raises(KeyError, match="unknown router 'nope'"):
        bundle.threshold_for_share("nope", 0.5)


@pytest.mark.slow
def test_tiny_bundle_around_real_encoder(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """With the real exported all-MiniLM-L6-v2 (tests/integration/conftest.py), a tiny bundle loads and
    its mf scores equal the direct computation."""
    try:
        encoder_dir = request.getfixturevalue("exported_encoder_dir")
    except pytest.FixtureLookupError:
        pytest.skip("no exported_encoder_dir fixture (tests/integration/conftest.py) in this checkout")
    path = make_tiny_bundle(tmp_path / "bundle", encoder_dir=encoder_dir, n_prompts=20, n_calibration=32)
    real = load_bundle(path)
    assert real.manifest.encoder.dim == 384
    batch = real.prompt_batch(TEXTS)
    assert batch.embeddings is not None
    np.testing.assert_allclose(real.routers["mf"].score(batch), _expected_mf(real, batch.embeddings), rtol=0, atol=1e-6)
    single = real.routers["sw_ranking"].score(real.prompt_batch(TEXTS[:1]))
    np.testing.assert_allclose(real.routers["sw_ranking"].score(batch)[:1], single, rtol=0, atol=1e-6)
