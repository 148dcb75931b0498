"""Traces through real servers on 127.0.0.1 (docs/SECURITY.md, Traces): `--tracing console` with a stdout
nobody reads keeps serving; a refused call's span carries the status the service gave it and no exception
event; an OpenAI front request's exchanges with its upstreams are CLIENT spans whose W3C traceparent (and the
request id) reach the upstream; the front's own span is an HTTP span, not a gRPC one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lmroute.service.client import NO_RETRY, RouterClient
from lmroute.service.fake_upstream import FakeUpstream
from lmroute.service.testing import ServerThread

REPO = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The spans of `--tracing external` servers in this process (the provider is set once per process;
    tests/integration/test_tracing.py may have set it)."""
    exp = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exp))
    return exp


class RecordingUpstream(FakeUpstream):
    """A FakeUpstream that also keeps each chat request's headers."""

    def __init__(self, name: str, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.headers: list[dict[str, str]] = []

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        return await super()._chat(request)


_SERVE = """
import asyncio, sys
from pathlib import Path
from lmroute.service.config import ServiceConfig
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.logs import configure_logging
from lmroute.service.main import serve

configure_logging("warning")
cfg = ServiceConfig(bundle_path=Path("unused"), port=0, grace_s=1.0, tracing="console", log_level="warning")
sys.exit(asyncio.run(serve(cfg, lambda _cfg: FakeScorer())))
"""


def test_console_tracing_with_a_stdout_nobody_reads_keeps_serving_and_stops_on_sigterm() -> None:
    """Spans were written to stdout synchronously as each call ended: once the pipe filled (a log shipper
    stalled) the write blocked the event loop, and Route, health and SIGTERM all went unanswered."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE],
        stdout=subprocess.PIPE,  # never read
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stderr is not None
    try:
        head: list[str] = []
        while "serving on" not in (line := proc.stderr.readline()):
            assert line, "".join(head)
            head.append(line)
        port = line.rsplit(":", 1)[1].split()[0]
        rest: list[str] = []
        draining = threading.Thread(target=lambda: rest.extend(proc.stderr or ()), daemon=True)
        draining.start()  # stderr is read; only stdout is stuck
        calls = 400  # five spans each, about 1 KB apiece: some thirty times what the pipe holds
        with RouterClient(f"127.0.0.1:{port}", timeout_s=5.0, retry=NO_RETRY) as client:
            for i in range(calls):
                client.route(f"question {i}", router="mf", threshold=0.5)
            assert client.health() == "SERVING"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - t0 < 15  # the exit does not wait long on spans stdout will not take
        draining.join(10)
    finally:
        proc.kill()
        proc.wait(10)
    dropped = [x for x in rest if "dropping" in x.lower()]
    assert len(dropped) <= 1, dropped  # the SDK's note of dropped spans, not a line per span on the log


@pytest.fixture()
def traced(exporter: InMemorySpanExporter, fake_servers: Callable[..., ServerThread]) -> Callable[..., ServerThread]:
    def make(**settings: Any) -> ServerThread:
        srv = fake_servers(tracing="external", transport="aio", **settings)
        exporter.clear()
        return srv

    return make


def _spans(exporter: InMemorySpanExporter, name: str, n: int) -> list[Any]:
    deadline = time.monotonic() + 10  # a span ends just after its answer went out
    while len(found := [s for s in exporter.get_finished_spans() if s.name == name]) < n:
        assert time.monotonic() < deadline, [s.name for s in exporter.get_finished_spans()]
        time.sleep(0.01)
    return sorted(found, key=lambda s: s.start_time)


def test_a_refused_calls_span_has_the_status_the_service_gave_it_and_no_exception_event(
    traced: Callable[..., ServerThread], exporter: InMemorySpanExporter
) -> None:
    srv = traced()
    with RouterClient(srv.target, retry=NO_RETRY) as client, pytest.raises(grpc.RpcError):
        client.route("hello", router="nope", threshold=0.5)
    [span] = _spans(exporter, "lmroute.rpc /lmroute.v1.RouterService/Route", 1)
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.status.description == "NOT_FOUND ROUTER_NOT_FOUND"  # Tracing.finish's, not "Aborted: ..."
    assert span.events == ()  # no 1-2 KB exception event with a stack trace on every refused call
    assert span.attributes["rpc.code"] == "NOT_FOUND"


def _chat(port: int, headers: dict[str, str], model: str = "router-mf-0") -> tuple[int, dict[str, str]]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{CHAT}", data=body, headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}


def test_the_upstream_exchanges_are_client_spans_whose_traceparent_and_request_id_reach_the_upstreams(
    traced: Callable[..., ServerThread], exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    """strong answers 503 and falls back to weak: two CLIENT spans under the front's span, each upstream
    getting its own span's traceparent and the caller's request id; the front's span is an HTTP one."""
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with RecordingUpstream("strong", status=503) as strong, RecordingUpstream("weak") as weak:
        ups = {t: {"model": f"{t}-model", "base_url": u.base_url} for t, u in (("strong", strong), ("weak", weak))}
        ups["strong"]["fallback"] = True
        (tmp_path / "up.json").write_text(json.dumps(ups))
        srv = traced(http_port=0, upstreams_file=str(tmp_path / "up.json"))
        assert srv.server.http_port
        traceparent = f"00-{trace_id}-{parent_id}-01"
        status, _ = _chat(srv.server.http_port, {"x-request-id": "obs-up-1", "traceparent": traceparent})
        assert status == 200
        [call] = _spans(exporter, f"lmroute.rpc {CHAT}", 1)
        [failed] = _spans(exporter, "lmroute.upstream strong", 1)
        [answered] = _spans(exporter, "lmroute.upstream weak", 1)
    assert format(call.context.trace_id, "032x") == trace_id
    for span, up in ((failed, strong), (answered, weak)):
        assert span.kind == trace.SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == call.context.span_id
        [headers] = up.headers
        assert headers["traceparent"] == f"00-{trace_id}-{format(span.context.span_id, '016x')}-01"
        assert headers["x-request-id"] == "obs-up-1"
        assert span.attributes["lmroute.upstream"] == up.name and span.attributes["lmroute.model"] == f"{up.name}-model"
        assert span.attributes["server.address"] == "127.0.0.1" and span.attributes["server.port"] == up.port
        assert "lmroute.fallback" not in span.attributes or span is answered
    assert failed.attributes["http.response.status_code"] == 503
    assert failed.status.status_code == trace.StatusCode.ERROR and failed.attributes["error.type"] == "UPSTREAM_FAILED"
    assert (
        answered.attributes["http.response.status_code"] == 200 and answered.attributes["lmroute.fallback"] == "strong"
    )
    assert answered.status.status_code == trace.StatusCode.UNSET
    # the front's own span says HTTP, not gRPC service "v1"
    assert "rpc.system" not in call.attributes and "rpc.service" not in call.attributes
    assert call.attributes["http.request.method"] == "POST" and call.attributes["url.path"] == CHAT
    assert call.attributes["http.response.status_code"] == 200 and call.attributes["rpc.code"] == "OK"


def test_without_tracing_no_traceparent_goes_upstream_but_the_request_id_does(
    fake_servers: Callable[..., ServerThread], tmp_path: Path
) -> None:
    with RecordingUpstream("strong") as strong, RecordingUpstream("weak") as weak:
        ups = {t: {"model": f"{t}-model", "base_url": u.base_url} for t, u in (("strong", strong), ("weak", weak))}
        (tmp_path / "up.json").write_text(json.dumps(ups))
        srv = fake_servers(http_port=0, upstreams_file=str(tmp_path / "up.json"))
        assert srv.server.http_port
        traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        status, said = _chat(srv.server.http_port, {"traceparent": traceparent})
    assert status == 200
    [headers] = strong.headers
    assert "traceparent" not in headers  # not even the caller's: the front is no proxy of its headers
    assert headers["x-request-id"] == said["x-request-id"]
