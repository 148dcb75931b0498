"""The queue's own state: one `Item` per admitted prompt, one `CallLine` per queued call, the fair
`BatchQueue`.

An `Item` carries what its prompt needs on the way to the scorer: the text, the routers asked for
(resolved by the transport), the scorer's tokens from admission (`Tokenized`; None for the scheduler's
idle fast path, which leaves tokenising to the scorer), its call's deadline and the Future its caller
awaits.

`BatchQueue` has two verbs, `append` (one call's items, as a line of its tenant's) and `next_batch`.
Calls share the scorer fairly, by rounds, tenants first: `next_batch` visits the tenants in turn and,
within a tenant, its calls in turn, starting with those that have waited longest since their last visit.
A call's visit takes up to `quantum` prompts of it (in the call's order); a tenant's visit goes on over
its calls until it has taken `tenant_quantum` work tokens (deficit round robin: it takes a prompt while
the prompt's work fits what is left, and always at least one; what a visit leaves over, or takes beyond
its quantum, is carried to the tenant's next visit, which a tenant still in debt skips), then the next
tenant's begins; all within a prompt-count limit, a padded-token budget (longest
prompt x prompts) and a token budget (the sum of the prompts' work tokens: the cost the scheduler allows
a batch). A one-prompt call therefore joins the next batch or the one after, even while a call of
hundreds is being scored; a long call still gets `quantum` prompts a round however many short calls
there are, plus whatever room the short ones leave; and a tenant gets about the same work a round as any
other with work queued, whether it sends one call of many prompts or many calls of one, and waits for
one visit of each other tenant, however many calls those have queued. With one tenant queued this is
round robin over its calls. `visits_ahead` says what a new call of a tenant waits for before its first
visit (what admission charges it). A line's first `quantum` prompts are *released* (waiting for a batch)
and the rest held; when one leaves, the next is released, and the queue calls `on_release(item)` (the
scheduler starts the item's wait clock there). `next_batch` also returns the dead items (cancelled or
expired futures) it met, for the scheduler to count. An item without tokens always forms a batch of its
own. No asyncio scheduling happens here (see lmroute.service.scheduler).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from lmroute.service.scorer_api import Tokenized

__all__ = ["BatchQueue", "CallLine", "Item", "ItemResult", "State"]

T = TypeVar("T")

_RECENT_TENANTS = 256  # tenants remembered as recently seen (visits_ahead); the oldest forgotten first


class State(enum.Enum):
    """Where an item is: waiting in the queue, in the scorer, or finished (scored, failed or dropped)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(frozen=True)
class StageTimes:
    """When one prompt went through each stage, event-loop seconds (`loop.time()`): its call entered
    admission, it entered the queue, its batch left the queue, the batch's encoder finished (its start
    plus the encoder's seconds), the batch was scored. What the trace spans are made of
    (lmroute.service.tracing)."""

    admitted: float
    queued: float
    left: float
    encoded: float
    scored: float


@dataclass(frozen=True)
class ItemResult:
    """The scores of one prompt: router -> strong-win probability, plus token facts, the version of the
    artifacts that scored it and, when the batch ran the encoder, the prompt's embedding (what the
    outcome store keeps with the decision)."""

    n_tokens: int
    truncated: bool
    scores: dict[str, float]
    version: str = ""
    embedding: npt.NDArray[np.float32] | None = field(default=None, compare=False, repr=False)
    # router -> each model's predicted quality (RouterDescription.models order), for the prompt's
    # routers that predict them
    qualities: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict, compare=False, repr=False)
    stages: StageTimes | None = field(default=None, compare=False, repr=False)


