"""structlog configuration: one JSON object per line on stderr, with contextvars (request_id, method); and
`LogSampler`, which bounds the lines of a kind of event that can come in floods (refused calls under
overload): the first of each key in a period is written, the rest counted into the next one written."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable

import structlog

__all__ = ["LogSampler", "configure_logging"]


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    """Route structlog to stderr as JSON lines at `level` (debug, info, warning, error)."""
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class LogSampler:
    """At most one line per key per `period_s`; the lines left out are counted.

    `admit(key)` returns None when the line is to be left out, else the number of lines of that key
    left out since the last one written (0 for the first), to be logged with it (e.g. `suppressed=`)."""

    def __init__(self, period_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._skipped: dict[Hashable, int] = {}

    def admit(self, key: Hashable) -> int | None:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._skipped.pop(key, 0)
