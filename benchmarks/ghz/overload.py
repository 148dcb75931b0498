"""Overload benchmark: Route traffic at 1x, 2x, 5x and 10x the measured capacity, with one caller
sending 64-prompt Score calls among the Route callers, against one `lmroute-serve` with its defaults.

    scripts/install_ghz.sh
    .venv/bin/python benchmarks/ghz/overload.py --bundle DIR --out benchmarks/ghz/results/overload

Server-side work is pinned to `--server-cores` and ghz to `--client-cores` (taskset), as in run.py.
1. Capacity: closed-loop Route (ghz, concurrency 16 and 32, no Score caller); the better OK calls/s is
   the capacity C (one prompt per call, so also prompts/s).
2. For each multiple k of `--loads`: open-loop Route at k x C calls/s (ghz --async --rps, the committed
   route.json prompts: refused calls do not multiply the offered load) and, at the same time, one
   caller of 64-prompt Score calls, all routers (the 64 prompts of prompts.json), both for `--seconds`.
   The Score caller is a Python client that behaves as the project's clients do: one call at a time,
   deadline 60 s, and after RESOURCE_EXHAUSTED it waits the RetryInfo delay before the next call. A
   Score call answered OK with some prompts failed alone (queue timeout) counts as OK_PARTIAL, and its
   scored prompts count as OK prompts. Recorded per phase: status counts of each, latency
   percentiles of the OK calls, OK prompts/s (OK Route calls + the scored prompts of Score calls), the
   share of the phase the scorer spent scoring (from the server's timings: the throughput measure that
   does not depend on the mix of cheap and costly prompts), the server's log lines per second (its
   stderr at the default log level, info), and its refusal counters.
The goals it checks (printed and written): OK prompts/s at every load >= 90 % of the best phase;
accepted (OK) Route p99 <= 2 x the queue timeout (a 64-prompt Score call's own scoring takes longer
than that on a CPU core, so its latency is reported, not judged); no status other than OK,
RESOURCE_EXHAUSTED and UNAVAILABLE; log lines per second bounded (reported).
Writes OUT/overload.json, OUT/RESULTS.md and the ghz reports (OUT/ghz/, without per-call details).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import GhzRun, ghz_version, run_ghz
from procs import ChildServer, service_cmd
from run import default_cores

from lmroute.service.client import RouterClient
from lmroute.service.config import BatchPolicy
from lmroute.service.stats import diff_snapshots

REPO = HERE.parent.parent
SCORE_PROMPTS = 64
OK_CODES = {"OK", "ResourceExhausted", "Unavailable"}  # ghz writes status names in CamelCase


def score_prompts() -> list[str]:
    return [p["text"] for p in json.loads((HERE / "prompts.json").read_text())][:SCORE_PROMPTS]


def _retry_delay_s(err: grpc.RpcError) -> float:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToMilliseconds() / 1000.0
    return 0.05


def score_caller(target: str, seconds: float) -> dict[str, Any]:
    """One caller of 64-prompt Score calls for `seconds`, honouring RetryInfo; its summary."""
    prompts = score_prompts()
    status: Counter[str] = Counter()
    ok_ms: list[float] = []
    ok_prompts = 0
    t_end = time.monotonic() + seconds
    with RouterClient(target, timeout_s=60) as client:
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            try:
                res = client.score(prompts)
                scored = sum(r.status.code == 0 for r in res.results)
                ok_prompts += scored
                status["OK" if scored == len(prompts) else "OK_PARTIAL"] += 1  # some prompts timed out alone
                ok_ms.append((time.perf_counter() - t0) * 1000)
            except grpc.RpcError as err:
                code = err.code()
                status[code.name] += 1
                if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    time.sleep(min(_retry_delay_s(err), max(t_end - time.monotonic(), 0.0)))
    ok = np.asarray(ok_ms)
    pct = {f"p{q}_ms": float(np.percentile(ok, q)) if ok.size else float("nan") for q in (50, 99)}
    return {"ok": int(ok.size), "ok_prompts": ok_prompts, "status": dict(status), "ok_per_s": ok.size / seconds, **pct}


def _status_ok(row: dict[str, Any]) -> bool:
    return set(row["status"]) <= OK_CODES | {"OK_PARTIAL", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out.resolve()  # ghz runs in benchmarks/ghz
    out.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {int(c) for c in args.client_cores.split(",")})  # the Score caller's core(s)
    policy = BatchPolicy()
    res: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": _cpu_model(),
        "server_cores": args.server_cores,
        "client_cores": args.client_cores,
        "ghz": ghz_version(),
        "queue_timeout_ms": policy.queue_timeout_ms,
        "bundle": str(args.bundle),
        "phases": [],
    }
    cmd = service_cmd(args.bundle, log_level="info")
    with ChildServer(cmd, args.server_cores, stats=True) as srv:
        capacity, cap = measure_capacity(srv.target, args, out)
        res["capacity"] = {"calls_per_s": capacity, "runs": cap}
        _log(f"capacity {capacity:.1f} Route calls/s")
        for k in args.loads:
            rps = max(1, round(k * capacity))
            before = srv.snapshot_after(time.time(), idle=True)
            lines0, t0 = srv.lines, time.monotonic()
            with ThreadPoolExecutor(2) as pool:
                route = pool.submit(
                    run_ghz,
                    GhzRun("route.json", 64, 4, args.seconds, rps=rps, label=f"x{k}_route"),
                    srv.target,
                    args.client_cores,
                    out / "ghz",
                )
                score = pool.submit(score_caller, srv.target, args.seconds)
                r, s = route.result(), score.result()
            wall = time.monotonic() - t0
            lines = srv.lines - lines0
            after = srv.snapshot_after(time.time(), idle=True)
            counters = {
                key: after["counters"].get(key, 0) - before["counters"].get(key, 0) for key in after["counters"]
            }
            ok_prompts = r["ok"] + s["ok_prompts"]
            phase = {
                "load": k,
                "offered_route_rps": rps,
                "route": r,
                "score": s,
                "ok_prompts_per_s": ok_prompts / wall,  # the wall includes the Score call still running at the end
                "log_lines": lines,
                "log_lines_per_s": lines / wall,
                "scorer_busy": diff_snapshots(before, after)["score_ms"].total / 1000.0 / wall,
                "server_counters": counters,
            }
            res["phases"].append(phase)
            _log(
                f"x{k}: {phase['ok_prompts_per_s']:.1f} OK prompts/s; Route {r['status']} p99 {r['p99_ms']:.0f} ms; "
                f"Score {s['status']} p99 {s['p99_ms']:.0f} ms; {phase['log_lines_per_s']:.1f} log lines/s"
            )
    best = max(p["ok_prompts_per_s"] for p in res["phases"])
    limit_ms = 2 * policy.queue_timeout_ms
    for p in res["phases"]:
        p["of_best"] = p["ok_prompts_per_s"] / best
        p["goals"] = {
            "throughput_ge_90pct_of_best": p["of_best"] >= 0.9,
            "route_accepted_p99_le_2x_queue_timeout": not (p["route"]["ok"] and p["route"]["p99_ms"] > limit_ms),
            "only_ok_resource_exhausted_unavailable": _status_ok(p["route"]) and _status_ok(p["score"]),
        }
    (out / "overload.json").write_text(json.dumps(res, indent=1))
    (out / "RESULTS.md").write_text(report(res))
    return res


def report(res: dict[str, Any]) -> str:
    limit_ms = 2 * res["queue_timeout_ms"]
    lines = [
        "# Overload: Route at 1x-10x capacity with one 64-prompt Score caller",
        "",
        f"Command: `{res['command']}`  ",
        f"CPU: {res['cpu']}; server on core(s) {res['server_cores']}, ghz on {res['client_cores']}; {res['ghz']}  ",
        f"Bundle: `{res['bundle']}`; server defaults (queue timeout {res['queue_timeout_ms']} ms).  ",
        f"Capacity (closed-loop Route, best of concurrency 16 / 32): {res['capacity']['calls_per_s']:.1f} calls/s.",
        "",
        "| load | Route offered/s | Route OK/s | Route statuses | Route OK p50 / p99 ms | Score calls answered | "
        "Score statuses | Score p99 ms | OK prompts/s | of best | scorer busy | log lines/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in res["phases"]:
        r, s = p["route"], p["score"]
        lines.append(
            f"| {p['load']}x | {p['offered_route_rps']} | {r['ok_per_s']:.1f} | {_codes(r)} | "
            f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} | {s['ok']} | {_codes(s)} | {s['p99_ms']:.0f} | "
            f"{p['ok_prompts_per_s']:.1f} | {p['of_best']:.2f} | {p['scorer_busy']:.0%} | {p['log_lines_per_s']:.1f} |"
        )
    lines += ["", "Server refusal counters per phase (calls):", ""]
    for p in res["phases"]:
        c = p["server_counters"]
        lines.append(
            f"- {p['load']}x: queue full {c.get('rejected_queue_full', 0)}, overloaded {c.get('rejected_overload', 0)}, "
            f"deadline {c.get('rejected_deadline', 0)}, expired in the queue {c.get('dropped_queue_timeout', 0)} "
            f"prompts, batches {c.get('batches', 0)}"
        )
    lines += ["", "Goals:", ""]
    for p in res["phases"]:
        g = p["goals"]
        lines.append(
            f"- {p['load']}x: OK prompts/s >= 90 % of the best phase: {_yes(g['throughput_ge_90pct_of_best'])}; "
            f"accepted Route p99 <= {limit_ms} ms: {_yes(g['route_accepted_p99_le_2x_queue_timeout'])}; only OK / "
            f"RESOURCE_EXHAUSTED / UNAVAILABLE: {_yes(g['only_ok_resource_exhausted_unavailable'])}"
        )
    return "\n".join(lines) + "\n"


def _codes(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(row["status"].items()))


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def measure_capacity(target: str, args: argparse.Namespace, out: Path) -> tuple[float, list[dict[str, Any]]]:
    """Warm the server, then closed-loop Route at concurrency 16 and 32 for args.capacity_seconds each:
    (the best OK calls/s, the two runs)."""
    run_ghz(GhzRun("route.json", 4, 1, 4.0, label="warm"), target, args.client_cores, out / "ghz")
    cap = [
        run_ghz(
            GhzRun("route.json", c, 1, args.capacity_seconds, label=f"capacity_c{c}"),
            target,
            args.client_cores,
            out / "ghz",
        )
        for c in (16, 32)
    ]
    return max(r["ok_per_s"] for r in cap), cap


def _cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> None:
    server_cores, client_cores = default_cores()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=20.0, help="length of each load phase")
    p.add_argument("--capacity-seconds", type=float, default=8.0)
    p.add_argument("--loads", type=int, nargs="+", default=[1, 2, 5, 10], help="multiples of the capacity")
    p.add_argument("--server-cores", default=server_cores)
    p.add_argument("--client-cores", default=client_cores)
    res = run(p.parse_args())
    print(report(res))


if __name__ == "__main__":
    main()
