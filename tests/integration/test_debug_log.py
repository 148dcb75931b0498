"""`--log-level debug` through a real gRPC server on 127.0.0.1: a call's access line also says what was
decided (a Route's router, score, threshold and chosen model; a Score call's prompt counts; a Feedback
call's outcome results) and each scored batch writes a line; at info the access line carries none of it;
the prompt text is never logged."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from lmroute.service.client import RouterClient
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread
from lmroute.v1 import router_pb2

SECRET = "the prompt text 7f3a9c"


def _lines(err: str) -> list[dict[str, Any]]:
    out = []
    for line in err.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _calls(
    fake_servers: Callable[..., ServerThread], tmp_path: Path, capfd: pytest.CaptureFixture[str], level: str
) -> list[dict[str, Any]]:
    """Route, Score (one prompt blank) and Feedback (stored, duplicate) at `level`; the JSON log lines."""
    capfd.readouterr()
    configure_logging(level)
    try:
        srv = fake_servers(quiet=False, store=f"sqlite:{tmp_path / level}.sqlite3")
        with RouterClient(srv.target, tenant="team") as client:
            d = client.route(SECRET, router="mf", threshold=0.5)
            client.score([SECRET, " "], routers=["mf"])
            report = router_pb2.OutcomeReport(decision_id=d.decision_id, single=router_pb2.SingleOutcome(quality=1))
            client.feedback([report, report])
        srv.stop()
    finally:
        configure_logging("warning")
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    err = capfd.readouterr().err
    assert SECRET not in err
    return _lines(err)


def _access(lines: list[dict[str, Any]], method: str) -> dict[str, Any]:
    [line] = [x for x in lines if x.get("event") == "rpc" and x.get("method", "").endswith("/" + method)]
    return line


def test_debug_access_lines_say_what_was_decided(
    fake_servers: Callable[..., ServerThread], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    lines = _calls(fake_servers, tmp_path, capfd, "debug")
    route = _access(lines, "Route")
    assert route["router"] == "mf" and route["threshold"] == 0.5 and route["policy"] == "threshold"
    assert 0.0 <= route["score"] <= 1.0 and route["n_tokens"] > 0 and route["truncated"] is False
    assert route["chosen_model"] == ("fake-strong" if route["score"] >= 0.5 else "fake-weak")
    assert route["propensity"] == 1.0 and route["decision_id"]
    score = _access(lines, "Score")
    assert (score["prompts"], score["prompts_failed"], score["routers"]) == (2, 1, ["mf"])
    feedback = _access(lines, "Feedback")
    assert (feedback["outcomes"], feedback["stored"], feedback["results"]) == (2, 1, {"stored": 1, "duplicate": 1})
    batches = [x for x in lines if x.get("event") == "batch_scored"]
    assert sum(b["prompts"] for b in batches) >= 2  # the Route's prompt and the Score's scorable one
    assert all(b["ms"] >= 0 and isinstance(b["inline"], bool) for b in batches)


def test_info_access_lines_carry_no_decision_details(
    fake_servers: Callable[..., ServerThread], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    lines = _calls(fake_servers, tmp_path, capfd, "info")
    route = _access(lines, "Route")
    assert route["decision_id"] and "score" not in route and "chosen_model" not in route
    assert "prompts" not in _access(lines, "Score") and "results" not in _access(lines, "Feedback")
    # the caller's tenant on every call that names one, at info too (it was on a debug Route's line alone)
    assert [_access(lines, m).get("tenant") for m in ("Route", "Score", "Feedback")] == ["team"] * 3
    assert not [x for x in lines if x.get("event") == "batch_scored"]
