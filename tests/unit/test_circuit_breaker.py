"""CircuitBreaker on a fake clock: opens after `after` failures in a row, lets one probe through after
`for_s`, closes on an answer, opens again on the probe's failure, and a probe that ends with neither lets
the next request probe."""

from __future__ import annotations

import pytest

from lmroute.service.circuit_breaker import Admit, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_failures_in_a_row_and_an_answer_resets_the_count() -> None:
    clock = Clock()
    b = CircuitBreaker(3, 30.0, clock)
    assert not b.failed(probe=False) and not b.failed(probe=False)
    assert not b.answered()  # it was closed: nothing came back
    assert b.failures == 0 and b.admit() is Admit.TRY
    assert [b.failed(probe=False) for _ in range(3)] == [False, False, True]  # the third in a row opens it
    assert b.is_open and b.admit() is Admit.SKIP
    clock.now += 29.9
    assert b.admit() is Admit.SKIP
    assert not b.failed(probe=False)  # a request let in before it opened fails late: not held open longer
    clock.now += 0.1
    assert b.admit() is Admit.PROBE  # 30 s from the failure that opened it


def test_one_probe_after_for_s_closes_it_or_opens_it_again() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 10.0, clock)
    assert b.failed(probe=False) and b.admit() is Admit.SKIP
    clock.now += 10.0
    assert b.admit() is Admit.PROBE
    assert b.admit() is Admit.SKIP  # the others still skip it while the probe is out
    assert b.failed(probe=True)  # the probe failed: open for another 10 s
    assert b.admit() is Admit.SKIP
    clock.now += 9.9
    assert b.admit() is Admit.SKIP
    clock.now += 0.1
    assert b.admit() is Admit.PROBE
    assert b.answered() and not b.is_open  # it has come back
    assert b.admit() is Admit.TRY and b.failures == 0


def test_a_probe_that_ends_with_neither_lets_the_next_request_probe() -> None:
    clock = Clock()
    b = CircuitBreaker(2, 5.0, clock)
    b.failed(probe=False)
    b.failed(probe=False)
    clock.now += 5.0
    assert b.admit() is Admit.PROBE and b.admit() is Admit.SKIP
    b.abandoned()  # its caller went away
    assert b.admit() is Admit.PROBE


def test_a_probes_failure_after_another_request_closed_it_counts_as_one_failure() -> None:
    clock = Clock()
    b = CircuitBreaker(3, 5.0, clock)
    for _ in range(3):
        b.failed(probe=False)
    clock.now += 5.0
    assert b.admit() is Admit.PROBE
    assert b.answered()  # a request let in earlier answered: closed
    assert not b.failed(probe=True) and b.admit() is Admit.TRY  # the probe's failure is one in a row, not three


@pytest.mark.parametrize(("after", "for_s"), [(0, 1.0), (1, 0.0), (1, float("nan"))])
def test_bad_settings_are_refused(after: int, for_s: float) -> None:
    with pytest.raises(ValueError, match="after >= 1 and for_s > 0"):
        CircuitBreaker(after, for_s)


def test_skipping_says_what_admit_would_without_taking_the_probe() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 5.0, clock)
    assert not b.skipping
    b.failed(probe=False)
    assert b.skipping
    clock.now += 5.0
    assert not b.skipping and not b.skipping  # due a probe: asking twice takes nothing
    assert b.admit() is Admit.PROBE
    assert b.skipping  # the probe is out: the others skip it
    b.abandoned()
    assert not b.skipping
    assert b.admit() is Admit.PROBE and b.answered()
    assert not b.skipping
