"""Token authentication and Prometheus metrics through a real gRPC server on 127.0.0.1: every RPC refuses
no token and a wrong one (UNAUTHENTICATED, nothing said about why) and takes the right one; health stays
open and reflection is off; a token bound to a tenant decides the tenant; no token ever reaches the logs;
and a scrape of the metrics endpoint (real HTTP) shows the counters move with the calls."""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lmroute.service.client import RouterClient
from lmroute.service.config import BatchPolicy, ServiceConfig
from lmroute.service.errors import ConfigError
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread
from lmroute.v1 import admin_pb2, router_pb2

OPEN_TOKEN = "open-token-0123456789abcdef"
BATCH_TOKEN = "batch-token-0123456789abcdef"
WRONG_TOKEN = "wrong-token-0123456789abcdef"
NEW_TOKEN = "rotated-token-0123456789abcdef"


@pytest.fixture()
def serve(fake_servers: Callable[..., ServerThread], tmp_path: Path) -> Callable[..., ServerThread]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# callers\n{OPEN_TOKEN}\n{BATCH_TOKEN} batch\n")

    def make(**kw: object) -> ServerThread:
        settings: dict[str, object] = dict(quiet=False, auth_tokens_file=str(tokens), metrics_port=0)
        return fake_servers(**{**settings, "share_targets": "default=0.5,batch=0.1", **kw})

    return make


def every_call(client: RouterClient) -> dict[str, Callable[[], object]]:
    """One call of every RPC of RouterService and AdminService (ReloadBundle: the fake scorer loads any
    path)."""
    kw = client._kw(None)
    route = router_pb2.RouteRequest(prompt=router_pb2.Prompt(text="hi"), router="mf", threshold=0.5)
    return {
        "Score": lambda: client.stub.Score(router_pb2.ScoreRequest(prompts=[router_pb2.Prompt(text="hi")]), **kw),
        "Route": lambda: client.stub.Route(route, **kw),
        "ListRouters": lambda: client.stub.ListRouters(router_pb2.ListRoutersRequest(), **kw),
        "GetRouter": lambda: client.stub.GetRouter(router_pb2.GetRouterRequest(name="mf"), **kw),
        "Feedback": lambda: client.stub.Feedback(router_pb2.FeedbackRequest(), **kw),
        "GetBundle": lambda: client.admin.GetBundle(admin_pb2.GetBundleRequest(), **kw),
        "ReloadBundle": lambda: client.admin.ReloadBundle(admin_pb2.ReloadBundleRequest(path="/nonexistent"), **kw),
        "ListShareTargets": lambda: client.admin.ListShareTargets(admin_pb2.ListShareTargetsRequest(), **kw),
        "ListSpendTargets": lambda: client.admin.ListSpendTargets(admin_pb2.ListSpendTargetsRequest(), **kw),
        "SetTargets": lambda: client.admin.SetTargets(
            admin_pb2.SetTargetsRequest(changes=[admin_pb2.TargetChange(tenant="batch", strong_share=0.1)]), **kw
        ),
        "DecisionsToJudge": lambda: client.admin.DecisionsToJudge(admin_pb2.DecisionsToJudgeRequest(budget=1), **kw),
    }


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly these labels in the exposition text (0 when absent)."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")) == labels:
            return float(m.group(3))
    return 0.0


