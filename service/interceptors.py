"""Server interceptor: request id + structured access log + the one place errors become gRPC statuses.

Every unary-unary RPC gets a request id (the client's `x-request-id` metadata, or a fresh one), bound
into structlog's contextvars and echoed in trailing metadata. A ServiceError becomes its status from
the errors table, with google.rpc ErrorInfo (reason) and RetryInfo details; any other exception is
logged with its traceback and returned as INTERNAL without its text.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from lmroute.service.errors import ServiceError, StatusInfo, status_of

__all__ = ["RequestContextInterceptor", "ERROR_DOMAIN", "REQUEST_ID_KEY"]

ERROR_DOMAIN = "lmroute.v1"
REQUEST_ID_KEY = "x-request-id"
_log = structlog.get_logger("lmroute.rpc")


async def _abort(context: grpc.aio.ServicerContext, info: StatusInfo, request_id: str) -> NoReturn:
    """End the call with `info` as a google.rpc.Status (ErrorInfo, RetryInfo details) and the request id."""
    details = []
    err = any_pb2.Any()
    err.Pack(error_details_pb2.ErrorInfo(reason=info.reason, domain=ERROR_DOMAIN))
    details.append(err)
    if info.retry_after_ms is not None:
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(info.retry_after_ms)
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    status = rpc_status.to_status(status_pb2.Status(code=int(info.code), message=info.message, details=details))
    trailers = (*status.trailing_metadata, (REQUEST_ID_KEY, request_id))
    await context.abort(status.code, status.details, trailers)
    raise AssertionError("abort returned")  # pragma: no cover


class RequestContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc has no type stubs: Any
    """Wraps unary-unary handlers; streaming ones (health Watch, reflection) pass through.

    The wrapped handler of each method is built once and kept (the request's metadata is read from the
    call's context), so a call costs a dictionary lookup here, not a new handler and closure."""

    def __init__(self) -> None:
        # method -> (its handler, the wrapped handler): one entry per method, rebuilt if the handler changes
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, _wrap_unary(handler, method))
        return known[1]


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)[:128]
    return uuid.uuid4().hex


def _wrap_unary(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """`handler` with the request id, the access log line and the error-to-status mapping around it."""
    inner = handler.unary_unary

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        request_id = _request_id(context)
        t0 = time.perf_counter()
        code = "OK"
        with structlog.contextvars.bound_contextvars(request_id=request_id, method=method):
            try:
                context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
                return await inner(request, context)
            except ServiceError as exc:
                info = status_of(exc)
                code = info.code.name
                if code == "INTERNAL":
                    _log.error("rpc_internal_error", error=repr(exc))
                await _abort(context, info, request_id)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError) or type(exc).__name__ == "AbortError":
                    raise
                code = "INTERNAL"
                _log.exception("rpc_unhandled_exception")
                await _abort(context, status_of(exc), request_id)
            finally:
                _log.info("rpc", code=code, ms=round((time.perf_counter() - t0) * 1000, 3))

    return grpc.unary_unary_rpc_method_handler(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
