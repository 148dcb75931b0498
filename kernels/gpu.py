"""GPU variant of the sw_ranking scan (CuPy), used when CuPy and a CUDA device are present.

The scan, the weights and the scatter-add are dense linear algebra on the device, all in float64 so the
result stays exact like the CPU core's: sims = Q X^T, w = gamma^(1 + sims / max sims), cell weights =
w C with C the per-prompt cell counts as a device CSR matrix. Only the [b, c] cell weights come back to
the host, where the compiled core runs the small Newton solve per prompt
(`SWIndex.scores_from_cell_weights`).

The same code runs on NumPy + SciPy (`DeviceSWIndex(table, xp="numpy")`): that is how the CPU-only test
suite checks it against the compiled core. `benchmarks/gpu/check_kernels_gpu.py` checks the CuPy path
on a GPU machine.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lmroute.kernels.compiled import SWIndex

__all__ = ["DeviceSWIndex", "cuda_available"]


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        cupy = importlib.import_module("cupy")
        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # ImportError, or CUDA driver errors on a machine without a GPU
        return False


def _modules(xp: str) -> tuple[Any, Any]:
    if xp == "cupy":
        return importlib.import_module("cupy"), importlib.import_module("cupyx.scipy.sparse")
    if xp == "numpy":
        return np, importlib.import_module("scipy.sparse")
    raise ValueError(f"xp must be 'cupy' or 'numpy', got {xp!r}")


class DeviceSWIndex:
    """An `SWIndex` whose scan runs on a device array module (CuPy by default)."""

    def __init__(self, table: SWIndex, *, xp: str = "cupy") -> None:
        self.table = table
        self.xp, sparse = _modules(xp)
        self.embeddings = self.xp.asarray(table.embeddings, dtype=self.xp.float64)
        n, c = table.n_prompts, len(table.cells)
        counts = sparse.csr_matrix(
            (self.xp.asarray(table.values), self.xp.asarray(table.indices), self.xp.asarray(table.indptr)),
            shape=(n, c),
        )
        self.counts_t = counts.T.tocsr()  # [c, n]: cell weights = (C^T w^T)^T

    def cell_weights(self, query_emb: NDArray[np.floating], gamma: float = 10.0) -> NDArray[np.float64]:
        """Per-query cell weights [b, c] on the host (the twin of `SWIndex.cell_weights`)."""
        xp = self.xp
        if not (gamma > 0.0 and math.isfinite(gamma)):
            raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
        q = np.asarray(query_emb)
        if q.ndim != 2 or q.shape[1] != self.table.dim:
            raise ValueError(f"query_emb must have shape [b, {self.table.dim}], got {q.shape}")
        b, c = q.shape[0], len(self.table.cells)
        if self.table.n_prompts == 0 or b == 0:
            return np.zeros((b, c), dtype=np.float64)
        qd = xp.asarray(q.astype(np.float32), dtype=xp.float64)
        sims = qd @ self.embeddings.T  # [b, n]
        max_sim = sims.max(axis=1, keepdims=True)
        ratio = xp.where(max_sim > 0.0, sims / xp.where(max_sim > 0.0, max_sim, 1.0), 0.0)
        weights = xp.exp(math.log(gamma) * (1.0 + ratio))
        cells = (self.counts_t @ weights.T).T  # [b, c]
        out = cells.get() if hasattr(cells, "get") else np.asarray(cells)
        return np.ascontiguousarray(out, dtype=np.float64)

    def scores(
        self,
        query_emb: NDArray[np.floating],
        strong_tier: int,
        weak_tier: int,
        gamma: float = 10.0,
        base: float = 10.0,
    ) -> NDArray[np.float64]:
        """P(strong tier beats weak tier) [b]: device scan, host Newton (compiled core)."""
        return self.table.scores_from_cell_weights(self.cell_weights(query_emb, gamma), strong_tier, weak_tier, base)
