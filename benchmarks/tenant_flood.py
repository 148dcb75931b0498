"""One tenant's flood of large Score calls against another tenant's small Route calls, on one server.

Four threads of tenant `flood` send Score calls of 256 prompts (routers mf, sw_ranking) back to back; one
thread of tenant `quiet` sends a one-prompt Route (mf, threshold 0.5) every 20 ms. Tenants are named in the
x-lmroute-tenant metadata; no retries (what the server answers, not what a client makes of it). Per
server and round: the quiet tenant's calls answered and refused (by reason) and their latency, and the
flood's calls answered and refused. With `--baseline-pythonpath DIR` the same runs against a server
importing `lmroute` from DIR first (an older revision laid out as DIR/lmroute), interleaved round by round.

    .venv/bin/python benchmarks/tenant_flood.py --bundle B [--baseline-pythonpath DIR] [--rounds 3]
        [--seconds 6] --out benchmarks/results/tenant_flood
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent / "ghz"))
from procs import ChildServer, cpu_model, service_cmd

from lmroute.service.client_retry import error_reason
from lmroute.v1 import router_pb2, router_pb2_grpc

FLOOD_THREADS = 4
FLOOD_PROMPTS = 256
QUIET_EVERY_S = 0.02


def _flood(target: str, stop: float, out: Counter[str]) -> None:
    stub = router_pb2_grpc.RouterServiceStub(grpc.insecure_channel(target))
    prompts = [router_pb2.Prompt(text=f"flood prompt number {i} " * 40) for i in range(FLOOD_PROMPTS)]
    req = router_pb2.ScoreRequest(prompts=prompts, routers=["mf", "sw_ranking"])
    while time.time() < stop:
        try:
            stub.Score(req, metadata=[("x-lmroute-tenant", "flood")], timeout=5)
            out["OK"] += 1
        except grpc.RpcError as err:
            out[error_reason(err) or err.code().name] += 1


def _quiet(target: str, stop: float, out: Counter[str], latencies: list[float]) -> None:
    stub = router_pb2_grpc.RouterServiceStub(grpc.insecure_channel(target))
    req = router_pb2.RouteRequest(prompt=router_pb2.Prompt(text="a quiet tenant's prompt"), router="mf", threshold=0.5)
    while time.time() < stop:
        t0 = time.perf_counter()
        try:
            stub.Route(req, metadata=[("x-lmroute-tenant", "quiet")], timeout=5)
            out["OK"] += 1
            latencies.append(time.perf_counter() - t0)
        except grpc.RpcError as err:
            out[error_reason(err) or err.code().name] += 1
        time.sleep(QUIET_EVERY_S)


def one_run(cmd: list[str], seconds: float) -> dict[str, Any]:
    flood: Counter[str] = Counter()
    quiet: Counter[str] = Counter()
    latencies: list[float] = []
    with ChildServer(cmd, None, stats=False) as srv:
        stop = time.time() + seconds
        threads = [threading.Thread(target=_flood, args=(srv.target, stop, flood)) for _ in range(FLOOD_THREADS)]
        threads.append(threading.Thread(target=_quiet, args=(srv.target, stop, quiet, latencies)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lat = sorted(latencies)
    return {
        "quiet": dict(quiet),
        "flood": dict(flood),
        "quiet_p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "quiet_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1) if lat else None,
    }


def _cell(run: dict[str, Any]) -> str:
    quiet = run["quiet"]
    refused = {k: v for k, v in quiet.items() if k != "OK"}
    return (
        f"{quiet.get('OK', 0)} OK, refused {refused or 0}; p50 / p99 {run['quiet_p50_ms']} / {run['quiet_p99_ms']} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--baseline-pythonpath", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    servers = [("this revision", service_cmd(args.bundle))]
    if args.baseline_pythonpath is not None:
        servers.insert(0, ("baseline", ["env", f"PYTHONPATH={args.baseline_pythonpath}", *service_cmd(args.bundle)]))
    rounds = [{name: one_run(cmd, args.seconds) for name, cmd in servers} for _ in range(args.rounds)]
    names = [name for name, _ in servers]
    lines = [
        "# One tenant's flood against another tenant's calls",
        "",
        "```bash",
        " ".join(["   .venv/bin/python benchmarks/tenant_flood.py", *sys.argv[1:]]).strip(),
        "```",
        "",
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {cpu_model()}; Python {platform.python_version()};"
        f" server and client unpinned on the same machine; {args.seconds:g} s a run, {args.rounds} interleaved rounds.",
        f"- Flood: {FLOOD_THREADS} threads of Score calls of {FLOOD_PROMPTS} prompts (tenant `flood`); quiet: one"
        f" Route every {QUIET_EVERY_S * 1000:g} ms (tenant `quiet`); server defaults (`lmroute-serve --bundle"
        f" {args.bundle}`), no client retries.",
        "",
        "| round | " + " | ".join(f"{n}: the quiet tenant's Route calls" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for i, row in enumerate(rounds, 1):
        lines.append(f"| {i} | " + " | ".join(_cell(row[n]) for n in names) + " |")
    lines += [
        "",
        "| server | quiet calls answered, share (median of rounds) | flood calls answered (median) |",
        "|---|---:|---:|",
    ]
    for n in names:
        shares = [r[n]["quiet"].get("OK", 0) / max(1, sum(r[n]["quiet"].values())) for r in rounds]
        flood_ok = [r[n]["flood"].get("OK", 0) for r in rounds]
        lines.append(f"| {n} | {statistics.median(shares):.2f} | {statistics.median(flood_ok):g} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"servers": names, "rounds": rounds}, indent=1))
    (args.out / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
