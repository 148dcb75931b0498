"""The OpenAI front's names for routing among N models: which rule a request's `model` asks for.

With models named in the upstreams file (lmroute.service.upstreams, `models`), a request whose `model`
is one of these is routed among all of them by the bundle's default quality router (docs/MODELS.md), then
forwarded to the chosen model's endpoint:

    models                 the caller's tenant's live spend target chooses (--spend-targets)
    models-cost-<w>        maximise predicted quality - w x the cost of 1,000 such requests in USD (w >= 0)
    models-margin-<m>      the cheapest model predicted within m of the best one (m in [0, 1])
    models-floor-<q>       the cheapest model predicted at or above quality q (q in [0, 1]), else the best

The rules are those of the gRPC Route call's ModelPolicy (cost_weight, quality_margin, quality_floor);
each candidate's price is the models file's (`--models-file`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from lmroute.service.errors import InvalidArgument, echo
from lmroute.v1 import router_pb2

__all__ = [
    "DECIMAL",
    "MODELS_FORMS",
    "MODELS_NAME",
    "ModelsAsk",
    "is_models_name",
    "parse_models_name",
    "read_decimal",
]

MODELS_NAME = "models"
MODELS_FORMS = "models, models-cost-<weight>, models-margin-<margin> or models-floor-<quality>"
_RULES = {"cost": "cost_weight", "margin": "quality_margin", "floor": "quality_floor"}
# a number in a model name: ASCII digits only (float() also takes other scripts' digits, `_`, inf and nan);
# the front's router-<router>-<threshold> names read theirs with it too
DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class ModelsAsk:
    """A request's ask to route among the configured models: a ModelPolicy rule and its value, or none
    (the tenant's spend target)."""

    rule: str = ""  # a ModelPolicy field: cost_weight, quality_margin, quality_floor; "" = the spend target
    value: float = 0.0

    def request(self, prompt: router_pb2.Prompt, models: Sequence[str]) -> router_pb2.RouteRequest:
        """The Route call among `models` (each priced by the models file) by the bundle's default quality
        router."""
        req = router_pb2.RouteRequest(prompt=prompt, candidates=[router_pb2.Candidate(model=m) for m in models])
        if self.rule:
            setattr(req.model_policy, self.rule, self.value)
        return req


def is_models_name(name: object) -> bool:
    """Whether a request's `model` asks to route among the configured models."""
    return isinstance(name, str) and (name == MODELS_NAME or name.startswith(f"{MODELS_NAME}-"))


def parse_models_name(name: str) -> ModelsAsk:
    """The ModelsAsk of a `models...` name; InvalidArgument naming the model and what is wrong."""
    if name == MODELS_NAME:
        return ModelsAsk()
    rule, _, value = name[len(MODELS_NAME) + 1 :].partition("-")
    if rule not in _RULES:
        raise InvalidArgument(
            f"model: unknown rule {echo(rule)} in {echo(name)}; expected {MODELS_FORMS}", reason="BAD_MODEL"
        )
    return ModelsAsk(_RULES[rule], read_decimal(value, rule, name, math.inf if rule == "cost" else 1.0))


def read_decimal(value: str, what: str, name: str, top: float = 1.0) -> float:
    """`value`, the number `what` that the model name `name` carries, in [0, top] (top inf: >= 0, finite);
    InvalidArgument naming it as written: BAD_MODEL for what is not an ASCII decimal, else OUT_OF_RANGE."""
    bounds = "must be >= 0 and finite" if top == math.inf else f"must be in [0, {top:g}]"
    written = value if len(value) <= 32 else echo(value)
    if value.startswith("-") and DECIMAL.fullmatch(value[1:]):
        raise InvalidArgument(f"model: {what} in {echo(name)} {bounds} (got {written})", reason="OUT_OF_RANGE")
    if not DECIMAL.fullmatch(value):
        why = f"model: {what} {echo(value)} in {echo(name)} is not a number (ASCII digits, e.g. 0.05)"
        raise InvalidArgument(why, reason="BAD_MODEL")
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= top):
        raise InvalidArgument(f"model: {what} in {echo(name)} {bounds} (got {written})", reason="OUT_OF_RANGE")
    return number
