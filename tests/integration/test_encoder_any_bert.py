"""The encoder is a parameter: any local Hugging Face BERT-class model directory exports, verifies
against PyTorch and serves through the same runtime. Here: a small randomly initialised BERT (different
dim and depth from MiniLM) saved with save_pretrained, with MiniLM's tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lmroute.bundle.encoder import OnnxEncoder
from lmroute.export.encoder_export import default_model_dir, export_encoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    src = default_model_dir()
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, out / name)
    return out


def test_other_bert_exports_and_matches_pytorch(tiny_bert_dir: Path, tmp_path: Path) -> None:
    res = export_encoder(tiny_bert_dir, tmp_path / "enc", max_tokens=128)
    assert res.dim == 64
    assert res.min_cosine >= 0.9999
    enc = OnnxEncoder(res.model_path, res.tokenizer_path, max_tokens=128)
    emb = enc.encode(["a short prompt", "another, somewhat longer prompt about databases"])
    assert emb.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
