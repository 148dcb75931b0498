"""Feedback over a real gRPC server on 127.0.0.1 with a real outcome store (SQLite file or the test
session's PostgreSQL server): decisions are recorded, outcomes acknowledged once durable, per-item errors
name the field; and a server killed with SIGKILL while feedback streams in loses no acknowledged outcome.

The scorer is the fake one: what is under test is the decision -> feedback -> store path, not scoring."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from lmroute.outcomes.records import Outcome, OutcomeKind, prompt_sha256
from lmroute.outcomes.store import NOT_YET_MS, open_store
from lmroute.service.client import RouterClient
from lmroute.service.client_retry import NO_RETRY, error_reason, retry_delay_s
from lmroute.service.config import BatchPolicy, ServiceConfig
from lmroute.service.decisions import new_decision_id
from lmroute.service.errors import Code
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread
from lmroute.v1 import router_pb2

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    return str(request.getfixturevalue("fresh_postgres_db"))


@pytest.fixture()
def serve() -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def make(**kw: object) -> ServerThread:
        configure_logging("warning")
        base: dict[str, object] = dict(bundle_path=Path("unused"), port=0, log_level="warning", grace_s=0.0)
        base.update(kw)
        fake = FakeScorer(routers=("random", "mf"))
        srv = ServerThread(ServiceConfig(**base), scorer_factory=lambda _cfg: fake).start()  # type: ignore[arg-type]
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


def _single(decision_id: str, quality: float, model: str = "", source: str = "") -> router_pb2.OutcomeReport:
    return router_pb2.OutcomeReport(
        decision_id=decision_id, single=router_pb2.SingleOutcome(quality=quality, model=model), source=source
    )


def _wait_recorded(dsn: str, decision_ids: list[str], timeout_s: float = 10.0) -> None:
    store = open_store(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while any(store.decision(d) is None for d in decision_ids):
            assert time.monotonic() < deadline, "decisions not recorded in time"
            time.sleep(0.05)
    finally:
        store.close()


def test_route_and_score_decisions_are_recorded_and_feedback_is_judged_per_item(
    dsn: str, serve: Callable[..., ServerThread]
) -> None:
    srv = serve(store=dsn)
    with RouterClient(srv.target) as client:
        routed = client.route("What is the capital of France?", router="mf", threshold=0.5)
        scored = client.score(["Prove Fermat's little theorem.", ""], routers=["mf", "random"])
        score_id = scored.results[0].decision_id
        assert scored.results[1].decision_id == ""  # a failed prompt made no decision
        _wait_recorded(dsn, [routed.decision_id, score_id])

        old_unknown = new_decision_id(int(time.time() * 1000) - 10 * NOT_YET_MS)
        resp = client.feedback(
            [
                _single(routed.decision_id, 0.8, source="thumbs"),  # 0: stored, model = the chosen one
                _single(routed.decision_id, 0.8, model=routed.chosen_model, source="thumbs"),  # 1: duplicate
                _single(routed.decision_id, 0.3, source="thumbs"),  # 2: conflict
                _single(old_unknown, 1.0),  # 3: not found
                _single(new_decision_id(), 1.0),  # 4: not yet recorded (fresh id)
                _single(routed.decision_id, 1.5),  # 5: out of range
                _single(score_id, 1.0),  # 6: a Score decision chose no model
                router_pb2.OutcomeReport(  # 7: paired, by decision
                    decision_id=score_id,
                    paired=router_pb2.PairedOutcome(strong_quality=1.0, weak_quality=0.25),
                    source="judge:test",
                ),
                router_pb2.OutcomeReport(  # 8: preference, by prompt
                    prompt=router_pb2.Prompt(text="Write a haiku about the sea."),
                    preference=router_pb2.PREFERENCE_TIE,
                    source="judge:test",
                ),
                router_pb2.OutcomeReport(decision_id=routed.decision_id),  # 9: no outcome set
                router_pb2.OutcomeReport(  # 10: the same model twice
                    decision_id=score_id,
                    qualities=router_pb2.ModelQualities(
                        qualities=[router_pb2.ModelQuality(model="a", quality=1.0)] * 2
                    ),
                ),
                router_pb2.OutcomeReport(  # 11: observed a day from now
                    decision_id=routed.decision_id,
                    single=router_pb2.SingleOutcome(quality=1.0),
                    source="clock-ahead",
                    observed_unix_ms=int(time.time() * 1000) + 86_400_000,
                ),
            ]
        )
        codes = [(r.code, r.reason) for r in resp.results]
        assert codes == [
            (Code.OK, ""),
            (Code.OK, "DUPLICATE"),
            (Code.ALREADY_EXISTS, "OUTCOME_CONFLICT"),
            (Code.NOT_FOUND, "DECISION_NOT_FOUND"),
            (Code.UNAVAILABLE, "DECISION_NOT_RECORDED_YET"),
            (Code.INVALID_ARGUMENT, "INVALID_OUTCOME"),
            (Code.INVALID_ARGUMENT, "MODEL_REQUIRED"),
            (Code.OK, ""),
            (Code.OK, ""),
            (Code.INVALID_ARGUMENT, "INVALID_OUTCOME"),
            (Code.INVALID_ARGUMENT, "INVALID_OUTCOME"),
            (Code.INVALID_ARGUMENT, "INVALID_OUTCOME"),
        ]
        assert resp.results[11].message.startswith("outcomes[11].observed_unix_ms: ")
        assert " s ahead of this server's clock (at most 300 s" in resp.results[11].message
        assert resp.results[5].message == "outcomes[5].single.quality: must be in [0, 1] (got 1.5)"
        assert resp.results[9].message.startswith("outcomes[9]: set one of paired")
        assert resp.results[10].message == "outcomes[10].qualities.qualities[1].model: 'a' given twice"
        assert resp.stored == 1 + 2 + 2
        # a report of several models where one clashes: the message names it and the ones stored beside it
        pair = client.list_routers().default_pair
        models = [pair.strong, pair.weak]
        first = router_pb2.OutcomeReport(
            prompt=router_pb2.Prompt(text="Which model wins this one?"),
            qualities=router_pb2.ModelQualities(qualities=[router_pb2.ModelQuality(model=models[0], quality=1.0)]),
            source="k",
        )
        client.feedback([first])
        both = router_pb2.OutcomeReport(
            prompt=router_pb2.Prompt(text="Which model wins this one?"),
            qualities=router_pb2.ModelQualities(
                qualities=[
                    router_pb2.ModelQuality(model=models[0], quality=0.0),
                    router_pb2.ModelQuality(model=models[1], quality=0.7),
                ]
            ),
            source="k",
        )
        [clash] = client.feedback([both]).results
        assert clash.reason == "OUTCOME_CONFLICT" and f"(model {models[0]!r})" in clash.message
        assert f"its other values were stored (model {models[1]!r})" in clash.message
        catalog = client.list_routers()

    store = open_store(dsn)
    rows = {r.prompt_sha256: r for r in store.labeled_prompts()}
    store.close()
    strong, weak = catalog.default_pair.strong, catalog.default_pair.weak
    route_row = rows[prompt_sha256("What is the capital of France?")]
    assert route_row.qualities == {routed.chosen_model: 0.8} and route_row.propensity == 1.0
    assert route_row.threshold == 0.5 and route_row.scores == {"mf": pytest.approx(routed.score)}
    assert rows[prompt_sha256("Prove Fermat's little theorem.")].qualities == {strong: 1.0, weak: 0.25}
    tie = rows[prompt_sha256("Write a haiku about the sea.")]
    assert tie.qualities == {strong: 0.5, weak: 0.5} and tie.kinds == frozenset({OutcomeKind.PREFERENCE})


def test_each_outcome_records_the_tenant_that_reported_it(
    dsn: str, serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """An outcome's reporter is the tenant the caller spoke for (its bound token's, else the one it
    names), never the message's say; one reporter's outcome neither collides with nor overwrites
    another's, and adaptation can read the reporters it trusts alone."""
    open_token, bound_token = "open-token-0123456789abcdef", "bound-token-0123456789abcdef"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{open_token}\n{bound_token} mallory\n")
    srv = serve(store=dsn, auth_tokens_file=str(tokens))
    prompt = router_pb2.Prompt(text="Explain TCP slow start.")

    def paired(strong_q: float) -> router_pb2.OutcomeReport:
        return router_pb2.OutcomeReport(
            prompt=prompt,
            paired=router_pb2.PairedOutcome(strong_quality=strong_q, weak_quality=1.0 - strong_q),
            source="judge:ops",
        )

    def send(report: router_pb2.OutcomeReport, **kw: Any) -> tuple[int, str]:
        with RouterClient(srv.target, **kw) as client:
            [r] = client.feedback([report]).results
            return r.code, r.reason

    assert send(paired(1.0), token=open_token, tenant="ops") == (Code.OK, "")
    assert send(paired(1.0), token=open_token) == (Code.OK, "")  # the unnamed caller: its own outcome
    # a bound token reports as its tenant whatever it names: the same key, its own row, no conflict
    assert send(paired(0.0), token=bound_token, tenant="ops") == (Code.OK, "")
    assert send(paired(0.5), token=bound_token) == (Code.ALREADY_EXISTS, "OUTCOME_CONFLICT")  # with itself
    assert send(paired(1.0), token=open_token, tenant="ops") == (Code.OK, "DUPLICATE")
    with RouterClient(srv.target, token=open_token) as client:
        catalog = client.list_routers()
    strong = catalog.default_pair.strong

    store = open_store(dsn)
    try:

        def strong_quality(reporters: set[str] | None) -> list[float]:
            return [r.qualities[strong] for r in store.labeled_prompts(reporters=reporters)]

        assert strong_quality({"ops"}) == [1.0]
        assert strong_quality({""}) == [1.0]
        assert strong_quality({"mallory"}) == [0.0]
        assert strong_quality({"ops", ""}) == [1.0]
        assert strong_quality(None) == [pytest.approx(2 / 3)]  # every reporter's, averaged
        assert strong_quality(set()) == []
    finally:
        store.close()


