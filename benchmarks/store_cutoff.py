"""What `--store-max-decisions` costs a prune: OutcomeStore.newest_cutoff (the time of the Nth newest
decision, found by walking the time index) on a SQLite store of D decisions (prompts of ~700 characters,
256-dim embeddings, as benchmarks/store_secure_delete.py makes them), for several N; best of 3 each.

    .venv/bin/python benchmarks/store_cutoff.py [--decisions 300000]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lmroute.outcomes.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "ghz"))
from procs import cpu_model
from store_secure_delete import _decision


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=300_000)
    args = ap.parse_args()
    n = args.decisions
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:{Path(tmp) / 's.sqlite3'}")
        start_ms = int(time.time() * 1000) - n
        for first in range(0, n, 5000):
            store.write([_decision(i, start_ms) for i in range(first, min(first + 5000, n))], [])
        store.checkpoint()
        print(
            f"# {n} decisions; {cpu_model()}; Python {platform.python_version()}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        )
        print("| keep N | ms (best of 3) |\n|---:|---:|")
        for keep in (1000, n // 10, n // 2, n - 1):
            best = min(_timed(store.newest_cutoff, keep) for _ in range(3))
            print(f"| {keep} | {best * 1000:.1f} |")
        store.close()


def _timed(f: Callable[[int], object], arg: int) -> float:
    t = time.perf_counter()
    f(arg)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
