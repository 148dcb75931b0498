"""Admission + fair micro-batch queue between the transport and the scorer.

`Scheduler.score(prompts, routers)` validates each prompt (per-item errors), admits the call or refuses
it at once (lmroute.service.admission: the memory bound `max_queue`, the caller's deadline and the
queue wait at the measured service rate; the call holds its permits until it is answered), tokenises
the prompts (on a helper thread, with the scorer's `tokenize`), queues the call's items as one line of
the fair queue (lmroute.service.batch_queue) and awaits them. The routers arrive resolved by the
transport and are trusted here. Idle fast path: a one-prompt call that finds nothing in flight, with
`max_wait_us` 0, skips tokenising at admission (its batch would hold it alone anyway) and goes straight
to the scorer, which tokenises it there: one thread round trip instead of two.

Batches take the queued calls in turn, up to `call_quantum` prompts of each per round, so a call of
hundreds of prompts shares the scorer with one-prompt calls instead of starving
them, and still gets a steady share itself. A single worker task forms batches: a batch leaves when it
holds `max_batch_size` prompts, or the tokens the scorer clears in `max_batch_ms` at its measured cost
(fewer long prompts than short ones), when adding the next prompt would pass `max_batch_tokens` padded tokens (longest x
count), or when the oldest prompt has waited `max_wait_us`. Each prompt's wait is bounded on its own: from the
moment it enters the queue, by `queue_timeout_ms` and by the caller's deadline; a prompt past either is
dropped before the scorer sees it and gets QueueTimeout or DeadlineExpired as its outcome, while the
rest of its call goes on (the transport decides what that means for the call).
Scoring runs in a dedicated thread so the event loop never blocks; the batch's tokens go to the scorer
with it, and its duration feeds the measured service rate. Drops are counted in `SchedulerStats`. If a
batch raises, its prompts are rescored one by one so only the failing prompt fails. Each batch's queue
waits, padding and scoring time go to `timings` (lmroute.service.stats). `stalled_s` tells a liveness
check how long work has been pending without a batch finishing.

`swap(scorer)` replaces the scorer between batches (a bundle hot swap, lmroute.service.bundle_swap):
calls admitted from then on go to the new scorer, and each call admitted before keeps the scorer it was
admitted with to its end. A call is pinned, not re-tokenised, because more than its tokens came from
that scorer: the transport resolved its router names and a Route call's threshold against that
scorer's catalog, and its answer names that scorer's version; so every prompt of a call is scored by
one bundle and the answer is that bundle's. A batch holding prompts of both scorers (only while the
calls admitted before the swap drain, at most the admitted work, bounded by admission) is scored as
two, each by its own scorer; each `ItemResult.version` names the scorer that scored it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from lmroute.service.admission import Admission, Load, ServiceRate, batch_budget, refusal
from lmroute.service.batch_queue import BatchQueue, Item, ItemResult, State
from lmroute.service.config import BatchPolicy
from lmroute.service.errors import (
    DeadlineExpired,
    Draining,
    InvalidArgument,
    NotReady,
    QueueFull,
    QueueTimeout,
    ScorerFailed,
    ServiceError,
)
from lmroute.service.scorer_api import Scorer, Tokenized
from lmroute.service.stats import ServerTimings

__all__ = ["BatchPolicy", "ItemResult", "Scheduler", "SchedulerStats"]

_log = structlog.get_logger("lmroute.scheduler")

T = TypeVar("T")


@dataclass
class SchedulerStats:
    """Counters since start (read them; the scheduler writes them)."""

    admitted: int = 0
    rejected_queue_full: int = 0  # calls refused: max_queue prompts admitted already
    rejected_overload: int = 0  # calls refused: the queue wait at the measured rate would pass the limit
    rejected_deadline: int = 0  # calls refused: the caller's deadline cannot be met at the measured rate
    invalid: int = 0
    dropped_cancelled: int = 0
    dropped_queue_timeout: int = 0
    dropped_deadline: int = 0
    batches: int = 0
    items_scored: int = 0
    scorer_failures: int = 0
    swaps: int = 0  # scorers replaced (Scheduler.swap)
    largest_batch: int = 0
    batch_size_histogram: collections.Counter[int] = dataclasses.field(
        default_factory=collections.Counter
    )  # size -> batches


class Scheduler(Generic[T]):
    """Admission, queue and batching worker in front of one Scorer. Create, `start()`, `close()`."""

    def __init__(self, scorer: Scorer[T], policy: BatchPolicy | None = None) -> None:
        self.scorer = scorer
        self.policy = policy or BatchPolicy()
        self.stats = SchedulerStats()
        self.timings = ServerTimings()
        self._admission = Admission(self.policy.max_queue)
        self.rate = ServiceRate()
        self._queue: BatchQueue[T] = BatchQueue(on_release=self._start_clock)
        self._running_tokens = 0  # tokens of the batch being scored
        self._last_progress = time.monotonic()  # last batch finished, or work arrived on an idle scheduler
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._score_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lmroute-score")
        self._token_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lmroute-tok")
        # the scorer each queued or running prompt was admitted with (it scores the prompt; see swap)
        self._scorer_of: weakref.WeakKeyDictionary[Item[T], Scorer[T]] = weakref.WeakKeyDictionary()

    @property
    def running(self) -> bool:
        """True between start() and close()."""
        return self._worker is not None and not self._closing

    @property
    def in_flight(self) -> int:
        """Prompts of the calls admitted and not yet answered (queued, being scored, or done and waiting
        for the rest of their call)."""
        return self._admission.in_use

    def start(self) -> None:
        """Start the batching worker on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="lmroute-batcher")

    def swap(self, scorer: Scorer[T], *, keep_rate: bool = False) -> Scorer[T]:
        """Serve the calls admitted from now on with `scorer`; return the scorer it replaces.

        Synchronous, so a caller on the event loop can swap and re-attach the transport's view of the
        routers in one step. The running batch finishes with the scorer it started with; each call
        admitted before keeps its scorer to the end (the module docstring says why); the old scorer is
        released when its last call is answered. The measured rate is kept with `keep_rate` (the caller
        knows the new scorer costs what the old one did: same encoder) and otherwise starts over, so the
        new scorer's cost is measured from its first batch, not mixed with the old one's (until then
        admission applies only its memory bound). Only batches of the current scorer feed the rate."""
        old, self.scorer = self.scorer, scorer
        if not keep_rate:
            self.rate = ServiceRate(self.rate.smoothing)
        self.stats.swaps += 1
        return old

    async def close(self) -> None:
        """Refuse new work, finish what is queued, stop the worker and the threads."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._score_pool.shutdown(wait=True)
        self._token_pool.shutdown(wait=True)

    async def score(
        self,
        prompts: Sequence[str | ServiceError],
        routers: tuple[str, ...] | None = None,
        *,
        timeout_s: float | None = None,
        field: str = "prompts",
        indexed: bool = True,
    ) -> list[ItemResult | ServiceError]:
        """Score each prompt with each of `routers`; one outcome per prompt, in order.

        `routers` are loaded router names, each once (the transport resolved them; not checked here);
        None means every loaded router. A prompt given as a ServiceError (the transport could not
        extract it) or failing validation gets that error back; the others are scored. Raises for the
        whole call: NotReady, Draining, QueueFull (not enough permits for every valid prompt).
        `timeout_s` is the client's remaining deadline.
        """
        if self._closing:
            raise Draining("server is shutting down")
        if self._worker is None:
            raise NotReady("scheduler not started")
        errors: dict[int, ServiceError] = {}
        texts: list[str] = []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, ServiceError):
                err: ServiceError | None = prompt
            else:
                err = self._invalid(f"{field}[{i}]" if indexed else field, prompt)
                if err is None:
                    texts.append(prompt)
            if err is not None:
                self.stats.invalid += 1
                errors[i] = err
        names = self.scorer.router_names if routers is None else routers
        results = iter(await self._submit(texts, names, timeout_s) if texts else [])
        return [errors[i] if i in errors else next(results) for i in range(len(prompts))]

    # -- internals ---------------------------------------------------------------------------------

    def _invalid(self, name: str, text: str) -> InvalidArgument | None:
        if not text.strip():
            return InvalidArgument(f"{name}: empty prompt", reason="EMPTY_PROMPT")
        if len(text) > self.policy.max_prompt_chars:
            return InvalidArgument(
                f"{name}: prompt has {len(text)} characters (limit {self.policy.max_prompt_chars})",
                reason="PROMPT_TOO_LONG",
            )
        return None

    async def _submit(
        self, texts: list[str], routers: tuple[str, ...], timeout_s: float | None
    ) -> list[ItemResult | ServiceError]:
        scorer = self.scorer  # the call's scorer to its end, whatever swap does meanwhile
        load = Load(
            self._admission.in_use,
            self._running_tokens,
            self._queue.line_visits(),
            self.policy.call_quantum,
        )
        refused = refusal(len(texts), timeout_s, load, self.policy, self.rate)
        permit = None if refused is not None else self._admission.try_acquire(len(texts))
        if permit is None:
            self._count_refusal(refused)
            raise refused or QueueFull("queue full")
        if load.in_flight == 0:
            self._last_progress = time.monotonic()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + max(timeout_s, 0.0)
        with permit:
            tokens = await self._tokenize(texts, scorer)
            self.stats.admitted += len(texts)
            items = self._enqueue(texts, routers, tokens, deadline, scorer)
            done = await asyncio.gather(*(it.future for it in items), return_exceptions=True)
        out: list[ItemResult | ServiceError] = []
        for res in done:
            if isinstance(res, (ItemResult, ServiceError)):
                out.append(res)
            elif isinstance(res, asyncio.CancelledError):
                raise res
            else:
                raise ScorerFailed(f"unexpected outcome {res!r}")
        return out

    def _count_refusal(self, refused: ServiceError | None) -> None:
        if isinstance(refused, DeadlineExpired):
            self.stats.rejected_deadline += 1
        elif refused is not None and refused.reason == "OVERLOADED":
            self.stats.rejected_overload += 1
        else:
            self.stats.rejected_queue_full += 1

    async def _tokenize(self, texts: list[str], scorer: Scorer[T]) -> list[Tokenized[T] | None]:
        """`scorer`'s tokens of each text (on the tokenising thread); None for the idle fast path."""
        if self._idle_for_one(len(texts)):
            return [None]  # scored alone at once: the scorer tokenises it
        loop = asyncio.get_running_loop()
        try:
            tokens = await loop.run_in_executor(self._token_pool, scorer.tokenize, texts)
            if len(tokens) != len(texts):
                raise RuntimeError(f"tokenize returned {len(tokens)} rows for {len(texts)} texts")
        except Exception as exc:
            _log.error("tokenize_failed", error=repr(exc))
            raise ScorerFailed(f"tokenizer failed: {exc!r}") from exc
        return list(tokens)

    def _enqueue(
        self,
        texts: list[str],
        routers: tuple[str, ...],
        tokens: list[Tokenized[T] | None],
        deadline: float | None,
        scorer: Scorer[T],
    ) -> list[Item[T]]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        items: list[Item[T]] = []
        for text, tok in zip(texts, tokens, strict=True):
            item: Item[T] = Item(text, routers, tok, loop.create_future(), now, deadline)
            item.future.add_done_callback(functools.partial(self._on_done, item))
            self._scorer_of[item] = scorer
            items.append(item)
        self._queue.append(items, quantum=self.policy.call_quantum)
        self._wakeup.set()
        return items

    def _start_clock(self, item: Item[T]) -> None:
        """The queue released `item`: its wait starts now, bounded by the queue timeout and the deadline."""
        loop = asyncio.get_running_loop()
        now = item.enqueued_at = loop.time()
        limit_s = self.policy.queue_timeout_ms / 1000.0
        by_deadline = item.deadline is not None and item.deadline - now < limit_s
        if by_deadline:
            assert item.deadline is not None
            limit_s = max(item.deadline - now, 0.0)
        item.timer = loop.call_later(limit_s, self._expire, item, by_deadline)
        self._wakeup.set()

    def _idle_for_one(self, n_prompts: int) -> bool:
        """True when a call of `n_prompts` (its permits just taken) would be batched alone right away:
        one prompt, no batch-filling wait, and no other call admitted and unanswered (so the queue is
        empty and the scorer idle). The idle fast path skips tokenising at admission."""
        return n_prompts == 1 and self.policy.max_wait_us == 0 and self._admission.in_use == n_prompts

    def _expire(self, item: Item[T], by_deadline: bool) -> None:
        if item.state is not State.QUEUED or item.future.done():
            return
        if by_deadline:
            item.future.set_exception(DeadlineExpired("deadline passed while queued"))
        else:
            item.future.set_exception(QueueTimeout(f"queued longer than {self.policy.queue_timeout_ms} ms"))

    def _on_done(self, item: Item[T], _future: asyncio.Future[ItemResult]) -> None:
        """Future finished; while still queued that means cancelled or expired: drop it and count why."""
        if item.state is not State.QUEUED:
            return
        self._drop(item)
        self._queue.discard(item)

    def _drop(self, item: Item[T]) -> None:
        item.state = State.DONE
        self._scorer_of.pop(item, None)
        if item.timer is not None:
            item.timer.cancel()
        if item.future.cancelled():
            self.stats.dropped_cancelled += 1
            return
        exc = item.future.exception()
        if isinstance(exc, DeadlineExpired):
            self.stats.dropped_deadline += 1
        elif isinstance(exc, QueueTimeout):
            self.stats.dropped_queue_timeout += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pol = self.policy
        wait_s = pol.max_wait_us / 1e6
        while True:
            if not len(self._queue):
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            oldest = self._queue.oldest_enqueued_at()
            assert oldest is not None
            fill_by = oldest + wait_s
            budget = batch_budget(pol, self.rate)
            while not self._closing and not self._queue.batch_ready(pol.max_batch_size, pol.max_batch_tokens, budget):
                left = fill_by - loop.time()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
            batch, dead = self._queue.next_batch(pol.max_batch_size, pol.max_batch_tokens, budget)
            for it in dead:
                if it.state is State.QUEUED:
                    self._drop(it)
            if batch:
                for it in batch:
                    it.state = State.RUNNING
                    if it.timer is not None:
                        it.timer.cancel()
                self.stats.batches += 1
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
                self.stats.batch_size_histogram[len(batch)] += 1
                self._running_tokens = sum(it.n_tokens or 0 for it in batch)
                await self._score_batch(batch, loop.time())
                self._running_tokens = 0
                self._last_progress = time.monotonic()

    async def _score_batch(self, batch: list[Item[T]], left_at: float) -> None:
        """Score a batch that left the queue at `left_at`, each part with its own scorer; feed the rate
        (current scorer only) and the timings. A helper, so that no reference to a swapped-out scorer
        outlives the batch in the worker's frame."""
        for scorer, part in self._by_scorer(batch):
            t0 = time.perf_counter()
            longest = await self._run_batch(part, scorer, isolate=True)
            took_s = time.perf_counter() - t0
            if scorer is self.scorer:  # a swapped-out scorer's cost says nothing of the new one
                tokens = sum(longest if it.n_tokens is None else it.n_tokens for it in part)
                self.rate.observe(len(part), tokens, took_s)
            self.timings.record_batch([(left_at - it.enqueued_at) * 1e6 for it in part], longest, took_s)

    def _by_scorer(self, batch: list[Item[T]]) -> list[tuple[Scorer[T], list[Item[T]]]]:
        """`batch` split by the scorer each prompt was admitted with, in order of first appearance (one
        part, except while the calls admitted before a swap drain)."""
        parts: dict[int, tuple[Scorer[T], list[Item[T]]]] = {}
        for it in batch:
            scorer = self._scorer_of.get(it, self.scorer)
            parts.setdefault(id(scorer), (scorer, []))[1].append(it)
        return list(parts.values())

    async def _run_batch(self, batch: list[Item[T]], scorer: Scorer[T], *, isolate: bool) -> int:
        """Score `batch` with `scorer` and finish its items; the longest prompt's token count (0 where
        unknown)."""
        loop = asyncio.get_running_loop()
        texts = [it.text for it in batch]
        routers = [it.routers for it in batch]
        tokens = [it.tokens for it in batch]
        version = scorer.version
        try:
            res = await loop.run_in_executor(self._score_pool, scorer.score, texts, routers, tokens)
            if len(res.n_tokens) != len(batch) or len(res.truncated) != len(batch):
                raise RuntimeError(f"scorer returned {len(res.n_tokens)} rows for {len(batch)} texts")
            self.timings.add_encoder_time(res.encoder_s)
        except Exception as exc:  # per-item isolation: rescore one by one
            self.stats.scorer_failures += 1
            if isolate and len(batch) > 1:
                _log.warning("batch_failed_isolating", size=len(batch), error=repr(exc))
                return max([await self._run_batch([it], scorer, isolate=False) for it in batch])
            _log.error("scorer_failed", size=len(batch), error=repr(exc))
            for it in batch:
                self._finish(it, ScorerFailed(f"scorer failed: {exc!r}"))
            return max(it.n_tokens or 0 for it in batch)
        for i, it in enumerate(batch):
            scores = {r: float(res.scores[r][i]) for r in it.routers}
            emb = None if res.embeddings is None else res.embeddings[i]
            self._finish(it, ItemResult(int(res.n_tokens[i]), bool(res.truncated[i]), scores, version, emb))
        self.stats.items_scored += len(batch)
        return int(res.n_tokens.max())

    def _finish(self, item: Item[T], outcome: ItemResult | ServiceError) -> None:
        if item.state is not State.RUNNING:
            return
        item.state = State.DONE
        self._scorer_of.pop(item, None)  # the old scorer of a swap is released with its last item
        if item.future.done():
            return
        if isinstance(outcome, ServiceError):
            item.future.set_exception(outcome)
        else:
            item.future.set_result(outcome)

    def stalled_s(self, now: float) -> float:
        """For how long prompts have been in flight without a batch finishing (0.0 when nothing is in
        flight); `now` is `time.monotonic()`. A liveness check compares it with its limit."""
        if self._admission.in_use == 0:
            return 0.0
        return max(now - self._last_progress, 0.0)
