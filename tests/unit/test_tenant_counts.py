"""Per-tenant call counts for the metrics: bounded, whatever tenants callers name."""

from __future__ import annotations

import pytest

from lmroute.service.tenant_counts import (
    ADMITTED,
    EVENTS,
    NONE,
    OTHER,
    REFUSED_DEADLINE,
    REFUSED_OVERLOAD,
    TenantCounts,
)


def test_the_first_tenants_are_counted_apart_and_the_rest_together() -> None:
    counts = TenantCounts(limit=2)
    for tenant, event in [("a", ADMITTED), ("a", REFUSED_OVERLOAD), ("", ADMITTED), ("b", ADMITTED)]:
        counts.add(tenant, event)
    for i in range(100):  # a caller naming a new tenant each call adds no label
        counts.add(f"t{i}", ADMITTED if i % 2 else REFUSED_DEADLINE)
    assert dict(counts.snapshot()) == {
        "a": (1, 1, 0, 0),
        NONE: (1, 0, 0, 0),  # calls naming no tenant: not one of the two
        "b": (1, 0, 0, 0),
        OTHER: (50, 0, 0, 50),
    }
    assert [counts.label(t) for t in ("a", "b", "", "t7", "never seen")] == ["a", "b", NONE, OTHER, OTHER]
    assert len(EVENTS) == 4


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        TenantCounts(0)
