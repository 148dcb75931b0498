"""`lmroute-admin` against a real server on 127.0.0.1 (FakeScorer, tokens configured): each command's JSON
answer, the token read from the variable --token-env names, a refused call's status on stderr with exit
1, bad arguments exit 2; and the installed console script itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lmroute.service.admin_cli import main
from lmroute.service.client import RouterClient
from lmroute.service.testing import ServerThread

OPERATOR = "operator-token-0123456789abcdef"
TEAM = "team-token-0123456789abcdef"


@pytest.fixture()
def server(fake_servers: Callable[..., ServerThread], tmp_path: Path) -> ServerThread:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{OPERATOR}\n{TEAM} team\n")
    return fake_servers(auth_tokens_file=str(tokens), share_targets="default=0.3,team=0.1")


def run(srv: ServerThread, *argv: str) -> tuple[int, dict[str, object]]:
    printed: list[str] = []
    code = main(["--server", srv.target, "--token-env", "ADMIN_TOKEN", *argv], out=printed.append)
    return code, json.loads(printed[0]) if printed else {}


def test_each_command_answers_in_json_with_the_operators_token(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", OPERATOR)
    code, bundle = run(server, "bundle")
    assert code == 0 and bundle["bundle_version"] == "fake-1" and bundle["routers"] == ["random", "mf"]
    assert isinstance(bundle["loaded_unix_ms"], int) and bundle["loaded_unix_ms"] > 0  # int64 as a number
    with RouterClient(server.target, token=OPERATOR, tenant="team") as team:
        team.route("hello", router="mf")  # a decision of team's controller
    code, targets = run(server, "targets")
    assert code == 0
    [controller] = targets["share"]["controllers"]  # type: ignore[index]
    assert controller["tenant"] == "team" and controller["decisions"] == 1
    share = targets["share"]
    assert isinstance(share, dict) and share["targets"] == [
        {"tenant": "default", "strong_share": 0.3},
        {"tenant": "team", "strong_share": 0.1},
    ]
    code, held = run(server, "set-targets", "--share", "team=0.4", "--remove-share", "default", "--spend", "team=2.5")
    assert code == 0 and held == {
        "share_targets": [{"tenant": "team", "strong_share": 0.4}],
        "spend_targets": [{"tenant": "team", "spend_per_1k_usd": 2.5}],
    }
    code, swapped = run(server, "reload", "/srv/next")  # the fake scorer loads any path
    assert code == 0 and swapped["path"] == "/srv/next"
    serving = str(swapped["bundle_version"])
    code, swapped = run(server, "reload", "/srv/again", "--if-version", serving)
    assert code == 0 and swapped["previous_version"] == serving and swapped["path"] == "/srv/again"
    assert run(server, "reload", "/srv/late", "--if-version", "fake-0") == (1, {})  # made from another version
    assert f"ABORTED (VERSION_MOVED): if_version: {serving} serves, not fake-0" in capsys.readouterr().err


def test_refusals_exit_1_with_their_status_and_bad_arguments_exit_2(
    server: ServerThread, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", TEAM)  # bound to a tenant: may not administer
    assert run(server, "targets") == (1, {})
    denied = "PERMISSION_DENIED (PERMISSION_DENIED): AdminService: the token is bound to a tenant"
    assert denied in capsys.readouterr().err
    monkeypatch.delenv("ADMIN_TOKEN")
    with pytest.raises(SystemExit) as exit_:  # a variable named for the token must hold one
        run(server, "bundle")
    assert (
        exit_.value.code == 2 and "--token-env: environment variable ADMIN_TOKEN is not set" in capsys.readouterr().err
    )
    monkeypatch.delenv("LMROUTE_TOKEN", raising=False)
    assert main(["--server", server.target, "bundle"], out=print) == 1  # no token at all: the server refuses
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    monkeypatch.setenv("ADMIN_TOKEN", OPERATOR)
    assert run(server, "set-targets", "--remove-share", "nobody") == (1, {})
    assert "NOT_FOUND (NO_TARGET): changes[0]: tenant nobody has no strong-share target" in capsys.readouterr().err
    for argv in (["set-targets", "--share", "team"], ["set-targets"], ["frobnicate"], ["to-judge", "--budget", "0"]):
        with pytest.raises(SystemExit) as exit_:
            run(server, *argv)
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "expected TENANT=VALUE (got 'team')" in err and "--budget: 0 is not in [1, " in err
    for argv, said in (  # refused before a channel is made (a certificate without its key aborted the process)
        (["--ca", "ca.pem", "--cert", "c.pem", "bundle"], "--cert and --key go together, with --ca (mTLS)"),
        (["--cert", "c.pem", "--key", "k.pem", "bundle"], "--cert and --key go together, with --ca (mTLS)"),
        (["--timeout-s", "0", "bundle"], "timeout_s: expected seconds in (0, 1e+09]"),
        (["--timeout-s", "1e10", "bundle"], "timeout_s: expected seconds in (0, 1e+09]"),  # gRPC's deadline overflows
        # a token typed where its variable's name goes, or an abbreviated --token: named, never echoed
        (["--token-env", "sk-live-SECRET-0123", "bundle"], "--token-env: takes the name of an environment variable"),
        (["--token", "HOME", "bundle"], "invalid choice: 'HOME'"),  # not taken as --token-env HOME
        (["set-targets", "--share", "t=0.5", "--remove-share", "t"], "tenant 't' is named twice among --share"),
        (["set-targets", "--spend", "t=1", "--spend", "t=9"], "tenant 't' is named twice among --spend"),
        (["--ca", "/nonexistent/ca.pem", "bundle"], "--ca: /nonexistent/ca.pem: cannot be read (No such file or"),
        (["--ca", "/", "bundle"], "--ca: /: cannot be read (Is a directory)"),
        # command-line bytes that are not UTF-8 (Python reads them as lone surrogates): a traceback before
        (["set-targets", "--share", os.fsdecode(b"t\xff=0.3")], "set-targets --share: holds bytes that are not UTF-8"),
        (["to-judge", "--budget", "2", "--callers", os.fsdecode(b"\xff")], "to-judge --callers: holds bytes that"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["--server", server.target, *argv], out=print)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and said in err and "SECRET" not in err, err


@pytest.fixture()
def store_server(fake_servers: Callable[..., ServerThread], tmp_path: Path) -> ServerThread:
    """A fake server with an outcome store (started before the test captures its output: see capsys)."""
    return fake_servers(store=f"sqlite:{tmp_path / 'outcomes.sqlite3'}")


def test_decisions_to_judge_needs_a_store_and_a_bundles_encoder(
    server: ServerThread,
    store_server: ServerThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without an outcome store, and over a scorer that is not a bundle's, DecisionsToJudge is refused
    (FAILED_PRECONDITION) naming why; the picks themselves: tests/integration/test_to_judge.py."""
    monkeypatch.setenv("ADMIN_TOKEN", OPERATOR)
    assert run(server, "to-judge", "--budget", "5") == (1, {})
    assert "FAILED_PRECONDITION (NO_OUTCOME_STORE): no outcome store" in capsys.readouterr().err
    assert run(store_server, "to-judge", "--budget", "5") == (1, {})
    assert "FAILED_PRECONDITION (NO_BUNDLE_ENCODER): the serving scorer is not a bundle's" in capsys.readouterr().err