def test_every_decision_records_the_tenant_whose_call_made_it(
    dsn: str, serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """A decision's caller is the calling tenant (bound token, else the named one, else none) for Route
    and Score alike, beside `tenant` (the target's tenant, under a target: `default` for a caller
    without its own); an outcome joined to it by id carries it."""
    bound = "bound-token-0123456789abcdef"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{bound} team\nopen-token-0123456789abcdef\n")
    srv = serve(store=dsn, auth_tokens_file=str(tokens), share_targets="default=0.5")
    with RouterClient(srv.target, token=bound, tenant="someone") as team:  # the token decides: team
        targeted = team.route("who asked?", router="mf")  # under default's target
        scored = team.score(["scored by team"], routers=["mf"]).results[0].decision_id
    with RouterClient(srv.target, token="open-token-0123456789abcdef", tenant="ops") as ops:
        explicit = ops.route("asked with a threshold", router="mf", threshold=0.5)
    _wait_recorded(dsn, [targeted.decision_id, scored, explicit.decision_id])
    store = open_store(dsn)
    try:
        got = {d: store.decision(d) for d in (targeted.decision_id, scored, explicit.decision_id)}
        assert [(x.caller, x.tenant) for x in got.values() if x is not None] == [
            ("team", "default"),
            ("team", ""),
            ("ops", "ops"),
        ]
        store.write([], [Outcome(OutcomeKind.SINGLE, "", 1.0, decision_id=targeted.decision_id)])
        [row] = store.labeled_prompts()
        assert row.caller == "team"
    finally:
        store.close()


@pytest.mark.parametrize("own_only", [True, False])
def test_feedback_own_decisions_keeps_a_tenant_to_its_own_decisions(
    own_only: bool, dsn: str, serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """With feedback_own_decisions a tenant's outcome on a decision another caller made is refused
    alone (PERMISSION_DENIED, DECISION_OF_ANOTHER_TENANT), on its own decision stored; a caller naming no
    tenant (the operator's judge) may report on any. Without it, every report is stored."""
    team_token, ops_token = "team-token-0123456789abcdef", "ops-token-0123456789abcdef"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{team_token} team\n{ops_token} ops\nopen-token-0123456789abcdef\n")
    srv = serve(store=dsn, auth_tokens_file=str(tokens), feedback_own_decisions=own_only)
    team = RouterClient(srv.target, token=team_token)
    ops = RouterClient(srv.target, token=ops_token)
    judge = RouterClient(srv.target, token="open-token-0123456789abcdef")
    mine = team.route("team's question", router="mf", threshold=0.5).decision_id
    theirs = ops.route("ops' question", router="mf", threshold=0.5).decision_id
    _wait_recorded(dsn, [mine, theirs])
    answer = team.feedback([_single(mine, 1.0, source="app"), _single(theirs, 0.0, source="app")])
    judged = judge.feedback([_single(mine, 0.5, source="judge"), _single(theirs, 0.5, source="judge")])
    for client in (team, ops, judge):
        client.close()
    if own_only:
        assert [(r.code, r.reason) for r in answer.results] == [
            (Code.OK, ""),
            (Code.PERMISSION_DENIED, "DECISION_OF_ANOTHER_TENANT"),
        ]
        assert answer.stored == 1 and f"decision {theirs!r} was made for another caller" in answer.results[1].message
    else:
        assert [r.code for r in answer.results] == [Code.OK, Code.OK] and answer.stored == 2
    assert [r.code for r in judged.results] == [Code.OK, Code.OK]  # no tenant named: any decision


def test_feedback_without_a_store_is_failed_precondition_and_limits_hold(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    plain = serve()
    with RouterClient(plain.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.feedback([_single(new_decision_id(), 1.0)])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no outcome store" in (err.value.details() or "")
    limited = serve(store=f"sqlite:{tmp_path / 'o.sqlite3'}", max_feedback_items=2)
    with RouterClient(limited.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.feedback([_single(new_decision_id(), 1.0)] * 3)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "outcomes: 3 outcomes (limit 2)"


def test_the_server_keeps_at_most_store_max_decisions(serve: Callable[..., ServerThread], tmp_path: Path) -> None:
    """--store-max-decisions 20 with a prune every second: after 60 routed prompts the store holds the
    newest 20 decisions (a decision id of the last call is still there, the first call's is gone)."""
    path = tmp_path / "o.sqlite3"
    srv = serve(store=f"sqlite:{path}", store_max_decisions=20, store_prune_interval_s=1.0)
    ids = []
    with RouterClient(srv.target) as client:
        for i in range(60):
            ids.append(client.route(f"question {i}", router="mf", threshold=0.5).decision_id)
            time.sleep(0.003)  # each decision in a millisecond of its own (those sharing the cutoff's stay)
    writer = srv.server.store_writer
    assert writer is not None
    deadline = time.monotonic() + 20
    while writer.stats.pruned_decisions < 40:
        assert time.monotonic() < deadline, f"pruned {writer.stats.pruned_decisions} of 40"
        time.sleep(0.05)
    store = open_store(f"sqlite:{path}")
    try:
        assert store.counts()["decisions"] == 20
        assert store.decision(ids[-1]) is not None and store.decision(ids[0]) is None
    finally:
        store.close()


def test_outcomes_by_prompt_are_held_to_the_prompt_limits_of_a_score_call(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """A prompt named by an outcome is stored (text included): it meets Score's limits. Over the
    characters of a prompt: that outcome alone is refused; over a call's characters or a conversation's
    turns: the call, before anything is read or stored (they were all stored, however large)."""
    srv = serve(
        store=f"sqlite:{tmp_path / 'o.sqlite3'}",
        batch=BatchPolicy(max_prompt_chars=100),
        max_request_chars=250,
        max_turns=3,
    )

    def by_prompt(prompt: router_pb2.Prompt) -> router_pb2.OutcomeReport:
        return router_pb2.OutcomeReport(prompt=prompt, single=router_pb2.SingleOutcome(model="m", quality=1.0))

    text = router_pb2.Prompt
    with RouterClient(srv.target) as client:
        answer = client.feedback([by_prompt(text(text="fine")), by_prompt(text(text="x" * 101))])
        assert [r.code for r in answer.results] == [Code.OK, Code.INVALID_ARGUMENT] and answer.stored == 1
        assert answer.results[1].message == "outcomes[1].prompt: prompt has 101 characters (limit 100)"
        for reports, says in (
            ([by_prompt(text(text="y" * 100))] * 3, "outcomes: 300 characters in all (limit 250)"),
            (
                [
                    by_prompt(text(text="a")),
                    by_prompt(
                        router_pb2.Prompt(
                            conversation=router_pb2.Conversation(
                                messages=[router_pb2.ChatMessage(role="user", content="t")] * 4
                            )
                        )
                    ),
                ],
                "outcomes[1].prompt.conversation.messages: 4 turns (limit 3)",
            ),
        ):
            with pytest.raises(grpc.RpcError) as err:
                client.feedback(reports)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details() == says


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from lmroute.service.config import ServiceConfig
    from lmroute.service.fake_scorer import FakeScorer
    from lmroute.service.logs import configure_logging
    from lmroute.service.main import serve
    configure_logging(sys.argv[2])
    cfg = ServiceConfig(bundle_path=Path("unused"), port=0, store=sys.argv[1], grace_s=0.0, log_level=sys.argv[2])
    asyncio.run(serve(cfg, lambda _cfg: FakeScorer(routers=("mf",))))
    """
)


def _start_child(dsn: str, log_level: str = "warning") -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, dsn, log_level],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "serving on" in line:
            return proc, line.strip().rsplit(" ", 1)[-1]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"child server did not start (exit {proc.poll()})")


def test_sigkill_while_feedback_streams_in_loses_no_acknowledged_outcome(dsn: str) -> None:
    proc, target = _start_child(dsn)
    acked: dict[tuple[str, str], float] = {}  # (decision id or prompt sha256, source) -> quality acknowledged
    stop = threading.Event()
    errors: list[str] = []

    def stream(worker: int) -> None:
        with RouterClient(target, timeout_s=5.0) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    decision = client.route(f"worker {worker} prompt {i}", router="mf", threshold=0.5)
                except grpc.RpcError:
                    return  # the server died
                quality = (i % 10) / 10
                reports = [
                    router_pb2.OutcomeReport(
                        prompt=router_pb2.Prompt(text=f"worker {worker} judged {i}"),
                        paired=router_pb2.PairedOutcome(strong_quality=quality, weak_quality=1 - quality),
                        source="judge",
                    ),
                    _single(decision.decision_id, quality, source="thumbs"),
                ]
                try:
                    resp = client.feedback(reports)
                except grpc.RpcError:
                    return  # the server died: nothing of this call was acknowledged
                for report, status in zip(reports, resp.results):
                    if status.code == Code.OK:
                        key = report.decision_id or prompt_sha256(report.prompt.text)
                        acked[(key, report.source)] = quality
                    elif status.reason != "DECISION_NOT_RECORDED_YET":
                        errors.append(f"{status.code} {status.reason} {status.message}")

    workers = [threading.Thread(target=stream, args=(w,)) for w in range(4)]
    for t in workers:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    stop.set()
    for t in workers:
        t.join(10)
    assert not errors, errors[:3]
    assert len(acked) >= 300, f"only {len(acked)} outcomes acknowledged before the kill"

    store = open_store(dsn)  # reopening recovers the store (SQLite: the WAL; PostgreSQL: its own log)
    rows = store.labeled_prompts()
    store.close()
    stored: set[tuple[str, str]] = set()
    for r in rows:
        key = r.decision_id or r.prompt_sha256
        stored |= {(key, "judge" if kind is OutcomeKind.PAIRED else "thumbs") for kind in r.kinds}
    missing = [k for k in acked if k not in stored]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged outcomes lost, e.g. {missing[:2]}"


def test_a_log_that_cannot_be_written_fails_no_call_and_loses_no_outcome(tmp_path: Path) -> None:
    """The log's reader gone (a log shipper died; a full disk does the same): every line written after it
    fails, and calls, Feedback and health go on as before (a failed access line was the call's UNKNOWN)."""
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    proc, target = _start_child(dsn, log_level="info")  # info: an access line for every call
    assert proc.stderr is not None
    proc.stderr.close()  # each write to the log now fails (EPIPE)
    try:
        with RouterClient(target, timeout_s=5.0) as client:
            decisions = [client.route(f"prompt {i}", router="mf", threshold=0.5) for i in range(20)]
            resp = client.feedback([_single(d.decision_id, 0.5 + i / 100) for i, d in enumerate(decisions)])
            assert [r.code for r in resp.results] == [Code.OK] * 20
            assert client.health() == "SERVING"
        assert proc.poll() is None, "the server died"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    store = open_store(dsn)
    recorded = {r.decision_id for r in store.labeled_prompts()}
    store.close()
    assert {d.decision_id for d in decisions} <= recorded


def test_exploring_routes_report_and_record_their_propensity(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    dsn = f"sqlite:{tmp_path / 'explore.sqlite3'}"
    srv = serve(store=dsn, explore_rate=0.3)
    with RouterClient(srv.target) as client:
        answers = [client.route(f"prompt number {i}", router="mf", threshold=0.5) for i in range(300)]
    flipped = [a for a in answers if (a.score >= a.threshold) != (a.tier == router_pb2.TIER_STRONG)]
    assert 30 <= len(flipped) <= 150  # ~30 % of 300
    assert all(a.propensity <= 0.5 for a in flipped)
    assert all(a.propensity >= 0.5 for a in answers if a not in flipped)
    _wait_recorded(dsn, [a.decision_id for a in answers])
    store = open_store(dsn)
    recorded = {a.decision_id: store.decision(a.decision_id) for a in answers}
    store.close()
    for a in answers:
        d = recorded[a.decision_id]
        assert d is not None and d.propensity == pytest.approx(a.propensity) and d.chosen_model == a.chosen_model


def test_a_big_feedback_call_yields_to_the_event_loop_between_slices(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """A Feedback call of 1,024 outcomes reads and answers them in slices of 128, letting the event loop run
    other calls between slices, instead of holding it for the whole call."""
    srv = serve(store=f"sqlite:{tmp_path / 'outcomes.sqlite3'}")
    with RouterClient(srv.target) as client:
        ids = [client.route(f"prompt {i}", router="mf", threshold=0.5).decision_id for i in range(1024)]
    request = router_pb2.FeedbackRequest(
        outcomes=[
            router_pb2.OutcomeReport(
                decision_id=d, paired=router_pb2.PairedOutcome(strong_quality=1.0, weak_quality=0.0)
            )
            for d in ids
        ]
    )

    async def feedback_with_a_neighbour() -> tuple[int, int]:
        ran = 0
        done = False
        writer = srv.server.servicer.store
        assert writer is not None
        submit = writer.submit
        at_submit: list[int] = []

        def noting_submit(outcomes: Any, **kw: Any) -> Any:  # the writer's own submit, noting the neighbour's runs
            at_submit.append(ran)
            return submit(outcomes, **kw)

        async def neighbour() -> None:  # another call's work: one step each time the loop comes round
            nonlocal ran
            while not done:
                ran += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(neighbour())
        await asyncio.sleep(0)
        before = ran
        writer.submit = noting_submit  # type: ignore[method-assign]
        try:
            response = await srv.server.servicer.feedback(request, reporter="")
        finally:
            writer.submit = submit  # type: ignore[method-assign]
            done = True
            await task
        assert response.stored == 2048  # paired: both models' outcomes
        return before, at_submit[0]

    before, at_submit = srv.call(feedback_with_a_neighbour())
    # the 1,024 outcomes were read in 8 slices, with the neighbour's steps between them, before the store
    # was asked to write them
    assert at_submit - before >= 7


def test_a_tenant_past_feedback_rate_is_refused_whole_with_its_retry_delay_and_others_go_on(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """One caller re-sending big Feedback calls took the core that other tenants' Route calls need (their
    p90 from 2-3 to 64-69 ms: benchmarks/results/feedback_flood). Past `feedback_rate` outcomes a second a
    tenant's call is refused whole for the cost of a check (RESOURCE_EXHAUSTED FEEDBACK_RATE, nothing
    stored, the delay until it fits as RetryInfo); another tenant's outcomes are stored meanwhile, and the
    refused call passes once its delay has gone by."""
    from lmroute.v1 import router_pb2_grpc

    dsn = f"sqlite:{tmp_path / 'o.sqlite3'}"
    srv = serve(store=dsn, feedback_rate=50.0, max_feedback_items=40)  # a bucket of 50 outcomes a tenant

    def reports(tag: str, n: int) -> router_pb2.FeedbackRequest:  # n outcomes, stored as 2n (one a model)
        return router_pb2.FeedbackRequest(
            outcomes=[
                router_pb2.OutcomeReport(
                    prompt=router_pb2.Prompt(text=f"{tag} {i}"), preference=router_pb2.PREFERENCE_STRONG
                )
                for i in range(n)
            ]
        )

    def as_tenant(name: str) -> list[tuple[str, str]]:
        return [("x-lmroute-tenant", name)]

    with grpc.insecure_channel(srv.target) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        assert stub.Feedback(reports("a1", 40), metadata=as_tenant("a"), timeout=10).stored == 80
        with pytest.raises(grpc.RpcError) as refused:
            stub.Feedback(reports("a2", 40), metadata=as_tenant("a"), timeout=10)
        t_refused = time.monotonic()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "tenant 'a' reports more than 50 outcomes a second (--feedback-rate)" in (refused.value.details() or "")
        assert error_reason(refused.value) == "FEEDBACK_RATE"
        retry_ms = round(1000 * (retry_delay_s(refused.value) or -1))
        assert 400 <= retry_ms <= 600  # 30 outcomes short at 50 a second: 0.6 s less the time gone by
        # another tenant's bucket is its own; no tenant is a tenant too
        assert stub.Feedback(reports("b1", 40), metadata=as_tenant("b"), timeout=10).stored == 80
        assert stub.Feedback(reports("n1", 40), timeout=10).stored == 80
        time.sleep(max(0.0, t_refused + retry_ms / 1000 - time.monotonic()) + 0.05)
        assert stub.Feedback(reports("a2", 40), metadata=as_tenant("a"), timeout=10).stored == 80
    store = open_store(dsn)
    try:
        assert store.counts()["outcomes"] == 4 * 80  # the refused call stored nothing; its resend all of it
    finally:
        store.close()


@pytest.mark.parametrize("transport", ["threads", "aio"])
def test_a_call_past_its_rate_is_refused_alike_on_both_transports_and_on_threads_before_the_loop(
    serve: Callable[..., ServerThread], tmp_path: Path, transport: str
) -> None:
    """On the thread transport a Feedback call past its tenant's rate is refused on the pool thread,
    without crossing to the event loop (a flood of them slowed other tenants' Route calls:
    benchmarks/results/feedback_flood); the caller sees what grpc.aio's loop answers: the token checked
    first, the same status, reason, message, retry delay and request id; the call counted in the metrics
    and as its tenant's refused outcomes, by a bound token or a tenant named in the metadata alike."""
    import re
    import urllib.request

    from lmroute.v1 import router_pb2_grpc

    tokens = tmp_path / "tokens"
    tokens.write_text("open-token-0123456789abcdef\nbound-token-0123456789abcdef a\n")
    dsn = f"sqlite:{tmp_path / 'o.sqlite3'}"
    srv = serve(
        store=dsn, feedback_rate=50.0, max_feedback_items=40, transport=transport, metrics_port=0,
        auth_tokens_file=str(tokens),
    )  # fmt: skip
    bound = [("authorization", "Bearer bound-token-0123456789abcdef")]
    named_a = [("authorization", "Bearer open-token-0123456789abcdef"), ("x-lmroute-tenant", "a")]
    request = router_pb2.FeedbackRequest(
        outcomes=[
            router_pb2.OutcomeReport(prompt=router_pb2.Prompt(text=f"q {i}"), preference=router_pb2.PREFERENCE_STRONG)
            for i in range(40)
        ]
    )
    refusals = []
    with grpc.insecure_channel(srv.target) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        assert stub.Feedback(request, metadata=bound, timeout=10).stored == 80
        for i, metadata in enumerate((bound, named_a)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Feedback(request, metadata=[*metadata, ("x-request-id", f"rate-{i}")], timeout=10)
            refusals.append(refused.value)
        with pytest.raises(grpc.RpcError) as anonymous:  # no token: refused for that first, on both
            stub.Feedback(request, metadata=[("x-lmroute-tenant", "a")], timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        other = [("authorization", "Bearer open-token-0123456789abcdef"), ("x-lmroute-tenant", "b")]
        assert stub.Feedback(request, metadata=other, timeout=10).stored == 80
    for i, err in enumerate(refusals):
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error_reason(err) == "FEEDBACK_RATE"
        assert (err.details() or "").startswith(
            "outcomes: tenant 'a' reports more than 50 outcomes a second (--feedback-rate); 40 more fit in "
        ), err.details()
        assert 300 <= round(1000 * (retry_delay_s(err) or -1)) <= 600
        assert dict(err.trailing_metadata() or ())["x-request-id"] == f"rate-{i}"
    early = srv.server.feedback_refusals
    if transport == "threads":
        assert early is not None and early.refused == 2  # neither crossed to the loop
    else:
        assert early is None
    port = srv.server.metrics_port

    def sample(name: str, **labels: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
            if m and m.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")) == labels:
                return float(m.group(3))
        return 0.0

    method = "/lmroute.v1.RouterService/Feedback"
    assert sample("lmroute_calls_total", method=method, code="RESOURCE_EXHAUSTED") == 2
    assert sample("lmroute_refusals_total", method=method, reason="FEEDBACK_RATE") == 2
    deadline = time.monotonic() + 5  # counted on the loop, handed over without waiting
    while sample("lmroute_tenant_feedback_total", tenant="a", result="refused") != 80:
        assert time.monotonic() < deadline, sample("lmroute_tenant_feedback_total", tenant="a", result="refused")
        time.sleep(0.05)
    store = open_store(dsn)
    try:
        assert store.counts()["outcomes"] == 2 * 80  # a's first call and b's: the refused ones stored nothing
    finally:
        store.close()


def test_a_feedback_call_the_store_cannot_take_says_why_and_stores_nothing(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """STORE_UNAVAILABLE said "outcome store write failed (OperationalError)" whatever failed; it names
    the kind of failure now (`failure_cause`), never the store's path. Nothing stored, nothing of the
    tenant's rate spent: the call sent again at once, the store back, is taken."""
    path = tmp_path / "o.sqlite3"
    srv = serve(store=f"sqlite:{path}", feedback_rate=0.1, max_feedback_items=10)  # a bucket of 10 outcomes
    admin = open_store(f"sqlite:{path}")
    admin._exec("ALTER TABLE outcomes RENAME TO outcomes_away")  # changed under the server
    report = [
        router_pb2.OutcomeReport(prompt=router_pb2.Prompt(text=f"judged {i}"), preference=router_pb2.PREFERENCE_STRONG)
        for i in range(10)
    ]
    try:
        with RouterClient(srv.target, retry=NO_RETRY) as client, pytest.raises(grpc.RpcError) as failed:
            client.feedback(report, timeout_s=10)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert failed.value.details() == (
            "outcome store write failed (a table is missing (changed under the server)); nothing was stored"
        )
        admin._exec("ALTER TABLE outcomes_away RENAME TO outcomes")
        with RouterClient(srv.target, retry=NO_RETRY) as client:
            assert client.feedback(report, timeout_s=10).stored == 20  # the writer reopened; nothing was kept
    finally:
        admin.close()


def test_a_call_the_store_has_no_room_for_does_not_count_against_its_tenants_rate(
    serve: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """The rate is taken before the store's room is asked for; a call refused there (STORE_BUSY) gives
    its outcomes back to its tenant's bucket, so a store that fell behind does not also spend the
    tenant's rate."""
    srv = serve(store=f"sqlite:{tmp_path / 'o.sqlite3'}", feedback_rate=50.0, max_feedback_items=40)
    writer = srv.server.store_writer
    assert writer is not None
    reports = [
        router_pb2.OutcomeReport(prompt=router_pb2.Prompt(text=f"p {i}"), preference=router_pb2.PREFERENCE_STRONG)
        for i in range(40)
    ]
    bound = writer.max_pending_outcomes
    writer.max_pending_outcomes = 10  # a store that has fallen behind: no room for 40 more
    with RouterClient(srv.target, retry=NO_RETRY) as client:
        with pytest.raises(grpc.RpcError) as busy:
            client.feedback(reports, timeout_s=10)
        assert busy.value.code() == grpc.StatusCode.UNAVAILABLE and "waiting for the store" in (
            busy.value.details() or ""
        )
        writer.max_pending_outcomes = bound
        assert client.feedback(reports, timeout_s=10).stored == 80  # the bucket still held its 50
