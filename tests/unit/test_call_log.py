"""The per-call log context (lmroute.service.logs): what each line of a call carries, and what it never
carries from another call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from lmroute.service.logs import CallLog, bind_call, merge_call_context

_log = structlog.get_logger("test.call_log")


@pytest.fixture(autouse=True)
def info_lines_pass() -> Iterator[None]:
    """Whatever level an earlier test configured, info lines reach the capture here; restored after."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    yield
    structlog.configure(**saved)


def test_lines_carry_the_call_context_and_what_the_call_adds() -> None:
    with structlog.testing.capture_logs([merge_call_context]) as logs:
        _log.info("outside")
        with CallLog(request_id="r1", method="/m/Route"):
            _log.info("inside")
            bind_call(decision_id="d1")
            _log.info("after bind", method="own")  # the line's own key wins
        _log.info("outside again")
        bind_call(decision_id="nowhere")  # outside a call: nothing to add to
        _log.info("still outside")
    by_event = {e["event"]: e for e in logs}
    assert "request_id" not in by_event["outside"]
    assert by_event["inside"]["request_id"] == "r1" and by_event["inside"]["method"] == "/m/Route"
    assert "decision_id" not in by_event["inside"]
    assert by_event["after bind"]["decision_id"] == "d1" and by_event["after bind"]["method"] == "own"
    for event in ("outside again", "still outside"):
        assert not {"request_id", "method", "decision_id"} & by_event[event].keys()


def test_nested_calls_restore_the_outer_context() -> None:
    with structlog.testing.capture_logs([merge_call_context]) as logs:
        with CallLog(request_id="outer"):
            with CallLog(request_id="inner"):
                bind_call(decision_id="inner's")
            _log.info("back in outer")
    [line] = logs
    assert line["request_id"] == "outer" and "decision_id" not in line


def test_concurrent_calls_do_not_see_each_others_context() -> None:
    async def call(name: str, gate: asyncio.Event, other_done: asyncio.Event) -> None:
        with CallLog(request_id=name):
            bind_call(decision_id=f"{name}-decision")
            gate.set()
            await other_done.wait()  # the other call binds while this one is suspended
            _log.info("answered", who=name)

            async def child() -> None:  # a task the call starts shares its context
                _log.info("child", who=name)

            await asyncio.create_task(child())

    async def main() -> list[dict[str, Any]]:
        a_ready, b_ready = asyncio.Event(), asyncio.Event()
        with structlog.testing.capture_logs([merge_call_context]) as logs:
            await asyncio.gather(call("a", a_ready, b_ready), call("b", b_ready, a_ready))
        return logs

    logs = asyncio.run(main())
    assert len(logs) == 4
    for line in logs:
        assert line["request_id"] == line["who"] and line["decision_id"] == f"{line['who']}-decision"
