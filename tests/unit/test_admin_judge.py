"""AdminService.DecisionsToJudge over a stand-in for the server's picks (the picks themselves, through a
real server and store: tests/integration/test_to_judge.py): one call's work at a time, even when a caller
leaves while its work runs, on a thread of the lowest CPU priority."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any, cast

from lmroute.adapt.to_judge import JudgePicks
from lmroute.service.admin import AdminServicer
from lmroute.v1 import admin_pb2


def test_a_call_whose_caller_left_still_holds_the_next_until_its_work_ends() -> None:
    started: list[int] = []
    nice: list[int] = []
    release = threading.Event()

    def judge(budget: int, window: int, since_ms: int, callers: object, seed: int) -> tuple[JudgePicks, str]:
        started.append(budget)
        nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        release.wait(10)
        return JudgePicks([], 0, 0, 0, None), "v1"

    async def body() -> None:
        admin = AdminServicer()
        admin.swapper = cast(Any, object())  # attached: past the NOT_READY check
        admin.judge = judge
        ask = admin_pb2.DecisionsToJudgeRequest
        first = asyncio.ensure_future(admin.DecisionsToJudge(ask(budget=1), cast(Any, None)))
        while not started:  # its work runs on a worker thread
            await asyncio.sleep(0.01)
        first.cancel()  # the caller leaves (a deadline, a cancel)
        second = asyncio.ensure_future(admin.DecisionsToJudge(ask(budget=2, since_ms=7), cast(Any, None)))
        await asyncio.sleep(0.2)
        assert started == [1] and not second.done()  # waits for the first one's thread, not only its call
        release.set()
        answer = await second
        assert started == [1, 2] and (answer.bundle_version, answer.next_since_ms) == ("v1", 7)
        assert first.cancelled()
        if sys.platform.startswith("linux"):  # its thread's own nice value: serving keeps the CPU
            assert nice == [19, 19]
        admin.close()

    asyncio.run(asyncio.wait_for(body(), 20))
