"""Admission from the measured rate and fair sharing of the scorer between calls (FakeScorer).

The refusal rule is tested as a pure function; the scheduler tests gate concurrency with
FakeScorer.block/release and set the measured rate where a test needs a known one."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from lmroute.service.admission import Load, ServiceRate, batch_budget, refusal
from lmroute.service.batch_queue import BatchQueue, Item
from lmroute.service.config import BatchPolicy
from lmroute.service.errors import Code, DeadlineExpired, QueueFull, QueueTimeout, status_of
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.scheduler import ItemResult, Scheduler
from lmroute.service.scorer_api import Tokenized

POLICY = BatchPolicy(max_batch_size=4, max_queue=100, admit_wait_ms=500, queue_timeout_ms=1000, max_batch_ms=100)


def measured(seconds_per_token: float = 0.01, tokens_per_prompt: int = 10) -> ServiceRate:
    """A ServiceRate that has seen one batch: 0.01 s a token x 10 tokens = 0.1 s a prompt by default."""
    rate = ServiceRate()
    rate.observe(1, tokens_per_prompt, seconds_per_token * tokens_per_prompt)
    return rate


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 30))


async def until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.001)


async def wait_entered(scorer: FakeScorer) -> None:
    assert await asyncio.to_thread(scorer.entered.wait, 10), "the scorer was never called"


def make(scorer: FakeScorer, **kw: int) -> Scheduler[int]:
    base = dict(max_batch_size=4, max_wait_us=0, max_batch_tokens=100_000, max_queue=256, queue_timeout_ms=5000)
    base.update(kw)
    sched: Scheduler[int] = Scheduler(scorer, BatchPolicy(**base))
    sched.start()
    return sched


# -- the rule ----------------------------------------------------------------------------------------


def test_before_any_batch_is_measured_only_the_memory_bound_applies() -> None:
    unmeasured = ServiceRate()
    assert refusal(100, 0.001, Load(0), POLICY, unmeasured) is None
    assert refusal(1, 0.001, Load(60, 400, (10,) * 56), POLICY, unmeasured) is None
    full = refusal(3, None, Load(98), POLICY, unmeasured)
    assert isinstance(full, QueueFull) and full.reason == "QUEUE_FULL"
    assert full.message == "queue full: 98 of 100 prompts admitted, 3 more asked"
    assert status_of(full).retry_after_ms == 50  # not measured: the table's hint


def test_memory_bound_offers_the_drain_time_as_retry_delay() -> None:
    full = refusal(3, None, Load(98), POLICY, measured())
    assert isinstance(full, QueueFull)
    assert status_of(full).retry_after_ms == 100  # 1 prompt over at 0.1 s a prompt


def test_an_idle_server_admits_a_call_of_any_allowed_size() -> None:
    assert refusal(100, None, Load(0), POLICY, measured()) is None


def test_overload_is_refused_at_once_with_a_retry_delay() -> None:
    rate = measured()  # 0.01 s a token, 10 tokens a prompt; admitting up to 0.5 s of work ahead
    # the running batch (20 tokens) + one visit of each queued call (20 tokens) + the new prompt: 0.5 s
    assert refusal(1, None, Load(7, 20, (5, 5, 10)), POLICY, rate) is None
    over = refusal(1, None, Load(8, 20, (5, 5, 10, 30)), POLICY, rate)
    assert isinstance(over, QueueFull) and over.reason == "OVERLOADED"
    assert over.message == (
        "overloaded: about 700 ms of work ahead (the running batch and 4 visits of queued calls); "
        "admitting up to 500 ms"
    )
    info = status_of(over)
    assert info.code is Code.RESOURCE_EXHAUSTED and info.retry_after_ms == 300
    # a long queued call counts one visit, however long it is
    assert refusal(1, None, Load(64, 20, (10,)), POLICY, rate) is None
    # the new call's own first visit counts: 4 prompts a visit = 0.4 s
    assert isinstance(refusal(60, None, Load(5, 20, (10,), per_call=4), POLICY, rate), QueueFull)
    # cost, not count: one running batch of long prompts is enough to refuse
    assert isinstance(refusal(1, None, Load(3, 450), POLICY, rate), QueueFull)


def test_a_new_call_waits_for_its_tenants_queued_calls_and_the_visits_other_tenants_get_meanwhile() -> None:
    q: BatchQueue[int] = BatchQueue()
    q.append(_items(["a0", "a0 more"]), quantum=1, tenant="A")  # 3 work tokens a prompt, 1 prompt a visit
    q.append(_items(["a1"]), quantum=1, tenant="A")
    q.append(_items(["a2"]), quantum=1, tenant="A")
    q.append(_items(["b0"], n_tokens=5), quantum=1, tenant="B")
    q.append(_items(["c0", "c1", "c2", "c3"]), quantum=1, tenant="C")
    # a tenant's visit of 6 work tokens: A's 9 queued reach the new call in A's 2nd visit, so B and C
    # (after A in the round) get one visit each first, counted whole: they are taken to stay queued
    assert q.visits_ahead("A", 6.0) == (3.0, 3.0, 3.0, 6.0, 6.0)
    # B's 5 queued are reached in its 1st visit: one of A (before B) first, none of C (after B)
    assert q.visits_ahead("B", 6.0) == (5.0, 6.0)
    # C's: A and B come before C
    assert q.visits_ahead("C", 6.0) == (3.0, 6.0, 6.0)
    # a tenant not queued comes last: one visit of each
    assert q.visits_ahead("D", 6.0) == (6.0, 6.0, 6.0)
    # before the average prompt is measured: one visit of every queued call, whoever's
    assert q.visits_ahead("A") == q.visits_ahead("D") == (3.0, 3.0, 3.0, 5.0, 3.0)
    # one tenant: one visit of every queued call, however long (the round over the calls)
    one: BatchQueue[int] = BatchQueue()
    one.append(_items(["x0", "x1", "x2"]), quantum=2)
    one.append(_items(["y0"]), quantum=2)
    assert one.visits_ahead("") == one.visits_ahead("", 1.0) == (6.0, 3.0)
    assert BatchQueue[int]().visits_ahead("") == ()


def test_a_tenant_seen_lately_is_charged_to_a_backlogged_tenant_as_if_it_came_back() -> None:
    now = [100.0]
    q: BatchQueue[int] = BatchQueue(clock=lambda: now[0])
    q.append(_items(["a0"]), quantum=1, tenant="A")
    q.append(_items(["a1"]), quantum=1, tenant="A")
    b = _items(["b0"])
    q.append(b, quantum=1, tenant="B")
    b[0].future.cancel()
    q.discard(b[0])  # B has nothing queued now: it left the round at t = 100
    # A's new call waits for A's two queued calls (6 work tokens: 2 visits of 3); B, seen 0.5 s ago, would
    # come back behind A and get as many visits meanwhile
    now[0] = 100.5
    assert q.visits_ahead("A", 3.0, recent_s=1.0) == (3.0, 3.0, 3.0, 3.0)
    # a tenant with nothing queued of its own is charged nothing for it
    assert q.visits_ahead("C", 3.0, recent_s=1.0) == (3.0,)
    # once B is older than recent_s it is forgotten
    now[0] = 101.5
    assert q.visits_ahead("A", 3.0, recent_s=1.0) == (3.0, 3.0)
    # and a tenant that returns is charged as a queued one again
    q.append(_items(["b1"]), quantum=1, tenant="B")
    assert q.visits_ahead("A", 3.0, recent_s=1.0) == (3.0, 3.0, 3.0, 3.0)


def test_batches_take_tenants_in_turn_and_each_tenants_calls_in_turn() -> None:
    q: BatchQueue[int] = BatchQueue()
    for name in ("a0", "a1", "a2"):
        q.append(_items([f"{name}.0", f"{name}.1"]), quantum=1, tenant="A")
    q.append(_items(["b0.0"]), quantum=1, tenant="B")
    q.append(_items(["c0.0", "c0.1", "c0.2"]), quantum=1, tenant="C")
    assert q.line_lengths() == (2, 2, 2, 1, 3)
    assert [it.text for it in q.next_batch(6, 1000)[0]] == ["a0.0", "b0.0", "c0.0", "a1.0", "c0.1", "a2.0"]
    assert [it.text for it in q.next_batch(6, 1000)[0]] == ["c0.2", "a0.1", "a1.1", "a2.1"]
    assert len(q) == 0
    # a tenant that gave nothing because the batch was full keeps its turn
    q.append(_items(["a"], n_tokens=8), quantum=1, tenant="A")
    q.append(_items(["b"], n_tokens=3), quantum=1, tenant="B")
    q.append(_items(["c"], n_tokens=3), quantum=1, tenant="C")
    assert [it.text for it in q.next_batch(6, 10)[0]] == ["a"]  # b would pass 10 padded tokens
    assert [it.text for it in q.next_batch(6, 10)[0]] == ["b", "c"]


def test_a_tenants_visit_takes_the_same_work_whether_it_sends_one_big_call_or_many_small_ones() -> None:
    def queue() -> BatchQueue[int]:
        q: BatchQueue[int] = BatchQueue()
        q.append(_items([f"b{i}" for i in range(8)]), quantum=4, tenant="big")  # 3 work tokens a prompt
        for i in range(8):
            q.append(_items([f"s{i}"]), quantum=4, tenant="small")
        return q

    # visits of 6 work tokens: two prompts of each tenant in turn
    by_work = [it.text for it in queue().next_batch(16, 10_000, tenant_quantum=6.0)[0]]
    assert by_work == ["b0", "b1", "s0", "s1", "b2", "b3", "s2", "s3", "b4", "b5", "s4", "s5", "b6", "b7", "s6", "s7"]
    # before the average prompt is measured, a tenant's visit is one call's: 4 of the big call, then 1
    by_call = [it.text for it in queue().next_batch(16, 10_000)[0]]
    assert by_call[:7] == ["b0", "b1", "b2", "b3", "s0", "b4", "b5"]
    # a prompt bigger than the visit still goes, alone in it
    q: BatchQueue[int] = BatchQueue()
    q.append(_items(["long0", "long1"], n_tokens=20), quantum=4, tenant="L")
    q.append(_items(["short0", "short1"]), quantum=4, tenant="S")
    assert [it.text for it in q.next_batch(8, 10_000, tenant_quantum=6.0)[0]] == ["long0", "short0", "short1", "long1"]


def test_a_tenant_whose_prompts_outgrow_its_visit_pays_them_off_in_later_visits() -> None:
    """A visit takes at least one prompt, so a prompt of 20 work tokens goes in a visit of 6; the tenant
    then skips visits until the 14 it took beyond its visit are paid off, and over many rounds both
    tenants get about the same work (without the carry: 20 against 6 a round)."""
    q: BatchQueue[int] = BatchQueue()
    q.append(_items(["long0", "long1"], n_tokens=20), quantum=4, tenant="L")
    q.append(_items([f"s{i}" for i in range(6)]), quantum=4, tenant="S")
    order = [it.text for it in q.next_batch(10, 10_000, tenant_quantum=6.0)[0]]
    # L's debt: -14, then -8, -2 at the visits it skips; alone after s5, it takes long1 at once
    assert order == ["long0", "s0", "s1", "s2", "s3", "s4", "s5", "long1"]
    q = BatchQueue()
    q.append(_items([f"l{i}" for i in range(40)], n_tokens=20), quantum=4, tenant="L")
    q.append(_items([f"s{i}" for i in range(400)]), quantum=4, tenant="S")
    work = {"l": 0, "s": 0}
    for _ in range(20):
        for it in q.next_batch(8, 10_000, tenant_quantum=6.0)[0]:
            work[it.text[0]] += it.n_tokens or 0
    assert 0.9 <= work["l"] / work["s"] <= 1.1, work
    # a tenant that leaves the round forgets its debt: when it comes back, its first visit is whole
    q = BatchQueue()
    q.append(_items(["big"], n_tokens=20), quantum=4, tenant="L")
    [cancelled] = _items(["cancelled"], n_tokens=20)
    q.append([cancelled], quantum=4, tenant="L")
    q.append(_items([f"s{i}" for i in range(6)]), quantum=4, tenant="S")
    assert [it.text for it in q.next_batch(2, 10_000, tenant_quantum=6.0)[0]] == ["big", "s0"]  # L owes 14
    cancelled.future.cancel()
    q.discard(cancelled)  # L has nothing queued: out of the round
    q.append(_items(["big2"], n_tokens=20), quantum=4, tenant="L")
    assert [it.text for it in q.next_batch(3, 10_000, tenant_quantum=6.0)[0]] == ["s1", "big2", "s2"]


def test_a_lone_tenants_calls_go_round_as_before_and_a_newcomer_bounds_its_visit() -> None:
    for quantum in (None, 1.0):  # one tenant queued: the tenant's visit does not matter
        q: BatchQueue[int] = BatchQueue()
        q.append(_items([f"a{i}" for i in range(6)]), quantum=2)
        q.append(_items(["b0"]), quantum=2)
        q.append(_items(["c0", "c1", "c2"]), quantum=2)
        assert [it.text for it in q.next_batch(5, 1000, tenant_quantum=quantum)[0]] == ["a0", "a1", "b0", "c0", "c1"]
        assert [it.text for it in q.next_batch(4, 1000, tenant_quantum=quantum)[0]] == ["a2", "a3", "c2", "a4"]
    q = BatchQueue()
    q.append(_items([f"a{i}" for i in range(6)]), quantum=6, tenant="A")
    assert [it.text for it in q.next_batch(2, 1000, tenant_quantum=6.0)[0]] == ["a0", "a1"]  # alone: unbounded
    q.append(_items(["b0"]), quantum=6, tenant="B")
    assert [it.text for it in q.next_batch(8, 1000, tenant_quantum=6.0)[0]] == ["a2", "a3", "b0", "a4", "a5"]


def test_a_deadline_no_retry_can_meet_is_refused_without_a_retry_delay() -> None:
    err = refusal(20, 1.0, Load(0), POLICY, measured())
    assert isinstance(err, DeadlineExpired) and err.reason == "DEADLINE_TOO_SHORT"
    assert err.message == (
        "deadline: 20 prompts need about 2000 ms at the measured cost and the deadline leaves 1000 ms; "
        "split the call or give it a longer deadline"
    )
    info = status_of(err)
    assert info.code is Code.DEADLINE_EXCEEDED and info.retry_after_ms is None
    one = refusal(1, 0.00001, Load(0), POLICY, measured())  # a deadline of 10 us: sub-millisecond figures
    assert isinstance(one, DeadlineExpired) and one.message.startswith(
        "deadline: 1 prompt needs about 100 ms at the measured cost and the deadline leaves 0.01 ms;"
    )


def test_a_deadline_the_queued_work_would_pass_gets_a_retry_delay_that_can_succeed() -> None:
    roomy = BatchPolicy(max_batch_size=16, max_queue=100, admit_wait_ms=10_000)  # the queue wait is not the limit
    # 8 prompts at 4 a visit need 2 rounds: the running batch (20 tokens) + 2 rounds of (40 + 10) tokens
    # + the call's own 8 prompts (80 tokens) = 200 tokens: 2.0 s
    load = Load(10, 20, (40, 10), per_call=4)
    err = refusal(8, 1.5, load, roomy, measured())
    assert isinstance(err, QueueFull) and err.reason == "OVERLOADED"
    assert err.message == (
        "overloaded: with the 10 prompts in flight the call needs about 2000 ms and the deadline leaves 1500 ms"
    )
    assert status_of(err).retry_after_ms == 500
    assert refusal(8, 2.0, load, roomy, measured()) is None


def test_a_batch_holds_the_tokens_the_scorer_clears_in_max_batch_ms() -> None:
    assert batch_budget(POLICY, ServiceRate()) is None  # not measured yet
    assert batch_budget(POLICY, measured()) == 10  # 0.1 s / 0.01 s a token
    assert batch_budget(POLICY, measured(seconds_per_token=1.0)) == 1  # never empty
    assert batch_budget(BatchPolicy(max_batch_ms=0), measured()) is None


def test_service_rate_averages_seconds_per_token_and_tokens_per_prompt() -> None:
    rate = ServiceRate(smoothing=0.5)
    assert rate.prompts_per_s is None and not rate.measured
    rate.observe(4, 40, 0.4)  # 0.01 s a token, 10 tokens a prompt
    assert rate.prompts_per_s == pytest.approx(10.0)
    rate.observe(2, 10, 0.3)  # 0.03 s a token, 5 tokens a prompt -> 0.02, 7.5
    assert rate.seconds_per_token == pytest.approx(0.02) and rate.tokens_per_prompt == pytest.approx(7.5)
    assert rate.prompts_per_s == pytest.approx(1 / 0.125)  # 0.1 and 0.15 s a prompt, averaged
    rate.observe(0, 0, 1.0)  # ignored
    assert rate.seconds(tokens=10, prompts=2) == pytest.approx(0.5)


def test_one_batch_is_charged_its_fixed_cost_once_when_sizes_vary() -> None:
    """One-prompt batches of different lengths, each 200 us of overhead plus 0.5 us a token: the line
    through them prices a 64-prompt batch at its real cost, where the proportional rate (every second
    per token) charges it the overhead 64 times over."""
    rate = ServiceRate()
    rng = np.random.default_rng(0)
    for tokens in rng.choice([12, 40, 90, 256], size=200).tolist():
        rate.observe(1, tokens, 200e-6 + 0.5e-6 * tokens)
    line = rate.batch_line()
    assert line is not None
    assert line[0] == pytest.approx(200e-6, rel=1e-6) and line[1] == pytest.approx(0.5e-6, rel=1e-6)
    work = 64 * 100.0
    assert rate.batch_seconds(tokens=work) == pytest.approx(200e-6 + 0.5e-6 * work, rel=1e-6)
    assert rate.seconds(tokens=work) > 3 * rate.batch_seconds(tokens=work)  # what admission keeps using
    with_router = rate.batch_seconds(tokens=2 * work, weight=2.0)  # a router as costly again as the rest
    assert with_router == pytest.approx(200e-6 + work * (0.5e-6 + rate.seconds_per_token), rel=1e-6)


def test_batch_seconds_falls_back_to_the_rate_while_the_line_is_undetermined() -> None:
    same = ServiceRate()
    for _ in range(20):
        same.observe(1, 50, 1e-3)  # one size only: no line through it
    assert same.batch_line() is None
    assert same.batch_seconds(tokens=500) == same.seconds(tokens=500) == pytest.approx(1e-2)
    falling = ServiceRate()
    for tokens, seconds in [(10, 2e-3), (100, 1e-3)] * 10:  # longer batches faster: not a cost line
        falling.observe(1, tokens, seconds)
    assert falling.batch_line() is None


def test_service_rate_weighs_each_router_by_its_own_measured_cost() -> None:
    rate = ServiceRate()
    # 4 prompts, 40 tokens, 1.2 s: 0.8 s in "heavy" (asked by 2 prompts, 20 tokens), nothing in "light"
    rate.observe(4, 40, 1.2, {"heavy": (0.8, 20), "light": (0.0, 40)})
    assert rate.seconds_per_token == pytest.approx(0.01)  # the shared 0.4 s over 40 tokens
    assert rate.weight(["heavy"]) == pytest.approx(5.0)  # 0.04 s a token of its own, 4x the shared cost
    assert rate.weight(["light"]) == pytest.approx(1.0)
    assert rate.weight(["light", "heavy"]) == pytest.approx(5.0)
    assert rate.weight(["not measured"]) == 1.0 and ServiceRate().weight(["heavy"]) == 1.0
    assert rate.seconds(prompts=1, weight=rate.weight(["heavy"])) == pytest.approx(0.5)  # 10 tokens x 5 x 0.01
    assert rate.prompts_per_s == pytest.approx(4 / 1.2)  # at the batch's mix
    # a scorer that reports more router time than the batch took leaves a tiny positive shared cost
    rate2 = ServiceRate()
    rate2.observe(1, 10, 0.1, {"heavy": (0.2, 10)})
    assert rate2.seconds_per_token is not None and 0 < rate2.seconds_per_token < 1e-9


def test_a_costly_routers_call_is_refused_where_a_cheap_one_of_the_same_size_is_admitted() -> None:
    rate = measured()  # 0.1 s a prompt at weight 1
    assert refusal(20, 5.0, Load(0), POLICY, rate) is None  # 2 s of work, 5 s of deadline
    costly = refusal(20, 5.0, Load(0), POLICY, rate, weight=4.0)  # 8 s of work
    assert isinstance(costly, DeadlineExpired) and costly.reason == "DEADLINE_TOO_SHORT"
    assert "about 8000 ms" in str(costly)
    # a queued round of 3 calls x 10 work tokens = 0.3 s ahead; the new prompt's own 0.4 s at weight 4
    # passes the 0.5 s admit wait, at weight 1 (0.1 s) it does not
    load = Load(3, 0, (10, 10, 10), 1)
    assert refusal(1, None, load, POLICY, rate) is None
    over = refusal(1, None, load, POLICY, rate, weight=4.0)
    assert isinstance(over, QueueFull) and over.reason == "OVERLOADED" and over.retry_after_ms == 200


def test_a_batch_budget_holds_fewer_prompts_of_costly_routers() -> None:
    cheap, costly = _items([f"c{i}" for i in range(8)]), _items([f"h{i}" for i in range(8)])
    for it in costly:
        it.weight = 4.0
    q: BatchQueue[int] = BatchQueue()
    q.append(cheap, quantum=8)
    assert len(q.next_batch(8, 1000, cost_tokens=24)[0]) == 8  # 3 work tokens each
    q.append(costly, quantum=8)
    assert q.visits_ahead("") == q.visits_ahead("other") == (8 * 12.0,)
    assert len(q.next_batch(8, 1000, cost_tokens=24)[0]) == 2  # 12 work tokens each


def test_the_scheduler_learns_which_routers_are_costly_and_admits_by_it() -> None:
    """A scorer whose "slow" router takes 50 ms a prompt and "fast" nothing of its own: after batches of
    both (the fast ones last, which a single average would follow), a 20-prompt call asking for "slow"
    (~1 s of work) is refused against a 0.5 s deadline, the same call asking for "fast" is admitted."""

    async def body() -> None:
        scorer = FakeScorer(("fast", "slow"), router_delay_s={"slow": 0.05})
        sched = make(scorer, max_batch_ms=0)
        for routers in (("slow",), ("fast",)):
            for i in range(3):
                await sched.score([f"warm {i} a", f"warm {i} b"], routers)
        assert sched.rate.weight(["slow"]) > 10 * sched.rate.weight(["fast"])
        prompts = [f"p{i}" for i in range(20)]
        with pytest.raises(DeadlineExpired) as e:
            await sched.score(prompts, ("slow",), timeout_s=0.5)
        assert e.value.reason == "DEADLINE_TOO_SHORT"
        await sched.score(prompts, ("fast",), timeout_s=0.5)  # admitted (its prompts are not judged here)
        assert sched.stats.rejected_deadline == 1
        await sched.close()

    run(body)


# -- the scheduler -------------------------------------------------------------------------------------


def test_a_one_prompt_call_joins_the_next_batch_while_a_big_call_is_scored() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer)
        big = [f"big {i}" for i in range(40)]
        big_call = asyncio.create_task(sched.score(big))
        await wait_entered(scorer)  # the first batch of the big call is in the scorer
        small_call = asyncio.create_task(sched.score(["small"]))
        await until(lambda: sched.stats.admitted == 41)
        scorer.release()
        outs = await big_call
        [small] = await small_call
        assert isinstance(small, ItemResult) and all(isinstance(o, ItemResult) for o in outs)
        assert scorer.calls[0] == big[:4]
        assert "small" in scorer.calls[1]  # not behind the other 36 prompts
        assert [t for c in scorer.calls for t in c if t != "small"] == big  # the big call keeps its order
        await sched.close()

    run(body)


def test_each_prompt_wait_counts_from_when_it_enters_the_queue() -> None:
    """80 prompts in batches of 4 at >= 30 ms a batch take >= 600 ms, well past the 300 ms queue
    timeout; each prompt enters the queue when its call's turn reaches it, so none times out."""

    async def body() -> None:
        scorer = FakeScorer(delay_s=0.03)
        sched = make(scorer, queue_timeout_ms=300)
        t0 = time.monotonic()
        outs = await sched.score([f"p{i}" for i in range(80)])
        assert time.monotonic() - t0 >= 0.6
        assert all(isinstance(o, ItemResult) for o in outs)
        assert sched.stats.dropped_queue_timeout == 0 and sched.stats.batches == 20
        await sched.close()

    run(body)


