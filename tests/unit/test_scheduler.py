"""Scheduler unit tests against FakeScorer: admission, queue timeout, cancellation, deadlines,
per-item errors, batch limits, tokens riding with the queued prompt, router names resolved at the edge.
Concurrency is gated with events (FakeScorer.block/release); timing assertions are one-sided."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmroute.service.admission import Admission
from lmroute.service.batch_queue import BatchQueue, Item
from lmroute.service.config import BatchPolicy
from lmroute.service.errors import (
    Code,
    DeadlineExpired,
    Draining,
    InvalidArgument,
    NotFound,
    NotReady,
    OutOfMemory,
    QueueFull,
    QueueTimeout,
    ScorerFailed,
    status_of,
)
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.scheduler import ItemResult, Scheduler
from lmroute.service.scorer_api import Tokenized
from lmroute.service.servicer import resolve_routers


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(fn(), 20))


async def wait_entered(scorer: FakeScorer) -> None:
    """Wait on the scorer's `entered` event (in a thread, so the loop keeps running) until a call started."""
    assert await asyncio.to_thread(scorer.entered.wait, 10), "the scorer was never called"


async def until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.001)


def make(scorer: FakeScorer, **kw: int) -> Scheduler:
    base = dict(
        max_batch_size=32,
        max_wait_us=0,
        max_batch_tokens=100_000,
        max_queue=256,
        queue_timeout_ms=5000,
        max_prompt_chars=1000,
        # no time budget per batch: a test's blocked scorer call would read as a slow scorer and cut the
        # next batch by however long the block lasted (the budget has its own tests in test_fair_admission)
        max_batch_ms=0,
    )
    base.update(kw)
    sched = Scheduler(scorer, BatchPolicy(**base))
    sched.start()
    return sched


def test_queue_limit_8_with_10_concurrent_gives_exactly_2_queue_full() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer, max_queue=8)
        tasks = [asyncio.create_task(sched.score([f"prompt {i}"])) for i in range(10)]
        await until(lambda: sched.stats.rejected_queue_full == 2 and sched.stats.admitted == 8)
        scorer.release()
        outs = await asyncio.gather(*tasks, return_exceptions=True)
        full = [o for o in outs if isinstance(o, QueueFull)]
        ok = [o for o in outs if isinstance(o, list) and isinstance(o[0], ItemResult)]
        assert len(full) == 2 and len(ok) == 8
        info = status_of(full[0])
        assert info.code is Code.RESOURCE_EXHAUSTED and info.reason == "QUEUE_FULL"
        assert info.retry_after_ms is not None
        assert sched.in_flight == 0
        await sched.close()

    run(body)


def test_queue_timeout_50ms_unavailable_and_scorer_never_sees_item() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer, queue_timeout_ms=50)
        first = asyncio.create_task(sched.score(["occupies the scorer"]))
        await wait_entered(scorer)
        t0 = time.monotonic()
        [out] = await sched.score(["waits too long"])
        elapsed_s = time.monotonic() - t0
        assert isinstance(out, QueueTimeout), out
        assert elapsed_s < 2.0, elapsed_s  # UNAVAILABLE while the scorer is still blocked
        assert out.message == "queued longer than 50 ms"
        info = status_of(out)
        assert info.code is Code.UNAVAILABLE and info.reason == "QUEUE_TIMEOUT"
        scorer.release()
        await first
        assert all("waits too long" not in c for call in scorer.calls for c in call)
        assert sched.stats.dropped_queue_timeout == 1
        assert sched.in_flight == 0
        await sched.close()

    run(body)


