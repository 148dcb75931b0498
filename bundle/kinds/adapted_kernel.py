"""The `adapted_kernel` router kind: the `adapted` head with a kernel term, learnt from a deployment's
paired outcomes (`lmroute.adapt.kernel_ridge` fits it; docs/ADAPTATION.md).

Files: `weights` float32 [dim] (the head's linear part, as in `adapted`), `support` float32 [m, dim]
(L2-normalised embeddings of the support prompts) and `alpha` float32 [m]. Params: those of `adapted` and
`kernel_gamma` > 0. Per prompt (embedding e, text of c characters):

    head = e . weights + length_weight * log(1 + c) + bias + sum_j alpha_j exp(kernel_gamma (cos(e, s_j) - 1))

then blended with the base router exactly as `adapted` does (`adapted_scores`; the kernel term in
float32, as stored: `KernelTerm`). It costs one [batch, m] product per call: m <= the learner's cap
(5,000 by default, ~7.7 MB at 384 dims; benchmarks/adaptation/RESULTS_kernel_cost.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lmroute.bundle.jsonread import fail
from lmroute.bundle.kinds.adapted import AdaptedKind, AdaptedParams, AdaptedRouter, KernelTerm
from lmroute.bundle.kinds.base import ArrayRole, LoadContext

if TYPE_CHECKING:
    from lmroute.bundle.manifest import RouterSpec

__all__ = ["KIND", "AdaptedKernelKind", "AdaptedKernelParams"]


@dataclass(frozen=True)
class AdaptedKernelParams(AdaptedParams):
    """`AdaptedParams` and kernel_gamma: the kernel's exp(gamma (cos - 1)) width."""

    kernel_gamma: float


class AdaptedKernelKind(AdaptedKind):
    name = "adapted_kernel"
    Params = AdaptedKernelParams
    roles = (ArrayRole("weights", np.float32), ArrayRole("support", np.float32), ArrayRole("alpha", np.float32))

    def check_params(self, params: AdaptedParams, where: str) -> None:
        super().check_params(params, where)
        gamma = getattr(params, "kernel_gamma", None)
        if not isinstance(gamma, float) or not math.isfinite(gamma) or gamma <= 0:
            raise fail(f"{where}.kernel_gamma: must be finite and > 0, got {gamma}")

    def load(self, ctx: LoadContext, router: str, spec: RouterSpec) -> AdaptedRouter:
        dim = ctx.manifest.encoder.dim
        weights = ctx.npy(spec.files["weights"], np.float32, [("encoder.dim", dim)])
        support = ctx.npy(spec.files["support"], np.float32, [("support prompts", None), ("encoder.dim", dim)])
        alpha = ctx.npy(spec.files["alpha"], np.float32, [("support prompts", support.shape[0])])
        kernel = KernelTerm(support=support, alpha=alpha, gamma=spec.params.kernel_gamma)
        return AdaptedRouter(router, base=self.load_base(ctx, spec), weights=weights, params=spec.params, kernel=kernel)


KIND = AdaptedKernelKind()
