"""The queue's timers: one per call for its deadline, one for the whole queue's timeouts. A prompt is
dropped before the scorer sees it once its call's deadline passes (released or still held) or once
it has been released longer than the queue timeout; the rest of the queue is unaffected."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from lmroute.service.config import BatchPolicy
from lmroute.service.errors import DeadlineExpired, QueueTimeout
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.scheduler import ItemResult, Scheduler


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(fn(), 20))


def make(scorer: FakeScorer, **kw: int) -> Scheduler[int]:
    base = dict(max_batch_size=4, max_wait_us=0, max_queue=256, queue_timeout_ms=5000, max_prompt_chars=1000)
    base.update(kw)
    sched: Scheduler[int] = Scheduler(scorer, BatchPolicy(**base))
    sched.start()
    return sched


async def occupy(scorer: FakeScorer, sched: Scheduler[int]) -> asyncio.Task[list[object]]:
    """Block the scorer inside a first call, so what comes next waits in the queue."""
    scorer.block()
    first = asyncio.create_task(sched.score(["occupies the scorer"]))
    assert await asyncio.to_thread(scorer.entered.wait, 10)
    return first  # type: ignore[return-value]


def test_a_deadline_drops_every_queued_prompt_of_its_call_held_ones_too() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        sched = make(scorer)  # quantum 1: one prompt of a call released at a time, the rest held
        first = await occupy(scorer, sched)
        prompts = [f"late {i}" for i in range(6)]
        late = await sched.score(prompts, timeout_s=0.05)
        other = asyncio.create_task(sched.score(["keeps its place"]))
        scorer.release()
        assert isinstance((await first)[0], ItemResult)
        assert all(isinstance(o, DeadlineExpired) for o in late)
        assert isinstance((await other)[0], ItemResult)
        assert sched.stats.dropped_deadline == 6
        assert not any(p in batch for batch in scorer.calls for p in prompts)
        assert sched.in_flight == 0
        await sched.close()

    run(body)


def test_queue_timeouts_fall_due_in_release_order_and_spare_the_rest() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        sched = make(scorer, queue_timeout_ms=30)
        first = await occupy(scorer, sched)
        calls = [asyncio.create_task(sched.score([f"call {c} prompt {i}" for i in range(3)])) for c in range(3)]
        outs = [await c for c in calls]  # every prompt times out: released one by one, each waits 30 ms
        for out in outs:
            assert all(isinstance(o, QueueTimeout) for o in out)
        assert sched.stats.dropped_queue_timeout == 9
        scorer.release()
        assert isinstance((await first)[0], ItemResult)
        [after] = await sched.score(["after the timeouts"])
        assert isinstance(after, ItemResult)
        assert scorer.calls == [["occupies the scorer"], ["after the timeouts"]]
        assert sched.in_flight == 0
        await sched.close()

    run(body)
