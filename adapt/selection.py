"""Which decisions to judge (the label budget, for paired outcomes) and which to explore (single outcomes):
pure functions of scores and embeddings.

**Label budget** (`label_budget`): from a window of recent decisions, pick k to judge. A share
`random_share` is drawn uniformly (coverage of the traffic as it is); the rest greedily, one small batch
at a time, by the largest posterior variance of the ridge head, x' A^-1 x with A = penalty I + the sum of
x x' over the prompts already judged (x = [embedding | log_length | 1]); each pick updates A^-1 (rank-one
Sherman-Morrison). Variance, not closeness to the threshold, because APGR weighs every operating point:
closeness to one threshold (tried first) did worse than random. Variance alone picks outliers. Measured
as the stream passes in windows of 500 (a validation split of the MMLU stream half: 1,000 labels from
5,000 prompts, APGR on the other 2,021, 5 seeds, paired ridge): random 0.625, random share 0.3 0.606,
0.6 0.607, 0.9 0.633; 0.3 with windows of 2,000 0.602; k-means coverage of each window (the prompt
nearest each centroid) 0.606. At 2,000 labels, share 0.3 0.613 against random 0.646. Hence the default
share 0.9: a few variance picks on top of a random sample. The choice depends on the prompts only, never
on outcomes, so the head's regression stays unbiased.

**Exploration** (`exploration_probability`, `explore`): single outcomes only show the model that answered,
so some decisions are flipped on purpose. The flip probability is `floor` everywhere plus `band_rate`
for prompts whose score lies within `band` (in strong-share units, by the reference scores' ranks) of the
threshold, where the two models are closest in expected value and a flip costs least; the mean rate is
checked against `max_rate`. Every decision carries the probability of the model it chose (its
propensity), which the doubly robust learner and the gate's off-policy estimate need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lmroute.adapt.ridge import design

__all__ = [
    "ExplorationRule",
    "Explored",
    "design_inverse",
    "explore",
    "exploration_probability",
    "judged_inverse",
    "label_budget",
]

FloatArray = npt.NDArray[np.float64]


def _rows(embeddings: npt.ArrayLike, lengths: npt.ArrayLike) -> FloatArray:
    x = design(embeddings, lengths)
    return np.hstack([x, np.ones((x.shape[0], 1))])


def design_inverse(dim: int, penalty: float) -> FloatArray:
    """A^-1 before any judged prompt: I / penalty over [embedding (dim) | log_length | 1]."""
    if dim < 1 or penalty <= 0:
        raise ValueError(f"design_inverse: dim ({dim}) and penalty ({penalty}) must be positive")
    return np.eye(dim + 2) / penalty


def judged_inverse(embeddings: npt.ArrayLike, lengths: npt.ArrayLike, penalty: float) -> FloatArray:
    """A^-1 after the prompts judged so far: (penalty I + sum of x x')^-1 over their [embedding | log_length | 1]."""
    rows = _rows(embeddings, lengths)
    base = design_inverse(rows.shape[1] - 2, penalty)
    if rows.shape[0] == 0:
        return base
    return np.asarray(np.linalg.inv(penalty * np.eye(rows.shape[1]) + rows.T @ rows), dtype=np.float64)


def _absorb(inverse: FloatArray, x: FloatArray) -> None:
    ax = inverse @ x
    inverse -= np.outer(ax, ax) / (1.0 + x @ ax)


def label_budget(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    k: int,
    inverse: FloatArray,
    *,
    random_share: float = 0.9,
    batch: int = 25,
    seed: int = 0,
) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Indices (into the window) of the k decisions to judge, and A^-1 after them (module docstring).
    `inverse` is A^-1 so far (`design_inverse` at the start); it is not modified."""
    rows = _rows(embeddings, lengths)
    n = rows.shape[0]
    if inverse.shape != (rows.shape[1], rows.shape[1]):
        raise ValueError(f"inverse: shape {inverse.shape}, expected {(rows.shape[1],) * 2}")
    if not 0 <= k <= n:
        raise ValueError(f"k: must be in [0, {n}], got {k}")
    if not 0.0 <= random_share <= 1.0:
        raise ValueError(f"random_share: must be in [0, 1], got {random_share}")
    inv = inverse.copy()
    free = np.ones(n, dtype=bool)
    n_random = int(round(random_share * k))
    chosen = [int(i) for i in np.random.default_rng(seed).choice(n, n_random, replace=False)]
    for i in chosen:
        free[i] = False
        _absorb(inv, rows[i])
    while len(chosen) < k:
        b = min(batch, k - len(chosen))
        variance = np.einsum("ij,jk,ik->i", rows, inv, rows)
        variance[~free] = -np.inf
        picks = np.argpartition(-variance, b - 1)[:b]
        for i in picks:
            free[i] = False
            chosen.append(int(i))
            _absorb(inv, rows[i])
    return np.asarray(chosen, dtype=np.int64), inv


@dataclass(frozen=True)
class ExplorationRule:
    """floor: flip probability everywhere; band_rate: added within `band` (strong-share units) of the
    threshold; max_rate: the largest mean flip rate allowed (checked on the reference scores)."""

    floor: float = 0.02
    band: float = 0.08
    band_rate: float = 0.45
    max_rate: float = 0.10

    def __post_init__(self) -> None:
        for name in ("floor", "band", "band_rate", "max_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ExplorationRule.{name}: must be in [0, 1], got {value}")
        if self.floor + self.band_rate > 0.5:
            raise ValueError("ExplorationRule: floor + band_rate must be <= 0.5 (a flip stays the exception)")


def exploration_probability(
    scores: npt.ArrayLike, reference_scores: npt.ArrayLike, strong_share: float, rule: ExplorationRule
) -> FloatArray:
    """The flip probability of each decision: rule.floor, plus rule.band_rate where the score's rank among
    `reference_scores` is within rule.band of the threshold's (1 - strong_share)."""
    ref = np.sort(np.asarray(reference_scores, dtype=np.float64))
    if ref.size == 0:
        raise ValueError("reference_scores: empty")
    s = np.asarray(scores, dtype=np.float64)
    rank = np.searchsorted(ref, s, side="right") / ref.size
    near = np.abs(rank - (1.0 - strong_share)) <= rule.band
    out: FloatArray = np.where(near, rule.floor + rule.band_rate, rule.floor).astype(np.float64)
    return out


@dataclass(frozen=True, eq=False)
class Explored:
    """One batch of decisions: chose_strong [n] bool, propensity [n] (probability of the model chosen),
    explored [n] bool (flipped on purpose), and the batch's mean flip probability."""

    chose_strong: npt.NDArray[np.bool_]
    propensity: FloatArray
    explored: npt.NDArray[np.bool_]
    mean_rate: float


def explore(
    scores: npt.ArrayLike,
    threshold: float,
    reference_scores: npt.ArrayLike,
    strong_share: float,
    rule: ExplorationRule,
    rng: np.random.Generator,
) -> Explored:
    """Route strong when score >= threshold, flipped with `exploration_probability`; raises when the
    rule's mean rate over the reference scores exceeds rule.max_rate."""
    ref_rate = float(exploration_probability(reference_scores, reference_scores, strong_share, rule).mean())
    if ref_rate > rule.max_rate + 1e-12:
        raise ValueError(f"exploration rate {ref_rate:.4f} on the reference scores exceeds max_rate {rule.max_rate}")
    s = np.asarray(scores, dtype=np.float64)
    flip_p = exploration_probability(s, reference_scores, strong_share, rule)
    flipped = rng.random(s.size) < flip_p
    chose = (s >= threshold) ^ flipped
    propensity = np.where(flipped, flip_p, 1.0 - flip_p)
    return Explored(chose_strong=chose, propensity=propensity, explored=flipped, mean_rate=float(flip_p.mean()))
