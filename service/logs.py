"""structlog configuration: one JSON object per line on stderr, each line carrying the log context of
the call it was written in (request_id, method; a Route answer's decision_id, a traced call's trace_id);
and `LogSampler`, which bounds the lines of a kind of event that can come in floods (refused calls under
overload): the first of each key in a period is written, the rest counted into the next one written.

A call's log context is one dict in one context variable: `with CallLog(**values):` around the call
(the transport's wrapper), `bind_call(**values)` to add to it from anywhere in the call;
`merge_call_context`, a processor, puts it into each line (the line's own keys win). One set and one
reset a call, where binding each key as a variable of its own (structlog.contextvars) costs several
microseconds of every call. Tasks the call starts share its dict (they copy the variable, which holds
the same dict); each call starts its own.

A line that cannot be written (the disk under the log is full, its pipe is closed) is counted and left
out, never raised: a log line must not fail the call or kill the thread that writes it (`LineWriter`).
The next line written after such a loss says how many were lost (`log_lines_lost`)."""

from __future__ import annotations

import contextvars
import json as jsonlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any

import structlog

__all__ = [
    "SHED_CODES",
    "CallLog",
    "LineWriter",
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


class LineWriter:
    """structlog's logger: each rendered line written and flushed to `file` (None: sys.stderr at each
    line) under one lock. A write that fails (OSError: no space, a closed pipe; ValueError: a
    closed file) is counted in `lost` and dropped; the first line written after losses is preceded by a
    `log_lines_lost` line with their count, as JSON when `json`, else as text."""

    def __init__(self, file: Any = None, *, json: bool = True) -> None:
        self._file = file
        self._json = json
        self._lock = threading.Lock()
        self.lost = 0  # lines dropped since the last one written
        self.lost_total = 0

    def _write(self, text: str) -> None:
        file = self._file if self._file is not None else sys.stderr
        file.write(text)
        file.flush()

    def msg(self, message: str) -> None:
        with self._lock:
            try:
                if self.lost:
                    note = {"event": "log_lines_lost", "lost": self.lost, "level": "warning"}
                    self._write((jsonlib.dumps(note) if self._json else f"log_lines_lost lost={self.lost}") + "\n")
                    self.lost = 0
                self._write(message + "\n")
            except (OSError, ValueError):
                self.lost += 1
                self.lost_total += 1

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


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
        logger_factory=_writer_factory(LineWriter(sys.stderr, json=json)),  # the stderr of now, as print's
        cache_logger_on_first_use=False,
    )


def _writer_factory(writer: LineWriter) -> Callable[..., LineWriter]:
    """A structlog logger factory answering every logger with one shared `writer`."""

    def factory(*_args: Any) -> LineWriter:
        return writer

    return factory


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
