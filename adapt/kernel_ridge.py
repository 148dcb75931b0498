"""Kernel ridge regression of the paired quality gap (pure NumPy): the default paired learner.

    target ~ bias + length_weight * log_length + sum_j alpha_j k(e, s_j),   k(a, b) = exp(gamma (cos(a, b) - 1))

minimising the squared error plus penalty * alpha' K alpha; the intercept and the length slope are not
penalised (a partially linear model: the length's effect stays linear, as in the ridge head, and the
kernel carries what the embedding says). The fit is exact, every outcome a support prompt, up to
`max_support` outcomes; above it, it is fitted on `max_support` outcomes drawn at random (seeded), so an
adaptation's cost (about 60 such fits with the gate's folds) and the served term stay bounded (a
subset-of-regressors fit over every outcome would cost support^2 x outcomes per fit).

Why a kernel, and these settings (`benchmarks/adaptation/learner_validation.py`, validation splits of the
stream halves that keep near-duplicate prompts on one side, never the test half;
RESULTS_learner_validation.md): on MMLU with 1,000 judged prompts (APGR on ~2,021 held-back stream
prompts, 12 seeds) the ridge head measured 0.603 and kernel ridge 0.590-0.618 over gamma 2-4 and penalty
1-10; with 5,000, 0.620 against 0.617-0.638; on GSM8K (all 457 of a pool, ~200 held back, 20 seeds)
0.609 against 0.601-0.622. gamma 4, penalty 3 gained on all three (+0.010, +0.014, +0.009); gamma 3 /
penalty 10 did too, within one standard error of it. MMLU's subjects are clusters of the embedding with
their own difficulty, which a linear head of the embedding can only partly separate. On the adaptation
protocol's test half it matched the ridge head rather than beat it (docs/ADAPTATION.md, "The head and
the blend"). The kernel term costs the server one [batch, m] product per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lmroute.bundle.kinds.adapted import KernelTerm

__all__ = ["DEFAULT_KERNEL", "KernelFit", "KernelSettings", "fit_kernel_ridge", "unit_rows"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class KernelSettings:
    """gamma: the kernel's width exp(gamma (cos - 1)); penalty: on alpha' K alpha; max_support: the most
    outcomes fitted (beyond it, a random subset of this size), each a support prompt."""

    gamma: float = 4.0
    penalty: float = 3.0
    max_support: int = 5000

    def __post_init__(self) -> None:
        if not (np.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"KernelSettings.gamma: must be finite and > 0, got {self.gamma}")
        if not (np.isfinite(self.penalty) and self.penalty > 0):
            raise ValueError(f"KernelSettings.penalty: must be finite and > 0, got {self.penalty}")
        if self.max_support < 2:
            raise ValueError(f"KernelSettings.max_support: must be >= 2, got {self.max_support}")


DEFAULT_KERNEL = KernelSettings()


@dataclass(frozen=True, eq=False)
class KernelFit:
    """The fitted model: the kernel term, the length slope and the intercept."""

    kernel: KernelTerm
    length_weight: float
    bias: float

    def predict(self, embeddings: npt.ArrayLike, lengths: npt.ArrayLike) -> FloatArray:
        out: FloatArray = self.kernel.values(embeddings) + self.length_weight * np.asarray(lengths, np.float64)
        return out + self.bias


def unit_rows(embeddings: npt.ArrayLike) -> FloatArray:
    """The rows L2-normalised (a zero row stays zero)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    out: FloatArray = emb / np.where(norm > 0, norm, 1.0)
    return out


def _kernel(a: FloatArray, b: FloatArray, gamma: float) -> FloatArray:
    out: FloatArray = a @ b.T
    out -= 1.0  # in place: this matrix is the fit's largest (n x n)
    out *= gamma
    np.exp(out, out=out)
    return out


def fit_kernel_ridge(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    target: npt.ArrayLike,
    settings: KernelSettings = DEFAULT_KERNEL,
    *,
    seed: int = 0,
) -> KernelFit:
    """The model of the module docstring fitted to `target` [n] from embeddings [n, dim] and lengths [n]
    (`log_length`); n >= 2. The support is stored as float32 (what a bundle holds); alpha is solved
    against those rounded rows and then rounded to float32 itself."""
    unit = unit_rows(embeddings)
    length = np.asarray(lengths, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    n = unit.shape[0]
    if n < 2 or length.shape != (n,) or y.shape != (n,):
        raise ValueError(f"fit_kernel_ridge: needs n >= 2 rows and lengths / target of shape ({n},)")
    if n > settings.max_support:
        keep = np.sort(np.random.default_rng(seed).choice(n, settings.max_support, replace=False))
        unit, length, y = unit[keep], length[keep], y[keep]
        n = settings.max_support
    support = unit.astype(np.float32)
    s64 = support.astype(np.float64)
    # Lengths that are all the same carry no slope: the intercept alone (else Z'MZ is singular).
    sloped = bool(np.ptp(length) > 1e-9 * max(1.0, float(np.abs(length).max())))
    z = np.column_stack([np.ones(n), length]) if sloped else np.ones((n, 1))
    k = _kernel(s64, s64, settings.gamma)
    k[np.diag_indices(n)] += settings.penalty
    solved = np.linalg.solve(k, np.column_stack([y, z]))  # (K + penalty I)^-1 [y | Z]
    my, mz = solved[:, 0], solved[:, 1:]
    beta = np.linalg.solve(z.T @ mz, z.T @ my)
    alpha = my - mz @ beta
    term = KernelTerm(support=support, alpha=alpha.astype(np.float32), gamma=settings.gamma)
    return KernelFit(kernel=term, length_weight=float(beta[1]) if sloped else 0.0, bias=float(beta[0]))
