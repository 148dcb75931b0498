"""What SQLite's secure_delete (on in every store lmroute opens) costs a retention prune: a store of N
expired decisions (prompts of ~700 characters, 256-dim embeddings) copied and pruned in batches of 5,000,
with secure_delete on and off, interleaved; wall and CPU seconds of each prune.

    .venv/bin/python benchmarks/store_secure_delete.py [--decisions 100000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lmroute.outcomes.records import Decision, prompt_sha256
from lmroute.outcomes.store import open_store

sys.path.insert(0, str(Path(__file__).resolve().parent / "ghz"))
from procs import cpu_model

DAY_MS = 86_400_000


def _decision(i: int, at_ms: int) -> Decision:
    text = f"an expired prompt of some length, like a real question {i} " * 12
    return Decision(
        decision_id=f"{at_ms + i:012x}{i:020x}",
        time_ms=at_ms + i,
        kind="route",
        bundle_version="20261206-aaaaaaaa",
        scores={"mf": 0.25},
        strong_model="strong-m",
        weak_model="weak-m",
        prompt_sha256=prompt_sha256(text),
        prompt_text=text,
        n_tokens=90,
        encoder_id="0123456789abcdef",
        router="mf",
        threshold=0.5,
        chosen_model="weak-m",
        propensity=1.0,
        embedding=np.full(256, 0.0625, dtype=np.float32),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.sqlite3"
        store = open_store(f"sqlite:{src}")
        old_ms = int(time.time() * 1000) - 40 * DAY_MS
        for start in range(0, args.decisions, 5000):
            store.write([_decision(i, old_ms) for i in range(start, min(start + 5000, args.decisions))], [])
        store.checkpoint()
        store.close()
        print(
            f"# {args.decisions} expired decisions, {src.stat().st_size / 2**20:.0f} MiB; {cpu_model()}; "
            f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        )
        print("| round | secure_delete | wall s | CPU s |\n|---|---|---:|---:|")
        for r in range(1, args.rounds + 1):
            for mode in ("OFF", "ON"):
                copy = Path(tmp) / f"copy-{mode}.sqlite3"
                shutil.copy(src, copy)
                store = open_store(f"sqlite:{copy}")
                store._exec(f"PRAGMA secure_delete={mode}")  # the store turns it on; off for the comparison
                t, c = time.perf_counter(), time.process_time()
                while store.prune(old_ms + args.decisions + 1, limit=5000)[0] == 5000:
                    pass
                print(f"| {r} | {mode} | {time.perf_counter() - t:.2f} | {time.process_time() - c:.2f} |")
                store.close()
                copy.unlink()


if __name__ == "__main__":
    main()
