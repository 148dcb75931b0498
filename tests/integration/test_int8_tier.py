"""The int8 encoder tier end to end: `lmroute-export build --encoder onnx-int8` in quick mode exports the
encoder's int8 graph (its MatMuls dynamically quantised, per channel), trains on its embeddings and
writes a bundle whose manifest says so; the bundle loads and its embeddings stay close to fp32's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lmroute.bundle.encoder import OnnxEncoder
from lmroute.bundle.loader import load_bundle
from lmroute.bundle.routers import PromptBatch
from lmroute.export.pipeline import BuildConfig, build_bundle
from lmroute.export.recipe import Recipe

pytestmark = pytest.mark.slow
PROMPTS = ["Prove that sqrt(2) is irrational.", "hi", "Write a B-tree in Rust with deletion.", "¿Qué tal? 日本語"]


def test_int8_build_loads_and_stays_close_to_fp32(tmp_path: Path, exported_encoder_dir: Path) -> None:
    cfg = BuildConfig(
        out_dir=tmp_path / "bundle",
        cache_dir=tmp_path / "cache",
        exported_encoder_dir=exported_encoder_dir,  # not used by the int8 tier: it exports its own graph
        routers=("random", "mf"),
        quick=True,
        recipe=Recipe(encoder="onnx-int8"),
    )
    report = build_bundle(cfg)
    assert report.encoder["quantized"] == "int8"
    bundle = load_bundle(cfg.out_dir)
    enc = bundle.manifest.encoder
    assert (enc.kind, enc.quantized, enc.dim) == ("onnx", True, 384)
    tokens = bundle.encoder.tokenize(PROMPTS)
    emb = bundle.encoder.embed(tokens)
    fp32 = OnnxEncoder(exported_encoder_dir / "model.onnx", exported_encoder_dir / "tokenizer.json")
    ref = fp32.embed(fp32.tokenize(PROMPTS))
    assert np.all(np.sum(emb * ref, axis=1) > 0.95)  # unit vectors: the cosine to the fp32 graph
    scores = bundle.routers["mf"].score(PromptBatch(PROMPTS, tokens, emb))
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))
