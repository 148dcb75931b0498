"""`lmroute-export to-judge`: which recent decisions of a real store to judge with both models, over a small
real bundle: the picks come from the latest unjudged decisions only (judged ones, by decision id or by
prompt, and a prompt judged on another decision, never), the same call picks the same, a caller filter
keeps to that tenant's calls, a decision stored without its text is picked from its stored embedding
and one with neither is skipped (on SQLite and the session's PostgreSQL); through the command line, the
picks judged and sent back leave nothing to pick in the same window; `lmroute-adapt --judge-budget`
writes each iteration's list from the decisions since the last."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lmroute.adapt.to_judge import decisions_to_judge, write_judge_list
from lmroute.bundle.loader import load_bundle
from lmroute.bundle.manifest import encoder_identity
from lmroute.bundle.testing import make_fake_encoder_dir, make_tiny_bundle, synthetic_prompts
from lmroute.export.cli import main
from lmroute.outcomes.records import Decision, Outcome, OutcomeKind, prompt_sha256
from lmroute.outcomes.store import OutcomeStore, open_store

N = 240


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("to_judge")
    encoder = make_fake_encoder_dir(root / "encoder", dim=16, seed=3)
    return make_tiny_bundle(root / "bundle", encoder_dir=encoder, seed=5)


def _decisions(bundle_dir: Path) -> list[Decision]:
    """N Score decisions, one a second, oldest first: the even ones for tenant `app`, the odd ones for no
    tenant; every tenth kept without its text (its embedding stored), and of those every third (i = 25
    mod 30) without its embedding either."""
    bundle = load_bundle(bundle_dir)
    pair = bundle.manifest.default_pair
    texts = synthetic_prompts(N, seed=4)
    texts[-1] += "\u2028line separator\x85next line"  # characters str.splitlines() splits at
    emb = bundle.prompt_batch(texts).embeddings
    assert emb is not None
    t0 = int(time.time() * 1000) - N * 1000
    out = []
    for i, text in enumerate(texts):
        private = i % 10 == 5
        out.append(
            Decision(
                decision_id=f"{i:032x}",
                time_ms=t0 + i * 1000,
                kind="score",
                bundle_version=bundle.version,
                scores={},
                strong_model=pair.strong,
                weak_model=pair.weak,
                prompt_sha256=prompt_sha256(text),
                n_tokens=8,
                encoder_id=encoder_identity(bundle.manifest),
                prompt_chars=len(text),
                prompt_text=None if private else text,
                embedding=None if i % 30 == 25 else np.asarray(emb[i], dtype=np.float32),
                caller="app" if i % 2 == 0 else "",
            )
        )
    return out


def _judge(store: OutcomeStore, decisions: list[Decision], pair: tuple[str, str]) -> None:
    """Both models' outcomes on `decisions`, by decision id."""
    now = int(time.time() * 1000)
    store.write(
        [],
        [
            Outcome(OutcomeKind.PAIRED, model, 1.0, decision_id=d.decision_id, source="judge", observed_ms=now)
            for d in decisions
            for model in pair
        ],
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    return str(request.getfixturevalue("fresh_postgres_db"))


def test_picks_come_from_the_latest_unjudged_decisions_and_repeat(bundle_dir: Path, dsn: str) -> None:
    store = open_store(dsn)
    decisions = _decisions(bundle_dir)
    # the newest decision is a prompt sent again (latest[0]'s, judged below by the first decision's id)
    decisions.append(replace(decisions[-60], decision_id="f" * 32, time_ms=decisions[-1].time_ms + 1000))
    store.write(decisions, [])
    pair = load_bundle(bundle_dir).manifest.default_pair
    latest = decisions[-61:-1]
    _judge(store, latest[::3], (pair.strong, pair.weak))  # 20 of the latest judged already
    # the same prompt judged by text, not by id: its decision counts as judged too
    by_text = latest[1].prompt_text
    store.write([], [Outcome(OutcomeKind.PAIRED, m, 0.0, prompt_text=by_text) for m in (pair.strong, pair.weak)])
    judged = {d.decision_id for d in latest[::3]} | {latest[1].decision_id, decisions[-1].decision_id}
    picks = decisions_to_judge(bundle_dir, store, 12, window=40)
    ids = [d.decision_id for d in picks.decisions]
    assert picks.window == 40
    assert picks.judged == 21 - sum(d.embedding is None and d.prompt_text is None for d in latest[::3])
    newest_unjudged = [d for d in reversed(decisions) if d.decision_id not in judged][:40]
    featureless = {d.decision_id for d in newest_unjudged if d.embedding is None and d.prompt_text is None}
    assert picks.skipped == len(featureless) >= 1
    assert len(set(ids)) == 12 and not set(ids) & (judged | featureless)
    assert set(ids) <= {d.decision_id for d in newest_unjudged}
    assert picks.newest_ms == max(d.time_ms for d in newest_unjudged)
    assert [d.time_ms for d in picks.decisions] == sorted((d.time_ms for d in picks.decisions), reverse=True)
    assert ids == [d.decision_id for d in decisions_to_judge(bundle_dir, store, 12, window=40).decisions]
    other = decisions_to_judge(bundle_dir, store, 12, window=40, seed=1)
    assert [d.decision_id for d in other.decisions] != ids
    # a decision kept without its text is picked from its stored embedding (window wide enough for all)
    everything = decisions_to_judge(bundle_dir, store, N - 22 - N // 30, window=N)
    assert any(d.prompt_text is None for d in everything.decisions)
    # one tenant's calls alone
    app = decisions_to_judge(bundle_dir, store, 10, window=40, callers={"app"})
    assert app.decisions and {int(d.decision_id, 16) % 2 for d in app.decisions} == {0}
    # the latest 100 all judged: the window reaches past them
    _judge(store, decisions[-101:], (pair.strong, pair.weak))
    past = decisions_to_judge(bundle_dir, store, 5, window=40)
    assert past.window == 40 and max(d.time_ms for d in past.decisions) < decisions[-101].time_ms
    with pytest.raises(ValueError, match=r"budget: must be >= 1 \(got 0\)"):
        decisions_to_judge(bundle_dir, store, 0)
    store.close()


def test_the_command_prints_picks_and_judging_them_leaves_none_in_that_window(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    store = open_store(dsn)
    decisions = _decisions(bundle_dir)
    store.write(decisions, [])
    args = ["to-judge", "--bundle", str(bundle_dir), "--store", dsn, "--budget", "8", "--window", "50"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    summary = json.loads(err.strip().splitlines()[-1])
    assert len(lines) == 8 == summary["picked"] and summary["window"] == 50
    by_id = {d.decision_id: d for d in decisions}
    for line in lines:
        d = by_id[line["decision_id"]]
        assert line["prompt"] == d.prompt_text and line["strong_model"] == d.strong_model
    assert summary["next_since_ms"] == decisions[-1].time_ms + 1
    assert main([*args[:-4], "--budget", "50", "--window", "50"]) == 0  # every decision of the window
    out, _ = capsys.readouterr()  # the newest one's prompt holds U+2028 and U+0085: still one line each
    assert decisions[-1].decision_id in {json.loads(line)["decision_id"] for line in out.splitlines()}
    pair = load_bundle(bundle_dir).manifest.default_pair
    _judge(store, [by_id[line["decision_id"]] for line in lines], (pair.strong, pair.weak))
    assert main([*args, "--since-ms", str(summary["next_since_ms"])]) == 0
    out, err = capsys.readouterr()
    assert out == "" and json.loads(err.strip().splitlines()[-1])["picked"] == 0
    assert main([*args[:-2], "--window", "50"]) == 0  # the same window again: other decisions than the judged
    out, _ = capsys.readouterr()
    assert not {json.loads(line)["decision_id"] for line in out.splitlines()} & {line["decision_id"] for line in lines}
    assert main([*args, "--callers", "not a name"]) == 2
    assert "callers" in capsys.readouterr().err
    store.close()


def test_the_adapt_loop_writes_each_iterations_list_from_the_decisions_since_the_last(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lmroute-adapt --judge-budget`: after its round, each iteration writes the decisions to judge among
    those the running server recorded since the previous list; none new, no file."""
    import shutil

    from lmroute.adapt.loop import main as adapt_main
    from lmroute.bundle.writer import restamp_bundle
    from lmroute.service.client import RouterClient
    from lmroute.service.config import ServiceConfig
    from lmroute.service.testing import ServerThread

    served = tmp_path / "served"
    shutil.copytree(bundle_dir, served)
    restamp_bundle(served, default_router="mf")
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    judge_dir = tmp_path / "judge"
    texts = synthetic_prompts(90, seed=8)
    cfg = ServiceConfig(bundle_path=served, port=0, store=dsn, log_level="warning", grace_s=0.0)
    argv = ["--store", dsn, "--bundles-dir", str(tmp_path / "bundles"), "--once", "--judge-budget", "10"]
    lists: list[set[str]] = []
    with ServerThread(cfg) as srv, RouterClient(srv.target) as client:
        for batch, stored in ((texts[:60], 60), (texts[60:], 90), ([], 90)):  # the last: nothing new
            ids = {r.decision_id for r in client.score(batch).results} if batch else set()
            store = open_store(dsn)
            t_end = time.monotonic() + 10
            while len(store.recent_decisions()) < stored:  # the server's writer commits in the background
                assert time.monotonic() < t_end, "the decisions were not stored"
                time.sleep(0.05)
            store.close()
            capsys.readouterr()
            assert adapt_main(["--server", srv.target, *argv, "--judge-dir", str(judge_dir)]) == 0
            out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
            assert out[-1]["to_judge"]["picked"] == (10 if batch else 0)
            assert (out[-1]["to_judge"]["file"] is None) == (not batch)
            files = sorted(judge_dir.glob("to_judge-*.jsonl"))
            assert len(files) == min(len(lists) + 1, 2)  # no file when nothing is picked
            if batch:
                picked = {json.loads(line)["decision_id"] for line in files[-1].read_text().splitlines()}
                assert len(picked) == 10 and picked <= ids  # among this iteration's decisions only
                lists.append(picked)
    assert len(lists) == 2 and not lists[0] & lists[1]
    store = open_store(dsn)
    newest = sorted(judge_dir.glob("to_judge-*.jsonl"))[-1]
    summary = write_judge_list(served, store, judge_dir, 5, keep=1)  # lists hold prompt texts: kept N at most
    assert summary["picked"] == 0 and summary["pruned"] == 1
    assert sorted(judge_dir.glob("to_judge-*.jsonl")) == [newest]
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(OSError, match=rf"judge lists' folder {a_file}/judge: Not a directory"):
        write_judge_list(served, store, a_file / "judge", 5)
    (judge_dir / "next_since_ms").write_text("yesterday\n")  # a state file that holds no time: named, not guessed
    with pytest.raises(ValueError, match=r"next_since_ms: not a time in Unix milliseconds \('yesterday'\)"):
        write_judge_list(served, store, judge_dir, 5)
    store.close()
    with pytest.raises(SystemExit) as exit_:  # a folder the lists cannot go to: a usage error before any round
        adapt_main(["--server", "127.0.0.1:1", *argv, "--judge-dir", str(a_file / "judge")])
    assert exit_.value.code == 2
    assert f"--judge-dir: {a_file}/judge cannot be made: Not a directory" in capsys.readouterr().err


def test_a_running_server_picks_the_same_decisions_to_judge_through_admin_service(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """AdminService.DecisionsToJudge on a real server (its store, its serving bundle): the same picks as the
    library's over the same store, judged prompts never among them, the next window empty until new
    decisions come; bad fields, and picks whose prompts would not fit one message, refused naming why;
    `lmroute-admin to-judge` prints the answer."""
    import re
    import shutil

    import grpc

    from lmroute.service.admin_cli import main as admin_main
    from lmroute.service.client import RouterClient, paired_outcome
    from lmroute.service.client_retry import error_reason
    from lmroute.service.config import ServiceConfig
    from lmroute.service.testing import ServerThread

    served = tmp_path / "served"
    shutil.copytree(bundle_dir, served)
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    texts = synthetic_prompts(60, seed=9)
    cfg = ServiceConfig(bundle_path=served, port=0, store=dsn, log_level="warning", grace_s=0.0, max_message_bytes=4096)
    with ServerThread(cfg) as srv, RouterClient(srv.target, max_message_bytes=4096) as client:
        ids = [r.decision_id for i in range(0, 60, 10) for r in client.score(texts[i : i + 10], ["mf"]).results]
        judged = client.feedback([paired_outcome(d, 1.0, 0.0) for d in ids[-20::4]])  # 5 of the latest 20
        assert judged.stored == 10  # two outcomes each, one per model
        store = open_store(dsn)
        t_end = time.monotonic() + 10
        while len(store.recent_decisions()) < 60:  # the server's writer commits in the background
            assert time.monotonic() < t_end, "the decisions were not stored"
            time.sleep(0.05)
        got = client.decisions_to_judge(8, window=20)
        want = decisions_to_judge(bundle_dir, store, 8, window=20)
        assert [d.decision_id for d in got.decisions] == [d.decision_id for d in want.decisions]
        assert len(got.decisions) == 8 and not {d.decision_id for d in got.decisions} & set(ids[-20::4])
        assert {d.decision_id for d in got.decisions} <= set(ids[-25:])  # the latest 20 unjudged
        assert (got.judged, got.window, got.skipped) == (5, 20, 0)
        assert got.next_since_ms == want.newest_ms + 1 and got.bundle_version == client.get_bundle().bundle_version
        by_id = dict(zip(ids, texts, strict=True))
        pair = load_bundle(bundle_dir).manifest.default_pair
        for d in got.decisions:
            assert d.prompt == by_id[d.decision_id] and (d.strong_model, d.weak_model) == (pair.strong, pair.weak)
        later = client.decisions_to_judge(8, since_ms=got.next_since_ms)
        assert (len(later.decisions), later.window, later.next_since_ms) == (0, 0, got.next_since_ms)
        assert len(client.decisions_to_judge(3, callers=["nobody"]).decisions) == 0

        def refused(**kw: object) -> tuple[grpc.StatusCode, str | None, str]:
            with pytest.raises(grpc.RpcError) as err:
                client.decisions_to_judge(**kw)  # type: ignore[arg-type]
            return err.value.code(), error_reason(err.value), str(err.value.details())

        assert refused(budget=0) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "OUT_OF_RANGE",
            "budget: must be in [1, 1000] (got 0)",
        )
        assert refused(budget=1, window=100_001)[2] == "window: must be in [1, 100000] (got 100001)"
        assert refused(budget=1, callers=["a b"])[1:] == (
            "INVALID_TENANT",
            "callers[0]: 'a b' is not 1-64 of [A-Za-z0-9._-]",
        )
        code, reason, message = refused(budget=55, window=55)  # 55 picks of ~125 bytes: more than 4,096 bytes
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RESPONSE_TOO_LARGE")
        fits = int(re.search(r"the 55 picks .* \(4096 bytes; the newest (\d+) of them would\)", message).group(1))  # type: ignore[union-attr]
        assert 10 < fits < 55 and len(client.decisions_to_judge(10, window=55).decisions) == 10
        capsys.readouterr()
        printed: list[str] = []
        argv = ["--server", srv.target, "to-judge", "--budget", "8", "--window", "20"]
        assert admin_main(argv, out=printed.append) == 0
        assert [d["decision_id"] for d in json.loads(printed[0])["decisions"]] == [d.decision_id for d in got.decisions]
        lines: list[str] = []  # --jsonl: the lines `lmroute-export to-judge` prints for the same picks
        assert admin_main([*argv, "--jsonl"], out=lines.append) == 0
        summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert (summary["picked"], summary["next_since_ms"]) == (8, got.next_since_ms)
        assert main(["to-judge", "--bundle", str(served), "--store", dsn, "--budget", "8", "--window", "20"]) == 0
        offline = capsys.readouterr()
        assert lines == offline.out.splitlines()
        offline_summary = json.loads(offline.err.strip().splitlines()[-1])  # the same keys for the same figures
        assert {k: offline_summary[k] for k in ("picked", "window", "judged", "next_since_ms")} == {
            k: summary[k] for k in ("picked", "window", "judged", "next_since_ms")
        }
        with pytest.raises(SystemExit):
            admin_main([*argv, "--seed", "-1"])
        assert "--seed: -1 is not in [0, 4294967295]" in capsys.readouterr().err
        store.close()


def test_a_token_bound_to_a_tenant_gets_its_own_decisions_judged_by_its_own_outcomes(
    bundle_dir: Path, tmp_path: Path
) -> None:
    """Through a real server with tokens: a tenant's token is answered from its tenant's decisions only, and
    only its tenant's outcomes count as judged, so another tenant judging the same prompt changes nothing
    of its picks (the operator's unbound token sees both); naming another tenant is refused."""
    import shutil

    import grpc

    from lmroute.service.client import RouterClient, paired_outcome
    from lmroute.service.config import ServiceConfig
    from lmroute.service.testing import ServerThread

    served = tmp_path / "served"
    shutil.copytree(bundle_dir, served)
    tokens = tmp_path / "tokens"
    op, app, web = ("op-token-0123456789abcdef", "app-token-0123456789abcdef", "web-token-0123456789abcdef")
    tokens.write_text(f"{op}\n{app} app\n{web} web\n")
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    texts = synthetic_prompts(30, seed=11)
    cfg = ServiceConfig(
        bundle_path=served, port=0, store=dsn, log_level="warning", grace_s=0.0, auth_tokens_file=str(tokens)
    )
    with (
        ServerThread(cfg) as srv,
        RouterClient(srv.target, token=op) as operator,
        RouterClient(srv.target, token=app) as app_client,
        RouterClient(srv.target, token=web) as web_client,
    ):
        app_ids = [r.decision_id for r in app_client.score(texts[:20], ["mf"]).results]
        web_ids = [r.decision_id for r in web_client.score([*texts[20:], texts[0], texts[1]], ["mf"]).results]
        assert web_client.feedback([paired_outcome(d, 1.0, 0.0) for d in web_ids[-2:]]).stored == 4  # web judges 0, 1
        assert app_client.feedback([paired_outcome(app_ids[5], 0.0, 1.0)]).stored == 2  # app judges 5
        store = open_store(dsn)
        t_end = time.monotonic() + 10
        while len(store.recent_decisions()) < 32:
            assert time.monotonic() < t_end, "the decisions were not stored"
            time.sleep(0.05)

        own = app_client.decisions_to_judge(30, window=100)
        unjudged = set(app_ids) - {app_ids[5]}  # texts 0 and 1 judged by web only: still app's to judge
        assert {d.decision_id for d in own.decisions} == unjudged
        assert (own.judged, own.window, own.skipped) == (1, 19, 0)
        assert [d.decision_id for d in app_client.decisions_to_judge(30, window=100, callers=["app"]).decisions] == [
            d.decision_id for d in own.decisions
        ]
        library = decisions_to_judge(bundle_dir, store, 30, window=100, callers=["app"], judged_of_callers=True)
        assert [d.decision_id for d in library.decisions] == [d.decision_id for d in own.decisions]

        seen = operator.decisions_to_judge(30, window=100, callers=["app"])  # every tenant's outcomes count
        assert {d.decision_id for d in seen.decisions} == unjudged - set(app_ids[:2])
        assert (seen.judged, seen.window) == (3, 17)
        with pytest.raises(grpc.RpcError) as err:
            app_client.decisions_to_judge(3, callers=["web"])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "bound to tenant app; it may ask for that tenant's decisions only (got 'web')" in str(
            err.value.details()
        )
        web_own = web_client.decisions_to_judge(30, window=100)
        assert {d.decision_id for d in web_own.decisions} == set(web_ids[:10])
        store.close()
