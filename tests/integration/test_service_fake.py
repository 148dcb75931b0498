"""The gRPC service on 127.0.0.1 with a FakeScorer behind it: admission, timeouts, deadlines,
cancellation, per-item errors, message size, health, reflection, drain, error details on the wire.

FakeScorer is product code (lmroute.service.fake_scorer) that blocks / fails on cue, so every
overload case is driven by events, not by load; timing assertions are one-sided. The real-bundle tests
are in test_service_bundle.py.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from lmroute.service.client import NO_RETRY, RouterClient
from lmroute.service.config import BatchPolicy, ServiceConfig
from lmroute.service.decisions import decision_id_time_ms
from lmroute.service.errors import ConfigError
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread
from lmroute.v1 import router_pb2

SERVICE = "lmroute.v1.RouterService"


def _config(**kw: object) -> ServiceConfig:
    base: dict[str, object] = dict(bundle_path=Path("unused"), port=0, log_level="warning", grace_s=0.0)
    base.update(kw)
    return ServiceConfig(**base)  # type: ignore[arg-type]


def _serve(scorer: FakeScorer, **kw: object) -> ServerThread:
    configure_logging("warning")
    return ServerThread(_config(**kw), scorer_factory=lambda _cfg: scorer).start()


@pytest.fixture()
def fake() -> FakeScorer:
    return FakeScorer(routers=("random", "mf"))


@pytest.fixture()
def make_server(fake: FakeScorer) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def make(**kw: object) -> ServerThread:
        srv = _serve(fake, **kw)
        started.append(srv)
        return srv

    yield make
    fake.release()
    for srv in started:
        srv.stop()


def _reason(err: grpc.RpcError) -> tuple[str, int | None]:
    """ErrorInfo reason and RetryInfo delay (ms) from a failed call's rich status."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status details on the error"
    reason, retry_ms = "", None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_ms = retry.retry_delay.ToMilliseconds()
    return reason, retry_ms


def _req(*texts: str, routers: tuple[str, ...] = ()) -> router_pb2.ScoreRequest:
    return router_pb2.ScoreRequest(prompts=[router_pb2.Prompt(text=t) for t in texts], routers=list(routers))


