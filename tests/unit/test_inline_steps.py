"""Inline steps (`BatchPolicy.inline_us`): cheap tokenising and scoring on the event loop, an idle
one-prompt call scored without the queue. Which thread ran each scorer method is recorded; the outcomes
must be those of the helper threads: same scores, per-item errors, refusals, pinning across a swap."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import pytest

from lmroute.service.config import BatchPolicy
from lmroute.service.errors import ConfigError, QueueFull, ScorerFailed
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.scheduler import AUTO_BATCH, AUTO_BATCH_STATIC, AUTO_INLINE_US, ItemResult, Scheduler
from lmroute.service.scorer_api import RouterSets, ScoredBatch, Tokenized


class ThreadRecordingScorer(FakeScorer):
    """A FakeScorer that notes on which thread each tokenize and score call ran."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.tokenize_threads: list[int] = []
        self.score_threads: list[int] = []

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized[int]]:
        self.tokenize_threads.append(threading.get_ident())
        return super().tokenize(texts)

    def score(self, texts: Sequence[str], routers: RouterSets, tokens: Sequence[Tokenized[int] | None]) -> ScoredBatch:
        self.score_threads.append(threading.get_ident())
        return super().score(texts, routers, tokens)


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(fn(), 20))


def make(scorer: FakeScorer, **kw: int) -> Scheduler[int]:
    base = dict(max_batch_size=8, max_wait_us=0, max_queue=256, queue_timeout_ms=5000, max_prompt_chars=1000)
    base.update(kw)
    sched: Scheduler[int] = Scheduler(scorer, BatchPolicy(**base))
    sched.start()
    return sched


PROMPTS = [f"prompt number {i} " + "word " * (i % 7) for i in range(40)]


async def measured(sched: Scheduler[int]) -> None:
    """Score one call of several prompts on the helper threads, so both costs are measured."""
    outs = await sched.score(PROMPTS[:4])
    assert all(isinstance(o, ItemResult) for o in outs)


def test_inline_off_keeps_every_scorer_call_off_the_event_loop() -> None:
    async def body() -> None:
        scorer = ThreadRecordingScorer()
        sched = make(scorer)  # inline_us auto: 0 for a scorer whose encoder is not static
        loop_thread = threading.get_ident()
        await measured(sched)
        await sched.score(["alone"])
        await asyncio.gather(*(sched.score([p]) for p in PROMPTS))
        assert loop_thread not in scorer.score_threads
        assert loop_thread not in scorer.tokenize_threads
        await sched.close()

    run(body)


def test_cheap_steps_run_inline_once_measured_and_score_as_on_the_threads() -> None:
    async def body() -> None:
        scorer = ThreadRecordingScorer()
        sched = make(scorer, inline_us=10_000_000)
        loop_thread = threading.get_ident()
        await measured(sched)
        assert loop_thread not in scorer.score_threads  # unmeasured: helper threads
        assert loop_thread not in scorer.tokenize_threads
        [alone] = await sched.score(["alone on an idle scheduler"])
        assert scorer.score_threads[-1] == loop_thread  # the idle fast path, scored at once
        assert scorer.scored_without_tokens[-1] == "alone on an idle scheduler"
        batches = sched.stats.batches
        outs = await asyncio.gather(*(sched.score([p], ("mf",)) for p in PROMPTS))
        many = await sched.score(PROMPTS, ("mf", "random"))
        assert sched.stats.batches > batches
        assert loop_thread in scorer.tokenize_threads
        assert set(scorer.score_threads[-3:]) == {loop_thread}
        assert isinstance(alone, ItemResult)
        assert alone.scores["mf"] == FakeScorer.score_one("mf", "alone on an idle scheduler")
        for text, [one], out in zip(PROMPTS, outs, many, strict=True):  # batched == single
            assert isinstance(one, ItemResult) and isinstance(out, ItemResult)
            assert one.scores["mf"] == out.scores["mf"] == FakeScorer.score_one("mf", text)
            assert out.scores["random"] == FakeScorer.score_one("random", text)
            assert one.n_tokens == out.n_tokens == len(text.split()) + 2
        assert sched.in_flight == 0
        await sched.close()

    run(body)


