"""FeedbackRate: at most `rate` outcomes a second from each reporting tenant, a token bucket each.

The outcome store's writer shares the server's core with Route and Score. Its bounds on waiting outcomes
(lmroute.outcomes.writer) keep a flood's backlog from growing, not its throughput: one caller re-sending
big Feedback calls had every free moment of the writer, 12,100-12,500 rows a second on one core, and
another tenant's Route calls waited for the core (p90 from 2-3 to 64-69 ms:
benchmarks/results/feedback_flood). Here each tenant (the reporter its outcomes are recorded for) has a
bucket of `burst` outcomes that refills at `rate` a second; a call takes its outcomes from it whole, or is
refused whole for the cost of a check (RESOURCE_EXHAUSTED, FEEDBACK_RATE) with the time its outcomes need
to come back as the retry delay. A full bucket holds at least one largest call, so every call that
fits `max_feedback_items` gets through once its tenant slows down.

The buckets of the `max_tenants` tenants seen last are kept; one forgotten comes back full. A caller that
may name any tenant (no token binds it) can therefore take a bucket per name: the bound holds per caller
where tokens bind tenants (docs/SECURITY.md). `take` and `refund` run on the event loop (no lock);
`refusal` only reads (one dictionary read of an immutable pair), so the thread transport's pool threads
may ask it whether a call would be refused before handing the call to the loop.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

from lmroute.service.errors import FeedbackRateExceeded

__all__ = ["FeedbackRate"]

_NOISE = 1e-6
"""Outcomes (and milliseconds) below float rounding: a bucket refilled to exactly what a call needs passes."""


class FeedbackRate:
    """Token buckets of `burst` outcomes refilled at `rate` a second, one a tenant; `take` or refuse."""

    def __init__(
        self, rate: float, burst: int, *, max_tenants: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be > 0 and finite (got {rate!r})")
        if burst < 1 or max_tenants < 1:
            raise ValueError(f"burst and max_tenants must be >= 1 (got {burst}, {max_tenants})")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_tenants = max_tenants
        self._clock = clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        """tenant -> (outcomes in its bucket, when that was counted), least recently used first"""

    def take(self, tenant: str, n: int) -> None:
        """Take `n` outcomes from `tenant`'s bucket, or raise FeedbackRateExceeded (nothing taken) with
        the milliseconds until the bucket holds `n` again."""
        now = self._clock()
        held, then = self._buckets.pop(tenant, (self.burst, now))
        held = min(self.burst, held + (now - then) * self.rate)
        fits = held >= n - _NOISE
        self._buckets[tenant] = (max(0.0, held - n) if fits else held, now)
        while len(self._buckets) > self.max_tenants:
            self._buckets.popitem(last=False)
        if not fits:
            raise self._exceeded(tenant, n, held)

    def refusal(self, tenant: str, n: int) -> FeedbackRateExceeded | None:
        """What `take(tenant, n)` would raise now, or None when the call fits (a tenant without a bucket
        has a full one); takes nothing. Safe from any thread: it only reads."""
        state = self._buckets.get(tenant)
        if state is None:
            return None
        held = min(self.burst, state[0] + (self._clock() - state[1]) * self.rate)
        return None if held >= n - _NOISE else self._exceeded(tenant, n, held)

    def _exceeded(self, tenant: str, n: int, held: float) -> FeedbackRateExceeded:
        wait_ms = max(1, math.ceil(1000.0 * (min(n, self.burst) - held) / self.rate - _NOISE))
        who = repr(tenant) if tenant else "(no tenant)"
        return FeedbackRateExceeded(
            f"outcomes: tenant {who} reports more than {self.rate:g} outcomes a second (--feedback-rate); "
            f"{n} more fit in {wait_ms} ms",
            retry_after_ms=wait_ms,
        )

    def refund(self, tenant: str, n: int) -> None:
        """Put back `n` outcomes `take` took for a call refused after it (the store had no room), so that
        a refusal does not count against its tenant's rate; a bucket holds `burst` at most."""
        if tenant in self._buckets:
            held, then = self._buckets[tenant]
            self._buckets[tenant] = (min(self.burst, held + n), then)
