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
