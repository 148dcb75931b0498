"""The `adapted` router kind: an in-domain head learnt from a deployment's own outcomes, blended with a
shipped router of the same bundle (`lmroute.adapt` trains and writes it; docs/ADAPTATION.md).

Files: `weights` float32 [dim], the head's weights on the encoder's embedding. Params: `base_router` (the
name of the router it blends with, another router of the bundle that is not itself adapted),
`blend_weight` w in [0, 1], and the head's `length_weight`, `bias`, `center`, `scale` and the base's
`base_center`, `base_scale`. Per prompt (embedding e, text of c characters):

    head   = e . weights + length_weight * log(1 + c) + bias
    z_head = (head - center) / scale
    z_base = (logit(base score) - base_center) / base_scale        logit clipped to [1e-12, 1 - 1e-12]
    score  = sigmoid(w * z_head + (1 - w) * z_base)

The centers and scales are medians and IQR / 1.349 over the prompts the head was trained on, so both
parts are on one footing and the score is monotone in each; w = 1 is the head alone, w = 0 the base's
order. Computed in float64 by `adapted_scores` (NumPy; the same function the offline learner calls).

The `adapted_kernel` kind (`kinds/adapted_kernel.py`) adds a kernel term to the head (`KernelTerm`):
head += sum_j alpha_j exp(gamma (cos(e, s_j) - 1)) over its support prompts s_j.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from lmroute.bundle.jsonread import fail
from lmroute.bundle.kinds.base import ArrayRole, FileRole, LoadContext, RouterArtifacts, RouterKind, TrainContext
from lmroute.bundle.routers import BlendedRouter, need_embeddings, row_dots

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lmroute.bundle.manifest import Manifest, RouterSpec
    from lmroute.bundle.routers import PromptBatch, Router

__all__ = ["KIND", "AdaptedKind", "AdaptedParams", "AdaptedRouter", "KernelTerm", "adapted_scores", "log_length"]

_LOGIT_CLIP = 1e-12


@dataclass(frozen=True)
class AdaptedParams:
    """base_router: the router blended with; blend_weight: w in [0, 1]; length_weight, bias: the head's
    coefficient of log(1 + characters) and its intercept; center, scale: the head's standardisation;
    base_center, base_scale: the standardisation of the base score's logit."""

    base_router: str
    blend_weight: float
    length_weight: float
    bias: float
    center: float
    scale: float
    base_center: float
    base_scale: float


def log_length(texts: Sequence[str]) -> npt.NDArray[np.float64]:
    """log(1 + number of characters) of each text: the head's length feature (read from the text, so it
    does not saturate at the encoder's token limit)."""
    return np.log1p(np.fromiter((len(t) for t in texts), dtype=np.float64, count=len(texts)))


def batch_log_length(batch: PromptBatch) -> npt.NDArray[np.float64]:
    """`log_length` of a batch's prompts (its character counts: a batch of stored features has no texts)."""
    return np.log1p(batch.char_counts().astype(np.float64))


