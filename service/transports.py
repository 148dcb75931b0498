"""The two gRPC transports a RouterServer can serve on; the servicers are the same coroutines either way.

- `ThreadTransport` (`--transport threads`; `auto`, the default, picks it for a static-encoder bundle on
  a loopback `--host`): a synchronous `grpc.server`. gRPC's own threads receive each call and a pool
  thread deserialises it, then hands the servicer's coroutine (wrapped by the request-context
  interceptor's logic: request id, token check, access line, metrics, the error-to-status table) to the
  server's event loop and waits for its answer; the loop thread runs only Python that is ours. Side by
  side on one core with a static bundle (benchmarks/ghz/results/tiers), this answers about 1.5x the
  Route calls of grpc.aio, which pays for every call's gRPC work on the event loop thread.
- `AioTransport` (`--transport aio`; auto's pick for any other bundle, whose encoder's milliseconds a
  call decide its rate, and for any bind other than loopback): grpc.aio on the event loop, the
  interceptor as a grpc.aio interceptor. It answers a call at concurrency 1 sooner (one thread instead
  of three), and under a storm of refused calls re-sent at once it leaves an ONNX scorer more of the
  core.

Each open call holds a pool thread while its coroutine runs on the loop (a health Watch stream, for as
long as it is open). A call arriving while `grpc_threads` calls are open is refused by gRPC itself
(RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!", without the service's reason or retry delay); the
default, 256, is far past what admission lets wait on a static bundle at its rate (the work ahead is
bounded by `admit_wait_ms`), so under overload the service's own refusals come first. Streaming calls
(health Watch, server reflection) hold at most `max_streams` of the threads, on either transport
(lmroute.service.stream_cap), so open streams never take the threads unary calls need.

A method may have a gate the pool thread asks first (`gates`): the server gives Feedback one, which
refuses a call past its tenant's rate there, as the loop would, without the crossing
(lmroute.service.interceptors.EarlyRefusals).

How a call crosses: the pool thread schedules the coroutine with `asyncio.run_coroutine_threadsafe`,
registers a callback that cancels it when the call ends early (the client cancelled, the deadline
passed), and blocks on the result. `LoopContext` gives the coroutine the part of grpc.aio's servicer
context the service uses; its `abort` raises `Aborted`, which the pool thread turns into the call's
status, trailing metadata included.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

import grpc
from grpc_reflection.v1alpha import reflection

from lmroute.service.malformed import tolerant_deserializer
from lmroute.service.stream_cap import StreamSlots, capped_handler, capped_sync

__all__ = ["AioTransport", "Aborted", "LoopContext", "ThreadTransport", "Transport"]

NO_DEADLINE_S = 1e8
"""A remaining time above this (about three years) is a call without a deadline: the synchronous server
reports those as a huge number where grpc.aio says None."""

AddServicer = Callable[[Any, Any], None]
"""A generated `add_XServicer_to_server(servicer, server)`."""

UnaryWrapper = Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]
"""(method, handler) -> the handler with the request-context logic around it (unary-unary only)."""


class Aborted(grpc.aio.AbortError):  # type: ignore[misc]  # grpc has no type stubs: Any
    """`LoopContext.abort`: the status the pool thread ends the call with."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: Sequence[tuple[str, str | bytes]]) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailers = tuple(trailers)


class LoopContext:
    """The servicer context a coroutine sees under `ThreadTransport`: grpc.aio's methods the service calls,
    over the synchronous call's context (read from the loop thread; the pool thread waits meanwhile)."""

    __slots__ = ("_ctx", "_out")

    def __init__(self, ctx: grpc.ServicerContext, out: queue.SimpleQueue[Any] | None = None) -> None:
        self._ctx = ctx
        self._out = out  # a streaming call's messages, in order, for the pool thread to send

    def invocation_metadata(self) -> Any:
        return self._ctx.invocation_metadata()

    def time_remaining(self) -> float | None:
        left = self._ctx.time_remaining()
        return None if left is None or left > NO_DEADLINE_S else float(left)

    def peer(self) -> str:
        return str(self._ctx.peer())

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self._ctx.set_trailing_metadata(tuple(metadata))

    async def write(self, message: Any) -> None:
        if self._out is None:
            raise RuntimeError("write: not a streaming call")
        self._out.put(message)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, Any]] = ()
    ) -> NoReturn:
        raise Aborted(code, details, trailing_metadata)


