"""Admission + fair micro-batch queue between the transport and the scorer.

`Scheduler.score(prompts, routers)` validates each prompt (per-item errors), admits the call or refuses
it at once (lmroute.service.admission: the memory bound `max_queue`, the caller's deadline and the
queue wait at the measured service rate, as its tenant's turn in the queue makes it; the call holds its
permits until it is answered), tokenises
the prompts (on a helper thread, with the scorer's `tokenize`), queues the call's items as one line of
the fair queue (lmroute.service.batch_queue) and awaits them. The routers arrive resolved by the
transport and are trusted here. Idle fast path: a one-prompt call that finds nothing in flight, with
`max_wait_us` 0, skips tokenising at admission (its batch would hold it alone anyway) and goes straight
to the scorer, which tokenises it there: one thread round trip instead of two.

Inline steps (`inline_us` > 0, for scorers whose cost is microseconds, where a thread switch costs more
than the work; the default, -1, means AUTO_INLINE_US for a bundle whose encoder is static, else 0; and
`max_batch_size` -1, the default, means AUTO_BATCH_STATIC for such a bundle, so that a whole 64-prompt
Score call is one such step, else AUTO_BATCH; both follow the scorer across a swap): a
call's tokenising, or a batch's scoring, that the measured cost says takes at most `inline_us` runs on
the event loop itself instead of its helper thread; and a call that finds nothing queued and no batch
being scored (with `max_wait_us` 0), whose prompts fit one batch that would run inline, is scored at
once as that batch, without the queue or the batching worker, its prompts tokenised by the scorer in the
same step. Each method of the scorer is still never called twice at once: a step goes inline only while
its helper thread is idle. After an inline batch the worker yields, so the answered calls reply and new
calls are admitted before the next batch.

Batches take the queued calls' tenants in turn and, within a tenant, its calls in turn, up to
`call_quantum` prompts of a call a visit and, with several tenants queued, `call_quantum` prompts of the
measured average length a tenant's visit (`_tenant_quantum`, in work tokens), so a call of hundreds of
prompts shares the scorer with one-prompt calls instead of starving them, and still gets a steady share
itself, and a tenant with many calls queued delays another's by one visit each, not by all of them, and
takes no more a round for sending its prompts in one call or in many. A single worker task forms
batches: a batch leaves when it holds `max_batch_size` prompts, or the work the scorer clears in
`max_batch_ms` at its measured cost (fewer long prompts than short ones, fewer asking for costly
routers), when adding the next prompt would pass `max_batch_tokens` padded tokens (longest x count), or
when the oldest prompt has waited `max_wait_us`. Each prompt's wait is bounded on its own: by
`queue_timeout_ms` from the moment it is released into the queue, and by the caller's deadline; a prompt
past either is dropped before the scorer sees it and gets QueueTimeout or DeadlineExpired as its
outcome, while the rest of its call goes on (the transport decides what that means for the call). Two
kinds of timer watch them, not one per prompt: one per call for its deadline, and one for the whole
queue, set for the prompt released longest ago (released prompts time out in the order they were
released).
Scoring runs in a dedicated thread (or inline, above) so the event loop never waits on a costly
scorer; the batch's tokens go to the scorer with it, and its duration (with the time the scorer reports
for each router) feeds the measured service rate.
Drops are counted in `SchedulerStats`. If a batch raises, its prompts are rescored one by one so only
the failing prompt fails. Each batch's queue waits, padding and scoring time go to `timings`
(lmroute.service.stats). `stalled_s` tells a liveness check how long work has been pending without a
batch finishing.

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
import contextlib
import dataclasses
import functools
import re
import time
import unicodedata
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import structlog

from lmroute.service.admission import Admission, CostLine, Load, ServiceRate, batch_budget, refusal
from lmroute.service.batch_queue import BatchQueue, Item, ItemResult, StageTimes, State
from lmroute.service.config import BatchPolicy
from lmroute.service.cpus import pin_current_thread
from lmroute.service.errors import (
    DEADLINE_SLACK_S,
    DeadlineExpired,
    Draining,
    InvalidArgument,
    NotReady,
    OutOfMemory,
    QueueFull,
    QueueTimeout,
    ScorerFailed,
    ServiceError,
)
from lmroute.service.logs import debug_enabled
from lmroute.service.scorer_api import ScoredBatch, Scorer, Tokenized
from lmroute.service.stats import ServerTimings
from lmroute.service.tenant_counts import (
    ADMITTED,
    REFUSED_DEADLINE,
    REFUSED_OVERLOAD,
    REFUSED_QUEUE_FULL,
    TenantCounts,
    TenantLabels,
)

__all__ = ["BatchPolicy", "ItemResult", "Scheduler", "SchedulerStats", "prompt_problem"]

_log = structlog.get_logger("lmroute.scheduler")

T = TypeVar("T")


# a character that is not whitespace nor one of the common invisible ones (C0/C1 controls, soft hyphen,
# zero-width and direction marks, word joiners, byte-order mark): the first one `_blank` looks at
_SEEN = re.compile(r"[^\s\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202f\u205f-\u206f\ufeff]")


def _blank(text: str) -> bool:
    """Whether `text` holds nothing but separators and control, format, private-use or unassigned
    characters (Unicode categories Z* and C*). A regular expression finds the first other candidate at
    C speed; only a text whose first candidate is itself such a character is read on in Python."""
    found = _SEEN.search(text)
    if found is None:
        return True
    if unicodedata.category(found.group())[0] not in "CZ":
        return False
    return all(unicodedata.category(c)[0] in "CZ" for c in text[found.start() :])


def prompt_problem(name: str, text: str, max_chars: int) -> InvalidArgument | None:
    """Why no router scores the prompt `text` (named `name` in the message): empty or blank (nothing but
    separators and control, format, private-use or unassigned characters: zero-width spaces, NUL, a
    byte-order mark, which the tokenizer drops, leaving the encoder nothing to read), or longer than
    `max_chars` characters; None when it may be scored."""
    if _blank(text):
        return InvalidArgument(f"{name}: empty prompt", reason="EMPTY_PROMPT")
    if len(text) > max_chars:
        return InvalidArgument(
            f"{name}: prompt has {len(text)} characters (limit {max_chars})", reason="PROMPT_TOO_LONG"
        )
    return None


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


class _Ran(NamedTuple):
    """What one scorer run tells the scheduler: the longest prompt's token count (0 where unknown),
    whether it ran inline (on the event loop; only the current scorer, whose cost is measured), and the
    seconds the scorer reports for each router alone (`ScoredBatch.router_s`; empty after a failure)."""

    longest: int
    inline: bool
    router_s: Mapping[str, float] = {}


#: inline_us of `BatchPolicy(inline_us=-1)` (auto) for a scorer whose encoder is static.
AUTO_INLINE_US = 5000
#: max_batch_size of `BatchPolicy(max_batch_size=-1)` (auto) for a scorer whose encoder is static.
AUTO_BATCH_STATIC = 64
#: max_batch_size of `BatchPolicy(max_batch_size=-1)` (auto) for any other scorer.
AUTO_BATCH = 16


class Scheduler(Generic[T]):
    """Admission, queue and batching worker in front of one Scorer. Create, `start()`, `close()`."""

    def __init__(
        self,
        scorer: Scorer[T],
        policy: BatchPolicy | None = None,
        *,
        scoring_cpus: frozenset[int] = frozenset(),
        tenant_labels: TenantLabels | None = None,
    ) -> None:
        """`scoring_cpus`: pin the scoring thread to these CPUs (lmroute.service.cpus; empty: no pinning;
        batches scored inline run on the event loop's thread, not the scoring thread); `tenant_labels`: the
        metrics' tenant labels, shared with the server's other per-tenant families (None: its own)."""
        self.scorer = scorer
        self.policy = policy or BatchPolicy()
        self.stats = SchedulerStats()
        # calls admitted / refused per tenant
        self.tenant_counts = TenantCounts(self.policy.metrics_tenants, labels=tenant_labels)
        self.timings = ServerTimings()
        self._admission = Admission(self.policy.max_queue, recent_s=self.policy.queue_timeout_ms / 1000.0)
        self.rate = ServiceRate()
        self._queue: BatchQueue[T] = BatchQueue(on_release=self._start_clock)
        self._running_work = 0.0  # work tokens of the batch being scored (admission.ServiceRate.weight)
        self._scoring = False  # a batch is being scored
        # released items in release order (their queue timeouts fall due in this order), one timer for the head
        self._released: collections.deque[Item[T]] = collections.deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._last_progress = time.monotonic()  # last batch finished, or work arrived on an idle scheduler
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        self._score_pool = concurrent.futures.ThreadPoolExecutor(
            1,
            thread_name_prefix="lmroute-score",
            initializer=functools.partial(pin_current_thread, scoring_cpus) if scoring_cpus else None,
        )
        self._token_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lmroute-tok")
        self._tokenizing = 0  # calls being tokenised on the tokenising thread
        self._tokenize_s_per_char: float | None = None  # measured cost of tokenize (smoothed like the rate)
        self._tokenize_line = CostLine(self.rate.smoothing)  # tokenize's seconds against a call's characters
        # the scorer each queued or running prompt was admitted with (it scores the prompt; see swap)
        self._scorer_of: weakref.WeakKeyDictionary[Item[T], Scorer[T]] = weakref.WeakKeyDictionary()
        self._follow(scorer)

    def _follow(self, scorer: Scorer[T]) -> None:
        """Resolve the policy's auto settings (-1) for `scorer`: `inline_us` AUTO_INLINE_US and
        `max_batch_size` AUTO_BATCH_STATIC when its encoder is static (its work is microseconds), else 0
        and AUTO_BATCH; `call_quantum`, the most prompts of one call a batch takes per round over the
        queued calls, is a quarter batch."""
        static = scorer.catalog().encoder_kind == "static"
        pol = self.policy
        self.inline_us = pol.inline_us if pol.inline_us >= 0 else AUTO_INLINE_US if static else 0
        self.max_batch_size = (
            pol.max_batch_size if pol.max_batch_size > 0 else AUTO_BATCH_STATIC if static else AUTO_BATCH
        )
        self.call_quantum = max(1, self.max_batch_size // 4)

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
        self._follow(scorer)
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
        if self._sweep is not None:
            self._sweep.cancel()
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
        tenant: str = "",
    ) -> list[ItemResult | ServiceError]:
        """Score each prompt with each of `routers`; one outcome per prompt, in order.

        `routers` are loaded router names, each once (the transport resolved them; not checked here);
        None means every loaded router. A prompt given as a ServiceError (the transport could not
        extract it) or failing validation gets that error back; the others are scored. Raises for the
        whole call: NotReady, Draining, QueueFull (not enough permits for every valid prompt).
        `timeout_s` is the client's remaining deadline; `tenant` the caller's (the queue takes tenants in
        turn, with `tenant_fair_share`; admission charges a call the visits before its turn).
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
                err = prompt_problem(f"{field}[{i}]" if indexed else field, prompt, self.policy.max_prompt_chars)
                if err is None:
                    texts.append(prompt)
            if err is not None:
                self.stats.invalid += 1
                errors[i] = err
        names = self.scorer.router_names if routers is None else routers
        results = iter(await self._submit(texts, names, timeout_s, tenant) if texts else [])
        return [errors[i] if i in errors else next(results) for i in range(len(prompts))]

    # -- internals ---------------------------------------------------------------------------------

    async def _submit(
        self, texts: list[str], routers: tuple[str, ...], timeout_s: float | None, tenant: str
    ) -> list[ItemResult | ServiceError]:
        scorer = self.scorer  # the call's scorer to its end, whatever swap does meanwhile
        loop = asyncio.get_running_loop()
        admitted = loop.time()
        queued_as = tenant if self.policy.tenant_fair_share else ""  # off: one tenant, round robin over calls
        visits = self._queue.visits_ahead(queued_as, self._tenant_quantum(), self.policy.queue_timeout_ms / 1000.0)
        if self.policy.tenant_fair_share:
            self._admission.note(queued_as)
        held, contended = self._admission.held(queued_as), self._admission.contended(queued_as)
        load = Load(self._admission.in_use, self._running_work, visits, self.call_quantum, held, contended)
        weight = self.rate.weight(routers)
        refused = refusal(len(texts), timeout_s, load, self.policy, self.rate, weight)
        permit = None if refused is not None else self._admission.try_acquire(len(texts), queued_as)
        if permit is None:
            self._count_refusal(refused, tenant)
            raise refused or QueueFull("queue full")
        self.tenant_counts.add(tenant, ADMITTED)
        if load.in_flight == 0 and not self._scoring:  # not while a batch is in the scorer: it may be hung
            self._last_progress = time.monotonic()
        if self._may_score_now(texts, weight):
            with permit:
                self.tenant_counts.observe_wait(tenant, 0.0, len(texts))
                return self._score_now(texts, routers, scorer, admitted)
        deadline = None if timeout_s is None else loop.time() + max(timeout_s, 0.0)
        with permit:
            tokens = await self._tokenize(texts, scorer)
            self.stats.admitted += len(texts)
            items = self._enqueue(texts, routers, weight, tokens, deadline, scorer, admitted, queued_as)
            on_deadline = None if deadline is None else loop.call_at(deadline, self._expire_call, items)
            done: list[object]
            try:
                if len(items) == 1:  # the common Route call: no gathering future
                    try:
                        done = [await items[0].future]
                    except Exception as exc:
                        done = [exc]
                else:
                    done = await asyncio.gather(*(it.future for it in items), return_exceptions=True)
            except asyncio.CancelledError:  # the caller went away: its futures are cancelled
                self._forget(items)
                raise
            finally:
                if on_deadline is not None:
                    on_deadline.cancel()
        out: list[ItemResult | ServiceError] = []
        for res in done:
            if isinstance(res, ItemResult):
                if res.stages is not None:
                    self.tenant_counts.observe_wait(tenant, res.stages.left - res.stages.queued)
                out.append(res)
            elif isinstance(res, ServiceError):
                out.append(res)
            elif isinstance(res, asyncio.CancelledError):
                raise res
            else:
                raise ScorerFailed(f"unexpected outcome {res!r}")
        return out

    def _count_refusal(self, refused: ServiceError | None, tenant: str) -> None:
        if isinstance(refused, DeadlineExpired):
            self.stats.rejected_deadline += 1
            self.tenant_counts.add(tenant, REFUSED_DEADLINE)
        elif refused is not None and refused.reason == "OVERLOADED":
            self.stats.rejected_overload += 1
            self.tenant_counts.add(tenant, REFUSED_OVERLOAD)
        else:
            self.stats.rejected_queue_full += 1
            self.tenant_counts.add(tenant, REFUSED_QUEUE_FULL)

    def _may_score_now(self, texts: list[str], weight: float) -> bool:
        """True when a call of `texts` at `weight` may skip the queue: nothing queued, no batch being
        scored, no batch-filling wait, and its prompts fit one batch that the measured cost says runs
        inline (priced at the average prompt's tokens), and its characters tokenised within the inline
        budget too at the measured tokenising cost (a call of very long prompts goes to the threads);
        before tokenising is measured (one-prompt calls to an idle scheduler skip it) only a one-prompt
        call may, so the first bigger call is tokenised on its thread, and measured."""
        return (
            not self._scoring
            and not len(self._queue)
            and self.policy.max_wait_us == 0
            and len(texts) <= self.max_batch_size
            and self._inline_ok(self._batch_seconds([None] * len(texts), weight))
            and self._tokenizing_fits(texts)
        )

    def _tokenizing_fits(self, texts: list[str]) -> bool:
        """Whether tokenising `texts` fits the inline budget at the measured cost; unmeasured, only one
        prompt does (`_may_score_now`)."""
        seconds = self._tokenize_seconds(texts)
        return len(texts) == 1 if seconds is None else self._inline_ok(seconds)

    def _score_now(
        self, texts: list[str], routers: tuple[str, ...], scorer: Scorer[T], admitted: float
    ) -> list[ItemResult | ServiceError]:
        """Score a call at once on the event loop, as one batch that never enters the queue: the caller
        holds its permits, nothing waits ahead of it, and nothing else runs until it is answered (no
        await), so no queue item or future is made for it. The scorer tokenises the prompts in that step.
        Accounted as a batch like any other (stats, timings, the measured rate)."""
        now = asyncio.get_running_loop().time()
        n = len(texts)
        self.stats.admitted += n
        self._count_batch(n)
        self._scoring = True
        try:
            t0, cpu0 = time.perf_counter(), time.thread_time()
            outcomes, ran = self._score_inline(texts, routers, scorer, admitted, now, isolate=True)
            took_s, cpu_s = time.perf_counter() - t0, time.thread_time() - cpu0
        finally:
            self._end_batch()
        # the call's scorer is the current one (no swap can come between admission and here: no await);
        # the rate takes an inline step's own CPU time: its wall time also holds other threads' turns on
        # the interpreter lock (the thread transport's call threads), which price no prompt
        self._observe_rate([routers] * n, [ran.longest] * n, ran, cpu_s)
        self.timings.record_batch([0.0] * n, ran.longest, took_s)
        if debug_enabled():
            _log.debug(
                "batch_scored",
                prompts=n,
                longest_tokens=ran.longest,
                inline=True,
                ms=round(took_s * 1e3, 3),
                waited_ms=0.0,
            )
        return outcomes

    def _score_inline(
        self,
        texts: list[str],
        routers: tuple[str, ...],
        scorer: Scorer[T],
        admitted: float,
        now: float,
        *,
        isolate: bool,
    ) -> tuple[list[ItemResult | ServiceError], _Ran]:
        """`_run_batch` for `_score_now`: the prompts' outcomes, scored on the event loop, a batch that
        raises rescored one prompt at a time (`isolate`), the same errors and logs."""
        n = len(texts)
        try:
            res = scorer.score(texts, [routers] * n, [None] * n)
            self._check_rows(res, n, [routers])
        except Exception as exc:
            if self._isolating(exc, n, isolate):
                each = [self._score_inline([t], routers, scorer, admitted, now, isolate=False) for t in texts]
                return [out for outs, _ in each for out in outs], _Ran(max(r.longest for _, r in each), True)
            return [self._batch_error(exc, n)] * n, _Ran(0, True)
        scored = asyncio.get_running_loop().time()
        results = self._results(res, [routers] * n, scorer.version, [(admitted, now)] * n, now, scored)
        return list(results), _Ran(max(res.n_tokens.tolist()), True, res.router_s)

    def _count_down(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the tokenising thread, once its tokenize returned: count it down on the loop."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped
            loop.call_soon_threadsafe(self._tokenized)

    def _tokenized(self) -> None:
        self._tokenizing -= 1

    async def _tokenize(self, texts: list[str], scorer: Scorer[T]) -> list[Tokenized[T] | None]:
        """`scorer`'s tokens of each text (on the tokenising thread, or inline when cheap); None for the
        idle fast path."""
        if self._idle_for_one(len(texts)):
            return [None]  # scored alone at once: the scorer tokenises it
        loop = asyncio.get_running_loop()
        try:
            if self._tokenizing == 0 and self._inline_ok(self._tokenize_seconds(texts)):
                tokens = self._timed_tokenize(scorer, texts)
            else:
                self._tokenizing += 1
                running = self._token_pool.submit(self._timed_tokenize, scorer, texts)
                # counted down when the thread is done, not when this call stops waiting (a cancelled call's
                # prompts go on tokenising: another call tokenising inline meanwhile would run the scorer's
                # tokenize twice at once)
                running.add_done_callback(lambda _: self._count_down(loop))
                tokens = await asyncio.wrap_future(running)
            if len(tokens) != len(texts):
                raise RuntimeError(f"tokenize returned {len(tokens)} rows for {len(texts)} texts")
        except MemoryError as exc:
            _log.error("tokenize_failed", error=repr(exc), prompts=len(texts), chars=sum(map(len, texts)))
            raise OutOfMemory("out of memory tokenising the call's prompts: send fewer or shorter ones") from exc
        except Exception as exc:
            _log.error("tokenize_failed", error=repr(exc))
            raise ScorerFailed(f"tokenizer failed: {exc!r}") from exc
        return list(tokens)

    def _timed_tokenize(self, scorer: Scorer[T], texts: list[str]) -> list[Tokenized[T]]:
        """`scorer.tokenize(texts)`, its cost per character folded into the measured tokenising cost."""
        t0 = time.perf_counter()
        tokens = scorer.tokenize(texts)
        took, chars = time.perf_counter() - t0, max(sum(map(len, texts)), 1)
        self._tokenize_line.observe(chars, took)
        per_char = took / chars
        old = self._tokenize_s_per_char
        self._tokenize_s_per_char = per_char if old is None else old + self.rate.smoothing * (per_char - old)
        return tokens

    def _tokenize_seconds(self, texts: list[str]) -> float | None:
        """Expected seconds to tokenise `texts`: by the line of the measured calls' seconds against their
        characters (`CostLine`) once it is determined, else at the measured seconds per character; None
        before the first tokenising is measured."""
        chars = sum(map(len, texts))
        line = self._tokenize_line.line()
        if line is not None:
            return line[0] + line[1] * chars
        per_char = self._tokenize_s_per_char
        return None if per_char is None else per_char * chars

    def _batch_seconds(self, work: Sequence[float | None], weight: float) -> float | None:
        """Expected seconds for the current scorer to score prompts of this work (work tokens; None: a
        prompt not tokenised, at the average length and `weight`); None before the first batch is
        measured."""
        if not self.rate.measured:
            return None
        known = sum(w for w in work if w is not None)
        return self.rate.batch_seconds(tokens=known, prompts=sum(w is None for w in work), weight=weight)

    def _inline_ok(self, seconds: float | None) -> bool:
        """True when a step expected to take `seconds` (None: not measured yet) may run on the event loop."""
        return seconds is not None and self.inline_us > 0 and seconds * 1e6 <= self.inline_us

    def _enqueue(
        self,
        texts: list[str],
        routers: tuple[str, ...],
        weight: float,
        tokens: list[Tokenized[T] | None],
        deadline: float | None,
        scorer: Scorer[T],
        admitted: float,
        tenant: str,
    ) -> list[Item[T]]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        items: list[Item[T]] = []
        for text, tok in zip(texts, tokens, strict=True):
            item: Item[T] = Item(
                text,
                routers,
                tok,
                loop.create_future(),
                now,
                deadline,
                admitted_at=admitted,
                queued_at=now,
                weight=weight,
            )
            self._scorer_of[item] = scorer
            items.append(item)
        self._queue.append(items, quantum=self.call_quantum, tenant=tenant)
        self._wakeup.set()
        return items

    def _start_clock(self, item: Item[T]) -> None:
        """The queue released `item`: its queue timeout runs from now (its call's deadline, from admission,
        is watched by one timer per call: `_expire_call`)."""
        item.enqueued_at = asyncio.get_running_loop().time()
        self._released.append(item)
        if self._sweep is None:
            self._arm_sweep()
        self._wakeup.set()

    def _arm_sweep(self) -> None:
        """Forget the released items no longer queued at the head; set the timer for the next timeout (the
        one timer: one armed meanwhile, by a release during a sweep, is replaced, not kept beside it)."""
        if self._sweep is not None:
            self._sweep.cancel()
        released = self._released
        while released and released[0].state is not State.QUEUED:
            released.popleft()
        if released:
            due = released[0].enqueued_at + self.policy.queue_timeout_ms / 1000.0
            self._sweep = asyncio.get_running_loop().call_at(due, self._expire_timed_out)
        else:
            self._sweep = None

    def _expire_timed_out(self) -> None:
        """Fail the released items queued longer than the queue timeout with QueueTimeout."""
        self._sweep = None
        limit_s = self.policy.queue_timeout_ms / 1000.0
        now = asyncio.get_running_loop().time()
        expired: list[Item[T]] = []
        released = self._released
        while released and (released[0].state is not State.QUEUED or released[0].enqueued_at + limit_s <= now):
            item = released.popleft()
            if item.state is State.QUEUED and not item.future.done():
                item.future.set_exception(QueueTimeout(f"queued longer than {self.policy.queue_timeout_ms} ms"))
                expired.append(item)
        self._forget(expired)
        self._arm_sweep()

    def _expire_call(self, items: list[Item[T]]) -> None:
        """The call's deadline passed: fail its prompts still queued (released or held) with DeadlineExpired."""
        expired = [it for it in items if it.state is State.QUEUED and not it.future.done()]
        for item in expired:
            item.future.set_exception(DeadlineExpired("deadline passed while queued"))
        self._forget(expired)

    def _idle_for_one(self, n_prompts: int) -> bool:
        """True when a call of `n_prompts` (its permits just taken) would be batched alone right away:
        one prompt, no batch-filling wait, and no other call admitted and unanswered (so the queue is
        empty and the scorer idle). The idle fast path skips tokenising at admission."""
        return n_prompts == 1 and self.policy.max_wait_us == 0 and self._admission.in_use == n_prompts

    def _forget(self, items: list[Item[T]]) -> None:
        """Drop the items still queued (their futures are cancelled or expired) and count why."""
        for item in items:
            if item.state is State.QUEUED:
                self._drop(item)
                self._queue.discard(item)

    def _drop(self, item: Item[T]) -> None:
        item.state = State.DONE
        self._scorer_of.pop(item, None)
        if item.future.cancelled():  # its caller gave up, or its deadline ended the call first (gRPC's timer)
            if item.deadline is not None and asyncio.get_running_loop().time() >= item.deadline - DEADLINE_SLACK_S:
                self.stats.dropped_deadline += 1
            else:
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
            while not self._closing and not self._queue.batch_ready(self.max_batch_size, pol.max_batch_tokens, budget):
                left = fill_by - loop.time()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
            batch, dead = self._queue.next_batch(
                self.max_batch_size, pol.max_batch_tokens, budget, self._tenant_quantum()
            )
            for it in dead:
                if it.state is State.QUEUED:
                    self._drop(it)
            if batch:
                self._begin(batch)
                try:
                    inline = await self._score_batch(batch, loop.time())
                except Exception as exc:  # a bug past the scorer's checks: this batch fails, the worker goes on
                    _log.exception("batch_failed", prompts=len(batch))
                    error = ScorerFailed(f"scoring failed: {exc!r}")
                    for it in batch:
                        self._finish(it, error)
                    inline = False
                finally:
                    self._end_batch()
                if inline:  # the loop ran nothing meanwhile: let the answered calls reply, new ones come in
                    await asyncio.sleep(0)

    def queued_by_tenant(self) -> list[tuple[str, int]]:
        """Prompts queued per tenant ("" for calls naming none, and for all with `tenant_fair_share` off);
        safe to read from another thread (`BatchQueue.tenant_lengths`)."""
        return self._queue.tenant_lengths()

    def _tenant_quantum(self) -> float | None:
        """Work tokens a tenant's visit to the queue takes: `call_quantum` prompts of the measured average
        length (None before a batch is measured: one call's visit)."""
        per_prompt = self.rate.tokens_per_prompt
        return None if per_prompt is None else self.call_quantum * per_prompt

    def _begin(self, batch: list[Item[T]]) -> None:
        """`batch` leaves the queue for the scorer: mark it running (no longer timed), count it."""
        for it in batch:
            it.state = State.RUNNING
        while self._released and self._released[0].state is not State.QUEUED:
            self._released.popleft()  # batched: no longer timed
        self._count_batch(len(batch))
        self._running_work = sum(it.work or 0.0 for it in batch)
        self._scoring = True

    def _count_batch(self, size: int) -> None:
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, size)
        self.stats.batch_size_histogram[size] += 1

    def _end_batch(self) -> None:
        self._scoring = False
        self._running_work = 0.0
        self._last_progress = time.monotonic()

    async def _score_batch(self, batch: list[Item[T]], left_at: float, *, inline: bool = False) -> bool:
        """Score a batch that left the queue at `left_at`, each part with its own scorer; feed the rate
        (current scorer only) and the timings; True when it ran inline throughout. `inline`: the caller
        found it cheap enough to score on the event loop (`_may_score_now`); else the measured cost decides.
        A helper, so that no reference to a swapped-out scorer outlives the batch in the worker's frame."""
        ran_inline = True
        for scorer, part in self._by_scorer(batch):
            t0, cpu0 = time.perf_counter(), time.thread_time()
            ran = await self._run_batch(part, scorer, isolate=True, inline=inline)
            ran_inline = ran_inline and ran.inline
            took_s, cpu_s = time.perf_counter() - t0, time.thread_time() - cpu0
            if scorer is self.scorer:  # a swapped-out scorer's cost says nothing of the new one
                counts = [ran.longest if it.n_tokens is None else it.n_tokens for it in part]
                # inline: its own CPU time, as in _score_now; on the scoring thread: wall time (the encoder
                # releases the interpreter lock, and its wait for the lock is part of what a batch costs)
                self._observe_rate([it.routers for it in part], counts, ran, cpu_s if ran.inline else took_s)
            self.timings.record_batch([(left_at - it.enqueued_at) * 1e6 for it in part], ran.longest, took_s)
            if debug_enabled():
                _log.debug(
                    "batch_scored",
                    prompts=len(part),
                    longest_tokens=ran.longest,
                    inline=ran.inline,
                    ms=round(took_s * 1e3, 3),
                    waited_ms=round((left_at - min(it.enqueued_at for it in part)) * 1e3, 3),
                )
        return ran_inline

    def _observe_rate(
        self, routers_each: Sequence[tuple[str, ...]], counts: Sequence[int], ran: _Ran, took_s: float
    ) -> None:
        """A scored batch (each prompt's routers and token count) into the measured rate, with each router's
        own seconds (`ran.router_s`) against the tokens of the prompts that asked for it."""
        own = {
            r: (s, sum(n for rs, n in zip(routers_each, counts, strict=True) if r in rs))
            for r, s in ran.router_s.items()
        }
        self.rate.observe(len(counts), sum(counts), took_s, own)

    def _by_scorer(self, batch: list[Item[T]]) -> list[tuple[Scorer[T], list[Item[T]]]]:
        """`batch` split by the scorer each prompt was admitted with, in order of first appearance (one
        part, except while the calls admitted before a swap drain)."""
        parts: dict[int, tuple[Scorer[T], list[Item[T]]]] = {}
        for it in batch:
            scorer = self._scorer_of.get(it, self.scorer)
            parts.setdefault(id(scorer), (scorer, []))[1].append(it)
        return list(parts.values())

    async def _run_batch(self, batch: list[Item[T]], scorer: Scorer[T], *, isolate: bool, inline: bool) -> _Ran:
        """Score `batch` with `scorer` and finish its items; what the run tells the rate (`_Ran`). On the
        event loop when `inline` (the caller decided) or when the measured cost says it is cheap."""
        loop = asyncio.get_running_loop()
        texts = [it.text for it in batch]
        routers = [it.routers for it in batch]
        tokens = [it.tokens for it in batch]
        version = scorer.version
        if not inline:
            work = [it.work for it in batch]
            weight = max(it.weight for it in batch)
            inline = scorer is self.scorer and self._inline_ok(self._batch_seconds(work, weight))
        left = loop.time()
        try:
            if inline:
                res = scorer.score(texts, routers, tokens)
            else:
                res = await loop.run_in_executor(self._score_pool, scorer.score, texts, routers, tokens)
            self._check_rows(res, len(batch), routers)
        except Exception as exc:
            if self._isolating(exc, len(batch), isolate):  # per-item isolation: rescore one by one
                each = [await self._run_batch([it], scorer, isolate=False, inline=False) for it in batch]
                return _Ran(max(r.longest for r in each), all(r.inline for r in each))
            error = self._batch_error(exc, len(batch))
            for it in batch:
                self._finish(it, error)
            return _Ran(max(it.n_tokens or 0 for it in batch), inline)
        scored = loop.time()
        times = [(it.admitted_at, it.queued_at) for it in batch]
        for it, result in zip(batch, self._results(res, routers, version, times, left, scored), strict=True):
            self._finish(it, result)
        return _Ran(max(res.n_tokens.tolist()), inline, res.router_s)

    def _check_rows(self, res: ScoredBatch, n: int, routers_each: Sequence[tuple[str, ...]]) -> None:
        """RuntimeError unless `res` holds `n` rows of everything the batch's items read (their token
        counts, a score column of each router they asked for, embeddings, qualities): a scorer (a plug-in
        kind) that returned fewer failed its batch like a scorer error, where reading past its rows raised
        in the batching worker and ended it for good. Then its encoder time into the timings."""
        if len(res.n_tokens) != n or len(res.truncated) != n:
            raise RuntimeError(f"scorer returned {len(res.n_tokens)} rows for {n} texts")
        for router in {r for routers in routers_each for r in routers}:
            column = res.scores.get(router)
            if column is None or len(column) != n:
                got = "no scores" if column is None else f"{len(column)} scores"
                raise RuntimeError(f"scorer returned {got} of router {router!r} for {n} texts")
        for what, rows in (
            ("embeddings", res.embeddings),
            *(("qualities of " + r, q) for r, q in res.qualities.items()),
        ):
            if rows is not None and len(rows) != n:
                raise RuntimeError(f"scorer returned {len(rows)} rows of {what} for {n} texts")
        self.timings.add_encoder_time(res.encoder_s)

    def _isolating(self, exc: Exception, size: int, isolate: bool) -> bool:
        """Whether a batch of `size` prompts whose scoring raised `exc` is rescored one prompt at a time
        (counted and logged): with `isolate`, more than one prompt, and not the scorer's own error for the
        batch (a ServiceError, e.g. its encoder endpoint down, which every prompt gets)."""
        if not isolate or size < 2 or isinstance(exc, ServiceError):
            return False
        self.stats.scorer_failures += 1
        _log.warning("batch_failed_isolating", size=size, error=repr(exc))
        return True

    def _batch_error(self, exc: Exception, size: int) -> ServiceError:
        """What each prompt of a failed batch gets, counted and logged: the scorer's own error, else
        ScorerFailed."""
        self.stats.scorer_failures += 1
        if isinstance(exc, ServiceError):
            _log.warning("scorer_refused", size=size, error=str(exc), reason=exc.reason)
            return exc
        _log.error("scorer_failed", size=size, error=repr(exc))
        if isinstance(exc, MemoryError):
            return OutOfMemory(f"out of memory scoring a batch of {size} prompts")
        return ScorerFailed(f"scorer failed: {exc!r}")

    def _results(
        self,
        res: ScoredBatch,
        routers_each: Sequence[tuple[str, ...]],
        version: str,
        times: Sequence[tuple[float, float]],
        left: float,
        scored: float,
    ) -> list[ItemResult]:
        """Each prompt's result from its batch's `res` (`times`: when its call was admitted and the prompt
        queued; `left`, `scored`: when the batch left the queue and was scored, loop time)."""
        out = []
        for i, (routers, (admitted, queued)) in enumerate(zip(routers_each, times, strict=True)):
            scores = {r: float(res.scores[r][i]) for r in routers}
            emb = None if res.embeddings is None else res.embeddings[i]
            quals = {r: res.qualities[r][i] for r in routers if r in res.qualities}
            stages = StageTimes(admitted, queued, left, left + res.encoder_s, scored)
            out.append(ItemResult(int(res.n_tokens[i]), bool(res.truncated[i]), scores, version, emb, quals, stages))
        self.stats.items_scored += len(out)
        return out

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
        """For how long prompts have been in flight, or a batch in the scorer, without a batch finishing
        (0.0 when neither); `now` is `time.monotonic()`. A liveness check compares it with its limit. A
        batch in the scorer counts whether or not its callers still wait: callers whose deadlines pass give
        their permits back, and a hung scorer went unseen while calls came one at a time."""
        if self._admission.in_use == 0 and not self._scoring:
            return 0.0
        return max(now - self._last_progress, 0.0)
