"""The Python clients (RouterClient, AsyncRouterClient) against a real server on 127.0.0.1 over FakeScorer:
a call refused for now (RESOURCE_EXHAUSTED with the server's retry delay) is retried until it is answered;
with NO_RETRY, past its timeout or for a status that says the request is wrong, it comes back at once. The
scorer is held and released on cue, so every case is driven by events."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import grpc
import pytest

from lmroute.service.client import NO_RETRY, AsyncRouterClient, RetryPolicy, RouterClient
from lmroute.service.client_retry import error_reason, retry_delay_s
from lmroute.service.config import BatchPolicy
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.testing import ServerThread
from lmroute.v1 import router_pb2

PATIENT = RetryPolicy(max_attempts=100)  # the server's 50 ms delay each time: 5 s of retries


def _until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    t_end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < t_end, "condition not reached"
        time.sleep(0.002)


def _full_server(fake_servers: Callable[..., ServerThread]) -> tuple[ServerThread, FakeScorer, grpc.Future]:
    """A server whose one-prompt queue holds a call the blocked scorer is working on: the next is refused."""
    srv = fake_servers(batch=BatchPolicy(max_queue=1))
    sched = srv.server.scheduler
    assert sched is not None
    fake = sched.scorer
    assert isinstance(fake, FakeScorer)
    fake.block()
    holder = RouterClient(srv.target)
    held = holder.stub.Score.future(router_pb2.ScoreRequest(prompts=[router_pb2.Prompt(text="held")]), timeout=30)
    _until(fake.entered.is_set)
    return srv, fake, held


def test_a_refused_call_is_retried_until_the_server_takes_it(fake_servers: Callable[..., ServerThread]) -> None:
    srv, fake, held = _full_server(fake_servers)
    sched = srv.server.scheduler
    assert sched is not None
    releaser = threading.Thread(target=lambda: (_until(lambda: sched.stats.rejected_queue_full >= 2), fake.release()))
    releaser.start()
    with RouterClient(srv.target, retry=PATIENT) as client:
        d = client.route("retried", router="mf", threshold=0.5)
    releaser.join()
    assert d.router == "mf" and held.result(timeout=10) is not None
    assert sched.stats.rejected_queue_full >= 2  # refused at least twice, then answered


def test_no_retry_a_short_timeout_or_a_bad_request_come_back_at_once(
    fake_servers: Callable[..., ServerThread],
) -> None:
    srv, fake, held = _full_server(fake_servers)
    sched = srv.server.scheduler
    assert sched is not None
    try:
        with RouterClient(srv.target, retry=NO_RETRY) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.route("once", router="mf", threshold=0.5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and sched.stats.rejected_queue_full == 1
        assert error_reason(err.value) == "QUEUE_FULL" and retry_delay_s(err.value) == 0.05
        with RouterClient(srv.target, retry=PATIENT, timeout_s=0.04) as client:  # the 50 ms delay passes it
            with pytest.raises(grpc.RpcError) as err:
                client.route("short deadline", router="mf", threshold=0.5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and sched.stats.rejected_queue_full == 2
        with RouterClient(srv.target, retry=PATIENT) as client:
            with pytest.raises(grpc.RpcError) as err:
                client.route("", router="mf", threshold=0.5)  # an empty prompt: wrong, not refused
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_reason(err.value) == "EMPTY_PROMPT"
        assert retry_delay_s(err.value) is None and sched.stats.rejected_queue_full == 2
    finally:
        fake.release()
    assert held.result(timeout=10) is not None


def test_the_asyncio_client_answers_and_retries_like_the_blocking_one(
    fake_servers: Callable[..., ServerThread],
) -> None:
    srv, fake, held = _full_server(fake_servers)
    sched = srv.server.scheduler
    assert sched is not None

    async def body() -> None:
        async with AsyncRouterClient(srv.target, retry=PATIENT, tenant="team") as client:
            waiting = asyncio.create_task(client.route("retried", router="mf", threshold=0.5))
            while sched.stats.rejected_queue_full < 2:
                await asyncio.sleep(0.002)
            fake.release()
            d = await waiting
            assert d.router == "mf" and d.decision_id
            assert await client.health() == "SERVING"
            conversation = [{"role": "user", "content": "two"}]
            scored = await client.score([conversation], routers=["mf"])  # one prompt: the queue holds one
            assert [r.status.code for r in scored.results] == [0]
            with RouterClient(srv.target) as blocking:  # the same answers as the blocking client's
                again = blocking.score([conversation], routers=["mf"])
            assert [r.scores[0].strong_win_probability for r in scored.results] == [
                r.scores[0].strong_win_probability for r in again.results
            ]
            assert [r.name for r in (await client.list_routers()).routers] == ["random", "mf"]
            with RouterClient(srv.target) as blocking:
                assert await client.get_router("mf") == blocking.get_router("mf")
        async with AsyncRouterClient(srv.target, retry=NO_RETRY) as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.route("", router="mf", threshold=0.5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error_reason(err.value) == "EMPTY_PROMPT"

    asyncio.run(body())
    assert held.result(timeout=10) is not None
    assert sched.tenant_counts.label("team") == "team"  # the asyncio client named its tenant