def test_each_prompt_past_the_queue_timeout_fails_on_its_own_clock_unscored() -> None:
    """Behind a blocked scorer, a call's prompts enter the queue one by one (quantum 1) and each times
    out 50 ms after it entered: 10 prompts take >= 500 ms to fail, none reaches the scorer."""

    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer, queue_timeout_ms=50)
        first = asyncio.create_task(sched.score(["occupies the scorer"]))
        await wait_entered(scorer)
        t0 = time.monotonic()
        outs = await sched.score([f"late {i}" for i in range(10)])
        assert time.monotonic() - t0 >= 0.5
        assert all(isinstance(o, QueueTimeout) for o in outs)
        assert sched.stats.dropped_queue_timeout == 10
        scorer.release()
        await first
        assert all(not t.startswith("late") for c in scorer.calls for t in c)
        assert sched.in_flight == 0
        await sched.close()

    run(body)


def test_scheduler_refuses_overload_from_the_measured_rate() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer, admit_wait_ms=450, max_batch_ms=0)
        # one-word prompts have 3 tokens (FakeScorer: words + 2) and cost 0.1 s each: 0.45 s admits a
        # new prompt behind at most 3 queued ones (the idle fast path's prompt in the scorer counts no
        # tokens), so 4 wait and the 5th is refused
        sched.rate.observe(1, 3, 0.1)
        first = asyncio.create_task(sched.score(["occupies the scorer"]))
        await wait_entered(scorer)
        waiting = [asyncio.create_task(sched.score([f"w{i}"])) for i in range(4)]
        await until(lambda: sched.stats.admitted == 5)
        with pytest.raises(QueueFull) as e:
            await sched.score(["one too many"])
        assert e.value.reason == "OVERLOADED" and sched.stats.rejected_overload == 1
        assert sched.in_flight == 5
        scorer.release()
        await first
        outs = [o for call in await asyncio.gather(*waiting) for o in call]
        assert len(outs) == 4 and all(isinstance(o, ItemResult) for o in outs)
        await sched.close()

    run(body)


