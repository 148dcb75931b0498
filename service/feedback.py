"""Feedback on the wire <-> the outcome store's records.

`outcomes_of(report, i, pair, reporter=tenant)` turns one OutcomeReport into the store's Outcomes (a
paired report is two: one per model), recorded as the caller's tenant's, or raises OutcomeError naming
the field (`outcomes[3].paired.strong_quality: must be in [0, 1] (got 1.5)`). `item_status(verdicts, i)`
folds the store's verdicts on one report's outcomes into its ItemStatus: the worst of them decides (a
conflict, an unknown id, an id not written yet), and a report whose outcomes were all stored before
answers OK with reason DUPLICATE. `decision_of_*` build the records of the decisions a Score or Route
answer made.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmroute.outcomes.records import Decision, Outcome, OutcomeError, OutcomeKind, Verdict, prompt_sha256
from lmroute.service.batch_queue import ItemResult
from lmroute.service.errors import Code, ServiceError, echo
from lmroute.service.prompts import prompt_text
from lmroute.service.scheduler import prompt_problem
from lmroute.service.scorer_api import Catalog
from lmroute.v1 import router_pb2

__all__ = [
    "FEEDBACK_RESULTS",
    "REFUSED",
    "decision_of_route",
    "decision_of_score",
    "item_status",
    "outcomes_of",
    "result_of",
]

# what became of one reported outcome, as the metrics count it per reporting tenant (`result_of`)
FEEDBACK_RESULTS = (
    "stored",
    "duplicate",
    "conflict",
    "not_found",
    "not_yet",
    "no_model",
    "other_tenant",
    "invalid",
    "refused",
)
REFUSED = FEEDBACK_RESULTS.index("refused")  # the whole call refused (past feedback_rate, the store busy or failing)
_RESULT_OF_REASON = {
    "DUPLICATE": "duplicate",
    "OUTCOME_CONFLICT": "conflict",
    "DECISION_NOT_FOUND": "not_found",
    "DECISION_NOT_RECORDED_YET": "not_yet",
    "MODEL_REQUIRED": "no_model",
    "DECISION_OF_ANOTHER_TENANT": "other_tenant",
}

_PREFERENCE = {
    router_pb2.PREFERENCE_STRONG: (1.0, 0.0),
    router_pb2.PREFERENCE_WEAK: (0.0, 1.0),
    router_pb2.PREFERENCE_TIE: (0.5, 0.5),
}


def outcomes_of(
    report: router_pb2.OutcomeReport,
    i: int,
    strong: str,
    weak: str,
    *,
    reporter: str = "",
    max_prompt_chars: int | None = None,
) -> list[Outcome]:
    """The store's outcomes for `report` (outcomes[i] of the call); OutcomeError naming the field.
    `strong` / `weak`: the pair paired and preference outcomes by prompt are about (by decision id, the
    store takes the decision's own pair); `reporter`: the caller's tenant;
    `max_prompt_chars`: the longest prompt an outcome by prompt may name (what Score takes)."""
    where = f"outcomes[{i}]"
    target = report.WhichOneof("target")
    decision_id: str | None = None
    text: str | None = None
    if target == "decision_id":
        decision_id = report.decision_id
    elif target == "prompt":
        got = prompt_text(report.prompt, f"{where}.prompt")
        if isinstance(got, ServiceError):
            raise OutcomeError(got.message)
        if max_prompt_chars is not None and (problem := prompt_problem(f"{where}.prompt", got, max_prompt_chars)):
            raise OutcomeError(problem.message)
        text = got
    else:
        raise OutcomeError(f"{where}: set decision_id or prompt")
    if report.observed_unix_ms < 0:
        raise OutcomeError(f"{where}.observed_unix_ms: must be >= 0 (got {report.observed_unix_ms})")
    observed = report.observed_unix_ms or None

    def make(kind: OutcomeKind, model: str, quality: float, field: str | None = None, side: str = "") -> Outcome:
        if field is not None and not 0.0 <= quality <= 1.0:  # also refuses NaN
            raise OutcomeError(f"{where}.{field}: must be in [0, 1] (got {quality!r})")
        return Outcome(
            kind,
            model,
            quality,
            decision_id=decision_id,
            prompt_text=text,
            source=report.source,
            observed_ms=observed,
            reporter=reporter,
            side=side,
        )

    kind = report.WhichOneof("outcome")
    out: list[Outcome]
    if kind == "paired":
        out = [
            make(OutcomeKind.PAIRED, strong, report.paired.strong_quality, "paired.strong_quality", "strong"),
            make(OutcomeKind.PAIRED, weak, report.paired.weak_quality, "paired.weak_quality", "weak"),
        ]
    elif kind == "preference":
        if report.preference not in _PREFERENCE:
            raise OutcomeError(f"{where}.preference: must be STRONG, WEAK or TIE (got {report.preference})")
        q_strong, q_weak = _PREFERENCE[report.preference]
        out = [
            make(OutcomeKind.PREFERENCE, strong, q_strong, side="strong"),
            make(OutcomeKind.PREFERENCE, weak, q_weak, side="weak"),
        ]
    elif kind == "single":
        if not report.single.model and decision_id is None:
            raise OutcomeError(f"{where}.single.model: required for an outcome by prompt")
        out = [make(OutcomeKind.SINGLE, report.single.model, report.single.quality, "single.quality")]
    elif kind == "qualities":
        if not report.qualities.qualities:
            raise OutcomeError(f"{where}.qualities: at least one model required")
        seen: set[str] = set()
        out = []
        for j, q in enumerate(report.qualities.qualities):
            if not q.model:
                raise OutcomeError(f"{where}.qualities.qualities[{j}].model: required")
            if q.model in seen:
                raise OutcomeError(f"{where}.qualities.qualities[{j}].model: {echo(q.model)} given twice")
            seen.add(q.model)
            out.append(make(OutcomeKind.SCORES, q.model, q.quality, f"qualities.qualities[{j}].quality"))
    else:
        raise OutcomeError(f"{where}: set one of paired, preference, single, qualities")
    for o in out:
        o.check(where)
    return out


def item_status(
    verdicts: Sequence[Verdict], i: int, report: router_pb2.OutcomeReport, models: Sequence[str] = ()
) -> router_pb2.ItemStatus:
    """outcomes[i]'s status from the verdicts on its outcomes (see the module docstring); `models`: the
    model of each of them, in order (named when some conflict and others were stored)."""
    where = f"outcomes[{i}]"
    if Verdict.CONFLICT in verdicts:
        clash = [m for m, v in zip(models, verdicts, strict=False) if v is Verdict.CONFLICT and m]
        stored = [m for m, v in zip(models, verdicts, strict=False) if v is Verdict.STORED and m]
        which = f" (model {', '.join(map(echo, clash))})" if clash else ""
        also = f"; its other values were stored (model {', '.join(map(echo, stored))})" if stored else ""
        return router_pb2.ItemStatus(
            code=Code.ALREADY_EXISTS,
            reason="OUTCOME_CONFLICT",
            message=f"{where}: another value is stored for this decision (or prompt), kind, model{which} and "
            f"source {echo(report.source)} by this tenant{also}; a stored value is not replaced (another judge's "
            "verdict goes under another source, and adaptation averages the sources)",
        )
    if Verdict.OTHER_TENANT in verdicts:
        return router_pb2.ItemStatus(
            code=Code.PERMISSION_DENIED,
            reason="DECISION_OF_ANOTHER_TENANT",
            message=f"{where}.decision_id: decision {echo(report.decision_id)} was made for another caller; "
            "this server takes a tenant's outcomes on its own decisions only",
        )
    if Verdict.NOT_FOUND in verdicts:
        return router_pb2.ItemStatus(
            code=Code.NOT_FOUND,
            reason="DECISION_NOT_FOUND",
            message=f"{where}.decision_id: no decision {echo(report.decision_id)} in the outcome store",
        )
    if Verdict.NOT_YET in verdicts:
        return router_pb2.ItemStatus(
            code=Code.UNAVAILABLE,
            reason="DECISION_NOT_RECORDED_YET",
            message=f"{where}.decision_id: decision {echo(report.decision_id)} is not recorded yet; retry shortly",
        )
    if Verdict.NO_MODEL in verdicts:
        return router_pb2.ItemStatus(
            code=Code.INVALID_ARGUMENT,
            reason="MODEL_REQUIRED",
            message=f"{where}.single.model: required: decision {echo(report.decision_id)} chose no model "
            "(a Score decision)",
        )
    if all(v is Verdict.DUPLICATE for v in verdicts):
        return router_pb2.ItemStatus(code=Code.OK, reason="DUPLICATE")
    return router_pb2.ItemStatus(code=Code.OK)


def result_of(status: router_pb2.ItemStatus) -> int:
    """The index in FEEDBACK_RESULTS of a reported outcome's status (any other failure: invalid)."""
    default = "stored" if status.code == Code.OK else "invalid"
    return FEEDBACK_RESULTS.index(_RESULT_OF_REASON.get(status.reason, default))


def decision_of_score(
    decision_id: str, now_ms: int, text: str, out: ItemResult, catalog: Catalog, *, caller: str = ""
) -> Decision:
    """The record of one scored prompt of a Score answer; `caller`: the calling tenant."""
    return Decision(kind="score", **_scored_prompt(decision_id, now_ms, text, out, catalog, caller))


def decision_of_route(
    decision_id: str,
    now_ms: int,
    text: str,
    out: ItemResult,
    catalog: Catalog,
    *,
    router: str,
    threshold: float | None,
    chosen_model: str,
    propensity: float,
    tenant: str = "",
    policy: str = "",
    choice: str = "",
    caller: str = "",
) -> Decision:
    """The record of a Route answer: a scored prompt plus the router, threshold (None among candidates),
    choice and propensity; `choice`: among candidates, the models, qualities and costs it chose from."""
    return Decision(
        kind="route",
        router=router,
        threshold=threshold,
        chosen_model=chosen_model,
        propensity=propensity,
        tenant=tenant,
        policy=policy,
        choice=choice,
        **_scored_prompt(decision_id, now_ms, text, out, catalog, caller),
    )


def _scored_prompt(
    decision_id: str, now_ms: int, text: str, out: ItemResult, catalog: Catalog, caller: str
) -> dict[str, Any]:
    """The fields every decision record of a scored prompt has."""
    return {
        "decision_id": decision_id,
        "time_ms": now_ms,
        "bundle_version": out.version or catalog.version,
        "scores": dict(out.scores),
        "strong_model": catalog.strong_model,
        "weak_model": catalog.weak_model,
        "prompt_sha256": prompt_sha256(text),
        "n_tokens": out.n_tokens,
        "encoder_id": catalog.encoder_id if out.embedding is not None else "",
        "prompt_text": text,
        "prompt_chars": len(text),
        "embedding": out.embedding,
        "caller": caller,
    }
