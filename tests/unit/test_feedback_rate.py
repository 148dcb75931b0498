"""FeedbackRate's token buckets on a fake clock (the clock is the point): a tenant's bucket of `burst`
outcomes refills at `rate` a second, a call takes its outcomes whole or is refused whole with the delay
until it fits, tenants do not share buckets, and only the `max_tenants` tenants seen last are kept."""

from __future__ import annotations

import pytest

from lmroute.service.errors import FeedbackRateExceeded, status_of
from lmroute.service.feedback_rate import FeedbackRate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_call_takes_its_outcomes_whole_or_is_refused_whole_with_the_delay_until_it_fits() -> None:
    clock = Clock()
    rate = FeedbackRate(100.0, 150, clock=clock)
    rate.take("a", 150)  # a full bucket holds the burst
    with pytest.raises(FeedbackRateExceeded) as refused:
        rate.take("a", 40)
    assert refused.value.retry_after_ms == 400  # 40 outcomes at 100 a second
    info = status_of(refused.value)
    assert (info.code.name, info.reason, info.retry_after_ms) == ("RESOURCE_EXHAUSTED", "FEEDBACK_RATE", 400)
    assert info.message == (
        "outcomes: tenant 'a' reports more than 100 outcomes a second (--feedback-rate); 40 more fit in 400 ms"
    )
    clock.now += 0.3  # 30 back: still short, and the refusal took none
    with pytest.raises(FeedbackRateExceeded) as again:
        rate.take("a", 40)
    assert again.value.retry_after_ms == 100
    clock.now += 0.1
    rate.take("a", 40)
    rate.refund("a", 40)  # a call refused after its take (the store had no room) costs its tenant nothing
    rate.take("a", 40)
    clock.now += 10.0  # refills to the burst, no further
    rate.take("a", 150)
    with pytest.raises(FeedbackRateExceeded):
        rate.take("a", 1)
    rate.refund("a", 1_000)  # never past the burst
    rate.take("a", 150)
    with pytest.raises(FeedbackRateExceeded):
        rate.take("a", 1)


def test_refusal_says_what_take_would_raise_and_takes_nothing() -> None:
    clock = Clock()
    rate = FeedbackRate(100.0, 150, clock=clock)
    assert rate.refusal("a", 150) is None  # a tenant not seen yet has a full bucket
    rate.take("a", 150)
    refused = rate.refusal("a", 40)
    assert refused is not None and refused.retry_after_ms == 400
    assert str(refused) == (
        "outcomes: tenant 'a' reports more than 100 outcomes a second (--feedback-rate); 40 more fit in 400 ms"
    )
    clock.now += 0.4
    assert rate.refusal("a", 40) is None  # refilled: it fits, and asking took nothing ...
    rate.take("a", 40)  # ... as take shows
    assert rate.refusal("a", 1) is not None and rate.refusal("b", 150) is None


def test_tenants_have_buckets_of_their_own_and_no_tenant_is_one_of_them() -> None:
    clock = Clock()
    rate = FeedbackRate(10.0, 20, clock=clock)
    rate.take("a", 20)
    rate.take("b", 20)
    rate.take("", 20)
    with pytest.raises(FeedbackRateExceeded, match=r"tenant \(no tenant\) reports more than 10 outcomes"):
        rate.take("", 1)


def test_a_call_larger_than_the_burst_is_told_the_wait_for_a_full_bucket() -> None:
    """The server makes the burst at least max_feedback_items, so a call this large is refused before it
    gets here; the bucket alone still names a finite delay."""
    rate = FeedbackRate(10.0, 20, clock=Clock())
    rate.take("a", 5)
    with pytest.raises(FeedbackRateExceeded) as refused:
        rate.take("a", 50)
    assert refused.value.retry_after_ms == 500  # until the bucket is full


def test_only_the_tenants_seen_last_are_kept_and_a_forgotten_one_comes_back_full() -> None:
    clock = Clock()
    rate = FeedbackRate(1.0, 10, max_tenants=2, clock=clock)
    rate.take("a", 10)
    rate.take("b", 10)
    with pytest.raises(FeedbackRateExceeded):
        rate.take("a", 1)  # seen again: "a" is now the latest, "b" the oldest
    rate.take("c", 10)  # a third tenant: "b" is forgotten
    rate.take("b", 10)  # back full; "a" forgotten now
    rate.take("a", 10)
    for name in ("x", "y", "z"):  # refused calls of new tenants are kept within the bound too
        with pytest.raises(FeedbackRateExceeded):
            rate.take(name, 11)
    assert len(rate._buckets) == 2


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 10), (float("inf"), 10), (float("nan"), 10), (1.0, 0)])
def test_bad_settings_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        FeedbackRate(rate, burst)
