"""What the OpenAI front shows an operator, through a real server and fake upstreams on 127.0.0.1: its
requests in lmroute_in_flight_calls while they wait on an LLM and in lmroute_call_seconds buckets up to
600 s; each upstream exchange in lmroute_upstream_calls_total / lmroute_upstream_seconds, an upstream's
401 kept out of lmroute_refusals_total (no caller's token failed); request ids unique to this process,
returned in x-request-id; the access line's tenant and HTTP status."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from lmroute.service.client import RouterClient
from lmroute.service.fake_upstream import FakeUpstream
from lmroute.service.interceptors import _ID_PREFIX
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread

CHAT = "/v1/chat/completions"


def _serve(
    fake_servers: Callable[..., ServerThread], tmp_path: Path, strong: FakeUpstream, weak: FakeUpstream
) -> ServerThread:
    ups = {t: {"model": f"{t}-model", "base_url": u.base_url} for t, u in (("strong", strong), ("weak", weak))}
    (tmp_path / "up.json").write_text(json.dumps(ups))
    return fake_servers(http_port=0, metrics_port=0, upstreams_file=str(tmp_path / "up.json"))


def _chat(srv: ServerThread, model: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{srv.server.http_port}{CHAT}",
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}


def _scrape(srv: ServerThread) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.server.metrics_port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def test_front_requests_are_in_flight_in_long_buckets_and_upstream_errors_are_no_refusals(
    fake_servers: Callable[..., ServerThread], tmp_path: Path
) -> None:
    with FakeUpstream("strong", status=401) as strong, FakeUpstream("weak", delay_s=1.2) as weak:
        srv = _serve(fake_servers, tmp_path, strong, weak)
        assert _chat(srv, "router-mf-0")[0] == 401  # strong: its own 401, passed on
        answered: list[int] = []
        slow = threading.Thread(target=lambda: answered.append(_chat(srv, "router-mf-1")[0]))  # weak, 1.2 s
        slow.start()
        deadline = time.monotonic() + 5
        while weak.waiting == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        during = _scrape(srv)
        slow.join(10)
        assert answered == [200]
        with RouterClient(srv.target) as client:
            client.route("hello", router="mf", threshold=0.5)
        after = _scrape(srv)
    assert "lmroute_in_flight_calls 1.0" in during and "lmroute_in_flight_calls 0.0" in after
    # an upstream's 401 is the upstream's key, not the caller's token: counted, but as no refusal
    assert f'lmroute_calls_total{{code="UNAUTHENTICATED",method="{CHAT}"}} 1.0' in after
    assert "UPSTREAM_401" not in after
    assert 'lmroute_upstream_calls_total{code="401",upstream="strong"} 1.0' in after
    assert 'lmroute_upstream_calls_total{code="200",upstream="weak"} 1.0' in after
    assert 'lmroute_upstream_seconds_bucket{le="1.0",upstream="weak"} 0.0' in after  # it took 1.2 s
    assert 'lmroute_upstream_seconds_bucket{le="2.5",upstream="weak"} 1.0' in after
    assert 'lmroute_upstream_seconds_count{upstream="strong"} 1.0' in after
    # the front's calls in buckets up to 600 s (its 1.2 s call is not just "over 1 s"), gRPC's up to 10 s
    chat_bounds = re.findall(rf'^lmroute_call_seconds_bucket{{le="([^"]+)",method="{CHAT}"}}', after, re.M)
    route_bounds = re.findall(
        r'^lmroute_call_seconds_bucket\{le="([^"]+)",method="/lmroute.v1.RouterService/Route"\}', after, re.M
    )
    assert chat_bounds[-2:] == ["600.0", "+Inf"] and route_bounds[-2:] == ["10.0", "+Inf"]
    assert f'lmroute_call_seconds_bucket{{le="2.5",method="{CHAT}"}} 2.0' in after
    assert f'lmroute_call_seconds_count{{method="{CHAT}"}} 2.0' in after


def test_request_ids_are_this_processs_and_returned_and_the_access_line_has_tenant_and_status(
    fake_servers: Callable[..., ServerThread], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with FakeUpstream("strong") as strong, FakeUpstream("weak") as weak:
        srv = _serve(fake_servers, tmp_path, strong, weak)
        capfd.readouterr()
        configure_logging("info")  # access lines are info lines, with the call's log context (as written)
        try:
            first = _chat(srv, "router-mf-0", {"x-lmroute-tenant": "alpha"})
            second = _chat(srv, "router-mf-0")
            named = _chat(srv, "router-mf-0", {"x-request-id": "caller-id-1"})
            refused = _chat(srv, "router-nope-0", {"x-lmroute-tenant": "beta"})
        finally:
            configure_logging("warning")
            structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
        logs = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    ids = [said["x-request-id"] for _, said in (first, second)]
    for made in ids:  # the gRPC ids' random per-process prefix: not http-0000000000000001 in every replica
        assert re.fullmatch(rf"http-{_ID_PREFIX}[0-9a-f]{{16}}", made), made
    assert ids[0] != ids[1]
    assert named[1]["x-request-id"] == "caller-id-1"
    assert refused[0] == 400 and refused[1]["x-request-id"].startswith(f"http-{_ID_PREFIX}")
    lines = [e for e in logs if e["event"] == "rpc"]
    assert [(e["http_status"], e.get("tenant")) for e in lines] == [
        (200, "alpha"),
        (200, None),
        (200, None),
        (400, "beta"),
    ]
    assert [e["request_id"] for e in lines] == [*ids, "caller-id-1", refused[1]["x-request-id"]]