class _Collected:
    """Takes what a generated `add_XServicer_to_server` registers: method path -> its handler."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        pass  # the same handlers come again, by name, below

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler


def _on_loop(
    loop: asyncio.AbstractEventLoop, coro: Any, context: grpc.ServicerContext
) -> concurrent.futures.Future[Any]:
    """`coro` scheduled on `loop`, cancelled if the call ends before it does."""
    fut = asyncio.run_coroutine_threadsafe(coro, loop)
    if not context.add_callback(fut.cancel):  # the call has already ended
        fut.cancel()
    return fut


def _result(fut: concurrent.futures.Future[Any], context: grpc.ServicerContext) -> Any:
    """The coroutine's answer; its abort, or its cancellation, as the call's status."""
    try:
        return fut.result()
    except Aborted as exc:
        if exc.trailers:  # as grpc.aio's abort: none given keeps those set before (the request id)
            context.set_trailing_metadata(exc.trailers)
        context.abort(exc.code, exc.details)
    except concurrent.futures.CancelledError:
        context.abort(grpc.StatusCode.CANCELLED, "cancelled")


Gate = Callable[[Any, grpc.ServicerContext], None]
"""Asked on the pool thread before a call crosses to the loop: returns to let it go on, or ends it
(`context.abort` raises) as the loop would (lmroute.service.interceptors.EarlyRefusals)."""


def _unary(
    loop: asyncio.AbstractEventLoop, inner: Callable[..., Any], gate: Gate | None = None
) -> Callable[[Any, grpc.ServicerContext], Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        if gate is not None:
            gate(request, context)
        return _result(_on_loop(loop, inner(request, LoopContext(context)), context), context)

    return call


def _unary_stream(
    loop: asyncio.AbstractEventLoop, inner: Callable[..., Any]
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """A server-streaming handler written for grpc.aio (it sends with `await context.write(m)`)."""
    done = object()

    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        fut = _on_loop(loop, inner(request, LoopContext(context, out)), context)
        fut.add_done_callback(lambda _: out.put(done))
        while (message := out.get()) is not done:
            yield message
        _result(fut, context)

    return call


class _Bridge(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no type stubs: Any
    """Serves the collected grpc.aio handlers from a synchronous server, each call's coroutine on `loop`;
    a streaming call only while it holds one of `slots`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, slots: StreamSlots, gates: Mapping[str, Gate]) -> None:
        self._loop = loop
        self._slots = slots
        self._gates = gates
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add(self, method: str, handler: grpc.RpcMethodHandler) -> None:
        if handler.unary_unary is not None:
            behaviour = grpc.unary_unary_rpc_method_handler(
                _unary(self._loop, handler.unary_unary, self._gates.get(method)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        elif handler.unary_stream is not None:
            behaviour = grpc.unary_stream_rpc_method_handler(
                capped_sync(self._slots, _unary_stream(self._loop, handler.unary_stream), method),
                request_deserializer=tolerant_deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        else:
            raise ValueError(f"{method}: only unary requests cross to the event loop")
        self._handlers[method] = behaviour

    def add_sync(self, method: str, handler: grpc.RpcMethodHandler) -> None:
        """A synchronous servicer's handler, served in the pool thread as it is (streaming: capped)."""
        self._handlers[method] = capped_handler(handler, lambda behaviour: capped_sync(self._slots, behaviour, method))

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)


class _Ports:
    """What both transports do alike with their gRPC server (`_server`): reflection and ports."""

    _server: Any

    def enable_reflection(self, service_names: Sequence[str], pool: Any) -> None:
        reflection.enable_server_reflection(service_names, self._server, pool=pool)

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        if credentials is None:
            return int(self._server.add_insecure_port(address))
        return int(self._server.add_secure_port(address, credentials))


class ThreadTransport(_Ports):
    """A synchronous grpc.server whose calls run the servicers' coroutines on the caller's event loop."""

    def __init__(
        self,
        options: list[tuple[str, int]],
        threads: int,
        wrap_unary: UnaryWrapper,
        loop: asyncio.AbstractEventLoop,
        slots: StreamSlots,
        gates: Mapping[str, Gate] | None = None,
    ) -> None:
        """`gates`: method -> what a pool thread asks before that method's calls cross to the loop."""
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc-call")
        self._server = grpc.server(self._pool, options=options, maximum_concurrent_rpcs=threads)
        self._bridge = _Bridge(loop, slots, gates or {})
        self._wrap = wrap_unary
        self._server.add_generic_rpc_handlers((self._bridge,))

    def add_servicer(self, add: AddServicer, servicer: Any) -> None:
        collected = _Collected()
        add(servicer, collected)
        if not collected.handlers:
            raise ValueError(f"{add.__name__}: registered no method by name (gRPC code generated before 1.63?)")
        for method, handler in collected.handlers.items():
            self._bridge.add(method, self._wrap(method, handler) if handler.unary_unary is not None else handler)

    def enable_reflection(self, service_names: Sequence[str], pool: Any) -> None:
        """grpc's synchronous reflection servicer, its streams capped like the others."""
        collected = _Collected()
        reflection.enable_server_reflection(service_names, collected, pool=pool)
        for method, handler in collected.handlers.items():
            self._bridge.add_sync(method, handler)

    async def start(self) -> None:
        self._server.start()

    async def stop(self, grace_s: float | None) -> None:
        """Stop taking calls; calls in flight get `grace_s` (their coroutines need the loop: not blocked)."""
        stopped = self._server.stop(grace_s)
        await asyncio.to_thread(stopped.wait)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def wait(self) -> None:
        await asyncio.to_thread(self._server.wait_for_termination)


class AioTransport(_Ports):
    """grpc.aio on the event loop, with the request-context interceptor (which caps the streams here)."""

    def __init__(self, options: list[tuple[str, int]], interceptor: grpc.aio.ServerInterceptor) -> None:
        self._server = grpc.aio.server(options=options, interceptors=[interceptor])

    def add_servicer(self, add: AddServicer, servicer: Any) -> None:
        add(servicer, self._server)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace_s: float | None) -> None:
        await self._server.stop(grace_s)

    async def wait(self) -> None:
        await self._server.wait_for_termination()


Transport = ThreadTransport | AioTransport
