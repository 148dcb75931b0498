"""One N-model adaptation run from an outcome store (`lmroute-export adapt --kind qualities`).

    run = adapt_qualities_from_store(bundle_dir, store, out_dir)
    run.accepted, run.report          # the gate's verdict and every number; recorded in the store too

Steps:
1. Read the judged prompts of the store (optionally since a time, and only the `reporters` trusted;
   with `gate_reporters` the gate holds out only the prompts those reporters judged, by their
   qualities alone; with `callers`, only the outcomes of those tenants' calls): every prompt with a
   quality for any model, whatever the outcome's kind (`qualities`, `single`, `paired`, `preference`).
2. Features in the bundle's space: the stored embedding when its `encoder_id` is the bundle's, else the
   prompt text embedded now; the length feature from the text or the recorded character count. A
   prompt with neither text nor a usable stored embedding is skipped and counted. Everything the
   routers need is computed from these two (`qualities_of`), so the privacy switch costs nothing here.
3. The models: the base router's (a router of kind `quality`, default "quality"), then every other
   model judged in the outcomes, sorted. `lmroute.adapt.quality_heads.adapt_qualities` fits per-model
   heads and gates them against the champion: the bundle's `adapted_quality` router when it has one (an
   earlier adaptation), else the base router.
4. If the gate accepts: the bundle is written with the `adapted_quality` router (replacing an earlier
   one), its pair thresholds calibrated on the distinct prompts of the store's most recent decisions,
   each once (with fewer than MIN_OUTCOMES, on the distinct judged prompts). Accepted or not, the run is
   recorded in the store (`adaptations`).

With `tenant`, as `lmroute.adapt.from_store` does for a pair router: that tenant's calls' outcomes alone,
its own `adapted_quality-<tenant>` as champion when the bundle has one, and an accepted router becomes
its default quality router (`tenant_quality_routers`) while the bundle's stays.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from lmroute.adapt.bundle_out import OutcomeSpan, write_quality_bundle, writing_candidate
from lmroute.adapt.from_store import (
    CALIBRATION_PROMPTS,
    MIN_OUTCOMES,
    AdaptRun,
    distinct_prompts,
    gate_qualities,
    tenant_callers,
    tenant_router_name,
    unseen_by,
)
from lmroute.adapt.gate import SPLITS
from lmroute.adapt.quality_heads import (
    DEFAULT_ORDER_MARGIN,
    DEFAULT_QUALITY_MARGIN,
    DEFAULT_ROUTING_MARGIN,
    MIN_MODEL_OUTCOMES,
    adapt_qualities,
)
from lmroute.adapt.routing_value import LoggedChoices
from lmroute.bundle.kinds.adapted_quality import AdaptedQualityRouter
from lmroute.bundle.kinds.quality import QualityRouter
from lmroute.bundle.loader import Bundle, load_bundle
from lmroute.bundle.manifest import encoder_identity, lineage_time
from lmroute.bundle.signing import sign_bundle
from lmroute.outcomes.records import Decision, LabeledPrompt
from lmroute.outcomes.store import OutcomeStore

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["ADAPTED_QUALITY", "adapt_qualities_from_store", "embed_rows", "logged_choices"]

ADAPTED_QUALITY = "adapted_quality"
KIND = "qualities"


def embed_rows(
    bundle: Bundle, rows: Sequence[LabeledPrompt | Decision], chunk: int = 64
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[int]]:
    """(embeddings [k, dim], log(1 + characters) [k], indices of the k rows used) in the bundle's space:
    a stored embedding of the bundle's own encoder with its character count, else the text embedded now."""
    own = encoder_identity(bundle.manifest)
    emb: dict[int, npt.NDArray[np.float64]] = {}
    chars: dict[int, int] = {}
    to_embed: list[int] = []
    for i, r in enumerate(rows):
        if r.embedding is not None and r.encoder_id == own and (r.prompt_text or r.prompt_chars is not None):
            emb[i] = np.asarray(r.embedding, dtype=np.float64)
            chars[i] = len(r.prompt_text) if r.prompt_text else int(r.prompt_chars or 0)
        elif r.prompt_text:
            to_embed.append(i)
            chars[i] = len(r.prompt_text)
    for start in range(0, len(to_embed), chunk):
        part = to_embed[start : start + chunk]
        texts = [rows[i].prompt_text or "" for i in part]
        e = bundle.encoder.embed(bundle.encoder.tokenize(texts))
        for i, row in zip(part, np.asarray(e, dtype=np.float64), strict=True):
            emb[i] = row
    kept = sorted(emb)
    dim = bundle.encoder.dim
    matrix = np.stack([emb[i] for i in kept]) if kept else np.zeros((0, dim))
    return matrix, np.log1p(np.asarray([chars[i] for i in kept], dtype=np.float64)), kept


def logged_choices(rows: Sequence[LabeledPrompt], models: Sequence[str]) -> LoggedChoices | None:
    """The choice behind each row's outcome, in `models` columns, where its decision logged one (`Route`
    among candidates keeps the candidates' expected costs and the chosen one in `choice`, and the
    propensity): usable when the chosen model is one of `models` and the outcome judged it. Candidates
    outside `models` are left out (no column); a model that was not a candidate costs inf. None when no
    row is usable."""
    col = {m: j for j, m in enumerate(models)}
    answered = np.full(len(rows), -1, dtype=np.int64)
    propensity = np.ones(len(rows))
    cost = np.full((len(rows), len(models)), math.inf)
    for i, r in enumerate(rows):
        if not r.choice or r.propensity is None or not 0.0 < r.propensity <= 1.0:
            continue
        try:
            made = json.loads(r.choice)
            names, costs, chosen = list(made["models"]), [float(c) for c in made["costs"]], int(made["chosen"])
        except (ValueError, KeyError, TypeError):  # not the layout Route writes: no usable choice
            continue
        if len(names) != len(costs) or not 0 <= chosen < len(names):
            continue
        model = names[chosen]
        if model not in col or model not in r.qualities or model != r.chosen_model:
            continue
        known = [(col[m], c) for m, c in zip(names, costs, strict=True) if m in col and math.isfinite(c) and c >= 0]
        if col[model] not in {j for j, _ in known}:
            continue
        for j, c in known:
            cost[i, j] = c
        answered[i], propensity[i] = col[model], r.propensity
    if not (answered >= 0).any():
        return None
    return LoggedChoices(answered, propensity, cost)


