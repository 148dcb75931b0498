"""The `quality` router kind: each model's predicted quality on a prompt, for routing among N models.

Files: center [dim], weights [dim, n_models] and bias [n_models], float32. For the prompt's embedding e,
model j's predicted quality is

    q_j = sigmoid((e - center) . weights[:, j] + bias[j])       (link "logistic")
    q_j = clip((e - center) . weights[:, j] + bias[j], 0, 1)    (link "identity")

in float64, for the models of `params.models` (each a model of the bundle; the default pair among
them). As a two-model router its score is (q_strong - q_weak + 1) / 2, a ranking score calibrated by
the bundle's thresholds like any other. `Route` with candidates reads `qualities` (lmroute.bundle.
model_choice chooses among them).

Training: per-model L2-penalised logistic regression on golden correctness labels of several models
(RouterBench: 11 models) for the training prompts of the build; the penalty is chosen among
`ALPHAS` on a held-out fifth of those prompts (log loss), then refitted on all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from lmroute.bundle.jsonread import fail
from lmroute.bundle.kinds.base import ArrayRole, LoadContext, RouterArtifacts, RouterKind, TrainContext
from lmroute.bundle.routers import need_embeddings, row_dots

if TYPE_CHECKING:
    from lmroute.bundle.manifest import Manifest, RouterSpec
    from lmroute.bundle.routers import PromptBatch

__all__ = ["ALPHAS", "KIND", "QualityKind", "QualityParams", "QualityRouter"]

ALPHAS = (1.0, 4.0, 16.0, 64.0)  # the penalties training chooses among
_LINKS = ("logistic", "identity")


@dataclass(frozen=True)
class QualityParams:
    """models: the columns, in order; link: logistic or identity; alpha: the L2 penalty it was fit with;
    labels: what it was trained on."""

    models: tuple[str, ...]
    link: str
    alpha: float
    labels: str


class QualityRouter:
    """Per-model predicted qualities (module docstring), and the pair score derived from them."""

    kind = "quality"
    uses_encoder = True

    def __init__(
        self,
        name: str,
        *,
        models: tuple[str, ...],
        link: str,
        center: npt.NDArray[np.floating],
        weights: npt.NDArray[np.floating],
        bias: npt.NDArray[np.floating],
        strong: str,
        weak: str,
    ) -> None:
        self.name = name
        self.models = models
        self.link = link
        self.center = np.asarray(center, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.bias = np.asarray(bias, dtype=np.float64)
        self._strong, self._weak = models.index(strong), models.index(weak)

    def qualities(self, batch: PromptBatch) -> npt.NDArray[np.float64]:
        """float64 [n, n_models] in [0, 1], columns in `models` order."""
        return self.qualities_of(need_embeddings(self.name, self.kind, batch, self.center.shape[0]))

    def qualities_of(self, embeddings: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """`qualities` from the embeddings [n, dim] alone (what adaptation has for a stored prompt)."""
        z = row_dots(np.asarray(embeddings, dtype=np.float64) - self.center, self.weights) + self.bias
        if self.link == "logistic":
            out: npt.NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))
            return out
        return np.clip(z, 0.0, 1.0)

    def score(self, batch: PromptBatch) -> npt.NDArray[np.float64]:
        q = self.qualities(batch)
        return np.clip((q[:, self._strong] - q[:, self._weak] + 1.0) / 2.0, 0.0, 1.0)


class QualityKind(RouterKind):
    name = "quality"
    uses_encoder = True
    predicts_qualities = True
    reads_text = False  # its score reads only the embedding
    reads_tokens = False
    Params = QualityParams
    roles = tuple(ArrayRole(role, np.float32) for role in ("center", "weights", "bias"))

    def check_params(self, params: QualityParams, where: str) -> None:
        if len(params.models) < 2 or len(set(params.models)) != len(params.models):
            raise fail(f"{where}.models: at least two models, each once (got {list(params.models)})")
        if params.link not in _LINKS:
            raise fail(f"{where}.link: must be one of {', '.join(_LINKS)} (got {params.link!r})")
        if not (math.isfinite(params.alpha) and params.alpha >= 0):
            raise fail(f"{where}.alpha: must be >= 0 (got {params.alpha})")

    def check_manifest(self, router: str, spec: RouterSpec, manifest: Manifest) -> None:
        where = f"routers.{router}.params.models"
        known = set(manifest.models)
        for j, model in enumerate(spec.params.models):
            if model not in known:
                raise fail(f"{where}[{j}]: {model} is not a model of the bundle")
        for model in (manifest.default_pair.strong, manifest.default_pair.weak):
            if model not in spec.params.models:
                raise fail(f"{where}: the default pair's {model} is missing")

    def load(self, ctx: LoadContext, router: str, spec: RouterSpec) -> QualityRouter:
        files, params = spec.files, spec.params
        dim = ("encoder.dim", ctx.manifest.encoder.dim)
        m = ("number of params.models", len(params.models))
        return QualityRouter(
            router,
            models=params.models,
            link=params.link,
            center=ctx.npy(files["center"], np.float32, [dim]),
            weights=ctx.npy(files["weights"], np.float32, [dim, m]),
            bias=ctx.npy(files["bias"], np.float32, [m]),
            strong=ctx.manifest.default_pair.strong,
            weak=ctx.manifest.default_pair.weak,
        )

    def train(self, ctx: TrainContext) -> RouterArtifacts:
        from lmroute.export.train_quality import train_quality

        fit = train_quality(ctx)
        return RouterArtifacts(
            kind=self.name,
            params=QualityParams(models=fit.models, link="logistic", alpha=fit.alpha, labels=fit.labels),
            arrays={"center": fit.center, "weights": fit.weights, "bias": fit.bias},
        )


KIND = QualityKind()
