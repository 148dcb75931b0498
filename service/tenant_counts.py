"""Calls admitted and refused, and their prompts' queue waits, per tenant, for the metrics
(`lmroute_tenant_calls_total`, `lmroute_tenant_queue_wait_seconds`; the same counts of Feedback results,
`lmroute_tenant_feedback_total`).

Tenants named in request metadata are taken at their word (docs/SECURITY.md), so their number has no
bound of its own: `TenantCounts` keeps at most `limit` tenants apart, the first ones seen, and counts
the calls of any further tenant under `OTHER`, so that neither its memory nor the metrics' label values
grow without bound. A call that names no tenant is counted under `NONE` (not one of the `limit`). The
scheduler writes it on the event loop; the metrics read `snapshot()` from their own thread (one list
copy of a dict: atomic under the interpreter lock). A prompt's queue wait, from entering the queue to
its batch leaving it (0 for a call scored at once, without queueing), goes into its tenant's histogram
under the same label, in seconds, in `WAIT_BOUNDS_S` buckets: coarse, as a tenant's series multiply by
them.
"""

from __future__ import annotations

from lmroute.service.stats import Histogram

__all__ = [
    "ADMITTED",
    "EVENTS",
    "NONE",
    "OTHER",
    "REFUSED_DEADLINE",
    "REFUSED_OVERLOAD",
    "REFUSED_QUEUE_FULL",
    "WAIT_BOUNDS_S",
    "TenantCounts",
    "TenantLabels",
]

# what happened to a call, in the order of a tenant's counts (`add`'s `event` is the index)
EVENTS = ("admitted", "refused_overload", "refused_queue_full", "refused_deadline")
ADMITTED, REFUSED_OVERLOAD, REFUSED_QUEUE_FULL, REFUSED_DEADLINE = range(len(EVENTS))
NONE = "(none)"  # no tenant named (tenant names are [A-Za-z0-9._-]: no clash)
OTHER = "(other)"  # tenants beyond the limit
WAIT_BOUNDS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class TenantLabels:
    """The label each tenant is counted under: its name for the first `limit` named tenants seen, OTHER
    for any further one, NONE for calls naming none. One instance is shared by every per-tenant family
    (calls, waits, Feedback results), so a tenant has the same label in each and they join."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1 (got {limit})")
        self.limit = limit
        self._named: set[str] = set()

    def assign(self, tenant: str) -> str:
        """`tenant`'s label, taking one of the `limit` places when it has none yet and one is free."""
        if not tenant:
            return NONE
        if tenant in self._named:
            return tenant
        if len(self._named) < self.limit:
            self._named.add(tenant)
            return tenant
        return OTHER

    def label(self, tenant: str) -> str:
        """`tenant`'s label, taking no place."""
        return NONE if not tenant else tenant if tenant in self._named else OTHER


class TenantCounts:
    """Per tenant, how many calls had each of `events` (the scheduler's `EVENTS` by default), under the
    labels `labels` gives (a TenantLabels of `limit` places of its own, or one shared with other
    families)."""

    def __init__(self, limit: int, events: tuple[str, ...] = EVENTS, labels: TenantLabels | None = None) -> None:
        self.labels = labels if labels is not None else TenantLabels(limit)
        self.limit = self.labels.limit
        self.events = events
        self._counts: dict[str, list[int]] = {}
        self._waits: dict[str, Histogram] = {}  # label -> its prompts' queue waits, seconds

    def add(self, tenant: str, event: int, n: int = 1) -> None:
        """`n` calls of `tenant` ("" = none named) had `events[event]`."""
        key = self.labels.assign(tenant)
        row = self._counts.get(key)
        if row is None:
            row = self._counts[key] = [0] * len(self.events)
        row[event] += n

    def label(self, tenant: str) -> str:
        """The label `tenant`'s calls are counted under."""
        return self.labels.label(tenant)

    def observe_wait(self, tenant: str, seconds: float, n: int = 1) -> None:
        """`n` prompts of an admitted call of `tenant` waited `seconds` each in the queue."""
        key = self.label(tenant)
        waits = self._waits.get(key)
        if waits is None:
            waits = self._waits[key] = Histogram(WAIT_BOUNDS_S)
        waits.observe(seconds, n)

    def snapshot(self) -> list[tuple[str, tuple[int, ...]]]:
        """(label, counts in `events` order) of every tenant counted."""
        return [(key, tuple(row)) for key, row in list(self._counts.items())]

    def wait_snapshot(self) -> list[tuple[str, Histogram]]:
        """(label, a copy of its queue-wait histogram) of every tenant with a wait observed."""
        return [(key, Histogram.from_dict(h.to_dict())) for key, h in list(self._waits.items())]
