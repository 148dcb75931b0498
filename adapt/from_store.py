"""One adaptation run from an outcome store: read, featurise, adapt, gate, write (`lmroute-export adapt`).

    run = adapt_from_store(bundle_dir, store, out_dir, kind="paired")
    run.accepted, run.report          # the gate's verdict and every number; recorded in the store too

Steps:
1. Read the judged prompts of the store (`OutcomeStore.labeled_prompts`, optionally since a time, and
   only the outcomes of the `reporters` trusted: the gate then holds out only theirs too; with
   `gate_reporters` the gate holds out only the prompts those reporters judged, judged by their
   outcomes alone, while the head learns from all of `reporters`'; with `callers`, only the outcomes
   of decisions made for those tenants' calls: a router adapted to their traffic) and keep those
   the kind can learn from: paired = both models of the bundle's default pair judged (paired or
   preference outcomes); single = a two-way Route decision of this pair with its propensity and the
   chosen model's quality (the outcomes of decisions made among candidates, whose propensities are
   N-way, are skipped). The report says how many judged prompts were read (`judged_prompts_read`) and
   counts those left out by reason (`outcomes_excluded`: another pair, no decision, no propensity, ...);
   a refusal for too few usable outcomes names the most common reason.
2. Features in the bundle's encoder space: the stored embedding when its `encoder_id` is the bundle's
   (the encoder then does not run again), else the prompt text embedded now with the bundle's encoder;
   the length feature from the text (or the recorded character count). The base router's and the
   champion's scores: computed with the bundle from the text; for a prompt stored without its text (the
   privacy switch), computed from its stored embedding and character count when both routers read no
   text (`RouterKind.reads_text`: mf, sw_ranking and the adapted kinds), else taken from its decision
   when that decision was made by this same bundle version and recorded both routers' scores. A prompt
   with none of these is skipped and counted.
3. `adapt_paired` / `adapt_single` (lmroute.adapt.pipeline): the learner, its blend with the base router
   and the gate on held-out outcomes (`splits`: 10 random folds, or forward-chaining time blocks).
4. If the gate accepts: the adapted bundle is written to `out_dir`, its thresholds calibrated on the
   distinct prompts (`prompt_sha256`) of the store's most recent decisions, each once (one hot prompt
   repeated thousands of times is one prompt); with fewer than MIN_CALIBRATION_PROMPTS of those, on the
   distinct judged prompts; with fewer of those too, the parent's thresholds of the champion are kept
   (the report's `calibration` says which, `calibration_prompts` 0). Accepted or not, the run is
   recorded in the store (`adaptations`).

The champion is what the bundle serves now: its adapted router when it has one (a bundle adapted
before), else the base router; a new adaptation replaces the adapted router. With `tenant`, the run
learns from and gates on that tenant's calls' outcomes alone (`callers` = the tenant), its champion is
the tenant's router when the bundle has one (`tenant_routers`), else as above, and an accepted router,
`adapted-<tenant>`, becomes that tenant's default router beside the others', its thresholds calibrated
on the tenant's recent decisions.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from lmroute.adapt.bundle_out import OutcomeSpan, write_adapted_bundle, writing_candidate
from lmroute.adapt.gate import SPLITS
from lmroute.adapt.learners import PAIRED_LEARNERS
from lmroute.adapt.pipeline import Adaptation, adapt_paired, adapt_single
from lmroute.bundle import kinds
from lmroute.bundle.loader import Bundle, load_bundle
from lmroute.bundle.manifest import encoder_identity, lineage_time
from lmroute.bundle.routers import PromptBatch
from lmroute.bundle.signing import sign_bundle
from lmroute.export.calibrate import MIN_CALIBRATION_PROMPTS
from lmroute.outcomes.records import TENANT_RE, Decision, LabeledPrompt, OutcomeKind
from lmroute.outcomes.store import OutcomeStore

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "AdaptRun",
    "Features",
    "adapt_from_store",
    "distinct_prompts",
    "featurise",
    "gate_qualities",
    "score_texts",
    "tenant_callers",
    "tenant_router_name",
]

ADAPTED = "adapted"
MIN_OUTCOMES = 50
"""Fewer usable outcomes than this: no candidate (the gate could not judge it)."""
MIN_SINGLE_PER_MODEL = 20
"""Single outcomes: fewer than this of either model's answers, no candidate. The gap between the models
is learnt from both models' outcomes; with one model's alone (thumbs collected on the strong model's
answers only, say) a head learns where that model does well, and the gate, whose held-out gains need the
other model's outcome model too, cannot tell it from a better router."""
CALIBRATION_PROMPTS = 5000
"""The most recent decisions whose distinct prompts calibrate the adapted router's thresholds."""


