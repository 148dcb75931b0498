"""The OpenAI-compatible HTTP front: RouteLLM's server shape on the service's own scheduler.

`lmroute-serve --http-port N --upstreams-file F` serves, in the same process as the gRPC port:

    POST /v1/chat/completions   route the request's conversation, then forward the request untouched
                                (tools, temperature, stream, ...; only `model` is replaced) to the chosen
                                side's upstream and return its answer, streamed (server-sent events) when
                                the request asks for it
    GET  /v1/models             the names this front answers to, one per loaded router
    GET  /health                200 while the service answers, else 503 (no token needed: for probes)
    POST /v1/feedback           outcomes of earlier decisions (x-lmroute-decision-id) or prompts: the
                                gRPC Feedback call, its FeedbackRequest and FeedbackResponse in
                                protobuf's JSON mapping (docs/OPENAI_FRONT.md); the caller's tenant is
                                the outcomes' reporter

The request's `model` picks the router and the policy, as RouteLLM's names do:

    router-<router>-<threshold>   route strong when the router's score >= threshold (RouteLLM's form)
    router-<router>@<share>       the threshold that sends `share` of the calibration prompts strong
    router-<router>               the caller's tenant's live strong-share target (--share-targets)

with <router> a loaded router, or `default` (unless a router has that name): the bundle's default router
(ListRouters.default_router), which an accepted adaptation makes its own router, so a caller of
`router-default@0.3` follows the adaptations; for a tenant with a router of its own in the bundle
(`lmroute-export adapt --for-tenant`), that router. With models named in the upstreams file, `models`
and `models-<rule>-<value>` route among them instead (lmroute.service.front_models), and the request
goes to the chosen model's endpoint.

Every answer says what was decided in its headers: x-lmroute-decision-id (for Feedback),
x-lmroute-model (the upstream model called), x-lmroute-router, and x-lmroute-tier, x-lmroute-score,
x-lmroute-threshold (between the sides) or x-lmroute-chosen, x-lmroute-predicted-quality,
x-lmroute-expected-cost-usd (among models). An upstream whose file entry sets `fallback` passes a request
it fails before its answer starts to the other side's upstream (a model's: to the runner-up's): that
answer says so in x-lmroute-fallback (what failed; the other headers name what answered) and carries no
decision id, since the decision's outcomes are of the choice it made; a model whose upstream is skipped
for now (lmroute.service.circuit_breaker) is left out of the choice among models (x-lmroute-left-out).
The route step is the gRPC Route call's own code (RouterServicer.route), so exploration, share and spend
targets, decision recording and the scheduler's admission apply alike. With tokens configured the front
needs `Authorization: Bearer <token>` like the gRPC port; the tenant comes from the token or the tenant
header. With TLS configured it serves HTTPS with the same certificate files (read again when they change:
lmroute.service.tls.FrontTLS). Errors are OpenAI-shaped JSON (`{"error": {"message", "type", "code"}}`)
with the status of lmroute.service.errors.http_status: a bad `model` is 400 naming it, an upstream down
502, slow 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from google.protobuf import json_format

from lmroute.service.auth import AUTH_TENANT, Authenticator
from lmroute.service.circuit_breaker import Admit
from lmroute.service.errors import (
    ECHO_CHARS,
    BodyTimeout,
    InvalidArgument,
    ServiceError,
    Unauthenticated,
    UpstreamFailed,
    UpstreamsMismatch,
    UpstreamTimeout,
    echo,
    http_status,
)
from lmroute.service.front_models import (
    MODELS_FORMS,
    MODELS_NAME,
    ModelsAsk,
    is_models_name,
    parse_models_name,
)
from lmroute.service.front_requests import DEFAULT, PREFIX, parse_model, prompt_of_messages, sent_chars
from lmroute.service.interceptors import _ID_PREFIX, REQUEST_ID_KEY
from lmroute.service.logs import SHED_CODES, CallLog, LogSampler, bind_call, info_enabled
from lmroute.service.metrics import ServiceMetrics
from lmroute.service.servicer import RouterServicer
from lmroute.service.tls import FrontTLS
from lmroute.service.tracing import Tracing
from lmroute.service.upstream_client import (
    MAX_ANSWER_BYTES,
    Exchange,
    UpstreamClient,
    upstream_failed,
    upstream_timeout,
    usage_asked,
    usage_of,
)
from lmroute.service.upstreams import OTHER_TIER, Upstream, models_of, redact
from lmroute.v1 import router_pb2

__all__ = ["OpenAIFront"]

_log = structlog.get_logger("lmroute.openai_front")

_CHAT = "/v1/chat/completions"
_FEEDBACK = "/v1/feedback"
_MODELS = "/v1/models"
_HEALTH = "/health"

# an upstream's HTTP error answer as a status code, for the metrics, the access line and the span
_UPSTREAM_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def upstream_code(status: int) -> str:
    """The status code name an upstream's HTTP error `status` is counted under."""
    return _UPSTREAM_CODES.get(status, "FAILED_PRECONDITION" if status < 500 else "INTERNAL")


