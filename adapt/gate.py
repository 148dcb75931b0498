"""The gate: a candidate router replaces the champion only if, on held-out outcomes (never trained on by
the candidate that scores them), it is not worse by more than a stated margin and it carries signal.

Metric: APGR at full resolution on the held-out prompts, `gain_area(scores, gain) / mean(gain)`
(`lmroute.adapt.ranking`): how much of the strong-weak quality gap the router's order recovers, averaged
over every strong share. Paired outcomes give the gain per prompt directly (strong - weak quality);
single outcomes give the doubly robust pseudo-gain (`lmroute.adapt.learners.held_out_dr_gain`, its
outcome models fitted on the training outcomes only), an off-policy estimate of the same area whose
inverse propensities are clipped at 20: unbiased where no propensity is below 1 / 20 or the outcome
models are right, else leaning towards the outcome models' gap (its docstring says why the clip stays).

Test: one-sided paired bootstrap over prompts. Each replicate resamples the held-out prompts with
replacement and takes the difference candidate - champion of gain_area, divided by the full held-out
set's mean gain (a fixed denominator, so the replicates differ only in the order's quality). The
candidate is accepted when the `alpha` quantile of the replicates (the one-sided lower confidence
bound) is >= -margin; default margin 0.01 APGR, alpha 0.05, 2,000 replicates, seeded. A candidate that
is worse, or too uncertain on too few held-out outcomes, is refused and the champion keeps serving.
Second condition: the candidate's order must carry signal, by a permutation test (the held-out gains
permuted `replicates` times against the candidate's scores; p = the share of permutations whose APGR
reaches the candidate's, must be < alpha). Without it a candidate learnt from noise passes beside a
near-random champion (not worse by more than the margin), which is how a shipped router does on
traffic unlike its training data. Every decision carries all its numbers.

Held-out outcomes (`gate_splits`): by default 10 random folds (`cross_fit`), each scored by a candidate
fitted on the other nine, so the candidates judged are nearly the size of the refit the gate vouches
for; or 5 forward-chaining time blocks (`forward_chaining`), each scored by a candidate fitted on the
older blocks only: every held-out outcome is newer than what its candidate saw, at the price of judging
candidates fitted on 20-80 % of the outcomes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lmroute.adapt.ranking import gain_area

__all__ = [
    "SPLITS",
    "GateDecision",
    "check_settings",
    "cross_fit",
    "forward_chaining",
    "gate",
    "gate_splits",
    "time_split",
]

DEFAULT_MARGIN = 0.01
DEFAULT_ALPHA = 0.05
DEFAULT_REPLICATES = 2000
MIN_HELD_OUT = 20


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and every number behind it (APGR units; `to_dict` for the record)."""

    accepted: bool
    reason: str
    metric: str
    test: str
    n_held_out: int
    champion_apgr: float
    candidate_apgr: float
    difference: float
    lower_bound: float
    p_value: float
    signal_p_value: float  # permutation test of the candidate's order against unrelated gains (must be < alpha)
    margin: float
    alpha: float
    replicates: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_split(timestamps: npt.ArrayLike, held_out_share: float = 0.2) -> tuple[npt.NDArray[np.int64], ...]:
    """(training indices, held-out indices): the newest `held_out_share` of the outcomes by timestamp
    (ties broken by position) are held out."""
    t = np.asarray(timestamps, dtype=np.float64)
    if not 0.0 < held_out_share < 1.0:
        raise ValueError(f"held_out_share: must be in (0, 1), got {held_out_share}")
    order = np.argsort(t, kind="stable")
    n_held = int(round(held_out_share * t.size))
    return np.sort(order[: t.size - n_held]), np.sort(order[t.size - n_held :])