@dataclass(eq=False)
class Item(Generic[T]):
    """One admitted prompt on its way through the queue to the scorer."""

    text: str
    routers: tuple[str, ...]
    tokens: Tokenized[T] | None  # None: not tokenised at admission (it is scored alone)
    future: asyncio.Future[ItemResult]
    enqueued_at: float  # admission time; set again when the item is released into the queue
    deadline: float | None = None  # the caller's deadline (event-loop time), None without one
    admitted_at: float = 0.0  # when its call entered admission (event-loop time)
    queued_at: float = 0.0  # when it entered the queue (enqueued_at moves on when the queue releases it)
    state: State = State.QUEUED
    line: CallLine[T] | None = None  # its call's line while queued
    weight: float = 1.0  # work tokens per token at its routers' measured cost (admission.ServiceRate.weight)

    @property
    def n_tokens(self) -> int | None:
        """Token count from admission; None when admission did not tokenise it."""
        return None if self.tokens is None else self.tokens.n_tokens

    @property
    def work(self) -> float | None:
        """Work tokens (token count x weight); None when admission did not tokenise it."""
        return None if self.tokens is None else self.tokens.n_tokens * self.weight


class CallLine(Generic[T]):
    """The queued items of one call, in order: `released` may join a batch, `held` wait their turn;
    `tenant`: the caller's (the queue takes tenants in turn)."""

    def __init__(self, key: int, quantum: int, tenant: str = "") -> None:
        self.key = key
        self.quantum = quantum  # prompts released at once, and taken at most per visit
        self.tenant = tenant
        self.released: collections.deque[Item[T]] = collections.deque()
        self.held: collections.deque[Item[T]] = collections.deque()

    def __len__(self) -> int:
        return len(self.released) + len(self.held)