def test_a_call_finding_the_scheduler_idle_is_one_batch_tokenised_by_the_scorer() -> None:
    """Nothing queued, nothing scoring: a call that fits one batch skips the queue and the tokenising
    step (the scorer tokenises its prompts while scoring them); a larger one is queued as usual."""

    async def body() -> None:
        scorer = ThreadRecordingScorer()
        sched = make(scorer, inline_us=10_000_000, max_batch_size=8)
        await measured(sched)
        counted, calls = len(scorer.counted), len(scorer.calls)
        outs = await sched.score(PROMPTS[:8], ("mf",))
        assert scorer.calls[calls:] == [PROMPTS[:8]]  # one batch
        assert len(scorer.counted) == counted  # no tokenising step
        assert scorer.scored_without_tokens[-8:] == PROMPTS[:8]
        assert scorer.score_threads[-1] == threading.get_ident()
        for text, out in zip(PROMPTS, outs, strict=False):
            assert isinstance(out, ItemResult)
            assert out.scores["mf"] == FakeScorer.score_one("mf", text)
            assert out.n_tokens == len(text.split()) + 2
        await sched.score(PROMPTS[:9], ("mf",))
        assert scorer.counted[counted:] == PROMPTS[:9]  # over one batch: tokenised at admission, queued
        assert sched.in_flight == 0
        await sched.close()

    run(body)


def test_a_call_scored_at_once_is_accounted_as_a_batch() -> None:
    """The idle path makes no queue item, but its batch counts like one: stats, the timings' histograms
    (no queue wait, also in its tenant's waits) and the measured rate (here its prompts are longer than
    any before, so the measured tokens per prompt must rise)."""

    async def body() -> None:
        scorer = ThreadRecordingScorer()
        sched = make(scorer, inline_us=10_000_000)
        await measured(sched)
        long_prompts = [f"a long prompt {i} " + "word " * 60 for i in range(3)]
        for n in (1, 3):
            batches, items, admitted = sched.stats.batches, sched.stats.items_scored, sched.stats.admitted
            score_ms, waits = sched.timings.score_ms.count, sched.timings.queue_wait_us.count
            waited = sched.timings.queue_wait_us.total
            per_prompt, counted = sched.rate.tokens_per_prompt, len(scorer.counted)
            assert per_prompt is not None
            tenant_waits = dict(sched.tenant_counts.wait_snapshot())
            before = tenant_waits["team"].count if "team" in tenant_waits else 0
            outs = await sched.score(long_prompts[:n], ("mf",), tenant="team")
            assert all(isinstance(o, ItemResult) for o in outs)
            assert scorer.score_threads[-1] == threading.get_ident()  # on the event loop: at once
            team = dict(sched.tenant_counts.wait_snapshot())["team"]  # its tenant's waits too, all 0
            assert team.count == before + n and team.total == 0.0
            assert len(scorer.counted) == counted  # not tokenised apart
            assert sched.stats.batches == batches + 1 and sched.stats.batch_size_histogram[n] >= 1
            assert sched.stats.items_scored == items + n and sched.stats.admitted == admitted + n
            assert sched.timings.score_ms.count == score_ms + 1
            assert sched.timings.queue_wait_us.count == waits + n and sched.timings.queue_wait_us.total == waited
            assert sched.rate.tokens_per_prompt is not None and sched.rate.tokens_per_prompt > per_prompt
        assert sched.in_flight == 0
        await sched.close()

    run(body)


def test_a_step_over_the_limit_stays_on_its_thread() -> None:
    async def body() -> None:
        scorer = ThreadRecordingScorer(delay_s=0.005)  # 5 ms a batch: over a 100 us limit
        sched = make(scorer, inline_us=100)
        loop_thread = threading.get_ident()
        await measured(sched)
        await sched.score(["alone"])
        await asyncio.gather(*(sched.score([p]) for p in PROMPTS[:8]))
        assert loop_thread not in scorer.score_threads
        await sched.close()

    run(body)


