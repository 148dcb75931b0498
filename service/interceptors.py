"""Server interceptor: request id + token check + structured access log + metrics + the one place errors
become gRPC statuses.

With an Authenticator (lmroute.service.auth) every unary call but the health service's must carry a
valid token, or it ends UNAUTHENTICATED ("unauthenticated", nothing about which check failed); the
token's tenant is set in `AUTH_TENANT` for the handler. With ServiceMetrics each call is counted
(lmroute.service.metrics).

Every unary-unary RPC gets a request id (the client's `x-request-id` metadata, or a fresh one: this
process's random prefix and a counter, 32 hex characters, unique without a random draw per call), put
with the method into the call's log context (lmroute.service.logs) and echoed in trailing metadata. A
ServiceError becomes its status from the errors table, with google.rpc ErrorInfo (reason) and RetryInfo
details; any other exception is logged with its traceback and returned as INTERNAL without its text.
Each call writes one access line (`rpc`: code, milliseconds, the peer; the decision id of a Route answer
and, with tracing, the trace id, from the log context), except calls shed under load
(RESOURCE_EXHAUSTED, UNAVAILABLE), whose lines are sampled: at most one per method, code and reason per
second, carrying the count left out before it (`suppressed`), so an overload does not turn into a flood
of log lines. With `--access-log sampled` every call's line is sampled so, for call rates where a line per
call floods the log (benchmarks/ghz/results/access_log: a few per cent of a static-tier call's CPU).

Request bytes that do not decode as the method's request message are an InvalidArgument (reason
MALFORMED_REQUEST), logged once as `malformed_request` with the method, the peer and the byte count
(never the bytes). grpc.aio decodes a request with the handler's deserializer before the handler runs,
and a deserializer that raises would end the call as UNKNOWN unlogged; so each wrapped handler gets a
deserializer that returns a `Malformed` marker instead of raising, and the wrapper refuses the marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc
import structlog

from lmroute.service.auth import AUTH_TENANT, OPEN_METHOD_PREFIXES, Authenticator
from lmroute.service.errors import (
    DEADLINE_SLACK_S,
    InvalidArgument,
    ServiceError,
    StatusInfo,
    Unauthenticated,
    status_of,
)
from lmroute.service.logs import SHED_CODES, CallLog, LogSampler, info_enabled
from lmroute.service.malformed import Malformed, malformed_error, tolerant_deserializer
from lmroute.service.metrics import ServiceMetrics
from lmroute.service.stream_cap import StreamSlots, capped_aio, capped_handler
from lmroute.service.tracing import Tracing
from lmroute.service.wire_status import code_name, wire_status

__all__ = [
    "REQUEST_ID_KEY",
    "EarlyCheck",
    "EarlyRefusals",
    "RequestContextInterceptor",
]

REQUEST_ID_KEY = "x-request-id"
_log = structlog.get_logger("lmroute.rpc")
_ID_PREFIX = secrets.token_hex(8)  # this process's part of every fresh request id
_id_counter = itertools.count()


def _malformed(request: Malformed, context: grpc.aio.ServicerContext, method: str) -> InvalidArgument:
    """Log the undecodable request once and the InvalidArgument it is answered with."""
    return malformed_error(request, method, context.peer())


async def _abort(context: grpc.aio.ServicerContext, info: StatusInfo, request_id: str) -> NoReturn:
    """End the call with `info` (`wire_status`) and the request id."""
    status = wire_status(info, ((REQUEST_ID_KEY, request_id),))
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("abort returned")  # pragma: no cover


EarlyCheck = Callable[[Any, Any, "str | None"], "tuple[ServiceError, Callable[[], None]] | None"]
"""(request, its metadata, the tenant its token is bound to) -> (the error the loop would refuse it with,
what to count on the loop when it is refused here), or None to let the call go on to the loop."""


class EarlyRefusals:
    """Refuses a call on a pool thread of the thread transport, before it crosses to the event loop, when
    `check` says the loop would refuse it (a Feedback call past its tenant's rate: a flood of them, each
    crossing to the loop and back, kept other tenants' Route calls waiting on gRPC's threads and the
    interpreter lock; benchmarks/results/feedback_flood).

    The caller sees what the loop would have answered: the same status, reason, retry delay and request
    id; the call is counted in the metrics before its status leaves, as every call is. A call whose token
    is not admitted, or that `check` passes, goes on to the loop, which answers it as ever. What must run
    on the loop (the sampled access line, `check`'s own counting) is handed to it without waiting, in
    batches: a burst of refusals wakes the loop once, not once each."""

    def __init__(
        self,
        method: str,
        check: EarlyCheck,
        loop: asyncio.AbstractEventLoop,
        *,
        auth: Authenticator | None,
        metrics: ServiceMetrics | None,
        sampler: LogSampler,
        sample_all: bool = False,
    ) -> None:
        self.method = method
        self._sample_all = sample_all
        self._check = check
        self._loop = loop
        self._auth = auth
        self._metrics = metrics
        self._sampler = sampler
        self.refused = 0  # calls refused here (pool threads count under the lock)
        self._lock = threading.Lock()
        self._pending: list[tuple[StatusInfo, str, float, str, Callable[[], None]]] = []  # for the loop
        self._scheduled = False  # a drain of `_pending` is scheduled on the loop

    def __call__(self, request: Any, context: grpc.ServicerContext) -> None:
        """Return to let the call go on; end it (context.abort raises) when the loop would refuse it."""
        t0 = time.perf_counter()
        if isinstance(request, Malformed):
            return
        metadata = context.invocation_metadata() or ()
        bound = None
        if self._auth is not None:
            admitted, bound = self._auth.check(metadata)
            if not admitted:
                return
        verdict = self._check(request, metadata, bound)
        if verdict is None:
            return
        exc, count = verdict
        info = status_of(exc)
        request_id = _request_id(context)
        status = wire_status(info, ((REQUEST_ID_KEY, request_id),))
        seconds = time.perf_counter() - t0
        if self._metrics is not None:
            self._metrics.observe(self.method, info.code.name, info.reason, seconds)
        with self._lock:  # the loop's part, handed over in batches: one wake-up of the loop per batch
            self.refused += 1
            self._pending.append((info, request_id, seconds, str(context.peer()), count))
            wake, self._scheduled = not self._scheduled, True
        if wake:
            with contextlib.suppress(RuntimeError):  # the loop closed (the server stopped): nothing to log
                self._loop.call_soon_threadsafe(self._drain)
        context.set_trailing_metadata(status.trailing_metadata)
        context.abort(status.code, status.details)

    def _drain(self) -> None:
        """On the loop: the refusals handed over since the last drain."""
        while True:
            with self._lock:
                if not self._pending:
                    self._scheduled = False
                    return
                batch, self._pending = self._pending, []
            for args in batch:
                self._after(*args)

    def _after(self, info: StatusInfo, request_id: str, seconds: float, peer: str, count: Callable[[], None]) -> None:
        """On the loop: the call's access line (sampled as the loop's own refusals are), `check`'s counting."""
        count()
        with CallLog(request_id=request_id, method=self.method):
            _access_line(
                self._sampler, self._sample_all, self.method, info.code.name, info.reason, seconds, lambda: peer
            )