def test_one_tenants_flood_neither_keeps_another_tenant_out_nor_ahead_of_it() -> None:
    async def body(fair: bool) -> list[str]:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer, admit_wait_ms=450, max_batch_ms=0, max_batch_size=2, tenant_fair_share=fair)
        sched.rate.observe(1, 3, 0.1)  # 0.1 s a one-word prompt; 0.45 s admits 4 queued behind the scorer
        first = asyncio.create_task(sched.score(["occupies the scorer"], tenant="flood"))
        await wait_entered(scorer)
        flood = [asyncio.create_task(sched.score([f"f{i}"], tenant="flood")) for i in range(4)]
        await until(lambda: sched.stats.admitted == 5)
        with pytest.raises(QueueFull) as e:
            await sched.score(["one too many"], tenant="flood")
        assert e.value.reason == "OVERLOADED"
        refused: list[str] = []
        other = []
        for i in range(3):
            before = (sched.stats.admitted, sched.stats.rejected_overload)
            call = asyncio.create_task(sched.score([f"o{i}"], tenant="other"))
            await until(lambda b=before: (sched.stats.admitted, sched.stats.rejected_overload) != b)  # type: ignore[misc]
            if sched.stats.rejected_overload > before[1]:
                refused.append(f"o{i}")
                with pytest.raises(QueueFull):
                    await call
            else:
                other.append(call)
        scorer.release()
        await first
        outs = [o for call in await asyncio.gather(*flood, *other) for o in call]
        assert all(isinstance(o, ItemResult) for o in outs)
        await sched.close()
        assert refused == (["o2"] if fair else ["o0", "o1", "o2"])
        return [t for c in scorer.calls[1:] for t in c]

    # the other tenant's first call waits one visit of the flood (0.1 + 0.1 s), its second the flood's
    # next two and its own first (0.4 s), a third would wait 0.6 s: refused; and they are scored in turn
    # with the flood's, not behind all of it
    assert asyncio.run(asyncio.wait_for(body(True), 30)) == ["f0", "o0", "f1", "o1", "f2", "f3"]
    # one round over all calls: the flood's 0.4 s queued keeps every call of the other tenant out
    assert asyncio.run(asyncio.wait_for(body(False), 30)) == ["f0", "f1", "f2", "f3"]