def test_cancelled_item_never_reaches_scorer_and_batch_mates_unaffected() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer)
        first = asyncio.create_task(sched.score(["occupies the scorer"]))
        await wait_entered(scorer)
        doomed = asyncio.create_task(sched.score(["cancel me"]))
        mate = asyncio.create_task(sched.score(["batch mate"]))
        await until(lambda: sched.stats.admitted == 3)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        scorer.release()
        await first
        [res] = await mate
        assert isinstance(res, ItemResult)
        assert res.scores["mf"] == FakeScorer.score_one("mf", "batch mate")
        assert all("cancel me" not in c for call in scorer.calls for c in call)
        assert sched.stats.dropped_cancelled == 1
        assert sched.in_flight == 0
        await sched.close()

    run(body)


def test_deadline_shorter_than_queue_wait_never_reaches_scorer() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer, queue_timeout_ms=5000)
        first = asyncio.create_task(sched.score(["occupies the scorer"]))
        await wait_entered(scorer)
        [out] = await sched.score(["short deadline"], timeout_s=0.03)
        assert isinstance(out, DeadlineExpired)
        assert status_of(out).code is Code.DEADLINE_EXCEEDED
        scorer.release()
        await first
        assert all("short deadline" not in c for call in scorer.calls for c in call)
        assert sched.stats.dropped_deadline == 1
        await sched.close()

    run(body)


@pytest.mark.parametrize(
    ("text", "blank"),
    [
        ("   ", True),
        ("\u200b\u200b", True),  # zero-width spaces: the tokenizer drops them, [CLS] [SEP] were scored
        ("\x00", True),
        ("\ufeff \t", True),
        ("\ue000", True),  # private use
        ("\u200bhi", False),
        ("\ue000x", False),
        ("中文", False),
        ("😀", False),
        ("é", False),
    ],
)
def test_a_prompt_of_only_invisible_characters_is_empty(text: str, blank: bool) -> None:
    from lmroute.service.scheduler import prompt_problem

    problem = prompt_problem("prompt", text, 100)
    assert (problem is not None and problem.reason == "EMPTY_PROMPT") == blank, repr(text)


def test_an_unknown_turn_selection_is_refused_naming_the_field() -> None:
    from lmroute.service.prompts import prompt_text
    from lmroute.v1 import router_pb2

    turns = router_pb2.Conversation(messages=[router_pb2.ChatMessage(role="user", content="hi")])
    bad = prompt_text(router_pb2.Prompt(conversation=turns, turn_selection=99), "prompts[2]")  # type: ignore[arg-type]
    assert isinstance(bad, InvalidArgument) and bad.reason == "OUT_OF_RANGE"
    assert bad.message.startswith("prompts[2].turn_selection: unknown value 99 (expected one of")
    assert prompt_text(router_pb2.Prompt(conversation=turns, turn_selection=2), "p") == "hi"


def test_one_invalid_among_16_gives_15_ok() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        sched = make(scorer)
        prompts = [f"prompt number {i}" for i in range(16)]
        prompts[3] = "   "
        outs = await sched.score(prompts)
        assert sum(isinstance(o, ItemResult) for o in outs) == 15
        err = outs[3]
        assert isinstance(err, InvalidArgument)
        assert err.message == "prompts[3]: empty prompt" and err.reason == "EMPTY_PROMPT"
        assert status_of(err).code is Code.INVALID_ARGUMENT
        for i, o in enumerate(outs):
            if i != 3:
                assert isinstance(o, ItemResult)
                assert o.scores["random"] == FakeScorer.score_one("random", prompts[i])
        await sched.close()

    run(body)


def test_too_long_prompt_names_field_and_limit() -> None:
    async def body() -> None:
        sched = make(FakeScorer(), max_prompt_chars=10)
        outs = await sched.score(["fine", "x" * 11])
        assert isinstance(outs[0], ItemResult)
        assert isinstance(outs[1], InvalidArgument)
        assert outs[1].message == "prompts[1]: prompt has 11 characters (limit 10)"
        await sched.close()

    run(body)


