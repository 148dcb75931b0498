"""CircuitBreaker: whether the OpenAI front skips an upstream that keeps failing, for now.

A side set to fall back (its upstreams file entry's `fallback`) passes a request its upstream fails to the
other side's upstream. Without more, every request to a hung upstream would wait out its `timeout_s`
first. The breaker counts the upstream's failures in a row: at `after` of them it opens, and for `for_s`
the side's requests go straight to the other side (`admit` says SKIP). Then one request tries the upstream
again (PROBE) while the others still skip it: an answer closes the breaker, a failure opens it for another
`for_s`, and a probe that ends with neither (its caller went away) lets the next request probe.

Any answer counts as the upstream being up, a 4xx included (the request's fault, not the upstream's).
All of it runs on the front's event loop: no locks.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

__all__ = ["Admit", "CircuitBreaker"]


class Admit(enum.Enum):
    """What a request does with the upstream now."""

    TRY = "try"  # closed: the upstream answers as far as anyone knows
    PROBE = "probe"  # open for long enough: this request tries it again, the others still skip it
    SKIP = "skip"  # open: straight to the other side


class CircuitBreaker:
    """One upstream's failures in a row, and whether its side's requests skip it now."""

    def __init__(self, after: int, for_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if after < 1 or not for_s > 0:
            raise ValueError(f"a breaker needs after >= 1 and for_s > 0 (got {after}, {for_s})")
        self.after = after
        self.for_s = for_s
        self._clock = clock
        self.failures = 0  # in a row
        self._open_until: float | None = None  # None: closed
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    @property
    def skipping(self) -> bool:
        """Whether `admit` would say SKIP now (read only: it does not take the probe)."""
        return self._open_until is not None and (self._probing or self._clock() < self._open_until)

    def admit(self) -> Admit:
        """TRY while closed; while open, SKIP, but PROBE for the one request after `for_s` has passed."""
        if self._open_until is None:
            return Admit.TRY
        if self._probing or self._clock() < self._open_until:
            return Admit.SKIP
        self._probing = True
        return Admit.PROBE

    def answered(self) -> bool:
        """The upstream answered: closed again. True when it was open (it has come back)."""
        was_open = self._open_until is not None
        self.failures, self._open_until, self._probing = 0, None, False
        return was_open

    def failed(self, probe: bool) -> bool:
        """The upstream failed a request (`probe`: the one PROBE admitted). True when this opened the
        breaker for `for_s`: the `after`-th failure in a row while closed, or the probe's while open. A
        request let in before it opened that fails now does not hold it open longer."""
        self.failures += 1
        if (probe and self._probing) or (self._open_until is None and self.failures >= self.after):
            self._open_until = self._clock() + self.for_s
            self._probing = False
            return True
        return False

    def abandoned(self) -> None:
        """The probe ended with neither answer nor failure (its caller went away): the next request probes."""
        self._probing = False
