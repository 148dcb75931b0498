"""The memory a store writer's backlog of decisions takes, with and without the byte bound.

    .venv/bin/python benchmarks/store_backlog_memory.py [--decisions 60000] [--chars 19900]

Each case runs in a fresh Python process: a StoreWriter over a SQLite store in a temporary directory,
never started (a store that does not keep up), is handed --decisions Route-like decisions (a prompt of
--chars characters each, its 256-dim float32 embedding) in calls of 64, as a server records them. It
prints the decisions queued and dropped, what the writer counts them as holding (`pending_bytes`,
`held_bytes` per decision) and the process's RSS growth (VmRSS before and after, /proc/self/status):
  - "count bound only": max_pending_bytes past anything the run can queue (the writer before the bound);
  - "256 MiB": the default of --store-max-pending-mib.
Then, for the 256 MiB bound, the writer is started and left to write its backlog, and the RSS growth
is read again once it has drained: as the writer does by default (a drained backlog of TRIM_AFTER_BYTES
or more hands the C heap's free pages back, `release_free_heap`), and with TRIM_AFTER_BYTES set past
any backlog (the writer before that release).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CASE = r"""
import json, sys, tempfile, time
import numpy as np
from lmroute.outcomes.records import Decision
from lmroute.outcomes.store import open_store
from lmroute.outcomes.writer import StoreWriter
from lmroute.service.logs import configure_logging
configure_logging("info")  # JSON lines on stderr: the heap release's line says how long it took

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

n, chars, bound, drain = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if drain == "keep":
    import lmroute.outcomes.writer as writer_module
    writer_module.TRIM_AFTER_BYTES = 1 << 62
with tempfile.TemporaryDirectory() as tmp:
    writer = StoreWriter(lambda: open_store(f"sqlite:{tmp}/s.sqlite3"), max_pending_bytes=bound)
    rng = np.random.default_rng(0)
    before = rss_mib()
    for start in range(0, n, 64):
        batch = []
        for i in range(start, min(n, start + 64)):
            text = f"{i:08d} " + "x" * (chars - 9)
            batch.append(Decision(
                decision_id=f"{i:032x}", time_ms=1_800_000_000_000 + i, kind="route", bundle_version="b",
                scores={"mf": 0.5}, strong_model="s", weak_model="w", prompt_sha256=f"{i:064x}", n_tokens=7,
                router="mf", threshold=0.5, chosen_model="w", propensity=1.0, prompt_text=text,
                prompt_chars=len(text), embedding=rng.standard_normal(256).astype(np.float32)))
        writer.record(batch)
    after = rss_mib()
    queued, _ = writer.pending
    result = {"queued": queued, "dropped": writer.stats.decisions_dropped,
              "pending_mib": writer.pending_bytes[0] / 2**20, "rss_growth_mib": after - before}
    if drain != "none":
        writer.start()
        while writer.pending[0] or writer.writing_s:  # the last round taken, written and done (its release too)
            time.sleep(0.05)
        result.update(drained_growth_mib=rss_mib() - before, heap_releases=writer.stats.heap_releases)
        writer.close()
    print(json.dumps(result))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=60_000)
    ap.add_argument("--chars", type=int, default=19_900)
    args = ap.parse_args()
    print(f"{args.decisions} decisions of {args.chars} characters, recorded to a writer that writes none")
    print("| bound | queued | dropped | held_bytes counted, MiB | RSS growth, MiB | drained: RSS growth, MiB |")
    print("|---|---:|---:|---:|---:|---|")
    cases = (
        ("count bound only", 1 << 50, "none"),
        ("256 MiB", 256 << 20, "release"),
        ("256 MiB, no heap release", 256 << 20, "keep"),
    )
    for name, bound, drain in cases:
        out = subprocess.run(
            [sys.executable, "-c", _CASE, str(args.decisions), str(args.chars), str(bound), drain],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout)
        logged = [json.loads(x) for x in out.stderr.splitlines() if x.startswith("{")]
        took = "".join(f", in {x['ms']} ms" for x in logged if x.get("event") == "store_backlog_heap_released")
        drained = (
            f"{r['drained_growth_mib']:,.0f} (heap released {r['heap_releases']}x{took})"
            if "drained_growth_mib" in r
            else "-"
        )
        print(
            f"| {name} | {r['queued']:,} | {r['dropped']:,} | {r['pending_mib']:,.0f} | {r['rss_growth_mib']:,.0f} "
            f"| {drained} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
