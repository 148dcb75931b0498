"""On-disk embedding cache for the offline pipeline (train / eval / calibration prompts).

Holds `embed_texts`, which embeds texts with a bundle encoder (`SentenceEncoder`) and remembers the
result per machine, and
`encoder_id_of` / `encoder_id_for`, the cache key of an encoder (sha256 of its model.onnx, its token
limit and its truncation rule: the build and the harness embed through the encoder, so the training
embeddings are cut by the same rule, `lmroute.bundle.truncation`, that the served bundle states).

Layout (no pickles; every file loads with `allow_pickle=False`):

    <cache_dir>/<encoder_id>/shard-<h>.emb.npy    float32 [rows, dim]
    <cache_dir>/<encoder_id>/shard-<h>.keys.npy   |S64 [rows]: hex sha256 of each text (UTF-8)

<h> is the first 16 hex digits of the sha256 of the shard's keys, so two processes filling the same
cache never write different content under one name.

A shard counts only once both files exist with the same row count; each file is written to a temporary
name and renamed, so an interrupted run leaves no half shard behind and the next run resumes.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmroute.bundle.encoder import SentenceEncoder
from lmroute.bundle.files import sha256_file
from lmroute.bundle.truncation import Truncation

__all__ = ["EmbedCacheError", "embed_texts", "encoder_id_for", "encoder_id_of", "text_key"]

_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SHARD_RE = re.compile(r"^shard-[0-9a-f]{16}\.emb\.npy$")
#: Texts per shard written (also the unit of resumption after an interrupted run).
SHARD_ROWS = 2048
#: Texts per encoder call (the progress bar moves by this much).
CHUNK_ROWS = 256


class EmbedCacheError(RuntimeError):
    """The cache directory holds something inconsistent (message names the file)."""


def text_key(text: str) -> bytes:
    """Cache key of one text: hex sha256 of its UTF-8 bytes (64 ASCII bytes)."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest().encode("ascii")


def encoder_id_for(model_path: Path, *, max_tokens: int | None = None, truncation: Truncation | None = None) -> str:
    """sha256 of the encoder's model.onnx, plus `-t<max_tokens>` and `-<rule>` (e.g. `-head_tail64`) when
    given: the token limit and the truncation rule change the embeddings of long texts."""
    digest = sha256_file(Path(model_path))
    if max_tokens is not None:
        digest += f"-t{max_tokens}"
    if truncation is not None:
        digest += f"-{truncation.cache_key()}"
    return digest


def encoder_id_of(encoder: SentenceEncoder) -> str:
    """The cache id of an open encoder: its model file, token limit and truncation rule."""
    return encoder_id_for(encoder.model_path, max_tokens=encoder.max_tokens, truncation=encoder.truncation)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_DELETE_SHARD = "delete it and the shard's other file (the next run computes those embeddings again)"


def _load_array(path: Path, *, mmap: bool) -> np.ndarray:
    """One .npy file of a shard; EmbedCacheError naming it when it cannot be read (truncated, not .npy)."""
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as exc:  # a short file: ValueError (mmap, reshape) or EOFError
        raise EmbedCacheError(f"{path}: unreadable ({type(exc).__name__}: {exc}); {_DELETE_SHARD}") from None


