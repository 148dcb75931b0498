"""StreamSlots: at most `max_streams` streaming calls (health Watch, server reflection) open at once.

Under the thread transport every open call holds a pool thread until it ends, a health Watch stream for
as long as its client keeps it open. The health service needs no token, so without a bound any peer
could open `grpc_threads` Watch streams and leave no thread for Route: gRPC would then refuse every
unary call ("Concurrent RPC limit exceeded!"). With the slots, streams hold at most `max_streams` of the
threads and the other `grpc_threads - max_streams` stay for unary calls. Under grpc.aio a stream holds a
coroutine, not a thread; the same bound keeps their number, and their memory, bounded there too.

A stream past the bound is refused before it holds anything: RESOURCE_EXHAUSTED, reason
TOO_MANY_STREAMS, with a retry delay (lmroute.service.errors). Unary calls never take a slot. Who
applies it: the thread transport's bridge (`capped_sync`, lmroute.service.transports) and, on grpc.aio,
the request-context interceptor (`capped_aio`, lmroute.service.interceptors).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from lmroute.service.errors import TooManyStreams, status_of
from lmroute.service.malformed import Malformed, malformed_error, tolerant_deserializer
from lmroute.service.wire_status import wire_status

__all__ = ["StreamSlots", "capped_aio", "capped_handler", "capped_sync"]


class StreamSlots:
    """A count of open streaming calls, at most `limit`; taken and released from any thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()
        self.refused = 0  # streams refused so far
        refusal = TooManyStreams(
            f"{limit} streaming calls (health Watch, server reflection) are open, the server's max_streams; "
            "retry after the delay, or close a stream"
        )
        self.refusal = wire_status(status_of(refusal))

    @property
    def open(self) -> int:
        return self._open

    def take(self) -> bool:
        """One slot, if one is free (never waits)."""
        with self._lock:
            if self._open >= self.limit:
                self.refused += 1
                return False
            self._open += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._open -= 1


def _malformed_status(request: Any, method: str, context: Any) -> grpc.Status | None:
    """The INVALID_ARGUMENT (MALFORMED_REQUEST) a request that did not decode is answered with, or None."""
    if not isinstance(request, Malformed):
        return None
    return wire_status(status_of(malformed_error(request, method, context.peer())))


def capped_sync(
    slots: StreamSlots, behaviour: Callable[[Any, Any], Iterator[Any]], method: str = ""
) -> Callable[[Any, Any], Any]:
    """A synchronous streaming behaviour (request or request iterator, context) -> its messages, run only
    while it holds a slot; refused with `slots.refusal` when none is free, and a request that did not
    decode (lmroute.service.malformed) refused before it takes one."""

    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if (bad := _malformed_status(request, method, context)) is not None:
            context.abort_with_status(bad)
        if not slots.take():
            context.abort_with_status(slots.refusal)
        try:
            yield from behaviour(request, context)
        finally:
            slots.release()

    return call


def capped_aio(slots: StreamSlots, behaviour: Callable[[Any, Any], Any], method: str = "") -> Callable[[Any, Any], Any]:
    """A grpc.aio streaming behaviour, either kind (an async generator of messages, or a coroutine that
    sends with `context.write`), run only while it holds a slot (a request that did not decode refused
    first, as `capped_sync` does)."""

    async def refuse(context: grpc.aio.ServicerContext, status: grpc.Status | None = None) -> None:
        status = status or slots.refusal
        await context.abort(status.code, status.details, status.trailing_metadata)

    if inspect.isasyncgenfunction(behaviour):

        async def messages(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if (bad := _malformed_status(request, method, context)) is not None:
                await refuse(context, bad)
            if not slots.take():
                await refuse(context)
            try:
                async for message in behaviour(request, context):
                    yield message
            finally:
                slots.release()

        return messages

    async def writes(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if (bad := _malformed_status(request, method, context)) is not None:
            await refuse(context, bad)
        if not slots.take():
            await refuse(context)
        try:
            return await behaviour(request, context)
        finally:
            slots.release()

    return writes


def capped_handler(
    handler: grpc.RpcMethodHandler, cap: Callable[[Callable[[Any, Any], Any]], Callable[[Any, Any], Any]]
) -> grpc.RpcMethodHandler:
    """A streaming `handler` with its behaviour passed through `cap`; a unary-unary one as it is. One with
    one request (a health Watch) decodes it with `tolerant_deserializer`, so that `cap` can refuse bytes
    that are no request as INVALID_ARGUMENT."""
    kinds = (
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    )
    for behaviour, make in kinds:
        if behaviour is not None:
            one = behaviour is handler.unary_stream
            return make(
                cap(behaviour),
                request_deserializer=tolerant_deserializer(handler.request_deserializer)
                if one
                else handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler
