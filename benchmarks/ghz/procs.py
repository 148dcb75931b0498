"""Child processes of the benchmark: the service (or the empty server) pinned to cores with taskset,
its stats file (lmroute.service.stats snapshots), its peak RSS; and pinned one-shot helper scripts."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def pinned(cores: str | None, cmd: Sequence[str]) -> list[str]:
    """`cmd` under `taskset -c cores` (unchanged when cores is None or taskset is missing)."""
    if not cores or shutil.which("taskset") is None:
        return list(cmd)
    return ["taskset", "-c", cores, *cmd]


def default_cores() -> tuple[str, str]:
    """(server cores, client cores): the first half of this process's CPUs and the second half."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return str(cpus[0]), str(cpus[0])
    half = len(cpus) // 2
    fmt = lambda cs: ",".join(str(c) for c in cs)  # noqa: E731
    return fmt(cpus[:half]), fmt(cpus[half:])


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    found = (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name"))
    return next(found, platform.processor())


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def peak_rss_bytes(pid: int) -> int | None:
    """VmHWM of a live process (Linux), bytes; None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _stat_cpu_s(path: Path) -> float:
    """utime + stime of a /proc .../stat file, seconds."""
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ChildServer:
    """`lmroute-serve` (or the empty server) as a child on a free port, pinned to `cores`.

    With `stats=True` the service writes its timings to a temp JSON file (LMROUTE_STATS_PATH);
    `snapshot_after(t)` waits for a snapshot written after wall time t (the file is rewritten
    every second). `stop()` sends SIGTERM and keeps the last stderr lines and the peak RSS.
    """

    def __init__(self, cmd: Sequence[str], cores: str | None, *, stats: bool, ready_s: float = 300.0) -> None:
        self.cmd = list(cmd)
        self.cores = cores
        self.ready_s = ready_s
        self.stats_path: Path | None = None
        if stats:
            fd, name = tempfile.mkstemp(prefix="lmroute-stats-", suffix=".json")
            os.close(fd)
            os.unlink(name)
            self.stats_path = Path(name)
        self.proc: subprocess.Popen[str] | None = None
        self.target = ""
        self.peak_rss: int | None = None
        self.stderr_tail: list[str] = []
        self.lines = 0  # stderr lines seen so far (log lines: one JSON object per line)
        self._reader: threading.Thread | None = None

    def start(self) -> ChildServer:
        env = child_env()
        if self.stats_path is not None:
            env["LMROUTE_STATS_PATH"] = str(self.stats_path)
        self.proc = subprocess.Popen(pinned(self.cores, self.cmd), stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        assert self.proc.stderr is not None
        t_end = time.monotonic() + self.ready_s
        while time.monotonic() < t_end:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(
                    f"server {' '.join(self.cmd)} exited with {self.proc.wait()} before "
                    f"serving:\n" + "\n".join(self.stderr_tail[-15:])
                )
            self._keep(line)
            if m := re.search(r"serving on (\S+)", line):
                self.target = m.group(1)
                self._reader = threading.Thread(target=self._drain, daemon=True)
                self._reader.start()
                return self
        self.stop()
        raise RuntimeError(f"server {' '.join(self.cmd)} not serving after {self.ready_s} s")

    def _keep(self, line: str) -> None:
        self.lines += 1
        self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-40:]

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._keep(line)

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the server process has used so far, from /proc/PID/stat."""
        assert self.proc is not None
        return _stat_cpu_s(Path(f"/proc/{self.proc.pid}/stat"))

    def loop_cpu_seconds(self) -> float:
        """The CPU seconds so far of the server's main thread, which runs the event loop (gRPC handlers,
        admission, refusals, access log); the scoring and tokenising threads are the others."""
        assert self.proc is not None
        return _stat_cpu_s(Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/stat"))

    def snapshot_after(self, wall_t: float, timeout_s: float = 60.0, idle: bool = True) -> dict[str, Any]:
        """The first stats snapshot written after `wall_t` (time.time()), with idle=True the first
        one that also shows nothing in flight (the queue drained after a load phase)."""
        assert self.stats_path is not None, "server started without stats"
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            try:
                snap = json.loads(self.stats_path.read_text())
                if snap["written_at"] > wall_t and (not idle or snap.get("in_flight", 0) == 0):
                    return snap
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"no {'idle ' if idle else ''}stats snapshot after {wall_t} in {self.stats_path} within {timeout_s} s"
        )

    def stop(self) -> dict[str, Any] | None:
        """SIGTERM, wait, return the final stats snapshot (None without stats)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.peak_rss = peak_rss_bytes(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        final = None
        if self.stats_path is not None and self.stats_path.exists():
            final = json.loads(self.stats_path.read_text())
            self.stats_path.unlink()
        self.proc = None
        return final

    def __enter__(self) -> ChildServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def service_cmd(bundle: Path, **flags: object) -> list[str]:
    """`python -m lmroute.service.main --bundle B --port 0 --log-level warning --flag value ...`."""
    cmd = [
        sys.executable,
        "-m",
        "lmroute.service.main",
        "--bundle",
        str(bundle),
        "--port",
        "0",
        "--log-level",
        "warning",
    ]
    for k, v in flags.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    return cmd


def empty_cmd() -> list[str]:
    return [sys.executable, str(HERE / "empty_server.py"), "--port", "0"]


def run_json_script(script: str, args: Sequence[str], cores: str | None, timeout_s: float) -> dict[str, Any]:
    """Run benchmarks/ghz/<script> pinned to `cores` with `--json FILE`; return what it wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = pinned(cores, [sys.executable, str(HERE / script), *args, "--json", str(out)])
        res = subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        if res.returncode != 0 or not out.exists():
            raise RuntimeError(f"{script} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
        return json.loads(out.read_text())
