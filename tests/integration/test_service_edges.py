"""The edges of the gRPC transport against hostile or broken input, on 127.0.0.1 with a FakeScorer:
call size limits checked before any work, undecodable request bytes, huge names in errors, SIGHUP to
a serving process, and liveness on a stuck scorer.

Every refusal here must happen before the scheduler: the fake scorer records what reached it and the
scheduler counts what it admitted, so "before any work" is asserted, not assumed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lmroute.service.client import RouterClient
from lmroute.service.config import BatchPolicy, ServiceConfig
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.logs import configure_logging, merge_call_context
from lmroute.service.testing import ServerThread
from lmroute.v1 import router_pb2

SERVICE = "lmroute.v1.RouterService"
REPO = Path(__file__).resolve().parents[2]


def _config(**kw: object) -> ServiceConfig:
    base: dict[str, object] = dict(bundle_path=Path("unused"), port=0, log_level="warning", grace_s=0.0)
    base.update(kw)
    return ServiceConfig(**base)  # type: ignore[arg-type]


@pytest.fixture()
def fake() -> FakeScorer:
    return FakeScorer(routers=("random", "mf"))


@pytest.fixture()
def make_server(fake: FakeScorer) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def make(**kw: object) -> ServerThread:
        configure_logging("info")
        srv = ServerThread(_config(**kw), scorer_factory=lambda _cfg: fake).start()
        started.append(srv)
        return srv

    yield make
    fake.release()
    for srv in started:
        srv.stop()
    configure_logging("warning")


def _reason(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status details on the error"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def _wait(cond: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    t_end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < t_end, f"{what} not reached in {timeout_s} s"
        time.sleep(0.005)


def _nothing_reached_the_scorer(fake: FakeScorer, srv: ServerThread) -> None:
    sched = srv.server.scheduler
    assert sched is not None
    assert fake.calls == [] and fake.counted == []
    assert sched.stats.admitted == 0 and sched.stats.invalid == 0 and sched.in_flight == 0


def _conversation(turns: int, content: str = "", role: str = "user") -> router_pb2.Prompt:
    msgs = [router_pb2.ChatMessage(role=role, content=content) for _ in range(turns)]
    return router_pb2.Prompt(conversation=router_pb2.Conversation(messages=msgs))


def test_a_4mb_request_of_500k_empty_turns_is_refused_before_any_work(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    srv = make_server()
    crafted = router_pb2.ScoreRequest(prompts=[_conversation(500_000)])
    assert crafted.ByteSize() == 4_000_010  # under the 4 MiB message limit
    route = router_pb2.RouteRequest(prompt=_conversation(500_000), router="mf", threshold=0.5)
    with structlog.testing.capture_logs() as logs, RouterClient(srv.target) as c:
        with pytest.raises(grpc.RpcError) as score_err:
            c.stub.Score(crafted, timeout=30)
        with pytest.raises(grpc.RpcError) as route_err:
            c.stub.Route(route, timeout=30)
        _wait(lambda: sum(e["event"] == "rpc" for e in logs) == 2, what="two access log lines")
    _nothing_reached_the_scorer(fake, srv)
    assert score_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert score_err.value.details() == "prompts[0].conversation.messages: 500000 turns (limit 256)"
    assert _reason(score_err.value) == "TOO_MANY_TURNS"
    assert route_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert route_err.value.details() == "prompt.conversation.messages: 500000 turns (limit 256)"
    # Walking the 500k turns took ~0.23 s on the loop (measured on 2 shared cores); the refusal reads one
    # count (~0.1 ms). The handler's own time, from the access log, with a wide one-sided margin:
    handler_ms = [e["ms"] for e in logs if e["event"] == "rpc"]
    assert len(handler_ms) == 2 and max(handler_ms) < 100, handler_ms


def test_the_turn_limit_is_a_setting_and_a_call_at_the_limit_is_scored(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    srv = make_server(max_turns=4)
    at_limit = _conversation(3, "earlier")
    at_limit.conversation.messages.add(role="user", content="the last turn")
    with RouterClient(srv.target) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.stub.Score(router_pb2.ScoreRequest(prompts=[router_pb2.Prompt(text="fine"), _conversation(5, "x")]))
        res = c.stub.Score(router_pb2.ScoreRequest(prompts=[at_limit], routers=["mf"]), timeout=10)
    assert e.value.details() == "prompts[1].conversation.messages: 5 turns (limit 4)"
    assert res.results[0].scores[0].strong_win_probability == FakeScorer.score_one("mf", "the last turn")
    assert fake.calls == [["the last turn"]]


def test_too_many_characters_in_all_is_refused_before_any_work(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    srv = make_server(max_request_chars=20_000)  # = max_prompt_chars: each prompt alone is allowed
    prompts = [
        router_pb2.Prompt(text="a " * 4000),
        _conversation(2, "b" * 3000),
        router_pb2.Prompt(text="c" * 8001),
    ]  # 8000 + 6000 + 8001 = 22001 characters
    with RouterClient(srv.target) as c:
        with pytest.raises(grpc.RpcError) as score_err:
            c.stub.Score(router_pb2.ScoreRequest(prompts=prompts), timeout=10)
        with pytest.raises(grpc.RpcError) as route_err:
            c.route("d" * 20_001, router="mf", threshold=0.5)
        _nothing_reached_the_scorer(fake, srv)
        ok = c.stub.Score(router_pb2.ScoreRequest(prompts=prompts[:2]), timeout=10)
    assert score_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert score_err.value.details() == "prompts: 22001 characters in all (limit 20000)"
    assert _reason(score_err.value) == "REQUEST_TOO_LONG"
    assert route_err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert route_err.value.details() == "prompt: 20001 characters in all (limit 20000)"
    assert [r.status.code for r in ok.results] == [0, 0]


def test_a_score_call_naming_a_million_routers_is_refused_before_any_lookup(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    srv = make_server()
    crafted = router_pb2.ScoreRequest(prompts=[router_pb2.Prompt(text="hi")], routers=["mf"] * 1_000_000)
    assert crafted.ByteSize() == 4_000_006  # under the 4 MiB message limit
    with RouterClient(srv.target) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.stub.Score(crafted, timeout=30)
        ok = c.score(["hi"], routers=["mf"] * 64)  # at the limit: scored with mf once
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "routers: 1000000 names (limit 64)"
    assert _reason(e.value) == "TOO_MANY_ROUTERS"
    assert [s.router for s in ok.results[0].scores] == ["mf"]
    assert fake.calls == [["hi"]]


GARBAGE = b"\xff" * 16  # a varint tag that never ends: not a protobuf message of any type


def test_malformed_request_bytes_are_invalid_argument_and_logged_once(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    srv = make_server()
    methods = ["Score", "Route", "ListRouters", "GetRouter"]
    with structlog.testing.capture_logs([merge_call_context]) as logs:
        with grpc.insecure_channel(srv.target) as channel:
            errors = {}
            for name in methods:
                raw = channel.unary_unary(f"/{SERVICE}/{name}", request_serializer=None, response_deserializer=None)
                with pytest.raises(grpc.RpcError) as e:
                    raw(GARBAGE, timeout=10)
                errors[name] = e.value
            with RouterClient(srv.target) as c:  # the server is unharmed
                assert c.route("still fine", router="mf", threshold=0.5).router == "mf"
    for name, err in errors.items():
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert (err.details() or "").startswith(
            f"request: 16 bytes that do not decode as the request message of /{SERVICE}/{name} ("
        )
        assert _reason(err) == "MALFORMED_REQUEST"
        _wait(lambda: sum(e["event"] == "rpc" for e in logs) == 5, what="five access log lines")
    lines = [e for e in logs if e["event"] == "malformed_request"]
    assert [e["method"] for e in lines] == [f"/{SERVICE}/{name}" for name in methods]
    # a prompt that is not UTF-8 fails the whole message (protobuf's decoding): the answer says so
    with grpc.insecure_channel(srv.target) as channel:
        raw = channel.unary_unary(f"/{SERVICE}/Score", request_serializer=None, response_deserializer=None)
        good = router_pb2.ScoreRequest(prompts=[router_pb2.Prompt(text="hello XX there")]).SerializeToString()
        with pytest.raises(grpc.RpcError) as e:
            raw(good.replace(b"XX", b"\xff\xfe"), timeout=10)
    assert "(String field had bad UTF-8: a string field that is not UTF-8 fails the whole message)" in (
        e.value.details() or ""
    )
    for line in lines:
        assert line["bytes"] == 16 and line["log_level"] == "warning"
        assert re.fullmatch(r"ipv[46]:.*127\.0\.0\.1.*:\d+", line["peer"]), line["peer"]
        assert "\\xff" not in repr(line) and "\xff" not in repr(line)  # the bytes themselves never logged
    codes = [(e["method"], e["code"]) for e in logs if e["event"] == "rpc"]
    assert codes == [(f"/{SERVICE}/{name}", "INVALID_ARGUMENT") for name in methods] + [(f"/{SERVICE}/Route", "OK")]
    assert fake.calls == [["still fine"]]


def _metadata_bytes(err: grpc.RpcError) -> int:
    trailers = err.trailing_metadata() or ()
    return sum(len(k) + len(v) for k, v in trailers)


def test_a_200kb_router_name_gives_a_short_not_found(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    srv = make_server()
    name = "r" * 200_000
    shown = repr("r" * 64) + "... (200000 characters)"
    with RouterClient(srv.target) as c:
        calls = {
            "Route": lambda: c.route("hello", router=name, threshold=0.5),
            "Score": lambda: c.score(["hello"], routers=["mf", name]),
            "GetRouter": lambda: c.get_router(name),
        }
        errors = {}
        for rpc, call in calls.items():
            with pytest.raises(grpc.RpcError) as e:
                call()
            errors[rpc] = e.value
        bad_role = c.score([[{"role": "q" * 200_000, "content": "hi"}]])
    assert {rpc: e.details() for rpc, e in errors.items()} == {
        "Route": f"router: unknown router {shown} (loaded: random, mf)",
        "Score": f"routers[1]: unknown router {shown} (loaded: random, mf)",
        "GetRouter": f"name: unknown router {shown} (loaded: random, mf)",
    }
    for e in errors.values():
        assert e.code() == grpc.StatusCode.NOT_FOUND and _reason(e) == "ROUTER_NOT_FOUND"
        assert len(e.details()) < 140, len(e.details())  # for a 200,000-character name
        assert _metadata_bytes(e) < 1024, _metadata_bytes(e)  # details + status + request id
    assert bad_role.results[0].status.message == (
        f"prompts[0].conversation.messages[0].role: unknown role {repr('q' * 64)}... (200000 characters) "
        "(expected one of system, user, assistant)"
    )
    assert fake.calls == [] and srv.server.scheduler is not None and srv.server.scheduler.stats.admitted == 0


_SERVE_SCRIPT = """
import asyncio, sys
from pathlib import Path
from lmroute.service.config import ServiceConfig
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.logs import configure_logging
from lmroute.service.main import serve