def _wait(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    t_end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < t_end, "condition not reached"
        time.sleep(0.002)


def _seen(fake: FakeScorer, text: str) -> bool:
    return any(text in t for call in fake.calls for t in call)


def test_queue_limit_8_with_10_concurrent_gives_exactly_2_resource_exhausted(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    srv = make_server(batch=BatchPolicy(max_queue=8))
    fake.block()
    with RouterClient(srv.target) as c:
        calls = [c.stub.Score.future(_req(f"prompt {i}"), timeout=20) for i in range(10)]
        sched = srv.server.scheduler
        assert sched is not None
        _wait(lambda: sched.stats.rejected_queue_full + sched.stats.admitted == 10)
        fake.release()
        errors = [f.exception() for f in calls]
    full = [e for e in errors if e is not None]
    assert len(full) == 2
    for e in full:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, retry_ms = _reason(e)
        assert reason == "QUEUE_FULL" and retry_ms is not None and retry_ms > 0
    assert sum(e is None for e in errors) == 8


def test_one_tenants_flood_of_large_calls_cannot_fill_the_queue_against_another_tenant(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    """max_queue 16, the scorer blocked: a tenant's 4-prompt Score calls fill 12 places while another
    tenant asks (it sent a call within the queue timeout); its next ones are refused QUEUE_FULL, and the
    other tenant's call still enters the last quarter and is answered."""
    srv = make_server(batch=BatchPolicy(max_queue=16, admit_wait_ms=60_000, queue_timeout_ms=20_000))
    sched = srv.server.scheduler
    assert sched is not None

    def tenant(name: str) -> tuple[tuple[str, str]]:
        return (("x-lmroute-tenant", name),)

    with RouterClient(srv.target) as c:
        c.stub.Score(_req("quiet asks first"), timeout=20, metadata=tenant("quiet"))
        fake.block()
        flood = []
        for i in range(5):
            flood.append(
                c.stub.Score.future(_req(*(f"f{i}.{j}" for j in range(4))), timeout=20, metadata=tenant("flood"))
            )
            _wait(lambda n=i + 1: sched.stats.admitted // 4 + sched.stats.rejected_queue_full >= n)
        quiet = c.stub.Score.future(_req("quiet again"), timeout=20, metadata=tenant("quiet"))
        _wait(lambda: sched.stats.admitted == 1 + 12 + 1)
        fake.release()
        assert quiet.exception() is None
        outcomes = [f.exception() for f in flood]
    assert [e is None for e in outcomes] == [True, True, True, False, False]
    for err in outcomes[3:]:
        assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _reason(err)[0] == "QUEUE_FULL"
        assert "queue full for this tenant: 12 of 16 prompts admitted, 12 of them its own" in (err.details() or "")


def test_an_idle_server_admits_any_call_that_fits_the_queue_whoever_asked_before(
    make_server: Callable[..., ServerThread],
) -> None:
    """The reserve keeps places from tenants that hold prompts: a call larger than the common part (7 of
    max_queue 8) from a tenant holding nothing enters an empty queue right after another tenant's call
    (it was refused QUEUE_FULL with 0 prompts admitted)."""
    srv = make_server(batch=BatchPolicy(max_queue=8, admit_wait_ms=60_000))
    with RouterClient(srv.target) as c:
        for first, then in (("a", "b"), ("b", ""), ("", "a")):
            c.stub.Score(_req("one"), timeout=20, metadata=(("x-lmroute-tenant", first),) if first else ())
            big = _req(*(f"p{i}" for i in range(7)))
            answer = c.stub.Score(big, timeout=20, metadata=(("x-lmroute-tenant", then),) if then else ())
            assert [r.status.code for r in answer.results] == [0] * 7


def test_one_tenants_flood_leaves_another_tenant_its_turn(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    """Tenants named in x-lmroute-tenant: while one tenant's calls fill what admission allows, another's
    still enter as long as their own wait (their tenant's queued calls and a visit of each other tenant
    per turn) fits it, and are scored in turn with the flood's (Score and Route alike); the flooding
    tenant stays refused."""
    # batches of 4: a call's visit, and a tenant's, is one prompt (a quarter batch at the average length)
    policy = BatchPolicy(max_batch_size=4, admit_wait_ms=450, max_batch_ms=0, queue_timeout_ms=20_000)
    srv = make_server(batch=policy)
    sched = srv.server.scheduler
    assert sched is not None
    sched.rate.observe(1, 3, 0.1)  # a one-word prompt (3 tokens) costs 0.1 s: 0.45 s admits 4 queued
    fake.block()

    def tenant(name: str) -> tuple[tuple[str, str]]:
        return (("x-lmroute-tenant", name),)

    with RouterClient(srv.target) as c:
        flood = [c.stub.Score.future(_req("occupies"), timeout=20, metadata=tenant("flood"))]
        _wait(lambda: len(fake.calls) == 1)
        flood += [c.stub.Score.future(_req(f"f{i}"), timeout=20, metadata=tenant("flood")) for i in range(4)]
        _wait(lambda: sched.stats.admitted == 5)
        refused = []
        for name in ("flood", "other", "other", "other"):
            before = (sched.stats.admitted, sched.stats.rejected_overload)
            call = c.stub.Score.future(_req("more"), timeout=20, metadata=tenant(name))
            _wait(lambda b=before: (sched.stats.admitted, sched.stats.rejected_overload) != b)
            if sched.stats.rejected_overload > before[1]:
                refused.append((name, call.exception(timeout=10)))
            else:
                flood.append(call)
        route = c.stub.Route.future(
            router_pb2.RouteRequest(prompt=router_pb2.Prompt(text="third"), router="mf", threshold=0.5),
            timeout=20,
            metadata=tenant("third"),
        )
        _wait(lambda: sched.stats.admitted == 8)
        fake.release()
        assert all(f.exception() is None for f in flood) and route.exception() is None
    assert [name for name, _ in refused] == ["flood", "other"]
    # after the call that held the scorer: the tenants in turn (flood, other, third), each one's calls in turn
    assert [t for call in fake.calls[1:] for t in call] == ["f0", "more", "third", "f1", "more", "f2", "f3"]
    for _, err in refused:
        assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _reason(err)[0] == "OVERLOADED"


def test_a_tenants_list_refuses_a_call_naming_another_tenant(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    """With `tenants` listed, a call naming a tenant not listed (a caller claiming one more turn of the
    queue under a new name) is refused before it reaches the queue: INVALID_ARGUMENT, UNKNOWN_TENANT,
    the name in the message; listed tenants and calls naming none are served."""
    srv = make_server(tenants=("flood", "other"))
    route = router_pb2.RouteRequest(prompt=router_pb2.Prompt(text="routed"), router="mf", threshold=0.5)
    with RouterClient(srv.target) as c:
        c.stub.Score(_req("listed"), timeout=20, metadata=(("x-lmroute-tenant", "other"),))
        c.stub.Score(_req("unnamed"), timeout=20)
        c.stub.Route(route, timeout=20, metadata=(("x-lmroute-tenant", "flood"),))
        refused = []
        for name in ("flood-2", "Other", "bad name!"):
            for call in (c.stub.Score, c.stub.Route):
                request = _req(f"as {name}") if call is c.stub.Score else route
                with pytest.raises(grpc.RpcError) as err:
                    call(request, timeout=20, metadata=(("x-lmroute-tenant", name),))
                refused.append(err.value)
    reasons = [(err.code(), _reason(err)[0]) for err in refused]
    bad = grpc.StatusCode.INVALID_ARGUMENT
    assert reasons == [(bad, "UNKNOWN_TENANT")] * 4 + [(bad, "INVALID_TENANT")] * 2  # "bad name!" is no name
    assert "tenant 'flood-2' (named in x-lmroute-tenant): not one of the tenants" in (refused[0].details() or "")
    assert _seen(fake, "listed") and _seen(fake, "unnamed") and _seen(fake, "routed")
    assert not _seen(fake, "as ") and len(fake.calls) == 3


def test_a_malformed_tenant_name_is_refused_not_taken_as_none(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    """Without a tenants list every well-formed name is honoured; a malformed one (a space, 65 characters)
    is refused naming it, where it used to be taken silently as no tenant (its calls counted, targeted and
    reported as the unnamed tenant's)."""
    srv = make_server()
    route = router_pb2.RouteRequest(prompt=router_pb2.Prompt(text="routed"), router="mf", threshold=0.5)
    with RouterClient(srv.target) as c:
        c.stub.Route(route, timeout=20, metadata=(("x-lmroute-tenant", "team.a_1-x"),))
        for name in ("bad name!", "x" * 65):
            with pytest.raises(grpc.RpcError) as err:
                c.stub.Route(route, timeout=20, metadata=(("x-lmroute-tenant", name),))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and _reason(err.value)[0] == "INVALID_TENANT"
            assert "(named in x-lmroute-tenant): not 1-64 of [A-Za-z0-9._-]" in (err.value.details() or "")
    assert len(fake.calls) == 1


def test_a_call_larger_than_the_queue_is_refused_as_invalid_not_retried_forever(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    """9 prompts can never be admitted by a queue of 8: INVALID_ARGUMENT at once, the scorer untouched."""
    srv = make_server(batch=BatchPolicy(max_queue=8))
    with RouterClient(srv.target) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.stub.Score(_req(*(f"too many {i}" for i in range(9))), timeout=20)
        c.stub.Score(_req(*(f"fits {i}" for i in range(8))), timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompts: 9 prompts (limit 8)" in (err.value.details() or "")
    assert not _seen(fake, "too many") and _seen(fake, "fits 7")


def test_queue_timeout_50ms_is_unavailable_and_scorer_never_sees_it(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    srv = make_server(batch=BatchPolicy(queue_timeout_ms=50))
    fake.block()
    with RouterClient(srv.target, retry=NO_RETRY) as c:
        first = c.stub.Score.future(_req("occupies the scorer"), timeout=20)
        _wait(fake.entered.is_set)
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            c.score(["waits too long"], timeout_s=20)
        elapsed_s = time.monotonic() - t0
        fake.release()
        first.result()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert e.value.details() == "queued longer than 50 ms"
    assert _reason(e.value)[0] == "QUEUE_TIMEOUT"
    assert elapsed_s < 2.0, elapsed_s  # UNAVAILABLE while the scorer is still blocked
    assert not _seen(fake, "waits too long")


def test_client_deadline_and_cancel_never_reach_scorer_batch_mates_fine(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    srv = make_server(batch=BatchPolicy(queue_timeout_ms=10_000))
    fake.block()
    with RouterClient(srv.target) as c:
        first = c.stub.Score.future(_req("occupies the scorer"), timeout=20)
        _wait(fake.entered.is_set)
        mate = c.stub.Score.future(_req("batch mate"), timeout=20)
        doomed = c.stub.Score.future(_req("cancel me"), timeout=20)
        sched = srv.server.scheduler
        assert sched is not None
        _wait(lambda: sched.stats.admitted == 3)
        doomed.cancel()
        with pytest.raises(grpc.RpcError) as e:
            c.score(["short deadline"], timeout_s=0.1)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait(lambda: sched.stats.dropped_cancelled == 1)
        _wait(lambda: sched.stats.dropped_deadline + sched.stats.dropped_cancelled == 2)
        fake.release()
        first.result()
        res = mate.result()
    assert res.results[0].status.code == 0
    assert res.results[0].scores[1].strong_win_probability == FakeScorer.score_one("mf", "batch mate")
    assert not _seen(fake, "cancel me") and not _seen(fake, "short deadline")
    _wait(lambda: sched.in_flight == 0)


def test_a_call_whose_deadline_passes_in_the_queue_is_counted_as_a_deadline_not_a_cancel(
    fake: FakeScorer, make_server: Callable[..., ServerThread]
) -> None:
    """gRPC ends a call at its deadline by cancelling the handler, often before the scheduler's own timer:
    such calls were counted as cancelled by their callers (calls_total code CANCELLED, dropped_cancelled),
    which read as callers giving up when the server was too slow."""
    srv = make_server(batch=BatchPolicy(queue_timeout_ms=10_000), metrics_port=0)
    fake.block()
    with RouterClient(srv.target) as c:
        first = c.stub.Score.future(_req("occupies the scorer"), timeout=20)
        _wait(fake.entered.is_set)
        doomed = c.stub.Score.future(_req("cancel me"), timeout=20)
        sched = srv.server.scheduler
        assert sched is not None
        _wait(lambda: sched.stats.admitted == 2)
        doomed.cancel()
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as e:
                c.score(["short deadline"], timeout_s=0.05)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait(lambda: sched.stats.dropped_deadline + sched.stats.dropped_cancelled == 4)
        assert (sched.stats.dropped_deadline, sched.stats.dropped_cancelled) == (3, 1)
        metrics = srv.server.metrics
        assert metrics is not None
        method = "/lmroute.v1.RouterService/Score"

        def calls(code: str) -> float | None:
            return metrics.registry.get_sample_value("lmroute_calls_total", {"method": method, "code": code})

        _wait(lambda: calls("DEADLINE_EXCEEDED") == 3)
        assert calls("CANCELLED") == 1
        fake.release()
        first.result()


def test_one_invalid_among_16_and_bad_conversation_fail_alone(
    make_server: Callable[..., ServerThread],
) -> None:
    srv = make_server()
    prompts = [router_pb2.Prompt(text=f"prompt {i}") for i in range(16)]
    prompts[7] = router_pb2.Prompt(text="")
    with RouterClient(srv.target) as c:
        res = c.stub.Score(router_pb2.ScoreRequest(prompts=prompts), timeout=10)
        bad_conv = c.score([[{"role": "assistant", "content": "hi"}], [{"role": "robot", "content": "x"}]])
    codes = [r.status.code for r in res.results]
    assert codes.count(0) == 15 and codes[7] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert res.results[7].status.message == "prompts[7]: empty prompt"
    assert res.results[7].status.reason == "EMPTY_PROMPT"
    assert [r.index for r in res.results] == list(range(16))
    assert [s.router for s in res.results[0].scores] == ["random", "mf"]
    msgs = [r.status.message for r in bad_conv.results]
    assert msgs == [
        "prompts[0].conversation: no user turn",
        "prompts[1].conversation.messages[0].role: unknown role 'robot' (expected one of system, user, assistant)",
    ]


def test_conversation_scores_last_user_turn(fake: FakeScorer, make_server: Callable[..., ServerThread]) -> None:
    srv = make_server()
    conv = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "a"},
        {"role": "User", "content": "second"},
    ]
    with RouterClient(srv.target) as c:
        res = c.score([conv], routers=["mf"])
    assert res.results[0].scores[0].strong_win_probability == FakeScorer.score_one("mf", "second")


def test_scorer_failure_is_per_item_internal_without_details(
    make_server: Callable[..., ServerThread],
) -> None:
    srv = make_server(batch=BatchPolicy(max_wait_us=50_000))
    with RouterClient(srv.target) as c:
        res = c.score(["fine one", "explode <fail>", "fine two"])
        with pytest.raises(grpc.RpcError) as e:
            c.route("explode <fail>", router="mf", threshold=0.5)
    assert [r.status.code for r in res.results] == [0, 13, 0]
    assert res.results[1].status.message == "internal error"
    assert e.value.code() == grpc.StatusCode.INTERNAL and e.value.details() == "internal error"


def test_message_one_byte_over_limit_is_refused_then_next_call_ok(
    make_server: Callable[..., ServerThread],
) -> None:
    limit = 64 * 1024
    srv = make_server(max_message_bytes=limit, batch=BatchPolicy(max_prompt_chars=1_000_000))
    text = next(  # the text whose request is exactly limit + 1 bytes on the wire
        "x" * n for n in range(limit, limit - 64, -1) if _req("x" * n).ByteSize() == limit + 1
    )
    req = _req(text)
    assert req.ByteSize() == limit + 1
    with RouterClient(srv.target, max_message_bytes=4 * limit) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.stub.Score(req, timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        ok = c.stub.Score(_req(text[: limit // 2]), timeout=10)
    assert ok.results[0].status.code == 0


def test_an_answer_over_the_message_limit_is_refused_naming_the_limit(make_server: Callable[..., ServerThread]) -> None:
    """40 short prompts under every router answer more than max_message_bytes 1024: refused as such,
    INVALID_ARGUMENT (RESPONSE_TOO_LARGE, no retry can succeed), where gRPC itself failed the call
    RESOURCE_EXHAUSTED after the work, which clients retried and the access line counted OK."""
    srv = make_server(max_message_bytes=1024)
    with RouterClient(srv.target, max_message_bytes=1 << 20) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.stub.Score(_req(*(f"p{i}" for i in range(40))), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and _reason(e.value)[0] == "RESPONSE_TOO_LARGE"
        assert "over max_message_bytes (1024): send fewer prompts or routers a call" in (e.value.details() or "")
        assert c.stub.Score(_req("p0", "p1"), timeout=10).results[1].status.code == 0


def test_route_policies_and_argument_errors(fake: FakeScorer, make_server: Callable[..., ServerThread]) -> None:
    srv = make_server()
    s = FakeScorer.score_one("mf", "hello")
    with RouterClient(srv.target) as c:
        d = c.route("hello", router="mf", threshold=s)
        assert (d.chosen_model, d.tier, d.threshold, d.score) == ("fake-strong", router_pb2.TIER_STRONG, s, s)
        assert d.bundle_version == "fake-1" and d.router == "mf"
        d = c.route("hello", router="mf", strong_share=0.25)  # fake calibration: 1 - share
        assert d.threshold == pytest.approx(0.75)
        assert d.chosen_model == ("fake-strong" if s >= 0.75 else "fake-weak")
        cases = [
            (
                dict(router="mf"),
                "policy: set threshold or strong_share (the server holds no share targets)",
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                dict(router="mf", threshold=1.5),
                "threshold: must be in [0, 1] (got 1.5)",
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                dict(router="", threshold=0.5),
                "router: required (the serving bundle names no default router)",
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                dict(router="nope", threshold=0.5),
                "router: unknown router 'nope' (loaded: random, mf)",
                grpc.StatusCode.NOT_FOUND,
            ),
        ]
        for kw, message, code in cases:
            with pytest.raises(grpc.RpcError) as e:
                c.route("hello", **kw)  # type: ignore[arg-type]
            assert (e.value.code(), e.value.details()) == (code, message)
        with pytest.raises(grpc.RpcError) as e:
            c.route("  ", router="mf", threshold=0.5)
        assert e.value.details() == "prompt: empty prompt"
        req = router_pb2.RouteRequest(
            prompt=router_pb2.Prompt(text="x"), router="mf", threshold=0.5, candidates=[router_pb2.Candidate(model="a")]
        )
        with pytest.raises(grpc.RpcError) as e:
            c.stub.Route(req, timeout=10)
        assert e.value.details() == "model_policy: required with candidates (got threshold)"
        with pytest.raises(grpc.RpcError) as e:
            c.score([])
        assert e.value.details() == "prompts: at least one prompt required"
        with pytest.raises(grpc.RpcError) as e:
            c.score(["x"], routers=["mf", "zzz"])
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert e.value.details() == "routers[1]: unknown router 'zzz' (loaded: random, mf)"


def test_list_and_get_router_and_request_id(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server()
    with RouterClient(srv.target, request_id="req-42") as c:
        lr = c.list_routers()
        assert [r.name for r in lr.routers] == ["random", "mf"]
        assert lr.default_pair.strong == "fake-strong" and lr.bundle_version == "fake-1"
        assert c.get_router("mf").router.calibration_thresholds == [1.0, 0.0]
        with pytest.raises(grpc.RpcError) as e:
            c.get_router("zzz")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert ("x-request-id", "req-42") in tuple(e.value.trailing_metadata())
        _, call = c.stub.ListRouters.with_call(
            router_pb2.ListRoutersRequest(), metadata=(("x-request-id", "abc"),), timeout=5
        )
        assert ("x-request-id", "abc") in tuple(call.trailing_metadata())


def test_health_not_serving_until_loaded_then_serving_and_reflection() -> None:
    configure_logging("warning")
    gate = threading.Event()
    scorer = FakeScorer()

    def slow_factory(_cfg: ServiceConfig) -> FakeScorer:
        gate.wait(20)
        return scorer

    srv = ServerThread(_config(), scorer_factory=slow_factory).start(wait_ready=False)
    try:
        with RouterClient(srv.target) as c:
            assert c.health() == "NOT_SERVING" and c.health(SERVICE) == "NOT_SERVING"
            with pytest.raises(grpc.RpcError) as e:
                c.score(["early"])
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE and _reason(e.value)[0] == "NOT_READY"
            gate.set()
            assert srv.loaded is not None
            srv.loaded.result(20)
            assert c.health() == "SERVING" and c.health(SERVICE) == "SERVING"
            with pytest.raises(grpc.RpcError) as e:
                c.health("no.such.Service")
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert "'no.such.Service'" in (e.value.details() or "") and repr(SERVICE) in (e.value.details() or "")
            refl = reflection_pb2_grpc.ServerReflectionStub(c.channel)
            req = reflection_pb2.ServerReflectionRequest(list_services="")
            [resp] = list(refl.ServerReflectionInfo(iter([req]), timeout=5))
            names = {s.name for s in resp.list_services_response.service}
            assert {SERVICE, "grpc.health.v1.Health"} <= names
    finally:
        gate.set()
        srv.stop()


def test_graceful_stop_answers_50_in_flight_and_refuses_new(fake: FakeScorer) -> None:
    """Drain: health NOT_SERVING, new calls UNAVAILABLE (DRAINING or refused), all 50 in flight OK."""
    srv = _serve(fake, batch=BatchPolicy(max_wait_us=1000))
    fake.block()
    stopped = threading.Event()
    try:
        with RouterClient(srv.target, retry=NO_RETRY) as c:
            calls = [c.stub.Score.future(_req(f"in flight {i}"), timeout=30) for i in range(50)]
            sched = srv.server.scheduler
            assert sched is not None
            _wait(lambda: sched.stats.admitted == 50)

            def stop() -> None:
                srv.call(srv.server.stop(10.0))
                stopped.set()

            stopper = threading.Thread(target=stop)
            stopper.start()
            _wait(lambda: srv.server.servicer.draining)
            with pytest.raises(grpc.RpcError) as e:
                c.score(["too late"], timeout_s=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            check = srv.call(srv.server.health.Check(health_pb2.HealthCheckRequest(service=SERVICE), None))
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING  # type: ignore[attr-defined]
            fake.release()
            results = [f.result() for f in calls]
            stopper.join(20)
        assert stopped.is_set()
        assert all(r.results[0].status.code == 0 for r in results)
        assert not _seen(fake, "too late")
    finally:
        fake.release()
        srv.stop()


@pytest.mark.parametrize("transport", ["aio", "threads"])
def test_an_open_health_watch_ends_with_the_drain_instead_of_holding_it(fake: FakeScorer, transport: str) -> None:
    """A Watch stream gets NOT_SERVING and ends when the server drains: the stop does not wait out its
    grace for it (with one open, every stop took the whole grace)."""
    srv = _serve(fake, transport=transport)
    try:
        with RouterClient(srv.target) as c:
            watch = health_pb2_grpc.HealthStub(c.channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # type: ignore[attr-defined]
            stopped = threading.Event()

            def stop() -> None:
                srv.call(srv.server.stop(60.0))  # a grace far past this test's waits
                stopped.set()

            stopper = threading.Thread(target=stop)
            stopper.start()
            rest = [m.status for m in watch]  # the stream ends: no RpcError
            stopper.join(20)
        assert rest == [health_pb2.HealthCheckResponse.NOT_SERVING]  # type: ignore[attr-defined]
        assert stopped.is_set()
    finally:
        srv.stop()


def test_reflection_resolves_a_method_symbol(make_server: Callable[..., ServerThread]) -> None:
    """ghz and grpcurl ask reflection for "pkg.Service.Method"; the answer is the file that defines it."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    srv = make_server()
    with grpc.insecure_channel(srv.target) as channel:
        with pytest.raises(KeyError):  # a fresh client: its cache cannot answer for the server
            ProtoReflectionDescriptorDatabase(channel).FindFileContainingSymbol("lmroute.v1.RouterService.NoSuchMethod")
        db = ProtoReflectionDescriptorDatabase(channel)
        method_file = db.FindFileContainingSymbol("lmroute.v1.RouterService.Route")
        assert method_file.name == "lmroute/v1/router.proto"


def test_routers_are_resolved_at_the_edge(fake: FakeScorer, make_server: Callable[..., ServerThread]) -> None:
    """Unknown names are refused before admission (the scorer never sees the call); repeated names are
    scored once, in the order first named; no names means every loaded router, in bundle order."""
    srv = make_server()
    sched = srv.server.scheduler
    assert sched is not None
    with RouterClient(srv.target) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.score(["never scored"], routers=["mf", "random", "nope"])
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert e.value.details() == "routers[2]: unknown router 'nope' (loaded: random, mf)"
        assert _reason(e.value)[0] == "ROUTER_NOT_FOUND"
        picked = c.score(["scored"], routers=["mf", "random", "mf"]).results[0]
        every = c.score(["scored"]).results[0]
    assert not _seen(fake, "never scored") and sched.stats.admitted == 2 and sched.in_flight == 0
    assert [(s.router, s.strong_win_probability) for s in picked.scores] == [
        ("mf", FakeScorer.score_one("mf", "scored")),
        ("random", FakeScorer.score_one("random", "scored")),
    ]
    assert [s.router for s in every.scores] == ["random", "mf"]


def test_plugins_are_imported_before_the_scorer_is_made(
    fake: FakeScorer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lmroute_probe_plugin.py").write_text("IMPORTED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[bool] = []

    def factory(_cfg: ServiceConfig) -> FakeScorer:
        seen.append("lmroute_probe_plugin" in sys.modules)
        return fake

    configure_logging("warning")
    srv = ServerThread(_config(plugins=("lmroute_probe_plugin",)), scorer_factory=factory).start()
    srv.stop()
    assert seen == [True]


def test_a_plugin_that_cannot_be_imported_is_a_config_error(fake: FakeScorer) -> None:
    configure_logging("warning")
    srv = ServerThread(_config(plugins=("no_such_plugin_module",)), scorer_factory=lambda _cfg: fake)
    with pytest.raises(ConfigError) as e:
        srv.start(timeout_s=30)
    assert str(e.value) == (
        "plugins: router kind plugin 'no_such_plugin_module' cannot be imported: "
        "No module named 'no_such_plugin_module'"
    )
    assert srv.server.scheduler is None and srv.server.servicer.scheduler is None
    srv.stop()


def test_every_decision_carries_its_own_id_and_route_its_propensity(
    make_server: Callable[..., ServerThread],
) -> None:
    srv = make_server()
    t0_ms = int(time.time() * 1000)
    with RouterClient(srv.target) as c:
        routes = [c.route(f"prompt {i}", router="mf", threshold=0.5) for i in range(20)]
        res = c.stub.Score(_req("one", "", "three"), timeout=20)
    t1_ms = int(time.time() * 1000)
    for d in routes:
        assert d.propensity == 1.0  # no exploration
        assert t0_ms <= decision_id_time_ms(d.decision_id) <= t1_ms
    ok, empty, three = res.results
    assert empty.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and empty.decision_id == ""
    ids = [d.decision_id for d in routes] + [ok.decision_id, three.decision_id]
    assert len(set(ids)) == len(ids) == 22
    assert all(t0_ms <= decision_id_time_ms(i) <= t1_ms for i in ids)
