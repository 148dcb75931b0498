"""OpenTelemetry traces (`--tracing`, off by default): one span per call, with the stages its prompts went
through as child spans.

    lmroute.rpc <method>            the call, from the interceptor (attributes: rpc.system, rpc.service,
                                    rpc.method, rpc.code, lmroute.request_id); the child of the caller's
                                    span when its metadata (or HTTP headers) carry a W3C traceparent
      admission                     the call entered admission .. its prompts entered the queue
                                    (the refusal checks and tokenising)
      queue                         .. their batch left the queue
      encode                        .. the batch's encoder finished
      score                         batch left the queue .. it was scored (encoder and routers)
      lmroute.upstream <upstream>   (OpenAI front) the exchange with an upstream: request sent .. its
                                    answer read or streamed (lmroute.service.upstream_client); the
                                    request carries this span's W3C traceparent

A call through the OpenAI front is an HTTP server span (`http.request.method`, `url.path`,
`http.response.status_code`, and `rpc.code`, the code it is counted under) that also carries what its
answer's headers say (`lmroute.decision_id`, `lmroute.tier` or `lmroute.chosen`, `lmroute.model`,
`lmroute.fallback`, `lmroute.left_out`, ...).

A span's status is set by `finish` alone: the SDK's own handling of an exception leaving the span
(status ERROR with the exception's text, and an `exception` event with its stack trace on every refused
call) is turned off.

The stage spans are made after the scheduler answers, from the times it recorded for each prompt
(`lmroute.service.batch_queue.StageTimes`); for a call of several prompts each stage spans from the
earliest start to the latest end of its prompts. The trace id goes into the call's access-log line.

`--tracing console` installs an OpenTelemetry SDK tracer provider that prints spans as JSON to stdout,
from a batch processor's thread: a bounded queue (spans beyond it are dropped), so a stdout nobody reads
never blocks the event loop (a span written at its end, synchronously, froze the whole server);
`--tracing external` uses the tracer provider the process already has (one set up by the embedding
program, or by `opentelemetry-instrument` and its environment variables, e.g. an OTLP exporter). The
`opentelemetry-api` / `-sdk` packages are the `tracing` extra; without them, tracing other than `off` is
refused at startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from lmroute.service.batch_queue import ItemResult, StageTimes
from lmroute.service.logs import bind_call, write_when_taken

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["CONSOLE_QUEUE_SPANS", "MODES", "Tracing"]

MODES = ("off", "console", "external")
CONSOLE_QUEUE_SPANS = 2048
"""Most spans `--tracing console` holds for stdout; more are dropped (the queue of a BatchSpanProcessor)."""
_CONSOLE_WAIT_S = 1.0  # how long one write to stdout may wait for room before its spans are dropped


class Tracing:
    """Makes the spans of calls (module docstring); built only when tracing is on."""

    def __init__(self, mode: str) -> None:
        from opentelemetry import trace

        if mode == "console":
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider = TracerProvider()
            exporter = cast("SpanExporter", _StdoutSpans())  # its methods, without the SDK imported at module load
            provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=CONSOLE_QUEUE_SPANS))
            _quiet_queue_full()
            self._tracer = provider.get_tracer("lmroute")
        else:
            self._tracer = trace.get_tracer("lmroute")
        self._trace = trace
        from opentelemetry import propagate

        self._propagate = propagate

    @contextlib.contextmanager
    def call(
        self,
        method: str,
        request_id: str,
        carrier: Iterable[tuple[str, Any]] = (),
        transport: str = "grpc",
        http_method: str = "",
    ) -> Iterator[Any]:
        """The span of one call, current while the handler runs, the child of the caller's span when the
        call's metadata or headers (`carrier`: (key, value) pairs) carry one (W3C `traceparent` /
        `tracestate`, or whatever propagator the process set); its trace id put into the call's log
        context (`lmroute.service.logs.bind_call`: inside a `CallLog` block). `transport`: "grpc" (method
        "/pkg.Service/Method") or "http" (the OpenAI front: method is the path, `http_method` the verb)."""
        headers = {str(k).lower(): v for k, v in carrier if isinstance(v, str)}
        parent = self._propagate.extract(headers) if headers else None
        # the status is `finish`'s to set: the SDK's would overwrite it with the exception's text and add
        # an exception event with its stack trace to every refused call
        with self._tracer.start_as_current_span(
            f"lmroute.rpc {method}",
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes=_rpc_attributes(method, transport, http_method),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            span.set_attribute("lmroute.request_id", request_id)
            bind_call(trace_id=format(span.get_span_context().trace_id, "032x"))
            yield span

    def finish(
        self,
        span: Any,
        code: str,
        reason: str = "",
        said: Mapping[str, str] | None = None,
        http_status: int | None = None,
    ) -> None:
        """Say how the call ended on its span: `rpc.code`, and status ERROR unless OK (a refusal the
        handler answered itself, as the OpenAI front does, raises nothing the span would see); `said`:
        the OpenAI front's `x-lmroute-*` answer headers (what was decided, what answered, what failed),
        each an attribute `lmroute.<name>` (`x-lmroute-decision-id` -> `lmroute.decision_id`);
        `http_status`: the OpenAI front's answer status (None: none was sent, the caller went away)."""
        span.set_attribute("rpc.code", code)
        if http_status is not None:
            span.set_attribute("http.response.status_code", http_status)
        for header, value in (said or {}).items():
            if header.startswith("x-lmroute-"):
                span.set_attribute("lmroute." + header.removeprefix("x-lmroute-").replace("-", "_"), value)
        if code != "OK":
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, f"{code} {reason}".strip()))

    @contextlib.contextmanager
    def upstream(self, tier: str, attributes: Mapping[str, Any], headers: dict[str, str]) -> Iterator[Any]:
        """A CLIENT span `lmroute.upstream <tier>` (a child of the current call's span) around an exchange
        with an upstream, its W3C `traceparent` (the process's propagator) put into the request's
        `headers`, so the upstream's own spans join the call's trace. The exchange says how it ended
        (`upstream_ended`); an exception leaving the block adds no event (it may quote the prompt)."""
        span = self._tracer.start_span(
            f"lmroute.upstream {tier}",
            kind=self._trace.SpanKind.CLIENT,
            attributes=dict(attributes),
            record_exception=False,
            set_status_on_exception=False,
        )
        try:
            self._propagate.inject(headers, context=self._trace.set_span_in_context(span))
            yield span
        finally:
            span.end()

    def upstream_ended(self, span: Any, outcome: str, status: int | None, error: str = "") -> None:
        """How an upstream exchange ended on its span: `http.response.status_code` (None: no answer),
        `lmroute.outcome` (the `lmroute_upstream_calls_total` code), and status ERROR with `error.type`
        for an error answer (>= 400) or none (`error`: the front's reason, e.g. UPSTREAM_FAILED)."""
        span.set_attribute("lmroute.outcome", outcome)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error or status is None or status >= 400:
            kind = error or (str(status) if status is not None else outcome)
            span.set_attribute("error.type", kind)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, kind))

    def stages(self, results: Sequence[ItemResult | Exception]) -> None:
        """Child spans of the current call span for the stages its scored prompts went through."""
        times = [r.stages for r in results if isinstance(r, ItemResult) and r.stages is not None]
        if not times:
            return
        to_ns = _epoch_ns_of_loop_time()
        for name, start, end in _spans(times):
            span = self._tracer.start_span(name, start_time=to_ns(start))
            span.end(end_time=to_ns(end))


