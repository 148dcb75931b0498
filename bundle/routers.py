"""The runtime routers of a bundle and the batch they score.

Every router maps a `PromptBatch` to float64 scores in [0, 1] = P(strong model's answer beats the weak
model's); the service routes to strong when score >= threshold. Routers hold validated arrays only
(the loader checks them); they never read files and keep no per-request state, so batched == single.

    RandomRouter     hash of (seed, text) -> [0, 1)  (lmroute.kernels.reference.random_scores)
    MFRouter         sigmoid(u . e) with the collapsed pair vector u       (compiled core)
    SWRankingRouter  similarity-weighted Bradley-Terry over tiers          (compiled core, SWIndex)
    BertRouter       softmax(logits)[strong_wins] of a 3-label ONNX classifier fed the TokenBatch

mf and sw_ranking, and the difficulty-prior blend (`BlendedRouter`), score through the compiled core
(`lmroute.kernels.compiled`), which equals the NumPy reference to <= 1e-6; constructing them raises
`KernelUnavailableError` (an ImportError naming the cause) when the core is missing or stale. There is
no fallback to the reference at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lmroute.kernels import reference

if TYPE_CHECKING:
    from types import ModuleType

    import faiss
    import onnxruntime as ort

    from lmroute.bundle.encoder import TokenBatch

__all__ = [
    "BertRouter",
    "MFRouter",
    "PromptBatch",
    "RandomRouter",
    "Router",
    "SWRankingRouter",
]


@dataclass(frozen=True)
class PromptBatch:
    """One batch of prompts as every router sees it: the raw texts, the encoder's tokens, and the
    encoder's L2-normalised embeddings (float32 [n, dim]; None when no router of the batch needs them)."""

    texts: Sequence[str]
    tokens: TokenBatch
    embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)


class Router(Protocol):
    """What the service and evaluation call."""

    name: str
    kind: str
    uses_encoder: bool

    def score(self, batch: PromptBatch) -> np.ndarray:
        """float64 [n] in [0, 1]."""
        ...


def _need_embeddings(router_name: str, kind: str, batch: PromptBatch, dim: int) -> np.ndarray:
    emb = batch.embeddings
    if emb is None:
        raise ValueError(f"router {router_name!r} ({kind}) needs embeddings, the batch has none")
    if emb.ndim != 2 or emb.shape[0] != len(batch.texts) or emb.shape[1] != dim:
        raise ValueError(
            f"router {router_name!r} ({kind}): embeddings shape {tuple(emb.shape)}, "
            f"expected ({len(batch.texts)}, {dim})"
        )
    return emb


class RandomRouter:
    """Baseline: a score that depends only on (seed, prompt text): the first 8 bytes of
    sha256(str(seed) NUL utf-8 text), top 53 bits / 2**53 (lmroute.kernels.reference.random_scores)."""

    kind = "random"
    uses_encoder = False

    def __init__(self, name: str, *, seed: int) -> None:
        self.name = name
        self.seed = seed

    def score(self, batch: PromptBatch) -> np.ndarray:
        return reference.random_scores(list(batch.texts), self.seed)


def _compiled() -> ModuleType:
    """The compiled core; imported on first use so that a missing core fails the bundle load (with
    KernelUnavailableError's message) rather than every import of this module."""
    from lmroute.kernels import compiled

    return compiled


class MFRouter:
    """Matrix factorisation collapsed to the default pair: score = sigmoid(u . e), in float64.
    (Per-model logits, for routing among more than two models: `lmroute.kernels.compiled.MFIndex`.)"""

    kind = "mf"
    uses_encoder = True

    def __init__(self, name: str, *, pair_vector: np.ndarray) -> None:
        self._core = _compiled()
        self.name = name
        self.pair_vector = np.asarray(pair_vector, dtype=np.float64)
        self._pairs = np.ascontiguousarray(self.pair_vector[None, :])  # [1, d], what the core takes

    def score(self, batch: PromptBatch) -> np.ndarray:
        emb = _need_embeddings(self.name, self.kind, batch, self.pair_vector.shape[0])
        return self._core.pair_probabilities(emb, self._pairs)[:, 0]


