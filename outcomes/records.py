"""What the outcome store holds: routing decisions, the outcomes reported for them, and the verdict on
each reported outcome.

A `Decision` is one routing decision as the server made it (a Route answer, or one scored prompt of a
Score answer): its id, time, the bundle and scores behind it, the choice and its propensity, and the
prompt, as text and/or as its embedding in the bundle encoder's space (`encoder_id`). With the privacy
switch the text is not kept: only its SHA-256 and the embedding.

An `Outcome` is one model's quality on one prompt, in [0, 1], joined to a decision by its id or to a
prompt by its text. The kinds a deployment reports:

    paired      both models of the pair judged on the prompt (e.g. an LLM judge run on a sample):
                two outcomes, one per model
    preference  a verdict between the pair (strong better / weak better / tie), stored as qualities
                1 / 0 / 0.5 of each model
    single      only the model that answered (task success, a thumbs signal, a judge score of one answer)
    scores      per-model scores of several models

Each outcome records its reporter: the tenant the caller spoke for when it sent the outcome (the tenant
its token is bound to, else the one it named; "" for a caller that named none). The server sets it from
the call, never from the message, so adaptation can learn from the reporters a deployment trusts
(`OutcomeStore.labeled_prompts(reporters=...)`).

Outcomes are keyed by (target, kind, model, source, reporter): reporting the same one twice is a no-op
(`Verdict.DUPLICATE`), reporting another value for the same key is refused (`Verdict.CONFLICT`). One
reporter's outcomes never collide with another's, so no tenant can pre-empt or block what another
reports about the same prompt.
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "TENANT_RE",
    "UNNAMED_REPORTER",
    "Decision",
    "LabeledPrompt",
    "Outcome",
    "OutcomeError",
    "OutcomeKind",
    "SIDES",
    "TargetChange",
    "TenantFilters",
    "Verdict",
    "add_reporters_arg",
    "prompt_sha256",
    "report_json",
    "reporters_named",
    "tenant_filters",
]


SIDES = ("strong", "weak")  # the sides of a pair, in the order paired outcomes name them


class OutcomeError(ValueError):
    """An outcome that cannot be stored as given; the message names the field, e.g.
    ``outcomes[2].quality: must be in [0, 1] (got 1.5)``."""


class OutcomeKind(enum.Enum):
    """How an outcome was observed (see the module docstring)."""

    PAIRED = "paired"
    PREFERENCE = "preference"
    SINGLE = "single"
    SCORES = "scores"


class Verdict(enum.Enum):
    """What the store did with one reported outcome."""

    STORED = "stored"  # new, durable
    DUPLICATE = "duplicate"  # the same value was stored before: nothing changed
    CONFLICT = "conflict"  # another value is stored under the same key: refused
    NOT_FOUND = "not_found"  # no decision with that id
    NOT_YET = "not_yet"  # no decision with that id yet, but the id is recent: it may still be recorded
    NO_MODEL = "no_model"  # a single outcome that names no model, for a decision that chose none (Score)
    OTHER_TENANT = "other_tenant"  # a tenant's outcome on another caller's decision (own_decisions_only)


TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_MODEL_CHARS = 256  # an outcome's model name (a key of the store and of adaptation's heads)
"""A tenant name, wherever one is taken: tokens bound to tenants, targets, callers and reporters."""


UNNAMED_REPORTER = "(none)"
DEFAULT_ROUTER = "(default)"
"""In `--for-tenant`: the bundle's default router (no tenant's own)."""
"""How a command line names the reporter "" (a caller that named no tenant), as the metrics label it."""


def add_reporters_arg(parser: argparse.ArgumentParser) -> None:
    """The `--reporters`, `--gate-reporters`, `--callers` and `--for-tenant` flags of the commands that
    adapt from a store (parsed by `tenant_filters`)."""
    parser.add_argument(
        "--reporters",
        action="append",
        default=None,
        metavar="NAMES",
        help="learn only from the outcomes these tenants reported (comma-separated, repeatable; "
        f"{UNNAMED_REPORTER} = callers naming no tenant); default: every reporter's",
    )
    parser.add_argument(
        "--gate-reporters",
        action="append",
        default=None,
        metavar="NAMES",
        help="the gate judges the candidate on these tenants' outcomes alone (the prompts they judged), while "
        "it learns from all of --reporters'; default: the gate judges by what it learns from",
    )
    parser.add_argument(
        "--callers",
        action="append",
        default=None,
        metavar="NAMES",
        help="learn from and gate on the outcomes of these tenants' calls alone (decisions made for them, "
        f"joined by decision id; {UNNAMED_REPORTER} = calls naming no tenant): a router adapted to one "
        "tenant's traffic; default: every call's and every outcome by prompt text",
    )
    parser.add_argument(
        "--for-tenant",
        default="",
        metavar="NAME",
        help="the router learnt is this tenant's own, adapted-NAME: learnt from and gated on its calls' outcomes "
        "alone (--callers NAME), it becomes the router of its calls that name none (the bundle's tenant_routers; "
        "with --kind qualities adapted_quality-NAME, for its calls among candidates) while the other tenants keep "
        f"theirs and the bundle's defaults stay; lmroute-adapt takes several, comma-separated ({DEFAULT_ROUTER} = "
        "the bundle's default router), and adapts them in turn each round",
    )


@dataclass(frozen=True)
class TenantFilters:
    """Whose outcomes an adaptation reads (`add_reporters_arg`'s flags, parsed): None = everyone's; and
    the tenant whose own router it learns ("" = the bundle's default router)."""

    reporters: frozenset[str] | None
    gate_reporters: frozenset[str] | None
    callers: frozenset[str] | None
    tenants: tuple[str, ...] = ("",)  # in turn; "" = the bundle's default router

    @property
    def tenant(self) -> str:
        """The one tenant of a command that adapts one router."""
        return self.tenants[0]


def tenant_filters(args: argparse.Namespace, *, several: bool = False) -> TenantFilters:
    """The `--reporters`, `--gate-reporters`, `--callers` and `--for-tenant` of a parsed command line
    (`several`: more than one `--for-tenant` name allowed); OutcomeError naming the flag and what is
    wrong."""
    names = [n.strip() for n in args.for_tenant.split(",")] if args.for_tenant else [DEFAULT_ROUTER]
    for name in names:
        if name != DEFAULT_ROUTER and not TENANT_RE.match(name):
            raise OutcomeError(f"for_tenant: {name!r} is not a tenant name (1-64 of A-Z a-z 0-9 . _ -)")
    if len(set(names)) != len(names):
        raise OutcomeError(f"for_tenant: {args.for_tenant!r} names a router twice")
    if len(names) > 1 and not several:
        raise OutcomeError(f"for_tenant: {args.for_tenant!r}: one router a run (lmroute-adapt takes several)")
    return TenantFilters(
        reporters_named(args.reporters),
        reporters_named(args.gate_reporters, "gate_reporters"),
        reporters_named(args.callers, "callers"),
        tuple("" if n == DEFAULT_ROUTER else n for n in names),
    )


def reporters_named(values: Sequence[str] | None, setting: str = "reporters") -> frozenset[str] | None:
    """The tenants a command line lists (`--reporters a,b --reporters (none)`: each value split at
    commas, UNNAMED_REPORTER for ""), or None (every tenant) when it lists none; OutcomeError naming
    `setting` and a name that is not a tenant name."""
    if not values:
        return None
    out: set[str] = set()
    for value in values:
        for name in (n.strip() for n in value.split(",")):
            if name == UNNAMED_REPORTER:
                out.add("")
            elif TENANT_RE.match(name):
                out.add(name)
            else:
                raise OutcomeError(
                    f"{setting}: {name!r} is not a tenant name (1-64 of [A-Za-z0-9._-]) or {UNNAMED_REPORTER}"
                )
    return frozenset(out)


def report_json(data: object, **dumps: Any) -> str:
    """`data` (a report: dicts, lists, numbers, strings) as standard JSON text, NaN and infinities as null
    (a gate that measured nothing reports NaN; `json.dumps` would write the bare NaN no JSON parser but
    Python's reads). `dumps`: json.dumps's keyword arguments (indent, sort_keys)."""
    return json.dumps(_finite(data), allow_nan=False, **dumps)


def _finite(data: object) -> object:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def prompt_sha256(text: str) -> str:
    """The hex SHA-256 of a prompt's UTF-8 text: how the store names a prompt without keeping it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_unit(value: float, where: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise OutcomeError(f"{where}: must be in [0, 1] (got {value!r})")


@dataclass(frozen=True)
class Decision:
    """One routing decision as recorded (see the module docstring)."""

    decision_id: str
    time_ms: int
    kind: str  # "route" or "score"
    bundle_version: str
    scores: Mapping[str, float]  # router -> score
    strong_model: str
    weak_model: str
    prompt_sha256: str
    n_tokens: int
    encoder_id: str = ""
    prompt_chars: int | None = None  # characters of the prompt text (kept with the privacy switch too)
    router: str = ""  # Route: the router that decided; Score: empty (every router is in `scores`)
    threshold: float | None = None  # Route only
    chosen_model: str | None = None  # Route only
    propensity: float | None = None  # Route only: probability the chosen model was chosen
    prompt_text: str | None = None  # None with the privacy switch
    embedding: npt.NDArray[np.float32] | None = field(default=None, compare=False, repr=False)
    tenant: str = ""  # Route only: the caller's tenant ("" when the server keeps no tenants)
    policy: str = ""  # Route only: "threshold", "strong_share", "target" (the tenant's share held live),
    # or among candidates: "cost_weight", "quality_margin", "quality_floor", "spend_target"
    choice: str = ""  # Route among candidates: JSON {"models", "qualities", "costs", "chosen"} (schema v4)
    caller: str = ""  # the tenant the call came from ("" none), whatever decided it (schema v7)


MAX_AHEAD_MS = 300_000
"""How far an outcome's observed_unix_ms may lie ahead of the clock of the process taking it (clock skew
between machines): adaptation orders outcomes by it and a bundle's lineage remembers the newest, so one
outcome stamped in the year 6429 left every later outcome 'seen' by the champion, and no round could judge."""


@dataclass(frozen=True)
class Outcome:
    """One model's quality on one prompt, joined to a decision (`decision_id`) or a prompt
    (`prompt_text`, or only `prompt_hash` with the privacy switch): exactly one of the two targets."""

    kind: OutcomeKind
    model: str  # "" only for a single outcome of a Route decision: the model the decision chose
    quality: float
    decision_id: str | None = None
    prompt_text: str | None = None
    prompt_hash: str | None = None
    source: str = ""  # who judged: "judge:gpt-4", "thumbs", "tests"; part of the key
    observed_ms: int | None = None  # when the outcome was observed; None = when it is stored
    reporter: str = ""  # the tenant the reporting caller spoke for ("" none); part of the key
    # paired and preference outcomes: which side of the pair `model` is ("strong", "weak"); by decision id the
    # store takes that side's model from the decision (its pair), so a report after a swap to another pair
    # is about the models that were routed between
    side: str = ""

    def check(self, where: str = "outcome") -> None:
        """OutcomeError naming the field when this outcome cannot be stored."""
        targets = sum(x is not None for x in (self.decision_id, self.prompt_text))
        if targets != 1:
            raise OutcomeError(f"{where}: exactly one of decision_id and prompt must be set (got {targets})")
        if self.decision_id is not None and (
            len(self.decision_id) != 32 or any(c not in "0123456789abcdef" for c in self.decision_id)
        ):
            raise OutcomeError(f"{where}.decision_id: not a decision id (32 lowercase hex characters)")
        if self.prompt_text is not None and not self.prompt_text.strip():
            raise OutcomeError(f"{where}.prompt: empty prompt")
        if not self.model and not (self.kind is OutcomeKind.SINGLE and self.decision_id is not None):
            raise OutcomeError(f"{where}.model: required")
        if self.model and (
            len(self.model) > MAX_MODEL_CHARS or self.model != self.model.strip() or not self.model.isprintable()
        ):
            raise OutcomeError(
                f"{where}.model: a model name is 1-{MAX_MODEL_CHARS} printable characters, no space around them "
                f"(got {self.model[:80]!r}{'...' if len(self.model) > 80 else ''})"
            )
        _check_unit(self.quality, f"{where}.quality")
        if self.side and (self.side not in SIDES or self.kind not in (OutcomeKind.PAIRED, OutcomeKind.PREFERENCE)):
            raise OutcomeError(f"{where}.side: {self.side!r} is not a side of a paired or preference outcome")
        if len(self.source) > 128:
            raise OutcomeError(f"{where}.source: at most 128 characters (got {len(self.source)})")
        if self.observed_ms is not None and not 0 <= self.observed_ms < 1 << 48:
            raise OutcomeError(f"{where}.observed_unix_ms: must be Unix milliseconds (got {self.observed_ms})")
        if self.observed_ms is not None and self.observed_ms > (now := int(time.time() * 1000)) + MAX_AHEAD_MS:
            raise OutcomeError(
                f"{where}.observed_unix_ms: {self.observed_ms} is {(self.observed_ms - now) / 1000:,.0f} s ahead of "
                f"this server's clock (at most {MAX_AHEAD_MS // 1000} s: an outcome is observed, not foreseen)"
            )
        if self.reporter and not TENANT_RE.match(self.reporter):
            raise OutcomeError(f"{where}.reporter: must be 1-64 of [A-Za-z0-9._-] or empty (got {self.reporter!r})")

    @property
    def target(self) -> str:
        """The key part naming what the outcome is about: ``d:<decision id>`` or ``p:<prompt sha256>``."""
        if self.decision_id is not None:
            return "d:" + self.decision_id
        if self.prompt_hash is not None:
            return "p:" + self.prompt_hash
        if self.prompt_text is not None:
            return "p:" + prompt_sha256(self.prompt_text)
        raise OutcomeError("outcome: no target")


@dataclass(frozen=True)
class LabeledPrompt:
    """Everything the store knows about one judged prompt, for adaptation: its outcomes by model and the
    decision it was judged on (when it came with a decision id, or a decision was recorded for the same
    prompt text)."""

    target: str
    time_ms: int  # when it was judged: its latest outcome's observed time (what a time split orders by)
    prompt_sha256: str
    kinds: frozenset[OutcomeKind]
    qualities: Mapping[str, float]  # model -> quality (the mean where several sources reported one)
    prompt_text: str | None = None
    encoder_id: str = ""
    n_tokens: int | None = None
    prompt_chars: int | None = None
    decision_id: str | None = None
    decided_ms: int | None = None  # when its decision was made (joined by id)
    bundle_version: str = ""
    chosen_model: str | None = None
    propensity: float | None = None
    scores: Mapping[str, float] = field(default_factory=dict)
    threshold: float | None = None
    embedding: npt.NDArray[np.float32] | None = field(default=None, compare=False, repr=False)
    choice: str = ""  # its decision's `choice` JSON (Route among candidates), "" for none
    caller: str = ""  # its decision's caller tenant (joined by id), "" for none
    first_ms: int | None = None  # its oldest outcome's observed time (None: time_ms, one outcome's)

    @property
    def first_judged_ms(self) -> int:
        """When it was first judged: a router fitted on outcomes up to a time after this saw the prompt,
        however many opinions came later."""
        return self.time_ms if self.first_ms is None else self.first_ms


@dataclass(frozen=True)
class TargetChange:
    """One live change of a tenant's target (AdminService.SetTargets), as the store keeps it so that a
    restart and every replica sharing the store hold it too."""

    tenant: str
    target: str  # "strong_share" or "spend" (USD per 1,000 requests)
    value: float | None  # the new target; None = the target removed
    time_ms: int = 0  # when it was made; 0 = when it is stored

    TARGETS = ("strong_share", "spend")