def test_scorer_failure_fails_only_the_bad_item() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer)
        first = asyncio.create_task(sched.score(["occupies the scorer"]))
        await wait_entered(scorer)
        prompts = [f"p {i}" for i in range(8)]
        prompts[5] = "boom <fail>"
        task = asyncio.create_task(sched.score(prompts))
        await until(lambda: sched.stats.admitted == 9)
        scorer.release()
        await first
        outs = await task
        assert [isinstance(o, ItemResult) for o in outs] == [i != 5 for i in range(8)]
        assert isinstance(outs[5], ScorerFailed)
        assert status_of(outs[5]).message == "internal error"  # no internals leak
        assert sched.stats.scorer_failures >= 1
        # the batch and its one-by-one rescoring used the tokens from admission: tokenised once each
        assert sorted(scorer.counted) == sorted(prompts)
        assert scorer.scored_without_tokens == ["occupies the scorer"]  # the idle fast path
        assert sched.in_flight == 0
        await sched.close()

    run(body)


def test_a_call_that_runs_out_of_memory_is_resource_exhausted_alone() -> None:
    """MemoryError (a process memory limit) while tokenising a call, or scoring a batch, was INTERNAL
    SCORER_FAILED: it is RESOURCE_EXHAUSTED OUT_OF_MEMORY with a retry delay, and the other prompts pass."""

    async def body() -> None:
        scorer = FakeScorer()
        sched = make(scorer)
        with pytest.raises(OutOfMemory) as info:
            await sched.score(["fine", "too big <oom>"])  # tokenised at admission: the call fails whole
        status = status_of(info.value)
        assert (status.code, status.reason, status.retry_after_ms) == (Code.RESOURCE_EXHAUSTED, "OUT_OF_MEMORY", 1000)
        assert "fewer or shorter" in status.message
        scorer.block()
        first = asyncio.create_task(sched.score(["occupies the scorer"]))
        await wait_entered(scorer)
        task = asyncio.create_task(sched.score(["a", "b <late>", "c"]))
        await until(lambda: sched.stats.admitted >= 4)  # tokenised at admission
        scorer.oom_marker = "<late>"  # then the batch holding it runs out of memory
        scorer.release()
        await first
        outs = await task
        assert isinstance(outs[0], ItemResult) and isinstance(outs[2], ItemResult)
        assert isinstance(outs[1], OutOfMemory) and status_of(outs[1]).code == Code.RESOURCE_EXHAUSTED
        assert sched.in_flight == 0
        await sched.close()

    run(body)


def test_batches_respect_max_size() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer, max_batch_size=4)
        first = asyncio.create_task(sched.score(["occupies the scorer"]))
        await wait_entered(scorer)
        task = asyncio.create_task(sched.score([f"q {i}" for i in range(10)]))
        await until(lambda: sched.stats.admitted == 11)
        scorer.release()
        await first
        outs = await task
        assert all(isinstance(o, ItemResult) for o in outs)
        sizes = [len(c) for c in scorer.calls[1:]]
        assert sizes == [4, 4, 2]
        await sched.close()

    run(body)


def test_batches_respect_padded_token_budget() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer, max_batch_tokens=24)
        first = asyncio.create_task(sched.score(["occupies"]))
        await wait_entered(scorer)
        lengths = [1, 2, 10, 1, 1, 4, 3, 1]  # words; tokens = words + 2
        prompts = [" ".join(["w"] * n) for n in lengths]
        task = asyncio.create_task(sched.score(prompts))
        await until(lambda: sched.stats.admitted == 1 + len(prompts))
        scorer.release()
        await first
        await task
        batches = scorer.calls[1:]
        assert sum(len(b) for b in batches) == len(prompts)
        for b in batches:
            toks = [scorer.token_count(t) for t in b]
            assert len(b) == 1 or max(toks) * len(b) <= 24, b
        assert [x for b in batches for x in b] == prompts  # FIFO order kept
        await sched.close()

    run(body)


