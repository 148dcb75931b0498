"""The real all-MiniLM-L6-v2 exported to ONNX: parity with PyTorch, the runtime's padding / truncation /
ordering / batching on the real graph, the embedding cache, bad files, determinism and int8."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from lmroute.bundle.encoder import EncoderModelError, OnnxEncoder, TokenBatch
from lmroute.export.embed_cache import embed_texts, encoder_id_for
from lmroute.export.encoder_export import (
    MIN_COSINE,
    VERIFY_PROMPTS,
    EncoderExport,
    default_model_dir,
    export_encoder,
)

pytestmark = pytest.mark.slow

PROMPTS = [
    "What is the capital of France?",
    "",
    "def add(a, b):\n    return a + b",
    "Explique la relativité générale en trois phrases. 🚀",
    "请解释一下量子计算。",
    "A much longer prompt that asks the model to compare several sorting algorithms, including "
    "quicksort, mergesort and heapsort, in terms of average and worst-case complexity.",
    "Why is the sky blue? " * 60,  # 360 tokens: truncated to 256
    "cat dog red blue tree",
]


@pytest.fixture(scope="module")
def encoder(exported_encoder_dir: Path) -> OnnxEncoder:
    d = exported_encoder_dir
    return OnnxEncoder(d / "model.onnx", d / "tokenizer.json", max_tokens=256, intra_op_threads=2)


def _pytorch_embeddings(texts: list[str]) -> np.ndarray:
    """Independent reference: AutoModel + masked mean + L2, one text at a time (no padding at all)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(default_model_dir()))
    model = AutoModel.from_pretrained(str(default_model_dir())).eval()
    rows = []
    with torch.inference_mode():
        for t in texts:
            enc = tok([t], truncation=True, max_length=256, return_tensors="pt")
            mean = model(**enc).last_hidden_state[0].mean(0)
            rows.append((mean / mean.norm()).numpy())
    return np.stack(rows).astype(np.float32)


def test_export_record(encoder_export: EncoderExport, exported_encoder_dir: Path) -> None:
    assert encoder_export.n_verify_prompts == len(VERIFY_PROMPTS) >= 32
    assert encoder_export.min_cosine >= MIN_COSINE
    assert encoder_export.dim == 384 and encoder_export.quantized is None
    assert encoder_export.ort_optimized
    assert encoder_export.fused_ops.get("Attention") == 6  # eager-attention export fuses every layer
    assert (exported_encoder_dir / "tokenizer.json").read_bytes() == (
        default_model_dir() / "tokenizer.json"
    ).read_bytes()


def test_cosine_vs_pytorch(encoder: OnnxEncoder) -> None:
    got = encoder.encode(PROMPTS, batch_size=4)
    want = _pytorch_embeddings(PROMPTS)
    cos = (got.astype(np.float64) * want).sum(1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= MIN_COSINE, cos
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_dynamic_padding_and_truncation(encoder: OnnxEncoder) -> None:
    tb = encoder.tokenize(["cat dog red blue tree"])
    assert tb.seq_len == 7  # 5 tokens + [CLS] + [SEP], not the tokenizer.json's fixed 128
    tb = encoder.tokenize(PROMPTS)
    assert tb.seq_len == 256
    assert tb.truncated.tolist() == [i == 6 for i in range(len(PROMPTS))]
    assert tb.n_tokens[6] == 256


class CountingEncoder(OnnxEncoder):
    """The real encoder, counting `embed` calls and texts."""

    calls: int = 0
    texts: int = 0

    def embed(self, tokens: TokenBatch) -> np.ndarray:
        self.calls += 1
        self.texts += len(tokens)
        return super().embed(tokens)


def test_encode_order_and_batched_equals_single(exported_encoder_dir: Path) -> None:
    d = exported_encoder_dir
    enc = CountingEncoder(d / "model.onnx", d / "tokenizer.json", max_tokens=256, intra_op_threads=2)
    singles = np.stack([enc.embed(enc.tokenize([t]))[0] for t in PROMPTS])
    enc.calls = 0
    got = enc.encode(PROMPTS, batch_size=3)
    assert enc.calls == 3  # 8 prompts in sub-batches of 3
    assert np.abs(got - singles).max() <= 1e-6
    perm = [5, 2, 7, 0, 6, 1, 4, 3]
    got = enc.encode([PROMPTS[i] for i in perm], batch_size=16)
    assert np.abs(got - singles[perm]).max() <= 1e-6


def test_cache_hit_does_not_call_the_model(exported_encoder_dir: Path, tmp_path: Path) -> None:
    d = exported_encoder_dir
    enc = CountingEncoder(d / "model.onnx", d / "tokenizer.json", max_tokens=256, intra_op_threads=2)
    eid = encoder_id_for(d / "model.onnx", max_tokens=256)
    first = embed_texts(enc, PROMPTS, tmp_path, encoder_id=eid, progress=False)
    assert enc.texts == len(PROMPTS)
    enc.calls = enc.texts = 0
    again = embed_texts(enc, list(reversed(PROMPTS)), tmp_path, encoder_id=eid, progress=False)
    assert enc.calls == 0
    assert np.array_equal(again, first[::-1])


def test_truncated_model_file_is_rejected(exported_encoder_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes((exported_encoder_dir / "model.onnx").read_bytes()[:4096])
    with pytest.raises(EncoderModelError, match=f"^{bad}: ONNX Runtime cannot load the encoder model"):
        OnnxEncoder(bad, exported_encoder_dir / "tokenizer.json")


def test_export_is_deterministic(encoder: OnnxEncoder, exported_encoder_dir: Path, tmp_path: Path) -> None:
    again = export_encoder(None, tmp_path / "again", max_tokens=256, verify_prompts=PROMPTS[:3])
    enc2 = OnnxEncoder(again.model_path, again.tokenizer_path, max_tokens=256, intra_op_threads=2)
    assert np.array_equal(enc2.encode(PROMPTS), encoder.encode(PROMPTS))
    sha = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (again.model_path, exported_encoder_dir / "model.onnx")]
    assert sha[0] == sha[1]


def test_int8_export(encoder: OnnxEncoder, tmp_path: Path) -> None:
    res = export_encoder(None, tmp_path / "int8", max_tokens=256, quantize="int8", verify_prompts=PROMPTS)
    assert res.quantized == "int8" and res.fp32_min_cosine >= MIN_COSINE
    assert not res.ort_optimized and res.fused_ops == {}
    assert res.int8_min_cosine_vs_fp32 is not None and res.int8_min_cosine_vs_fp32 >= 0.96
    assert res.int8_mean_cosine_vs_fp32 is not None and res.int8_mean_cosine_vs_fp32 >= 0.985
    q = OnnxEncoder(res.model_path, res.tokenizer_path, max_tokens=256, intra_op_threads=2)
    got, ref = q.encode(PROMPTS), encoder.encode(PROMPTS)
    cos = (got * ref).sum(1)
    assert cos.min() >= 0.96 and cos.max() < 0.99999  # close to fp32, and really a different graph
    assert res.model_path.stat().st_size < 0.8 * encoder.model_path.stat().st_size  # MatMul weights int8
