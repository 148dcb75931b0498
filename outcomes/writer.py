"""StoreWriter: the serving process's one thread that writes to the outcome store.

Two kinds of work reach it, from the event loop or any thread, without blocking the caller:

    record(decisions)      write-behind: the answer has already gone out; the decisions are written with
                           the next commit. When the store falls behind by `max_pending_decisions`, or
                           the decisions waiting hold `max_pending_bytes` (their prompt texts and
                           embeddings: benchmarks/store_backlog_memory.py), new decisions are dropped and
                           counted, never queued without bound.
    submit(outcomes)       a Future of one Verdict per outcome, resolved only after the commit that made
                           them durable (Feedback acknowledges on that); a Future of an error when the
                           commit failed, so nothing unwritten is acknowledged.

Reporters share the writer: the outcomes waiting hold at most `max_pending_outcomes` and
`max_pending_bytes`, and no reporter (the tenant the outcomes are recorded for) more than
`max_pending_per_reporter` of them (half the bound by default) nor half the bytes, so one flooding the
store leaves room for the others; a call `reserve`s its room before its outcomes are built, so a call
beyond the bounds is refused for the cost of a check. A round takes the small calls (at most
SMALL_CALL outcomes) of the reporters in turn, oldest first, or one big call alone (a big call waiting
gets every other round), so a flood's backlog delays another reporter's small acknowledgment by the
round in progress and its own (under a flood of 100 concurrent calls of 1,024 outcomes on 2 cores,
hundreds of milliseconds; it was seconds: benchmarks/results/feedback_flood).

Group commit: each round takes everything pending (up to `max_batch` outcomes, and `max_batch` decisions
in a round of decisions alone; a round with outcomes takes every queued decision, a backlog after a
store outage included), writes the decisions and then the outcomes in one transaction, commits once and
resolves the round's futures. A decision recorded before an outcome that names it is therefore written
in the same or an earlier commit. A future its caller cancelled (a Feedback call past its deadline) is
left as it is; its outcomes are written all the same.
A round of decisions alone waits until the oldest of them has waited `decision_linger_s` (or `max_batch`
are pending): a commit costs the process far more than a row (SQLite: ~130 us of CPU against ~15 us a
decision: benchmarks/ghz/results/store_cost), so one a decision would take a large share of a busy
server's core. An outcome starts a round at once, so Feedback's acknowledgment never waits for the linger.
On a failed commit the round's outcome futures fail, its decisions go back to the front of the queue and
the store is reopened (a lost PostgreSQL connection) after a pause. With `retention_ms` the writer
deletes what is older, and with `max_decisions` what is older than the newest `max_decisions` decisions
(both: the later cutoff), once every `prune_interval_s`, `prune_batch` rows of each table a transaction
with the rounds that come meanwhile written between them: deleting an hour of a busy server's decisions
at once would hold Feedback's acknowledgments for seconds (100,000 decisions: 1.2 s on SQLite; the
measurement is described in docs/OUTCOMES.md, retention). A prune that deleted rows then empties SQLite's
log (the zeroed pages are in it), without waiting: while another process holds a read transaction open
(an export command, a backup), it tries again every CHECKPOINT_RETRY_S between rounds until the log is
emptied, instead of holding every acknowledgment for that reader (up to the 30 s busy timeout).
"""

from __future__ import annotations

import collections
import ctypes
import functools
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

import structlog

from lmroute.outcomes.records import Decision, Outcome, Verdict
from lmroute.outcomes.store import OutcomeStore, StoreError

__all__ = ["StoreWriter", "WriterFull", "WriterStats"]

_log = structlog.get_logger("lmroute.outcomes")


SMALL_CALL = 64
"""A Feedback call of at most this many outcomes is small: small calls share a round, a bigger one has a
round to itself (`StoreWriter._round_of_calls`)."""

LOG_EVERY_S = 10.0
"""At most one `store_write_failed` / `store_reopen_failed` line this often (each says how many failures
were not logged since the last)."""

TRIM_AFTER_BYTES = 32 << 20
"""A backlog that held at least this much (`held_bytes`) and has drained to a sixteenth of it hands the C
heap's free pages back to the system (`release_free_heap`): glibc keeps freed memory in its arenas, so a
drained 256 MiB backlog left the process 284 MiB larger, 115 MiB after the release
(benchmarks/results/store_backlog_memory)."""