def forward_chaining(
    timestamps: npt.ArrayLike, blocks: int = 5
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Time splits for the gate: the outcomes in time order cut into `blocks` equal blocks; for k = 1 ..
    blocks - 1, (indices of blocks 0 .. k - 1, indices of block k). Every held-out outcome is newer than
    everything its candidate was fitted on, and 1 - 1 / blocks of the outcomes are held out once."""
    t = np.asarray(timestamps, dtype=np.float64)
    if blocks < 2 or t.size < blocks:
        raise ValueError(f"forward_chaining: needs blocks >= 2 and at least {blocks} outcomes, got {t.size}")
    chunks = np.array_split(np.argsort(t, kind="stable"), blocks)
    return [(np.sort(np.concatenate(chunks[:k])), np.sort(chunks[k])) for k in range(1, blocks)]


def cross_fit(n: int, folds: int = 10, seed: int = 0) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """Splits for the gate: the n outcomes dealt at random (seeded) into `folds` folds; for each fold,
    (indices of the other folds, indices of the fold). Every outcome is held out once, by a candidate
    fitted on (folds - 1) / folds of the outcomes: nearly the size of the refit the gate vouches for."""
    if folds < 2 or n < folds:
        raise ValueError(f"cross_fit: needs folds >= 2 and at least {folds} outcomes, got {n}")
    ids = np.random.default_rng(seed).permutation(n) % folds
    return [(np.flatnonzero(ids != k), np.flatnonzero(ids == k)) for k in range(folds)]


SPLITS = ("cross_fit", "forward")
"""How the gate holds outcomes out: `cross_fit` (the default, 10 folds) or `forward` (5 forward-chaining
time blocks)."""


def gate_splits(
    timestamps: npt.ArrayLike, splits: str = "cross_fit", seed: int = 0, unseen: npt.ArrayLike | None = None
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
    """The (training, held-out) index pairs of scheme `splits` (SPLITS) for outcomes judged at `timestamps`.

    `unseen` (bool per outcome): the outcomes the champion was not fitted on. A champion adapted from
    earlier outcomes predicts those in-sample, which flatters it, so only unseen outcomes are held out
    (the candidate still trains on every other outcome); folds left without one are dropped."""
    t = np.asarray(timestamps)
    if splits == "cross_fit":
        pairs = cross_fit(t.size, 10, seed)
    elif splits == "forward":
        pairs = forward_chaining(t, 5)
    else:
        raise ValueError(f"splits: must be one of {', '.join(SPLITS)} (got {splits!r})")
    if unseen is None:
        return pairs
    keep = np.asarray(unseen, dtype=np.bool_)
    if keep.shape != t.shape:
        raise ValueError(f"unseen: {keep.shape[0] if keep.ndim else 0} flags for {t.size} outcomes")
    return [(train, held[keep[held]]) for train, held in pairs if keep[held].any()]


def check_settings(where: str, alpha: float, replicates: int, **margins: float) -> None:
    """ValueError naming the first of a gate's settings out of range (`where`: the gate's name)."""
    for name, value in margins.items():
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{where}: {name} must be a number >= 0 (got {value})")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"{where}: alpha must be in (0, 0.5) (got {alpha})")
    if replicates < 100:
        raise ValueError(f"{where}: replicates must be >= 100 (got {replicates})")


def gate(
    champion_scores: npt.ArrayLike,
    candidate_scores: npt.ArrayLike,
    gain: npt.ArrayLike,
    *,
    margin: float = DEFAULT_MARGIN,
    alpha: float = DEFAULT_ALPHA,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
    metric: str = "APGR (paired outcomes, full resolution)",
) -> GateDecision:
    """Decide whether the candidate may replace the champion (module docstring). `gain` [n]: the
    held-out prompts' strong - weak quality (paired) or doubly robust pseudo-gain (single)."""
    champ = np.asarray(champion_scores, dtype=np.float64)
    cand = np.asarray(candidate_scores, dtype=np.float64)
    g = np.asarray(gain, dtype=np.float64)
    if not (champ.ndim == 1 and champ.shape == cand.shape == g.shape):
        raise ValueError(f"gate: champion {champ.shape}, candidate {cand.shape} and gain {g.shape} must match")
    for name, arr in (("champion_scores", champ), ("candidate_scores", cand), ("gain", g)):
        if not np.isfinite(arr).all():
            raise ValueError(f"gate: {name} contains NaN or inf")
    check_settings("gate", alpha, replicates, margin=margin)
    test = f"one-sided paired bootstrap over prompts, {replicates} replicates, alpha {alpha}, margin {margin}"
    n = g.size
    mean_gain = float(g.mean()) if n else 0.0

    def decision(
        accepted: bool, reason: str, champ_apgr: float, cand_apgr: float, lower: float, p: float, signal: float
    ) -> GateDecision:
        return GateDecision(
            accepted=accepted,
            reason=reason,
            metric=metric,
            test=test,
            n_held_out=n,
            champion_apgr=champ_apgr,
            candidate_apgr=cand_apgr,
            difference=cand_apgr - champ_apgr,
            lower_bound=lower,
            p_value=p,
            signal_p_value=signal,
            margin=margin,
            alpha=alpha,
            replicates=replicates,
            seed=seed,
        )

    nan = float("nan")
    if n < MIN_HELD_OUT:
        return decision(
            False, f"refused: {n} held-out outcomes, the gate needs at least {MIN_HELD_OUT}", nan, nan, nan, nan, nan
        )
    if mean_gain <= 0:
        return decision(
            False, f"refused: the held-out mean gain is {mean_gain:.4g} (no gap to recover)", nan, nan, nan, nan, nan
        )
    champ_apgr = gain_area(champ, g) / mean_gain
    cand_apgr = gain_area(cand, g) / mean_gain
    rng = np.random.default_rng(seed)
    diffs = np.empty(replicates)
    null = np.empty(replicates)
    for r in range(replicates):
        idx = rng.integers(0, n, n)
        diffs[r] = (gain_area(cand[idx], g[idx]) - gain_area(champ[idx], g[idx])) / mean_gain
        null[r] = gain_area(cand, g[rng.permutation(n)]) / mean_gain  # the candidate's order, gains unrelated
    lower = float(np.quantile(diffs, alpha))
    signal_p = float((np.sum(null >= cand_apgr) + 1) / (replicates + 1))
    p_value = float((np.sum(diffs <= -margin) + 1) / (replicates + 1))  # H0: candidate worse by >= margin
    diff = cand_apgr - champ_apgr
    numbers = f"APGR {cand_apgr:.4f} vs champion {champ_apgr:.4f} (difference {diff:+.4f}); the one-sided"
    numbers += f" {1 - alpha:.0%}"
    if lower < -margin:
        reason = f"refused: {numbers} lower bound {lower:+.4f} is below -{margin} on {n} held-out outcomes"
        return decision(False, reason, champ_apgr, cand_apgr, lower, p_value, signal_p)
    if signal_p >= alpha:
        reason = (
            f"refused: {numbers} lower bound {lower:+.4f} is above -{margin}, but the candidate's order is not "
            f"shown to beat a random one (permutation p {signal_p:.3f} >= {alpha}): no signal to serve"
        )
        return decision(False, reason, champ_apgr, cand_apgr, lower, p_value, signal_p)
    reason = (
        f"accepted: {numbers} lower bound {lower:+.4f} is above -{margin}, and the candidate's order beats a "
        f"random one (permutation p {signal_p:.4f})"
    )
    return decision(True, reason, champ_apgr, cand_apgr, lower, p_value, signal_p)
