"""RouterService servicer: wire messages <-> scheduler calls. No ONNX or NumPy here.

Each RPC validates its request (InvalidArgument naming the field), resolves the router names it asks
for against the loaded routers (NotFound naming the first unknown one; the only place names are
checked: the scheduler and the scorer take the resolved names as given), asks the scheduler, and builds
the response; every routing decision in it (a Route answer, each scored prompt) gets its own decision
id (lmroute.service.decisions). The size limits of a call (prompts, router names, turns per
conversation, characters in all) are checked first, from counts, before any prompt is extracted or any
name looked up. A caller's
string quoted in an error is cut (`errors.echo`). Whole-call errors (including a queue timeout or
deadline that hit every prompt of a call) are raised as ServiceError and turned into a gRPC status by
the interceptor (lmroute.service.interceptors); per-prompt errors, including a queue timeout of some
prompts of a Score call whose others were scored, go into PromptScores.status.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from lmroute.outcomes.records import Decision, Outcome, OutcomeError, Verdict
from lmroute.outcomes.store import CommitUnknown, failure_cause
from lmroute.outcomes.writer import StoreWriter, WriterFull
from lmroute.service.auth import AUTH_TENANT
from lmroute.service.batch_queue import ItemResult
from lmroute.service.decisions import new_decision_id
from lmroute.service.errors import (
    Code,
    DeadlineExpired,
    Draining,
    FeedbackRateExceeded,
    InvalidArgument,
    NoOutcomeStore,
    NotFound,
    NotReady,
    PermissionDenied,
    QueueTimeout,
    ServiceError,
    StoreUnavailable,
    echo,
    status_of,
)
from lmroute.service.exploration import Exploration, choose_among
from lmroute.service.feedback import (
    FEEDBACK_RESULTS,
    REFUSED,
    decision_of_route,
    decision_of_score,
    item_status,
    outcomes_of,
    result_of,
)
from lmroute.service.feedback_rate import FeedbackRate
from lmroute.service.logs import bind_call, debug_enabled
from lmroute.service.model_prices import ModelPrice
from lmroute.service.prompts import check_limits, input_text, prompt_text
from lmroute.service.route_models import check_candidates, check_policy, decide, estimates
from lmroute.service.scheduler import Scheduler
from lmroute.service.scorer_api import Catalog, RouterDescription
from lmroute.service.targets import DEFAULT_TENANT, TENANT_RE, TenantTargets
from lmroute.service.tenant_counts import TenantCounts
from lmroute.service.tracing import Tracing
from lmroute.v1 import router_pb2, router_pb2_grpc

__all__ = ["RouterServicer", "resolve_routers"]

_FEEDBACK_SLICE = 128  # outcomes of a Feedback call read (and answered) between two yields to the event loop


def _router_info(r: RouterDescription) -> router_pb2.RouterInfo:
    return router_pb2.RouterInfo(
        name=r.name,
        kind=r.kind,
        uses_encoder=r.uses_encoder,
        calibration_strong_share=list(r.calibration_strong_share),
        calibration_thresholds=list(r.calibration_thresholds),
        models=list(r.models),
    )


def resolve_routers(asked: Sequence[str], loaded: tuple[str, ...]) -> tuple[str, ...]:
    """The routers a Score call asks for: every loaded one when it names none, else the named ones, each
    once, in the order first named. NotFound naming the first name that is not loaded."""
    if not asked:
        return loaded
    for j, name in enumerate(asked):
        if name not in loaded:
            raise NotFound(f"routers[{j}]: unknown router {echo(name)} (loaded: {', '.join(loaded)})")
    return tuple(dict.fromkeys(asked))


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """Implements lmroute.v1.RouterService over a Scheduler attached once the bundle is ready."""

    def __init__(
        self,
        *,
        max_prompts_per_request: int,
        max_turns: int,
        max_request_chars: int,
        max_router_names: int,
        max_feedback_items: int = 1024,
        feedback_rate: float = 0.0,
        exploration: Exploration | None = None,
        targets: TenantTargets | None = None,
        binding_targets: bool = False,
        tenant_header: str = "x-lmroute-tenant",
        tenants: Sequence[str] = (),
        prices: Mapping[str, ModelPrice] | None = None,
        expected_output_tokens: int = 256,
        tracing: Tracing | None = None,
        metrics_tenants: int = 64,
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.max_prompts_per_request = max_prompts_per_request
        self.max_message_bytes = max_message_bytes  # the largest answer gRPC sends
        self.max_turns = max_turns
        self.max_request_chars = max_request_chars
        self.max_router_names = max_router_names
        self.max_feedback_items = max_feedback_items
        # each tenant's outcomes a second (lmroute.service.feedback_rate); None = no limit
        self.feedback_rate = (
            FeedbackRate(feedback_rate, max(max_feedback_items, math.ceil(feedback_rate))) if feedback_rate else None
        )
        self.store: StoreWriter | None = None  # the outcome store's writer; None = no store
        self.exploration = exploration or Exploration(0.0)
        self.targets = targets  # tenants' targets held live (AdminService.SetTargets changes them); None = none
        self.binding_targets = binding_targets  # a tenant with a target may not set its own policy
        self.tenant_header = tenant_header
        self.tenants = frozenset(tenants)  # the tenants a caller may name; empty = any well-formed name
        self.prices = dict(prices or {})  # the models file's prices, for candidates that give none
        self.expected_output_tokens = expected_output_tokens
        self.tracing = tracing  # stage spans of each call (lmroute.service.tracing); None = off
        # what became of each reported outcome, per reporting tenant (the metrics' tenant labels)
        self.feedback_counts = TenantCounts(metrics_tenants, events=FEEDBACK_RESULTS)
        self._rng = random.Random()  # seeded from the OS; flips need no reproducibility
        self.scheduler: Scheduler[Any] | None = None
        self.catalog: Catalog | None = None
        self.routers: tuple[str, ...] = ()  # the scorer's routers, in bundle order
        self.draining = False

    def attach(self, scheduler: Scheduler[Any], catalog: Catalog) -> None:
        """Start serving with this scheduler (called after load and warm-up, and by a hot swap)."""
        self.routers = scheduler.scorer.router_names
        self.catalog = catalog
        self.scheduler = scheduler
        if self.targets is not None:  # the share controllers follow the bundle now, not at their next call
            self.targets.reseed(catalog.routers, catalog.version)

    def attach_store(self, writer: StoreWriter) -> None:
        """Record decisions in, and take Feedback into, the outcome store behind `writer`."""
        self.store = writer

    def _record(self, decisions: list[Decision]) -> None:
        if self.store is not None and decisions:
            self.store.record(decisions)

    def _route_decision(
        self, text: str | ServiceError, out: ItemResult, catalog: Catalog, asked_tenant: str, **fields: Any
    ) -> str:
        """A Route answer's decision id, bound into the call's access line, with its record queued for the
        store when there is one (`fields`: decision_of_route's, the caller's tenant aside)."""
        now_ms = int(time.time() * 1000)
        decision_id = new_decision_id(now_ms)
        bind_call(decision_id=decision_id)
        if debug_enabled():  # what was decided, into the call's access line (never the prompt text)
            bind_call(
                router=fields["router"],
                score=out.scores[fields["router"]],
                threshold=fields["threshold"],
                chosen_model=fields["chosen_model"],
                propensity=fields["propensity"],
                policy=fields["policy"],
                tenant=fields["tenant"],
                n_tokens=out.n_tokens,
                truncated=out.truncated,
            )
        if self.store is not None and isinstance(text, str):
            self._record([decision_of_route(decision_id, now_ms, text, out, catalog, caller=asked_tenant, **fields)])
        return decision_id

    def _tenant(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's tenant (`tenant_named`) from its metadata (`tenant_header`)."""
        return self.tenant_named(self._named(context.invocation_metadata() or ()))

    def _named(self, metadata: Any) -> str:
        """The tenant a call's metadata names (`tenant_header`), "" for none."""
        for key, value in metadata:
            if key == self.tenant_header:
                return value if isinstance(value, str) else ""
        return ""

    def tenant_named(self, named: str) -> str:
        """The caller's tenant: the one its token is bound to (lmroute.service.auth), else `named` (what it
        names in its request metadata or headers), "" when it names none. InvalidArgument for a name that is
        not 1-64 of [A-Za-z0-9._-] (INVALID_TENANT: taking it as no name would count its calls as another
        tenant's without telling it), and with `tenants` listed for a name not listed (UNKNOWN_TENANT)."""
        bound = AUTH_TENANT.get()
        if bound is not None:
            bind_call(tenant=bound)  # into the call's access line
            return bound
        if (refused := self._name_refused(named)) is not None:
            raise refused
        if named:
            bind_call(tenant=named)
        return named

    def _name_refused(self, named: str) -> InvalidArgument | None:
        """Why a tenant name from the metadata is refused (`tenant_named`), None when it is taken."""
        if named and not TENANT_RE.match(named):
            return InvalidArgument(
                f"tenant {echo(named)} (named in {self.tenant_header}): not 1-64 of [A-Za-z0-9._-]",
                reason="INVALID_TENANT",
            )
        if self.tenants and named and named not in self.tenants:
            return InvalidArgument(
                f"tenant {echo(named)} (named in {self.tenant_header}): not one of the tenants this server "
                "honours (its --tenants list)",
                reason="UNKNOWN_TENANT",
            )
        return None

    async def _score_one(
        self, sched: Scheduler[Any], text: str | ServiceError, router: str, timeout_s: float | None, tenant: str
    ) -> ItemResult:
        """A Route call's prompt scored by `router` for `tenant` (its stage spans made when tracing); its
        error raised."""
        [out] = await sched.score([text], (router,), timeout_s=timeout_s, field="prompt", indexed=False, tenant=tenant)
        if self.tracing is not None:
            self.tracing.stages([out])
        if isinstance(out, ServiceError):
            raise out
        return out

    def _check_not_bound(self, asked_tenant: str, policy: str, *, spend: bool) -> None:
        """With binding targets: PermissionDenied for a call that sets its own `policy` while its tenant holds
        a target (a share target; with `spend`, a spend target)."""
        if not self.binding_targets or self.targets is None:
            return
        tenant = self.targets.tenant_of(asked_tenant, spend=spend)
        if tenant is not None:
            what = "spend" if spend else "share"
            holder = (
                f"tenant {echo(asked_tenant)} holds a {what} target"
                if asked_tenant == tenant
                else f"{'tenant ' + echo(asked_tenant) if asked_tenant else 'a call naming no tenant'} falls under the "
                f"{what} target of tenant {tenant}"
            )
            raise PermissionDenied(
                f"{policy}: {holder}, which this server makes binding (--binding-targets): send no "
                + ("model_policy" if spend else "threshold or strong_share"),
                reason="TARGET_IS_BINDING",
            )

    def router_for(self, tenant: str) -> str:
        """The router of `tenant`'s Route calls that name none: its own when the bundle has one, else the
        default router ("" for none, or before a bundle is attached)."""
        return self.catalog.router_for(tenant) if self.catalog is not None else ""

    def visible_routers(self) -> tuple[str, ...]:
        """The loaded routers the caller may see and use: all of them, but for a caller whose token is bound
        to a tenant, other tenants' own routers (`Catalog.others_routers`): they are adapted to another
        tenant's traffic and name it."""
        bound = AUTH_TENANT.get()
        if bound is None or self.catalog is None:
            return self.routers
        hidden = self.catalog.others_routers(bound)
        return tuple(r for r in self.routers if r not in hidden) if hidden else self.routers

    def _check_router_and_prompt(self, request: router_pb2.RouteRequest) -> None:
        """NotFound for a router that is not loaded (or not the caller's to see); InvalidArgument for a
        prompt over the call limits."""
        visible = self.visible_routers()
        if request.router not in visible:
            raise NotFound(f"router: unknown router {echo(request.router)} (loaded: {', '.join(visible)})")
        check_limits(
            (request.prompt,),
            "prompt",
            indexed=False,
            max_turns=self.max_turns,
            max_request_chars=self.max_request_chars,
        )

    @staticmethod
    def _calibration(catalog: Catalog, router: str) -> RouterDescription:
        return next(r for r in catalog.routers if r.name == router)

    def check_ready(self) -> None:
        """NotReady before a bundle is loaded and warmed, Draining once the server is shutting down (what
        Route and Score answer then): for callers that look at the routers first, as the OpenAI front does."""
        self._ready()

    def _ready(self) -> tuple[Scheduler[Any], Catalog]:
        if self.draining:
            raise Draining("server is shutting down")
        if self.scheduler is None or self.catalog is None:
            raise NotReady("bundle not loaded and warmed yet")
        return self.scheduler, self.catalog

    async def Score(
        self, request: router_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ScoreResponse:
        sched, catalog = self._ready()
        n = len(request.prompts)
        if n == 0:
            raise InvalidArgument("prompts: at least one prompt required", reason="NO_PROMPTS")
        if n > self.max_prompts_per_request:
            raise InvalidArgument(
                f"prompts: {n} prompts (limit {self.max_prompts_per_request})",
                reason="TOO_MANY_PROMPTS",
            )
        if len(request.routers) > self.max_router_names:
            raise InvalidArgument(
                f"routers: {len(request.routers)} names (limit {self.max_router_names})", reason="TOO_MANY_ROUTERS"
            )
        check_limits(request.prompts, max_turns=self.max_turns, max_request_chars=self.max_request_chars)
        routers = resolve_routers(request.routers, self.visible_routers())
        texts = [prompt_text(p, f"prompts[{i}]") for i, p in enumerate(request.prompts)]
        caller = self._tenant(context)
        outcomes = await sched.score(texts, routers, timeout_s=context.time_remaining(), tenant=caller)
        if self.tracing is not None:
            self.tracing.stages(outcomes)
        # Overload that hit every prompt is a call-level, retryable failure; a prompt that waited too
        # long in a call whose other prompts were scored fails alone (its status), so that work is kept.
        if all(isinstance(out, (QueueTimeout, DeadlineExpired)) for out in outcomes):
            raise next(out for out in outcomes if isinstance(out, ServiceError))
        response = router_pb2.ScoreResponse(bundle_version=catalog.version)
        now_ms = int(time.time() * 1000)
        decisions: list[Decision] = []
        for i, out in enumerate(outcomes):
            item = response.results.add(index=i)
            if isinstance(out, ItemResult):
                item.status.code = Code.OK
                item.decision_id = new_decision_id(now_ms)
                if out.version:
                    response.bundle_version = out.version
                text = texts[i]
                if self.store is not None and isinstance(text, str):
                    decisions.append(decision_of_score(item.decision_id, now_ms, text, out, catalog, caller=caller))
                item.n_tokens = out.n_tokens
                item.truncated = out.truncated
                for name in routers:
                    item.scores.add(router=name, strong_win_probability=out.scores[name])
            else:
                info = status_of(out)
                item.status.code = int(info.code)
                item.status.reason = info.reason
                item.status.message = info.message
        size = response.ByteSize()
        if size > self.max_message_bytes:  # gRPC would refuse to send it: say why, and record nothing
            raise InvalidArgument(
                f"the answer would be {size} bytes, over max_message_bytes ({self.max_message_bytes}): send "
                "fewer prompts or routers a call",
                reason="RESPONSE_TOO_LARGE",
            )
        self._record(decisions)
        if debug_enabled():
            failed = sum(not isinstance(out, ItemResult) for out in outcomes)
            bind_call(prompts=n, prompts_failed=failed, routers=list(routers))
        return response

    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        return await self.route(request, asked_tenant=self._tenant(context), timeout_s=context.time_remaining())

    async def route(
        self,
        request: router_pb2.RouteRequest,
        *,
        asked_tenant: str,
        timeout_s: float | None,
        sent_chars: int | None = None,
    ) -> router_pb2.RouteResponse:
        """A Route call's answer, whatever transport carried it (the gRPC method above, the OpenAI-compatible
        front): `asked_tenant` is the caller's tenant ("" for none), `timeout_s` its remaining deadline;
        `sent_chars`, the characters the chosen model will be sent, where that is more than the request's
        prompt holds (the front routes on a cut turn, and sends tool turns and definitions too), for the
        expected cost among candidates. Errors are raised as ServiceError."""
        sched, catalog = self._ready()
        if not request.HasField("prompt"):
            raise InvalidArgument("prompt: required", reason="MISSING_PROMPT")
        policy = request.WhichOneof("policy")
        among = bool(len(request.candidates)) or policy == "model_policy"
        if not request.router:
            default = catalog.router_for(asked_tenant, among)
            what = "default quality router" if among else "default router"
            if not default:
                raise InvalidArgument(f"router: required (the serving bundle names no {what})", reason="MISSING_ROUTER")
            request.router = default  # answered, recorded and reported as if named
        if among:
            return await self._route_among(request, asked_tenant, timeout_s, sched, catalog, sent_chars)
        if policy is not None:
            self._check_not_bound(asked_tenant, policy, spend=False)
        tenant = self.targets.tenant_of(asked_tenant) if policy is None and self.targets is not None else None
        if policy is None and tenant is None:
            why = (
                "the server holds no share targets"
                if self.targets is None or not self.targets.targets
                else f"no share target for {_whose(asked_tenant)}"
            )
            raise InvalidArgument(f"policy: set threshold or strong_share ({why})", reason="MISSING_POLICY")
        value = float(getattr(request, policy)) if policy is not None else math.nan
        if policy is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise InvalidArgument(f"{policy}: must be in [0, 1] (got {value})", reason="OUT_OF_RANGE")
        self._check_router_and_prompt(request)
        if policy == "threshold":
            threshold = value
        elif policy == "strong_share":
            threshold = float(sched.scorer.threshold_for_share(request.router, value))
        else:
            threshold = math.nan  # the tenant's controller sets it once the prompt is scored
        text = prompt_text(request.prompt, "prompt")
        cal = self._calibration(catalog, request.router)
        controller = None
        if tenant is not None:  # taken now: a target removed while the prompt is scored still decides it
            assert self.targets is not None
            controller = self.targets.controller(tenant, cal, catalog.version)
        out = await self._score_one(sched, text, request.router, timeout_s, asked_tenant)
        score = out.scores[request.router]
        if controller is not None:
            threshold = controller.threshold
        target = controller.target if controller is not None else value if policy == "strong_share" else None
        if target in (0.0, 1.0):  # every call one way, as asked: a flip would break that, and teach nothing
            strong, propensity = score >= threshold, 1.0
        else:
            choice = self.exploration.choose(
                score, threshold, cal.calibration_strong_share, cal.calibration_thresholds, self._rng
            )
            strong, propensity = choice.strong, choice.propensity
        if controller is not None:
            controller.record(score, strong)
        chosen = catalog.strong_model if strong else catalog.weak_model
        decision_id = self._route_decision(
            text,
            out,
            catalog,
            asked_tenant,
            router=request.router,
            threshold=threshold,
            chosen_model=chosen,
            propensity=propensity,
            tenant=tenant or asked_tenant,
            policy=policy or "target",
            # the target it was made at: a restart replays the deficit against it (lmroute.service.targets)
            choice=json.dumps({"target": controller.target}) if controller is not None else "",
        )
        return router_pb2.RouteResponse(
            chosen_model=chosen,
            tier=router_pb2.TIER_STRONG if strong else router_pb2.TIER_WEAK,
            score=score,
            threshold=threshold,
            router=request.router,
            bundle_version=out.version or catalog.version,
            n_tokens=out.n_tokens,
            truncated=out.truncated,
            decision_id=decision_id,
            propensity=propensity,
        )

    async def _route_among(
        self,
        request: router_pb2.RouteRequest,
        asked_tenant: str,
        timeout_s: float | None,
        sched: Scheduler[Any],
        catalog: Catalog,
        sent_chars: int | None,
    ) -> router_pb2.RouteResponse:
        """Route among the request's candidates by its model_policy, or without one by the caller's
        tenant's spend target (lmroute.service.route_models, spend_control)."""
        policy = request.WhichOneof("policy")
        tenant = None
        if policy is None:
            tenant = self.targets.tenant_of(asked_tenant, spend=True) if self.targets is not None else None
            if tenant is None:
                why = "the server holds no spend targets" if self.targets is None or not self.targets.spends else ""
                why = why or f"no spend target for {_whose(asked_tenant)}"
                raise InvalidArgument(f"model_policy: required with candidates ({why})", reason="MISSING_POLICY")
        elif policy != "model_policy":
            raise InvalidArgument(f"model_policy: required with candidates (got {policy})", reason="MISSING_POLICY")
        else:
            self._check_not_bound(asked_tenant, policy, spend=True)
        if not len(request.candidates):
            raise InvalidArgument("candidates: at least two required with model_policy", reason="TOO_FEW_CANDIDATES")
        rule, value = check_policy(request.model_policy) if tenant is None else ("cost_weight", math.nan)
        self._check_router_and_prompt(request)
        binding = tenant if self.binding_targets else None  # its candidates priced by the models file alone
        cal = self._calibration(catalog, request.router)
        cands = check_candidates(request.candidates, cal, self.prices, binding_tenant=binding)
        text = prompt_text(request.prompt, "prompt")
        if not isinstance(text, str):
            raise text
        spend = None
        if tenant is not None:  # taken now: a target removed while the prompt is scored still decides it
            assert self.targets is not None
            spend = self.targets.spend_controller(tenant, request.router)
        out = await self._score_one(sched, text, request.router, timeout_s, asked_tenant)
        # the cost of sending the whole conversation, though the router scored one turn of it
        chars = len(input_text(request.prompt)) if sent_chars is None else sent_chars
        q, c = estimates(cands, out.qualities[request.router], chars, self.expected_output_tokens)
        if spend is None:
            made = decide(q, c, rule, value)
        else:
            value = spend.cost_weight
            made = decide(q, c, rule, value, chosen=spend.choose(q, c))
        # exploration (explore_rate): now and then a candidate drawn at random, with its propensity
        pick, propensity = choose_among(self.exploration.rate, made.chosen, len(cands.models), self._rng)
        if pick != made.chosen:  # the runner-up: the policy's choice with the served one left out, its own
            made = dataclasses.replace(made, chosen=pick, runner_up=made.chosen)
        if spend is not None:
            spend.record(q, c, made.chosen)  # the spend served, explored or not
        chosen = cands.models[made.chosen]
        decision_id = self._route_decision(
            text,
            out,
            catalog,
            asked_tenant,
            router=request.router,
            threshold=None,
            chosen_model=chosen,
            propensity=propensity,
            tenant=tenant or asked_tenant,
            policy=rule if tenant is None else "spend_target",
            choice=made.choice_json(cands, target_per_1k=None if spend is None else 1000.0 * spend.target),
        )
        tier = {catalog.strong_model: router_pb2.TIER_STRONG, catalog.weak_model: router_pb2.TIER_WEAK}
        response = router_pb2.RouteResponse(
            chosen_model=chosen,
            tier=tier.get(chosen, router_pb2.TIER_UNSPECIFIED),
            score=out.scores[request.router],
            threshold=math.nan,
            router=request.router,
            bundle_version=out.version or catalog.version,
            n_tokens=out.n_tokens,
            truncated=out.truncated,
            decision_id=decision_id,
            propensity=propensity,
            chosen=made.estimate(cands, made.chosen),
        )
        if made.runner_up >= 0:
            response.runner_up.CopyFrom(made.estimate(cands, made.runner_up))
        return response

    async def Feedback(
        self, request: router_pb2.FeedbackRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.FeedbackResponse:
        return await self.feedback(request, reporter=self._tenant(context))

    def early_feedback_refusal(
        self, request: Any, metadata: Any, bound: str | None
    ) -> tuple[ServiceError, Callable[[], None]] | None:
        """(the refusal, its counting for the loop) when a Feedback call would be refused for its tenant's
        rate, asked on a pool thread of the thread transport before the call crosses to the loop (`bound`:
        the tenant the call's token is bound to, if any); None for every call the loop should answer: one
        that fits, one any earlier check refuses (not ready, no store, no or too many outcomes, a bad
        tenant name), a malformed request. Only reads (the bucket, the settings): safe off the loop."""
        if self.feedback_rate is None or self.store is None or self.draining or self.scheduler is None:
            return None
        outcomes = getattr(request, "outcomes", None)
        if outcomes is None or not 0 < len(outcomes) <= self.max_feedback_items:
            return None
        reporter = bound
        if reporter is None:
            reporter = self._named(metadata)
            if self._name_refused(reporter) is not None:  # the loop refuses the name itself
                return None
        n = len(outcomes)
        refused = self.feedback_rate.refusal(reporter, n)
        if refused is None:
            return None
        return refused, lambda: self.feedback_counts.add(reporter, REFUSED, n)

    async def feedback(self, request: router_pb2.FeedbackRequest, *, reporter: str) -> router_pb2.FeedbackResponse:
        """A Feedback call's work, for the gRPC method and the HTTP front alike: the outcomes stored as
        reported by tenant `reporter` (the caller's, `tenant_named`), one status per outcome."""
        sched, catalog = self._ready()
        if self.store is None:
            raise NoOutcomeStore("no outcome store: start the server with --store to take Feedback")
        n = len(request.outcomes)
        if n == 0:
            raise InvalidArgument("outcomes: at least one outcome required", reason="NO_OUTCOMES")
        if n > self.max_feedback_items:
            raise InvalidArgument(
                f"outcomes: {n} outcomes (limit {self.max_feedback_items})", reason="TOO_MANY_OUTCOMES"
            )
        if self.feedback_rate is not None:
            try:  # the tenant's rate first: a flood's refused calls cost a check
                self.feedback_rate.take(reporter, n)
            except FeedbackRateExceeded:
                self.feedback_counts.add(reporter, REFUSED, n)
                raise
        try:  # room for the call before anything of it is built: a flood's refused calls cost next to nothing
            self.store.reserve(reporter, n)
        except WriterFull as exc:
            raise self._store_busy(reporter, n, exc) from exc
        handed_over = False  # the room held goes to submit, or back
        try:
            by_prompt = [i for i, report in enumerate(request.outcomes) if report.WhichOneof("target") == "prompt"]
            check_limits(  # the prompts of outcomes by prompt, within a call's limits as Score's are
                [request.outcomes[i].prompt for i in by_prompt],
                "outcomes",
                names=[f"outcomes[{i}].prompt" for i in by_prompt],
                max_turns=self.max_turns,
                max_request_chars=self.max_request_chars,
            )
            statuses: list[router_pb2.ItemStatus | None] = [None] * n
            spans: list[tuple[int, int]] = [(0, 0)] * n  # report i's outcomes: outcomes[start:stop]
            outcomes: list[Outcome] = []
            for i, report in enumerate(request.outcomes):
                if i and i % _FEEDBACK_SLICE == 0:
                    await asyncio.sleep(0)  # let the loop answer other calls between slices of a big call
                try:
                    mine = outcomes_of(
                        report,
                        i,
                        catalog.strong_model,
                        catalog.weak_model,
                        reporter=reporter,
                        max_prompt_chars=sched.policy.max_prompt_chars,
                    )
                except OutcomeError as exc:
                    statuses[i] = router_pb2.ItemStatus(
                        code=Code.INVALID_ARGUMENT, reason="INVALID_OUTCOME", message=str(exc)
                    )
                    continue
                spans[i] = (len(outcomes), len(outcomes) + len(mine))
                outcomes.extend(mine)
            verdicts = []
            if outcomes:
                handed_over = True
                try:
                    verdicts = await asyncio.wrap_future(self.store.submit(outcomes, reserved=n))
                except WriterFull as exc:
                    raise self._store_busy(reporter, n, exc) from exc
                except CommitUnknown as exc:  # committed or not, nobody can tell: said so, not "nothing"
                    self._store_refused(reporter, n)
                    raise StoreUnavailable(
                        f"outcome store connection lost during commit ({failure_cause(exc)}); the outcomes may "
                        "have been stored: send them again (those stored answer DUPLICATE)"
                    ) from exc
                except Exception as exc:
                    self._store_refused(reporter, n)
                    raise StoreUnavailable(
                        f"outcome store write failed ({failure_cause(exc)}); nothing was stored"
                    ) from exc
        finally:
            if not handed_over:
                self.store.release(reporter, n)
        response = router_pb2.FeedbackResponse()
        for i, report in enumerate(request.outcomes):
            if i and i % _FEEDBACK_SLICE == 0:
                await asyncio.sleep(0)
            status = statuses[i]
            if status is None:
                start, stop = spans[i]
                status = item_status(verdicts[start:stop], i, report, [o.model for o in outcomes[start:stop]])
                response.stored += sum(v is Verdict.STORED for v in verdicts[start:stop])
            self.feedback_counts.add(reporter, result_of(status))
            response.results.append(status)
        if debug_enabled():  # each outcome's result, counted (the metric's labels)
            results = collections.Counter(FEEDBACK_RESULTS[result_of(st)] for st in response.results)
            bind_call(outcomes=n, stored=response.stored, results=dict(results))
        return response

    def _store_busy(self, reporter: str, n: int, exc: WriterFull) -> StoreUnavailable:
        """A Feedback call of `n` outcomes the writer has no room for: refused (`_store_refused`), STORE_BUSY."""
        self._store_refused(reporter, n)
        return StoreUnavailable(f"outcome store busy: {exc}", reason="STORE_BUSY")

    def _store_refused(self, reporter: str, n: int) -> None:
        """A Feedback call of `n` outcomes the store did not take: counted as refused, and its outcomes given
        back to its tenant's rate (a store that fell behind or failed does not spend the tenant's rate)."""
        self.feedback_counts.add(reporter, REFUSED, n)
        if self.feedback_rate is not None:
            self.feedback_rate.refund(reporter, n)

    async def ListRouters(
        self, request: router_pb2.ListRoutersRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListRoutersResponse:
        sched, c = self._ready()
        tenant = self._tenant(context)
        visible = set(self.visible_routers())
        return router_pb2.ListRoutersResponse(
            routers=[_router_info(r) for r in c.routers if r.name in visible],
            models=[router_pb2.ModelInfo(name=m.name, elo=m.elo, tier=m.tier) for m in c.models],
            default_pair=router_pb2.ModelPair(strong=c.strong_model, weak=c.weak_model),
            encoder=router_pb2.EncoderInfo(
                name=c.encoder_name,
                dim=c.encoder_dim,
                max_tokens=c.encoder_max_tokens,
                pooling=c.encoder_pooling,
                quantized=c.encoder_quantized,
                truncation=c.encoder_truncation,
                kind=c.encoder_kind,
            ),
            bundle_version=c.version,
            default_router=c.router_for(tenant),
            default_quality_router=c.router_for(tenant, among=True),
            limits=router_pb2.CallLimits(
                max_prompt_chars=sched.policy.max_prompt_chars,
                max_prompts_per_request=self.max_prompts_per_request,
                max_request_chars=self.max_request_chars,
                max_turns=self.max_turns,
                max_message_bytes=self.max_message_bytes,
            ),
        )

    async def GetRouter(
        self, request: router_pb2.GetRouterRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GetRouterResponse:
        _, c = self._ready()
        visible = self.visible_routers()
        for r in c.routers:
            if r.name == request.name and r.name in visible:
                return router_pb2.GetRouterResponse(router=_router_info(r), bundle_version=c.version)
        raise NotFound(f"name: unknown router {echo(request.name)} (loaded: {', '.join(visible)})")


def _whose(tenant: str) -> str:
    """The caller a missing target is missing for: its tenant, or calls naming none (and no default)."""
    return f"tenant {echo(tenant)}" if tenant else f"a call naming no tenant (nor for the tenant {DEFAULT_TENANT})"