def _access_line(
    sampler: LogSampler,
    sample_all: bool,
    method: str,
    code: str,
    reason: str,
    seconds: float,
    peer: Callable[[], object],
) -> None:
    """A call's access line (`rpc`), in its call log context: one per call, but those shed under load (and
    with `sample_all` every one) sampled, at most one per method, code and reason per second. `peer` is
    asked only for a line written."""
    ms = round(seconds * 1000, 3)
    if code not in SHED_CODES and not sample_all:
        if info_enabled():
            _log.info("rpc", code=code, ms=ms, peer=peer())
    elif (suppressed := sampler.admit((method, code, reason))) is not None:
        _log.info("rpc", code=code, reason=reason, ms=ms, peer=peer(), suppressed=suppressed)


class RequestContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type stubs: Any
    """Wraps unary-unary handlers; streaming ones (health Watch, reflection) pass through, each taking one
    of `streams` while it is open when given (grpc.aio: lmroute.service.stream_cap; the thread transport
    caps its streams itself).

    The wrapped handler of each method is built once and kept (the request's metadata is read from the
    call's context), so a call costs a dictionary lookup here, not a new handler and closure."""

    def __init__(
        self,
        auth: Authenticator | None = None,
        metrics: ServiceMetrics | None = None,
        tracing: Tracing | None = None,
        streams: StreamSlots | None = None,
        sample_all: bool = False,
    ) -> None:
        # method -> (its handler, the wrapped handler): one entry per method, rebuilt if the handler changes
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._streams = streams  # None: streams not capped here
        self._sample_all = sample_all  # every call's access line sampled (--access-log sampled), not only shed ones
        self._sampler = LogSampler(period_s=1.0)  # sampled access lines: one per second per kind
        self._auth = auth  # None: every caller is let in
        self._metrics = metrics  # None: no metrics
        self._tracing = tracing  # None: no spans

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is None:
            return handler if self._streams is None else self._capped(handler_call_details.method, handler)
        return self.wrap(handler_call_details.method, handler)

    def early_refusals(self, method: str, check: EarlyCheck, loop: asyncio.AbstractEventLoop) -> EarlyRefusals:
        """Refusals of `method`'s calls on the thread transport's pool threads, with this interceptor's
        token check, metrics and access-line sampler (lmroute.service.transports)."""
        if self._tracing is not None:
            raise ValueError("early refusals make no span: not with tracing")
        return EarlyRefusals(
            method,
            check,
            loop,
            auth=self._auth,
            metrics=self._metrics,
            sampler=self._sampler,
            sample_all=self._sample_all,
        )

    def _capped(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """A streaming `handler` that holds one of the stream slots while open (built once per method)."""
        return self._once(method, handler, self._build_capped)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` (unary-unary) of `method` with the request id, token check, access line, metrics and
        error mapping around it; built once per method (lmroute.service.transports calls this directly)."""
        return self._once(method, handler, self._build_wrapped)

    def _once(
        self,
        method: str,
        handler: grpc.RpcMethodHandler,
        build: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler],
    ) -> grpc.RpcMethodHandler:
        """`build(method, handler)`, kept per method and built again only when the method's handler changes."""
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, build(method, handler))
        return known[1]

    def _build_capped(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        slots = self._streams
        assert slots is not None
        return capped_handler(handler, lambda behaviour: capped_aio(slots, behaviour, method))

    def _build_wrapped(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        auth = None if method.startswith(OPEN_METHOD_PREFIXES) else self._auth
        return _wrap_unary(
            handler, method, self._sampler, auth, self._metrics, self._tracing, sample_all=self._sample_all
        )


def _aborted_code(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
    """The status code's name a handler's `context.abort` ended the call with: the thread transport's
    Aborted carries it, grpc.aio's context holds it ("UNKNOWN" when neither says)."""
    code: object = getattr(exc, "code", None)
    if not isinstance(code, grpc.StatusCode):
        try:
            code = context.code()
        except Exception:  # an experimental grpc.aio method: absent or unimplemented
            code = None
    if isinstance(code, int):
        return code_name(code)
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call's deadline has passed, within DEADLINE_SLACK_S (gRPC ends a call at its deadline
    by a clock of its own; False for a call without one)."""
    try:
        left = context.time_remaining()
    except Exception:  # a context that cannot say
        return False
    return left is not None and left <= DEADLINE_SLACK_S


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)[:128]
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def _wrap_unary(
    handler: grpc.RpcMethodHandler,
    method: str,
    sampler: LogSampler,
    auth: Authenticator | None = None,
    metrics: ServiceMetrics | None = None,
    tracing: Tracing | None = None,
    *,
    sample_all: bool = False,
) -> grpc.RpcMethodHandler:
    """`handler` with the request id, the token check (`auth`), the access log line, the metrics and the
    error-to-status mapping around it.

    Calls shed under load (RESOURCE_EXHAUSTED, UNAVAILABLE), and with `sample_all` every call, get a
    sampled access line: the first of each method, code and reason per second, with `suppressed` = the
    lines of that kind left out before it; every other call gets its own line."""
    inner = handler.unary_unary

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        request_id = _request_id(context)
        t0 = time.perf_counter()
        code, reason = "OK", ""
        tenant_token = AUTH_TENANT.set(None)
        counted = False

        def count() -> None:
            """Count the call once, before its status leaves: a scrape after the caller saw it holds it."""
            nonlocal counted
            if metrics is not None and not counted:
                counted = True
                metrics.in_flight.dec()
                metrics.observe(method, code, reason, time.perf_counter() - t0)

        if metrics is not None:
            metrics.in_flight.inc()
        with (
            CallLog(request_id=request_id, method=method),
            tracing.call(method, request_id, context.invocation_metadata() or ())
            if tracing is not None
            else contextlib.nullcontext() as span,
        ):
            try:
                context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
                if auth is not None:
                    admitted, tenant = auth.check(context.invocation_metadata())
                    if not admitted:
                        raise Unauthenticated("unauthenticated")
                    AUTH_TENANT.set(tenant)
                if isinstance(request, Malformed):
                    raise _malformed(request, context, method)
                return await inner(request, context)
            except ServiceError as exc:
                info = status_of(exc)
                code, reason = info.code.name, info.reason
                if code == "INTERNAL":
                    _log.error("rpc_internal_error", error=repr(exc))
                count()
                await _abort(context, info, request_id)
            except asyncio.CancelledError:  # the caller went away, or its deadline passed (gRPC ends the call)
                code = "DEADLINE_EXCEEDED" if _deadline_passed(context) else "CANCELLED"
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError) or type(exc).__name__ == "AbortError":
                    code = _aborted_code(exc, context)  # a handler's own context.abort (the health service's)
                    raise
                code = "INTERNAL"
                _log.exception("rpc_unhandled_exception")
                count()
                await _abort(context, status_of(exc), request_id)
            finally:
                AUTH_TENANT.reset(tenant_token)
                seconds = time.perf_counter() - t0
                count()
                if span is not None and tracing is not None:
                    tracing.finish(span, code, reason)
                _access_line(sampler, sample_all, method, code, reason, seconds, context.peer)

    return grpc.unary_unary_rpc_method_handler(
        wrapped,
        request_deserializer=tolerant_deserializer(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
