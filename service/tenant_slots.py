"""Slots of a scarce resource shared fairly by tenants: the OpenAI-compatible front's requests in flight to
one upstream model (lmroute.service.upstream_client).

An upstream answers in seconds and takes `max_concurrency` requests at once, so under a flood its slots,
not the scorer, are what callers wait for. With a first-come queue one tenant's flood would hold every
slot and queue ahead of everyone else, and another tenant's request would wait for the whole flood. Here,
while nobody waits a free slot goes at once; once requests wait, each slot that frees goes to the waiting
tenant that holds the fewest slots (ties: the tenant waiting longest since it was last served), to that
tenant's oldest waiting request. A flooding tenant therefore keeps the slots nobody else asks for, and
another tenant's request waits for the next slot that frees. With one tenant this is a first-come queue.
Event-loop only.
"""

from __future__ import annotations

import asyncio
import collections

__all__ = ["TenantSlots"]


class TenantSlots:
    """`capacity` slots, granted to tenants as the module docstring says; `acquire` / `release`."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 (got {capacity})")
        self.capacity = capacity
        self.in_use = 0
        self._held: dict[str, int] = {}  # tenant -> slots it holds
        # tenant -> its waiting requests, oldest first; insertion order = who is served first on a tie
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = {}

    def held(self, tenant: str) -> int:
        """Slots `tenant` holds now."""
        return self._held.get(tenant, 0)

    def waiting(self) -> int:
        """Requests waiting for a slot (the metrics' thread reads it too: a copy of the dict's values)."""
        return sum(len(q) for q in list(self._waiting.values()))

    async def acquire(self, tenant: str, timeout_s: float) -> None:
        """Take a slot for `tenant`, waiting up to `timeout_s` (TimeoutError when none came)."""
        if self.in_use < self.capacity and not self._waiting:
            self._take(tenant)
            return
        loop = asyncio.get_running_loop()
        granted: asyncio.Future[None] = loop.create_future()
        self._waiting.setdefault(tenant, collections.deque()).append(granted)
        timer = loop.call_later(timeout_s, _expire, granted)
        try:
            await granted  # not wait_for: in 3.11 it would swallow a cancellation that meets the grant
        except BaseException:
            if granted.done() and not granted.cancelled() and granted.exception() is None:
                self.release(tenant)  # granted as the wait ended (cancelled): give it back
            else:
                self._forget(tenant, granted)
            raise
        finally:
            timer.cancel()

    def release(self, tenant: str) -> None:
        """Give back a slot `tenant` holds; the next waiting request gets it."""
        left = self._held[tenant] - 1
        if left:
            self._held[tenant] = left
        else:
            del self._held[tenant]
        self.in_use -= 1
        self._grant()

    def _take(self, tenant: str) -> None:
        self._held[tenant] = self._held.get(tenant, 0) + 1
        self.in_use += 1

    def _grant(self) -> None:
        while self.in_use < self.capacity and self._waiting:
            tenant = min(self._waiting, key=self.held)  # the first of the fewest held, in waiting order
            queue = self._waiting.pop(tenant)
            granted = queue.popleft()
            if queue:
                self._waiting[tenant] = queue  # to the back: the next tie goes to another tenant
            if granted.done():  # cancelled while waiting
                continue
            self._take(tenant)
            granted.set_result(None)

    def _forget(self, tenant: str, granted: asyncio.Future[None]) -> None:
        queue = self._waiting.get(tenant)
        if queue is None:
            return
        try:
            queue.remove(granted)
        except ValueError:
            return
        if not queue:
            del self._waiting[tenant]


def _expire(granted: asyncio.Future[None]) -> None:
    if not granted.done():
        granted.set_exception(TimeoutError("no slot in time"))
