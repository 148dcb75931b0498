"""`--scoring-cpus` and `--switch-interval-us`: a server process (FakeScorer) whose scoring thread runs on
CPUs of its own while the event loop keeps the others, read from /proc (what the kernel enforces), not
from our own bookkeeping; the interpreter's switch interval as the process reports it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmroute.service.client import RouterClient
from lmroute.service.cpus import parse_cpu_list
from lmroute.service.fake_scorer import FakeScorer

REPO = Path(__file__).resolve().parents[2]

_SERVE = """
import asyncio, sys
from pathlib import Path
from lmroute.service.config import config_from_cli
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.logs import configure_logging
from lmroute.service.main import serve

configure_logging("info")
flags = ["--port", "0", "--inline-us", "0", "--scoring-cpus", sys.argv[1], "--switch-interval-us", "500"]
cfg = config_from_cli(["--bundle", "unused", *flags])

async def main():
    async def report():  # what the interpreter says once the server changed it
        while sys.getswitchinterval() == 0.005:
            await asyncio.sleep(0.02)
        print(f"switch interval now {sys.getswitchinterval()}", file=sys.stderr, flush=True)

    watcher = asyncio.get_running_loop().create_task(report())
    code = await serve(cfg, lambda _cfg: FakeScorer())
    watcher.cancel()
    return code

sys.exit(asyncio.run(main()))
"""


def _allowed(pid: int, tid: int) -> frozenset[int]:
    text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    listed = re.search(r"^Cpus_allowed_list:\s*(\S+)$", text, re.M)
    assert listed is not None
    return parse_cpu_list(listed.group(1))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to give the scorer one")
def test_the_scoring_thread_gets_its_cpus_and_the_event_loop_the_rest() -> None:
    allowed = frozenset(os.sched_getaffinity(0))
    scoring = frozenset({max(allowed)})
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(max(allowed))],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        t_end = time.monotonic() + 60
        port = None
        while port is None and time.monotonic() < t_end:
            line = proc.stderr.readline()
            assert line, f"server exited: {''.join(lines)}"
            lines.append(line)
            if m := re.search(r"serving on 127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
        assert port is not None
        serving = set(os.listdir(f"/proc/{proc.pid}/task"))  # the transport's call threads start with the calls
        with RouterClient(f"127.0.0.1:{port}") as c:
            res = c.score(["pinned", "prompts"])  # the scoring thread exists once a batch was scored
        assert [r.status.code for r in res.results] == [0, 0]
        scores = {s.router: s.strong_win_probability for s in res.results[0].scores}
        assert scores["mf"] == pytest.approx(FakeScorer.score_one("mf", "pinned"))
        threads = {int(tid): _allowed(proc.pid, int(tid)) for tid in os.listdir(f"/proc/{proc.pid}/task")}
        assert threads[proc.pid] == allowed - scoring  # the event loop's thread
        assert sum(cpus == scoring for cpus in threads.values()) == 1  # the scoring thread, alone there
        started = [cpus for tid, cpus in threads.items() if str(tid) not in serving and cpus != scoring]
        assert started and all(cpus == allowed - scoring for cpus in started), threads  # the call threads too
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr is not None:
            lines.extend(proc.stderr.readlines())
    assert any('"event": "cpus pinned"' in line for line in lines), "".join(lines)
    assert any(line.startswith("switch interval now 0.0005") for line in lines), "".join(lines)


def test_limit_blas_threads_caps_numpys_blas_pool_in_the_process() -> None:
    """What lmroute-serve does with --intra-op-threads at start: NumPy's BLAS capped, read back from the
    library itself (threadpoolctl), in a fresh interpreter that started with a pool of 2."""
    code = (
        "import numpy, threadpoolctl\n"
        "from lmroute.service.cpus import limit_blas_threads\n"
        "blas = lambda: [i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']\n"
        "before = blas()\n"
        "limit_blas_threads(1)\n"
        "print(before, blas())\n"
    )
    env = os.environ | {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    before, after = out.strip().split("] [")
    assert before.lstrip("[") and set(before.lstrip("[").split(", ")) == {"2"}, out
    assert set(after.rstrip("]").split(", ")) == {"1"}, out
