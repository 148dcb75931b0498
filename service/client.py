"""RouterClient: a small typed synchronous client for lmroute.v1.RouterService (users and tests).

with RouterClient("127.0.0.1:50051") as c:
    c.health()                                   # "SERVING"
    r = c.score(["Prove Fermat's little theorem"], routers=["mf"])
    d = c.route("hi", router="mf", strong_share=0.3)
    d.chosen_model
    c.reload_bundle("/srv/bundles/next")         # AdminService: hot swap; c.get_bundle(): what serves
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lmroute.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc

__all__ = ["RouterClient", "PromptLike", "to_prompt"]

# A prompt: plain text, a conversation as [{"role": "user", "content": "..."}, ...], or a wire Prompt.
PromptLike = str | Sequence[Mapping[str, str]] | router_pb2.Prompt


def to_prompt(prompt: PromptLike, *, all_user_turns: bool = False) -> router_pb2.Prompt:
    """Build the wire Prompt for text or a list of {"role", "content"} turns (a Prompt is taken as it is)."""
    if isinstance(prompt, router_pb2.Prompt):
        return prompt
    if isinstance(prompt, str):
        return router_pb2.Prompt(text=prompt)
    conv = router_pb2.Conversation(
        messages=[router_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in prompt]
    )
    sel = router_pb2.TURN_SELECTION_ALL_USER if all_user_turns else router_pb2.TURN_SELECTION_LAST_USER
    return router_pb2.Prompt(conversation=conv, turn_selection=sel)


class RouterClient:
    """Blocking client over one channel; every call takes an optional timeout (seconds)."""

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float | None = 10.0,
        max_message_bytes: int = 4 * 1024 * 1024,
        request_id: str | None = None,
        tenant: str | None = None,
        tenant_header: str = "x-lmroute-tenant",
        token: str | None = None,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.request_id = request_id
        self.tenant = tenant  # named in every call's metadata (`tenant_header`) when set
        self.tenant_header = tenant_header
        self.token = token  # sent as `authorization: Bearer <token>` when set (lmroute.service.auth)
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls_ca is None:  # plaintext (loopback, a sidecar); with tls_ca: TLS, plus a client cert for mTLS
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(tls_ca).read_bytes(),
                private_key=Path(tls_key).read_bytes() if tls_key else None,
                certificate_chain=Path(tls_cert).read_bytes() if tls_cert else None,
            )
            self.channel = grpc.secure_channel(target, creds, options=options)
        self.stub = router_pb2_grpc.RouterServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _kw(self, timeout_s: float | None) -> dict[str, Any]:
        kw: dict[str, Any] = {"timeout": timeout_s if timeout_s is not None else self.timeout_s}
        metadata = []
        if self.request_id:
            metadata.append(("x-request-id", self.request_id))
        if self.tenant:
            metadata.append((self.tenant_header, self.tenant))
        if self.token:
            metadata.append(("authorization", f"Bearer {self.token}"))
        if metadata:
            kw["metadata"] = tuple(metadata)
        return kw

    def score(
        self,
        prompts: Sequence[PromptLike],
        routers: Sequence[str] = (),
        *,
        timeout_s: float | None = None,
    ) -> router_pb2.ScoreResponse:
        """Scores of every prompt under `routers` (empty = all); per-prompt status in each result."""
        req = router_pb2.ScoreRequest(prompts=[to_prompt(p) for p in prompts], routers=list(routers))
        resp: router_pb2.ScoreResponse = self.stub.Score(req, **self._kw(timeout_s))
        return resp

    def route(
        self,
        prompt: PromptLike,
        *,
        router: str = "",
        threshold: float | None = None,
        strong_share: float | None = None,
        timeout_s: float | None = None,
    ) -> router_pb2.RouteResponse:
        """Decide strong vs weak for one prompt with `router` ("": the serving bundle's default router, which
        follows each accepted adaptation); give at most one of threshold / strong_share (neither: the
        client's tenant's share target, held live by the server)."""
        req = router_pb2.RouteRequest(prompt=to_prompt(prompt), router=router)
        if threshold is not None:
            req.threshold = threshold
        if strong_share is not None:
            req.strong_share = strong_share
        resp: router_pb2.RouteResponse = self.stub.Route(req, **self._kw(timeout_s))
        return resp

    def route_among(
        self,
        prompt: PromptLike,
        candidates: Sequence[str | router_pb2.Candidate],
        *,
        router: str = "",
        cost_weight: float | None = None,
        quality_margin: float | None = None,
        quality_floor: float | None = None,
        timeout_s: float | None = None,
    ) -> router_pb2.RouteResponse:
        """Choose among candidate models (names, or Candidates with prices) with `router` ("": the serving
        bundle's default quality router, which follows each accepted N-model adaptation) by at most one
        rule (none: the client's tenant's spend target, held live by the server)."""
        req = router_pb2.RouteRequest(
            prompt=to_prompt(prompt),
            router=router,
            candidates=[
                c if isinstance(c, router_pb2.Candidate) else router_pb2.Candidate(model=c) for c in candidates
            ],
        )
        rules = {"cost_weight": cost_weight, "quality_margin": quality_margin, "quality_floor": quality_floor}
        for rule, value in rules.items():
            if value is not None:
                setattr(req.model_policy, rule, value)
        resp: router_pb2.RouteResponse = self.stub.Route(req, **self._kw(timeout_s))
        return resp

    def list_routers(self, *, timeout_s: float | None = None) -> router_pb2.ListRoutersResponse:
        """What is loaded: routers, models, encoder, calibration, bundle version."""
        resp: router_pb2.ListRoutersResponse = self.stub.ListRouters(
            router_pb2.ListRoutersRequest(), **self._kw(timeout_s)
        )
        return resp

    def get_router(self, name: str, *, timeout_s: float | None = None) -> router_pb2.GetRouterResponse:
        """One router's description (NOT_FOUND when unknown)."""
        resp: router_pb2.GetRouterResponse = self.stub.GetRouter(
            router_pb2.GetRouterRequest(name=name), **self._kw(timeout_s)
        )
        return resp

    def feedback(
        self, outcomes: Sequence[router_pb2.OutcomeReport], *, timeout_s: float | None = None
    ) -> router_pb2.FeedbackResponse:
        """Report outcomes (see router.proto's OutcomeReport); one ItemStatus per outcome."""
        resp: router_pb2.FeedbackResponse = self.stub.Feedback(
            router_pb2.FeedbackRequest(outcomes=list(outcomes)), **self._kw(timeout_s)
        )
        return resp

    def reload_bundle(self, path: str = "", *, timeout_s: float | None = None) -> admin_pb2.ReloadBundleResponse:
        """Hot-swap the server's bundle for the one at `path` on the server ("" = its serving path again);
        FAILED_PRECONDITION when the candidate is refused (the old bundle keeps serving)."""
        resp: admin_pb2.ReloadBundleResponse = self.admin.ReloadBundle(
            admin_pb2.ReloadBundleRequest(path=path), **self._kw(timeout_s)
        )
        return resp

    def get_bundle(self, *, timeout_s: float | None = None) -> admin_pb2.GetBundleResponse:
        """The serving bundle (version, path, when loaded), the swap in progress and the swap counters."""
        resp: admin_pb2.GetBundleResponse = self.admin.GetBundle(admin_pb2.GetBundleRequest(), **self._kw(timeout_s))
        return resp

    def list_share_targets(self, *, timeout_s: float | None = None) -> admin_pb2.ListShareTargetsResponse:
        """The tenants' strong-share targets and, per tenant and router, the realised share and threshold."""
        resp: admin_pb2.ListShareTargetsResponse = self.admin.ListShareTargets(
            admin_pb2.ListShareTargetsRequest(), **self._kw(timeout_s)
        )
        return resp

    def list_spend_targets(self, *, timeout_s: float | None = None) -> admin_pb2.ListSpendTargetsResponse:
        """The tenants' spend targets and, per tenant and router, the realised spend and cost weight."""
        resp: admin_pb2.ListSpendTargetsResponse = self.admin.ListSpendTargets(
            admin_pb2.ListSpendTargetsRequest(), **self._kw(timeout_s)
        )
        return resp

    def set_targets(
        self,
        shares: Mapping[str, float | None] | None = None,
        spends: Mapping[str, float | None] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> admin_pb2.SetTargetsResponse:
        """Change tenants' targets on the running server: `shares` (strong share) and `spends` (USD per
        1,000 requests) map a tenant to its new target, or to None to remove it; all applied or none. The
        response lists the targets held after."""
        changes = [
            admin_pb2.TargetChange(tenant=t, remove_strong_share=True)
            if v is None
            else admin_pb2.TargetChange(tenant=t, strong_share=v)
            for t, v in (shares or {}).items()
        ] + [
            admin_pb2.TargetChange(tenant=t, remove_spend=True)
            if v is None
            else admin_pb2.TargetChange(tenant=t, spend_per_1k_usd=v)
            for t, v in (spends or {}).items()
        ]
        resp: admin_pb2.SetTargetsResponse = self.admin.SetTargets(
            admin_pb2.SetTargetsRequest(changes=changes), **self._kw(timeout_s)
        )
        return resp

    def health(self, service: str = "", *, timeout_s: float | None = None) -> str:
        """grpc.health.v1 status name: "SERVING", "NOT_SERVING", ... (NOT_FOUND raises RpcError)."""
        resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s or self.timeout_s)
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        return name
