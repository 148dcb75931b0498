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
    WAIT_BOUNDS_S,
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


def test_queue_waits_go_under_the_tenants_labels_and_snapshots_are_copies() -> None:
    counts = TenantCounts(limit=1)
    for tenant in ("a", "b", ""):
        counts.add(tenant, ADMITTED)
    counts.observe_wait("a", 0.0, 3)  # a call of three prompts scored at once
    counts.observe_wait("a", 0.003)
    counts.observe_wait("b", 20.0)  # beyond the limit: (other); beyond the last bound: +Inf only
    counts.observe_wait("", 0.0004)
    waits = dict(counts.wait_snapshot())
    assert sorted(waits) == sorted(["a", OTHER, NONE])
    assert (waits["a"].count, waits["a"].total, waits["a"].counts[0], waits["a"].counts[3]) == (4, 0.003, 3, 1)
    assert waits[OTHER].counts[len(WAIT_BOUNDS_S)] == 1 and waits[NONE].counts[0] == 1
    counts.observe_wait("a", 1.0)
    assert waits["a"].count == 4 and dict(counts.wait_snapshot())["a"].count == 5  # a copy, not the live one


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        TenantCounts(0)


def test_families_sharing_labels_count_a_tenant_under_one_label() -> None:
    """Feedback results and calls keep one list of the first tenants seen: a tenant first seen reporting
    outcomes keeps its name in the calls' counts too, and one beyond the limit is (other) in both (each
    family kept its own list, so the labels of one tenant differed and the families could not be joined)."""
    from lmroute.service.tenant_counts import TenantLabels

    labels = TenantLabels(2)
    feedback = TenantCounts(2, events=("stored",), labels=labels)
    calls = TenantCounts(2, labels=labels)
    feedback.add("reporterA", 0)
    feedback.add("reporterB", 0)
    calls.add("appX", ADMITTED)
    feedback.add("appX", 0)
    calls.add("reporterA", ADMITTED)
    assert dict(calls.snapshot()) == {OTHER: (1, 0, 0, 0), "reporterA": (1, 0, 0, 0)}
    assert dict(feedback.snapshot()) == {"reporterA": (1,), "reporterB": (1,), OTHER: (1,)}