def test_concurrent_requests_are_batched_and_match_single() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer)
        first = asyncio.create_task(sched.score(["occupies the scorer"], ("mf",)))
        await wait_entered(scorer)
        prompts = [f"prompt {i}" for i in range(20)]
        tasks = [asyncio.create_task(sched.score([p], ("mf",))) for p in prompts]
        await until(lambda: sched.stats.admitted == 21)
        scorer.release()
        await first
        outs = await asyncio.gather(*tasks)
        assert [len(c) for c in scorer.calls] == [1, 20]  # the 20 queued calls left as one batch
        for p, [o] in zip(prompts, outs, strict=True):
            assert isinstance(o, ItemResult) and list(o.scores) == ["mf"]
            assert o.scores["mf"] == FakeScorer.score_one("mf", p)
        await sched.close()

    run(body)


def test_whole_call_errors_not_ready_draining() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        sched = Scheduler(scorer, BatchPolicy())
        with pytest.raises(NotReady):
            await sched.score(["x"])
        sched.start()
        await sched.close()
        with pytest.raises(Draining):
            await sched.score(["x"])

    run(body)


def test_router_names_are_resolved_once_by_the_transport() -> None:
    loaded = ("random", "mf")
    assert resolve_routers([], loaded) == loaded
    assert resolve_routers(["mf", "random", "mf"], loaded) == ("mf", "random")
    with pytest.raises(NotFound) as e:
        resolve_routers(["mf", "nope", "zzz"], loaded)
    assert e.value.message == "routers[1]: unknown router 'nope' (loaded: random, mf)"
    assert status_of(e.value).code is Code.NOT_FOUND


def test_scheduler_and_scorer_take_the_resolved_routers_as_given() -> None:
    """Each prompt is scored with exactly the routers handed down, in that order; None means all."""

    async def body() -> None:
        scorer = FakeScorer(routers=("random", "mf", "sw"))
        sched = make(scorer)
        [one] = await sched.score(["a prompt"], ("sw", "random"))
        [every] = await sched.score(["a prompt"])
        assert isinstance(one, ItemResult) and isinstance(every, ItemResult)
        assert list(one.scores) == ["sw", "random"]
        assert list(every.scores) == ["random", "mf", "sw"]
        assert one.scores["sw"] == every.scores["sw"] == FakeScorer.score_one("sw", "a prompt")
        await sched.close()

    run(body)


def test_close_finishes_queued_work() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer, max_batch_size=2)
        tasks = [asyncio.create_task(sched.score([f"p {i}"])) for i in range(6)]
        await until(lambda: sched.stats.admitted == 6)
        closing = asyncio.create_task(sched.close())
        await until(lambda: not sched.running)
        with pytest.raises(Draining):
            await sched.score(["too late"])
        scorer.release()
        await closing
        outs = await asyncio.gather(*tasks)
        assert all(isinstance(o[0], ItemResult) for o in outs)
        assert sum(len(c) for c in scorer.calls) == 6 and sched.in_flight == 0

    run(body)


def test_unknown_exception_maps_to_internal_without_text() -> None:
    info = status_of(KeyError("secret detail"))
    assert info.code is Code.INTERNAL and info.message == "internal error"


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=6),
    max_batch=st.integers(1, 16),
    budget=st.integers(8, 200),
)
def test_property_every_request_gets_its_own_scores_within_limits(
    sizes: list[int], max_batch: int, budget: int
) -> None:
    async def body() -> None:
        scorer = FakeScorer()
        sched = make(scorer, max_batch_size=max_batch, max_batch_tokens=budget, max_wait_us=500, max_queue=1000)
        reqs = [[f"r{j} " + "w " * ((i * 7 + j) % 9) + f"p{i}" for i in range(n)] for j, n in enumerate(sizes)]
        outs = await asyncio.gather(*(sched.score(r, ("mf",)) for r in reqs))
        for req, out in zip(reqs, outs, strict=True):
            assert len(out) == len(req)
            for text, res in zip(req, out, strict=True):
                assert isinstance(res, ItemResult)
                assert res.scores == {"mf": FakeScorer.score_one("mf", text)}
        for call in scorer.calls:
            toks = [scorer.token_count(t) for t in call]
            assert len(call) <= max_batch
            assert len(call) == 1 or max(toks) * len(call) <= budget
        assert sum(len(c) for c in scorer.calls) == sum(sizes)
        assert sched.in_flight == 0
        await sched.close()

    run(body)


