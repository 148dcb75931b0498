"""Two tenants, one flooding: does the other still get its calls answered?

    .venv/bin/python benchmarks/ghz/tenants.py --bundle DIR --out DIR [--seconds 30] [--rounds 2]

The service (`lmroute-serve --bundle DIR`, defaults) on the server core(s); two ghz processes on the
client core(s) at once, open loop, Route (benchmarks/ghz/route.json), each naming its tenant in
`x-lmroute-tenant`: tenant `flood` offers --flood x the server's capacity, tenant `steady` --steady x.
Capacity: closed-loop Route at concurrency 4 and 8 (the best OK calls/s), measured on each server
started. Each round runs the service with `--tenant-fair-share false` (one round over all queued calls,
every call judged by the whole round ahead) and with its default (`true`: the queue takes the tenants in
turn, then each tenant's calls, and admission charges a call the visits before its turn), one after the
other on fresh servers. Reported per tenant: OK calls/s, the share
of its offered calls answered, statuses, OK latency p50 / p99.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loadgen import GhzRun, ghz_version, run_ghz
from procs import ChildServer, cpu_model, default_cores, service_cmd

TENANT_HEADER = "x-lmroute-tenant"
VARIANTS = (("off", "false"), ("on", "true"))  # (label, --tenant-fair-share)


def capacity(srv: ChildServer, args: argparse.Namespace, out: Path, label: str) -> float:
    """Best closed-loop Route OK calls/s at concurrency 4 and 8, after a warm-up (ghz reports named
    `label`_...)."""
    run_ghz(GhzRun("route.json", 4, 1, 4.0, label=f"{label}_warm"), srv.target, args.client_cores, out)
    runs = [
        run_ghz(
            GhzRun("route.json", c, 1, args.capacity_seconds, label=f"{label}_capacity_c{c}"),
            srv.target,
            args.client_cores,
            out,
        )
        for c in (4, 8)
    ]
    return max(r["ok_per_s"] for r in runs)


def tenant_run(tenant: str, rps: int, seconds: float, label: str) -> GhzRun:
    meta = json.dumps({TENANT_HEADER: tenant})
    return GhzRun("route.json", 64, 2, seconds, rps=rps, label=label, extra=["--metadata", meta])


def one_variant(args: argparse.Namespace, fair: str, label: str, out: Path) -> dict[str, Any]:
    cmd = service_cmd(args.bundle, tenant_fair_share=fair)
    with ChildServer(cmd, args.server_cores, stats=False) as srv:
        cap = capacity(srv, args, out, label)
        rates = {"flood": max(1, round(args.flood * cap)), "steady": max(1, round(args.steady * cap))}
        with ThreadPoolExecutor(2) as pool:
            futures = {
                t: pool.submit(
                    run_ghz, tenant_run(t, rps, args.seconds, f"{label}_{t}"), srv.target, args.client_cores, out
                )
                for t, rps in rates.items()
            }
            got = {t: f.result() for t, f in futures.items()}
    row: dict[str, Any] = {"fair_share": fair, "capacity": cap, "tenants": {}}
    for t, r in got.items():
        offered = rates[t] * r["seconds"]
        row["tenants"][t] = {
            "offered_rps": rates[t],
            "ok_per_s": r["ok_per_s"],
            "answered_share": r["ok"] / offered if offered else float("nan"),
            "status": r["status"],
            "p50_ms": r["p50_ms"],
            "p99_ms": r["p99_ms"],
        }
    return row


def report(res: dict[str, Any]) -> str:
    lines = [
        "# Two tenants, one flooding: Route OK rate and latency per tenant, with and without tenants taken in turn",
        "",
        "```bash",
        res["command"],
        "```",
        "",
        f"- {res['date']}; {res['cpu']}; server on core(s) {res['server_cores']}, ghz ({res['ghz']}) on "
        f"{res['client_cores']}; bundle `{res['bundle']}`; {res['seconds']:g} s a phase, both tenants at once, "
        f"open loop; `flood` offers {res['flood']:g}x the capacity measured on that server, `steady` {res['steady']:g}x.",
        "",
        "| round | --tenant-fair-share | capacity calls/s | tenant | offered/s | OK/s | answered | statuses | OK p50 / p99 ms |",
        "|---|---|---:|---|---:|---:|---:|---|---|",
    ]
    for i, rnd in enumerate(res["rounds"], 1):
        for row in rnd:
            for t, r in row["tenants"].items():
                statuses = ", ".join(f"{k} {v}" for k, v in sorted(r["status"].items()))
                lines.append(
                    f"| {i} | {row['fair_share']} | {row['capacity']:.1f} | {t} | {r['offered_rps']} | "
                    f"{r['ok_per_s']:.1f} | {r['answered_share']:.2f} | {statuses} | {r['p50_ms']:.0f} / {r['p99_ms']:.0f} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    server_cores, client_cores = default_cores()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=30.0, help="length of the two-tenant phase")
    p.add_argument("--capacity-seconds", type=float, default=6.0)
    p.add_argument("--flood", type=float, default=10.0, help="the flooding tenant's offered load, x capacity")
    p.add_argument("--steady", type=float, default=0.3, help="the other tenant's offered load, x capacity")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--server-cores", default=server_cores)
    p.add_argument("--client-cores", default=client_cores)
    args = p.parse_args()
    out: Path = args.out.resolve()
    (out / "ghz").mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "server_cores": args.server_cores,
        "client_cores": args.client_cores,
        "ghz": ghz_version(),
        "bundle": str(args.bundle),
        "seconds": args.seconds,
        "flood": args.flood,
        "steady": args.steady,
        "rounds": [
            [one_variant(args, fair, f"r{i}_{label}", out / "ghz") for label, fair in VARIANTS]
            for i in range(args.rounds)
        ],
    }
    (out / "tenants.json").write_text(json.dumps(res, indent=1))
    (out / "RESULTS.md").write_text(report(res))
    print(report(res))


if __name__ == "__main__":
    main()