def test_every_rpc_needs_a_token_health_is_open_and_reflection_is_off(
    serve: Callable[..., ServerThread], capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("debug")  # to the captured stderr; restored below
    try:
        logs = _calls_with_and_without_tokens(serve)
    finally:
        configure_logging("warning")
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    out = logs + capfd.readouterr().err
    assert '"rpc"' in out and "UNAUTHENTICATED" in out  # the access lines are there
    for token in (OPEN_TOKEN, BATCH_TOKEN, WRONG_TOKEN):
        assert token not in out


def _calls_with_and_without_tokens(serve: Callable[..., ServerThread]) -> str:
    srv = serve()
    results: dict[str, list[grpc.StatusCode]] = {}
    for token in (None, WRONG_TOKEN, OPEN_TOKEN, BATCH_TOKEN):
        with RouterClient(srv.target, token=token) as client:
            for name, call in every_call(client).items():
                results.setdefault(name, []).append(code_of(call))
    unauth = grpc.StatusCode.UNAUTHENTICATED
    expected_with_token = {  # no outcome store: past the token check
        "Feedback": grpc.StatusCode.FAILED_PRECONDITION,
        "DecisionsToJudge": grpc.StatusCode.FAILED_PRECONDITION,
    }
    admin = set(admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name)
    assert set(results) == admin | set(router_pb2.DESCRIPTOR.services_by_name["RouterService"].methods_by_name)
    for name, codes in results.items():
        with_token = expected_with_token.get(name, grpc.StatusCode.OK)
        # a token bound to a tenant speaks for that tenant: it may not administer the server; it may ask
        # which of its own decisions to judge
        bound = grpc.StatusCode.PERMISSION_DENIED if name in admin - {"DecisionsToJudge"} else with_token
        assert codes == [unauth, unauth, with_token, bound], name

    with RouterClient(srv.target, token=WRONG_TOKEN) as client:
        with pytest.raises(grpc.RpcError) as e:
            client.route("hi", router="mf", threshold=0.5)
        assert e.value.details() == "unauthenticated"  # nothing about which check failed
        assert client.health() == "SERVING"  # health needs no token
        refl = reflection_pb2_grpc.ServerReflectionStub(client.channel)
        with pytest.raises(grpc.RpcError) as e:
            list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED  # reflection off when tokens are configured
    srv.stop()
    return ""


def test_a_token_bound_to_a_tenant_decides_the_tenant(serve: Callable[..., ServerThread]) -> None:
    srv = serve()
    # the batch token's calls are batch's, whatever tenant the metadata names
    with RouterClient(srv.target, token=BATCH_TOKEN, tenant="default") as client:
        for i in range(20):
            client.route(f"prompt {i}", router="mf")
    with RouterClient(srv.target, token=OPEN_TOKEN, tenant="batch") as client:  # unbound: the metadata counts
        controllers = {(c.tenant, c.router): c.decisions for c in client.list_share_targets().controllers}
        assert controllers == {("batch", "mf"): 20}
        client.route("one more", router="mf")
        controllers = {(c.tenant, c.router): c.decisions for c in client.list_share_targets().controllers}
    assert controllers == {("batch", "mf"): 21}


def test_a_bound_token_speaks_for_its_tenant_whatever_the_tenants_list(serve: Callable[..., ServerThread]) -> None:
    """With `tenants` listed, an unbound token naming a tenant not listed is refused (UNKNOWN_TENANT); a
    token bound to a tenant the list leaves out is served as that tenant, whatever its metadata names."""
    srv = serve(tenants=("default",))
    with RouterClient(srv.target, token=OPEN_TOKEN, tenant="batch") as client:
        with pytest.raises(grpc.RpcError) as err:
            client.route("unbound", router="mf")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tenant 'batch' (named in x-lmroute-tenant)" in (err.value.details() or "")
    with RouterClient(srv.target, token=BATCH_TOKEN, tenant="rogue") as client:
        for i in range(3):
            client.route(f"bound {i}", router="mf")
        with pytest.raises(grpc.RpcError) as err:  # nor may it set its own target
            client.set_targets(shares={"batch": 1.0})
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "bound to a tenant" in (err.value.details() or "")
    with RouterClient(srv.target, token=OPEN_TOKEN) as client:
        controllers = {(c.tenant, c.router): c.decisions for c in client.list_share_targets().controllers}
    assert controllers == {("batch", "mf"): 3}


@pytest.mark.parametrize("transport", ["aio", "threads"])
def test_a_call_a_handler_aborts_itself_is_counted_with_its_code(
    serve: Callable[..., ServerThread], transport: str
) -> None:
    """The health service ends a Check of a service it does not hold with context.abort(NOT_FOUND), not
    a ServiceError: the call is counted NOT_FOUND (it was counted OK)."""
    srv = serve(transport=transport)
    port = srv.server.metrics_port
    assert port
    check = "/grpc.health.v1.Health/Check"
    with RouterClient(srv.target) as client:
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as err:
                client.health("no.such.Service")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert client.health() == "SERVING"
    after = scrape(port)
    assert sample(after, "lmroute_calls_total", method=check, code="NOT_FOUND") == 3
    assert sample(after, "lmroute_calls_total", method=check, code="OK") == 1


def test_metrics_counters_move_with_the_calls(serve: Callable[..., ServerThread]) -> None:
    srv = serve()
    port = srv.server.metrics_port
    assert port
    route = "/lmroute.v1.RouterService/Route"
    before = scrape(port)
    with RouterClient(srv.target, token=OPEN_TOKEN) as client:
        for i in range(7):
            client.route(f"prompt {i}", router="mf")
        client.score([f"s{i}" for i in range(5)])
        listed = client.list_share_targets()
    with RouterClient(srv.target, token=WRONG_TOKEN) as client:
        for i in range(1, 6):  # counted before the status leaves: a scrape right after each refusal sees it
            with pytest.raises(grpc.RpcError):
                client.route("x", router="mf")
            seen = sample(scrape(port), "lmroute_refusals_total", method=route, reason="UNAUTHENTICATED")
            assert seen == i
    after = scrape(port)
    assert (
        sample(after, "lmroute_calls_total", method=route, code="OK")
        - sample(before, "lmroute_calls_total", method=route, code="OK")
        == 7
    )
    assert sample(after, "lmroute_call_seconds_count", method=route) >= 12
    assert sample(after, "lmroute_bundle_info", version="fake-1") == 1
    assert sample(after, "lmroute_scheduler_events_total", event="items_scored") >= 12
    assert sample(after, "lmroute_batch_size_count") >= 1 and sample(after, "lmroute_queue_wait_seconds_count") >= 12
    # every scored prompt's wait, queued or scored at once, under its tenant: here none named
    assert sample(after, "lmroute_tenant_queue_wait_seconds_count", tenant="(none)") == sample(
        after, "lmroute_queue_wait_seconds_count"
    )
    assert sample(after, "lmroute_share_target", tenant="default", router="mf") == 0.5
    [ctl] = listed.controllers
    assert sample(after, "lmroute_share_realised", tenant="default", router="mf") == pytest.approx(ctl.realised)
    assert sample(after, "lmroute_share_threshold", tenant="default", router="mf") == pytest.approx(ctl.threshold)
    assert sample(after, "lmroute_in_flight_calls") == 0
    assert sample(after, "lmroute_streams_open") == 0 and sample(after, "lmroute_streams_refused_total") == 0
    with grpc.insecure_channel(srv.target) as ch:  # health needs no token
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=30)
        next(watch)
        assert sample(scrape(port), "lmroute_streams_open") == 1
        watch.cancel()


