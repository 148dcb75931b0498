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

A call through the OpenAI front also carries what its answer's headers say (`lmroute.decision_id`,
`lmroute.tier` or `lmroute.chosen`, `lmroute.model`, `lmroute.fallback`, `lmroute.left_out`, ...).

The stage spans are made after the scheduler answers, from the times it recorded for each prompt
(`lmroute.service.batch_queue.StageTimes`); for a call of several prompts each stage spans from the
earliest start to the latest end of its prompts. The trace id goes into the call's access-log line.

`--tracing console` installs an OpenTelemetry SDK tracer provider that prints spans as JSON to stdout;
`--tracing external` uses the tracer provider the process already has (one set up by the embedding
program, or by `opentelemetry-instrument` and its environment variables, e.g. an OTLP exporter). The
`opentelemetry-api` / `-sdk` packages are the `tracing` extra; without them, tracing other than `off` is
refused at startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from lmroute.service.batch_queue import ItemResult, StageTimes
from lmroute.service.logs import bind_call

__all__ = ["MODES", "Tracing"]

MODES = ("off", "console", "external")


class Tracing:
    """Makes the spans of calls (module docstring); built only when tracing is on."""

    def __init__(self, mode: str) -> None:
        from opentelemetry import trace

        if mode == "console":
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
            self._tracer = provider.get_tracer("lmroute")
        else:
            self._tracer = trace.get_tracer("lmroute")
        self._trace = trace
        from opentelemetry import propagate

        self._propagate = propagate

    @contextlib.contextmanager
    def call(self, method: str, request_id: str, carrier: Iterable[tuple[str, Any]] = ()) -> Iterator[Any]:
        """The span of one call, current while the handler runs, the child of the caller's span when the
        call's metadata or headers (`carrier`: (key, value) pairs) carry one (W3C `traceparent` /
        `tracestate`, or whatever propagator the process set); its trace id put into the call's log
        context (`lmroute.service.logs.bind_call`: inside a `CallLog` block)."""
        headers = {str(k).lower(): v for k, v in carrier if isinstance(v, str)}
        parent = self._propagate.extract(headers) if headers else None
        with self._tracer.start_as_current_span(
            f"lmroute.rpc {method}",
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes=_rpc_attributes(method),
        ) as span:
            span.set_attribute("lmroute.request_id", request_id)
            bind_call(trace_id=format(span.get_span_context().trace_id, "032x"))
            yield span

    def finish(self, span: Any, code: str, reason: str = "", said: Mapping[str, str] | None = None) -> None:
        """Say how the call ended on its span: `rpc.code`, and status ERROR unless OK (a refusal the
        handler answered itself, as the OpenAI front does, raises nothing the span would see); `said`:
        the OpenAI front's `x-lmroute-*` answer headers (what was decided, what answered, what failed),
        each an attribute `lmroute.<name>` (`x-lmroute-decision-id` -> `lmroute.decision_id`)."""
        span.set_attribute("rpc.code", code)
        for header, value in (said or {}).items():
            if header.startswith("x-lmroute-"):
                span.set_attribute("lmroute." + header.removeprefix("x-lmroute-").replace("-", "_"), value)
        if code != "OK":
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, f"{code} {reason}".strip()))

    def stages(self, results: Sequence[ItemResult | Exception]) -> None:
        """Child spans of the current call span for the stages its scored prompts went through."""
        times = [r.stages for r in results if isinstance(r, ItemResult) and r.stages is not None]
        if not times:
            return
        to_ns = _epoch_ns_of_loop_time()
        for name, start, end in _spans(times):
            span = self._tracer.start_span(name, start_time=to_ns(start))
            span.end(end_time=to_ns(end))


def _rpc_attributes(method: str) -> dict[str, str]:
    """OpenTelemetry's RPC attributes of a call: "/pkg.Service/Method" (gRPC) or an HTTP path."""
    service, slash, name = method.lstrip("/").partition("/")
    if slash and service and name:
        return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    return {"rpc.system": "http", "rpc.method": method}


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
