"""How long `OutcomeStore.write` takes beside a busy Python thread (the event loop of a loaded server).

    .venv/bin/python benchmarks/store_write_busy.py [--baseline-pythonpath PYROOT] [--rounds 6]
        [--switch-interval-ms 5 1] [--out benchmarks/results/store_write_busy]

Each configuration runs in a fresh interpreter on a new SQLite store in a temporary folder holding
10,000 decisions: `--rounds` times a big write (1,024 preference outcomes by prompt text, 2,048 rows:
one flood call of benchmarks/feedback_flood.py) and a small one (one outcome), and a quarter as many
times a read of the 10,000 decisions (`recent_decisions`, what DecisionsToJudge reads), first with no
other thread, then beside a thread that counts in a Python loop and so always wants the interpreter
lock. The driver releases the
lock around each SQLite statement it prepares and runs and each row it reads; a thread taking it back
from a busy one waits for that thread's switch interval (`sys.setswitchinterval`, 5 ms by default).
With --baseline-pythonpath (an import root laid out as `lmroute/` of another revision) its code runs too.
Prints and writes (--out) the wall milliseconds of each write and read, median and highest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_RUN = r"""
import json, os, sys, tempfile, threading, time
from lmroute.outcomes.records import Outcome, OutcomeKind
from lmroute.outcomes.store import open_store

rounds, interval = int(sys.argv[1]), float(sys.argv[2]) / 1000
sys.setswitchinterval(interval)
store = open_store(f"sqlite:{tempfile.mkdtemp()}/outcomes.sqlite3")

def outcomes(n, tag):
    return [Outcome(OutcomeKind.PREFERENCE, "strong", 1.0, prompt_text=f"{tag} {os.urandom(8).hex()}",
                    source="judge:flood") for _ in range(n)]

def timed(n):
    batch = outcomes(n, "prompt")
    start = time.perf_counter()
    store.write([], batch)
    return (time.perf_counter() - start) * 1000

import numpy as np
from lmroute.outcomes.records import Decision, prompt_sha256
now = int(time.time() * 1000)
store.write([Decision(decision_id=f"{now - i:012x}{os.urandom(10).hex()}", time_ms=now - i, kind="route",
                      bundle_version="v", scores={"mf": 0.25}, strong_model="strong", weak_model="weak",
                      prompt_sha256=prompt_sha256(f"decided {i}"), n_tokens=40, encoder_id="e", router="mf",
                      threshold=0.5, chosen_model="weak", propensity=1.0, prompt_text=f"decided {i} " * 16,
                      prompt_chars=200, embedding=np.full(256, 0.5, dtype=np.float32)) for i in range(10_000)])

def read():
    start = time.perf_counter()
    assert len(store.recent_decisions(limit=10_000)) == 10_000
    return (time.perf_counter() - start) * 1000

out = {}
for busy in (False, True):
    stop = threading.Event()
    if busy:
        def spin():
            x = 0
            while not stop.is_set():
                x += 1
        threading.Thread(target=spin, daemon=True).start()
    big, small, reads = [], [], []
    for r in range(rounds):
        big.append(timed(1024))
        small.append(timed(1))
        if r < max(1, rounds // 4):
            reads.append(read())
    stop.set()
    out["busy" if busy else "alone"] = {"big_ms": big, "small_ms": small, "read_ms": reads}
print(json.dumps(out))
"""


def _run(pythonpath: str | None, rounds: int, interval_ms: float) -> dict[str, dict[str, list[float]]]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(rounds), str(interval_ms)],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    result: dict[str, dict[str, list[float]]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} / {max(values):,.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-pythonpath", default=None, help="an import root of another revision, run too")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--switch-interval-ms", type=float, nargs="+", default=[5.0, 1.0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    codes = [("this tree", None)] + ([("baseline", args.baseline_pythonpath)] if args.baseline_pythonpath else [])
    rows = []
    for interval in args.switch_interval_ms:
        for name, root in codes:
            result = _run(root, args.rounds, interval)
            rows.append({"code": name, "switch_interval_ms": interval, **result})
            print(json.dumps(rows[-1]), flush=True)
    lines = [
        "| code | switch interval ms | big write alone, median / max ms | big write beside a busy thread | "
        "small write alone | small write beside a busy thread | read alone | read beside a busy thread |",
        "|---|---:|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['code']} | {r['switch_interval_ms']:g} | {_cell(r['alone']['big_ms'])} | {_cell(r['busy']['big_ms'])} "
            f"| {_cell(r['alone']['small_ms'])} | {_cell(r['busy']['small_ms'])} "
            f"| {_cell(r['alone']['read_ms'])} | {_cell(r['busy']['read_ms'])} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        (args.out / "table.md").write_text(
            f"{stamp}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            f"Python {platform.python_version()}\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