configure_logging("info")
cfg = ServiceConfig(bundle_path=Path("unused"), port=0, grace_s=2.0)
sys.exit(asyncio.run(serve(cfg, lambda _cfg: FakeScorer())))
"""


@pytest.mark.parametrize("setting", ["port", "metrics_port"])
def test_a_port_in_use_is_named_as_such_not_as_a_bundle_failure(setting: str) -> None:
    """serve() (what lmroute-serve runs) on a port another socket holds: exit 2 naming the setting and
    the address (it used to say it could not load the bundle)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        script = _SERVE_SCRIPT.replace(
            "port=0,", f"{setting}={port}, port=0," if setting != "port" else f"port={port},"
        )
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"lmroute-serve: config error: {setting}: cannot listen on 127.0.0.1:{port} (" in run.stderr
    assert "bundle" not in run.stderr.lower()


def test_a_port_in_use_at_one_of_the_names_addresses_is_refused() -> None:
    """`--host localhost` names 127.0.0.1 (and ::1 where the host has it): gRPC listens when one of
    them binds, so a second server took ::1 beside the first on 127.0.0.1 and callers split between
    them. The server now refuses a port held at any address its host names."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        script = _SERVE_SCRIPT.replace("port=0,", f'port={port}, host="localhost",')
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    why = f"port {port} of 127.0.0.1 is in use"
    assert f"lmroute-serve: config error: port: cannot listen on localhost:{port} ({why})" in run.stderr


def test_a_stats_path_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    """--stats-path naming a directory: exit 2 naming the setting (it was 'cannot load bundle: [Errno 21]
    Is a directory', exit 1)."""
    script = _SERVE_SCRIPT.replace("port=0,", f"port=0, stats_path={str(tmp_path)!r},")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"lmroute-serve: config error: stats_path: cannot write {str(tmp_path)!r} (" in run.stderr
    assert "cannot load bundle" not in run.stderr


def test_a_host_that_is_no_address_is_named() -> None:
    """`--host abc` (no address, no name that resolves) is refused naming the host (it was reported as
    the port: 'port: cannot listen on abc:PORT (Failed to bind ...)')."""
    script = _SERVE_SCRIPT.replace("port=0,", 'port=0, host="no-such-host.invalid",')
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "lmroute-serve: config error: host: 'no-such-host.invalid' is no address of this host" in run.stderr


class _Lines:
    """A subprocess's stderr, read line by line on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def wait_for(self, pattern: str, count: int = 1, timeout_s: float = 60.0) -> re.Match[str]:
        """The `count`-th line matching `pattern` (waited for)."""
        t_end = time.monotonic() + timeout_s
        while True:
            found = [m for line in list(self.lines) if (m := re.search(pattern, line))]
            if len(found) >= count:
                return found[count - 1]
            assert time.monotonic() < t_end, f"no {count} lines matching {pattern!r} in:\n{''.join(self.lines)}"
            time.sleep(0.02)


def _serving(script: str) -> tuple[subprocess.Popen[str], _Lines, int]:
    """serve() in its own process, running `script`: the process, its stderr lines, its port once serving."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out = _Lines(proc)
    try:
        return proc, out, int(out.wait_for(r"lmroute-serve: serving on 127\.0\.0\.1:(\d+)").group(1))
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise


def test_sighup_is_logged_and_ignored_while_serving() -> None:
    """serve() (what lmroute-serve runs) in its own process: SIGHUP leaves it serving, SIGTERM drains it."""
    proc, out, port = _serving(_SERVE_SCRIPT)
    try:
        with RouterClient(f"127.0.0.1:{port}") as c:
            before = c.route("before the signal", router="mf", threshold=0.5)
            proc.send_signal(signal.SIGHUP)
            out.wait_for(r'"event": "sighup_ignored"')
            after = c.route("after the signal", router="mf", threshold=0.5)
            assert c.health() == "SERVING" and c.health(SERVICE) == "SERVING"
            proc.send_signal(signal.SIGHUP)  # again: still one line each, still serving
            out.wait_for(r'"event": "sighup_ignored"', count=2)
            assert c.score(["and again"]).results[0].status.code == 0
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert before.score == FakeScorer.score_one("mf", "before the signal")
    assert after.score == FakeScorer.score_one("mf", "after the signal")
    assert sum('"event": "sighup_ignored"' in line for line in out.lines) == 2
    assert any('"event": "stopped"' in line for line in out.lines)  # drained, not killed


def test_liveness_turns_not_serving_on_a_blocked_scorer_and_back_when_it_progresses(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    stall_s = 0.3
    srv = make_server(liveness_stall_s=stall_s, batch=BatchPolicy(queue_timeout_ms=60_000))
    with structlog.testing.capture_logs() as logs, RouterClient(srv.target) as c:
        time.sleep(3 * stall_s)  # idle is not stalled
        assert c.health() == "SERVING"
        fake.block()
        t0 = time.monotonic()
        stuck = c.stub.Score.future(router_pb2.ScoreRequest(prompts=[router_pb2.Prompt(text="stuck")]), timeout=60)
        _wait(fake.entered.is_set, what="the scorer entered")
        _wait(lambda: c.health() == "NOT_SERVING", what="liveness NOT_SERVING")
        noticed_s = time.monotonic() - t0
        assert c.health(SERVICE) == "SERVING"  # readiness: loaded and not draining
        fake.release()
        assert stuck.result(timeout=30).results[0].status.code == 0
        _wait(lambda: c.health() == "SERVING", what="liveness SERVING again")
    assert noticed_s >= stall_s, noticed_s  # never before the limit
    events = [e["event"] for e in logs if e["event"] in ("scorer_stalled", "scorer_progressing")]
    assert events == ["scorer_stalled", "scorer_progressing"]


def test_refused_calls_get_sampled_access_lines_not_one_each(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    """30 calls refused within a second write one access line; the next one, a second later, carries
    the count left out; admitted calls keep one line each."""
    srv = make_server(batch=BatchPolicy(max_queue=2, queue_timeout_ms=20_000))
    fake.block()
    req = router_pb2.ScoreRequest(prompts=[router_pb2.Prompt(text="held")])
    with structlog.testing.capture_logs() as logs, RouterClient(srv.target) as c:
        held = [c.stub.Score.future(req, timeout=30) for _ in range(2)]
        sched = srv.server.scheduler
        assert sched is not None
        _wait(lambda: sched.stats.admitted == 2, what="two admitted prompts")
        t0 = time.monotonic()
        for _ in range(30):
            with pytest.raises(grpc.RpcError) as err:
                c.stub.Score(req, timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - t0 < 1.0, "the 30 refusals took a second or more: sampling not tested"
        time.sleep(1.05)
        with pytest.raises(grpc.RpcError):
            c.stub.Score(req, timeout=30)
        fake.release()
        for f in held:
            f.result()
        _wait(lambda: sum(e["event"] == "rpc" and e["code"] == "OK" for e in logs) == 2, what="two OK lines")
    shed = [e for e in logs if e["event"] == "rpc" and e["code"] == "RESOURCE_EXHAUSTED"]
    assert [(e["reason"], e["suppressed"]) for e in shed] == [("QUEUE_FULL", 0), ("QUEUE_FULL", 29)]


@pytest.mark.parametrize("access_log", ["all", "sampled"])
def test_access_log_sampled_writes_one_line_a_second_for_ok_calls_too(
    make_server: Callable[..., ServerThread], access_log: str
) -> None:
    """`--access-log sampled`: 20 answered calls within a second write one line, the next one a second
    later carries the count left out; `all` writes one line each."""
    srv = make_server(access_log=access_log)
    with structlog.testing.capture_logs() as logs, RouterClient(srv.target) as c:
        t0 = time.monotonic()
        for i in range(20):
            c.route(f"prompt {i}", router="mf", threshold=0.5)
        assert time.monotonic() - t0 < 1.0, "the 20 calls took a second or more: sampling not tested"
        time.sleep(1.05)
        c.route("one more", router="mf", threshold=0.5)
    lines = [e for e in logs if e["event"] == "rpc" and e["code"] == "OK"]
    if access_log == "all":
        assert len(lines) == 21 and "suppressed" not in lines[0]
    else:
        assert [e["suppressed"] for e in lines] == [0, 19]


def test_a_shutdown_delay_keeps_answering_with_health_not_serving() -> None:
    """--shutdown-delay-s 3: after SIGTERM the health is NOT_SERVING at once while Route calls are still
    answered OK (load balancers stop sending meanwhile); then the drain, and exit 0."""
    proc, out, port = _serving(_SERVE_SCRIPT.replace("port=0,", "port=0, shutdown_delay_s=3.0,"))
    try:
        with RouterClient(f"127.0.0.1:{port}") as c:
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            out.wait_for(r'"event": "shutting_down"')
            assert c.health() == "NOT_SERVING"
            answered = c.route("still answered", router="mf", threshold=0.5)
            assert time.monotonic() - t0 < 2.5 and answered.score == FakeScorer.score_one("mf", "still answered")
        assert proc.wait(30) == 0 and time.monotonic() - t0 >= 3.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert any('"event": "draining"' in line for line in out.lines)


def test_a_second_sigterm_ends_the_process_at_once() -> None:
    """A second SIGTERM while stopping (here in a 60 s shutdown delay) exits at once, 1, logged."""
    proc, out, _ = _serving(_SERVE_SCRIPT.replace("port=0,", "port=0, shutdown_delay_s=60.0,"))
    try:
        proc.send_signal(signal.SIGTERM)
        out.wait_for(r'"event": "shutting_down"')
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 1 and time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out.wait_for(r'"event": "forced_exit"')
