"""The in-domain head: a small frozen model over a prompt's features, and its blend with a shipped router.

A `Head` scores a batch from the encoder's embeddings and the prompts' `log_length` (log(1 + characters)):
raw = e . weights + length_weight * log_length + bias, plus its kernel term when it has one (the
`adapted_kernel` kind's `KernelTerm`); higher = the strong model is more needed. Its
`center` and `scale` (median and IQR / 1.349 of raw over the prompts it was trained on; for a kernel
head `adapt_paired` takes them from its out-of-fold predictions) put it on the footing of the base
router's logit, so `blended_scores` is exactly what the bundle's `adapted` router
serves (`lmroute.bundle.kinds.adapted.adapted_scores`). `blend_weight(n, n0) = n / (n + n0)`: the head's
share grows with the number of outcomes it learnt from (n0 chosen by cross-validation on the outcomes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from lmroute.bundle.kinds.adapted import AdaptedParams, KernelTerm, adapted_scores, log_length
from lmroute.bundle.kinds.adapted_kernel import AdaptedKernelParams

__all__ = ["BaseStandardisation", "Head", "blend_weight", "blended_scores", "log_length", "robust_center_scale"]

FloatArray = npt.NDArray[np.float64]
_MIN_SCALE = 1e-9
_LOGIT_CLIP = 1e-12


def robust_center_scale(values: npt.ArrayLike) -> tuple[float, float]:
    """(median, IQR / 1.349) of `values`; the scale falls back to the standard deviation, then to 1, when
    the IQR is 0 (so a near-constant input still standardises to finite values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("robust_center_scale: no values")
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    scale = float(q75 - q25) / 1.349
    if scale <= _MIN_SCALE:
        scale = float(v.std())
    if scale <= _MIN_SCALE:
        scale = 1.0
    return float(q50), scale


def base_logits(base_scores: npt.ArrayLike) -> FloatArray:
    """logit of the base router's scores, clipped as the adapted router clips them."""
    p = np.clip(np.asarray(base_scores, dtype=np.float64), _LOGIT_CLIP, 1.0 - _LOGIT_CLIP)
    out: FloatArray = np.log(p) - np.log1p(-p)
    return out


@dataclass(frozen=True)
class BaseStandardisation:
    """Median and IQR / 1.349 of the base router's logit over the head's training prompts."""

    center: float
    scale: float

    @classmethod
    def of(cls, base_scores: npt.ArrayLike) -> BaseStandardisation:
        center, scale = robust_center_scale(base_logits(base_scores))
        return cls(center=center, scale=scale)


@dataclass(frozen=True, eq=False)
class Head:
    """A fitted in-domain head (module docstring). `weights` float64 [dim] (read-only); `learner` names
    the learner and `settings` its numeric settings (recorded in the bundle's lineage); `kernel`: the
    kernel term, None for a linear head."""

    weights: FloatArray
    length_weight: float
    bias: float
    center: float
    scale: float
    learner: str
    settings: Mapping[str, float] = field(default_factory=dict)
    kernel: KernelTerm | None = None

    def __post_init__(self) -> None:
        w = np.array(self.weights, dtype=np.float64)
        if w.ndim != 1 or not np.isfinite(w).all():
            raise ValueError(f"Head.weights: expected a finite 1-D array, got shape {w.shape}")
        if self.kernel is not None and self.kernel.dim != w.shape[0]:
            raise ValueError(f"Head.kernel: support of dimension {self.kernel.dim}, weights of {w.shape[0]}")
        for name in ("length_weight", "bias", "center", "scale"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"Head.{name}: not finite")
        if self.scale <= 0:
            raise ValueError(f"Head.scale: must be positive, got {self.scale}")
        w.setflags(write=False)
        object.__setattr__(self, "weights", w)

    @property
    def dim(self) -> int:
        return int(self.weights.shape[0])

    def raw(self, embeddings: npt.ArrayLike, lengths: npt.ArrayLike) -> FloatArray:
        """e . weights + length_weight * lengths + bias (lengths = `log_length` of the texts), plus the
        kernel term."""
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"embeddings: shape {emb.shape}, expected (n, {self.dim})")
        out: FloatArray = emb @ self.weights + self.length_weight * np.asarray(lengths, np.float64) + self.bias
        if self.kernel is not None:
            out = out + self.kernel.values(emb)
        return out

    def score(self, embeddings: npt.ArrayLike, lengths: npt.ArrayLike) -> FloatArray:
        """The head alone in [0, 1]: sigmoid((raw - center) / scale)."""
        z = (self.raw(embeddings, lengths) - self.center) / self.scale
        out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * z))
        return out

    @property
    def router_kind(self) -> str:
        """The router kind that serves this head: `adapted`, or `adapted_kernel` with a kernel term."""
        return "adapted" if self.kernel is None else "adapted_kernel"

    def router_arrays(self) -> dict[str, npt.NDArray[np.floating]]:
        """The files of `router_kind` (role -> array)."""
        if self.kernel is None:
            return {"weights": self.weights}
        return {"weights": self.weights, "support": self.kernel.support, "alpha": self.kernel.alpha}

    def router_params(self, base_router: str, weight: float, base: BaseStandardisation) -> AdaptedParams:
        """The params of `router_kind` for this head blended with `base_router` at `weight`."""
        params = AdaptedParams(
            base_router=base_router,
            blend_weight=float(weight),
            length_weight=float(self.length_weight),
            bias=float(self.bias),
            center=float(self.center),
            scale=float(self.scale),
            base_center=float(base.center),
            base_scale=float(base.scale),
        )
        if self.kernel is None:
            return params
        return AdaptedKernelParams(**dataclasses.asdict(params), kernel_gamma=float(self.kernel.gamma))


def blend_weight(n_outcomes: int, n0: float) -> float:
    """The head's share of the blend after `n_outcomes` outcomes: n / (n + n0) (n0 >= 0; n0 = 0 is the
    head alone)."""
    if n_outcomes < 0 or n0 < 0:
        raise ValueError(f"blend_weight: n_outcomes ({n_outcomes}) and n0 ({n0}) must be >= 0")
    if n_outcomes == 0 and n0 == 0:
        return 1.0
    return float(n_outcomes) / (float(n_outcomes) + float(n0))


def blended_scores(
    head: Head,
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    base_scores: npt.ArrayLike,
    weight: float,
    base: BaseStandardisation,
) -> FloatArray:
    """The scores the bundle's `adapted` router serves for this head, base and weight."""
    params = head.router_params("base", weight, base)
    return adapted_scores(embeddings, lengths, base_scores, head.weights, params, head.kernel)
