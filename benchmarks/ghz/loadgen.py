"""ghz as the load generator: one run = one ghz process (pinned to the client cores) with one of the
committed configs (route.json, score.json, *_reflection.json) plus command-line overrides; its JSON
report is summarised (latency percentiles of OK calls, status counts) and kept without per-call details
and without the request data it echoes.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from procs import pinned

HERE = Path(__file__).resolve().parent
GHZ = HERE / ".bin" / "ghz"


@dataclass
class GhzRun:
    """What to run: a config, concurrency, connections, duration, and open-loop rate (rps > 0)."""

    config: str  # file name in benchmarks/ghz/
    concurrency: int
    connections: int
    seconds: float
    rps: int = 0  # > 0: open loop, --async --rps
    label: str = ""
    extra: list[str] = field(default_factory=list)
    count: int = 0  # > 0: send exactly this many calls (ghz -n) instead of running for `seconds`
    keep_latencies: bool = False  # also return every call's latency (ms) in the order sent

    def args(self, target: str, out: Path) -> list[str]:
        # -z 0s clears the config file's duration, which would otherwise override -n
        length = (
            ["-n", str(self.count), "-z", "0s"]
            if self.count > 0
            else ["-z", f"{self.seconds:g}s", "--duration-stop", "ignore"]
        )
        a = [
            "--config",
            str(HERE / self.config),
            "-c",
            str(self.concurrency),
            "--connections",
            str(self.connections),
            *length,
            "--format",
            "json",
            "-o",
            str(out),
            *self.extra,
        ]
        if self.rps > 0:
            a += ["--async", "--rps", str(self.rps)]
        return [*a, target]


def ghz_version(ghz: Path = GHZ) -> str:
    res = subprocess.run([str(ghz), "--version"], capture_output=True, text=True, check=True)
    return (res.stdout + res.stderr).strip()


def run_ghz_details(
    run: GhzRun, target: str, cores: str | None, out_dir: Path, ghz: Path = GHZ
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ghz once; return the summary and ghz's per-call details (and write the report, minus those
    details and the request data it echoes, to out_dir)."""
    if not ghz.exists():
        raise FileNotFoundError(f"{ghz} missing: run scripts/install_ghz.sh")
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{run.label}.raw.json"
    cmd = pinned(cores, [str(ghz), *run.args(target, raw)])
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, timeout=run.seconds + 120)
    if not raw.exists():
        raise RuntimeError(f"ghz {run.label} wrote no report (exit {res.returncode}): {res.stderr[-2000:]}")
    report = json.loads(raw.read_text())
    summary = summarise(report, run)
    details = report.pop("details", None) or []
    if isinstance(report.get("options"), dict) and "data" in report["options"]:
        report["options"]["data"] = f"(the requests of {run.config}'s data-file)"
    (out_dir / f"{run.label}.json").write_text(json.dumps(report, indent=1))
    raw.unlink()
    return summary, details


def run_ghz(run: GhzRun, target: str, cores: str | None, out_dir: Path, ghz: Path = GHZ) -> dict[str, Any]:
    """Run ghz once; return the summary (with `keep_latencies`, also every call's latency, ms, in the
    order sent; None for a failed call)."""
    summary, details = run_ghz_details(run, target, cores, out_dir, ghz)
    if run.keep_latencies:
        calls = sorted(details, key=lambda d: datetime.fromisoformat(d["timestamp"]))
        summary["latencies_ms"] = [d["latency"] / 1e6 if d.get("status") == "OK" else None for d in calls]
    return summary


def summarise(report: dict[str, Any], run: GhzRun) -> dict[str, Any]:
    """Counts by status, OK calls per second, and latency percentiles (ms) of the OK calls only."""
    details = report.get("details") or []
    status = Counter(str(d.get("status", "?")) for d in details)
    ok = np.asarray([d["latency"] for d in details if d.get("status") == "OK"], dtype=np.float64) / 1e6
    total_s = float(report.get("total", 0)) / 1e9 or run.seconds
    pct = {f"p{q}_ms": float(np.percentile(ok, q)) if ok.size else float("nan") for q in (50, 90, 99)}
    return {
        "label": run.label,
        "config": run.config,
        "concurrency": run.concurrency,
        "connections": run.connections,
        "offered_rps": run.rps,
        "seconds": total_s,
        "count": len(details),
        "ok": int(ok.size),
        "ok_per_s": ok.size / total_s,
        "status": dict(status),
        "errors": report.get("errorDistribution") or {},
        "mean_ms": float(ok.mean()) if ok.size else float("nan"),
        **pct,
        "max_ms": float(ok.max()) if ok.size else float("nan"),
    }
