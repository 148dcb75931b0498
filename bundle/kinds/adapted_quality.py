"""The `adapted_quality` router kind: per-model quality learnt from a deployment's own outcomes, on top of
a shipped `quality` router, and for models that router does not know (`lmroute.adapt.quality_heads`
trains it; docs/ADAPTATION.md "Routing among N models").

Files: `weights` float32 [dim, n_models], `length_weights` float32 [n_models], `bias` float32
[n_models]. Params: `base_router` (a router of kind `quality` in the bundle) and `models` (its columns,
in order: every model of the base router, then models only the outcomes know). Per prompt (embedding e,
text of c characters) and model j:

    head_j = e . weights[:, j] + length_weights[j] * log(1 + c) + bias[j]
    q_j    = clip(base_j + head_j, 0, 1)    when the base router predicts model j (head_j is a correction)
    q_j    = clip(head_j, 0, 1)             otherwise (a model the deployment added)

in float64. As a two-model router its score is (q_strong - q_weak + 1) / 2 for the bundle's default
pair, calibrated by the bundle's thresholds like any other; `Route` with candidates reads `qualities`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from lmroute.bundle.jsonread import fail
from lmroute.bundle.kinds.adapted import batch_log_length
from lmroute.bundle.kinds.base import ArrayRole, LoadContext, RouterArtifacts, RouterKind, TrainContext
from lmroute.bundle.kinds.quality import QualityRouter
from lmroute.bundle.routers import need_embeddings, row_dots

if TYPE_CHECKING:
    from lmroute.bundle.manifest import Manifest, RouterSpec
    from lmroute.bundle.routers import PromptBatch

__all__ = ["KIND", "AdaptedQualityKind", "AdaptedQualityParams", "AdaptedQualityRouter", "corrected_qualities"]

BASE_KIND = "quality"


@dataclass(frozen=True)
class AdaptedQualityParams:
    """base_router: the `quality` router corrected; models: the columns of the files, in order."""

    base_router: str
    models: tuple[str, ...]


def corrected_qualities(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    base_qualities: npt.ArrayLike,
    weights: npt.ArrayLike,
    length_weights: npt.ArrayLike,
    bias: npt.ArrayLike,
    from_base: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """q [n, m] of the module docstring: embeddings [n, dim], lengths = `log_length` [n], base_qualities
    [n, m] (read only in the columns where from_base [m] is true), weights [dim, m], length_weights and
    bias [m]. The same function serves the bundle and the learner that writes it."""
    emb = np.asarray(embeddings, dtype=np.float64)
    head = (
        row_dots(emb, weights)
        + np.asarray(lengths, dtype=np.float64)[:, None] * np.asarray(length_weights, dtype=np.float64)
        + np.asarray(bias, dtype=np.float64)
    )
    base = np.where(np.asarray(from_base, dtype=bool), np.asarray(base_qualities, dtype=np.float64), 0.0)
    out: npt.NDArray[np.float64] = np.clip(base + head, 0.0, 1.0)
    return out


class AdaptedQualityRouter:
    """The base router's qualities corrected, and new models' qualities, from outcomes (module docstring)."""

    kind = "adapted_quality"
    uses_encoder = True

    def __init__(
        self,
        name: str,
        *,
        base: QualityRouter,
        models: tuple[str, ...],
        weights: npt.NDArray[np.floating],
        length_weights: npt.NDArray[np.floating],
        bias: npt.NDArray[np.floating],
        strong: str,
        weak: str,
    ) -> None:
        self.name = name
        self.base = base
        self.models = models
        self.weights = np.asarray(weights, dtype=np.float64)
        self.length_weights = np.asarray(length_weights, dtype=np.float64)
        self.bias = np.asarray(bias, dtype=np.float64)
        self.from_base = np.array([m in base.models for m in models], dtype=bool)
        self._base_cols = np.array([base.models.index(m) if m in base.models else 0 for m in models], dtype=np.int64)
        self._strong, self._weak = models.index(strong), models.index(weak)

    def qualities_of(self, embeddings: npt.ArrayLike, lengths: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """float64 [n, n_models] from embeddings [n, dim] and `log_length`s [n] (what adaptation reads
        from the store, where a prompt may be kept without its text)."""
        base = self.base.qualities_of(embeddings)[:, self._base_cols]
        return corrected_qualities(
            embeddings, lengths, base, self.weights, self.length_weights, self.bias, self.from_base
        )

    def qualities(self, batch: PromptBatch) -> npt.NDArray[np.float64]:
        """float64 [n, n_models] in [0, 1], columns in `models` order."""
        emb = need_embeddings(self.name, self.kind, batch, self.weights.shape[0])
        return self.qualities_of(emb, batch_log_length(batch))

    def score(self, batch: PromptBatch) -> npt.NDArray[np.float64]:
        q = self.qualities(batch)
        return np.clip((q[:, self._strong] - q[:, self._weak] + 1.0) / 2.0, 0.0, 1.0)


class AdaptedQualityKind(RouterKind):
    name = "adapted_quality"
    uses_encoder = True
    predicts_qualities = True
    reads_text = False  # its score reads only the embedding and the character count
    reads_tokens = False
    from_outcomes = True
    Params = AdaptedQualityParams
    roles = tuple(ArrayRole(role, np.float32) for role in ("weights", "length_weights", "bias"))

    def check_params(self, params: AdaptedQualityParams, where: str) -> None:
        if len(params.models) < 2 or len(set(params.models)) != len(params.models):
            raise fail(f"{where}.models: at least two models, each once (got {list(params.models)})")
        for j, model in enumerate(params.models):
            if not model.strip():
                raise fail(f"{where}.models[{j}]: empty model name")

    def check_manifest(self, router: str, spec: RouterSpec, manifest: Manifest) -> None:
        base = spec.params.base_router
        where = f"routers.{router}.params"
        if base not in manifest.routers:
            known = ", ".join(manifest.routers)
            raise fail(f"{where}.base_router: {base!r} is not a router of this bundle (has: {known})")
        base_spec = manifest.routers[base]
        if base_spec.kind != BASE_KIND:
            raise fail(f"{where}.base_router: {base!r} is of kind {base_spec.kind}, not {BASE_KIND}")
        own = set(spec.params.models)
        for model in base_spec.params.models:
            if model not in own:
                raise fail(f"{where}.models: the base router's model {model} is missing")

    def load(self, ctx: LoadContext, router: str, spec: RouterSpec) -> AdaptedQualityRouter:
        manifest, params = ctx.manifest, spec.params
        base_name = params.base_router
        from lmroute.bundle import kinds

        base = kinds.get(BASE_KIND).load(ctx, base_name, manifest.routers[base_name])
        assert isinstance(base, QualityRouter)  # check_manifest made sure of the kind
        dim = ("encoder.dim", manifest.encoder.dim)
        m = ("number of params.models", len(params.models))
        return AdaptedQualityRouter(
            router,
            base=base,
            models=params.models,
            weights=ctx.npy(spec.files["weights"], np.float32, [dim, m]),
            length_weights=ctx.npy(spec.files["length_weights"], np.float32, [m]),
            bias=ctx.npy(spec.files["bias"], np.float32, [m]),
            strong=manifest.default_pair.strong,
            weak=manifest.default_pair.weak,
        )

    def train(self, ctx: TrainContext) -> RouterArtifacts:
        raise NotImplementedError(
            "the adapted_quality kind learns from a deployment's outcomes (`lmroute.adapt`), not from the build's data"
        )


KIND = AdaptedQualityKind()
