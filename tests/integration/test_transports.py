"""Both gRPC transports (lmroute.service.transports: `threads`, the default, and `aio`) serving the same
service over FakeScorer on 127.0.0.1: an answer; a refusal with its status, error reason and the echoed
request id; health Check and a Watch stream that sees the drain; server reflection; a client's cancel and
a passed deadline reaching the queue; undecodable request bytes; a port already taken. For the thread
transport, what it adds: a call past its pool is refused by gRPC at once, and the calls it holds are
answered once the scorer moves. On both, streams past max_streams are refused and leave the pool to Route."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status

from lmroute.service.config import BatchPolicy
from lmroute.service.errors import ConfigError
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.scheduler import Scheduler
from lmroute.service.server import SERVICE_NAME
from lmroute.service.testing import ServerThread, fake_server
from lmroute.v1 import router_pb2, router_pb2_grpc

TRANSPORTS = ("threads", "aio")


def _until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    t_end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < t_end, "condition not reached"
        time.sleep(0.002)


def _route(text: str = "hello", **policy: float) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(prompt=router_pb2.Prompt(text=text), router="mf", **(policy or {"threshold": 0.5}))


def _reason(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def _two_held(
    srv: ServerThread, stub: router_pb2_grpc.RouterServiceStub
) -> tuple[Scheduler[Any], FakeScorer, grpc.Future, grpc.Future]:
    """Two Route calls open: the first held by the blocked FakeScorer, the second admitted behind it."""
    sched = srv.server.scheduler
    assert sched is not None and isinstance(sched.scorer, FakeScorer)
    fake = sched.scorer
    fake.block()
    first = stub.Route.future(_route("first"), timeout=30)
    _until(fake.entered.is_set)
    second = stub.Route.future(_route("second"), timeout=30)
    _until(lambda: sched.in_flight == 2)
    return sched, fake, first, second


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_answer_and_a_refusal_with_its_reason_and_request_id(
    fake_servers: Callable[..., ServerThread], transport: str
) -> None:
    srv = fake_servers(transport=transport)
    with grpc.insecure_channel(srv.target) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        reply, call = stub.Route.with_call(_route(), metadata=(("x-request-id", "req-1"),), timeout=10)
        assert reply.router == "mf" and reply.decision_id
        assert ("x-request-id", "req-1") in call.trailing_metadata()
        with pytest.raises(grpc.RpcError) as bad:
            stub.Route(_route(strong_share=1.5), metadata=(("x-request-id", "req-2"),), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "strong_share" in bad.value.details() and _reason(bad.value) == "OUT_OF_RANGE"
    assert ("x-request-id", "req-2") in bad.value.trailing_metadata()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_health_check_and_a_watch_that_sees_the_drain(transport: str) -> None:
    srv = fake_server(transport=transport)
    seen: list[int] = []
    try:
        with grpc.insecure_channel(srv.target) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            check = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as unknown:  # its NOT_FOUND echoes the request id, as any answer
                health.Check(health_pb2.HealthCheckRequest(service="nope"), metadata=(("x-request-id", "hc-1"),))
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            assert ("x-request-id", "hc-1") in tuple(unknown.value.trailing_metadata() or ())
            stream = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=30)

            def read() -> None:
                try:
                    for msg in stream:
                        seen.append(msg.status)
                except grpc.RpcError:
                    pass  # the server stopped

            reader = threading.Thread(target=read)
            reader.start()
            _until(lambda: len(seen) >= 1)
            srv.stop(grace_s=1.0)
            reader.join(10)
            assert not reader.is_alive()
    finally:
        srv.stop()
    assert seen[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in seen[1:]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reflection_names_the_services(fake_servers: Callable[..., ServerThread], transport: str) -> None:
    srv = fake_servers(transport=transport)
    with grpc.insecure_channel(srv.target) as ch:
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
    assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_cancel_and_a_passed_deadline_reach_the_queue(
    fake_servers: Callable[..., ServerThread], transport: str
) -> None:
    srv = fake_servers(transport=transport, batch=BatchPolicy(max_queue=4, queue_timeout_ms=60_000))
    with grpc.insecure_channel(srv.target) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        sched, fake, held, cancelled = _two_held(srv, stub)
        cancelled.cancel()
        _until(lambda: sched.in_flight == 1)  # its prompt released while the scorer is still held
        with pytest.raises(grpc.RpcError) as late:
            stub.Route(_route("late"), timeout=0.3)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _until(lambda: sched.in_flight == 1)  # the late call left the queue too
        fake.release()
        assert held.result(timeout=10).router == "mf"
        assert stub.Route(_route("after"), timeout=10).router == "mf"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_undecodable_request_bytes_are_invalid_argument(
    fake_servers: Callable[..., ServerThread], transport: str
) -> None:
    srv = fake_servers(transport=transport)
    with grpc.insecure_channel(srv.target) as ch:
        raw = ch.unary_unary(f"/{SERVICE_NAME}/Route", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as bad:
            raw(b"\xff\xff\xff\xff", timeout=10)
        # a streaming method's one request too (it was INTERNAL on threads, UNKNOWN on aio)
        watch = ch.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as bad_stream:
            list(watch(b"\xff\xff", timeout=10))
        health = health_pb2_grpc.HealthStub(ch)  # and the stream slot it never took is free
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and _reason(bad.value) == "MALFORMED_REQUEST"
    assert bad_stream.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad_stream.value
    assert _reason(bad_stream.value) == "MALFORMED_REQUEST"
    assert "do not decode as the request message of /grpc.health.v1.Health/Watch" in (bad_stream.value.details() or "")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_host_is_served(transport: str, host: str) -> None:
    """--host ::1 (or [::1]) binds the IPv6 loopback (it was passed to gRPC as ::1:PORT, which it could not
    parse, and refused as a port that cannot be listened on); the target to dial is [::1]:PORT."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    srv = fake_server(transport=transport, host=host)
    try:
        assert srv.server.config.host == "::1" and srv.target.startswith("[::1]:")
        with grpc.insecure_channel(srv.target) as ch:
            stub = router_pb2_grpc.RouterServiceStub(ch)
            assert stub.Route(_route(), timeout=10).decision_id
    finally:
        srv.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_port_already_taken_is_an_error_naming_it(transport: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises((OSError, ConfigError, RuntimeError)) as err:
            fake_server(transport=transport, port=port)
    assert str(port) in str(err.value)


def test_a_call_past_the_thread_pool_is_refused_by_grpc_and_the_held_ones_are_answered(
    fake_servers: Callable[..., ServerThread],
) -> None:
    srv = fake_servers(transport="threads", grpc_threads=2, max_streams=1, batch=BatchPolicy(max_queue=8))
    with grpc.insecure_channel(srv.target) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        sched, fake, first, second = _two_held(srv, stub)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as past:
            stub.Route(_route("third"), timeout=10)
        assert time.monotonic() - t0 < 5.0  # refused at once, not queued behind the pool
        assert past.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert sched.stats.rejected_queue_full == 0  # gRPC refused it: it never reached admission
        fake.release()
        assert first.result(timeout=10).router == "mf" and second.result(timeout=10).router == "mf"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_streams_past_max_streams_are_refused_and_route_keeps_its_threads(
    fake_servers: Callable[..., ServerThread], transport: str
) -> None:
    threads, cap = 6, 2
    srv = fake_servers(transport=transport, grpc_threads=threads, max_streams=cap)
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    with grpc.insecure_channel(srv.target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        streams = []
        for _ in range(cap):  # opened one after the other: each holds a slot once its first message is in
            streams.append(health.Watch(request, timeout=30))
            assert next(streams[-1]).status == health_pb2.HealthCheckResponse.SERVING
        streams += [health.Watch(request, timeout=30) for _ in range(threads - cap)]  # as many as the pool
        refused = []
        for stream in streams[cap:]:
            with pytest.raises(grpc.RpcError) as past:
                next(stream)
            refused.append(past.value)
        assert {err.code() for err in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert {_reason(err) for err in refused} == {"TOO_MANY_STREAMS"}
        assert "max_streams" in refused[0].details()
        assert srv.server.streams is not None and srv.server.streams.open == cap
        assert srv.server.streams.refused == threads - cap
        # the pool's other threads answer Route, several at once; a reflection stream is refused too
        stub = router_pb2_grpc.RouterServiceStub(ch)
        calls = [stub.Route.future(_route(f"p{i}"), timeout=10) for i in range(threads - cap)]
        assert [c.result().router for c in calls] == ["mf"] * (threads - cap)
        with pytest.raises(grpc.RpcError) as reflect:
            ProtoReflectionDescriptorDatabase(ch).get_services()
        assert _reason(reflect.value) == "TOO_MANY_STREAMS"
        streams[0].cancel()  # a closed stream gives its slot back
        _until(lambda: srv.server.streams is not None and srv.server.streams.open == cap - 1)
        again = health.Watch(request, timeout=30)
        assert next(again).status == health_pb2.HealthCheckResponse.SERVING
        for stream in (*streams, again):
            stream.cancel()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_calls_that_never_send_their_request_hold_the_thread_pool_only_on_threads(
    fake_servers: Callable[..., ServerThread], transport: str
) -> None:
    """A caller that opens calls and never sends their request message: on threads each holds a
    transport thread until its deadline (gRPC's synchronous server waits for the message there), so
    `grpc_threads` of them keep every other caller out, health probes included; grpc.aio waits without a
    thread and answers the others. Hence `--transport auto` takes threads on a loopback bind only."""
    threads = 6
    srv = fake_servers(transport=transport, grpc_threads=threads, max_streams=2)
    with grpc.insecure_channel(srv.target) as held_channel, grpc.insecure_channel(srv.target) as ch:
        gate = threading.Event()  # request iterators that yield nothing: the call is open, no message comes

        def nothing() -> Any:
            gate.wait(60)
            return
            yield  # pragma: no cover (a generator that ends without a message)

        send_nothing = held_channel.stream_unary(
            "/lmroute.v1.RouterService/Route",
            request_serializer=router_pb2.RouteRequest.SerializeToString,
            response_deserializer=router_pb2.RouteResponse.FromString,
        )
        never_sent = [send_nothing.future(nothing(), timeout=60) for _ in range(threads + 2)]
        time.sleep(0.5)  # the server has taken them
        health = health_pb2_grpc.HealthStub(ch)
        try:
            if transport == "aio":
                assert (
                    health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
                    == health_pb2.HealthCheckResponse.SERVING
                )
                assert router_pb2_grpc.RouterServiceStub(ch).Route(_route("still"), timeout=10).router == "mf"
            else:
                with pytest.raises(grpc.RpcError) as locked_out:
                    health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert locked_out.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            gate.set()
            for call in never_sent:
                call.cancel()
