"""What a refused call costs the server, beside what an empty call costs: server CPU time per call.

    .venv/bin/python benchmarks/ghz/refusal_cost.py [--seconds 6] [--out DIR]

Four servers, each pinned to `--server-cores` with ghz on `--client-cores` (closed-loop Route at
concurrency 16, the committed route.json): `empty_server.py` (the same grpc.aio setup and interceptor,
constant answers), the same without the interceptor, the same without the interceptor refusing every
call (`--refuse`: a bare RESOURCE_EXHAUSTED, the least a refusal costs on grpc.aio), and `fake_server.py
--fake-delay-s 3` (the real service over a FakeScorer whose batch takes 3 s: after one primed call
admission refuses nearly every call, RESOURCE_EXHAUSTED with a retry delay). The cost of a call is the
server process's CPU time (utime + stime, /proc) over the run divided by the calls ghz sent.
Prints a table and writes it to OUT/RESULTS.md when `--out` is given.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import GhzRun, run_ghz
from overload import _cpu_model
from procs import ChildServer, default_cores


def measure(cmd: list[str], label: str, args: argparse.Namespace, prime: bool) -> dict[str, object]:
    with ChildServer(cmd, args.server_cores, stats=False) as srv:
        if prime:  # one batch measured, so admission knows a batch takes seconds
            run_ghz(
                GhzRun("route.json", 1, 1, 4.0, label=f"{label}_prime"), srv.target, args.client_cores, args.ghz_dir
            )
        cpu0 = srv.cpu_seconds()
        r = run_ghz(GhzRun("route.json", 16, 1, args.seconds, label=label), srv.target, args.client_cores, args.ghz_dir)
        cpu = srv.cpu_seconds() - cpu0
    return {"label": label, "status": r["status"], "calls": r["count"], "ms_per_call": cpu * 1000 / max(r["count"], 1)}


def main() -> None:
    server_cores, client_cores = default_cores()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--server-cores", default=server_cores)
    ap.add_argument("--client-cores", default=client_cores)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.ghz_dir = Path("/tmp/lmroute-refusal-cost-ghz")
    empty = [sys.executable, str(HERE / "empty_server.py")]
    rows = [
        measure(empty, "empty", args, prime=False),
        measure([*empty, "--no-interceptor"], "empty, no interceptor", args, prime=False),
        measure([*empty, "--no-interceptor", "--refuse"], "grpc.aio alone refusing", args, prime=False),
        measure(
            [sys.executable, str(HERE / "fake_server.py"), "--port", "0", "--fake-delay-s", "3"],
            "refused",
            args,
            prime=True,
        ),
    ]
    lines = [
        "# What a refused call costs the server",
        "",
        f"Command: `{shlex.join(['.venv/bin/python', *sys.argv])}`  ",
        f"CPU: {_cpu_model()}; server on core(s) {args.server_cores}, ghz on {args.client_cores}; "
        f"{time.strftime('%Y-%m-%d, %H:%M UTC', time.gmtime())}.",
        "",
        "| server | ghz statuses | calls | server CPU ms a call |",
        "|---|---|---:|---:|",
    ]
    for row in rows:
        status = ", ".join(f"{k} {v}" for k, v in sorted(row["status"].items()))  # type: ignore[attr-defined]
        lines.append(f"| {row['label']} | {status} | {row['calls']} | {row['ms_per_call']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
