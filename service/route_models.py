"""Route among N priced candidates: the request's candidates checked against the router and the prices,
and the choice made by the request's ModelPolicy (lmroute.bundle.model_choice). No gRPC calls here:
the servicer hands in the request's fields and the router's predicted qualities.

A candidate's prices come from the request, or, where the request leaves one at 0, from the models file
(`--models-file`, lmroute.service.model_prices); its expected answer length from the models file, else
`expected_output_tokens`. Errors are InvalidArgument naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lmroute.bundle.model_choice import choose, runner_up
from lmroute.service.errors import InvalidArgument, PermissionDenied, echo
from lmroute.service.model_prices import ModelPrice, expected_cost_usd, price_problem, tokens_of_chars
from lmroute.service.scorer_api import RouterDescription
from lmroute.v1 import router_pb2

__all__ = [
    "MAX_CANDIDATES",
    "CandidateSet",
    "ModelDecision",
    "check_candidates",
    "check_policy",
    "decide",
    "estimates",
]

MAX_CANDIDATES = 64


@dataclass(frozen=True)
class CandidateSet:
    """The request's candidates: names, their columns in the router's predicted qualities, and prices."""

    models: tuple[str, ...]
    columns: tuple[int, ...]
    prices: tuple[ModelPrice, ...]


@dataclass(frozen=True)
class ModelDecision:
    """The chosen candidate and the runner-up (index into the candidate set; -1: none), with every
    candidate's predicted quality and expected cost."""

    chosen: int
    runner_up: int
    qualities: tuple[float, ...]
    costs: tuple[float, ...]

    def choice_json(self, cands: CandidateSet, target_per_1k: float | None = None) -> str:
        """The decision as the outcome store keeps it (Decision.choice); `target_per_1k`: the spend target
        it was made at, if any."""
        made: dict[str, object] = {
            "models": list(cands.models),
            "qualities": self.qualities,
            "costs": self.costs,
            "chosen": self.chosen,
        }
        if target_per_1k is not None:
            made["target_per_1k"] = target_per_1k
        return json.dumps(made)

    def estimate(self, cands: CandidateSet, i: int) -> router_pb2.ModelEstimate:
        return router_pb2.ModelEstimate(
            model=cands.models[i], predicted_quality=self.qualities[i], expected_cost_usd=self.costs[i]
        )


def check_policy(policy: router_pb2.ModelPolicy) -> tuple[str, float]:
    """(rule name, value) of a ModelPolicy; InvalidArgument naming the field when unset or out of range."""
    rule = policy.WhichOneof("rule")
    if rule is None:
        raise InvalidArgument("model_policy: set cost_weight, quality_margin or quality_floor", reason="MISSING_POLICY")
    value = float(getattr(policy, rule))
    high = math.inf if rule == "cost_weight" else 1.0
    if not (math.isfinite(value) and 0.0 <= value <= high):
        bound = ">= 0" if rule == "cost_weight" else "in [0, 1]"
        raise InvalidArgument(f"model_policy.{rule}: must be {bound} (got {value})", reason="OUT_OF_RANGE")
    return rule, value