@dataclass(frozen=True)
class Features:
    """Per prompt: embedding in the bundle's space, log(1 + characters), base and champion scores, time."""

    embeddings: npt.NDArray[np.float32]
    lengths: npt.NDArray[np.float64]
    base_scores: npt.NDArray[np.float64]
    champion_scores: npt.NDArray[np.float64]
    time_ms: npt.NDArray[np.int64]
    kept: list[int]  # indices of the input rows these are for
    skipped: int  # rows with neither text nor a usable stored decision


@dataclass(frozen=True)
class AdaptRun:
    """What one run did: its verdict, the bundle written (when accepted) and the numbers."""

    accepted: bool
    kind: str
    n_outcomes: int
    parent_version: str
    candidate_version: str | None
    report: dict[str, Any] = field(default_factory=dict)


def score_texts(
    bundle: Bundle,
    texts: Sequence[str],
    routers: Sequence[str],
    known: Sequence[npt.NDArray[np.float32] | None],
    chunk: int = 64,
) -> tuple[npt.NDArray[np.float32], dict[str, npt.NDArray[np.float64]]]:
    """(embeddings [n, dim], {router: scores [n]}) of `texts` under the bundle. known[i], an embedding of
    texts[i] already in the bundle's space (from the store), is used instead of running the encoder."""
    emb = np.zeros((len(texts), bundle.encoder.dim), dtype=np.float32)
    scores = {r: np.zeros(len(texts)) for r in routers}
    for start in range(0, len(texts), chunk):
        part = list(texts[start : start + chunk])
        tokens = bundle.encoder.tokenize(part)
        missing = [j for j in range(len(part)) if known[start + j] is None]
        e = np.zeros((len(part), bundle.encoder.dim), dtype=np.float32)
        for j in range(len(part)):
            k = known[start + j]
            if k is not None:
                e[j] = k
        if missing:
            e[missing] = np.asarray(bundle.encoder.embed(tokens.select(missing)), dtype=np.float32)
        emb[start : start + len(part)] = e
        batch = PromptBatch(part, tokens, e)
        for r in routers:
            scores[r][start : start + len(part)] = np.asarray(bundle.routers[r].score(batch), dtype=np.float64)
    return emb, scores


def _score_features(
    bundle: Bundle, rows: Sequence[LabeledPrompt | Decision], routers: Sequence[str]
) -> dict[str, npt.NDArray[np.float64]]:
    """{router: scores [n]} of prompts stored as their embedding (in the bundle's space) and character
    count (`PromptBatch.from_features`); the routers must read no text."""
    batch = PromptBatch.from_features(
        np.stack([np.asarray(r.embedding, dtype=np.float32) for r in rows]), [r.prompt_chars or 0 for r in rows]
    )
    return {r: np.asarray(bundle.routers[r].score(batch), dtype=np.float64) for r in routers}


def _text_free(bundle: Bundle, routers: Sequence[str]) -> bool:
    """Whether every router in `routers` scores from the embedding and the character count alone."""
    return not any(kinds.get(bundle.manifest.routers[r].kind).reads_text for r in routers)


