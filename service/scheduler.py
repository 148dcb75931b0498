"""Admission + micro-batch queue between the transport and the scorer.

`Scheduler.score(prompts, routers)` validates each prompt (per-item errors), takes one admission permit
per valid prompt (all or none: QueueFull), counts its tokens (on a helper thread), queues one `Item`
with one asyncio Future per prompt, and awaits them. Idle fast path: a one-prompt call that finds the
queue empty and the scorer idle, with `max_wait_us` 0, skips the count (its batch would hold it alone
anyway) and goes straight to the scorer, which tokenises it there: one thread round trip instead of two.
A single worker task forms batches: a batch leaves when it holds
`max_batch_size` prompts, when adding the next prompt would pass `max_batch_tokens` padded tokens
(longest x count), or when the oldest prompt has waited `max_wait_us`. Scoring runs in a dedicated
thread so the event loop never blocks. Prompts cancelled by the client, past their deadline or past
`queue_timeout_ms` are dropped before the scorer sees them, and counted in `SchedulerStats`.
If a batch raises, its prompts are rescored one by one so only the failing prompt fails.
Each batch's queue waits, padding and scoring time go to `timings` (lmroute.service.stats).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from lmroute.service.batch_queue import DONE as _DONE
from lmroute.service.batch_queue import QUEUED as _QUEUED
from lmroute.service.batch_queue import RUNNING as _RUNNING
from lmroute.service.batch_queue import Admission, BatchQueue, Item
from lmroute.service.errors import (
    DeadlineExpired,
    Draining,
    InvalidArgument,
    NotFound,
    NotReady,
    QueueFull,
    QueueTimeout,
    ScorerFailed,
    ServiceError,
)
from lmroute.service.scorer_api import Scorer
from lmroute.service.stats import ServerTimings

__all__ = ["BatchPolicy", "ItemResult", "Scheduler", "SchedulerStats"]

_log = structlog.get_logger("lmroute.scheduler")


@dataclass(frozen=True, kw_only=True)
class BatchPolicy:
    """Limits of the queue and of one batch (see ServiceConfig for the meaning of each)."""

    max_batch_size: int = 16
    max_wait_us: int = 0
    max_batch_tokens: int = 16384
    max_queue: int = 64
    queue_timeout_ms: int = 1000
    max_prompt_chars: int = 20000

    @classmethod
    def from_config(cls, cfg: Any) -> BatchPolicy:
        """Pick the batch settings out of a ServiceConfig (or anything with the same attributes)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class ItemResult:
    """The scores of one prompt: router -> strong-win probability, plus token facts."""

    n_tokens: int
    truncated: bool
    scores: dict[str, float]


@dataclass
class SchedulerStats:
    """Counters since start (read them; the scheduler writes them)."""

    admitted: int = 0
    rejected_queue_full: int = 0
    invalid: int = 0
    dropped_cancelled: int = 0
    dropped_queue_timeout: int = 0
    dropped_deadline: int = 0
    batches: int = 0
    items_scored: int = 0
    scorer_failures: int = 0
    largest_batch: int = 0
    batch_size_histogram: collections.Counter[int] = dataclasses.field(
        default_factory=collections.Counter
    )  # size -> batches


