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

import math
from collections.abc import Sequence
from typing import Any

import grpc

from lmroute.service.batch_queue import ItemResult
from lmroute.service.decisions import new_decision_id
from lmroute.service.errors import (
    Code,
    DeadlineExpired,
    Draining,
    InvalidArgument,
    NotFound,
    NotReady,
    QueueTimeout,
    ServiceError,
    echo,
    status_of,
)
from lmroute.service.prompts import check_limits, prompt_text
from lmroute.service.scheduler import Scheduler
from lmroute.service.scorer_api import Catalog, RouterDescription
from lmroute.v1 import router_pb2, router_pb2_grpc

__all__ = ["RouterServicer", "resolve_routers"]


def _router_info(r: RouterDescription) -> router_pb2.RouterInfo:
    return router_pb2.RouterInfo(
        name=r.name,
        kind=r.kind,
        uses_encoder=r.uses_encoder,
        calibration_strong_share=list(r.calibration_strong_share),
        calibration_thresholds=list(r.calibration_thresholds),
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
        self, *, max_prompts_per_request: int, max_turns: int, max_request_chars: int, max_router_names: int
    ) -> None:
        self.max_prompts_per_request = max_prompts_per_request
        self.max_turns = max_turns
        self.max_request_chars = max_request_chars
        self.max_router_names = max_router_names
        self.scheduler: Scheduler[Any] | None = None
        self.catalog: Catalog | None = None
        self.routers: tuple[str, ...] = ()  # the scorer's routers, in bundle order
        self.draining = False

    def attach(self, scheduler: Scheduler[Any], catalog: Catalog) -> None:
        """Start serving with this scheduler (called after load and warm-up)."""
        self.routers = scheduler.scorer.router_names
        self.catalog = catalog
        self.scheduler = scheduler

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
        routers = resolve_routers(request.routers, self.routers)
        texts = [prompt_text(p, f"prompts[{i}]") for i, p in enumerate(request.prompts)]
        outcomes = await sched.score(texts, routers, timeout_s=context.time_remaining())
        # Overload that hit every prompt is a call-level, retryable failure; a prompt that waited too
        # long in a call whose other prompts were scored fails alone (its status), so that work is kept.
        if all(isinstance(out, (QueueTimeout, DeadlineExpired)) for out in outcomes):
            raise next(out for out in outcomes if isinstance(out, ServiceError))
        response = router_pb2.ScoreResponse(bundle_version=catalog.version)
        for i, out in enumerate(outcomes):
            item = response.results.add(index=i)
            if isinstance(out, ItemResult):
                item.status.code = Code.OK
                item.decision_id = new_decision_id()
                item.n_tokens = out.n_tokens
                item.truncated = out.truncated
                for name in routers:
                    item.scores.add(router=name, strong_win_probability=out.scores[name])
            else:
                info = status_of(out)
                item.status.code = int(info.code)
                item.status.reason = info.reason
                item.status.message = info.message
        return response

    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        sched, catalog = self._ready()
        if not request.HasField("prompt"):
            raise InvalidArgument("prompt: required", reason="MISSING_PROMPT")
        if not request.router:
            raise InvalidArgument("router: required", reason="MISSING_ROUTER")
        if len(request.candidates):
            raise InvalidArgument(
                "candidates: not supported in v1 (leave empty to route between the default pair)",
                reason="CANDIDATES_UNSUPPORTED",
            )
        policy = request.WhichOneof("policy")
        if policy is None:
            raise InvalidArgument("policy: set threshold or strong_share", reason="MISSING_POLICY")
        value = float(getattr(request, policy))
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise InvalidArgument(f"{policy}: must be in [0, 1] (got {value})", reason="OUT_OF_RANGE")
        if request.router not in self.routers:
            raise NotFound(f"router: unknown router {echo(request.router)} (loaded: {', '.join(self.routers)})")
        check_limits(
            (request.prompt,),
            "prompt",
            indexed=False,
            max_turns=self.max_turns,
            max_request_chars=self.max_request_chars,
        )
        if policy == "threshold":
            threshold = value
        else:
            threshold = float(sched.scorer.threshold_for_share(request.router, value))
        text = prompt_text(request.prompt, "prompt")
        [out] = await sched.score(
            [text], (request.router,), timeout_s=context.time_remaining(), field="prompt", indexed=False
        )
        if isinstance(out, ServiceError):
            raise out
        score = out.scores[request.router]
        strong = score >= threshold
        return router_pb2.RouteResponse(
            chosen_model=catalog.strong_model if strong else catalog.weak_model,
            tier=router_pb2.TIER_STRONG if strong else router_pb2.TIER_WEAK,
            score=score,
            threshold=threshold,
            router=request.router,
            bundle_version=catalog.version,
            n_tokens=out.n_tokens,
            truncated=out.truncated,
            decision_id=new_decision_id(),
            propensity=1.0,  # no exploration: the policy's choice
        )

    async def ListRouters(
        self, request: router_pb2.ListRoutersRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.ListRoutersResponse:
        _, c = self._ready()
        return router_pb2.ListRoutersResponse(
            routers=[_router_info(r) for r in c.routers],
            models=[router_pb2.ModelInfo(name=m.name, elo=m.elo, tier=m.tier) for m in c.models],
            default_pair=router_pb2.ModelPair(strong=c.strong_model, weak=c.weak_model),
            encoder=router_pb2.EncoderInfo(
                name=c.encoder_name,
                dim=c.encoder_dim,
                max_tokens=c.encoder_max_tokens,
                pooling=c.encoder_pooling,
                quantized=c.encoder_quantized,
                truncation=c.encoder_truncation,
            ),
            bundle_version=c.version,
        )

    async def GetRouter(
        self, request: router_pb2.GetRouterRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GetRouterResponse:
        _, c = self._ready()
        for r in c.routers:
            if r.name == request.name:
                return router_pb2.GetRouterResponse(router=_router_info(r), bundle_version=c.version)
        raise NotFound(f"name: unknown router {echo(request.name)} (loaded: {', '.join(r.name for r in c.routers)})")