# request ids of calls that bring none (x-request-id): the gRPC ids' random per-process prefix, so ids do not
# repeat across replicas and restarts, marked http- so they never equal a gRPC call's id (its own counter)
_ids = itertools.count(1)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a JSON escape of a UTF-16 surrogate
Outcome = tuple[str, str] | None
# Route's refusals of a call among the upstreams file's models that are the file's (or the bundle's) doing
_FILE_DOES_NOT_FIT = frozenset(
    {
        "UNKNOWN_MODEL",
        "NO_PRICE",
        "MISSING_ROUTER",
        "ROUTER_NOT_MULTI_MODEL",
        "TOO_MANY_CANDIDATES",
        "DUPLICATE_CANDIDATE",
    }
)
# a streamed answer's (code, reason) when it ended on an error after its headers
_OUTCOME = web.ResponseKey[tuple[str, str]]("lmroute_outcome")
# what was decided for a chat request, as its answer's headers (an error answer after the route too)
_DECIDED = web.RequestKey[dict[str, str]]("lmroute_decided")
# a request passed on to its fallback: (what failed first, as the caller is told it; as logged; the spare's key)
_FELL_BACK = web.RequestKey[tuple[str, str, str]]("lmroute_fell_back")
# the request's id: answered in every answer's x-request-id header, sent to the upstreams with the request
_REQUEST_ID = web.RequestKey[str]("lmroute_request_id")


async def _say_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer to a request the front served (an error, a stream: just before its headers go out)
    carries the request's id, the caller's or the one made for it, to quote when asking after it."""
    if (request_id := request.get(_REQUEST_ID)) is not None:
        response.headers[REQUEST_ID_KEY] = request_id


def _error(exc: BaseException) -> web.Response:
    status, info = http_status(exc)
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": info.message, "type": kind, "code": info.reason}}
    headers = {"Retry-After": str(max(1, math.ceil(info.retry_after_ms / 1000)))} if info.retry_after_ms else None
    return web.json_response(body, status=status, headers=headers)


_NOT_SERVED_LINES = LogSampler(period_s=1.0)


@web.middleware
async def _openai_shaped_404_405(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """An unknown path or method answered as OpenAI answers errors (a JSON `error` object), not aiohttp's
    plain-text page, so an OpenAI client reads the message; logged (`http_not_served`, at most a line a
    second for each status, the rest counted into it: a scan of the front is seen, not a flood of lines)."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        served = f"POST {_CHAT}, POST {_FEEDBACK}, GET {_MODELS}"
        reason = "NOT_FOUND" if exc.status == 404 else "METHOD_NOT_ALLOWED"
        method, path = (v if len(v) <= ECHO_CHARS else echo(v) for v in (request.method, request.path))
        if (suppressed := _NOT_SERVED_LINES.admit(exc.status)) is not None:
            _log.warning(
                "http_not_served",
                http_method=method,
                path=path,
                status=exc.status,
                peer=request.remote,
                suppressed=suppressed,
            )
        message = f"{method} {path}: not served here (this front serves {served})"
        body = {"error": {"message": message, "type": "invalid_request_error", "code": reason}}
        return web.json_response(
            body, status=exc.status, headers={"Allow": exc.headers["Allow"]} if exc.status == 405 else None
        )


def _sse_error(exc: ServiceError) -> bytes:
    """A server-sent event carrying the error of a stream that broke off after its headers went out (the
    openai client raises it as an APIError)."""
    _, info = http_status(exc)
    event = {"error": {"message": info.message, "type": "server_error", "code": info.reason}}
    return b"data: " + json.dumps(event).encode("utf-8") + b"\n\n"


class _EventStream:
    """A streamed answer's bytes on their way to the caller, passed on whole events at a time (up to the
    blank line that ends an event), so that an error event after a break starts on a line of its own and
    no half event reaches the caller; the upstream's API key in them replaced by ***. It also tells
    whether the upstream said it had finished (`data: [DONE]`, or a choice's finish_reason): a stream
    that ends without either was cut off. With `drop_usage` (the front asked for the usage the caller
    did not), the chunk that carries it is counted and not passed on."""

    _FINISHED = re.compile(rb'data: ?\[DONE\]|"finish_reason": ?"')
    _EVENT_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")
    _EVENT_SPLIT = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")

    def __init__(self, key: bytes, drop_usage: bool = False) -> None:
        self._key = key
        self._drop_usage = drop_usage
        self._held: list[bytes] = []  # an event not yet ended
        self._held_tail = b""  # its last 3 bytes: an event's end may straddle chunks
        self.sent = 0  # bytes received from the upstream
        self.finished = False
        self.usage: tuple[int, int] | None = None  # what its last chunk with a `usage` reported

    def passed(self, chunk: bytes) -> bytes:
        """What of `chunk` (and of the event held before it) goes to the caller now: every event it ends."""
        self.sent += len(chunk)
        probe = self._held_tail + chunk
        end = max((i + len(sep) for sep in self._EVENT_ENDS if (i := probe.rfind(sep)) >= 0), default=0)
        end -= len(self._held_tail)  # in `chunk`; > 0, else the end would have been found in an earlier chunk
        if end <= 0:
            self._held.append(chunk)
            self._held_tail = probe[-3:]
            return b""
        data = b"".join([*self._held, chunk[:end]])
        rest = chunk[end:]
        self._held = [rest] if rest else []
        self._held_tail = rest[-3:]
        return self._note(data)

    def rest(self) -> bytes:
        """What is held once the upstream's answer has ended well (a last event without its blank line)."""
        data = b"".join(self._held)
        self._held, self._held_tail = [], b""
        return self._note(data)

    def error_event(self, exc: ServiceError) -> bytes:
        """`exc` as the stream's last event (an event the break cut in two is dropped)."""
        self._held, self._held_tail = [], b""
        return _sse_error(exc)

    def _note(self, data: bytes) -> bytes:
        if self._key:
            data = data.replace(self._key, b"***")
        if not self.finished and self._FINISHED.search(data):
            self.finished = True
        if b'"usage"' in data:  # a stream asked with stream_options.include_usage: its last chunk says
            for line in data.splitlines():
                if line.startswith(b"data:") and (said := usage_of(line[5:])) is not None:
                    self.usage = said
            if self._drop_usage:
                parts = self._EVENT_SPLIT.split(data)  # event, its end, event, ..., what follows the last end
                data = b"".join(
                    parts[i] + b"".join(parts[i + 1 : i + 2])
                    for i in range(0, len(parts), 2)
                    if not _usage_only(parts[i])
                )
        return data


