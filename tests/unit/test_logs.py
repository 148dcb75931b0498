"""Logging settings: whether info lines are written follows the level configure_logging set (the access
line's fields are only computed when they are); a line that cannot be written is counted, never raised."""

from __future__ import annotations

import errno
import io
import json

import pytest
import structlog

from lmroute.service import logs


def test_info_enabled_follows_the_configured_level() -> None:
    saved, level = structlog.get_config(), logs._level
    try:
        seen = {}
        for name in ("warning", "info", "debug", "error"):
            logs.configure_logging(name)
            seen[name] = logs.info_enabled()
        assert seen == {"warning": False, "info": True, "debug": True, "error": False}
    finally:
        structlog.configure(**saved)
        logs._level = level


class _Disk:
    """A log file on a disk that fills: writes fail with ENOSPC while `full`."""

    def __init__(self) -> None:
        self.full = False
        self.text = ""

    def write(self, text: str) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.text += text
        return len(text)

    def flush(self) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")


def test_a_line_that_cannot_be_written_is_counted_and_the_next_one_says_so() -> None:
    disk = _Disk()
    writer = logs.LineWriter(disk)
    writer.msg('{"event": "a"}')
    disk.full = True
    writer.msg('{"event": "b"}')  # no exception: a log line never fails its caller
    writer.msg('{"event": "c"}')
    assert writer.lost == 2 and writer.lost_total == 2
    disk.full = False
    writer.msg('{"event": "d"}')
    lines = [json.loads(line) for line in disk.text.splitlines()]
    assert lines == [{"event": "a"}, {"event": "log_lines_lost", "lost": 2, "level": "warning"}, {"event": "d"}]
    assert writer.lost == 0 and writer.lost_total == 2
    closed = logs.LineWriter(io.StringIO())
    closed._file.close()  # type: ignore[union-attr]
    closed.error("after close")  # ValueError of a closed file: counted too
    assert closed.lost == 1


def test_configured_logging_writes_json_lines_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    saved, level = structlog.get_config(), logs._level
    try:
        logs.configure_logging("info")
        structlog.get_logger("t").info("hello", n=1)
        line = json.loads(capsys.readouterr().err)
        assert line["event"] == "hello" and line["n"] == 1 and line["level"] == "info"
    finally:
        structlog.configure(**saved)
        logs._level = level


def test_a_pipe_nobody_reads_never_blocks_a_caller_and_gets_every_line_in_order_once_read() -> None:
    """Lines the pipe cannot take now are held for the writer's thread (the caller returns at once), in
    order; beyond the held bound they are counted lost and the next line written says so. The event
    loop wrote every line itself: the first write to a full pipe blocked it, and every call with it."""
    import os
    import threading
    import time

    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as stream, os.fdopen(read_fd, "r") as reader:
        writer = logs.LineWriter(stream, pending_bytes=20_000)
        os.set_blocking(write_fd, False)
        while True:  # fill the pipe to its last byte, as a stuck log shipper leaves it
            try:
                os.write(write_fd, b"\n" * 4096)
            except BlockingIOError:
                break
        os.set_blocking(write_fd, True)
        t0 = time.monotonic()
        for i in range(300):
            writer.msg(json.dumps({"event": "rpc", "n": i, "pad": "x" * 100}))  # ~130 bytes each
        assert time.monotonic() - t0 < 1.0  # returned at once: nothing blocked on the full pipe
        held = len(writer._pending)
        assert 0 < held < 300 and writer.lost == 300 - held and writer.lost_total == 300 - held
        got: list[str] = []
        reading = threading.Thread(target=lambda: got.extend(reader), daemon=True)
        reading.start()  # the reader comes back
        assert writer.wait_written(10.0)
        writer.msg(json.dumps({"event": "after"}))
        assert writer.wait_written(10.0)  # held, had the pipe been full again for a moment
        stream.close()
        reading.join(10)
    lines = [json.loads(line) for line in got if line.startswith("{")]
    assert [line["n"] for line in lines if line["event"] == "rpc"] == list(range(held))  # in order
    assert lines[-2:] == [{"event": "log_lines_lost", "lost": 300 - held, "level": "warning"}, {"event": "after"}]


def test_library_lines_are_json_lines_through_the_same_writer(capsys: pytest.CaptureFixture[str]) -> None:
    """Python `logging`'s records at warning and above (the OpenTelemetry SDK's "Queue full, dropping
    Span", a retried export) come out as the service's JSON lines, not as plain text among them."""
    import logging

    saved, level = structlog.get_config(), logs._level
    try:
        logs.configure_logging("info")
        logs.configure_logging("info")  # configured again: still one line per record
        logging.getLogger("opentelemetry.sdk.trace.export").warning("Queue full, dropping %s.", "Span")
        logging.getLogger("some.library").info("chatter")  # below warning: not written
        [line] = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
        assert line["event"] == "Queue full, dropping Span." and line["level"] == "warning"
        assert line["logger"] == "opentelemetry.sdk.trace.export" and "timestamp" in line
    finally:
        structlog.configure(**saved)
        logs._level = level
        logging.getLogger().removeHandler(logs._library_lines)  # type: ignore[arg-type]
        logs._library_lines = None