def _rpc_attributes(method: str, transport: str, http_method: str = "") -> dict[str, str]:
    """OpenTelemetry's attributes of a call by its transport: gRPC's "/pkg.Service/Method" as rpc.*, an
    HTTP request (the OpenAI front) as its method and path (a path of the front's own routes, never the
    caller's: it is no label of the caller's making). Guessing from the method's shape took the front's
    /v1/chat/completions for gRPC service "v1"."""
    if transport == "http":
        return {"http.request.method": http_method or "POST", "url.path": method}
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _spans(times: Sequence[StageTimes]) -> list[tuple[str, float, float]]:
    first, last = min, max
    return [
        ("admission", first(t.admitted for t in times), last(t.queued for t in times)),
        ("queue", first(t.queued for t in times), last(t.left for t in times)),
        ("encode", first(t.left for t in times), last(t.encoded for t in times)),
        ("score", first(t.left for t in times), last(t.scored for t in times)),
    ]


def _epoch_ns_of_loop_time() -> Any:
    """A converter of event-loop seconds to Unix nanoseconds (the clocks' offset, taken now)."""
    offset = time.time() - asyncio.get_running_loop().time()
    return lambda t: int((t + offset) * 1e9)


class _StdoutSpans:
    """The console exporter: each span as JSON (the SDK's ConsoleSpanExporter's form) on stdout, written
    by the batch processor's thread straight to file descriptor 1, a piece at a time once the descriptor
    takes it without blocking. A stdout that takes nothing for _CONSOLE_WAIT_S has the batch dropped (a
    span may be cut off there), so the thread never blocks for good: the queue keeps draining (new spans
    are not all dropped), and the processor's shutdown at exit returns at once. Not sys.stdout: a thread
    blocked inside its write would hold its lock, which the interpreter's last flush at exit waits for
    (and aborts on)."""

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self.dropped = 0  # spans not written: stdout took nothing for _CONSOLE_WAIT_S

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        data = "".join(span.to_json() + os.linesep for span in spans).encode("utf-8")
        if not write_when_taken(self._fd, data, _CONSOLE_WAIT_S):  # closed, gone or stuck: not worth failing over
            self.dropped += len(spans)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _OncePerMinute(logging.Filter):
    """Lets one record of a logger through per minute: the SDK's batch processor warns of each span it
    drops from a full queue, a line per span on stderr (the server's JSON log) while stdout is stuck."""

    def __init__(self) -> None:
        super().__init__()
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + 60.0
        return True


def _quiet_queue_full() -> None:
    # the logger of the SDK's batch processor (1.3x on; older releases warned of a full queue once)
    logging.getLogger("opentelemetry.sdk._shared_internal").addFilter(_OncePerMinute())