class BatchQueue(Generic[T]):
    """Queued items as one line per call, lines grouped by tenant, batched round robin over the tenants
    and, within each, over its calls; two verbs: `append` and `next_batch`."""

    def __init__(
        self, on_release: Callable[[Item[T]], None] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # tenant -> its lines by key; insertion orders = the round-robin orders (the first is next)
        self._tenants: dict[str, dict[int, CallLine[T]]] = {}
        # tenants that left the round (nothing queued) -> when, oldest first, at most _RECENT_TENANTS
        self._left: dict[str, float] = {}
        self._clock = clock
        # the tenant whose visit is going on, the work tokens it may still take (None: one call's visit)
        # and whether it took any
        self._visiting: str | None = None
        # queued tenant -> the work tokens its last visit left over (< 0: it took more than its visit)
        self._carry: dict[str, float] = {}
        self._credit: float | None = None
        self._took = False
        self._keys = itertools.count()
        self._len = 0
        self._on_release = on_release

    def __len__(self) -> int:
        """Items queued (released or held)."""
        return self._len

    def _lines(self) -> Iterator[CallLine[T]]:
        for lines in self._tenants.values():
            yield from lines.values()

    def line_lengths(self) -> tuple[int, ...]:
        """Items queued per call, by tenant in round-robin order and within a tenant in its order."""
        return tuple(len(line) for line in self._lines())

    def tenant_lengths(self) -> list[tuple[str, int]]:
        """Prompts queued per tenant, in round-robin order. For the metrics' thread too: it reads copies
        (one list copy of a dict is atomic under the interpreter lock), never the dicts being changed."""
        return [
            (tenant, sum(len(line) for line in list(lines.values()))) for tenant, lines in list(self._tenants.items())
        ]

    def visits_ahead(
        self, tenant: str, tenant_quantum: float | None = None, recent_s: float = 0.0
    ) -> tuple[float, ...]:
        """The work tokens of each visit that comes before a new call of `tenant` gets its first one (an
        item not tokenised counts 0): the next visit of each of the tenant's queued calls (the new call is
        its last); then, for every other tenant with calls queued, a visit of `tenant_quantum` work tokens
        for each of the tenant's own visits those calls take (their work over `tenant_quantum`), and one
        more when it comes before the tenant in the round (a tenant not queued comes last). The others
        are taken to stay queued while the call waits, as they do under overload (one that runs out only
        shortens the wait), so that a call admitted now does not pass its queue timeout when they send
        more. A tenant with nothing queued that had calls queued within the last `recent_s` seconds is
        charged as one after the tenant in the round (it would join at the back): as many visits as the
        tenant's own ahead, none when it has nothing queued. With one tenant queued and none recent, or
        without `tenant_quantum` (before a batch is measured; admission then does not use it): one visit
        of every queued call. What visits carry over is not charged: a tenant in debt skips visits, which
        only shortens the wait, and one with work left over takes less than one prompt more."""
        if not self._tenants:
            return ()
        if tenant_quantum is None:
            return tuple(self._visit(line) for line in self._lines())
        own = self._tenants.get(tenant)
        visits = [self._visit(line) for line in own.values()] if own is not None else []
        rounds = int(sum(visits) // tenant_quantum)  # the tenant's visits before the one reaching the call
        before = True
        for name in self._tenants:
            if name == tenant:
                before = False
            else:
                visits.extend([tenant_quantum] * (rounds + 1 if before else rounds))
        if rounds and self._left:
            since = self._clock() - recent_s
            while self._left and next(iter(self._left.values())) < since:  # forget the oldest, stale ones
                del self._left[next(iter(self._left))]
            visits.extend([tenant_quantum] * (rounds * sum(name != tenant for name in self._left)))
        return tuple(visits)

    @staticmethod
    def _visit(line: CallLine[T]) -> float:
        nxt = itertools.islice(itertools.chain(line.released, line.held), line.quantum)
        return sum(it.work or 0.0 for it in nxt)

    def append(self, items: Sequence[Item[T]], quantum: int, tenant: str = "") -> None:
        """Queue one call's items as a line (of `tenant`'s); the first `quantum` (>= 1) are released at
        once."""
        if quantum < 1:
            raise ValueError(f"quantum must be >= 1 (got {quantum})")
        line: CallLine[T] = CallLine(next(self._keys), quantum, tenant)
        for it in items:
            it.line = line
            line.held.append(it)
        self._len += len(items)
        if items:
            if tenant not in self._tenants:
                self._left.pop(tenant, None)
                self._tenants[tenant] = {}
            self._tenants[tenant][line.key] = line
            for _ in range(min(quantum, len(items))):  # each step releases one: no more than there are
                self._release_next(line)

    def discard(self, item: Item[T]) -> None:
        """Remove a queued item (cancelled or expired); its line releases the next one."""
        line = item.line
        if line is None:
            return
        if item in line.released:
            line.released.remove(item)
            self._len -= 1
            self._release_next(line)
        elif item in line.held:
            line.held.remove(item)
            self._len -= 1
        item.line = None
        self._forget_if_empty(line)

    def oldest_enqueued_at(self) -> float | None:
        """When the longest-waiting released item was released; None when nothing is released."""
        heads = [line.released[0].enqueued_at for line in self._lines() if line.released]
        return min(heads) if heads else None

    def batch_ready(self, max_size: int, max_tokens: int, cost_tokens: float | None = None) -> bool:
        """True when the queue already holds a full batch (by count, padded tokens or work tokens)."""
        n, longest, cost = 0, 0, 0.0
        for line in self._lines():
            for it in itertools.chain(line.released, line.held):
                if it.future.done():
                    continue
                n_tokens = it.n_tokens
                if n_tokens is None:  # not tokenised: goes alone, so a batch is ready
                    return True
                n += 1
                longest = max(longest, n_tokens)
                cost += n_tokens * it.weight
                if n >= max_size or longest * n >= max_tokens or (cost_tokens is not None and cost >= cost_tokens):
                    return True
        return False

    def next_batch(
        self, max_size: int, max_tokens: int, cost_tokens: float | None = None, tenant_quantum: float | None = None
    ) -> tuple[list[Item[T]], list[Item[T]]]:
        """Pop the next batch and the dead items met on the way: rounds over the tenants, a tenant's visit
        taking up to `tenant_quantum` work tokens (None: one call's visit) over its calls in turn, a call's
        visit up to its quantum of prompts; within `max_size` prompts, `max_tokens` padded tokens
        (longest x count) and `cost_tokens` work tokens in all (None: no such budget); the first prompt
        always fits. A visit cut by a full batch goes on in the next one."""
        batch: list[Item[T]] = []
        dead: list[Item[T]] = []
        longest, cost = 0, 0.0
        while self._tenants and len(batch) < max_size:
            tenant, lines = next(iter(self._tenants.items()))
            if self._visiting != tenant:  # its visit begins (alone, it may take everything)
                self._visiting, self._took = tenant, False
                carry = self._carry.pop(tenant, 0.0)
                if tenant_quantum is None or len(self._tenants) == 1:
                    self._credit = None if tenant_quantum is None else math.inf
                elif carry + tenant_quantum <= 0.0:  # still paying for a prompt bigger than its visits
                    self._carry[tenant] = carry + tenant_quantum
                    self._tenant_to_back(tenant)
                    continue
                else:
                    self._credit = carry + tenant_quantum
            if self._credit == math.inf and tenant_quantum is not None and len(self._tenants) > 1:
                self._credit = tenant_quantum  # another tenant came: this visit is bounded from now
            line = next(iter(lines.values()))
            taken, full, spent = 0, False, False
            while line.released and taken < line.quantum and len(batch) < max_size:
                it = line.released[0]
                if it.future.done():
                    dead.append(self._pop(line))
                    continue
                n_tokens = it.n_tokens
                if n_tokens is None:  # not tokenised: a batch of its own
                    if not batch:
                        batch.append(self._pop(line))
                        taken += 1
                    full = True
                    break
                new_longest = max(longest, n_tokens)
                work = n_tokens * it.weight
                over_cost = cost_tokens is not None and cost + work > cost_tokens
                if batch and (new_longest * (len(batch) + 1) > max_tokens or over_cost):
                    full = True
                    break
                if self._credit is not None and self._took and work > self._credit:
                    spent = True
                    break
                longest, cost = new_longest, cost + work
                batch.append(self._pop(line))
                taken += 1
                self._took = True
                if self._credit is not None:
                    self._credit -= work
            if taken or not len(line):  # a call that gave nothing (the batch was full) keeps its turn
                self._line_to_back(line)
            if full:
                break
            if spent or self._credit is None:
                if self._credit is not None and self._credit != math.inf and tenant in self._tenants:
                    self._carry[tenant] = self._credit
                self._tenant_to_back(tenant)
        return batch, dead

    # -- internals ---------------------------------------------------------------------------------

    def _pop(self, line: CallLine[T]) -> Item[T]:
        """Pop the head of `line` and release its next item."""
        it = line.released.popleft()
        it.line = None
        self._len -= 1
        self._release_next(line)
        return it

    def _line_to_back(self, line: CallLine[T]) -> None:
        """Send a visited line to the back of its tenant's round (forgetting it, and the tenant with no
        other line, once empty)."""
        lines = self._tenants[line.tenant]
        del lines[line.key]
        if len(line):
            lines[line.key] = line
        else:
            line.held.clear()
            if not lines:
                self._tenant_left(line.tenant)

    def _tenant_to_back(self, tenant: str) -> None:
        """End `tenant`'s visit: it goes to the back of the tenants' round."""
        if tenant in self._tenants:
            self._tenants[tenant] = self._tenants.pop(tenant)
        self._visiting = None

    def _release_next(self, line: CallLine[T]) -> None:
        while line.held and len(line.released) < line.quantum:
            it = line.held.popleft()
            if it.future.done():  # dropped while held: the scheduler counts it
                it.line = None
                self._len -= 1
                continue
            line.released.append(it)
            if self._on_release is not None:
                self._on_release(it)
            return

    def _forget_if_empty(self, line: CallLine[T]) -> None:
        if len(line):
            return
        lines = self._tenants.get(line.tenant)
        if lines is not None:
            lines.pop(line.key, None)
            if not lines:
                self._tenant_left(line.tenant)

    def _tenant_left(self, tenant: str) -> None:
        """`tenant` has nothing queued: out of the round (what its visits left over forgotten), remembered
        as recently seen."""
        del self._tenants[tenant]
        self._carry.pop(tenant, None)
        self._left[tenant] = self._clock()
        if len(self._left) > _RECENT_TENANTS:
            del self._left[next(iter(self._left))]