CHECKPOINT_RETRY_S = 1.0
"""After a prune, how often the writer tries again to empty SQLite's log while a reader keeps it from that."""

ITEM_BYTES = 2048
"""What a queued decision or outcome holds besides its prompt text and embedding (its object, fields,
scores and queue slot), rounded up: counted with it, 60,000 waiting decisions came within 5 % of the RSS
they took (benchmarks/results/store_backlog_memory)."""


def held_bytes(item: Decision | Outcome) -> int:
    """The memory `item` holds while it waits for the store, about: ITEM_BYTES, its prompt text (as Python
    stores it: 1-4 bytes a character) and its embedding."""
    text = item.prompt_text
    embedding = item.embedding if isinstance(item, Decision) else None
    # never raises: a record the store will refuse is still queued, and refused there by itself
    return ITEM_BYTES + (sys.getsizeof(text) if text is not None else 0) + int(getattr(embedding, "nbytes", 0))


class WriterFull(RuntimeError):
    """More outcomes are waiting for the store than the writer holds; nothing of the call was queued."""


@dataclass
class WriterStats:
    """Counters of one writer (read from any thread; each is written by one side only)."""

    commits: int = 0
    failed_commits: int = 0
    decisions_written: int = 0
    decisions_dropped: int = 0
    outcomes_written: int = 0
    pruned_decisions: int = 0
    pruned_outcomes: int = 0
    heap_releases: int = 0  # drained backlogs after which the C heap's free pages went back to the system


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    return trim


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the system (glibc's `malloc_trim(0)`; the call lets go of
    the interpreter lock). False where the C library has no such call (musl, macOS)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@dataclass(frozen=True)
class _Job:
    """One submitted call: its outcomes, the Future its caller waits on, and their reporter."""

    outcomes: list[Outcome]
    future: Future[list[Verdict]]
    reporter: str
    nbytes: int  # held_bytes of its outcomes


def _resolve(
    future: Future[list[Verdict]], verdicts: list[Verdict] | None = None, error: Exception | None = None
) -> None:
    """A call's Future given its verdicts or its error, unless its caller cancelled it (a Feedback call
    past its deadline): what it submitted is written all the same, and nobody waits for the answer."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(verdicts if verdicts is not None else [])
    except InvalidStateError:  # cancelled by the caller
        pass


_TRANSIENT = frozenset({"OperationalError", "InterfaceError"})  # sqlite3 and psycopg: locked, busy, disk, connection
_FOR_GOOD = frozenset({"DataError", "IntegrityError", "ProgrammingError", "NotSupportedError"})


def refused_for_good(exc: BaseException) -> bool:
    """Whether a failed write failed on its data, so the same row fails again (a value the database
    cannot hold, a row that cannot be built), not on the database's state (a lock, a full disk, a lost
    connection), which a later round may not meet. By the driver's error classes (their DB-API names)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__
    for err in chain:
        names = {t.__name__ for t in type(err).__mro__}
        if names & _TRANSIENT or isinstance(err, OSError):
            return False
        if names & _FOR_GOOD:
            return True
    return not any(isinstance(err, StoreError) for err in chain)  # no database error: the row itself