def featurise(bundle: Bundle, rows: Sequence[LabeledPrompt | Decision], base_router: str, champion: str) -> Features:
    """Features of `rows` in the bundle's space (module docstring, step 2)."""
    texts = [r.prompt_text for r in rows]
    with_text = [i for i, t in enumerate(texts) if t]
    own_encoder = encoder_identity(bundle.manifest)
    known = [rows[i].embedding if rows[i].encoder_id == own_encoder else None for i in with_text]
    emb_t, scores_t = score_texts(bundle, [texts[i] or "" for i in with_text], [base_router, champion], known)
    rescorable = (
        [
            i
            for i, r in enumerate(rows)
            if not texts[i] and r.embedding is not None and r.encoder_id == own_encoder and r.prompt_chars is not None
        ]
        if _text_free(bundle, (base_router, champion))
        else []
    )
    scores_f = _score_features(bundle, [rows[i] for i in rescorable], (base_router, champion)) if rescorable else {}
    by_features = {i: j for j, i in enumerate(rescorable)}
    kept: list[int] = []
    emb: list[npt.NDArray[np.float32]] = []
    lengths: list[float] = []
    base: list[float] = []
    champ: list[float] = []
    times: list[int] = []
    by_row = {i: j for j, i in enumerate(with_text)}
    for i, r in enumerate(rows):
        stored_ok = r.embedding is not None and r.encoder_id == own_encoder
        if i in by_row:
            j = by_row[i]
            emb.append(emb_t[j])
            lengths.append(float(np.log1p(len(texts[i] or ""))))
            base.append(float(scores_t[base_router][j]))
            champ.append(float(scores_t[champion][j]))
        elif i in by_features:
            j = by_features[i]
            emb.append(np.asarray(r.embedding, dtype=np.float32))
            lengths.append(float(np.log1p(r.prompt_chars or 0)))
            base.append(float(scores_f[base_router][j]))
            champ.append(float(scores_f[champion][j]))
        elif (
            stored_ok
            and r.embedding is not None
            and r.prompt_chars is not None
            and r.bundle_version == bundle.version
            and base_router in r.scores
            and champion in r.scores
        ):
            emb.append(np.asarray(r.embedding, dtype=np.float32))
            lengths.append(float(np.log1p(r.prompt_chars)))
            base.append(float(r.scores[base_router]))
            champ.append(float(r.scores[champion]))
        else:
            continue
        kept.append(i)
        times.append(r.time_ms)
    dim = bundle.encoder.dim
    return Features(
        embeddings=np.stack(emb) if emb else np.zeros((0, dim), dtype=np.float32),
        lengths=np.asarray(lengths),
        base_scores=np.asarray(base),
        champion_scores=np.asarray(champ),
        time_ms=np.asarray(times, dtype=np.int64),
        kept=kept,
        skipped=len(rows) - len(kept),
    )


def tenant_router_name(tenant: str, adapted: str = ADAPTED) -> str:
    """The router an adaptation for `tenant` adds (`<adapted>-<tenant>`: `adapted-app`,
    `adapted_quality-app`); ValueError for a name that is not a tenant's or too long for a router name
    (64 characters)."""
    name = f"{adapted}-{tenant}"
    if not TENANT_RE.match(tenant) or len(name) > 64:
        raise ValueError(
            f"tenant: {tenant!r} must be 1-{63 - len(adapted)} of A-Z a-z 0-9 . _ - "
            f"(its router is named {adapted}-<tenant>, at most 64 characters)"
        )
    return name


def tenant_callers(tenant: str, callers: Collection[str] | None) -> Collection[str] | None:
    """The callers a run learns from: `callers`, or with `tenant` that tenant alone (ValueError when
    `callers` names others)."""
    if not tenant:
        return callers
    if callers is not None and set(callers) != {tenant}:
        raise ValueError(f"callers: {sorted(callers)} with tenant {tenant!r} (a tenant's router learns from its calls)")
    return (tenant,)


def champion_of(bundle: Bundle, base_router: str, tenant: str = "") -> str:
    """What the bundle serves now to the calls a run adapts for: `tenant`'s router when it has one, else
    the adapted router when there is one, else `base_router`."""
    own = bundle.manifest.tenant_routers.get(tenant) if tenant else None
    return own or (ADAPTED if ADAPTED in bundle.routers else base_router)


def unseen_by(bundle: Bundle, champion: str, times_ms: Sequence[int]) -> npt.NDArray[np.bool_] | None:
    """The outcomes the champion was not fitted on, for `gate_splits`: where the champion is a router the
    bundle's lineages say was adapted, those first judged after that lineage's last outcome (its second
    included, the record's resolution; `times_ms`: when each prompt was first judged, as a prompt judged
    before and judged again since was fitted on); None (every outcome) for a champion not learnt from
    outcomes."""
    lineage = bundle.manifest.lineage_of(champion)
    if lineage is None:
        return None
    return np.asarray(times_ms, dtype=np.int64) > lineage.last_outcome_ms + 999