class Scheduler:
    """Admission, queue and batching worker in front of one Scorer. Create, `start()`, `close()`."""

    def __init__(self, scorer: Scorer, policy: BatchPolicy | None = None) -> None:
        self.scorer = scorer
        self.policy = policy or BatchPolicy()
        self.stats = SchedulerStats()
        self.timings = ServerTimings()
        self._admission = Admission(self.policy.max_queue)
        self._queue = BatchQueue()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._score_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lmroute-score")
        self._token_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lmroute-tok")

    @property
    def running(self) -> bool:
        """True between start() and close()."""
        return self._worker is not None and not self._closing

    @property
    def in_flight(self) -> int:
        """Prompts admitted and not finished (queued or being scored)."""
        return self._admission.in_use

    def start(self) -> None:
        """Start the batching worker on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="lmroute-batcher")

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
        routers: Sequence[str] = (),
        *,
        timeout_s: float | None = None,
        field: str = "prompts",
        indexed: bool = True,
    ) -> list[ItemResult | ServiceError]:
        """Score each prompt with each router (empty = all); one outcome per prompt, in order.

        A prompt given as a ServiceError (the transport could not extract it) or failing validation
        gets that error back; the others are scored. Raises for the whole call: NotReady, Draining,
        NotFound (unknown router), QueueFull (not enough permits for every valid prompt).
        `timeout_s` is the client's remaining deadline.
        """
        if self._closing:
            raise Draining("server is shutting down")
        if self._worker is None:
            raise NotReady("scheduler not started")
        names = self._resolve_routers(routers)
        outcomes: list[ItemResult | ServiceError | None] = [None] * len(prompts)
        valid: list[int] = []
        for i, prompt in enumerate(prompts):
            name = f"{field}[{i}]" if indexed else field
            err = prompt if isinstance(prompt, ServiceError) else self._invalid(name, prompt)
            if err is None:
                valid.append(i)
            else:
                self.stats.invalid += 1
                outcomes[i] = err
        if valid:
            texts = [prompts[i] for i in valid]
            results = await self._submit(texts, names, timeout_s)  # type: ignore[arg-type]
            for i, res in zip(valid, results, strict=True):
                outcomes[i] = res
        return outcomes  # type: ignore[return-value]

    # -- internals ---------------------------------------------------------------------------------

    def _resolve_routers(self, routers: Sequence[str]) -> tuple[str, ...]:
        known = self.scorer.router_names
        if not routers:
            return known
        for j, name in enumerate(routers):
            if name not in known:
                raise NotFound(f"routers[{j}]: unknown router {name!r} (loaded: {', '.join(known)})")
        return tuple(dict.fromkeys(routers))

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
        if not self._admission.try_acquire(len(texts)):
            self.stats.rejected_queue_full += 1
            raise QueueFull(
                f"queue full: {self._admission.in_use} of {self._admission.limit} prompts admitted, "
                f"{len(texts)} more asked"
            )
        loop = asyncio.get_running_loop()
        try:
            if self._idle_for_one(len(texts)):
                counts: list[int | None] = [None]  # scored alone at once: no count needed
            else:
                counts = list(await loop.run_in_executor(self._token_pool, self.scorer.count_tokens, texts))
        except BaseException as exc:
            self._admission.release(len(texts))
            if isinstance(exc, Exception):
                _log.error("count_tokens_failed", error=repr(exc))
                raise ScorerFailed(f"tokenizer failed: {exc!r}") from exc
            raise
        self.stats.admitted += len(texts)
        now = loop.time()
        queue_s = self.policy.queue_timeout_ms / 1000.0
        limit_s = queue_s if timeout_s is None else min(queue_s, max(timeout_s, 0.0))
        by_deadline = timeout_s is not None and timeout_s < queue_s
        items = []
        for text, n_tok in zip(texts, counts, strict=True):
            item = Item(text, routers, n_tok, loop.create_future(), now)
            item.future.add_done_callback(functools.partial(self._on_done_future, item))
            item.timer = loop.call_later(limit_s, self._expire, item, by_deadline)
            self._queue.append(item)
            items.append(item)
        self._wakeup.set()
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

    def _idle_for_one(self, n_prompts: int) -> bool:
        """True when a call of `n_prompts` (its permits just taken) would be batched alone right away:
        one prompt, no batch-filling wait, and no other prompt admitted and unfinished (so the queue is
        empty and the scorer idle). The idle fast path skips its token count."""
        return n_prompts == 1 and self.policy.max_wait_us == 0 and self._admission.in_use == n_prompts

    def _expire(self, item: Item, by_deadline: bool) -> None:
        if item.state != _QUEUED or item.future.done():
            return
        if by_deadline:
            item.future.set_exception(DeadlineExpired("deadline passed while queued"))
        else:
            item.future.set_exception(QueueTimeout(f"queued longer than {self.policy.queue_timeout_ms} ms"))

    def _on_done_future(self, item: Item, _future: asyncio.Future[ItemResult]) -> None:
        self._on_done(item)

    def _on_done(self, item: Item) -> None:
        """Future finished while queued (cancelled or expired): drop it and count why."""
        if item.state != _QUEUED:
            return
        self._drop(item)
        self._queue.discard(item)

    def _drop(self, item: Item) -> None:
        item.state = _DONE
        if item.timer is not None:
            item.timer.cancel()
        self._admission.release(1)
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
            while not self._closing and not self._queue.batch_ready(pol.max_batch_size, pol.max_batch_tokens):
                left = fill_by - loop.time()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
            batch, dead = self._queue.next_batch(pol.max_batch_size, pol.max_batch_tokens)
            for it in dead:
                if it.state == _QUEUED:
                    self._drop(it)
            if batch:
                for it in batch:
                    it.state = _RUNNING
                    if it.timer is not None:
                        it.timer.cancel()
                self.stats.batches += 1
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
                self.stats.batch_size_histogram[len(batch)] += 1
                left_at, t0 = loop.time(), time.perf_counter()
                await self._run_batch(batch, isolate=True)
                self.timings.record_batch(
                    [(left_at - it.enqueued_at) * 1e6 for it in batch],
                    max(it.n_tokens or 0 for it in batch),
                    time.perf_counter() - t0,
                )

    async def _run_batch(self, batch: list[Item], *, isolate: bool) -> None:
        loop = asyncio.get_running_loop()
        texts = [it.text for it in batch]
        routers = [it.routers for it in batch]
        try:
            res = await loop.run_in_executor(self._score_pool, self.scorer.score, texts, routers)
            if len(res.n_tokens) != len(batch) or len(res.truncated) != len(batch):
                raise RuntimeError(f"scorer returned {len(res.n_tokens)} rows for {len(batch)} texts")
            self.timings.add_encoder_time(res.encoder_s)
        except Exception as exc:  # per-item isolation: rescore one by one
            self.stats.scorer_failures += 1
            if isolate and len(batch) > 1:
                _log.warning("batch_failed_isolating", size=len(batch), error=repr(exc))
                for it in batch:
                    await self._run_batch([it], isolate=False)
                return
            _log.error("scorer_failed", size=len(batch), error=repr(exc))
            for it in batch:
                self._finish(it, ScorerFailed(f"scorer failed: {exc!r}"))
            return
        for i, it in enumerate(batch):
            scores = {r: float(res.scores[r][i]) for r in it.routers}
            it.n_tokens = int(res.n_tokens[i])  # known now even when admission did not count it
            self._finish(it, ItemResult(it.n_tokens, bool(res.truncated[i]), scores))
        self.stats.items_scored += len(batch)

    def _finish(self, item: Item, outcome: ItemResult | ServiceError) -> None:
        if item.state != _RUNNING:
            return
        item.state = _DONE
        self._admission.release(1)
        if item.future.done():
            return
        if isinstance(outcome, ServiceError):
            item.future.set_exception(outcome)
        else:
            item.future.set_result(outcome)
