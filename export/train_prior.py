"""The difficulty prior: how hard a question is for today's open models, from its embedding.

Why: the preference data here is ~1 % of the paper's, and none of its label sources looks like an
exam benchmark; every router trained on it alone lands near random on some validation source. The
LLMRouter correctness table (9 open 7-70B models, 14 tasks, `load_difficulty_labels`) says something
the pair data cannot: which questions many models get wrong. Harder question -> a stronger model is
more likely to matter. The validation harness (`lmroute.export.validate`, held-out *training* prompts)
measured this prior alone as weakly positive on every validation source, and blended into mf and
sw_ranking as better than either part on the weakest source (README "Router recipe").

The prior is ridge regression from the L2-normalised prompt embedding to the mean score:
``accuracy(e) = e . weights + bias``; ``difficulty(e) = -accuracy(e)``.

The blend: a router's score p is mapped to ``z_r = (logit(p) - center) / scale`` and the difficulty to
``z_d = (difficulty(e) - prior.center) / prior.scale`` (centers = medians, scales = IQR / 1.349 over
the training prompts: robust to the heavy tails of sw_ranking's logits), and the routing score is
``sigmoid(z_r + weight * z_d)``: monotone in each part, so calibration thresholds work unchanged.
`lmroute.kernels.reference.blend_scores` is the spec; the service runs its compiled twin
(`lmroute.kernels.compiled.blend_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from lmroute.bundle.manifest import Blend
from lmroute.kernels.reference import score_logit

__all__ = ["DifficultyPrior", "fit_difficulty_prior", "blend_params", "robust_center_scale"]

IQR_TO_STD = 1.349  # IQR of a standard normal


@dataclass(frozen=True)
class DifficultyPrior:
    """Ridge weights [d] and bias of accuracy(e); center / scale of difficulty(e) = -accuracy(e) on the
    prompts it is applied to (set by `with_standardisation`)."""

    weights: NDArray[np.float64]
    bias: float
    ridge: float
    n_questions: int
    train_r2: float
    center: float = 0.0
    scale: float = 1.0

    def difficulty(self, emb: NDArray[np.floating]) -> NDArray[np.float64]:
        """-(e . weights + bias) for each row of emb [n, d]."""
        return -(np.asarray(emb, dtype=np.float64) @ self.weights + self.bias)

    def with_standardisation(self, emb: NDArray[np.floating]) -> DifficultyPrior:
        """This prior with center / scale measured on the difficulties of `emb`."""
        center, scale = robust_center_scale(self.difficulty(emb))
        return replace(self, center=center, scale=scale)


def robust_center_scale(values: NDArray[np.floating]) -> tuple[float, float]:
    """(median, IQR / 1.349) of `values`; the scale falls back to the std, then 1, when the IQR is 0."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"robust_center_scale: need finite values, got {v.size} values")
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    scale = (q75 - q25) / IQR_TO_STD
    if not scale > 0:
        scale = float(v.std()) or 1.0
    return float(q50), float(scale)


def fit_difficulty_prior(
    emb: NDArray[np.floating], mean_score: NDArray[np.floating], *, ridge: float = 10.0
) -> DifficultyPrior:
    """Ridge regression (unpenalised bias) of `mean_score` [n] in [0, 1] on `emb` [n, d]."""
    x = np.asarray(emb, dtype=np.float64)
    y = np.asarray(mean_score, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] < 2:
        raise ValueError(f"fit_difficulty_prior: emb {x.shape} and mean_score {y.shape} do not match (need n >= 2)")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("fit_difficulty_prior: non-finite input")
    if ridge <= 0:
        raise ValueError(f"fit_difficulty_prior: ridge must be positive, got {ridge}")
    x_mean, y_mean = x.mean(axis=0), y.mean()
    xc = x - x_mean
    weights = np.linalg.solve(xc.T @ xc + ridge * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    bias = float(y_mean - x_mean @ weights)
    resid = y - (x @ weights + bias)
    r2 = 1.0 - float(resid @ resid) / max(float(((y - y_mean) ** 2).sum()), 1e-300)
    return DifficultyPrior(weights=weights, bias=bias, ridge=ridge, n_questions=x.shape[0], train_r2=r2)


def blend_params(router_scores: NDArray[np.floating], weight: float) -> Blend:
    """The bundle's blend for a router: `weight` and the center / scale of logit(router_scores) (the
    router's scores on its training prompts)."""
    if weight < 0 or not np.isfinite(weight):
        raise ValueError(f"blend_params: prior weight must be finite and >= 0, got {weight}")
    center, scale = robust_center_scale(score_logit(router_scores))
    return Blend(prior_weight=float(weight), center=center, scale=scale)
