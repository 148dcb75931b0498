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
