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
The next line written after such a loss says how many were lost (`log_lines_lost`). Nor may a log that
is not read stop the server: a line is written by its caller only when that cannot block (the stream
takes it now: a pipe with room, a file); otherwise it waits, in order, for a thread of the writer's own
to write it, up to `PENDING_BYTES` of lines, beyond which lines are lost as above. A pipe nobody reads
(a log shipper stuck) used to block the event loop at its first full write: every call, health checks
included, hung.

Lines of Python's `logging` (libraries: the OpenTelemetry SDK's export errors, gRPC's) at warning and
above go through the same renderer and writer, one JSON object per line like the service's own."""

from __future__ import annotations

import atexit
import collections
import contextvars
import json as jsonlib
import logging
import os
import select
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
    "wait_written",
    "write_when_taken",
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


PENDING_BYTES = 4 * 1024 * 1024
"""Lines held for the writer's thread while the stream does not take them (a pipe nobody reads): beyond
this much, lines are lost (counted) instead of held."""

PIPE_BUF = 4096  # a write this long or shorter to a pipe that polls writable does not block (POSIX)


class LineWriter:
    """structlog's logger: each rendered line written and flushed to `file` (None: sys.stderr at each
    line). A line is written by its caller when the stream takes it without blocking, else held for the
    writer's own thread (the module docstring). A write that fails (OSError: no space, a closed pipe;
    ValueError: a closed file) is counted in `lost` and dropped; the first line written after losses is
    preceded by a `log_lines_lost` line with their count, as JSON when `json`, else as text."""

    def __init__(self, file: Any = None, *, json: bool = True, pending_bytes: int = PENDING_BYTES) -> None:
        self._file = file
        self._json = json
        self._lock = threading.Lock()
        self._held = threading.Condition(self._lock)  # the drainer waits on it for lines to write
        # lines held, oldest first, each with the count of lines lost just before it (its note)
        self._pending: collections.deque[tuple[int, str]] = collections.deque()
        self._pending_chars = 0
        self._pending_limit = pending_bytes
        self._drainer: threading.Thread | None = None
        self._poller: tuple[int, Any] | None = None  # (fd, a poll object registered for it): made once
        self.lost = 0  # lines dropped since the last one written
        self.lost_total = 0

    def _stream(self) -> Any:
        return self._file if self._file is not None else sys.stderr

    def msg(self, message: str) -> None:
        text = message + "\n"
        with self._lock:
            stream = self._stream()
            # what one write would be, in bytes (encoded only when it could be over: 4 bytes a character at most)
            whole = (
                len(text)
                if 4 * len(text) <= PIPE_BUF and not self.lost
                else len(self._with_note(self.lost, text).encode("utf-8", "replace"))
            )
            if not self._pending and whole <= PIPE_BUF and self._takes_now(stream):
                self._emit(stream, text)
            elif self._pending_chars + len(text) > self._pending_limit:
                self.lost += 1
                self.lost_total += 1
            else:
                self._pending.append((self.lost, text))
                self.lost = 0
                self._pending_chars += len(text)
                self._start_drainer()
                self._held.notify()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def _takes_now(self, stream: Any) -> bool:
        """Whether a line of at most PIPE_BUF characters written to `stream` now cannot block it (under
        the lock: one poll object, kept for the stream's descriptor)."""
        fd = _fd(stream)
        if fd is None:
            return True  # written as before: such a stream does not block on a reader
        try:
            if self._poller is None or self._poller[0] != fd:
                poller = select.poll()
                poller.register(fd, select.POLLOUT)
                self._poller = (fd, poller)
            return bool(self._poller[1].poll(0))
        except (OSError, ValueError):
            return True  # the write itself says what is wrong (counted as lost)

    def _emit(self, stream: Any, text: str) -> None:
        """Write `text` now, after the note of the lines lost before it (under the lock)."""
        lost, self.lost = self.lost, 0
        if not _write(stream, self._with_note(lost, text)):
            self.lost += lost + 1
            self.lost_total += 1

    def _with_note(self, lost: int, text: str) -> str:
        if not lost:
            return text
        note = {"event": "log_lines_lost", "lost": lost, "level": "warning"}
        return (jsonlib.dumps(note) if self._json else f"log_lines_lost lost={lost}") + "\n" + text

    def _start_drainer(self) -> None:
        if self._drainer is None:
            self._drainer = threading.Thread(target=self._drain, name="lmroute-log-writer", daemon=True)
            self._drainer.start()
            atexit.register(self.wait_written, 2.0)

    def _drain(self) -> None:
        """The writer's thread: write held lines in order, each once the stream takes it. Only this thread
        writes while lines are held, and a line leaves the queue after it is written, so a caller never
        writes ahead of a held line."""
        while True:
            with self._lock:
                while not self._pending:
                    self._held.wait()
                lost, text = self._pending[0]
                stream = self._stream()
            written = _write_when_taken(stream, self._with_note(lost, text))  # outside the lock
            with self._lock:
                self._pending.popleft()
                self._pending_chars -= len(text)
                if not written:
                    self.lost += lost + 1
                    self.lost_total += 1
                self._held.notify_all()

    def wait_written(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the held lines to be written (at exit; tests); whether they were."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._held.wait(left)
        return True


def _write(stream: Any, text: str) -> bool:
    """Write and flush `text`; False when the stream refused it (OSError: no space, a closed pipe;
    ValueError: a closed file)."""
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        return False
    return True


def _fd(stream: Any) -> int | None:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file of the system (a test's capture, a StringIO)
        return None
    return fd if isinstance(fd, int) else None


def _write_when_taken(stream: Any, text: str) -> bool:
    """The writer's thread's write: straight to the stream's descriptor, a piece of at most PIPE_BUF
    bytes each time it polls writable (an error or hang-up: the write fails), never through the stream's
    own buffer. A long line written through it blocked holding that buffer's lock, which the exit's flush
    of stderr then waited on for ever. False when it was refused (counted as lost)."""
    fd = _fd(stream)
    if fd is None:
        return _write(stream, text)
    return write_when_taken(fd, text.encode("utf-8", "replace"))


def write_when_taken(fd: int, data: bytes, wait_s: float | None = None) -> bool:
    """Write `data` to the descriptor `fd`, a piece of at most PIPE_BUF bytes each time it polls writable,
    so that no write blocks (the log writer's thread; the console span exporter's). False when the
    descriptor is in error or hung up, refuses the write, or takes nothing for `wait_s` seconds (None: no
    limit)."""
    poller = select.poll()
    try:
        poller.register(fd, select.POLLOUT)
        sent = 0
        while sent < len(data):
            ready = poller.poll(None if wait_s is None else wait_s * 1000)
            if not ready or ready[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                return False
            sent += os.write(fd, data[sent : sent + PIPE_BUF])
    except (OSError, ValueError):
        return False
    return True


_library_lines: logging.Handler | None = None  # the root handler configure_logging installed
_writer: LineWriter | None = None  # the writer configure_logging installed


def wait_written(timeout_s: float) -> bool:
    """Wait up to `timeout_s` for the lines held by the configured writer to be written (before a forced
    exit, which skips the exit's own wait); whether they were (True without a configured writer)."""
    return _writer is None or _writer.wait_written(timeout_s)


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    """Route structlog to stderr as JSON lines at `level` (debug, info, warning, error), and Python
    `logging`'s lines at warning and above (and at `level`, when higher) through the same writer."""
    global _level, _library_lines, _writer
    _level = getattr(logging, level.upper())
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    writer = _writer = LineWriter(sys.stderr, json=json)  # the stderr of now, as print's
    structlog.configure(
        processors=[
            merge_call_context,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=_writer_factory(writer),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    if _library_lines is not None:
        root.removeHandler(_library_lines)
    _library_lines = _LibraryLines(writer, renderer, stamp)
    _library_lines.setLevel(max(_level, logging.WARNING))
    root.addHandler(_library_lines)


class _LibraryLines(logging.Handler):
    """Python `logging` records (libraries') rendered as the service's own lines: event = the message,
    logger = its name, level, timestamp, the call's context and the exception, when one is attached."""

    def __init__(self, writer: LineWriter, renderer: Any, stamp: Any) -> None:
        super().__init__()
        self.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    renderer,
                ],
                foreign_pre_chain=[
                    merge_call_context,
                    structlog.stdlib.add_log_level,
                    structlog.stdlib.add_logger_name,
                    stamp,
                ],
            )
        )
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.msg(self.format(record))
        except Exception:  # a record that cannot be rendered: logging's own report, never the caller's error
            self.handleError(record)


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
