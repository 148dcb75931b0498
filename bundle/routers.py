"""The batch every router scores, the `Router` protocol, and the difficulty-prior blend around a router.

Every router maps a `PromptBatch` to float64 scores in [0, 1] = P(strong model's answer beats the weak
model's); the service routes to strong when score >= threshold. Routers hold validated arrays only
(the loader checks them); they never read files and keep no per-request state, so batched == single.
Each kind's runtime router lives in its kind module (`lmroute.bundle.kinds.<kind>`).

The compiled scoring core (`lmroute.kernels.compiled`, equal to the NumPy reference to <= 1e-6) is
reached through `compiled_core()`: constructing a router that needs it raises `KernelUnavailableError`
(an ImportError naming the cause) when the core is missing or stale. There is no fallback to the
reference at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from types import ModuleType

    from lmroute.bundle.encoder import TokenBatch
    from lmroute.bundle.manifest import Blend, DifficultyPriorSpec

__all__ = ["BlendedRouter", "ModelQualities", "PromptBatch", "Router", "compiled_core", "need_embeddings"]


@dataclass(frozen=True)
class PromptBatch:
    """One batch of prompts as every router sees it: the raw texts, the encoder's tokens, and the
    encoder's L2-normalised embeddings (float32 [n, dim]; None when no router of the batch needs them).

    A batch of stored features (`from_features`: prompts kept as their embedding and character count,
    the outcome store's privacy switch) has `chars` set, empty texts and no tokens: only routers of kinds
    that read no text (`RouterKind.reads_text` False) can score it."""

    texts: Sequence[str]
    tokens: TokenBatch
    embeddings: npt.NDArray[np.float32] | None = None
    chars: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_features(cls, embeddings: npt.ArrayLike, chars: Sequence[int]) -> PromptBatch:
        """The batch of prompts known only by their embeddings [n, dim] (in the bundle's space) and
        character counts [n]."""
        from lmroute.bundle.encoder import TokenBatch

        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(chars):
            raise ValueError(f"from_features: embeddings {emb.shape} for {len(chars)} character counts")
        return cls([""] * len(chars), TokenBatch.empty(), emb, tuple(int(c) for c in chars))

    def char_counts(self) -> npt.NDArray[np.int64]:
        """Characters of each prompt: `chars` when set, else the texts' lengths."""
        if self.chars is not None:
            return np.asarray(self.chars, dtype=np.int64)
        return np.fromiter((len(t) for t in self.texts), dtype=np.int64, count=len(self.texts))


class Router(Protocol):
    """What the service and evaluation call."""

    name: str
    kind: str
    uses_encoder: bool

    def score(self, batch: PromptBatch) -> npt.NDArray[np.float64]:
        """float64 [n] in [0, 1]."""
        ...


@runtime_checkable
class ModelQualities(Protocol):
    """A router that also predicts each of several models' quality on a prompt (routing among N models:
    the `quality` kind)."""

    models: tuple[str, ...]

    def qualities(self, batch: PromptBatch) -> npt.NDArray[np.float64]:
        """float64 [n, len(models)] in [0, 1]."""
        ...


def need_embeddings(router_name: str, kind: str, batch: PromptBatch, dim: int) -> npt.NDArray[np.float32]:
    """The batch's embeddings, checked to be [n, dim]; a ValueError naming the router otherwise."""
    emb = batch.embeddings
    if emb is None:
        raise ValueError(f"router {router_name!r} ({kind}) needs embeddings, the batch has none")
    if emb.ndim != 2 or emb.shape[0] != len(batch.texts) or emb.shape[1] != dim:
        raise ValueError(
            f"router {router_name!r} ({kind}): embeddings shape {tuple(emb.shape)}, "
            f"expected ({len(batch.texts)}, {dim})"
        )
    return emb


def compiled_core() -> ModuleType:
    """The compiled core; imported on first use so that a missing core fails the bundle load (with
    KernelUnavailableError's message) rather than every import of this module."""
    from lmroute.kernels import compiled

    return compiled


def row_dots(x: npt.ArrayLike, w: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """x [n, d] @ w [d, m] in float64, each row's sums in one fixed order (the compiled core's `row_dots`),
    so a prompt scores the same alone and in a batch (BLAS chooses its kernel by the batch's size)."""
    weights = np.asarray(w, dtype=np.float64)
    out: npt.NDArray[np.float64] = compiled_core().row_dots(np.asarray(x, dtype=np.float64), weights.T)
    return out


class BlendedRouter:
    """Another router's score blended with the bundle's difficulty prior (docs/BUNDLE.md
    "difficulty_prior"; the math is `lmroute.kernels.reference.blend_scores`, float64, computed by the
    compiled core's `blend_scores`). Same name and kind as the router it wraps; it needs the encoder's
    embeddings even when that router does not."""

    uses_encoder = True

    def __init__(
        self, inner: Router, *, prior: DifficultyPriorSpec, prior_weights: npt.NDArray[np.floating], blend: Blend
    ) -> None:
        self._core = compiled_core()
        self.inner = inner
        self.name = inner.name
        self.kind = inner.kind
        self.prior = prior
        self.prior_weights = np.asarray(prior_weights, dtype=np.float64)
        self.blend = blend

    def score(self, batch: PromptBatch) -> npt.NDArray[np.float64]:
        emb = need_embeddings(self.name, self.kind, batch, self.prior_weights.shape[0])
        p, b = self.prior, self.blend
        prior_args = (self.prior_weights, p.bias, p.center, p.scale)
        scores: npt.NDArray[np.float64] = self._core.blend_scores(
            self.inner.score(batch), emb, *prior_args, weight=b.prior_weight, center=b.center, scale=b.scale
        )
        return scores