def check_candidates(
    candidates: Sequence[router_pb2.Candidate],
    router: RouterDescription,
    prices: Mapping[str, ModelPrice],
    *,
    binding_tenant: str | None = None,
) -> CandidateSet:
    """The candidates as a CandidateSet; InvalidArgument naming the first bad field. With
    `binding_tenant` (whose binding spend target decides the call: --binding-targets) every candidate is
    priced by the models file: PermissionDenied for one the file does not price, or priced otherwise by the
    call (a price of the caller's own would move what the budget counts)."""
    if not router.models:
        raise InvalidArgument(
            f"router: {echo(router.name)} ({router.kind}) predicts no per-model quality; route among "
            "candidates with a router of kind quality",
            reason="ROUTER_NOT_MULTI_MODEL",
        )
    n = len(candidates)
    if not 2 <= n <= MAX_CANDIDATES:
        raise InvalidArgument(
            f"candidates: {n} given (need 2 to {MAX_CANDIDATES})",
            reason="TOO_FEW_CANDIDATES" if n < 2 else "TOO_MANY_CANDIDATES",
        )
    models: list[str] = []
    columns: list[int] = []
    priced: list[ModelPrice] = []
    for i, c in enumerate(candidates):
        where = f"candidates[{i}]"
        if c.model not in router.models:
            raise InvalidArgument(
                f"{where}.model: {echo(c.model)} is not predicted by router {router.name} "
                f"(models: {', '.join(router.models)})",
                reason="UNKNOWN_MODEL",
            )
        if c.model in models:
            raise InvalidArgument(f"{where}.model: {c.model} given twice", reason="DUPLICATE_CANDIDATE")
        filed = prices.get(c.model)
        if binding_tenant is not None and filed is None:
            raise _binding(where, c.model, "the models file prices no such model", binding_tenant)
        pair = []
        for field in ("input_price_per_mtok", "output_price_per_mtok"):
            value = float(getattr(c, field))
            if (problem := price_problem(value)) is not None:
                raise InvalidArgument(f"{where}.{field}: {problem}", reason="OUT_OF_RANGE")
            if binding_tenant is not None and filed is not None and value:
                if value != (filed.input_per_mtok if field.startswith("input") else filed.output_per_mtok):
                    raise _binding(where, c.model, f"{field} differs from the models file's", binding_tenant)
            if value == 0.0:
                if filed is None:
                    raise InvalidArgument(
                        f"{where}.{field}: no price for {c.model} (give it, or list the model in the models file"
                        f"{_case_hint(c.model, prices)})",
                        reason="NO_PRICE",
                    )
                value = filed.input_per_mtok if field.startswith("input") else filed.output_per_mtok
            pair.append(value)
        models.append(c.model)
        columns.append(router.models.index(c.model))
        priced.append(ModelPrice(pair[0], pair[1], filed.output_tokens if filed else None))
    return CandidateSet(tuple(models), tuple(columns), tuple(priced))


def _binding(where: str, model: str, why: str, tenant: str) -> PermissionDenied:
    return PermissionDenied(
        f"{where}: {echo(model)}: {why}; the spend target of tenant {tenant} is binding (--binding-targets), "
        "counted at the models file's prices: send no prices of the call's own",
        reason="TARGET_IS_BINDING",
    )


def _case_hint(model: str, prices: Mapping[str, ModelPrice]) -> str:
    """What the models file holds under `model`'s name in other letter case, if anything."""
    near = sorted(name for name in prices if name.lower() == model.lower())
    return f"; it has {', '.join(near)}: names are case-sensitive" if near else ""


def estimates(
    cands: CandidateSet, qualities: np.ndarray, input_chars: int, default_output_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's predicted quality (from the router's qualities of the prompt, [n_models]) and
    expected cost of answering a prompt that sends the model `input_chars` characters, USD."""
    q = np.asarray(qualities, dtype=np.float64)[list(cands.columns)]
    n_in = tokens_of_chars(input_chars)
    c = np.array([expected_cost_usd(p, n_in, default_output_tokens) for p in cands.prices])
    return q, c


def decide(q: np.ndarray, c: np.ndarray, rule: str, value: float, chosen: int | None = None) -> ModelDecision:
    """Choose among the candidates by the rule at `value` (ModelPolicy units), or report `chosen` (a
    spend controller's pick at that cost weight) with the runner-up the rule gives without it."""
    # cost_weight weighs the cost of 1,000 such requests: lambda per USD is 1000 x the weight
    param = value * 1000.0 if rule == "cost_weight" else value
    if chosen is None:
        [chosen] = choose(rule, param, q[None, :], c[None, :])
    [second] = runner_up(rule, param, q[None, :], c[None, :], [chosen])
    return ModelDecision(int(chosen), int(second), tuple(q.tolist()), tuple(c.tolist()))