def test_idle_fast_path_skips_the_count_only_for_one_prompt_on_an_idle_scheduler() -> None:
    """A one-prompt call finding the queue empty and the scorer idle is not counted at admission
    (scored alone at once); one arriving while the scorer is busy, or a two-prompt call, is."""

    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer)
        first = asyncio.create_task(sched.score(["idle one"]))
        await wait_entered(scorer)
        busy = asyncio.create_task(sched.score(["busy one"]))
        pair = asyncio.create_task(sched.score(["pair a", "pair b"]))
        await until(lambda: sched.stats.admitted == 4)
        scorer.release()
        outs = [*await first, *await busy, *await pair]
        texts = ["idle one", "busy one", "pair a", "pair b"]
        for text, out in zip(texts, outs, strict=True):
            assert isinstance(out, ItemResult)
            assert out.scores["mf"] == FakeScorer.score_one("mf", text)
            assert out.n_tokens == len(text.split()) + 2  # reported even when not counted
        assert scorer.counted == ["busy one", "pair a", "pair b"]
        assert scorer.scored_without_tokens == ["idle one"]  # every prompt tokenised exactly once
        assert scorer.calls[0] == ["idle one"]
        assert sched.timings.padded_tokens.count == len(scorer.calls)
        await sched.close()

    run(body)


def test_idle_fast_path_is_off_when_batches_wait_to_fill() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        sched = make(scorer, max_wait_us=1000)
        [out] = await sched.score(["lonely prompt"])
        assert isinstance(out, ItemResult)
        assert scorer.counted == ["lonely prompt"] and scorer.scored_without_tokens == []
        await sched.close()

    run(body)


def _item(n_tokens: int | None, name: str) -> Item[int]:
    loop = asyncio.new_event_loop()
    try:
        tokens = None if n_tokens is None else Tokenized(n_tokens, n_tokens)
        return Item(name, ("mf",), tokens, loop.create_future(), 0.0)
    finally:
        loop.close()


def test_uncounted_item_forms_a_batch_of_its_own() -> None:
    q = BatchQueue()
    for it in (_item(3, "a"), _item(3, "b"), _item(None, "c"), _item(3, "d")):
        q.append([it], 1)
    assert q.batch_ready(32, 1000)
    batches = []
    while len(q):
        batch, dead = q.next_batch(32, 1000)
        assert not dead
        batches.append([it.text for it in batch])
    assert batches == [["a", "b"], ["c"], ["d"]]
    q.append([_item(None, "alone")], 1)
    assert q.batch_ready(32, 1000)


def test_tokens_from_admission_ride_with_the_item_to_the_scorer() -> None:
    """Prompts queued behind a busy scorer are tokenised once, at admission; the scorer gets those
    tokens with the batch (it tokenises none itself) and the replies carry their counts."""

    async def body() -> None:
        scorer = FakeScorer(max_tokens=6)
        scorer.block()
        sched = make(scorer, max_batch_size=3)
        first = asyncio.create_task(sched.score(["occupies the scorer"]))
        await wait_entered(scorer)
        prompts = [" ".join(["w"] * n) for n in (1, 7, 2, 3, 9, 1, 4)]
        task = asyncio.create_task(sched.score(prompts, ("mf",)))
        await until(lambda: sched.stats.admitted == 1 + len(prompts))
        scorer.release()
        await first
        outs = await task
        assert scorer.counted == prompts
        assert scorer.scored_without_tokens == ["occupies the scorer"]
        assert [len(c) for c in scorer.calls[1:]] == [3, 3, 1]
        for text, out in zip(prompts, outs, strict=True):
            assert isinstance(out, ItemResult)
            assert out.n_tokens == min(len(text.split()) + 2, 6)
            assert out.truncated == (len(text.split()) + 2 > 6)
        await sched.close()

    run(body)