def _usage_only(event: bytes) -> bool:
    """Whether a server-sent event is the chunk `stream_options.include_usage` adds: a usage, no choices."""
    data = b"\n".join(line[5:] for line in event.splitlines() if line.startswith(b"data:"))
    try:
        chunk = json.loads(data) if b'"usage"' in data else None
    except (ValueError, RecursionError):
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)


class _ByteBudget:
    """At most `limit` bytes of request bodies parsed and held at once (parsed JSON takes many times its
    bytes: docs/OPENAI_FRONT.md measures it); the rest wait their turn, first come first served. A body
    larger than `limit` takes the whole budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.peak = 0  # most bytes held at once, for tests and benchmarks
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        n = min(size, self.limit)
        if self._waiting or self.held + n > self.limit:
            turn = asyncio.get_running_loop().create_future()
            self._waiting.append((n, turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release(n)  # granted as it was cancelled
                else:
                    self._waiting.remove((n, turn))
                    self._wake()
                raise
        else:
            self._take(n)
        try:
            yield
        finally:
            self._release(n)

    def _take(self, n: int) -> None:
        self.held += n
        self.peak = max(self.peak, self.held)

    def _release(self, n: int) -> None:
        self.held -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self.held + self._waiting[0][0] <= self.limit:
            n, turn = self._waiting.popleft()
            if not turn.done():
                self._take(n)
                turn.set_result(None)


class _CallerStalled(Exception):
    """A write to the caller did not finish within the front's write timeout (it does not read)."""


