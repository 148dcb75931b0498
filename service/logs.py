"""structlog configuration: one JSON object per line on stderr, each line carrying the log context of
the call it was written in (request_id, method; a Route answer's decision_id, a traced call's trace_id);
and `LogSampler`, which bounds the lines of a kind of event that can come in floods (refused calls under
overload): the first of each key in a period is written, the rest counted into the next one written.

A call's log context is one dict in one context variable: `with CallLog(**values):` around the call
(the transport's wrapper), `bind_call(**values)` to add to it from anywhere in the call;
`merge_call_context`, a processor, puts it into each line (the line's own keys win). One set and one
reset a call, where binding each key as a variable of its own (structlog.contextvars) costs several
microseconds of every call. Tasks the call starts share its dict (they copy the variable, which holds
the same dict); each call starts its own."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any

import structlog

__all__ = [
    "SHED_CODES",
    "CallLog",
    "LogSampler",
    "bind_call",
    "configure_logging",
    "debug_enabled",
    "info_enabled",
    "merge_call_context",
]

SHED_CODES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"})
"""Calls shed under load: their access lines are sampled (a flood of them is a flood of lines)."""

_CALL: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("lmroute_log_call", default=None)


class CallLog:
    """`with CallLog(**values):` the log context of the call the block runs: `values`, and what
    `bind_call` adds while it runs."""

    __slots__ = ("_token", "_values")

    def __init__(self, **values: Any) -> None:
        self._values = values

    def __enter__(self) -> dict[str, Any]:
        self._token = _CALL.set(self._values)
        return self._values

    def __exit__(self, *exc: object) -> None:
        _CALL.reset(self._token)


def bind_call(**values: Any) -> None:
    """Add `values` to the current call's log context (outside a call: nothing)."""
    context = _CALL.get()
    if context is not None:
        context.update(values)


def merge_call_context(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current call's log context into the line, under the line's own keys."""
    context = _CALL.get()
    if context:
        for key, value in context.items():
            event_dict.setdefault(key, value)
    return event_dict


_level = logging.NOTSET  # the level configure_logging set: structlog logs everything before it is called


def info_enabled() -> bool:
    """Whether info lines are written: a caller skips the work of a line's fields when they are not
    (the access line's peer address costs a gRPC call)."""
    return _level <= logging.INFO


def debug_enabled() -> bool:
    """Whether debug lines are written (`--log-level debug`): a call's access line then also carries what
    it decided (router, score, threshold, chosen model, tokens; a Score call's prompt counts; a Feedback
    call's outcome statuses), never the prompt text."""
    return _level <= logging.DEBUG


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    """Route structlog to stderr as JSON lines at `level` (debug, info, warning, error)."""
    global _level
    _level = getattr(logging, level.upper())
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            merge_call_context,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
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