def _champion_qualities(
    router: QualityRouter | AdaptedQualityRouter, emb: npt.NDArray[np.float64], lengths: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    if isinstance(router, AdaptedQualityRouter):
        return router.qualities_of(emb, lengths)
    return router.qualities_of(emb)


def adapt_qualities_from_store(
    bundle_dir: str | Path,
    store: OutcomeStore,
    out_dir: str | Path,
    *,
    base_router: str = "quality",
    since_ms: int = 0,
    reporters: Collection[str] | None = None,
    gate_reporters: Collection[str] | None = None,
    callers: Collection[str] | None = None,
    tenant: str = "",
    margin: float | None = None,
    order_margin: float | None = None,
    routing_margin: float | None = None,
    splits: str = "cross_fit",
    min_outcomes: int = MIN_MODEL_OUTCOMES,
    seed: int = 0,
    overwrite: bool = False,
    sign_key: Ed25519PrivateKey | None = None,
) -> AdaptRun:
    """One run (module docstring). ValueError naming the setting when the bundle cannot be adapted this way."""
    if splits not in SPLITS:
        raise ValueError(f"splits: must be one of {', '.join(SPLITS)} (got {splits!r})")
    bundle = load_bundle(Path(bundle_dir))
    base = bundle.routers.get(base_router)
    if not isinstance(base, QualityRouter):
        quality_routers = [n for n, r in bundle.routers.items() if isinstance(r, QualityRouter)]
        raise ValueError(
            f"base_router: {base_router!r} is not a router of kind quality in {bundle_dir} "
            f"(has: {', '.join(quality_routers) or 'none'})"
        )
    router = tenant_router_name(tenant, ADAPTED_QUALITY) if tenant else ADAPTED_QUALITY
    callers = tenant_callers(tenant, callers)
    served_name = bundle.manifest.tenant_quality_routers.get(tenant, ADAPTED_QUALITY) if tenant else ADAPTED_QUALITY
    served = bundle.routers.get(served_name)
    champion: QualityRouter | AdaptedQualityRouter = served if isinstance(served, AdaptedQualityRouter) else base
    rows = [r for r in store.labeled_prompts(since_ms=since_ms, reporters=reporters, callers=callers) if r.qualities]
    emb, lengths, kept = embed_rows(bundle, rows)
    used = [rows[i] for i in kept]
    judged = sorted({m for r in used for m in r.qualities})
    models = list(base.models) + [m for m in judged if m not in base.models]
    report: dict[str, Any] = {
        "kind": KIND,
        "base_router": base_router,
        "champion": served_name if champion is served else base_router,
        "outcomes_read": len(rows),
        "reporters": None if reporters is None else sorted(reporters),
        "callers": None if callers is None else sorted(callers),
        "tenant": tenant or None,
        "router": router,
        "outcomes_skipped": len(rows) - len(used),
        "models_judged": judged,
        "gate_splits": splits,
    }

    def record(accepted: bool, candidate: str | None) -> None:
        store.record_adaptation(
            parent_version=bundle.version,
            candidate_version=candidate,
            kind=KIND,
            n_outcomes=len(used),
            accepted=accepted,
            report=report,
        )

    if len(used) < MIN_OUTCOMES:
        why = f"{len(used)} usable outcomes (need {MIN_OUTCOMES})"
        if not rows:
            why += "; no judged prompt read (none stored, or none of the reporters, callers or time asked for)"
        elif len(used) < len(rows):  # the largest reason the others were left out
            why += (
                f"; {len(rows) - len(used)} of the {len(rows)} judged prompts read have neither their text nor an "
                "embedding of this bundle's encoder"
            )
        report["gate"] = {"accepted": False, "reason": why}
        record(False, None)
        return AdaptRun(False, KIND, len(used), bundle.version, None, report)
    quality = np.full((len(used), len(models)), np.nan)
    col = {m: j for j, m in enumerate(models)}
    for i, r in enumerate(used):
        for m, q in r.qualities.items():
            quality[i, col[m]] = q
    gate_kw: dict[str, Any] = {}
    if gate_reporters is not None:  # the gate's qualities: the trusted reporters' alone (NaN: none)
        trusted = gate_qualities(store, since_ms, gate_reporters, callers)
        gated = np.full_like(quality, np.nan)
        for i, r in enumerate(used):
            for m, q in trusted.get(r.target, {}).items():
                if m in col:
                    gated[i, col[m]] = q
        gate_kw["gate_quality"] = gated
        report["gate_reporters"] = sorted(gate_reporters)
        report["outcomes_gated"] = int(np.isfinite(gated).any(axis=1).sum())
    from_base = [m in base.models for m in models]
    unseen = unseen_by(bundle, served_name if champion is served else base_router, [r.first_judged_ms for r in used])
    report["outcomes_unseen_by_champion"] = len(used) if unseen is None else int(unseen.sum())
    base_q = np.full_like(quality, np.nan)
    base_q[:, : len(base.models)] = base.qualities_of(emb)
    result = adapt_qualities(
        emb,
        lengths,
        quality,
        base_q,
        models,
        from_base,
        _champion_qualities(champion, emb, lengths),
        champion.models,
        np.asarray([r.time_ms for r in used], dtype=np.int64),
        margin=DEFAULT_QUALITY_MARGIN if margin is None else margin,
        order_margin=DEFAULT_ORDER_MARGIN if order_margin is None else order_margin,
        logged=logged_choices(used, models),
        routing_margin=DEFAULT_ROUTING_MARGIN if routing_margin is None else routing_margin,
        unseen=unseen,
        splits=splits,
        min_outcomes=min_outcomes,
        seed=seed,
        **gate_kw,
    )
    heads = result.heads
    report["gate"] = result.decision.to_dict()
    report["heads"] = heads.summary()
    candidate_version = None
    if result.accepted:
        recent = store.recent_decisions(limit=CALIBRATION_PROMPTS, callers=callers)
        # each distinct prompt once (`distinct_prompts`: a hot prompt repeated thousands of times would
        # take every share it covers to its own score)
        cal_emb, cal_len, cal_kept = embed_rows(bundle, [recent[i] for i in distinct_prompts(recent)])
        if len(cal_kept) < MIN_OUTCOMES:  # too little recent traffic: calibrate on the judged prompts
            once = distinct_prompts(used)
            cal_emb, cal_len = emb[once], lengths[once]
        cal_q = heads.predict(cal_emb, cal_len, _base_columns(base, heads.models, cal_emb))
        pair = bundle.manifest.default_pair
        s, w = heads.models.index(pair.strong), heads.models.index(pair.weak)
        cal_scores = np.clip((cal_q[:, s] - cal_q[:, w] + 1.0) / 2.0, 0.0, 1.0)
        times = [r.time_ms for r in used]
        span = OutcomeSpan(KIND, len(used), lineage_time(min(times)), lineage_time(max(times)))
        with writing_candidate(out_dir, report, lambda: record(False, None)):
            manifest = write_quality_bundle(
                bundle_dir,
                out_dir,
                heads,
                base_router,
                span,
                cal_scores,
                overwrite=overwrite,
                replace=True,
                router=router,
                tenant=tenant,
            )
            if sign_key is not None:  # before the run is recorded as accepted: never an unsigned one
                sign_bundle(out_dir, sign_key)
        candidate_version = manifest.bundle_version
        report["calibration_prompts"] = int(cal_scores.size)
    record(result.accepted, candidate_version)
    return dataclasses.replace(
        AdaptRun(result.accepted, KIND, len(used), bundle.version, candidate_version), report=report
    )


def _base_columns(base: QualityRouter, models: Sequence[str], emb: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The base router's qualities in `models` order (0 for a model it does not predict: not read)."""
    q = base.qualities_of(emb)
    out = np.zeros((emb.shape[0], len(models)))
    for j, m in enumerate(models):
        if m in base.models:
            out[:, j] = q[:, base.models.index(m)]
    return out
