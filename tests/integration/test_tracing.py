"""OpenTelemetry traces through a real gRPC server on 127.0.0.1 (`--tracing external`, spans exported to
an in-memory exporter set as the process's tracer provider): a Route call's span has the four stage
spans as children, in order and inside it; a Score call's too; the trace id and the peer are in the
access line; with tracing off no span is made."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lmroute.service.client import RouterClient
from lmroute.service.config import BatchPolicy, ServiceConfig
from lmroute.service.errors import ConfigError
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread
from lmroute.v1 import router_pb2

STAGES = ["admission", "queue", "encode", "score"]


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    exp = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # once per process (test_obs_tracing.py may have set it)
        provider = TracerProvider()
        trace.set_tracer_provider(provider)  # the "external" provider of the server
    provider.add_span_processor(SimpleSpanProcessor(exp))
    return exp


@pytest.fixture()
def server(exporter: InMemorySpanExporter) -> Iterator[ServerThread]:
    configure_logging("warning")
    cfg = ServiceConfig(
        bundle_path=Path("unused"),
        port=0,
        log_level="warning",
        grace_s=0.0,
        tracing="external",
        batch=BatchPolicy(inline_us=0),  # batches through the queue and the scoring thread
    )
    srv = ServerThread(cfg, scorer_factory=lambda _cfg: FakeScorer(routers=("random", "mf"))).start()
    exporter.clear()
    yield srv
    srv.stop()


def children(exporter: InMemorySpanExporter, method: str) -> tuple[object, list[object]]:
    spans = exporter.get_finished_spans()
    [call] = [s for s in spans if s.name == f"lmroute.rpc {method}"]
    kids = [s for s in spans if s.parent is not None and s.parent.span_id == call.context.span_id]
    return call, sorted(kids, key=lambda s: (s.start_time, STAGES.index(s.name)))


def test_route_and_score_spans_have_the_four_stages(server: ServerThread, exporter: InMemorySpanExporter) -> None:
    with RouterClient(server.target) as client:
        client.route("hello", router="mf", threshold=0.5)
    call, kids = children(exporter, "/lmroute.v1.RouterService/Route")
    assert [k.name for k in kids] == STAGES
    assert call.attributes["rpc.code"] == "OK" and call.kind == trace.SpanKind.SERVER
    for k in kids:
        assert call.start_time <= k.start_time <= k.end_time <= call.end_time, k.name
        assert k.context.trace_id == call.context.trace_id
    admission, queue, encode, score = kids
    assert admission.end_time == queue.start_time and queue.end_time == encode.start_time == score.start_time
    assert encode.end_time <= score.end_time

    exporter.clear()
    with RouterClient(server.target) as client:
        client.score([f"prompt {i}" for i in range(5)])
    _, kids = children(exporter, "/lmroute.v1.RouterService/Score")
    assert [k.name for k in kids] == STAGES


def test_a_callers_traceparent_makes_the_call_span_its_child_with_rpc_attributes(
    server: ServerThread, exporter: InMemorySpanExporter
) -> None:
    """A W3C traceparent in the call's metadata: the server's span joins the caller's trace as a child of
    its span (it started a new trace, so a distributed trace broke at this service); a refused call's
    span has status ERROR."""
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with RouterClient(server.target) as client:
        client.stub.Route(
            router_pb2.RouteRequest(prompt=router_pb2.Prompt(text="hello"), router="mf", threshold=0.5),
            metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),),
            timeout=10,
        )
        with pytest.raises(grpc.RpcError):
            client.route("hello", router="nope", threshold=0.5)
    name = "lmroute.rpc /lmroute.v1.RouterService/Route"
    deadline = time.monotonic() + 10  # a refused call's span ends just after its status went out
    while len([s for s in exporter.get_finished_spans() if s.name == name]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    [call, refused] = [s for s in exporter.get_finished_spans() if s.name == name]
    assert format(call.context.trace_id, "032x") == trace_id
    assert call.parent is not None and format(call.parent.span_id, "016x") == parent_id
    assert dict(call.attributes) | {"lmroute.request_id": ""} == {
        "rpc.system": "grpc",
        "rpc.service": "lmroute.v1.RouterService",
        "rpc.method": "Route",
        "rpc.code": "OK",
        "lmroute.request_id": "",
    }
    assert refused.parent is None and refused.attributes["rpc.code"] == "NOT_FOUND"
    assert refused.status.status_code == trace.StatusCode.ERROR


def test_the_access_line_carries_trace_id_peer_and_decision_id(
    server: ServerThread, exporter: InMemorySpanExporter, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info")
    try:
        with RouterClient(server.target) as client:
            decision = client.route("hello", router="mf", threshold=0.5)
    finally:
        configure_logging("warning")
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    lines = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    [line] = [x for x in lines if x.get("event") == "rpc" and x.get("method", "").endswith("/Route")]
    call, _ = children(exporter, "/lmroute.v1.RouterService/Route")
    assert line["trace_id"] == format(call.context.trace_id, "032x")
    assert line["decision_id"] == decision.decision_id
    assert line["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))


def test_no_spans_without_tracing(exporter: InMemorySpanExporter) -> None:
    configure_logging("warning")
    cfg = ServiceConfig(bundle_path=Path("unused"), port=0, log_level="warning", grace_s=0.0)
    with ServerThread(cfg, scorer_factory=lambda _cfg: FakeScorer()).start() as srv:
        exporter.clear()
        with RouterClient(srv.target) as client:
            client.route("hello", router="mf", threshold=0.5)
        assert exporter.get_finished_spans() == ()
    with pytest.raises(ConfigError, match="tracing: must be one of off, console, external"):
        ServiceConfig(bundle_path=Path("b"), tracing="jaeger")


def test_the_http_front_call_has_its_span_and_stages(exporter: InMemorySpanExporter, tmp_path: Path) -> None:
    """A chat completion through the OpenAI-compatible front is one server span (its path as the method)
    with the route's four stage spans inside it, and what its answer's headers say as attributes: the
    decision, and for an answer its fallback gave, what failed."""
    import urllib.request

    from lmroute.service.fake_upstream import FakeUpstream

    configure_logging("warning")
    with FakeUpstream("strong", status=503) as strong, FakeUpstream("weak") as weak:
        ups = {t: {"model": f"{t}-model", "base_url": u.base_url} for t, u in (("strong", strong), ("weak", weak))}
        ups["strong"]["fallback"] = True
        (tmp_path / "up.json").write_text(json.dumps(ups))
        cfg = ServiceConfig(
            bundle_path=Path("unused"),
            port=0,
            log_level="warning",
            grace_s=0.0,
            tracing="external",
            http_port=0,
            upstreams_file=str(tmp_path / "up.json"),
            batch=BatchPolicy(inline_us=0),
        )
        with ServerThread(cfg, scorer_factory=lambda _cfg: FakeScorer(routers=("random", "mf"))).start() as srv:
            exporter.clear()
            body = json.dumps({"model": "router-mf-0.5", "messages": [{"role": "user", "content": "hi"}]}).encode()
            req = urllib.request.Request(
                f"http://127.0.0.1:{srv.server.http_port}/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json", "x-request-id": "front-trace-1"},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
                decided = {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith("x-lmroute-")}
            body = json.dumps({"model": "router-mf-0", "messages": [{"role": "user", "content": "hi"}]}).encode()
            req = urllib.request.Request(
                f"http://127.0.0.1:{srv.server.http_port}/v1/chat/completions",
                data=body,
                headers={"Content-Type": "application/json", "x-request-id": "front-trace-2"},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:  # strong, by threshold 0: the weak side answers
                assert resp.status == 200 and resp.headers["x-lmroute-fallback"] == "strong"
    # the spans end after the answers are written: read once the server has stopped
    spans = exporter.get_finished_spans()
    [call, fell] = sorted(
        (s for s in spans if s.name == "lmroute.rpc /v1/chat/completions"), key=lambda s: s.start_time
    )
    kids = [s for s in spans if s.parent is not None and s.parent.span_id == call.context.span_id]
    stages = [k for k in kids if k.name in STAGES]
    assert [k.name for k in sorted(stages, key=lambda s: (s.start_time, STAGES.index(s.name)))] == STAGES
    # and the exchange with the upstream that answered, after the route
    [upstream] = [k for k in kids if k.name not in STAGES]
    assert upstream.name == f"lmroute.upstream {decided['x-lmroute-tier']}"
    assert upstream.start_time >= max(k.end_time for k in stages)
    assert call.attributes["rpc.code"] == "OK" and call.attributes["lmroute.request_id"] == "front-trace-1"
    assert decided["x-lmroute-decision-id"] and decided["x-lmroute-tier"] in ("strong", "weak")
    for header, value in decided.items():  # the decision, on the span
        assert call.attributes["lmroute." + header[len("x-lmroute-") :].replace("-", "_")] == value
    assert fell.attributes["lmroute.request_id"] == "front-trace-2"
    assert fell.attributes["lmroute.fallback"] == "strong" and fell.attributes["lmroute.tier"] == "weak"
    assert fell.attributes["lmroute.model"] == "weak-model" and "lmroute.decision_id" not in fell.attributes
