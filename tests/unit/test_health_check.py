"""The server's grpc.health.v1 servicer (lmroute.service.health_check), driven as gRPC drives it, with a
stand-in for the call's context (what it writes, how it aborts): Watch sends each change once and ends
after the drain's NOT_SERVING; Check of an unknown name says which names there are."""

from __future__ import annotations

import asyncio

import pytest
from grpc_health.v1 import health_pb2

from lmroute.service.health_check import HealthServicer

S = health_pb2.HealthCheckResponse


class Aborted(Exception):
    pass


class Context:
    def __init__(self) -> None:
        self.written: list[int] = []

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        self.written.append(message.status)

    async def abort(self, code: object, details: str) -> None:
        raise Aborted(code, details)


def test_watch_sends_each_change_and_ends_after_the_drain() -> None:
    async def run() -> tuple[list[int], list[int]]:
        health = HealthServicer()
        await health.set("svc", S.NOT_SERVING)
        known, unknown = Context(), Context()
        watches = [
            asyncio.create_task(health.Watch(health_pb2.HealthCheckRequest(service="svc"), known)),
            asyncio.create_task(health.Watch(health_pb2.HealthCheckRequest(service="nope"), unknown)),
        ]
        await asyncio.sleep(0.01)
        await health.set("svc", S.SERVING)
        await health.set("other", S.SERVING)  # not a change of "svc": nothing sent
        await asyncio.sleep(0.01)
        assert not any(w.done() for w in watches)  # open while serving
        await health.enter_graceful_shutdown()
        await asyncio.wait_for(asyncio.gather(*watches), 5)  # ended: the drain need not wait for them
        await health.set("svc", S.SERVING)  # ignored once draining
        assert (await health.Check(health_pb2.HealthCheckRequest(service="svc"), Context())).status == S.NOT_SERVING
        return known.written, unknown.written

    known, unknown = asyncio.run(run())
    assert known == [S.NOT_SERVING, S.SERVING, S.NOT_SERVING]
    assert unknown == [S.SERVICE_UNKNOWN]  # never held: unknown to the end


def test_check_of_an_unknown_service_names_it_and_the_known_ones() -> None:
    async def run() -> str:
        health = HealthServicer()
        await health.set("lmroute.v1.RouterService", S.SERVING)
        with pytest.raises(Aborted) as info:
            await health.Check(health_pb2.HealthCheckRequest(service="x" * 150), Context())
        return str(info.value.args[1])

    said = asyncio.run(run())
    assert said.startswith("health: no service 'xxxx") and "(first 100 of 150 characters)" in said
    assert said.endswith("this server has '', 'lmroute.v1.RouterService'")