def distinct_prompts(rows: Sequence[LabeledPrompt | Decision]) -> list[int]:
    """The positions in `rows` of each prompt's first row (by `prompt_sha256`, kept with the privacy
    switch too; recent decisions come newest first). What calibrates thresholds: a table's share is a
    share of distinct prompts, else one hot prompt repeated thousands of times takes every share it
    covers to its own score (the strong-share knob then moves nothing)."""
    seen: set[str] = set()
    first: list[int] = []
    for i, r in enumerate(rows):
        if r.prompt_sha256 not in seen:
            seen.add(r.prompt_sha256)
            first.append(i)
    return first


AMONG_CANDIDATES = "decided by Route among candidates: an N-way propensity (--kind qualities learns from it)"
"""Why `--kind single` skips an outcome of such a decision: its learner reads a propensity between the
pair's two models, and one chosen among N candidates (a third model could have answered) is not that."""


def _among_candidates(r: LabeledPrompt) -> bool:
    """Whether r's decision was made by Route among candidates: its `choice` lists them (`models`); a
    two-way Route's holds at most the share target it was made at."""
    try:
        made = json.loads(r.choice) if r.choice else None
    except ValueError:
        return False
    return isinstance(made, dict) and "models" in made


def _unusable(r: LabeledPrompt, kind: str, strong: str, weak: str) -> str:
    """Why `kind` cannot learn from judged prompt `r` ("" when it can), as the report counts it."""
    if kind == "paired":
        if not r.kinds & {OutcomeKind.PAIRED, OutcomeKind.PREFERENCE}:
            return "no paired or preference outcome"
        if strong not in r.qualities or weak not in r.qualities:
            return f"not judged on the bundle's pair ({strong}, {weak})"
        return ""
    if OutcomeKind.SINGLE not in r.kinds:
        return "no single outcome"
    if r.chosen_model is None:
        return "no decision of it in the store (an outcome by prompt, or its decision pruned or erased)"
    if r.chosen_model not in (strong, weak):
        return f"decided for another pair than the bundle's ({strong}, {weak})"
    if r.propensity is None:
        return "its decision holds no propensity"
    if r.chosen_model not in r.qualities:
        return "the model that answered is not the one judged"
    return AMONG_CANDIDATES if _among_candidates(r) else ""


def _usable(
    rows: Sequence[LabeledPrompt], kind: str, strong: str, weak: str
) -> tuple[list[LabeledPrompt], dict[str, int]]:
    """(the rows `kind` learns from, how many of the others were left out for each reason)."""
    usable: list[LabeledPrompt] = []
    excluded: collections.Counter[str] = collections.Counter()
    for r in rows:
        why = _unusable(r, kind, strong, weak)
        if why:
            excluded[why] += 1
        else:
            usable.append(r)
    return usable, dict(excluded.most_common())


def gate_qualities(
    store: OutcomeStore, since_ms: int, gate_reporters: Collection[str], callers: Collection[str] | None
) -> dict[str, Mapping[str, float]]:
    """What the gate judges by under `gate_reporters`: each judged prompt's (target's) qualities by model
    from those reporters' outcomes alone."""
    rows = store.labeled_prompts(since_ms=since_ms, reporters=gate_reporters, callers=callers)
    return {r.target: r.qualities for r in rows}


def _gap(qualities: Mapping[str, float], strong: str, weak: str) -> float:
    """strong - weak quality where both were judged, else NaN."""
    return qualities[strong] - qualities[weak] if strong in qualities and weak in qualities else math.nan


