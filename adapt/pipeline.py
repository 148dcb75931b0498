"""One adaptation from arrays of outcomes: held-out splits, learner, blend weight, gate, refit
(`adapt_paired`, `adapt_single`); what `lmroute-export adapt` calls between reading the outcome store
and `lmroute.adapt.bundle_out.write_adapted_bundle`.

Steps: the outcomes are held out in turn (`lmroute.adapt.gate.gate_splits`, scheme `splits`: by
default 10 random folds, each held out from a candidate fitted on the other nine; or "forward", 5
forward-chaining time blocks, each held out from a candidate fitted on the blocks before it); each
candidate is the learner + the blend's n0, cross-validated on its own training part, and the gate
compares the pooled held-out candidate scores with the champion's (paired: the gap; single: the doubly
robust pseudo-gap, outcome models fitted on the training part only). Single outcomes use `fit_single`'s
shared outcome model by default (`method`); its blend weight is cross-validated on the learner's own
out-of-fold gap and cross-fitted pseudo-gap. One time split holding out 20 % measured too weak: a few
hundred held-out outcomes bound APGR to +-0.1. The head and n0 are then refitted on all the outcomes
(the gate vouched for the procedure): `Adaptation.accepted` says whether the result may replace the
champion, `Adaptation.decision` holds every number.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lmroute.adapt.gate import DEFAULT_MARGIN, GateDecision, gate, gate_splits
from lmroute.adapt.head import BaseStandardisation, Head, blend_weight, blended_scores, robust_center_scale
from lmroute.adapt.learners import (
    BLEND_RESAMPLES,
    MAX_INVERSE_PROPENSITY,
    PAIRED_LEARNERS,
    choose_blend_n0,
    dr_pseudo_gap,
    fit_paired,
    fit_shared,
    fit_single,
    held_out_dr_gain,
    paired_out_of_fold,
    shared_head,
    single_events,
)
from lmroute.adapt.ridge import design

__all__ = ["Adaptation", "adapt_paired", "adapt_single", "fit_blend"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Adaptation:
    """The refitted head, its blend (n0, weight = n / (n + n0), the base's standardisation), and the
    gate's decision on the candidate fitted without the held-out outcomes."""

    head: Head
    n0: float
    weight: float
    base: BaseStandardisation
    decision: GateDecision

    @property
    def accepted(self) -> bool:
        return self.decision.accepted

    def scores(self, embeddings: npt.ArrayLike, lengths: npt.ArrayLike, base_scores: npt.ArrayLike) -> FloatArray:
        """What the adapted router serves for these prompts."""
        return blended_scores(self.head, embeddings, lengths, base_scores, self.weight, self.base)


BLEND_FOLDS = 5  # folds of the blend's n0 choice (and of a kernel head's out-of-fold standardisation)
_EMPTY = np.zeros(0)  # what the held-out lists start from: no fold left (every outcome seen) = none held out


def fit_blend(
    emb: FloatArray,
    lengths: FloatArray,
    gain: FloatArray,
    base_scores: FloatArray,
    head: Head,
    seed: int,
    out_of_fold_raw: FloatArray | None = None,
    *,
    resamples: int = BLEND_RESAMPLES,
) -> tuple[Head, float, float, BaseStandardisation]:
    """The head (a kernel head restandardised on its out-of-fold predictions), n0 (`choose_blend_n0`, with
    `resamples` bootstrap resamples), the blend weight and the base's standardisation. A kernel head's
    in-sample predictions fit its own outcomes and spread wider than on new prompts (about twice the IQR
    on GSM8K's stream half), which would weigh it too little in the blend; its out-of-fold predictions
    spread as new prompts' do."""
    if out_of_fold_raw is None and head.kernel is not None and len(gain) >= 2 * BLEND_FOLDS:
        out_of_fold_raw = paired_out_of_fold(emb, lengths, gain, head, folds=BLEND_FOLDS, seed=seed)
        center, scale = robust_center_scale(out_of_fold_raw)
        head = dataclasses.replace(head, center=center, scale=scale)
    penalty = head.settings.get("penalty", 30.0)
    n0, _ = choose_blend_n0(
        emb,
        lengths,
        gain,
        base_scores,
        penalty,
        folds=BLEND_FOLDS,
        seed=seed,
        out_of_fold_raw=out_of_fold_raw,
        resamples=resamples,
    )
    return head, n0, blend_weight(len(gain), n0), BaseStandardisation.of(base_scores)


def _single_head(
    emb: FloatArray,
    length: FloatArray,
    arm: npt.NDArray[np.bool_],
    q: FloatArray,
    p: FloatArray,
    base: FloatArray,
    method: str,
    seed: int,
) -> tuple[Head, float, float, BaseStandardisation]:
    """The single-outcome head and its blend (n0, weight, the base's standardisation)."""
    x = design(emb, length)
    if method == "shared":
        shared = fit_shared(x, arm, q, p, seed=seed)
        head = shared_head(x, shared, len(q))
        return fit_blend(emb, length, shared.pseudo_gap, base, head, seed, shared.oof_gap)
    head = fit_single(emb, length, arm, q, p, method=method, seed=seed)
    pseudo, _, _ = dr_pseudo_gap(x, arm, q, p, seed=seed)
    return fit_blend(emb, length, pseudo, base, head, seed)


def _gated(
    values: FloatArray, gate_values: npt.ArrayLike | None, unseen: npt.ArrayLike | None
) -> tuple[FloatArray, npt.NDArray[np.bool_] | None]:
    """(what the gate judges by, the outcomes it may hold out: None = all) from the training values, the
    gate's own (NaN: none for that outcome) and the champion's unseen outcomes."""
    if gate_values is None:
        return values, None if unseen is None else np.asarray(unseen, dtype=np.bool_)
    judged = np.asarray(gate_values, dtype=np.float64)
    if judged.shape != values.shape:
        raise ValueError(f"gate values: {judged.shape} for {values.shape} outcomes")
    held_out = np.isfinite(judged)
    if unseen is not None:
        held_out &= np.asarray(unseen, dtype=np.bool_)
    return judged, held_out


def adapt_paired(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    gap: npt.ArrayLike,
    base_scores: npt.ArrayLike,
    champion_scores: npt.ArrayLike,
    timestamps: npt.ArrayLike,
    *,
    splits: str = "cross_fit",
    margin: float = DEFAULT_MARGIN,
    unseen: npt.ArrayLike | None = None,
    learner: str = PAIRED_LEARNERS[0],
    seed: int = 0,
    gate_gap: npt.ArrayLike | None = None,
) -> Adaptation:
    """Adapt from paired outcomes: per outcome the prompt's embedding and log_length, gap = strong -
    weak quality, the base router's and the champion's scores, and the time it was judged; `unseen`:
    the outcomes the champion was not fitted on, the only ones held out (`gate_splits`); `learner`: of
    `PAIRED_LEARNERS` (`fit_paired`). `gate_gap`: the gap the gate judges by, NaN where it has none (the
    trusted reporters' outcomes alone: only those prompts are held out); None = `gap`."""
    emb = np.asarray(embeddings, dtype=np.float64)
    length, g = np.asarray(lengths, dtype=np.float64), np.asarray(gap, dtype=np.float64)
    base, champ = np.asarray(base_scores, dtype=np.float64), np.asarray(champion_scores, dtype=np.float64)
    judged, held_out = _gated(g, gate_gap, unseen)
    cand, champ_h, gain_h = [_EMPTY], [_EMPTY], [_EMPTY]
    for train, held in gate_splits(timestamps, splits, seed, held_out):
        head = fit_paired(emb[train], length[train], g[train], learner=learner, seed=seed)
        head, n0, weight, base_std = fit_blend(emb[train], length[train], g[train], base[train], head, seed)
        cand.append(blended_scores(head, emb[held], length[held], base[held], weight, base_std))
        champ_h.append(champ[held])
        gain_h.append(judged[held])
    decision = gate(np.concatenate(champ_h), np.concatenate(cand), np.concatenate(gain_h), margin=margin, seed=seed)
    head = fit_paired(emb, length, g, learner=learner, seed=seed)
    head, n0, weight, base_std = fit_blend(emb, length, g, base, head, seed)
    return Adaptation(head=head, n0=n0, weight=weight, base=base_std, decision=decision)


def adapt_single(
    embeddings: npt.ArrayLike,
    lengths: npt.ArrayLike,
    chose_strong: npt.ArrayLike,
    quality: npt.ArrayLike,
    propensity: npt.ArrayLike,
    base_scores: npt.ArrayLike,
    champion_scores: npt.ArrayLike,
    timestamps: npt.ArrayLike,
    *,
    splits: str = "cross_fit",
    margin: float = DEFAULT_MARGIN,
    unseen: npt.ArrayLike | None = None,
    seed: int = 0,
    method: str = "shared",
    gate_quality: npt.ArrayLike | None = None,
    gate_max_inverse_propensity: float = MAX_INVERSE_PROPENSITY,
) -> Adaptation:
    """Adapt from single outcomes (the chosen model's quality and its propensity per decision) with
    `fit_single`'s `method` (default: the shared outcome model, `lmroute.adapt.learners.fit_shared`);
    the gate's gains are held-out doubly robust pseudo-gaps (`held_out_dr_gain`, 1 / propensity clipped
    at `gate_max_inverse_propensity`); `unseen` as for `adapt_paired`; `gate_quality`: the quality the
    gate's gains are made of, NaN where it has none (as `gate_gap`)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    length = np.asarray(lengths, dtype=np.float64)
    arm, q, p = single_events(chose_strong, quality, propensity, emb.shape[0])  # p = 0 or 1.5: ValueError
    base, champ = np.asarray(base_scores, dtype=np.float64), np.asarray(champion_scores, dtype=np.float64)
    x = design(emb, length)
    judged, held_out = _gated(q, gate_quality, unseen)
    cand, champ_h, gain_h = [_EMPTY], [_EMPTY], [_EMPTY]
    for train, held in gate_splits(timestamps, splits, seed, held_out):
        head, _, weight, base_std = _single_head(
            emb[train], length[train], arm[train], q[train], p[train], base[train], method, seed
        )
        cand.append(blended_scores(head, emb[held], length[held], base[held], weight, base_std))
        champ_h.append(champ[held])
        gain_h.append(
            held_out_dr_gain(
                (x[train], arm[train], q[train], p[train]),
                (x[held], arm[held], judged[held], p[held]),
                seed=seed,
                max_inverse_propensity=gate_max_inverse_propensity,
            )
        )
    decision = gate(
        np.concatenate(champ_h),
        np.concatenate(cand),
        np.concatenate(gain_h),
        margin=margin,
        seed=seed,
        metric="APGR (single outcomes, doubly robust)",
    )
    head, n0, weight, base_std = _single_head(emb, length, arm, q, p, base, method, seed)
    return Adaptation(head=head, n0=n0, weight=weight, base=base_std, decision=decision)