class SWRankingRouter:
    """Similarity-weighted Bradley-Terry over tiers, scored exactly over every training prompt.

    The FAISS IndexFlatIP is loaded and validated (ntotal, d, same rows) and kept as `index`, but the
    exact scan runs in the compiled core (`compiled.SWIndex`, float64 accumulation): every training
    prompt carries weight >= gamma, so a top-k search would be a different model, and FAISS's float32
    scan is not exact to 1e-6 (benchmarks/RESULTS_sw_kernel.md measures both). `params.scale` does not
    change the score (the MLE probability is invariant
    to the rating scale) and is kept for reporting ratings in Elo units.
    """

    kind = "sw_ranking"
    uses_encoder = True

    def __init__(
        self,
        name: str,
        *,
        prompt_embeddings: np.ndarray,
        cell_counts: np.ndarray,
        cells: np.ndarray,
        index: faiss.Index | None,
        n_tiers: int,
        strong_tier: int,
        weak_tier: int,
        gamma: float,
        base: float,
        scale: float,
    ) -> None:
        self.name = name
        self.prompt_embeddings = prompt_embeddings
        self.cell_counts = cell_counts
        self.cells = cells
        self.index = index
        self.n_tiers = n_tiers
        self.strong_tier = strong_tier
        self.weak_tier = weak_tier
        self.gamma = gamma
        self.base = base
        self.scale = scale
        self.table = _compiled().SWIndex(prompt_embeddings, cell_counts, cells, n_tiers)
        self.device_table: Any = None
        self.scan_device = "cpu"

    def use_device_scan(self, xp: str = "cupy") -> None:
        """Run the similarity scan on a GPU (lmroute.kernels.gpu; the loader calls this for
        --device cuda when CuPy sees a device). xp="numpy" runs the same code on the CPU (tests)."""
        from lmroute.kernels.gpu import DeviceSWIndex

        self.device_table = DeviceSWIndex(self.table, xp=xp)
        self.scan_device = "cuda" if xp == "cupy" else xp

    def score(self, batch: PromptBatch) -> np.ndarray:
        emb = _need_embeddings(self.name, self.kind, batch, self.prompt_embeddings.shape[1])
        if emb.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        table = self.device_table if self.device_table is not None else self.table
        return table.scores(emb, self.strong_tier, self.weak_tier, gamma=self.gamma, base=self.base)


class BertRouter:
    """3-label classifier (strong_wins, tie, weak_wins) run on the encoder's TokenBatch in its own
    ONNX Runtime session; score = softmax(logits)[strong_wins] in float64."""

    kind = "bert"
    uses_encoder = False
    INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, name: str, *, session: ort.InferenceSession, labels: Sequence[str]) -> None:
        self.name = name
        self.session = session
        self.labels = tuple(labels)
        self._strong = self.labels.index("strong_wins")

    def score(self, batch: PromptBatch) -> np.ndarray:
        tokens: Any = batch.tokens
        n = len(batch.texts)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        feeds = {k: np.ascontiguousarray(getattr(tokens, k), dtype=np.int64) for k in self.INPUTS}
        (logits,) = self.session.run(["logits"], feeds)
        logits = np.asarray(logits, dtype=np.float64)
        if logits.shape != (n, len(self.labels)):
            raise RuntimeError(
                f"router {self.name!r} (bert): logits shape {logits.shape}, expected ({n}, {len(self.labels)})"
            )
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs[:, self._strong]


class BlendedRouter:
    """Another router's score blended with the bundle's difficulty prior (docs/BUNDLE.md
    "difficulty_prior"; the math is `lmroute.kernels.reference.blend_scores`, float64, computed by the
    compiled core's `blend_scores`). Same name and kind as the router it wraps; it needs the encoder's
    embeddings even when that router does not."""

    uses_encoder = True

    def __init__(
        self,
        inner: Router,
        *,
        prior_weights: np.ndarray,
        prior_bias: float,
        prior_center: float,
        prior_scale: float,
        weight: float,
        center: float,
        scale: float,
    ) -> None:
        self._core = _compiled()
        self.inner = inner
        self.name = inner.name
        self.kind = inner.kind
        self.prior_weights = np.asarray(prior_weights, dtype=np.float64)
        self.prior = (float(prior_bias), float(prior_center), float(prior_scale))
        self.blend = (float(weight), float(center), float(scale))

    def score(self, batch: PromptBatch) -> np.ndarray:
        emb = _need_embeddings(self.name, self.kind, batch, self.prior_weights.shape[0])
        bias, p_center, p_scale = self.prior
        weight, center, scale = self.blend
        return self._core.blend_scores(
            self.inner.score(batch),
            emb,
            self.prior_weights,
            bias,
            p_center,
            p_scale,
            weight=weight,
            center=center,
            scale=scale,
        )