def adapt_from_store(
    bundle_dir: str | Path,
    store: OutcomeStore,
    out_dir: str | Path,
    *,
    kind: str = "paired",
    base_router: str = "mf",
    since_ms: int = 0,
    reporters: Collection[str] | None = None,
    gate_reporters: Collection[str] | None = None,
    callers: Collection[str] | None = None,
    tenant: str = "",
    margin: float | None = None,
    splits: str = "cross_fit",
    paired_learner: str = PAIRED_LEARNERS[0],
    seed: int = 0,
    overwrite: bool = False,
    sign_key: Ed25519PrivateKey | None = None,
) -> AdaptRun:
    """One run (module docstring). ValueError naming the setting when the bundle cannot be adapted this way."""
    if kind not in ("paired", "single"):
        raise ValueError(f"kind: must be 'paired' or 'single' (got {kind!r})")
    if splits not in SPLITS:
        raise ValueError(f"splits: must be one of {', '.join(SPLITS)} (got {splits!r})")
    if paired_learner not in PAIRED_LEARNERS:
        raise ValueError(f"paired_learner: must be one of {', '.join(PAIRED_LEARNERS)} (got {paired_learner!r})")
    router = tenant_router_name(tenant) if tenant else ADAPTED
    callers = tenant_callers(tenant, callers)
    bundle = load_bundle(Path(bundle_dir))
    if base_router not in bundle.routers or kinds.get(bundle.routers[base_router].kind).from_outcomes:
        raise ValueError(f"base_router: {base_router!r} is not a trained router of {bundle_dir}")
    champion = champion_of(bundle, base_router, tenant)
    pair = bundle.manifest.default_pair
    read = store.labeled_prompts(since_ms=since_ms, reporters=reporters, callers=callers)
    rows, excluded = _usable(read, kind, pair.strong, pair.weak)
    feats = featurise(bundle, rows, base_router, champion)
    used = [rows[i] for i in feats.kept]
    report: dict[str, Any] = {
        "kind": kind,
        "base_router": base_router,
        "champion": champion,
        "judged_prompts_read": len(read),
        "outcomes_read": len(rows),
        "reporters": None if reporters is None else sorted(reporters),
        "callers": None if callers is None else sorted(callers),
        "tenant": tenant or None,
        "router": router,
        "outcomes_skipped": feats.skipped,
        "gate_splits": splits,
    }
    if excluded:
        report["outcomes_excluded"] = excluded

    def record(accepted: bool, candidate: str | None) -> None:
        store.record_adaptation(
            parent_version=bundle.version,
            candidate_version=candidate,
            kind=kind,
            n_outcomes=len(used),
            accepted=accepted,
            report=report,
        )

    if len(used) < MIN_OUTCOMES:
        why = f"{len(used)} usable outcomes (need {MIN_OUTCOMES})"
        if excluded:  # the largest reason the others were left out
            most, n = next(iter(excluded.items()))
            why += f"; {n} of the {len(read)} judged prompts read: {most}"
        report["gate"] = {"accepted": False, "reason": why}
        record(False, None)
        return AdaptRun(False, kind, len(used), bundle.version, None, report)
    if kind == "single":
        answered = [sum(r.chosen_model == m for r in used) for m in (pair.strong, pair.weak)]
        report["outcomes_by_model"] = {pair.strong: answered[0], pair.weak: answered[1]}
        if min(answered) < MIN_SINGLE_PER_MODEL:
            why = (
                f"single outcomes of {pair.strong}: {answered[0]}, of {pair.weak}: {answered[1]} (need "
                f"{MIN_SINGLE_PER_MODEL} of each: the gap is learnt from both models' answers; explore "
                "(--explore-rate) or report outcomes of both)"
            )
            report["gate"] = {"accepted": False, "reason": why}
            record(False, None)
            return AdaptRun(False, kind, len(used), bundle.version, None, report)
    unseen = unseen_by(bundle, champion, [r.first_judged_ms for r in used])
    report["outcomes_unseen_by_champion"] = len(used) if unseen is None else int(unseen.sum())
    gate_kw: dict[str, Any] = {"seed": seed, "splits": splits, "unseen": unseen}
    if margin is not None:
        gate_kw["margin"] = margin
    # the gate's own outcomes: the trusted reporters' alone, on the prompts trained on (NaN: none)
    trusted = None
    if gate_reporters is not None:
        trusted = gate_qualities(store, since_ms, gate_reporters, callers)
        report["gate_reporters"] = sorted(gate_reporters)
    result: Adaptation
    if kind == "paired":
        gap = np.asarray([r.qualities[pair.strong] - r.qualities[pair.weak] for r in used])
        report["learner"] = paired_learner
        if trusted is not None:
            gate_kw["gate_gap"] = np.asarray([_gap(trusted.get(r.target, {}), pair.strong, pair.weak) for r in used])
        result = adapt_paired(
            feats.embeddings,
            feats.lengths,
            gap,
            feats.base_scores,
            feats.champion_scores,
            feats.time_ms,
            learner=paired_learner,
            **gate_kw,
        )
    else:
        chose_strong = np.asarray([r.chosen_model == pair.strong for r in used])
        quality = np.asarray([r.qualities[r.chosen_model or ""] for r in used])
        propensity = np.asarray([r.propensity for r in used], dtype=np.float64)
        if trusted is not None:
            gate_kw["gate_quality"] = np.asarray(
                [trusted.get(r.target, {}).get(r.chosen_model or "", math.nan) for r in used]
            )
        result = adapt_single(
            feats.embeddings,
            feats.lengths,
            chose_strong,
            quality,
            propensity,
            feats.base_scores,
            feats.champion_scores,
            feats.time_ms,
            **gate_kw,
        )
    if trusted is not None:
        gated = np.asarray(gate_kw["gate_gap"] if kind == "paired" else gate_kw["gate_quality"])
        report["outcomes_gated"] = int(np.isfinite(gated).sum())
    report["gate"] = result.decision.to_dict()
    report["blend"] = {"n0": result.n0, "weight": result.weight}
    candidate_version = None
    if result.accepted:
        recent = store.recent_decisions(limit=CALIBRATION_PROMPTS, callers=callers)
        cal = featurise(bundle, [recent[i] for i in distinct_prompts(recent)], base_router, champion)
        judged = distinct_prompts(used)  # positions in feats too
        cal_scores: npt.NDArray[np.float64] | None = None
        kept_thresholds: tuple[float, ...] | None = None
        if len(cal.kept) >= MIN_CALIBRATION_PROMPTS:
            cal_scores = result.scores(cal.embeddings, cal.lengths, cal.base_scores)
            report["calibration"] = (
                f"on the {len(cal.kept)} distinct prompts of the {len(recent)} most recent decisions"
            )
        elif len(judged) >= MIN_CALIBRATION_PROMPTS:  # too little recent traffic: the judged prompts
            cal_scores = result.scores(feats.embeddings[judged], feats.lengths[judged], feats.base_scores[judged])
            report["calibration"] = (
                f"on the {len(judged)} distinct judged prompts: the {len(recent)} most recent decisions hold "
                f"{len(cal.kept)} distinct prompts, fewer than {MIN_CALIBRATION_PROMPTS}"
            )
        else:
            parent_table = bundle.manifest.calibration
            if parent_table is None:
                raise ValueError(f"{bundle_dir}: the parent bundle is not calibrated")
            kept_thresholds = parent_table.thresholds[champion]  # the loader checked: every router has its own
            report["calibration"] = (
                f"not recalibrated: the parent's thresholds of {champion} kept (the {len(recent)} most recent "
                f"decisions hold {len(cal.kept)} distinct prompts and the judged prompts {len(judged)}, "
                f"fewer than {MIN_CALIBRATION_PROMPTS})"
            )
        span = OutcomeSpan(
            kind, len(used), lineage_time(int(feats.time_ms.min())), lineage_time(int(feats.time_ms.max()))
        )
        with writing_candidate(out_dir, report, lambda: record(False, None)):
            manifest = write_adapted_bundle(
                bundle_dir,
                out_dir,
                result.head,
                base_router,
                result.weight,
                result.base,
                span,
                cal_scores,
                overwrite=overwrite,
                replace=True,
                router=router,
                tenant=tenant,
                thresholds=kept_thresholds,
            )
            if sign_key is not None:  # before the run is recorded as accepted: never an unsigned one
                sign_bundle(out_dir, sign_key)
        candidate_version = manifest.bundle_version
        report["calibration_prompts"] = 0 if cal_scores is None else int(cal_scores.size)
    record(result.accepted, candidate_version)
    return dataclasses.replace(
        AdaptRun(result.accepted, kind, len(used), bundle.version, candidate_version), report=report
    )