def test_scheduler_refuses_a_call_its_deadline_cannot_hold() -> None:
    async def body() -> None:
        sched = make(FakeScorer())
        sched.rate.observe(1, 3, 0.1)  # 0.1 s a prompt
        with pytest.raises(DeadlineExpired) as e:
            await sched.score([f"p{i}" for i in range(20)], timeout_s=1.0)
        assert e.value.reason == "DEADLINE_TOO_SHORT" and sched.stats.rejected_deadline == 1
        outs = await sched.score([f"p{i}" for i in range(20)], timeout_s=5.0)
        assert all(isinstance(o, ItemResult) for o in outs)
        await sched.close()

    run(body)


def test_stalled_s_grows_while_work_waits_on_a_blocked_scorer() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        sched = make(scorer)
        assert sched.stalled_s(time.monotonic() + 100) == 0.0  # idle: never stalled
        scorer.block()
        call = asyncio.create_task(sched.score(["stuck"]))
        await wait_entered(scorer)
        assert sched.stalled_s(time.monotonic() + 5) >= 5.0
        scorer.release()
        await call
        assert sched.stalled_s(time.monotonic() + 100) == 0.0
        await sched.close()

    run(body)


def _items(names: list[str], n_tokens: int = 3) -> list[Item[int]]:
    loop = asyncio.new_event_loop()
    try:
        return [Item(name, ("mf",), Tokenized(n_tokens, n_tokens), loop.create_future(), 0.0) for name in names]
    finally:
        loop.close()