def _load_shards(root: Path, dim: int) -> tuple[dict[bytes, tuple[int, int]], list[np.ndarray]]:
    """Map key -> (shard index in the returned list, row), and the shards' arrays."""
    index: dict[bytes, tuple[int, int]] = {}
    arrays: list[np.ndarray] = []
    for emb_path in sorted(root.glob("shard-*.emb.npy")):
        if _SHARD_RE.match(emb_path.name) is None:
            continue
        keys_path = emb_path.with_name(emb_path.name.replace(".emb.npy", ".keys.npy"))
        if not keys_path.is_file():
            continue  # interrupted between the two renames: recomputed and rewritten later
        emb = _load_array(emb_path, mmap=True)
        keys = _load_array(keys_path, mmap=False)
        if emb.ndim != 2 or emb.dtype != np.float32 or emb.shape[1] != dim:
            raise EmbedCacheError(
                f"{emb_path}: shape {emb.shape} {emb.dtype}, expected float32 [rows, {dim}]; {_DELETE_SHARD}"
            )
        if keys.shape != (emb.shape[0],) or keys.dtype != np.dtype("S64"):
            raise EmbedCacheError(
                f"{keys_path}: shape {keys.shape} {keys.dtype}, expected |S64 [{emb.shape[0]}]; {_DELETE_SHARD}"
            )
        shard = len(arrays)
        arrays.append(emb)
        for row, key in enumerate(keys.tolist()):
            index[key] = (shard, row)
    return index, arrays


def embed_texts(
    encoder: SentenceEncoder,
    texts: Sequence[str],
    cache_dir: Path | None,
    *,
    encoder_id: str,
    progress: bool = True,
    batch_size: int = 32,
) -> np.ndarray:
    """Embeddings of `texts` (float32 [n, dim], input order), computing only those not cached yet.

    Duplicate texts are embedded once. `encoder_id` must name the encoder exactly (use
    `encoder_id_for`); a different id is a different cache. `cache_dir=None` disables caching.
    """
    if isinstance(texts, str):
        raise TypeError("embed_texts expects a sequence of strings, got a single str")
    if not _ID_RE.match(encoder_id):
        raise ValueError(f"encoder_id must match {_ID_RE.pattern} (a file name), got {encoder_id!r}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    n, dim = len(texts), encoder.dim
    keys = [text_key(t) for t in texts]
    out = np.empty((n, dim), dtype=np.float32)

    root: Path | None = None
    index: dict[bytes, tuple[int, int]] = {}
    arrays: list[np.ndarray] = []
    if cache_dir is not None:
        root = Path(cache_dir) / encoder_id
        root.mkdir(parents=True, exist_ok=True)
        index, arrays = _load_shards(root, dim)

    missing: dict[bytes, str] = {}
    for i, key in enumerate(keys):
        hit = index.get(key)
        if hit is not None:
            out[i] = arrays[hit[0]][hit[1]]
        elif key not in missing:
            missing[key] = texts[i]

    if missing:
        fresh = _embed_missing(encoder, list(missing.items()), root, progress, batch_size)
        for i, key in enumerate(keys):
            if key in fresh:
                out[i] = fresh[key]
    return out


def _embed_missing(
    encoder: SentenceEncoder,
    items: list[tuple[bytes, str]],
    root: Path | None,
    progress: bool,
    batch_size: int,
) -> dict[bytes, np.ndarray]:
    from tqdm import tqdm

    fresh: dict[bytes, np.ndarray] = {}
    with tqdm(total=len(items), desc="embedding", unit="text", disable=not progress) as bar:
        for s_start in range(0, len(items), SHARD_ROWS):
            shard_items = items[s_start : s_start + SHARD_ROWS]
            parts = []
            for c_start in range(0, len(shard_items), CHUNK_ROWS):
                chunk = [t for _, t in shard_items[c_start : c_start + CHUNK_ROWS]]
                parts.append(encoder.encode(chunk, batch_size=batch_size))
                bar.update(len(chunk))
            emb = np.concatenate(parts, axis=0).astype(np.float32, copy=False)
            shard_keys = np.array([k for k, _ in shard_items], dtype="S64")
            if root is not None:
                name = "shard-" + hashlib.sha256(shard_keys.tobytes()).hexdigest()[:16]
                _atomic_save(root / f"{name}.emb.npy", emb)
                _atomic_save(root / f"{name}.keys.npy", shard_keys)
            for row, (key, _) in enumerate(shard_items):
                fresh[key] = emb[row]
    return fresh
