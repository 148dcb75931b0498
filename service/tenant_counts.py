"""Calls admitted and refused per tenant, for the metrics (`lmroute_tenant_calls_total`).

Tenants named in request metadata are taken at their word (docs/SECURITY.md), so their number has no
bound of its own: `TenantCounts` keeps at most `limit` tenants apart, the first ones seen, and counts
the calls of any further tenant under `OTHER`, so that neither its memory nor the metrics' label values
grow without bound. A call that names no tenant is counted under `NONE` (not one of the `limit`). The
scheduler writes it on the event loop; the metrics read `snapshot()` from their own thread (one list
copy of a dict: atomic under the interpreter lock).
"""

from __future__ import annotations

__all__ = [
    "ADMITTED",
    "EVENTS",
    "NONE",
    "OTHER",
    "REFUSED_DEADLINE",
    "REFUSED_OVERLOAD",
    "REFUSED_QUEUE_FULL",
    "TenantCounts",
]

# what happened to a call, in the order of a tenant's counts (`add`'s `event` is the index)
EVENTS = ("admitted", "refused_overload", "refused_queue_full", "refused_deadline")
ADMITTED, REFUSED_OVERLOAD, REFUSED_QUEUE_FULL, REFUSED_DEADLINE = range(len(EVENTS))
NONE = "(none)"  # no tenant named (tenant names are [A-Za-z0-9._-]: no clash)
OTHER = "(other)"  # tenants beyond the limit


class TenantCounts:
    """Per tenant, how many calls had each of `EVENTS`; at most `limit` named tenants apart, the rest as
    OTHER, calls naming none as NONE."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1 (got {limit})")
        self.limit = limit
        self._counts: dict[str, list[int]] = {}

    def add(self, tenant: str, event: int) -> None:
        """One call of `tenant` ("" = none named) had `EVENTS[event]`."""
        key = tenant or NONE
        row = self._counts.get(key)
        if row is None:
            if key != NONE and len(self._counts) - (NONE in self._counts) >= self.limit:
                key = OTHER
                row = self._counts.get(OTHER)
            if row is None:
                row = self._counts[key] = [0] * len(EVENTS)
        row[event] += 1

    def label(self, tenant: str) -> str:
        """The label `tenant`'s calls are counted under."""
        key = tenant or NONE
        return key if key == NONE or key in self._counts else OTHER

    def snapshot(self) -> list[tuple[str, tuple[int, ...]]]:
        """(label, counts in `EVENTS` order) of every tenant counted."""
        return [(key, tuple(row)) for key, row in list(self._counts.items())]
