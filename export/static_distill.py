"""Distil a static encoder (a token table, `lmroute.bundle.static_encoder`) from a transformer encoder.

`distill_static_table(source, count_texts)`:
  1. every tokenizer id t is run through the source encoder as one text of the template's special tokens
     around it ([CLS] t [SEP] for BERT): its pooled, L2-normalised embedding, float32 [vocab, source dim];
  2. the rows are centred and projected on their first `dim` principal components (SVD in float64;
     each component's sign fixed so its largest-magnitude loading is positive: deterministic);
  3. row t is scaled by the SIF weight sif_a / (sif_a + p(t)), p(t) the add-one-smoothed frequency of t
     among the kept tokens (special tokens included) of `count_texts`, so frequent tokens count little
     in a text's mean.
Deterministic for the same source graph, texts and parameters; step 1 is nearly all of its time (the
cold `encoder` step of a static build, in its build report). No torch: the source is the exported ONNX
encoder.

`ensure_static_encoder` caches the result (table.npy + tokenizer.json + distill.json) under the build's
cache directory, keyed by the source graph, the parameters and the texts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lmroute.bundle.encoder import OnnxEncoder, TokenBatch
from lmroute.bundle.files import sha256_file
from lmroute.bundle.manifest import StaticDistillation
from lmroute.export.cache_entry import fill_once

__all__ = ["DEFAULT_SIF_A", "DEFAULT_STATIC_DIM", "StaticTable", "distill_static_table", "ensure_static_encoder"]

DEFAULT_STATIC_DIM = 256
DEFAULT_SIF_A = 1e-3
_CHUNK = 1024  # vocabulary rows per source-encoder call


@dataclass(frozen=True)
class StaticTable:
    """A distilled table [vocab, dim] and the manifest's account of how it was made."""

    table: npt.NDArray[np.float32]
    distillation: StaticDistillation
    seconds: float


def token_frequencies(source: OnnxEncoder, texts: Sequence[str], chunk: int = 2048) -> tuple[np.ndarray, int]:
    """Counts [vocab] of every kept token id (special tokens included) over `texts`, and the text count."""
    counts = np.zeros(source.tokenizer.vocab_size, dtype=np.int64)
    for start in range(0, len(texts), chunk):
        tb = source.tokenize(texts[start : start + chunk])
        counts += np.bincount(tb.input_ids[tb.attention_mask.astype(bool)], minlength=counts.size)
    return counts, len(texts)


def _vocabulary_embeddings(source: OnnxEncoder) -> npt.NDArray[np.float32]:
    tok = source.tokenizer
    front, back = list(tok.front_ids), list(tok.back_ids)
    width = len(front) + 1 + len(back)
    out = np.empty((tok.vocab_size, source.dim), dtype=np.float32)
    for start in range(0, tok.vocab_size, _CHUNK):
        ids = np.arange(start, min(start + _CHUNK, tok.vocab_size), dtype=np.int64)
        rows = np.empty((ids.size, width), dtype=np.int64)
        rows[:, : len(front)] = front
        rows[:, len(front)] = ids
        rows[:, len(front) + 1 :] = back
        batch = TokenBatch(
            input_ids=rows,
            attention_mask=np.ones_like(rows),
            token_type_ids=np.zeros_like(rows),
            n_tokens=np.full(ids.size, width, dtype=np.int64),
            truncated=np.zeros(ids.size, dtype=bool),
        )
        out[start : start + ids.size] = source.embed(batch)
    return out


def _principal_projection(x: npt.NDArray[np.float32], dim: int) -> npt.NDArray[np.float64]:
    centred = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:dim]
    signs = np.sign(components[np.arange(dim), np.abs(components).argmax(axis=1)])
    components *= np.where(signs == 0, 1.0, signs)[:, None]
    projected: npt.NDArray[np.float64] = centred @ components.T
    return projected


def distill_static_table(
    source: OnnxEncoder,
    count_texts: Sequence[str],
    *,
    source_name: str,
    count_texts_from: str,
    dim: int = DEFAULT_STATIC_DIM,
    sif_a: float = DEFAULT_SIF_A,
) -> StaticTable:
    """The token table of `source` (module docstring). dim must be in [1, source.dim]; sif_a > 0."""
    if not 1 <= dim <= source.dim:
        raise ValueError(f"static encoder dim must be in [1, {source.dim}] (the source's dimension), got {dim}")
    if not sif_a > 0:
        raise ValueError(f"sif_a must be positive, got {sif_a}")
    t0 = time.perf_counter()
    projected = _principal_projection(_vocabulary_embeddings(source), dim)
    counts, n_texts = token_frequencies(source, count_texts)
    p = (counts + 1.0) / float(counts.sum() + counts.size)
    table = (projected * (sif_a / (sif_a + p))[:, None]).astype(np.float32)
    how = StaticDistillation(
        source=source_name,
        source_sha256=sha256_file(source.model_path),
        dim=dim,
        sif_a=float(sif_a),
        token_counts_from=count_texts_from,
        n_texts=n_texts,
        n_tokens=int(counts.sum()),
    )
    return StaticTable(table=np.ascontiguousarray(table), distillation=how, seconds=time.perf_counter() - t0)


def _texts_key(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        data = t.encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def ensure_static_encoder(
    source: OnnxEncoder,
    source_name: str,
    cache_dir: Path,
    count_texts: Callable[[], Sequence[str]],
    count_texts_from: str,
    *,
    dim: int = DEFAULT_STATIC_DIM,
    sif_a: float = DEFAULT_SIF_A,
) -> tuple[Path, StaticDistillation]:
    """A directory holding table.npy + tokenizer.json (distilled once per source graph, parameters and
    texts, under cache_dir/static/<key>), and how the table was made."""
    texts = list(count_texts())
    key = hashlib.sha256(
        json.dumps(
            {
                "source": sha256_file(source.model_path),
                "tokenizer": sha256_file(source.tokenizer_path),
                "dim": dim,
                "sif_a": sif_a,
                "texts": _texts_key(texts),
                "max_tokens": source.max_tokens,
                "truncation": str(source.truncation),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    out = cache_dir / "static" / key
    info_path = out / "distill.json"

    def make(staging: Path) -> None:
        made = distill_static_table(
            source, texts, source_name=source_name, count_texts_from=count_texts_from, dim=dim, sif_a=sif_a
        )
        np.save(staging / "table.npy", made.table, allow_pickle=False)
        shutil.copyfile(source.tokenizer_path, staging / "tokenizer.json")
        info = {"distillation": made.distillation.to_dict(), "seconds": round(made.seconds, 1)}
        (staging / "distill.json").write_text(json.dumps(info, indent=2))

    fill_once(out, lambda o: (o / "distill.json").is_file() and (o / "table.npy").is_file(), make)
    return out, StaticDistillation(**json.loads(info_path.read_text())["distillation"])