def test_bad_token_files_are_refused_naming_the_line_not_the_token(tmp_path: Path) -> None:
    bad = tmp_path / "tokens"
    bad.write_text(f"{OPEN_TOKEN}\nshort\n")
    with pytest.raises(ConfigError) as e:
        ServiceConfig(bundle_path=Path("b"), auth_tokens_file=str(bad))
    assert str(e.value) == f"auth: {bad}:2: a token must be 16-512 of [A-Za-z0-9._~+/=-]"
    bad.write_text(f"{OPEN_TOKEN} two tenants\n")
    with pytest.raises(ConfigError, match=r":1: expected `<token>` or `<token> <tenant>`"):
        ServiceConfig(bundle_path=Path("b"), auth_tokens_file=str(bad))
    with pytest.raises(ConfigError, match="auth: environment variable LMROUTE_TEST_NO_SUCH_VAR: not set"):
        ServiceConfig(bundle_path=Path("b"), auth_tokens_env="LMROUTE_TEST_NO_SUCH_VAR")
    from lmroute.service.auth import MAX_TOKENS_FILE_BYTES

    # the file is read again on a serving thread when it changes: a bound on what that read may cost
    bad.write_text("".join(f"token-{i:026d}\n" for i in range(MAX_TOKENS_FILE_BYTES // 33 + 1)))
    with pytest.raises(ConfigError, match=rf"auth: {bad}: more than {MAX_TOKENS_FILE_BYTES} bytes"):
        ServiceConfig(bundle_path=Path("b"), auth_tokens_file=str(bad))


def test_the_grafana_dashboard_reads_only_metrics_the_server_exports(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "lmroute.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(lmroute_[a-z0-9_]+)", e)}
    upstreams = tmp_path / "upstreams.json"  # the front's families too (nothing is sent upstream here)
    (tmp_path / "strong.key").write_text("sk-unused")
    extra = {"strong": {"fallback": True, "api_key_file": str(tmp_path / "strong.key")}, "weak": {}}
    upstreams.write_text(
        json.dumps({t: {"model": t, "base_url": "http://127.0.0.1:9/v1", **extra[t]} for t in ("strong", "weak")})
    )
    srv = serve(spend_targets="default=3", http_port=0, upstreams_file=str(upstreams))
    port = srv.server.metrics_port
    assert port
    with RouterClient(srv.target, token=OPEN_TOKEN) as client:
        client.route("hello", router="mf")  # a share controller and a call: every family has a sample
    text = scrape(port)
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    suffixes = ("_bucket", "_sum", "_count", "_total")
    for name in sorted(used):
        family = next((name[: -len(s)] for s in suffixes if name.endswith(s) and name[: -len(s)] in families), name)
        assert family in families or name in families, f"the dashboard reads {name}, which the server does not export"
    bounds = re.findall(r'^lmroute_queue_wait_seconds_bucket\{le="([^"]+)"\}', text, re.M)
    noise = [b for b in bounds if "9999999" in b or "0000000" in b]  # 9.999999999999999e-06 for 1e-05
    assert bounds and not noise, noise
    # the families read at scrape time are described, so a scrape asking for some by name[] gets them
    from lmroute.service.metrics import _SCRAPE_TIME_FAMILIES

    described = {name for _, name in _SCRAPE_TIME_FAMILIES}
    written = {"lmroute_calls", "lmroute_call_seconds", "lmroute_in_flight_calls", "lmroute_refusals"}
    exported = {f.removesuffix("_total") for f in families if not f.endswith("_created")}
    assert exported - written <= described, exported - written - described
    for name in ("lmroute_bundle_info", "lmroute_scheduler_events_total", "lmroute_calls_total"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?name[]={name}", timeout=10) as resp:
            filtered = resp.read().decode()
        assert re.search(rf"^{name}\{{", filtered, re.M), (name, filtered)


def test_store_counters_follow_feedback(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    srv = serve(store=f"sqlite:{tmp_path / 'outcomes.sqlite3'}")
    port = srv.server.metrics_port
    assert port
    with RouterClient(srv.target, token=OPEN_TOKEN) as client:
        d = client.route("hello", router="mf", threshold=0.5)
        deadline = time.monotonic() + 20
        while sample(scrape(port), "lmroute_store_events_total", event="decisions_written") < 1:
            assert time.monotonic() < deadline, "decision not written"
            time.sleep(0.05)
        report = router_pb2.OutcomeReport(decision_id=d.decision_id, single=router_pb2.SingleOutcome(quality=1.0))
        assert client.feedback([report]).stored == 1
    text = scrape(port)
    assert sample(text, "lmroute_store_events_total", event="outcomes_written") == 1
    assert sample(text, "lmroute_store_pending", kind="outcomes") == 0
    assert re.search(r"^lmroute_store_write_seconds 0\.0$", text, re.M), text  # no write in progress
    # per reporting tenant: what became of each reported outcome
    bad = router_pb2.OutcomeReport(decision_id=d.decision_id, single=router_pb2.SingleOutcome(quality=2.0))
    with RouterClient(srv.target, token=BATCH_TOKEN) as batch:  # bound to tenant batch
        codes = [r.reason for r in batch.feedback([report, report, bad]).results]
    assert codes == ["", "DUPLICATE", "INVALID_OUTCOME"]  # batch's own outcome: stored, then a duplicate
    scheduler = srv.server.scheduler
    assert scheduler is not None  # the calls' and the Feedback results' tenants share their labels
    assert scheduler.tenant_counts.labels is srv.server.servicer.feedback_counts.labels
    text = scrape(port)
    family = "lmroute_tenant_feedback_total"
    assert sample(text, family, tenant="(none)", result="stored") == 1
    assert sample(text, family, tenant="batch", result="stored") == 1
    assert sample(text, family, tenant="batch", result="duplicate") == 1
    assert sample(text, family, tenant="batch", result="invalid") == 1


def test_tenant_metrics_count_each_tenants_calls_and_what_it_has_queued(serve: Callable[..., ServerThread]) -> None:
    """Per tenant, calls admitted and refused, prompts queued now and their queue waits, through the
    scrape endpoint: the tenants named in metadata beyond --metrics-tenants (2 here) counted as (other), a
    call naming none as (none)."""
    policy = BatchPolicy(
        max_batch_size=4, admit_wait_ms=450, max_batch_ms=0, queue_timeout_ms=20_000, metrics_tenants=2
    )
    srv = serve(batch=policy)
    port, sched = srv.server.metrics_port, srv.server.scheduler
    assert port and sched is not None
    sched.rate.observe(1, 3, 0.1)  # a one-word prompt costs 0.1 s: 0.45 s admits 4 queued behind the scorer
    fake = sched.scorer
    fake.block()
    try:
        _tenant_metrics(srv, fake)
    finally:
        fake.release()


def _tenant_metrics(srv: ServerThread, fake: Any) -> None:
    port, sched = srv.server.metrics_port, srv.server.scheduler
    assert port and sched is not None
    req = router_pb2.ScoreRequest(prompts=[router_pb2.Prompt(text="one")])

    clients: dict[str, RouterClient] = {}

    def send(tenant: str) -> grpc.Future:
        if tenant not in clients:
            clients[tenant] = RouterClient(srv.target, token=OPEN_TOKEN, tenant=tenant or None)
        client = clients[tenant]
        return client.stub.Score.future(req, **client._kw(20))

    calls = [send("flood")]
    _until(lambda: fake.entered.is_set())
    calls += [send("flood") for _ in range(4)]
    _until(lambda: sched.stats.admitted == 5)
    refused = send("flood")  # its own 0.4 s queued + 0.1 s: over 0.45 s
    assert refused.exception(timeout=10).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for n, tenant in enumerate(("a", "b", ""), start=6):  # a visit of each tenant ahead of them: admitted
        calls.append(send(tenant))
        _until(lambda n=n: sched.stats.admitted == n)  # type: ignore[misc]
    a_queued_by = time.monotonic()  # a's prompt is queued (admitted; the scorer is still held)
    text = scrape(port)
    counted = {
        (tenant, event): sample(text, "lmroute_tenant_calls_total", tenant=tenant, event=event)
        for tenant in ("flood", "a", "b", "(other)", "(none)")
        for event in ("admitted", "refused_overload")
    }
    assert counted == {
        ("flood", "admitted"): 5,
        ("flood", "refused_overload"): 1,
        ("a", "admitted"): 1,
        ("a", "refused_overload"): 0,
        ("b", "admitted"): 0,  # the third tenant named: beyond the two counted apart
        ("b", "refused_overload"): 0,
        ("(other)", "admitted"): 1,
        ("(other)", "refused_overload"): 0,
        ("(none)", "admitted"): 1,
        ("(none)", "refused_overload"): 0,
    }
    queued = {t: sample(text, "lmroute_tenant_queued_prompts", tenant=t) for t in ("flood", "a", "(other)", "(none)")}
    assert queued == {"flood": 4, "a": 1, "(other)": 1, "(none)": 1}  # the first flood call is being scored
    assert "lmroute_tenant_queue_wait_seconds_count{" not in text  # nothing has left the queue yet
    held_s = time.monotonic() - a_queued_by
    fake.release()
    assert all(c.exception(timeout=20) is None for c in calls)
    for client in clients.values():
        client.close()
    text = scrape(port)
    assert "lmroute_tenant_queued_prompts{" not in text
    # each scored prompt's queue wait under its tenant's label; a's waited at least while the scorer was held
    waits = {t: sample(text, "lmroute_tenant_queue_wait_seconds_count", tenant=t) for t in ("flood", "a", "(other)")}
    assert waits == {"flood": 5, "a": 1, "(other)": 1} and sample(text, "lmroute_queue_wait_seconds_count") == 8
    assert sample(text, "lmroute_tenant_queue_wait_seconds_count", tenant="(none)") == 1
    assert sample(text, "lmroute_tenant_queue_wait_seconds_sum", tenant="a") >= held_s
    assert sample(text, "lmroute_tenant_queue_wait_seconds_bucket", tenant="a", le="10.0") == 1


def _until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    t_end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < t_end, "condition not reached"
        time.sleep(0.005)


def _admitted(srv: ServerThread, token: str) -> bool:
    with RouterClient(srv.target, token=token) as client:
        try:
            client.route("hi", router="mf", threshold=0.5)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            return False
    return True


def _until_admitted(srv: ServerThread, token: str, admitted: bool) -> None:
    t_end = time.monotonic() + 10.0
    while _admitted(srv, token) != admitted:
        assert time.monotonic() < t_end, f"token still {'refused' if admitted else 'admitted'}"
        time.sleep(0.1)


def test_the_tokens_file_is_read_again_when_it_changes_and_a_bad_one_keeps_the_tokens(
    serve: Callable[..., ServerThread], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info")  # to the captured stderr; restored below
    try:
        logged = _rotations(serve(), tmp_path) + capfd.readouterr().err
    finally:
        configure_logging("warning")
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    assert f"{tmp_path / 'tokens'}:2: a token must be 16-512" in logged and "has none" in logged
    assert "auth_tokens_reloaded" in logged
    for token in (OPEN_TOKEN, BATCH_TOKEN, NEW_TOKEN):
        assert token not in logged


def _rotations(srv: ServerThread, tmp_path: Path) -> str:
    new_token = NEW_TOKEN
    port = srv.server.metrics_port
    assert port and _admitted(srv, OPEN_TOKEN) and not _admitted(srv, new_token)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{new_token} app\n")  # OPEN_TOKEN revoked, one added
    _until_admitted(srv, OPEN_TOKEN, False)
    assert _admitted(srv, new_token) and not _admitted(srv, BATCH_TOKEN)
    with RouterClient(srv.target, token=new_token) as client:  # bound: it speaks for its tenant
        with pytest.raises(grpc.RpcError) as bound:
            client.get_bundle()
    assert bound.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert sample(scrape(port), "lmroute_auth_reloads_total", result="reloaded") == 1
    for bad in (f"{new_token}\nshort\n", "# every token removed\n"):  # a bad entry; no token left
        failed = sample(scrape(port), "lmroute_auth_reloads_total", result="failed")
        tokens.write_text(bad)
        t_end = time.monotonic() + 10.0
        while sample(scrape(port), "lmroute_auth_reloads_total", result="failed") == failed:
            assert _admitted(srv, new_token)  # kept meanwhile, and after
            assert time.monotonic() < t_end, "the bad file was not looked at"
            time.sleep(0.1)
        assert _admitted(srv, new_token) and not _admitted(srv, OPEN_TOKEN)
    tokens.unlink()  # gone: kept too
    time.sleep(1.5)
    assert _admitted(srv, new_token)
    tokens.write_text(f"{OPEN_TOKEN}\n")
    _until_admitted(srv, OPEN_TOKEN, True)
    assert not _admitted(srv, new_token)
    after = scrape(port)
    assert sample(after, "lmroute_auth_reloads_total", result="reloaded") == 2
    assert sample(after, "lmroute_auth_reloads_total", result="failed") == 3
    srv.stop()
    return ""


def test_a_bind_off_loopback_without_tokens_or_tls_is_warned_of(
    fake_servers: Callable[..., ServerThread], capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    configure_logging("info")
    try:
        fake_servers(quiet=False, host="0.0.0.0").stop()
        fake_servers(quiet=False, host="0.0.0.0", admin_service="on").stop()
        fake_servers(quiet=False).stop()  # 127.0.0.1: nothing to warn of
    finally:
        configure_logging("warning")
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    warned = [
        line
        for line in (json.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{"))
        if line.get("event") in ("open_bind", "admin_open")
    ]
    assert [(w["event"], w["host"], w["level"]) for w in warned] == [
        ("open_bind", "0.0.0.0", "warning"),
        ("open_bind", "0.0.0.0", "warning"),
        ("admin_open", "0.0.0.0", "warning"),  # AdminService asked for by name off loopback, without tokens
    ]
    assert [(w["tokens"], w["tls"]) for w in warned[:2]] == [(False, False)] * 2


def test_idle_connections_to_the_metrics_port_hold_no_thread_for_long(serve: Callable[..., ServerThread]) -> None:
    """Connections that send nothing: past 16 at once the port closes them at once, and those it took it
    closes after 10 s; scrapes answer once they are gone, the process's threads where they were."""
    srv = serve()
    port = srv.server.metrics_port
    assert port
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(40)]
    try:
        time.sleep(0.5)
        assert threading.active_count() <= before + 16  # the rest were closed at once, not given a thread
        t0 = time.monotonic()
        for conn in idle:
            assert conn.recv(1) == b""  # closed by the server: at once, or after its 10 s
        assert time.monotonic() - t0 < 20
    finally:
        for conn in idle:
            conn.close()
    assert "lmroute_bundle_info" in scrape(port)
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_a_bound_token_neither_sees_nor_uses_another_tenants_own_router(serve: Callable[..., ServerThread]) -> None:
    """`other`'s own router (adapted to its traffic, named after it) is not loaded as far as a caller bound
    to `batch` can tell; an unbound token sees every router."""
    srv = serve(tenant_routers={"batch": "mf", "other": "random"})
    with RouterClient(srv.target, token=BATCH_TOKEN) as batch:
        assert [r.name for r in batch.list_routers().routers] == ["mf"]
        for call in (
            lambda: batch.route("hi", router="random", threshold=0.5),
            lambda: batch.get_router("random"),
            lambda: batch.score(["hi"], routers=["random"]),
        ):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.NOT_FOUND
            assert "random" not in (e.value.details() or "").partition("(loaded:")[2]
        [result] = batch.score(["hi"]).results  # every router it may use
        assert [s.router for s in result.scores] == ["mf"]
        assert batch.route("hi", router="mf", threshold=0.5).router == "mf"
    with RouterClient(srv.target, token=OPEN_TOKEN) as operator:
        assert [r.name for r in operator.list_routers().routers] == ["random", "mf"]
        assert operator.route("hi", router="random", threshold=0.5).router == "random"