class StoreWriter:
    """One writer thread over one store (see the module docstring)."""

    def __init__(
        self,
        open_store: Callable[[], OutcomeStore],
        *,
        max_pending_decisions: int = 100_000,
        max_pending_outcomes: int = 100_000,
        max_pending_per_reporter: int | None = None,
        max_pending_bytes: int = 256 << 20,
        max_batch: int = 4096,
        decision_linger_s: float = 0.05,
        retention_ms: int = 0,
        max_decisions: int = 0,
        prune_interval_s: float = 3600.0,
        prune_batch: int = 5000,
        retry_pause_s: float = 1.0,
        own_decisions_only: bool = False,
    ) -> None:
        self._open = open_store
        self.max_pending_decisions = max_pending_decisions
        self.max_pending_outcomes = max_pending_outcomes
        self.max_pending_per_reporter = (
            max(1, max_pending_outcomes // 2) if max_pending_per_reporter is None else max_pending_per_reporter
        )
        self.max_pending_bytes = max_pending_bytes  # of decisions, and again of outcomes (half a reporter)
        self.max_batch = max_batch
        self.decision_linger_s = decision_linger_s
        self.retention_ms = retention_ms
        self.max_decisions = max_decisions
        self.prune_interval_s = prune_interval_s
        self.prune_batch = prune_batch
        self.retry_pause_s = retry_pause_s
        self.own_decisions_only = own_decisions_only  # OutcomeStore.write's: a tenant reports on its own only
        self.stats = WriterStats()
        self._cond = threading.Condition()
        # the decisions waiting, each with its held_bytes (counted once, when queued), and their sum
        self._decisions: collections.deque[tuple[Decision, int]] = collections.deque()
        self._decision_bytes = 0
        self._decisions_since = 0.0  # monotonic time the oldest pending decision was queued
        self._jobs: dict[str, collections.deque[_Job]] = {}  # reporter -> its calls, oldest first
        self._turns: collections.deque[str] = collections.deque()  # reporters with calls, whose turn first
        self._pending_outcomes = 0
        self._pending_by_reporter: collections.Counter[str] = collections.Counter()
        self._outcome_bytes = 0
        self._bytes_by_reporter: collections.Counter[str] = collections.Counter()
        self._reserved: collections.Counter[str] = collections.Counter()  # reporter -> room held (`reserve`)
        self._reserved_total = 0
        self._big_turn = False  # the next round goes to a big call waiting (the last one took small calls)
        self._closing = False
        self._thread: threading.Thread | None = None
        self._store: OutcomeStore | None = None
        self._next_prune = 0.0
        self._prune_before: int | None = None  # a prune in progress: its cutoff (Unix ms)
        self._pruned = [0, 0]  # decisions, outcomes deleted by the prune in progress
        self._checkpoint_at: float | None = None  # monotonic time to try again to empty the log after a prune
        self._checkpoint_since = 0.0  # monotonic time of the first try that a reader kept from emptying it
        self._writing_since: float | None = None  # monotonic start of the store write in progress
        self._quiet_until = 0.0  # failed writes and reopens logged at most once per LOG_EVERY_S
        self._unlogged = 0  # failures since the last line
        self._peak_bytes = 0  # the most the waiting decisions and outcomes held since the heap was last released

    # ---- callers ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store (errors raise here, at startup) and start the thread."""
        self._store = self._open()
        self._next_prune = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="lmroute-store-writer", daemon=True)
        self._thread.start()

    def record(self, decisions: Sequence[Decision]) -> None:
        """Queue decisions for the next commit; drops (and counts) what does not fit."""
        if not decisions:
            return
        sizes = [held_bytes(d) for d in decisions]
        with self._cond:
            room = max(self.max_pending_decisions - len(self._decisions), 0)
            fit, total = 0, self._decision_bytes
            while fit < min(room, len(decisions)) and total + sizes[fit] <= self.max_pending_bytes:
                total += sizes[fit]
                fit += 1
            if fit < len(decisions):
                self.stats.decisions_dropped += len(decisions) - fit
                decisions = decisions[:fit]
            if not decisions:
                return
            self._decision_bytes = total
            self._peak_bytes = max(self._peak_bytes, total + self._outcome_bytes)
            was_empty = not self._decisions
            if was_empty:
                self._decisions_since = time.monotonic()
            self._decisions.extend(zip(decisions, sizes[: len(decisions)], strict=True))
            # the thread waits on the oldest decision's linger: wake it only to start that wait or to
            # write a full batch, not once a decision
            if was_empty or len(self._decisions) >= self.max_batch:
                self._cond.notify()

    def reserve(self, reporter: str, n: int) -> None:
        """Hold room for a call of at least `n` outcomes of `reporter` while its caller builds them: WriterFull
        now, before any is built, when they would not fit (other calls' held room counted), so a refused
        call costs the event loop and the writer nothing but this check (built and checked in full first, a
        flood's refused calls took seconds of another tenant's acknowledgment). `submit(..., reserved=n)`
        takes the room over; `release` gives it back when nothing is submitted."""
        with self._cond:
            self._check_room(reporter, n)
            self._reserved[reporter] += n
            self._reserved_total += n

    def _check_room(self, reporter: str, n: int) -> None:
        """WriterFull unless `n` more outcomes of `reporter` fit the count bounds, the room other calls
        hold counted (under the lock)."""
        waiting = self._pending_outcomes + self._reserved_total
        if waiting + n > self.max_pending_outcomes:
            raise WriterFull(f"{waiting} outcomes waiting for the store (limit {self.max_pending_outcomes})")
        held = self._pending_by_reporter[reporter] + self._reserved[reporter]
        if held + n > self.max_pending_per_reporter:
            raise WriterFull(
                f"{held} outcomes of this tenant waiting for the store (limit {self.max_pending_per_reporter} a tenant)"
            )

    def release(self, reporter: str, n: int) -> None:
        """Give back the room `reserve(reporter, n)` held (its call submits nothing)."""
        with self._cond:
            self._release(reporter, n)

    def _release(self, reporter: str, n: int) -> None:
        if n:
            self._reserved[reporter] -= n
            self._reserved_total -= n
            if self._reserved[reporter] <= 0:
                del self._reserved[reporter]

    def submit(self, outcomes: Sequence[Outcome], *, reserved: int = 0) -> Future[list[Verdict]]:
        """Queue one call's outcomes (all of one reporter: the first one's counts); the Future resolves
        after their commit. WriterFull when the writer holds `max_pending_outcomes` already, or their
        reporter `max_pending_per_reporter` (other calls' reserved room counted); RuntimeError after close.
        `reserved`: the room this call's `reserve` held, taken over here whatever the outcome."""
        fut: Future[list[Verdict]] = Future()
        reporter = outcomes[0].reporter if outcomes else ""
        nbytes = sum(held_bytes(o) for o in outcomes)
        with self._cond:
            self._release(reporter, reserved)
            if self._closing:
                raise RuntimeError("outcome store writer is closed")
            self._check_room(reporter, len(outcomes))
            # the first call always fits: one call's outcomes are bounded by the request's own limits
            if self._outcome_bytes and self._outcome_bytes + nbytes > self.max_pending_bytes:
                raise WriterFull(
                    f"{_mib(self._outcome_bytes)} of outcomes waiting for the store (limit "
                    f"{_mib(self.max_pending_bytes)})"
                )
            tenant_bytes = self._bytes_by_reporter[reporter]
            if tenant_bytes and tenant_bytes + nbytes > self.max_pending_bytes // 2:
                raise WriterFull(
                    f"{_mib(tenant_bytes)} of this tenant's outcomes waiting for the store (limit "
                    f"{_mib(self.max_pending_bytes // 2)} a tenant)"
                )
            if reporter not in self._jobs:
                self._jobs[reporter] = collections.deque()
                self._turns.append(reporter)
            self._jobs[reporter].append(_Job(list(outcomes), fut, reporter, nbytes))
            self._pending_outcomes += len(outcomes)
            self._pending_by_reporter[reporter] += len(outcomes)
            self._outcome_bytes += nbytes
            self._peak_bytes = max(self._peak_bytes, self._decision_bytes + self._outcome_bytes)
            self._bytes_by_reporter[reporter] += nbytes
            self._cond.notify()
        return fut

    @property
    def pending(self) -> tuple[int, int]:
        """(decisions, outcomes) waiting for a commit."""
        with self._cond:
            return len(self._decisions), self._pending_outcomes

    @property
    def pending_bytes(self) -> tuple[int, int]:
        """The memory the waiting (decisions, outcomes) hold, as `held_bytes` counts it."""
        with self._cond:
            return self._decision_bytes, self._outcome_bytes

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is pending (within `timeout_s`), stop the thread, close the store."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                _log.error("store_writer_stuck", pending=self.pending)
                return
        if self._store is not None:
            self._store.close()

    # ---- the thread ---------------------------------------------------------------------------------------

    def _take(self) -> tuple[list[Decision], list[_Job]] | None:
        """The next round's work (None: closing and nothing left): the decisions, then the reporters'
        calls in turn, one each, while they fit in `max_batch` outcomes (the first always). Decisions
        alone wait for their linger, `max_batch` a round; a round with outcomes takes every decision
        queued; ([], []) when a prune is due first."""
        with self._cond:
            while not self._turns and not self._closing:
                now = time.monotonic()
                due = math.inf
                if self._decisions:
                    due = self._decisions_since + self.decision_linger_s
                    if now >= due or len(self._decisions) >= self.max_batch:
                        break
                if self._prunes:
                    if self._prune_before is not None or now >= self._next_prune:
                        return [], []  # a prune's next batch first
                    due = min(due, self._next_prune)
                if self._checkpoint_at is not None:
                    if now >= self._checkpoint_at:
                        return [], []  # the log a reader kept from being emptied, again
                    due = min(due, self._checkpoint_at)
                self._cond.wait(None if due == math.inf else due - now)
            if not self._decisions and not self._turns:
                return None  # closing, nothing left
            # a round of outcomes takes every decision queued before them, however many a backlog holds
            # (after a store outage): an outcome must find the decision it names in the same commit
            n_decisions = len(self._decisions) if self._turns else min(self.max_batch, len(self._decisions))
            taken = [self._decisions.popleft() for _ in range(n_decisions)]
            self._decision_bytes -= sum(size for _, size in taken)
            decisions = [d for d, _ in taken]
            # what is left keeps the time of the oldest taken (no later than its own): written at its linger
            return decisions, self._round_of_calls()

    def _round_of_calls(self) -> list[_Job]:
        """The next round's calls: small calls (at most SMALL_CALL outcomes) of the reporters in turn, up to
        `max_batch` outcomes, or one big call alone; a big call waiting gets every other round. So a
        one-outcome acknowledgment waits for at most the round in progress and its own, never in a commit
        of a flood's thousands of outcomes (with both in one round it waited seconds under a flood of 100
        concurrent calls of 1,024: benchmarks/results/feedback_flood)."""
        big = next((r for r in self._turns if len(self._jobs[r][0].outcomes) > SMALL_CALL), None)
        small_waiting = any(len(self._jobs[r][0].outcomes) <= SMALL_CALL for r in self._turns)
        if big is not None and (self._big_turn or not small_waiting):
            self._big_turn = False
            return [self._next_call(big)]
        jobs: list[_Job] = []
        n = passed = 0
        while self._turns and passed < len(self._turns):
            reporter = self._turns[0]
            size = len(self._jobs[reporter][0].outcomes)
            if size > SMALL_CALL:  # a big call waits for a round of its own
                self._turns.rotate(-1)
                passed += 1
                continue
            if jobs and n + size > self.max_batch:
                break
            jobs.append(self._next_call(reporter))
            n += size
            passed = 0
        self._big_turn = True
        return jobs

    def _next_call(self, reporter: str) -> _Job:
        """`reporter`'s oldest call, taken; the reporter's next call comes after the other reporters' turns."""
        queue = self._jobs[reporter]
        job = queue.popleft()
        self._turns.remove(reporter)
        if queue:
            self._turns.append(reporter)
        else:
            del self._jobs[reporter]
        return job

    def _run(self) -> None:
        while True:
            try:
                work = self._take()
                if work is None:
                    return
                decisions, jobs = work
                self._writing_since = time.monotonic()
                try:
                    if decisions or jobs:
                        self._write(decisions, jobs)
                        self._release_after_backlog()
                    if self._prunes and (self._prune_before is not None or time.monotonic() >= self._next_prune):
                        self._prune_step()
                    if self._checkpoint_at is not None and time.monotonic() >= self._checkpoint_at:
                        self._empty_log()
                finally:
                    self._writing_since = None
            except Exception:  # a bug: logged, and the writer goes on (a dead writer acknowledges nothing)
                _log.exception("store_writer_error")
                with self._cond:
                    if not self._closing:
                        self._cond.wait(self.retry_pause_s)

    def _release_after_backlog(self) -> None:
        """After a backlog of at least TRIM_AFTER_BYTES has drained to a sixteenth of its peak, hand the
        heap's free pages back (`release_free_heap`), once a backlog."""
        with self._cond:
            peak = self._peak_bytes
            if peak < TRIM_AFTER_BYTES or (self._decision_bytes + self._outcome_bytes) * 16 > peak:
                return
            self._peak_bytes = 0
        t0 = time.perf_counter()
        if release_free_heap():
            self.stats.heap_releases += 1
            _log.info(
                "store_backlog_heap_released",
                peak_mib=round(peak / 2**20, 1),
                ms=round(1e3 * (time.perf_counter() - t0), 1),
            )

    def _settled(self, jobs: list[_Job]) -> None:
        """The jobs' outcomes leave the pending counts (committed, or failed with their call)."""
        with self._cond:
            for job in jobs:
                self._pending_outcomes -= len(job.outcomes)
                self._pending_by_reporter[job.reporter] -= len(job.outcomes)
                if self._pending_by_reporter[job.reporter] <= 0:
                    del self._pending_by_reporter[job.reporter]
                self._outcome_bytes -= job.nbytes
                self._bytes_by_reporter[job.reporter] -= job.nbytes
                if self._bytes_by_reporter[job.reporter] <= 0:
                    del self._bytes_by_reporter[job.reporter]

    def _write(self, decisions: list[Decision], jobs: list[_Job]) -> None:
        outcomes = [o for job in jobs for o in job.outcomes]
        try:
            store = self._store if self._store is not None else self._open()
            self._store = store
            verdicts = store.write(decisions, outcomes, own_decisions_only=self.own_decisions_only)
        except Exception as exc:
            self.stats.failed_commits += 1
            self._log_failure("store_write_failed", decisions=len(decisions), outcomes=len(outcomes), error=repr(exc))
            if decisions and not self._closing:
                decisions = self._without_refused(decisions)
            back = [(d, held_bytes(d)) for d in decisions]
            with self._cond:
                if self._closing:  # no later round: say what is lost instead of retrying forever
                    self.stats.decisions_dropped += len(decisions)
                else:  # back at the front, over the byte bound if need be: they were taken in once
                    self._decisions.extendleft(reversed(back))
                    self._decision_bytes += sum(size for _, size in back)
                    self._decisions_since = -math.inf  # older than any linger: retried at the next round
            self._settled(jobs)
            for job in jobs:
                _resolve(job.future, error=exc)
            self._reopen()
            return
        self.stats.commits += 1
        self.stats.decisions_written += len(decisions)
        self.stats.outcomes_written += sum(v is Verdict.STORED for v in verdicts)
        self._settled(jobs)
        start = 0
        for job in jobs:
            _resolve(job.future, verdicts[start : start + len(job.outcomes)])
            start += len(job.outcomes)

    def _without_refused(self, decisions: list[Decision]) -> list[Decision]:
        """After a failed round, while the store still answers (so the data failed, not the connection):
        the decisions written in parts, halved until a part is written or is one decision; one the store
        refuses is dropped, counted and logged, so that a row it cannot hold does not fail every later
        round, Feedback with it. A refused row among n costs about 2 log2(n) commits, not n. What is left
        when the store stops answering (or fails for now: a lock, a connection) is returned, in order, to
        be retried."""
        try:
            store = self._open()
        except Exception:
            return decisions  # the store is away: retried as they are
        try:
            if not store.answers():
                return decisions
            parts = [decisions]  # a stack: the next part to write last
            while parts:
                part = parts.pop()
                try:
                    store.write(part, [])
                    self.stats.decisions_written += len(part)
                except Exception as exc:
                    if not refused_for_good(exc) or not store.answers():  # a lock, a connection: retried
                        return [d for left in [part, *reversed(parts)] for d in left]
                    if len(part) > 1:
                        half = len(part) // 2
                        parts += [part[half:], part[:half]]
                        continue
                    self.stats.decisions_dropped += 1
                    _log.error("store_decision_dropped", decision_id=part[0].decision_id, error=repr(exc))
            return []
        finally:
            store.close()

    def _reopen(self) -> None:
        """After a failed commit: pause, then reopen the store (the next round retries)."""
        if self._store is not None:
            self._store.close()
            self._store = None
        with self._cond:
            if not self._closing:
                self._cond.wait(self.retry_pause_s)
        try:
            self._store = self._open()
        except Exception as exc:
            self._log_failure("store_reopen_failed", error=repr(exc))
            if self._closing:
                with self._cond:  # nothing can write them: counted and logged, not looped on
                    if self._decisions:
                        self.stats.decisions_dropped += len(self._decisions)
                        _log.error("store_decisions_lost_at_close", decisions=len(self._decisions))
                    self._decisions.clear()
                    self._decision_bytes = 0

    def _log_failure(self, event: str, **fields: object) -> None:
        """A failed write or reopen, logged at most once per LOG_EVERY_S with the count of those not logged
        since (an outage fails a round per Feedback call: ~90 lines a second a replica were logged)."""
        now = time.monotonic()
        if now < self._quiet_until:
            self._unlogged += 1
            return
        _log.error(event, **fields, failures_not_logged=self._unlogged)
        self._quiet_until, self._unlogged = now + LOG_EVERY_S, 0

    @property
    def writing_s(self) -> float:
        """Seconds the store write in progress has taken so far (0.0 when none is): a store that hangs
        (a PostgreSQL server stopped but its host up, which the TCP keepalives do not find) shows here."""
        since = self._writing_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def _prunes(self) -> bool:
        return self.retention_ms > 0 or self.max_decisions > 0

    def _cutoff(self, store: OutcomeStore) -> int | None:
        """A new prune's cutoff (Unix ms): the later of the retention's and the decision cap's; None: none.

        The cap's cutoff is the time of the newest decisions kept; one later than this clock says the
        clock was set back after they were made (an NTP step, a VM restored), and every decision made
        since, stamped earlier, would be deleted with its acknowledged outcomes: the cap waits until the
        clock has passed it (logged, `store_cap_waits_for_clock`)."""
        now_ms = int(time.time() * 1000)
        cutoffs = [now_ms - self.retention_ms] if self.retention_ms else []
        if self.max_decisions:
            try:
                newest = store.newest_cutoff(self.max_decisions)
            except Exception as exc:
                _log.error("store_prune_failed", error=repr(exc))
                newest = None
            if newest is not None and newest > now_ms:
                _log.warning("store_cap_waits_for_clock", cutoff_ms=newest, now_ms=now_ms)
            elif newest is not None:
                cutoffs.append(newest)
        return max(cutoffs, default=None)

    def _prune_step(self) -> None:
        """One batch of the prune in progress (a new one when none is): at most `prune_batch` rows of each
        table older than the cutoff, in a transaction of its own."""
        if self._prune_before is None:
            self._next_prune = time.monotonic() + self.prune_interval_s
            if self._store is None:
                return
            self._prune_before = self._cutoff(self._store)
            self._pruned = [0, 0]
            if self._prune_before is None:
                return
        elif self._store is None:
            self._prune_before = None
            return
        try:
            n_dec, n_out = self._store.prune(self._prune_before, limit=self.prune_batch)
        except Exception as exc:
            _log.error("store_prune_failed", error=repr(exc))
            self._prune_before = None
            return
        self.stats.pruned_decisions += n_dec
        self.stats.pruned_outcomes += n_out
        self._pruned = [self._pruned[0] + n_dec, self._pruned[1] + n_out]
        if n_dec < self.prune_batch and n_out < self.prune_batch:  # nothing older is left
            self._prune_before = None
            if any(self._pruned):
                # SQLite: the deleted rows stay in the database file's pages until the log is copied back
                # into it (the zeroed pages are in the log): copy it now, not at some later checkpoint
                self._checkpoint_since = time.monotonic()
                emptied = self._empty_log()
                _log.info("store_pruned", decisions=self._pruned[0], outcomes=self._pruned[1], log_emptied=emptied)

    def _empty_log(self) -> bool:
        """Copy SQLite's log into the database and empty it, without waiting for readers (a reader's open
        transaction would hold this thread, and every acknowledgment behind it, up to the busy timeout):
        when one keeps it from that, try again CHECKPOINT_RETRY_S later, between rounds, until it is
        emptied. Whether it was emptied now."""
        store = self._store
        if store is None:  # reopened at the next round: tried again after it
            self._checkpoint_at = time.monotonic() + CHECKPOINT_RETRY_S
            return False
        try:
            emptied = store.checkpoint(wait=False)
        except Exception as exc:
            _log.warning("store_checkpoint_failed", error=repr(exc))
            self._checkpoint_at = None  # the next prune that deletes rows tries again
            return False
        if not emptied:
            self._checkpoint_at = time.monotonic() + CHECKPOINT_RETRY_S
        elif self._checkpoint_at is not None:  # a retry emptied it
            self._checkpoint_at = None
            _log.info("store_log_emptied", after_s=round(time.monotonic() - self._checkpoint_since, 1))
        return emptied


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