@dataclass(frozen=True, eq=False)
class KernelTerm:
    """sum_j alpha_j exp(gamma (cos(e, s_j) - 1)): `support` float32 [m, dim] with L2-normalised rows (the
    support prompts' embeddings), `alpha` float32 [m], `gamma` > 0. Both arrays are read-only float32 (what
    a bundle stores), so the learner and the served router compute the same values."""

    support: npt.NDArray[np.float32]
    alpha: npt.NDArray[np.float32]
    gamma: float

    def __post_init__(self) -> None:
        support = np.array(self.support, dtype=np.float32)
        alpha = np.array(self.alpha, dtype=np.float32)
        if support.ndim != 2 or alpha.shape != (support.shape[0],) or support.shape[0] == 0:
            raise ValueError(f"KernelTerm: support [m, dim] and alpha [m] expected, got {support.shape}, {alpha.shape}")
        if not (np.isfinite(support).all() and np.isfinite(alpha).all()):
            raise ValueError("KernelTerm: support / alpha contain NaN or inf")
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"KernelTerm.gamma: must be finite and > 0, got {self.gamma}")
        for name, arr in (("support", support), ("alpha", alpha)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def dim(self) -> int:
        return int(self.support.shape[1])

    def values(self, embeddings: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The term for each row of embeddings [n, dim] (rows L2-normalised here; a zero row gives cos 0).
        In float32, as the arrays are stored, one row at a time: BLAS chooses its kernel by the number of
        rows, and a batched product would give a prompt another term (~1e-6) than it gets alone; reading
        the support (5,000 x 256 dims: 5 MB) is most of a row's cost either way."""
        emb = np.asarray(embeddings, dtype=np.float64)
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        unit = (emb / np.where(norm > 0, norm, 1.0)).astype(np.float32)
        out = np.empty(emb.shape[0])
        for i in range(emb.shape[0]):
            row = unit[i : i + 1] @ self.support.T
            row -= 1.0
            row *= self.gamma
            np.exp(row, out=row)
            out[i] = float((row @ self.alpha)[0])
        return out


def adapted_scores(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    base_scores: npt.ArrayLike,
    weights: npt.ArrayLike,
    params: AdaptedParams,
    kernel: KernelTerm | None = None,
) -> npt.NDArray[np.float64]:
    """The adapted score of a batch (module docstring): embeddings [n, dim], lengths = `log_length` [n],
    base_scores [n] in [0, 1], weights [dim], the head's kernel term if it has one; float64 [n] in [0, 1]."""
    emb = np.asarray(embeddings, dtype=np.float64)
    linear = row_dots(emb, np.asarray(weights, dtype=np.float64)[:, None])[:, 0]
    head = linear + params.length_weight * np.asarray(lengths, np.float64)
    if kernel is not None:
        head = head + kernel.values(emb)
    z_head = (head + params.bias - params.center) / params.scale
    p = np.clip(np.asarray(base_scores, dtype=np.float64), _LOGIT_CLIP, 1.0 - _LOGIT_CLIP)
    z_base = (np.log(p) - np.log1p(-p) - params.base_center) / params.base_scale
    w = params.blend_weight
    z = w * z_head + (1.0 - w) * z_base
    out: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow warnings
    return out


class AdaptedRouter:
    """The head blended with the base router's score (module docstring); needs the encoder's embeddings."""

    kind = "adapted"
    uses_encoder = True

    def __init__(
        self,
        name: str,
        *,
        base: Router,
        weights: npt.NDArray[np.floating],
        params: AdaptedParams,
        kernel: KernelTerm | None = None,
    ) -> None:
        self.name = name
        self.base = base
        self.weights = np.asarray(weights, dtype=np.float64)
        self.params = params
        self.kernel = kernel
        if kernel is not None:
            self.kind = "adapted_kernel"

    def score(self, batch: PromptBatch) -> npt.NDArray[np.float64]:
        emb = need_embeddings(self.name, self.kind, batch, self.weights.shape[0])
        base = self.base.score(batch)
        return adapted_scores(emb, batch_log_length(batch), base, self.weights, self.params, self.kernel)


class AdaptedKind(RouterKind):
    name = "adapted"
    uses_encoder = True
    reads_text = False  # its score reads only the embedding and the character count
    reads_tokens = False
    from_outcomes = True
    Params: ClassVar[type[Any]] = AdaptedParams
    roles: ClassVar[tuple[ArrayRole | FileRole, ...]] = (ArrayRole("weights", np.float32),)

    def check_params(self, params: AdaptedParams, where: str) -> None:
        if not 0.0 <= params.blend_weight <= 1.0:
            raise fail(f"{where}.blend_weight: must be in [0, 1], got {params.blend_weight}")
        for name in ("length_weight", "bias", "center", "scale", "base_center", "base_scale"):
            value = getattr(params, name)
            if not math.isfinite(value):
                raise fail(f"{where}.{name}: must be finite, got {value}")
        self.positive(params, where, "scale", "base_scale")

    def check_manifest(self, router: str, spec: RouterSpec, manifest: Manifest) -> None:
        base = spec.params.base_router
        where = f"routers.{router}.params.base_router"
        if base == router:
            raise fail(f"{where}: a router cannot blend with itself")
        if base not in manifest.routers:
            raise fail(f"{where}: {base!r} is not a router of this bundle (has: {', '.join(manifest.routers)})")
        from lmroute.bundle import kinds  # late: the registry imports this module

        if kinds.get(manifest.routers[base].kind).from_outcomes:
            raise fail(f"{where}: {base!r} is itself adapted (blend with a shipped router)")

    def load(self, ctx: LoadContext, router: str, spec: RouterSpec) -> AdaptedRouter:
        weights = ctx.npy(spec.files["weights"], np.float32, [("encoder.dim", ctx.manifest.encoder.dim)])
        return AdaptedRouter(router, base=self.load_base(ctx, spec), weights=weights, params=spec.params)

    def load_base(self, ctx: LoadContext, spec: RouterSpec) -> Router:
        """The router the head blends with, as the bundle serves it (with the difficulty prior if blended)."""
        manifest = ctx.manifest
        base_name = spec.params.base_router
        base_spec = manifest.routers[base_name]
        from lmroute.bundle import kinds  # late: the registry imports this module

        base = kinds.get(base_spec.kind).load(ctx, base_name, base_spec)
        prior = manifest.difficulty_prior
        if base_spec.blend is not None and prior is not None:  # the base as the bundle serves it
            prior_weights = ctx.npy(prior.files["weights"], np.float32, [("encoder.dim", manifest.encoder.dim)])
            base = BlendedRouter(base, prior=prior, prior_weights=prior_weights, blend=base_spec.blend)
        return base

    def train(self, ctx: TrainContext) -> RouterArtifacts:
        raise NotImplementedError(
            "the adapted kind learns from a deployment's outcomes (`lmroute.adapt`), not from the build's data"
        )


KIND = AdaptedKind()
