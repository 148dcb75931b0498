"""The gRPC port's connection bounds on both transports, over FakeScorer on 127.0.0.1: at most
`grpc_max_connections` connections open at once (one more is closed as soon as it is accepted, and a
freed place is taken again), a connection with no call for `grpc_idle_timeout_s` is closed (its client
reconnects on its next call), one that never finishes its handshake is closed after
`grpc_handshake_timeout_s` (so raw sockets do not hold the places for gRPC's default two minutes), and a
server without the OpenAI front raises its open-file limit to what its connections need or refuses to
start naming the flag."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lmroute.service.testing import ServerThread

TRANSPORTS = ("threads", "aio")


@contextmanager
def _channel(target: str) -> Iterator[grpc.Channel]:
    """A channel with a connection of its own (Python channels to one target share one by default)."""
    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        yield ch


def _check(ch: grpc.Channel, timeout_s: float = 5.0) -> grpc.StatusCode:
    try:
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def _until(cond: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until `cond` held; fails the test past `timeout_s`."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout_s, "condition not reached"
        time.sleep(0.05)
    return time.monotonic() - t0


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed this socket (after whatever it sent, e.g. its SETTINGS and a GOAWAY)."""
    sock.settimeout(0.05)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connections_past_the_cap_are_closed_and_a_freed_place_is_taken_again(
    fake_servers: Callable[..., ServerThread], transport: str
) -> None:
    srv = fake_servers(transport=transport, grpc_max_connections=2)
    with _channel(srv.target) as a, _channel(srv.target) as b:
        assert _check(a) == grpc.StatusCode.OK and _check(b) == grpc.StatusCode.OK
        with _channel(srv.target) as c:
            assert _check(c, timeout_s=2.0) == grpc.StatusCode.UNAVAILABLE  # closed at accept
        assert _check(a) == grpc.StatusCode.OK  # the two held connections still serve
        a.close()
        with _channel(srv.target) as d:
            _until(lambda: _check(d, timeout_s=1.0) == grpc.StatusCode.OK, 15.0)
            assert _check(b) == grpc.StatusCode.OK


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_idle_connection_is_closed_and_its_client_reconnects_on_its_next_call(
    fake_servers: Callable[..., ServerThread], transport: str
) -> None:
    srv = fake_servers(transport=transport, grpc_idle_timeout_s=0.5, grpc_max_connections=1)
    with _channel(srv.target) as ch:
        assert _check(ch) == grpc.StatusCode.OK
        ready = grpc.ChannelConnectivity.READY.value[0]
        state = ch._channel.check_connectivity_state  # type: ignore[attr-defined]
        assert state(False) == ready
        # gRPC checks idleness on a timer with jitter: the GOAWAY comes within a few multiples of the timeout
        _until(lambda: state(False) != ready, 10.0)
        with _channel(srv.target) as other:  # the one place is free again
            assert _check(other) == grpc.StatusCode.OK
        _until(lambda: _check(ch, timeout_s=1.0) == grpc.StatusCode.OK, 15.0)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_connection_that_never_handshakes_is_closed_after_the_handshake_timeout(
    fake_servers: Callable[..., ServerThread], transport: str
) -> None:
    """Raw sockets count against the cap from accept, before any handshake: one that sends nothing holds
    a place until the handshake timeout closes it, not the idle timeout nor gRPC's default 120 s."""
    srv = fake_servers(transport=transport, grpc_max_connections=1, grpc_handshake_timeout_s=1.0)
    assert srv.port is not None
    with socket.create_connection(("127.0.0.1", srv.port)) as raw:
        time.sleep(0.2)
        with _channel(srv.target) as ch:
            assert _check(ch, timeout_s=0.5) == grpc.StatusCode.UNAVAILABLE  # the raw socket holds the place
            waited = _until(lambda: _closed_by_peer(raw), 15.0)
            assert waited < 10.0
            _until(lambda: _check(ch, timeout_s=1.0) == grpc.StatusCode.OK, 15.0)


_GRPC_CHILD = """
import asyncio, resource, sys
from pathlib import Path
from lmroute.service.config import ServiceConfig
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.logs import configure_logging
from lmroute.service.main import serve
configure_logging("warning")
soft, hard = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
cfg = ServiceConfig(bundle_path=Path("unused"), port=0, grace_s=0.0, grpc_max_connections=int(sys.argv[3]))
sys.exit(asyncio.run(serve(cfg, lambda _cfg: FakeScorer(routers=("mf",)))))
"""


def _serve_child(soft: int, hard: int, cap: int) -> tuple[subprocess.Popen[str], int, str]:
    """A server child under these open-file limits (cap: its grpc_max_connections) up to "serving on": the
    process, its soft limit then, and what it wrote to stderr until then."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _GRPC_CHILD, str(soft), str(hard), str(cap)], stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    seen, deadline = "", time.monotonic() + 60
    while time.monotonic() < deadline and "serving on" not in (line := proc.stderr.readline()):
        assert line or proc.poll() is None, f"the server exited {proc.poll()}: {seen}"
        seen += line
    limits = Path(f"/proc/{proc.pid}/limits").read_text()
    return proc, int(next(row for row in limits.splitlines() if row.startswith("Max open files")).split()[3]), seen


def test_the_grpc_port_raises_the_open_file_limit_lowers_its_cap_to_fit_or_is_refused() -> None:
    """Without the OpenAI front too: the gRPC port's connections need files of their own. Where the hard
    limit is lower than the cap needs, the cap is lowered to what it leaves (a warning), and only a
    limit that leaves fewer than 64 connections refuses to start."""
    proc, soft, _ = _serve_child(300, 8192, 2000)
    try:
        assert 2000 < soft <= 8192  # raised to what 2,000 connections need, within the hard limit
    finally:
        proc.terminate()
        proc.wait(20)
    proc, soft, said = _serve_child(300, 1024, 2000)
    try:
        assert soft == 1024
        lowered = [e for e in map(json.loads, said.splitlines()) if e["event"] == "grpc_connections_lowered"]
        assert [(e["was"], e["now"]) for e in lowered] == [(2000, 760)]  # 1,024 less 264 for the rest
    finally:
        proc.terminate()
        proc.wait(20)
    refused = subprocess.run(
        [sys.executable, "-c", _GRPC_CHILD, "300", "300", "2000"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2, refused.stderr
    assert (
        "lmroute-serve: config error: grpc_max_connections: this process may open 300 files (ulimit -n, hard "
        "limit), and 264 files for the rest of the server leave fewer than 64 for the gRPC port's connections: "
        "raise the limit"
    ) in refused.stderr