def test_inline_batch_isolates_a_failing_prompt() -> None:
    async def body() -> None:
        scorer = ThreadRecordingScorer()
        sched = make(scorer, inline_us=10_000_000)
        await measured(sched)
        prompts = [*PROMPTS[:7], "this one <fail>s", *PROMPTS[7:15]]
        outs = await sched.score(prompts)
        assert scorer.score_threads[-1] == threading.get_ident()
        assert [i for i, o in enumerate(outs) if isinstance(o, ScorerFailed)] == [7]
        assert sum(isinstance(o, ItemResult) for o in outs) == 15
        [alone] = await sched.score(["alone <fail>"])  # the idle fast path fails alone too
        assert isinstance(alone, ScorerFailed)
        assert sched.stats.scorer_failures >= 2 and sched.in_flight == 0
        await sched.close()

    run(body)


def test_admission_still_refuses_with_inline_steps() -> None:
    async def body() -> None:
        scorer = ThreadRecordingScorer()
        sched = make(scorer, inline_us=10_000_000, max_queue=8)
        await measured(sched)
        with pytest.raises(QueueFull):
            await sched.score(PROMPTS[:9])
        assert sched.stats.rejected_queue_full == 1 and sched.in_flight == 0
        await sched.close()

    run(body)


def test_calls_admitted_before_a_swap_keep_their_scorer_and_the_new_one_goes_inline_once_measured() -> None:
    """The old scorer (150 ms a batch: over the 30 ms limit, so on the scoring thread, where it can be
    held) scores the calls admitted before the swap; the new one (microseconds, far under the limit even
    on a loaded machine), unmeasured at first, on the thread too, then inline."""

    async def body() -> None:
        old = ThreadRecordingScorer(version="old", delay_s=0.15)
        new = ThreadRecordingScorer(version="new")
        sched = make(old, inline_us=30_000)
        loop_thread = threading.get_ident()
        await measured(sched)
        old.entered.clear()
        old.block()
        pending = asyncio.create_task(sched.score(PROMPTS[:2]))
        assert await asyncio.to_thread(old.entered.wait, 10)
        queued = asyncio.create_task(sched.score(PROMPTS[2:4]))
        await asyncio.sleep(0.01)
        sched.swap(new)
        fresh = asyncio.create_task(sched.score(PROMPTS[4:6]))
        await asyncio.sleep(0.01)
        old.release()
        outs = [*await pending, *await queued, *await fresh]
        versions = [o.version for o in outs if isinstance(o, ItemResult)]
        assert versions == ["old"] * 4 + ["new"] * 2
        assert loop_thread not in old.score_threads
        assert new.score_threads and new.score_threads[0] != loop_thread  # unmeasured: the thread
        for _ in range(3):
            await sched.score(PROMPTS[6:10])
        assert new.score_threads[-1] == loop_thread
        await sched.close()

    run(body)


def test_inline_us_is_a_setting_auto_by_default() -> None:
    assert BatchPolicy(inline_us=500).inline_us == 500
    assert BatchPolicy().inline_us == -1
    with pytest.raises(ConfigError, match=r"inline_us: must be >= -1 \(got -2\)"):
        BatchPolicy(inline_us=-2)


def test_auto_inlines_a_static_encoder_only() -> None:
    """-1 (the default) follows the scorer's encoder kind, across swaps too: inline steps and the batch
    size (and with it a call's quarter-batch share per round)."""

    async def body() -> None:
        static = ThreadRecordingScorer(encoder_kind="static")
        sched = make(static, inline_us=-1, max_batch_size=-1)
        assert (sched.inline_us, sched.max_batch_size, sched.call_quantum) == (AUTO_INLINE_US, AUTO_BATCH_STATIC, 16)
        sched.swap(FakeScorer())  # an onnx encoder: never inline, 16 a batch
        assert (sched.inline_us, sched.max_batch_size, sched.call_quantum) == (0, AUTO_BATCH, 4)
        sched.swap(static)
        assert (sched.inline_us, sched.max_batch_size) == (AUTO_INLINE_US, AUTO_BATCH_STATIC)
        await sched.close()
        given = make(static, inline_us=300, max_batch_size=5)  # set values are kept whatever the encoder
        assert (given.inline_us, given.max_batch_size, given.call_quantum) == (300, 5, 1)
        await given.close()

    run(body)