class _Refused(asyncio.Protocol):
    """A connection over the front's cap: closed as soon as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        else:
            transport.close()


def _waits_for_a_request(handler: web.RequestHandler) -> bool:
    """Whether `handler`'s connection is idle: no request being handled or queued, waiting for the next
    request head (whole or not). This is the test aiohttp's own idle timeout makes (its `_waiter`); an
    aiohttp without it reads as never idle, and the integration test of the connection cap fails."""
    waiter = getattr(handler, "_waiter", None)
    return isinstance(waiter, asyncio.Future) and not waiter.done()


@dataclass(frozen=True)
class _Spare:
    """Where a request goes when its upstream fails: the upstream's key (the other side, or the runner-up
    model), the request as that upstream is sent it, and the headers that then say what answered."""

    key: str
    payload: bytes
    headers: dict[str, str]


class OpenAIFront:
    """The aiohttp application and its listening socket; `start` and `stop` bracket it.

    Bounds: `max_body_bytes` per request body, read within `body_timeout_s` (else 408); at most
    `parse_budget_bytes` of bodies parsed and held at once (default 4 bodies of the largest size);
    `upstream_max_s` for a whole forwarded exchange (slot wait, answer, and the writes of a streamed
    answer to the caller), each write to the caller within `write_timeout_s` (else the caller's
    connection is closed); `max_stream_bytes` of one streamed answer; `max_connections` open at once:
    past it the oldest idle connection (one waiting for a request head) is closed to let a new one in,
    and with none idle the new one is closed as soon as it is accepted. A connection that has not sent a
    whole request head within `idle_timeout_s` of opening or of its last answer is closed (so is a TLS
    handshake not done by then)."""

    def __init__(
        self,
        servicer: RouterServicer,
        upstreams: Mapping[str, Upstream],
        *,
        auth: Authenticator | None = None,
        metrics: ServiceMetrics | None = None,
        max_body_bytes: int = 4 << 20,
        grace_s: float = 5.0,
        tracing: Tracing | None = None,
        fair_slots: bool = True,
        sample_all: bool = False,
        upstream_max_s: float = 600.0,
        write_timeout_s: float = 30.0,
        max_stream_bytes: int = MAX_ANSWER_BYTES,
        max_connections: int = 1024,
        body_timeout_s: float = 30.0,
        idle_timeout_s: float = 60.0,
        parse_budget_bytes: int | None = None,
    ) -> None:
        self.servicer = servicer
        self.sample_all = sample_all  # every request's access line sampled (--access-log sampled)
        self._sampler = LogSampler(period_s=1.0)
        self.fair_slots = fair_slots  # an upstream's contended slots go to tenants in turn; False: first come
        self.tracing = tracing
        self.client = UpstreamClient(upstreams, tracing=tracing)
        self.models = models_of(upstreams)  # the models `models...` names route among (none: no such names)
        self.sides = "strong" in upstreams  # the file names the strong and weak sides (router-... names)
        self.auth = auth
        self.metrics = metrics
        self.grace_s = grace_s
        self.max_body_bytes = max_body_bytes
        self.upstream_max_s = upstream_max_s
        self.write_timeout_s = write_timeout_s
        self.max_stream_bytes = max_stream_bytes
        self.max_connections = max_connections
        self.body_timeout_s = body_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.bodies = _ByteBudget(parse_budget_bytes if parse_budget_bytes is not None else 4 * max_body_bytes)
        self.refused_connections = 0
        self.idle_connections_closed = 0  # to let a new connection in at max_connections
        self._listener: asyncio.Server | None = None
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[_openai_shaped_404_405])
        self.app.on_response_prepare.append(_say_request_id)
        self.app.on_response_prepare.append(self._close_if_rotated)
        self._tls: FrontTLS | None = None
        self.app.router.add_post(_CHAT, self._chat)
        self.app.router.add_post(_FEEDBACK, self._feedback)
        self.app.router.add_get(_MODELS, self._models)
        self.app.router.add_get(_HEALTH, self._health)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int, tls: FrontTLS | None = None) -> int:
        """Listen on host:port (0: a free port), with `tls` HTTPS; the bound port. A kept-alive connection
        whose handshake took certificate files since replaced is closed after its answer (its client
        reconnects, checked against the files as they are: a client whose CA was removed is refused)."""
        self._tls = tls
        await self.client.start()
        # handler_cancellation: a caller that disconnects cancels its request's work, so an upstream
        # exchange it no longer waits for frees its slot (and stops being paid for) at once.
        # keepalive_timeout: aiohttp closes a connection still waiting for a whole request head this long
        # after it opened or was last answered (its own default is an hour)
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.grace_s,
            handler_cancellation=True,
            keepalive_timeout=self.idle_timeout_s,
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None

        def accept() -> asyncio.BaseProtocol:  # aiohttp's own sites take every connection
            open_now = [handler for handler in server.connections if handler.transport is not None]
            if len(open_now) < self.max_connections:
                return server()
            idle = next((handler for handler in open_now if _waits_for_a_request(handler)), None)
            if idle is not None:  # idle connections (or heads sent slowly) do not keep callers out
                idle.force_close()
                self.idle_connections_closed += 1
                if (suppressed := self._sampler.admit(("idle connections",))) is not None:
                    _log.info("http_idle_connection_closed", open=self.max_connections, suppressed=suppressed)
                return server()
            self.refused_connections += 1
            if (suppressed := self._sampler.admit(("connections",))) is not None:
                _log.warning("http_connection_refused", open=self.max_connections, suppressed=suppressed)
            return _Refused()

        self._listener = await asyncio.get_running_loop().create_server(
            accept,
            host,
            port,
            ssl=tls.context if tls is not None else None,
            reuse_address=True,
            ssl_handshake_timeout=min(self.idle_timeout_s, 60.0) if tls is not None else None,
        )
        self.port = int(self._listener.sockets[0].getsockname()[1])  # the bound port (port 0 picks one)
        return self.port

    async def stop(self) -> None:
        """Stop listening, give requests in flight `grace_s` to finish, close the upstream connections."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        await self.client.close()

    async def _close_if_rotated(self, request: web.Request, response: web.StreamResponse) -> None:
        """Close the connection after this answer when its TLS handshake used files since replaced."""
        if self._tls is None or request.transport is None:
            return
        made_with = getattr(request.transport.get_extra_info("ssl_object"), "context", None)
        if made_with is not None and made_with is not self._tls.current():
            response.force_close()  # the connection ends after this answer
            response.headers["Connection"] = "close"  # said too: the hook runs after aiohttp set the headers

    # -- handlers ------------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> None:
        """Unauthenticated unless the request carries a configured token; the token's tenant bound."""
        if self.auth is None:
            return
        admitted, tenant = self.auth.check((("authorization", request.headers.get("Authorization", "")),))
        if not admitted:
            raise Unauthenticated("unauthenticated")
        AUTH_TENANT.set(tenant)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        """200 while the service answers (its bundle loaded and warmed, not draining), else 503 with the
        reason: an HTTP load balancer's probe. No token needed, as gRPC's health service; not counted or
        logged per request (probes come every few seconds)."""
        try:
            self.servicer.check_ready()
        except ServiceError as exc:
            return web.json_response({"status": "NOT_SERVING", "reason": exc.reason}, status=503)
        return web.json_response({"status": "SERVING"})

    async def _models(self, request: web.Request) -> web.StreamResponse:
        async def work(tenant: str, count: Callable[[Outcome], None]) -> web.StreamResponse:
            self.servicer.check_ready()  # 503 while the bundle loads (its list would be empty)
            default = self.servicer.router_for(tenant) and DEFAULT not in self.servicer.visible_routers()
            names = []
            if self.sides:  # not for a file that names models only
                names += [f"{PREFIX}{n}" for n in (*self.servicer.visible_routers(), *([DEFAULT] if default else []))]
            if self.models:
                names.append(MODELS_NAME)
            data = [{"id": name, "object": "model", "created": 0, "owned_by": "lmroute"} for name in names]
            return web.json_response({"object": "list", "data": data})

        return await self._serve(_MODELS, request, work)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        async def work(tenant: str, count: Callable[[Outcome], None]) -> web.StreamResponse:
            raw = await self._read(request)
            async with self.bodies.hold(len(raw)):  # the parsed body lives only inside
                body = self._parse(raw)
                route, left_out = await self._route(body, tenant)
                among = route.HasField("chosen")  # routed among the upstreams file's models
                if among:
                    tier = route.chosen_model  # the upstream is named by the router's model name
                else:
                    tier = "strong" if route.tier == router_pb2.TIER_STRONG else "weak"
                stream = body.get("stream") is True
                asked_usage = usage_asked(body)
                payload = self.client.payload(tier, body)
                spare = None
                # a side falls back to the other side; a model, to the runner-up (the rule's pick without it)
                other = route.runner_up.model if among else OTHER_TIER[tier]
                if self.client.upstreams[tier].fallback and other:
                    headers = self._estimate(route.runner_up) if among else {"x-lmroute-tier": other}
                    headers["x-lmroute-model"] = self.client.upstreams[other].model
                    spare = _Spare(other, self.client.payload(other, body), headers)
                del body
            decided = {
                "x-lmroute-decision-id": route.decision_id,
                "x-lmroute-model": self.client.upstreams[tier].model,
                "x-lmroute-router": route.router,
            }
            if among:
                decided.update(self._estimate(route.chosen))
                if left_out:
                    decided["x-lmroute-left-out"] = ",".join(left_out)
            else:
                decided["x-lmroute-tier"] = tier
                decided["x-lmroute-score"] = f"{route.score:.6g}"
                decided["x-lmroute-threshold"] = f"{route.threshold:.6g}"
            request[_DECIDED] = decided
            slot_tenant = tenant if self.fair_slots else ""
            return await self._forward(request, payload, stream, tier, route, slot_tenant, count, spare, asked_usage)

        return await self._serve(_CHAT, request, work)

    @staticmethod
    def _estimate(of: router_pb2.ModelEstimate) -> dict[str, str]:
        """The headers saying a model chosen among the file's models, with its estimate."""
        return {
            "x-lmroute-chosen": of.model,
            "x-lmroute-predicted-quality": f"{of.predicted_quality:.6g}",
            "x-lmroute-expected-cost-usd": f"{of.expected_cost_usd:.6g}",
        }

    async def _feedback(self, request: web.Request) -> web.StreamResponse:
        async def work(tenant: str, count: Callable[[Outcome], None]) -> web.StreamResponse:
            raw = await self._read(request)
            async with self.bodies.hold(len(raw)):
                body = self._parse(raw)
                try:
                    req = json_format.ParseDict(body, router_pb2.FeedbackRequest())
                except json_format.ParseError as exc:
                    raise InvalidArgument(f"body: not a FeedbackRequest ({exc})", reason="BAD_FEEDBACK") from None
                del body
            resp = await self.servicer.feedback(req, reporter=tenant)
            out = json_format.MessageToDict(
                resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            return web.json_response(out)

        return await self._serve(_FEEDBACK, request, work)

    async def _serve(
        self,
        path: str,
        request: web.Request,
        work: Callable[[str, Callable[[Outcome], None]], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """One request to `path`: its call log line, span and metrics, the token checked and the caller's
        tenant named, then `work(tenant, count)`; a ServiceError becomes the OpenAI-shaped error answer.
        `count` counts the call in the metrics once (work calls it before a streamed answer's end, so a
        scrape after the caller saw the end holds it; else it is counted on return), under the (code,
        reason) it is given for a stream that ended on an error, else the answer's."""
        t0 = time.perf_counter()
        code, reason = "OK", ""
        status: int | None = None  # the answer's HTTP status (None: none went out, the caller went away)
        counted = False

        def count(outcome: Outcome = None) -> None:
            nonlocal counted, code, reason
            if outcome is not None:
                code, reason = outcome
            if self.metrics is not None and not counted:
                counted = True
                self.metrics.in_flight.dec()
                self.metrics.observe(path, code, reason, time.perf_counter() - t0, front=True)

        if self.metrics is not None:
            self.metrics.in_flight.inc()
        tenant_token = AUTH_TENANT.set(None)
        request_id = request.headers.get(REQUEST_ID_KEY, "")[:128] or f"http-{_ID_PREFIX}{next(_ids):016x}"
        request[_REQUEST_ID] = request_id
        with (
            CallLog(request_id=request_id, method=path),
            self.tracing.call(path, request_id, request.headers.items(), transport="http", http_method=request.method)
            if self.tracing is not None
            else contextlib.nullcontext() as span,
        ):
            try:
                self._authenticate(request)
                tenant = self.servicer.tenant_named(request.headers.get(self.servicer.tenant_header, ""))
                if tenant:
                    bind_call(tenant=tenant)  # into the access line and every line the request writes
                answer = await work(tenant, count)
                status = answer.status
                if answer.status >= 400:  # the upstream's own error answer, passed on as it is
                    code, reason = upstream_code(answer.status), f"UPSTREAM_{answer.status}"
                elif (outcome := answer.get(_OUTCOME)) is not None:  # a stream that broke off
                    code, reason = outcome
                return answer
            except ServiceError as exc:
                status, info = http_status(exc)
                code, reason = info.code.name, info.reason
                if status >= 500:  # an upstream's answer stays out of the log (it may quote the prompt)
                    logged = exc.logged if isinstance(exc, (UpstreamFailed, UpstreamTimeout)) else info.message
                    _log.warning("http_error", status=status, reason=reason, error=logged)
                refused = _error(exc)
                refused.headers.update(request.get(_DECIDED, {}))  # routed, then failed: what was decided
                if isinstance(exc, BodyTimeout):  # answered, then closed: the rest of the body is not waited for
                    refused.force_close()
                    await refused.prepare(request)
                    await refused.write_eof()
                    request.protocol.force_close()
                return refused
            except asyncio.CancelledError:  # the caller went away (aiohttp cancels its handler), or shutdown
                code, reason = "CANCELLED", "CALLER_GONE"
                raise
            except Exception as exc:  # a bug: a generic 500, the details in the log
                code, reason = "INTERNAL", "INTERNAL"
                _log.exception("http_unhandled_exception")
                failed = _error(exc)
                status = failed.status
                return failed
            finally:
                AUTH_TENANT.reset(tenant_token)
                if span is not None and self.tracing is not None:
                    self.tracing.finish(span, code, reason, request.get(_DECIDED), http_status=status)
                count()
                self._access_line(path, code, reason, time.perf_counter() - t0, request.remote or "", status)

    def _access_line(
        self, path: str, code: str, reason: str, seconds: float, peer: str, http_status: int | None
    ) -> None:
        """The request's access line, as the gRPC calls' (lmroute.service.interceptors), with the answer's
        HTTP status (None: the caller went away first) and, from the call's log context, its tenant: one
        per request, or sampled (a line per path, code and reason a second) for shed requests and with
        `--access-log sampled`."""
        ms = round(seconds * 1000, 3)
        if code not in SHED_CODES and not self.sample_all:
            if info_enabled():
                _log.info("rpc", code=code, reason=reason, http_status=http_status, ms=ms, peer=peer)
        elif (suppressed := self._sampler.admit((path, code, reason))) is not None:
            _log.info("rpc", code=code, reason=reason, http_status=http_status, ms=ms, peer=peer, suppressed=suppressed)

    async def _read(self, request: web.Request) -> bytes:
        """The request's body, read within `body_timeout_s` (BodyTimeout: HTTP 408, the connection closed)."""
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            why = f"body: larger than {self.max_body_bytes} bytes"
            raise InvalidArgument(why, reason="REQUEST_TOO_LARGE") from None
        except TimeoutError:
            why = f"body: not received in {self.body_timeout_s:g} s"
            raise BodyTimeout(why) from None

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"body: not valid JSON ({exc})", reason="BAD_JSON") from None
        except RecursionError:
            raise InvalidArgument("body: JSON nested too deeply", reason="BAD_JSON") from None
        if not isinstance(body, dict):
            raise InvalidArgument("body: must be a JSON object", reason="BAD_JSON")
        if _SURROGATE_ESCAPE.search(raw):  # JSON may escape a lone surrogate, which no UTF-8 text holds
            try:
                json.dumps(body, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                why = f"body: a string holds an unpaired surrogate ({exc.object[exc.start : exc.end]!a}), not text"
                raise InvalidArgument(why, reason="BAD_JSON") from None
        return body

    def _routable(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The file's models a `models...` request routes among, and those left out: a model whose upstream
        its breaker skips now is left out, so the decision (its id, the spend it counts, its runner-up) is
        among the models that can answer; with fewer than two left, all of them (the exchange then skips
        and falls back as for a side)."""
        breakers = self.client.breakers
        left_out = tuple(m for m in self.models if m in breakers and breakers[m].skipping)
        if not left_out or len(self.models) - len(left_out) < 2:
            return self.models, ()
        return tuple(m for m in self.models if m not in left_out), left_out

    async def _route(self, body: dict[str, Any], tenant: str) -> tuple[router_pb2.RouteResponse, tuple[str, ...]]:
        """The Route call a chat request's `model` asks for: between the strong and weak sides by a named
        router (`router-...`), or among the upstreams file's models (`models...`, lmroute.service.front_models),
        and the models that call left out (their upstreams skipped now: `_routable`)."""
        model = body.get("model")
        self.servicer.check_ready()  # 503 while the bundle loads, not 400 'unknown router' (no router is loaded)
        if is_models_name(model):
            if not self.models:
                why = f"model: {echo(str(model))} routes among the upstreams file's models, and it names none"
                raise InvalidArgument(why, reason="BAD_MODEL")
            among: ModelsAsk | None = parse_models_name(str(model))
        elif not self.sides:  # the file names models only
            why = f"model: the upstreams file names no strong and weak sides; expected {MODELS_FORMS}"
            raise InvalidArgument(f"{why} (got {echo(str(model))})", reason="BAD_MODEL")
        else:
            among = None
            ask = parse_model(model, self.servicer.visible_routers(), self.servicer.router_for(tenant))
        sched = self.servicer.scheduler  # a last user turn over Route's prompt limit is routed on its head and tail
        limit = sched.policy.max_prompt_chars if sched is not None else None
        prompt = prompt_of_messages(
            body.get("messages"), self.servicer.max_turns, limit, self.servicer.max_request_chars
        )
        models, left_out = self._routable() if among is not None else ((), ())
        req = among.request(prompt, models) if among is not None else ask.request(prompt)
        try:
            sent = sent_chars(body) if among is not None else None  # what an expected cost counts
            answer = await self.servicer.route(req, asked_tenant=tenant, timeout_s=None, sent_chars=sent)
            for model in left_out:  # decided without them
                self.client.fallbacks[(model, "left_out")] += 1
            return answer, left_out
        except InvalidArgument as exc:
            if among is not None and exc.reason in _FILE_DOES_NOT_FIT:
                raise UpstreamsMismatch(
                    f"the upstreams file names models the serving bundle cannot route among ({exc.message})",
                    reason="UPSTREAMS_MISMATCH",
                ) from None
            if exc.reason != "MISSING_POLICY":
                raise
            if among is not None:
                raise InvalidArgument(
                    f"model: {echo(str(model))} names no rule and the caller's tenant holds no spend target; "
                    f"name one of {MODELS_FORMS} ({exc.message})",
                    reason=exc.reason,
                ) from None
            router = ask.router or DEFAULT
            raise InvalidArgument(
                f"model: {echo(str(model))} names no threshold or strong share; name one, "
                f"router-{router}-<threshold> or router-{router}@<strong share> ({exc.message})",
                reason=exc.reason,
            ) from None

    async def _forward(
        self,
        request: web.Request,
        payload: bytes,
        stream: bool,
        tier: str,
        route: router_pb2.RouteResponse,
        tenant: str,
        before_end: Callable[[Outcome], None] = lambda outcome: None,
        spare: _Spare | None = None,
        caller_usage: bool = False,
    ) -> web.StreamResponse:
        """The `tier` upstream's answer to `payload`, whole or streamed (`tenant`: whose turn at the
        upstream's slots), or, when it fails before answering, `spare`'s (given when the `tier` upstream
        falls back); `before_end` runs before a streamed answer's end or error event is written (a whole
        one is counted after this returns); `caller_usage`: the caller asked for its stream's usage (else
        a usage the front asked for is not passed on). The exchanges hold their slots at most `upstream_max_s` in
        all; a whole answer is written after the slot is freed; a caller that does not take an answer's
        bytes (whole or streamed) within `write_timeout_s` has its connection closed."""
        up = self.client.upstreams[tier]
        out: web.StreamResponse | None = None
        whole: web.Response | None = None
        events: _EventStream | None = None
        broke: ServiceError | None = None
        deadline = asyncio.timeout(self.upstream_max_s)
        try:
            async with deadline, self._exchange(request, tier, payload, spare, tenant, deadline) as answer:
                up, tier, headers = answer.upstream, answer.upstream.tier, request[_DECIDED]
                if not stream or answer.status != 200:
                    body = redact(await answer.read(), answer.key)  # passed on as it is, but for the upstream's key
                    said = dict(headers)
                    if answer.status >= 400:
                        said.update(answer.retry_headers())
                    else:
                        self.client.count_usage(tier, usage_of(body))
                    whole = web.Response(body=body, status=answer.status, headers=said, content_type=_mime(answer))
                    del body
                elif _mime(answer) != "text/event-stream":
                    raise upstream_failed(up, f"asked for a stream, answered {echo(_mime(answer))}")
                else:
                    out = web.StreamResponse(status=200, headers={**headers, "Content-Type": answer.content_type})
                    await self._send(out, out.prepare(request))
                    drop_usage = answer.upstream.usage_in_streams and not caller_usage
                    events = _EventStream(answer.key.encode("utf-8"), drop_usage)
                    try:
                        async for chunk in answer.chunks():
                            if events.sent + len(chunk) > self.max_stream_bytes:
                                why = f"streamed answer longer than {self.max_stream_bytes} bytes"
                                raise upstream_failed(up, why, reason="ANSWER_TOO_LONG")
                            await self._send(out, out.write(events.passed(chunk)))
                        await self._send(out, out.write(events.rest()))
                        self.client.count_usage(tier, events.usage)
                        if not events.finished:
                            raise upstream_failed(up, "the stream ended before data: [DONE] or a finish_reason")
                    except ServiceError as exc:  # the headers went out: the error goes as the stream's last event
                        broke = exc
            if whole is not None:  # written with the slot freed, each write within write_timeout_s
                await self._send(whole, whole.prepare(request))
                await self._send(whole, whole.write_eof())
                return whole
        except TimeoutError:
            if not deadline.expired():
                raise
            what = f"no whole answer in {self.upstream_max_s:g} s"
            late = upstream_timeout(up, what, reason="UPSTREAM_DEADLINE")
            if out is None and (fell := request.get(_FELL_BACK)) is not None:  # in its fallback: name both
                first, logged, key = fell
                spare_up = self.client.upstreams[key]
                late = UpstreamTimeout(
                    f"{first}; then its fallback {spare_up.label}: {what}",
                    logged=f"{logged}; then its fallback {spare_up.describe()}: {what}",
                    reason="UPSTREAM_DEADLINE",
                )
            if out is None:
                raise late from None
            broke = late
        except _CallerStalled:  # it holds no slot any more; its connection goes too
            _log.warning("http_caller_stalled", tier=tier, stream=out is not None, write_timeout_s=self.write_timeout_s)
            return self._drop(request, out if out is not None else whole, ("CANCELLED", "CALLER_STALLED"))
        except ConnectionResetError:  # the caller went away mid-answer: nothing left to answer
            _log.info("http_caller_gone", tier=tier, stream=out is not None)
            return self._drop(request, out if out is not None else whole, ("CANCELLED", "CALLER_GONE"))
        assert out is not None
        outcome: Outcome = None
        events = _EventStream(b"") if events is None else events
        try:
            if broke is not None:
                _, info = http_status(broke)
                outcome = (info.code.name, info.reason)
                out[_OUTCOME] = outcome
                logged = broke.logged if isinstance(broke, (UpstreamFailed, UpstreamTimeout)) else str(broke)
                _log.warning("http_stream_broke", tier=tier, reason=info.reason, error=logged)
            before_end(outcome)  # counted before the caller can read the error event (its client stops there)
            if broke is not None:
                await self._send(out, out.write(events.error_event(broke)))
            await self._send(out, out.write_eof())
        except _CallerStalled:
            return self._drop(request, out, outcome or ("CANCELLED", "CALLER_STALLED"))
        except ConnectionResetError:
            return self._drop(request, out, outcome or ("CANCELLED", "CALLER_GONE"))
        return out

    @contextlib.asynccontextmanager
    async def _exchange(
        self,
        request: web.Request,
        tier: str,
        payload: bytes,
        spare: _Spare | None,
        tenant: str,
        deadline: asyncio.Timeout,
    ) -> AsyncIterator[Exchange]:
        """The `tier` upstream's exchange; when `spare` is given (the upstream falls back) and the upstream
        fails before its answer starts, or its breaker skips it, the exchange of `spare`, the answer's
        headers (request[_DECIDED]) naming the upstream that answered, and `x-lmroute-fallback` the one
        that did not, without the decision's id (its outcomes are of the choice it made). Both failing:
        one error naming both (request[_FELL_BACK] says what failed first, for a `deadline` that expires in
        the fallback)."""
        request_id = request.get(_REQUEST_ID, "")
        async with contextlib.AsyncExitStack() as stack:
            breaker = self.client.breakers.get(tier) if spare is not None else None
            admit = breaker.admit() if breaker is not None else Admit.TRY
            if admit is Admit.SKIP:
                assert breaker is not None
                why = "skipped"
                first = logged = f"{self.client.upstreams[tier].label}: skipped ({breaker.failures} failures in a row)"
            else:
                try:
                    answer = await self._attempt(
                        stack, tier, payload, tenant, deadline, probe=admit is Admit.PROBE, request_id=request_id
                    )
                except (UpstreamFailed, UpstreamTimeout) as exc:
                    if spare is None:
                        raise
                    why, first, logged = "failed", exc.message, exc.logged
                    _log.warning("upstream_fallback", tier=tier, reason=exc.reason, error=exc.logged)
                else:
                    yield answer
                    return
            assert spare is not None
            self.client.fallbacks[(tier, why)] += 1
            request[_FELL_BACK] = (first, logged, spare.key)
            try:
                answer = await self._attempt(
                    stack,
                    spare.key,
                    spare.payload,
                    tenant,
                    deadline,
                    probe=False,
                    request_id=request_id,
                    fallback_for=tier,
                )
            except (UpstreamFailed, UpstreamTimeout) as again:
                raise type(again)(
                    f"{first}; then its fallback {again.message}",
                    logged=f"{logged}; then its fallback {again.logged}",
                    reason=again.reason,
                    retry_after_ms=again.retry_after_ms,
                ) from None
            decided = {k: v for k, v in request[_DECIDED].items() if k != "x-lmroute-decision-id"}
            request[_DECIDED] = {**decided, **spare.headers, "x-lmroute-fallback": tier}
            yield answer

    async def _attempt(
        self,
        stack: contextlib.AsyncExitStack,
        tier: str,
        payload: bytes,
        tenant: str,
        deadline: asyncio.Timeout,
        *,
        probe: bool,
        request_id: str = "",
        fallback_for: str = "",
    ) -> Exchange:
        """The `tier` upstream's exchange entered on `stack`, its breaker (a side that falls back has one)
        told whether the upstream answered (`probe`: the request its breaker let try it again): a failure,
        or no answer begun before the whole exchange's `deadline`, counts against it. `request_id` goes
        with the request; `fallback_for`: the upstream it stands in for."""
        breaker = self.client.breakers.get(tier)
        exchange = self.client.exchange(tier, payload, tenant, request_id=request_id, fallback_for=fallback_for)
        try:
            answer = await stack.enter_async_context(exchange)
        except (UpstreamFailed, UpstreamTimeout):
            self._failed(tier, probe)
            raise
        except BaseException:  # cancelled: the whole exchange's time ran out, or the caller went away
            if deadline.expired():  # it held the request that long without answering: as good as failed
                self._failed(tier, probe)
            elif breaker is not None and probe:
                breaker.abandoned()
            raise
        if breaker is not None and breaker.answered():
            _log.info("upstream_restored", tier=tier)
        return answer

    def _failed(self, tier: str, probe: bool) -> None:
        """Count a failure against the `tier` upstream's breaker, if it has one."""
        breaker = self.client.breakers.get(tier)
        if breaker is not None and breaker.failed(probe):
            _log.warning("upstream_skipped", tier=tier, failures=breaker.failures, for_s=breaker.for_s)

    async def _send(self, out: web.StreamResponse, write: Awaitable[Any]) -> None:
        """`write` (of `out`) awaited within `write_timeout_s`; _CallerStalled when it does not finish."""
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await write
        except TimeoutError:
            raise _CallerStalled from None

    @staticmethod
    def _drop(request: web.Request, out: web.StreamResponse | None, outcome: tuple[str, str]) -> web.StreamResponse:
        """The answer to a caller whose connection is closed now (what it has not read is dropped)."""
        if request.transport is not None:
            request.transport.abort()
        answer = out if out is not None else web.StreamResponse(status=499)
        answer[_OUTCOME] = outcome
        return answer


def _mime(answer: Any) -> str:
    return str(answer.content_type).split(";", 1)[0].strip() or "application/json"