def test_batches_take_the_calls_in_rounds_of_a_quantum_each() -> None:
    released: list[str] = []
    q: BatchQueue[int] = BatchQueue(on_release=lambda it: released.append(it.text))
    q.append(_items([f"a{i}" for i in range(6)]), quantum=2)
    q.append(_items(["b0"]), quantum=2)
    q.append(_items(["c0", "c1", "c2"]), quantum=2)
    assert released == ["a0", "a1", "b0", "c0", "c1"] and len(q) == 10
    assert q.line_lengths() == (6, 1, 3)
    assert [it.text for it in q.next_batch(5, 1000)[0]] == ["a0", "a1", "b0", "c0", "c1"]
    assert q.line_lengths() == (4, 1)  # a, then c: b is done; each visited line went to the back
    assert [it.text for it in q.next_batch(4, 1000)[0]] == ["a2", "a3", "c2", "a4"]
    assert [it.text for it in q.next_batch(4, 1000)[0]] == ["a5"]
    assert len(q) == 0 and q.next_batch(4, 1000) == ([], [])


def test_a_quantum_past_the_calls_prompts_takes_a_release_step_per_prompt_not_per_quantum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The quantum is max_batch_size // 4, whatever the call's size: a step per unit of it held the event
    loop for hours at --max-batch-size 10000000000 (calls hung, SIGTERM went unheard)."""
    steps = 0
    release = BatchQueue._release_next

    def counted(self: BatchQueue[int], line: object) -> None:
        nonlocal steps
        steps += 1
        assert steps <= 3, "a release step per unit of quantum"
        release(self, line)  # type: ignore[arg-type]

    monkeypatch.setattr(BatchQueue, "_release_next", counted)
    released: list[str] = []
    q: BatchQueue[int] = BatchQueue(on_release=lambda it: released.append(it.text))
    q.append(_items(["a0", "a1", "a2"]), quantum=10**12)
    assert released == ["a0", "a1", "a2"] and steps == 3
    monkeypatch.undo()  # taking a prompt releases the next one: a step of its own
    assert [it.text for it in q.next_batch(8, 1000)[0]] == ["a0", "a1", "a2"] and len(q) == 0


def test_dead_items_are_skipped_and_reported_and_the_line_moves_on() -> None:
    q: BatchQueue[int] = BatchQueue()
    a = _items(["a0", "a1", "a2"])
    q.append(a, quantum=1)
    a[0].future.cancel()
    a[1].future.cancel()
    batch, dead = q.next_batch(4, 1000)
    assert [it.text for it in batch] == ["a2"] and [it.text for it in dead] == ["a0"]
    assert len(q) == 0  # a1 was dropped while held: its done-callback counts it, not the queue


def test_a_tenant_whose_calls_are_all_discarded_leaves_the_round() -> None:
    q: BatchQueue[int] = BatchQueue()
    a = _items(["a0", "a1"])
    q.append(a, quantum=1, tenant="A")
    q.append(_items(["b0", "b1"]), quantum=1, tenant="B")
    assert q.visits_ahead("C", 3.0) == (3.0, 3.0)
    for it in a:  # the caller went away: the scheduler discards its queued items
        it.future.cancel()
        q.discard(it)
    assert len(q) == 2 and q.line_lengths() == (2,)
    assert q.visits_ahead("C", 3.0) == (3.0,)
    assert [it.text for it in q.next_batch(4, 1000, tenant_quantum=3.0)[0]] == ["b0", "b1"]
    assert len(q) == 0 and q.visits_ahead("B", 3.0) == ()


class _AffinityScorer(FakeScorer):
    """A FakeScorer that records the CPUs of the thread each batch is scored on."""

    def __init__(self) -> None:
        super().__init__()
        self.cpus: list[frozenset[int]] = []

    def score(self, texts, routers, tokens):  # type: ignore[no-untyped-def]
        self.cpus.append(frozenset(os.sched_getaffinity(0)))
        return super().score(texts, routers, tokens)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin one")
def test_the_scoring_thread_runs_on_its_own_cpus_and_the_caller_keeps_its_own() -> None:
    allowed = frozenset(os.sched_getaffinity(0))
    mine = frozenset({min(allowed)})

    async def body() -> None:
        scorer = _AffinityScorer()
        sched: Scheduler[int] = Scheduler(scorer, BatchPolicy(max_wait_us=0, inline_us=0), scoring_cpus=mine)
        sched.start()
        outs = await sched.score(["a", "b c"])
        assert all(isinstance(o, ItemResult) for o in outs)
        assert scorer.cpus and all(c == mine for c in scorer.cpus)
        assert frozenset(os.sched_getaffinity(0)) == allowed  # the calling thread is not pinned by it
        await sched.close()

    run(body)


def test_one_paused_batch_does_not_refuse_the_calls_after_it_while_a_lasting_slowdown_is_followed() -> None:
    """One-prompt batches of 100 tokens at 1 us a token, then one 18-token batch held 30 ms by a pause (a
    garbage collection): the calls that follow, 16 queued visits of 100 tokens, are still admitted (as
    the pause's own 1.7 ms a token, averaged in, would have refused them: 0.33 ms a token, 530 ms
    ahead); a scorer that turns 10x slower for good is followed within 10 batches."""
    rate = ServiceRate()
    for _ in range(50):
        rate.observe(1, 100, 100e-6)
    rate.observe(1, 18, 30e-3)
    assert rate.seconds_per_token == pytest.approx(1.6e-6)
    load = Load(in_flight=16, running_tokens=100.0, visits=(100.0,) * 15)
    assert refusal(1, None, load, BatchPolicy(admit_wait_ms=100), rate) is None
    averaged = ServiceRate()
    averaged.seconds_per_token, averaged.tokens_per_prompt = 0.8 * 1e-6 + 0.2 * 30e-3 / 18, 100.0
    assert isinstance(refusal(1, None, load, BatchPolicy(admit_wait_ms=100), averaged), QueueFull)
    for _ in range(10):
        rate.observe(1, 100, 1e-3)
    assert rate.seconds_per_token == pytest.approx(10e-6, rel=0.1)


def test_while_tenants_contend_the_last_quarter_of_the_queue_is_kept_for_light_tenants() -> None:
    """Bound 1, shared: a tenant holding more than a sixteenth of max_queue fills at most three quarters of
    it while another tenant asks; a tenant holding little or nothing still enters the rest (an idle
    server admits any call that fits the queue); alone, a tenant may fill the whole queue, as before."""
    policy = BatchPolicy(max_queue=64, admit_wait_ms=60_000, max_batch_ms=0)  # 48 common, light = 4 held
    heavy = refusal(8, None, Load(48, held=48, contended=True), policy, measured())
    assert isinstance(heavy, QueueFull) and heavy.reason == "QUEUE_FULL" and heavy.retry_after_ms is not None
    assert heavy.message == (
        "queue full for this tenant: 48 of 64 prompts admitted, 48 of them its own, 8 more asked; while "
        "other tenants ask, the last 16 places are kept for tenants holding nothing yet or at most 4"
    )
    assert refusal(3, None, Load(48, held=1, contended=True), policy, measured()) is None  # a light tenant
    assert isinstance(refusal(4, None, Load(48, held=1, contended=True), policy, measured()), QueueFull)
    assert refusal(16, None, Load(48, held=0, contended=True), policy, measured()) is None  # holds nothing yet
    assert refusal(63, None, Load(0, held=0, contended=True), policy, measured()) is None  # an idle server
    assert refusal(8, None, Load(48, held=48, contended=False), policy, measured()) is None  # alone
    assert refusal(8, None, Load(40, held=40, contended=True), policy, measured()) is None  # within 48
    small = BatchPolicy(max_queue=8, admit_wait_ms=60_000, max_batch_ms=0)  # 6 common, 2 kept: light = 1 held
    assert refusal(1, None, Load(6, held=0, contended=True), small, measured()) is None
    assert isinstance(refusal(1, None, Load(6, held=6, contended=True), small, measured()), QueueFull)


def test_admission_counts_each_tenants_permits_and_who_asked_lately() -> None:
    from lmroute.service.admission import Admission

    now = [0.0]
    adm = Admission(64, recent_s=1.0, clock=lambda: now[0])
    adm.note("flood")
    assert not adm.contended("flood")  # alone
    permit = adm.try_acquire(10, "flood")
    assert permit is not None and (adm.held("flood"), adm.in_use) == (10, 10)
    adm.note("quiet")
    assert adm.contended("flood") and adm.contended("quiet")
    now[0] = 2.0
    adm.note("flood")  # quiet asked 2 s ago and holds nothing: gone
    assert not adm.contended("flood") and adm.contended("quiet")  # flood still holds permits
    with permit:
        pass
    assert (adm.held("flood"), adm.in_use) == (0, 0)
    assert adm.contended("quiet")  # flood asked within the last second
    now[0] = 3.5
    adm.note("quiet")
    assert not adm.contended("quiet")  # flood holds nothing and asked 1.5 s ago
