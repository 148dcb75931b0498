"""A server whose log (stderr) is a pipe nobody reads keeps serving: calls and health checks are
answered, and the lines come out in order once the pipe is read again (lmroute.service.logs). The event
loop wrote each access line itself, so the first write to a full pipe hung every call: a log shipper
that stalls took the service down with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from lmroute.service.client import NO_RETRY, RouterClient

REPO = Path(__file__).resolve().parents[2]

_SERVE = """
import asyncio, sys
from pathlib import Path
from lmroute.service.config import ServiceConfig
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.logs import configure_logging
from lmroute.service.main import serve

configure_logging("info")  # an access line per call
cfg = ServiceConfig(bundle_path=Path("unused"), port=0, grace_s=1.0)
sys.exit(asyncio.run(serve(cfg, lambda _cfg: FakeScorer())))
"""


def test_a_server_whose_log_pipe_is_not_read_keeps_answering() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    try:
        head: list[str] = []
        while "serving on" not in (line := proc.stderr.readline()):  # then nobody reads: the pipe fills
            assert line, "".join(head)
            head.append(line)
        port = line.rsplit(":", 1)[1].split()[0]
        calls = 1500  # about 300 KB of access lines: several times what the pipe holds
        with RouterClient(f"127.0.0.1:{port}", timeout_s=10.0, retry=NO_RETRY) as client:
            for i in range(calls):
                client.route(f"question {i}", router="mf", threshold=0.5)
            assert client.health() == "SERVING"
        got: list[str] = []
        reading = threading.Thread(target=lambda: got.extend(proc.stderr or ()), daemon=True)
        reading.start()  # the reader comes back
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        reading.join(10)
    finally:
        proc.kill()
        proc.wait(10)
    lines = [json.loads(x) for x in got if x.startswith("{")]
    routes = [x for x in lines if x.get("event") == "rpc" and x.get("method", "").endswith("/Route")]
    assert len(routes) == calls  # none lost: held for the writer's thread, written once read
    assert not [x for x in lines if x.get("event") == "log_lines_lost"]


_LONG_LINES = """
import sys
import structlog
from lmroute.service.logs import configure_logging

configure_logging("info")
log = structlog.get_logger("t")
for i in range(100):  # tracebacks are this long: more than a pipe takes in one write
    log.info("long", i=i, pad="x" * 60_000)
sys.exit(0)
"""


def test_a_process_whose_log_pipe_is_not_read_still_exits() -> None:
    """Long lines held for a pipe nobody reads, stderr buffered (no PYTHONUNBUFFERED, as serve.sh runs):
    the exit waits a bounded time for them, then ends. The writer's thread wrote through stderr's buffer
    and blocked holding its lock, which the exit's flush then waited on for ever."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([sys.executable, "-c", _LONG_LINES], stderr=subprocess.PIPE, cwd=REPO, env=env)
    try:
        assert proc.wait(30) == 0  # nobody read its stderr: the held lines are given up at exit
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


_FORCED = """
import sys
import structlog
from lmroute.service.logs import configure_logging
from lmroute.service.main import _force_exit

configure_logging("info")
log = structlog.get_logger("t")
for i in range(3000):  # held: the pipe is not read yet
    log.info("line", i=i, pad="x" * 100)
print("held", flush=True)
sys.stdin.readline()  # the reader is back
_force_exit()  # a second SIGTERM
"""


def test_a_forced_exit_writes_the_held_lines_and_its_own() -> None:
    """A second SIGTERM exits at once, but not before the lines a stalled log held and its own
    `forced_exit` line are written (a bounded wait): they were all lost."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _FORCED],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        assert proc.stdout.readline().strip() == "held"
        got: list[str] = []
        reading = threading.Thread(target=lambda: got.extend(proc.stderr or ()), daemon=True)
        reading.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(30) == 1
        reading.join(10)
    finally:
        proc.kill()
        proc.wait(10)
    lines = [json.loads(x) for x in got if x.startswith("{")]
    assert [x["i"] for x in lines if x["event"] == "line"] == list(range(3000))  # every one, in order
    assert lines[-1]["event"] == "forced_exit"