def test_maps_of_answers_are_printed_with_64_bit_integers_as_numbers() -> None:
    """GetBundle's tenant router maps (map<string, string>): printed as objects (they crashed the printer,
    which walked a map as a list of messages)."""
    from lmroute.service.admin_cli import _as_dict
    from lmroute.v1 import admin_pb2

    answer = admin_pb2.GetBundleResponse(
        bundle_version="v", loaded_unix_ms=1_700_000_000_000, tenant_routers={"app": "mf", "web": "sw_ranking"}
    )
    answer.tenant_quality_routers["app"] = "quality"
    got = _as_dict(answer)
    assert got["tenant_routers"] == {"app": "mf", "web": "sw_ranking"}
    assert got["tenant_quality_routers"] == {"app": "quality"}
    assert got["loaded_unix_ms"] == 1_700_000_000_000


def test_the_installed_command_runs(server: ServerThread) -> None:
    script = Path(sys.executable).with_name("lmroute-admin")
    done = subprocess.run(
        [str(script), "--server", server.target, "bundle"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"LMROUTE_TOKEN": OPERATOR, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["bundle_version"] == "fake-1"


def test_a_reader_that_closes_early_gets_no_traceback(server: ServerThread) -> None:
    """`lmroute-admin targets | head -1`: the answer's reader is gone before it is written."""
    script = Path(sys.executable).with_name("lmroute-admin")
    proc = subprocess.Popen(
        [str(script), "--server", server.target, "targets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"LMROUTE_TOKEN": OPERATOR, "PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the process has imported grpc and asked the server
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err, err


def test_an_empty_target_variable_is_unset_as_an_empty_token_is(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmroute.service.admin_cli import _parser

    monkeypatch.setenv("LMROUTE_TARGET", "")
    assert _parser().parse_args(["bundle"]).server == "127.0.0.1:50051"  # it was '' and exit 2
    monkeypatch.setenv("LMROUTE_TARGET", "10.0.0.7:50051")
    assert _parser().parse_args(["bundle"]).server == "10.0.0.7:50051"
