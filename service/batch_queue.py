"""The queue's own state: one `Item` per admitted prompt, the `Admission` counter and its `Permit`, the FIFO
`BatchQueue`.

An `Item` carries what its prompt needs on the way to the scorer: the text, the routers asked for
(resolved by the transport), the scorer's tokens from admission (`Tokenized`; None for the scheduler's
idle fast path, which leaves tokenising to the scorer) and the Future its caller awaits.
`BatchQueue` has two verbs, `append` and `next_batch`; `next_batch` pops FIFO within a prompt-count
limit and a padded-token budget (longest prompt x prompts) and returns the dead items (cancelled or
expired futures) it met on the way, for the scheduler to count. An item without tokens always forms a
batch of its own. `Admission` bounds the prompts of the calls in progress; a call holds its permits as
a context manager (`with permit:`), which gives them back when the call ends, however it ends. No
asyncio scheduling happens here (see lmroute.service.scheduler).
"""

from __future__ import annotations

import asyncio
import collections
import enum
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

from lmroute.service.scorer_api import Tokenized

__all__ = ["Admission", "BatchQueue", "Item", "ItemResult", "Permit", "State"]

T = TypeVar("T")


class State(enum.Enum):
    """Where an item is: waiting in the queue, in the scorer, or finished (scored, failed or dropped)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


@dataclass(frozen=True)
class ItemResult:
    """The scores of one prompt: router -> strong-win probability, plus token facts."""

    n_tokens: int
    truncated: bool
    scores: dict[str, float]


@dataclass(eq=False)
class Item(Generic[T]):
    """One admitted prompt on its way through the queue to the scorer."""

    text: str
    routers: tuple[str, ...]
    tokens: Tokenized[T] | None  # None: not tokenised at admission (it is scored alone)
    future: asyncio.Future[ItemResult]
    enqueued_at: float
    state: State = State.QUEUED
    timer: asyncio.TimerHandle | None = None

    @property
    def n_tokens(self) -> int | None:
        """Token count from admission; None when admission did not tokenise it."""
        return None if self.tokens is None else self.tokens.n_tokens


class Admission:
    """A counter of the prompts admitted and not yet answered, bounded by `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_use = 0

    @property
    def in_use(self) -> int:
        return self._in_use

    def try_acquire(self, n: int) -> Permit | None:
        """`n` permits at once (hold them with `with permit:`), or None when fewer than `n` are free."""
        if self._in_use + n > self.limit:
            return None
        self._in_use += n
        return Permit(self, n)

    def _give_back(self, n: int) -> None:
        self._in_use -= n
        assert self._in_use >= 0, "admission got back more permits than it gave"


class Permit:
    """`n` admission permits, given back when the `with` block holding them exits."""

    def __init__(self, admission: Admission, n: int) -> None:
        self._admission = admission
        self.n = n
        self._held = True

    def __enter__(self) -> Permit:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._held, "permit given back twice"
        self._held = False
        self._admission._give_back(self.n)


class BatchQueue(Generic[T]):
    """FIFO of queued items; two verbs: `append` and `next_batch`."""

    def __init__(self) -> None:
        self._items: collections.deque[Item[T]] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def append(self, item: Item[T]) -> None:
        self._items.append(item)

    def discard(self, item: Item[T]) -> None:
        try:
            self._items.remove(item)
        except ValueError:
            pass

    def oldest_enqueued_at(self) -> float | None:
        return self._items[0].enqueued_at if self._items else None

    def batch_ready(self, max_size: int, max_tokens: int) -> bool:
        """True when the queue already holds a full batch (by count or by padded tokens)."""
        n, longest = 0, 0
        for it in self._items:
            if it.future.done():
                continue
            n_tokens = it.n_tokens
            if n_tokens is None:  # not tokenised: goes alone, so a batch is ready
                return True
            n += 1
            longest = max(longest, n_tokens)
            if n >= max_size or longest * n >= max_tokens:
                return True
        return False

    def next_batch(self, max_size: int, max_tokens: int) -> tuple[list[Item[T]], list[Item[T]]]:
        """Pop the next batch (FIFO, within both budgets) and the dead items met on the way."""
        batch: list[Item[T]] = []
        dead: list[Item[T]] = []
        longest = 0
        while self._items and len(batch) < max_size:
            it = self._items[0]
            if it.future.done():
                dead.append(self._items.popleft())
                continue
            n_tokens = it.n_tokens
            if n_tokens is None:  # not tokenised: a batch of its own
                if not batch:
                    batch.append(self._items.popleft())
                break
            new_longest = max(longest, n_tokens)
            if batch and new_longest * (len(batch) + 1) > max_tokens:
                break
            longest = new_longest
            batch.append(self._items.popleft())
        return batch, dead
