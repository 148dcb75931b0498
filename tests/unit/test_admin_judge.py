"""AdminService.DecisionsToJudge over a stand-in for the server's picks (the picks themselves, through a
real server and store: tests/integration/test_to_judge.py): one call's work at a time, even when a caller
leaves while its work runs, on a thread of the lowest CPU priority; a token bound to a tenant asks as that
tenant, one call at a time; an operator's call goes before the tenants' waiting ones."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any, cast

import pytest

from lmroute.adapt.to_judge import JudgePicks
from lmroute.service.admin import AdminServicer
from lmroute.service.auth import AUTH_TENANT
from lmroute.service.errors import JudgeListBusy, PermissionDenied
from lmroute.v1 import admin_pb2


def test_a_call_whose_caller_left_still_holds_the_next_until_its_work_ends() -> None:
    started: list[int] = []
    nice: list[int] = []
    release = threading.Event()

    def judge(
        budget: int, window: int, since_ms: int, callers: object, tenant_view: bool, seed: int
    ) -> tuple[JudgePicks, str]:
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


def test_a_tenant_bound_token_asks_as_its_tenant_one_call_at_a_time() -> None:
    """A token bound to a tenant gets its tenant's own view (callers = that tenant, judged = its outcomes);
    naming another tenant is refused, and so is a second call of the same tenant while one is answered or
    waits, while another tenant's call still takes its turn."""
    asked: list[tuple[object, bool]] = []
    release = threading.Event()

    def judge(
        budget: int, window: int, since_ms: int, callers: object, tenant_view: bool, seed: int
    ) -> tuple[JudgePicks, str]:
        asked.append((callers, tenant_view))
        release.wait(10)
        return JudgePicks([], 0, 0, 0, None), "v1"

    async def as_tenant(admin: AdminServicer, tenant: str | None, **kw: Any) -> admin_pb2.DecisionsToJudgeResponse:
        token = AUTH_TENANT.set(tenant)  # what the auth interceptor sets for a bound token
        try:
            return await admin.DecisionsToJudge(admin_pb2.DecisionsToJudgeRequest(budget=1, **kw), cast(Any, None))
        finally:
            AUTH_TENANT.reset(token)

    async def body() -> None:
        admin = AdminServicer()
        admin.swapper = cast(Any, object())
        admin.judge = judge
        with pytest.raises(PermissionDenied, match=r"bound to tenant app; .* \(got 'ops'\)"):
            await as_tenant(admin, "app", callers=["app", "ops"])
        first = asyncio.ensure_future(as_tenant(admin, "app"))
        while not asked:
            await asyncio.sleep(0.01)
        with pytest.raises(JudgeListBusy, match=r"tenant app has a DecisionsToJudge call"):
            await as_tenant(admin, "app", callers=["app"])
        other = asyncio.ensure_future(as_tenant(admin, "web"))  # waits its turn behind app's
        await asyncio.sleep(0.05)
        operator = asyncio.ensure_future(as_tenant(admin, None, callers=["app", "web"]))
        await asyncio.sleep(0.1)
        release.set()
        await asyncio.gather(first, other, operator)
        # the operator's call, though it came after web's, went first of the waiting ones
        assert asked == [(["app"], True), (["app", "web"], False), (["web"], True)]
        await as_tenant(admin, "app")  # its earlier call is done: taken again
        admin.close()

    asyncio.run(asyncio.wait_for(body(), 20))


def test_turns_skip_callers_that_left_and_pass_on_a_turn_given_as_its_caller_left() -> None:
    from lmroute.service.admin import _Turns

    async def body() -> None:
        turns, order = _Turns(), []
        release = {name: asyncio.Event() for name in "abcd"}

        async def take(name: str, operator: bool = False) -> None:
            async with turns.turn(operator=operator):
                order.append(name)
                await release[name].wait()

        a = asyncio.ensure_future(take("a"))
        await asyncio.sleep(0)
        b, c = asyncio.ensure_future(take("b")), asyncio.ensure_future(take("c"))
        await asyncio.sleep(0)
        b.cancel()  # left while waiting: skipped
        release["a"].set()
        await asyncio.sleep(0.01)
        assert order == ["a", "c"]
        d = asyncio.ensure_future(take("d"))
        await asyncio.sleep(0)
        release["c"].set()
        await asyncio.sleep(0)  # c's turn ends and is given to d...
        d.cancel()  # ...which leaves before it runs: the turn is passed on, free again
        await asyncio.gather(a, c, d, b, return_exceptions=True)
        async with asyncio.timeout(1):
            async with turns.turn(operator=False):
                order.append("e")
        assert order == ["a", "c", "e"]

    asyncio.run(asyncio.wait_for(body(), 10))
