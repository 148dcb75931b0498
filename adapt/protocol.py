"""The adaptation protocol's split (docs/ADAPTATION.md): a benchmark replayed as traffic is cut by the
sha256 of each prompt's UTF-8 text; hex digest's first digit 0-7 = the stream half (the only half ever
trained on, or used for any choice), 8-f = the test half (reported only).

Validation splits inside the stream half (the benchmarks that choose defaults) move whole groups of
near-duplicate prompts (`near_duplicate_groups`, `grouped_split`): the hash split keeps identical texts in
one half, so a test prompt almost never has a near-copy in the stream half, and a validation split that
let one would reward learners that recall copies."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["NEAR_DUPLICATE_COSINE", "STREAM_DIGITS", "grouped_split", "near_duplicate_groups", "stream_mask"]

STREAM_DIGITS = frozenset("01234567")
NEAR_DUPLICATE_COSINE = 0.95
_BLOCK_BYTES = 64 << 20  # the slice of the cosine matrix formed at a time (float64)


def stream_mask(texts: Sequence[str]) -> npt.NDArray[np.bool_]:
    """True for the prompts of the stream half, False for the test half."""
    return np.fromiter(
        (hashlib.sha256(t.encode("utf-8")).hexdigest()[0] in STREAM_DIGITS for t in texts),
        dtype=np.bool_,
        count=len(texts),
    )


def near_duplicate_groups(embeddings: npt.ArrayLike, threshold: float = NEAR_DUPLICATE_COSINE) -> npt.NDArray[np.int64]:
    """Group ids [n] of the prompts: two prompts whose embeddings have cosine >= `threshold` share a group,
    and so does every chain of such pairs. A group's id is its first prompt's index."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"embeddings: expected [n, dim], got shape {e.shape}")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.where(norms > 0, norms, 1.0)
    parent = np.arange(e.shape[0], dtype=np.int64)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    block = max(1, _BLOCK_BYTES // (8 * max(1, e.shape[0])))
    for start in range(0, e.shape[0], block):
        rows, cols = np.nonzero(e[start : start + block] @ e.T >= threshold)
        for i, j in zip((rows + start).tolist(), cols.tolist(), strict=True):
            if i < j:
                ri, rj = root(i), root(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    return np.fromiter((root(i) for i in range(e.shape[0])), dtype=np.int64, count=e.shape[0])


def grouped_split(groups: npt.ArrayLike, first: int, seed: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A seeded random split of the prompts' indices into (head, rest) that never parts a group: groups in
    random order, each group's members adjacent and shuffled, cut at the first group boundary at or after
    `first` prompts (so head holds `first` prompts or a few more)."""
    g = np.asarray(groups, dtype=np.int64)
    if not 0 <= first <= g.size:
        raise ValueError(f"first: {first} outside [0, {g.size}]")
    rng = np.random.default_rng(seed)
    ids = np.unique(g)
    rank = np.zeros(int(ids.max()) + 1 if ids.size else 0, dtype=np.int64)
    rank[rng.permutation(ids)] = np.arange(ids.size)
    order = np.lexsort((rng.random(g.size), rank[g])).astype(np.int64)
    cut = first
    while 0 < cut < order.size and g[order[cut]] == g[order[cut - 1]]:
        cut += 1
    return order[:cut], order[cut:]
