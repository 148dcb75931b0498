"""The queue's own state: one `Item` per admitted prompt, the `Admission` counter, the FIFO `BatchQueue`.

`BatchQueue` has two verbs, `append` and `next_batch`; `next_batch` pops FIFO within a prompt-count
limit and a padded-token budget (longest prompt x prompts) and returns the dead items (cancelled or
expired futures) it met on the way, for the scheduler to count. An item whose tokens were not counted
(`n_tokens` None: the scheduler's idle fast path) always forms a batch of its own. `Admission` bounds
the prompts that are queued or being scored. No asyncio scheduling happens here (see
lmroute.service.scheduler).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any

__all__ = ["DONE", "QUEUED", "RUNNING", "Admission", "BatchQueue", "Item"]

QUEUED, RUNNING, DONE = "queued", "running", "done"


@dataclass(eq=False)
class Item:
    text: str
    routers: tuple[str, ...]
    n_tokens: int | None  # None: not counted at admission (it is scored alone); set once scored
    future: asyncio.Future[Any]
    enqueued_at: float
    state: str = QUEUED
    timer: asyncio.TimerHandle | None = None


class Admission:
    """A counter of prompts admitted and not yet finished, bounded by `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def try_acquire(self, n: int) -> bool:
        if self.in_use + n > self.limit:
            return False
        self.in_use += n
        return True

    def release(self, n: int = 1) -> None:
        self.in_use -= n
        assert self.in_use >= 0, "admission released more permits than acquired"


class BatchQueue:
    """FIFO of queued items; two verbs: `append` and `next_batch`."""

    def __init__(self) -> None:
        self._items: collections.deque[Item] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def append(self, item: Item) -> None:
        self._items.append(item)

    def discard(self, item: Item) -> None:
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
            if it.n_tokens is None:  # uncounted: goes alone, so a batch is ready
                return True
            n += 1
            longest = max(longest, it.n_tokens)
            if n >= max_size or longest * n >= max_tokens:
                return True
        return False

    def next_batch(self, max_size: int, max_tokens: int) -> tuple[list[Item], list[Item]]:
        """Pop the next batch (FIFO, within both budgets) and the dead items met on the way."""
        batch: list[Item] = []
        dead: list[Item] = []
        longest = 0
        while self._items and len(batch) < max_size:
            it = self._items[0]
            if it.future.done():
                dead.append(self._items.popleft())
                continue
            if it.n_tokens is None:  # uncounted: a batch of its own
                if not batch:
                    batch.append(self._items.popleft())
                break
            new_longest = max(longest, it.n_tokens)
            if batch and new_longest * (len(batch) + 1) > max_tokens:
                break
            longest = new_longest
            batch.append(self._items.popleft())
        return batch, dead
