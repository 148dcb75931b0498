"""The `mf` router kind: matrix factorisation (RouteLLM's MF router) collapsed to the default pair.

Files: text_proj [d_model, dim], model_emb [n_models, d_model], classifier [d_model] (the trained
factors) and pair_vector [dim] = the factors collapsed for (strong, weak), all float32; the loader
recomputes pair_vector from the factors and refuses a mismatch. Score = sigmoid(pair_vector . e) in
float64, by the compiled core. Training: `lmroute.export.train_mf` on every comparison, the default
pair's rows weighted `mf_pair_weight` x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from lmroute.bundle.errors import BundleError
from lmroute.bundle.kinds.base import ArrayRole, LoadContext, RouterArtifacts, RouterKind, TrainContext
from lmroute.bundle.routers import compiled_core, need_embeddings
from lmroute.kernels import reference

if TYPE_CHECKING:
    from lmroute.bundle.manifest import RouterSpec
    from lmroute.bundle.routers import PromptBatch

__all__ = ["KIND", "MFKind", "MFParams", "MFRouter"]

_PAIR_VECTOR_TOL = 1e-4  # relative, between pair_vector and the one recomputed from the factors


@dataclass(frozen=True)
class MFParams:
    """d_model: the factor dimension."""

    d_model: int


class MFRouter:
    """score = sigmoid(u . e) with the collapsed pair vector u, in float64.
    (Per-model logits, for routing among more than two models: `lmroute.kernels.compiled.MFIndex`.)"""

    kind = "mf"
    uses_encoder = True

    def __init__(self, name: str, *, pair_vector: npt.NDArray[np.floating]) -> None:
        self._core = compiled_core()
        self.name = name
        self.pair_vector = np.asarray(pair_vector, dtype=np.float64)
        self._pairs = np.ascontiguousarray(self.pair_vector[None, :])  # [1, d], what the core takes

    def score(self, batch: PromptBatch) -> npt.NDArray[np.float64]:
        emb = need_embeddings(self.name, self.kind, batch, self.pair_vector.shape[0])
        scores: npt.NDArray[np.float64] = self._core.pair_probabilities(emb, self._pairs)[:, 0]
        return scores


class MFKind(RouterKind):
    name = "mf"
    uses_encoder = True
    reads_text = False  # its score reads only the embedding
    reads_tokens = False
    Params = MFParams
    roles = tuple(ArrayRole(role, np.float32) for role in ("text_proj", "model_emb", "classifier", "pair_vector"))

    def check_params(self, params: MFParams, where: str) -> None:
        self.positive(params, where, "d_model")

    def load(self, ctx: LoadContext, router: str, spec: RouterSpec) -> MFRouter:
        manifest, files = ctx.manifest, spec.files
        dim = ("encoder.dim", manifest.encoder.dim)
        d_model = ("params.d_model", spec.params.d_model)
        text_proj = ctx.npy(files["text_proj"], np.float32, [d_model, dim])
        n_models = ("number of models", len(manifest.models))
        model_emb = ctx.npy(files["model_emb"], np.float32, [n_models, d_model])
        classifier = ctx.npy(files["classifier"], np.float32, [d_model])
        pair_vector = ctx.npy(files["pair_vector"], np.float32, [dim])
        norms = np.linalg.norm(model_emb.astype(np.float64), axis=1)
        if (norms == 0).any():
            row = int(np.argmin(norms))
            raise BundleError(files["model_emb"], f"row {row} ({manifest.models[row]}) is all zeros")
        strong = manifest.models.index(manifest.default_pair.strong)
        weak = manifest.models.index(manifest.default_pair.weak)
        expected = reference.mf_pair_vector(text_proj, model_emb, classifier, strong, weak)
        diff = float(np.max(np.abs(expected - pair_vector.astype(np.float64))))
        scale = max(1.0, float(np.max(np.abs(expected))))
        if diff > _PAIR_VECTOR_TOL * scale:
            raise BundleError(
                files["pair_vector"],
                f"does not match text_proj/model_emb/classifier for the default pair (max |diff| {diff:.3g})",
            )
        return MFRouter(router, pair_vector=pair_vector)

    def train(self, ctx: TrainContext) -> RouterArtifacts:
        from lmroute.export.train_mf import train_mf_recipe

        cfg, train = ctx.recipe, ctx.comparisons
        row_weights = np.where(train.pair_mask(ctx.strong, ctx.weak), cfg.mf_pair_weight, 1.0)
        mf = train_mf_recipe(train, ctx.embeddings, cfg, row_weights=row_weights, epochs=2 if cfg.quick else None)
        models = list(ctx.models)
        rows = np.array([list(mf.models).index(m) for m in models])
        model_emb = mf.model_emb[rows]
        strong, weak = models.index(ctx.strong), models.index(ctx.weak)
        u = reference.mf_pair_vector(mf.text_proj, model_emb, mf.classifier, strong, weak)
        ctx.notes.update(train_seconds=round(mf.train_seconds, 1), final_loss=mf.history[-1])
        return RouterArtifacts(
            kind=self.name,
            params=MFParams(d_model=cfg.mf_dim),
            arrays={
                "text_proj": mf.text_proj,
                "model_emb": model_emb,
                "classifier": mf.classifier,
                "pair_vector": u.astype(np.float32),
            },
        )


KIND = MFKind()