def steady(sched: Scheduler[int]) -> None:
    """The cost the scheduler has measured, made that of a steady run (64-prompt batches of 128 tokens
    in 1 ms), whatever the first timed batch took on a busy machine."""
    for _ in range(30):
        sched.rate.observe(64, 128, 1e-3)


def test_a_64_prompt_call_to_an_idle_static_scorer_is_one_inline_batch() -> None:
    """With the defaults, a whole 64-prompt Score call on a static encoder is one batch scored on the
    event loop once the cost is measured (its prompts tokenised in that step); with an onnx encoder it
    is four batches of 16 on the scoring thread."""

    async def body() -> None:
        loop_thread = threading.get_ident()
        prompts = [f"prompt {i} " + "word " * (i % 5) for i in range(64)]
        for kind, batches, on_loop in (("static", [64], True), ("onnx", [16, 16, 16, 16], False)):
            scorer = ThreadRecordingScorer(encoder_kind=kind)
            sched = make(scorer, inline_us=-1, max_batch_size=-1)
            await sched.score(prompts)  # measures the cost, on the helper threads
            steady(sched)
            scorer.score_threads.clear()
            before = sched.stats.batch_size_histogram.copy()
            outs = await sched.score(prompts)
            assert all(isinstance(o, ItemResult) for o in outs)
            assert sorted((sched.stats.batch_size_histogram - before).elements()) == batches
            assert (loop_thread in scorer.score_threads) is on_loop
            await sched.close()

    run(body)


class SlowTokenizingScorer(ThreadRecordingScorer):
    """Tokenising costs 0.2 us a character (a long prompt costs what its text does, not its kept tokens)."""

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized[int]]:
        deadline = time.perf_counter() + 2e-7 * sum(map(len, texts))
        while time.perf_counter() < deadline:
            pass
        return super().tokenize(texts)


def test_a_call_of_very_long_prompts_is_not_scored_on_the_event_loop() -> None:
    """An idle call whose characters would take longer than the inline budget to tokenise is not scored
    at once on the event loop, even where its prompt count fits one inline batch: its prompts are
    tokenised on the tokenising thread; so is a call of several prompts before tokenising is measured."""

    async def body() -> None:
        loop_thread = threading.get_ident()
        scorer = SlowTokenizingScorer(encoder_kind="static")
        sched = make(scorer, inline_us=-1, max_batch_size=-1)
        short = [f"short {i}" for i in range(64)]
        await sched.score(["alone"])  # the idle one-prompt path: scoring measured, tokenising not
        steady(sched)
        scorer.tokenize_threads.clear()
        await sched.score(short)  # tokenising unmeasured: not at once, tokenised (and measured) on its thread
        assert scorer.tokenize_threads and loop_thread not in scorer.tokenize_threads
        long = [f"long {i} " + "x" * 900 for i in range(64)]  # ~58,000 characters: ~12 ms to tokenise
        for prompts, at_once in ((short, True), (long, False)):
            scorer.score_threads.clear()
            scorer.tokenize_threads.clear()
            outs = await sched.score(prompts)
            assert all(isinstance(o, ItemResult) for o in outs)
            if at_once:  # scored without the queue, tokenised inside that step on the event loop
                assert scorer.score_threads == [loop_thread] and scorer.tokenize_threads == []
            else:  # tokenised on the tokenising thread (its cheap scoring may still run inline)
                assert scorer.tokenize_threads and loop_thread not in scorer.tokenize_threads
        await sched.close()

    run(body)