class _FailingTokenizer(FakeScorer):
    """A FakeScorer whose tokenizer raises (the scorer's `tokenize` failing at admission)."""

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized[int]]:
        raise RuntimeError("tokenizer broke")


def test_tokenizer_failure_fails_the_call_and_gives_the_permits_back() -> None:
    async def body() -> None:
        scorer = _FailingTokenizer()
        sched = make(scorer, max_queue=4)
        with pytest.raises(ScorerFailed):
            await sched.score(["a", "b", "c", "d"])
        assert sched.in_flight == 0 and scorer.calls == []
        [out] = await sched.score(["idle: tokenised by the scorer"])  # the fast path never calls tokenize
        assert isinstance(out, ItemResult) and sched.in_flight == 0
        await sched.close()

    run(body)


def test_admission_permits_are_held_by_a_with_block() -> None:
    admission = Admission(4)
    permit = admission.try_acquire(3)
    assert permit is not None and admission.in_use == 3
    assert admission.try_acquire(2) is None and admission.in_use == 3  # all or none
    with pytest.raises(RuntimeError), permit:
        assert admission.in_use == 3
        raise RuntimeError("the call failed")
    assert admission.in_use == 0  # given back however the block ends
    full = admission.try_acquire(4)
    assert full is not None
    with full:
        assert admission.try_acquire(1) is None
    assert admission.in_use == 0


def test_queue_full_leaves_the_admitted_calls_their_permits() -> None:
    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer, max_queue=3)
        first = asyncio.create_task(sched.score(["one", "two"]))
        await wait_entered(scorer)
        with pytest.raises(QueueFull) as e:
            await sched.score(["three", "four"])
        assert e.value.message == "queue full: 2 of 3 prompts admitted, 2 more asked"
        assert sched.in_flight == 2
        scorer.release()
        assert all(isinstance(o, ItemResult) for o in await first)
        assert sched.in_flight == 0
        await sched.close()

    run(body)


class _ShortScores(FakeScorer):
    """A scorer (a plug-in kind's bug) whose batches of several prompts come back one score short."""

    def score(self, texts, routers, tokens):  # type: ignore[no-untyped-def]
        res = super().score(texts, routers, tokens)
        if len(texts) < 2:
            return res
        return dataclasses.replace(res, scores={r: s[:-1] for r, s in res.scores.items()})


def test_a_scorer_short_of_rows_fails_its_batch_and_the_worker_goes_on() -> None:
    """A batch whose scores hold fewer rows than prompts: its prompts are rescored one by one, and the
    queue keeps being served (reading past the rows raised in the batching worker and ended it: every
    later call timed out in the queue, and stopping the server raised)."""

    async def body() -> None:
        scorer = _ShortScores(delay_s=0.05)
        sched = make(scorer, inline_us=0, queue_timeout_ms=2000)
        blocker = asyncio.create_task(sched.score(["first"]))  # holds the scorer: the next calls queue up
        await wait_entered(scorer)
        calls = [asyncio.create_task(sched.score([f"queued {i}"])) for i in range(4)]
        outs = [o for r in await asyncio.gather(blocker, *calls) for o in r]
        assert all(isinstance(o, ItemResult) for o in outs)  # each rescored alone: its own full row
        assert sched.stats.scorer_failures >= 1 and not sched._worker.done()
        later = await sched.score(["after the short batch"], timeout_s=5)
        assert isinstance(later[0], ItemResult)
        await sched.close()

    run(body)


def test_a_hung_scorer_shows_as_stalled_though_callers_give_up_one_at_a_time() -> None:
    """The liveness check's `stalled_s`: a batch stuck in the scorer counts, whether or not its callers
    still wait (a caller whose deadline passes gives its permits back; a call arriving then restarted the
    stall clock, so calls one at a time kept a hung scorer from ever reading as stalled)."""

    async def body() -> None:
        scorer = FakeScorer()
        scorer.block()
        sched = make(scorer, inline_us=0)
        t0 = time.monotonic()
        try:
            for i in range(3):  # one call at a time, each given up (its deadline: gRPC cancels it) before the next
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(sched.score([f"call {i}"]), 0.2)
                await asyncio.sleep(0.05)
            assert sched._admission.in_use == 0 and sched._scoring
            assert sched.stalled_s(time.monotonic()) >= time.monotonic() - t0 - 0.1
        finally:
            scorer.release()
        await until(lambda: not sched._scoring)
        assert sched.stalled_s(time.monotonic()) == 0.0
        await sched.close()

    run(body)


def test_queue_timeouts_keep_one_sweep_timer_however_many_prompts_time_out() -> None:
    """Prompts timing out in the queue release held ones, which arm the sweep timer while a sweep runs:
    each such sweep left one more timer chain behind (under sustained overload, without bound, each
    sweeping the queue again)."""

    async def body() -> None:
        scorer = FakeScorer(record=False)
        scorer.block()
        sched = make(scorer, inline_us=0, queue_timeout_ms=100, max_queue=1024)
        loop = asyncio.get_running_loop()

        def sweep_timers() -> int:
            scheduled = loop._scheduled  # type: ignore[attr-defined]  # the loop's timer heap
            return sum(1 for h in scheduled if not h.cancelled() and h._callback == sched._expire_timed_out)

        blocker = asyncio.create_task(sched.score(["blocker"]))
        await wait_entered(scorer)
        calls = [asyncio.create_task(sched.score([f"p{k} {i}" for i in range(256)])) for k in range(3)]
        most = 0
        try:
            for _ in range(30):  # 1.5 s of prompts timing out and held ones released in turn
                await asyncio.sleep(0.05)
                most = max(most, sweep_timers())
        finally:
            scorer.release()
        assert most <= 1
        await asyncio.gather(blocker, *calls, return_exceptions=True)
        await sched.close()

    run(body)


def test_a_cancelled_calls_tokenizing_keeps_others_off_the_tokenizer_until_it_returns() -> None:
    """The scorer's tokenize runs one call at a time: a call cancelled while its prompts tokenise on the
    tokenising thread counted it done at once, and the next call tokenised on the event loop beside it."""

    class SlowTokens(FakeScorer):
        """Tokenising takes 2 us a character; `most`: the most tokenize calls seen running at once."""

        def __init__(self) -> None:
            super().__init__(record=False, delay_s=0.01)  # scoring: on the scoring thread (over inline_us)
            self.running = 0
            self.most = 0
            self.lock = threading.Lock()

        def tokenize(self, texts):  # type: ignore[no-untyped-def]
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                time.sleep(2e-6 * sum(map(len, texts)))
                return super().tokenize(texts)
            finally:
                with self.lock:
                    self.running -= 1

    async def body() -> None:
        scorer = SlowTokens()
        sched = make(scorer, inline_us=5000, max_prompt_chars=20_000)
        for i in range(6):  # the tokenising cost measured: short calls inline, long ones on the thread
            await sched.score([f"warm {i} a b c", f"warm {i} d e"])
        scorer.block()  # the queue stays busy: calls tokenise at admission
        try:
            blocker = asyncio.create_task(sched.score(["blocker"]))
            await wait_entered(scorer)
            big = "word " * 3900
            slow = asyncio.create_task(sched.score([big, big + "x"]))  # about 78 ms on the tokenising thread
            await asyncio.sleep(0.02)
            slow.cancel()
            await asyncio.sleep(0.01)
            short = [asyncio.create_task(sched.score([f"short {k} a", f"short {k} b"])) for k in range(5)]
            await asyncio.sleep(0.2)
        finally:
            scorer.release()
        await asyncio.gather(blocker, slow, *short, return_exceptions=True)
        assert scorer.most == 1
        await sched.close()

    run(body)
