"""Overload benchmark: Route traffic at 1x, 2x, 5x and 10x the measured capacity, with one caller
sending 64-prompt Score calls among the Route callers, against one `lmroute-serve` with its defaults.

    scripts/install_ghz.sh
    .venv/bin/python benchmarks/ghz/overload.py --bundle DIR --out benchmarks/ghz/results/overload

Server-side work is pinned to `--server-cores` and ghz to `--client-cores` (taskset), as in run.py.
0. The transport's own cost of a call: the empty handler (`empty_server.py`, the same grpc.aio setup
   and interceptor) pinned to the server cores under closed-loop Route at concurrency 16; its CPU time
   (utime + stime) per call. A refused call costs the server about this much (it is answered before
   any scoring work), so at k x capacity the refusals alone take (refused calls/s) x this of the core.
1. Capacity: closed-loop Route (ghz, concurrency 4 and 8, no Score caller: few enough callers that
   admission refuses none, so every call sent is scored); the better OK calls/s is the capacity C (one
   prompt per call, so also prompts/s). Then the cost of a prompt of each kind, from the server's
   scoring time: a Route prompt's over the capacity runs, a Score prompt's (all routers) over
   `--cost-score-calls` Score calls made alone.
2. For each multiple k of `--loads`: open-loop Route at k x C calls/s (ghz --async --rps, the committed
   route.json prompts: refused calls do not multiply the offered load) and, at the same time, one
   caller of 64-prompt Score calls, all routers (the 64 prompts of prompts.json), both for `--seconds`.
   The Score caller is a Python client that behaves as the project's clients do: one call at a time,
   deadline 60 s, and after RESOURCE_EXHAUSTED it waits the RetryInfo delay before the next call. A
   Score call answered OK with some prompts failed alone (queue timeout) counts as OK_PARTIAL, and its
   scored prompts count as OK prompts. Recorded per phase: status counts of each, latency
   percentiles of the OK calls, OK prompts/s (OK Route calls + the scored prompts of Score calls), OK
   work/s (the same prompts, each counted at its kind's cost: the seconds of scoring per second that
   reached callers as answers, a throughput that does not depend on the mix of cheap and costly
   prompts), the server process's CPU time per second, the share of the phase its scoring thread spent
   in batches (`scorer_busy`, its wall time; `overload_costs.py` fits per-kind costs to it), the
   refused calls' share of the core at the transport's cost, the server's log lines per second (its stderr at the default log level, info),
   and its refusal counters.
The goals it checks (printed and written): OK work/s at every load >= 90 % of the best phase (OK
prompts/s is reported beside it);
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
import shlex
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import GhzRun, ghz_version, run_ghz
from procs import ChildServer, service_cmd
from run import default_cores

from lmroute.service.client import NO_RETRY, RouterClient
from lmroute.service.client_retry import retry_delay_s
from lmroute.service.config import BatchPolicy
from lmroute.service.stats import diff_snapshots

REPO = HERE.parent.parent
SCORE_PROMPTS = 64
OK_CODES = {"OK", "ResourceExhausted", "Unavailable"}  # ghz writes status names in CamelCase


def score_prompts() -> list[str]:
    return [p["text"] for p in json.loads((HERE / "prompts.json").read_text())][:SCORE_PROMPTS]


def score_caller(target: str, seconds: float, calls: int | None = None, tenant: str = "") -> dict[str, Any]:
    """One caller of 64-prompt Score calls for `seconds` (or `calls` calls), honouring RetryInfo, naming
    `tenant` in its metadata when given; its summary."""
    prompts = score_prompts()
    status: Counter[str] = Counter()
    ok_ms: list[float] = []
    ok_prompts = 0
    t_end = time.monotonic() + seconds
    with RouterClient(target, timeout_s=60, tenant=tenant or None, retry=NO_RETRY) as client:  # retries: below
        while time.monotonic() < t_end and (calls is None or sum(status.values()) < calls):
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
                    time.sleep(min(retry_delay_s(err) or 0.05, max(t_end - time.monotonic(), 0.0)))
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
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "cpu": _cpu_model(),
        "n_cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d, %H:%M UTC", time.gmtime()),
        "server_cores": args.server_cores,
        "client_cores": args.client_cores,
        "ghz": ghz_version(),
        "queue_timeout_ms": policy.queue_timeout_ms,
        "bundle": str(args.bundle),
        "server_args": args.server_args,
        "score_tenant": args.score_tenant,
        "phases": [],
    }
    transport_ms = measure_transport(args, out)
    _log(f"transport: {transport_ms:.3f} ms of server CPU a call (empty handler)")
    cmd = [*service_cmd(args.bundle, log_level="info"), *shlex.split(args.server_args)]
    with ChildServer(cmd, args.server_cores, stats=True) as srv:
        capacity, cap = measure_capacity(srv, args, out)
        res["transport_ms"] = transport_ms
        res["capacity"] = {"calls_per_s": capacity, "runs": cap}
        costs = measure_costs(srv, args, cap)
        res["prompt_cost_ms"] = costs
        _log(
            f"capacity {capacity:.1f} Route calls/s; scorer ms a prompt: Route {costs['route']:.1f}, "
            f"Score {costs['score']:.1f}"
        )
        for k in args.loads:
            rps = max(1, round(k * capacity))
            before = srv.snapshot_after(time.time(), idle=True)
            lines0, t0, cpu0, loop0 = srv.lines, time.monotonic(), srv.cpu_seconds(), srv.loop_cpu_seconds()
            with ThreadPoolExecutor(2) as pool:
                route = pool.submit(
                    run_ghz,
                    GhzRun("route.json", 64, 4, args.seconds, rps=rps, label=f"x{k}_route"),
                    srv.target,
                    args.client_cores,
                    out / "ghz",
                )
                score = pool.submit(score_caller, srv.target, args.seconds, None, args.score_tenant)
                r, s = route.result(), score.result()
            wall = time.monotonic() - t0
            cpu, loop_cpu = srv.cpu_seconds() - cpu0, srv.loop_cpu_seconds() - loop0
            lines = srv.lines - lines0
            after = srv.snapshot_after(time.time(), idle=True)
            counters = {
                key: after["counters"].get(key, 0) - before["counters"].get(key, 0) for key in after["counters"]
            }
            ok_prompts = r["ok"] + s["ok_prompts"]
            ok_work_ms = r["ok"] * costs["route"] + s["ok_prompts"] * costs["score"]
            phase = {
                "load": k,
                "offered_route_rps": rps,
                "route": r,
                "score": s,
                "ok_prompts_per_s": ok_prompts / wall,  # the wall includes the Score call still running at the end
                "ok_work_per_s": ok_work_ms / 1000.0 / wall,  # scorer seconds a second that were answered OK
                "server_cpu_per_s": cpu / wall,
                "loop_cpu_per_s": loop_cpu / wall,
                "refused_calls": (refused := _refused(r) + _refused(s)),
                "refusal_share": refused * transport_ms / 1000.0 / wall,  # of the core, at the transport's cost
                "wall_s": wall,
                "log_lines": lines,
                "log_lines_per_s": lines / wall,
                "scorer_busy": diff_snapshots(before, after)["score_ms"].total / 1000.0 / wall,
                "server_counters": counters,
            }
            res["phases"].append(phase)
            _log(
                f"x{k}: {phase['ok_prompts_per_s']:.1f} OK prompts/s, OK work {phase['ok_work_per_s']:.2f}; Route {r['status']} p99 {r['p99_ms']:.0f} ms; "
                f"Score {s['status']} p99 {s['p99_ms']:.0f} ms; {phase['log_lines_per_s']:.1f} log lines/s"
            )
    best = max(p["ok_work_per_s"] for p in res["phases"])
    best_prompts = max(p["ok_prompts_per_s"] for p in res["phases"])
    limit_ms = 2 * policy.queue_timeout_ms
    for p in res["phases"]:
        p["of_best"] = p["ok_work_per_s"] / best
        p["prompts_of_best"] = p["ok_prompts_per_s"] / best_prompts
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
        f"CPU: {res['cpu']} ({res['n_cpus']} CPUs); server on core(s) {res['server_cores']}, ghz {res['ghz']} on "
        f"{res['client_cores']}; {res['date']}.  ",
        f"Bundle: `{res['bundle']}`; server defaults (queue timeout {res['queue_timeout_ms']} ms)"
        f"{', and ' + res['server_args'] if res['server_args'] else ''}.  ",
        f"Capacity (closed-loop Route, best of concurrency 4 / 8): {res['capacity']['calls_per_s']:.1f} calls/s.  ",
        f"Scoring time a prompt (the server's, Route runs / Score calls alone): Route "
        f"{res['prompt_cost_ms']['route']:.1f} ms, Score {res['prompt_cost_ms']['score']:.1f} ms.  ",
        f"Transport cost of a call (empty handler, server CPU per call): {res['transport_ms']:.3f} ms."
        + (
            f"  \nTenants: the Score caller names `{res['score_tenant']}`, the Route callers none."
            if res.get("score_tenant")
            else ""
        ),
        "",
        "| load | Route offered/s | Route OK/s | Route statuses | Route OK p50 / p99 ms | Score calls answered | "
        "Score statuses | Score p99 ms | OK prompts/s (of best) | OK work/s | of best | server CPU/s | "
        "event-loop thread CPU/s | refusals at the transport's cost | prompts scored/s | log lines/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in res["phases"]:
        r, s = p["route"], p["score"]
        lines.append(
            f"| {p['load']}x | {p['offered_route_rps']} | {r['ok_per_s']:.1f} | {_codes(r)} | "
            f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} | {s['ok']} | {_codes(s)} | {s['p99_ms']:.0f} | "
            f"{p['ok_prompts_per_s']:.1f} ({p['prompts_of_best']:.2f}) | {p['ok_work_per_s']:.2f} | {p['of_best']:.2f} | "
            f"{p['server_cpu_per_s']:.2f} | {p['loop_cpu_per_s']:.2f} | {p['refusal_share']:.2f} | "
            f"{p['server_counters'].get('items_scored', 0) / p['wall_s']:.1f} | {p['log_lines_per_s']:.1f} |"
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
            f"- {p['load']}x: OK work/s >= 90 % of the best phase: {_yes(g['throughput_ge_90pct_of_best'])}; "
            f"accepted Route p99 <= {limit_ms} ms: {_yes(g['route_accepted_p99_le_2x_queue_timeout'])}; only OK / "
            f"RESOURCE_EXHAUSTED / UNAVAILABLE: {_yes(g['only_ok_resource_exhausted_unavailable'])}"
        )
    return "\n".join(lines) + "\n"


def _codes(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(row["status"].items()))


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


def _refused(row: dict[str, Any]) -> int:
    return sum(n for code, n in row["status"].items() if code in {"ResourceExhausted", "RESOURCE_EXHAUSTED"})


def measure_transport(args: argparse.Namespace, out: Path) -> float:
    """Server CPU ms per call of the empty handler (empty_server.py) under closed-loop Route."""
    with ChildServer([sys.executable, str(HERE / "empty_server.py")], args.server_cores, stats=False) as srv:
        run_ghz(GhzRun("route.json", 4, 1, 2.0, label="transport_warm"), srv.target, args.client_cores, out / "ghz")
        cpu0 = srv.cpu_seconds()
        r = run_ghz(GhzRun("route.json", 16, 1, 5.0, label="transport"), srv.target, args.client_cores, out / "ghz")
        return (srv.cpu_seconds() - cpu0) * 1000.0 / max(r["count"], 1)


def measure_capacity(srv: ChildServer, args: argparse.Namespace, out: Path) -> tuple[float, list[dict[str, Any]]]:
    """Warm the server, then closed-loop Route at concurrency 4 and 8 for args.capacity_seconds each:
    (the best OK calls/s, the two runs, each with the server's scoring ms over it)."""
    run_ghz(GhzRun("route.json", 4, 1, 4.0, label="warm"), srv.target, args.client_cores, out / "ghz")
    cap = []
    for c in (4, 8):
        before = srv.snapshot_after(time.time(), idle=True)
        run = run_ghz(
            GhzRun("route.json", c, 1, args.capacity_seconds, label=f"capacity_c{c}"),
            srv.target,
            args.client_cores,
            out / "ghz",
        )
        after = srv.snapshot_after(time.time(), idle=True)
        cap.append({**run, "server_score_ms": diff_snapshots(before, after)["score_ms"].total})
    return max(r["ok_per_s"] for r in cap), cap


def measure_costs(srv: ChildServer, args: argparse.Namespace, cap: list[dict[str, Any]]) -> dict[str, float]:
    """The server's scoring ms a prompt: a Route prompt's over the capacity runs (every OK call is one
    prompt), a Score prompt's (all routers) over `args.cost_score_calls` Score calls made alone."""
    route_ms = sum(r["server_score_ms"] for r in cap) / max(sum(r["ok"] for r in cap), 1)
    before = srv.snapshot_after(time.time(), idle=True)
    s = score_caller(srv.target, 600.0, calls=args.cost_score_calls)
    after = srv.snapshot_after(time.time(), idle=True)
    score_ms = diff_snapshots(before, after)["score_ms"].total / max(s["ok_prompts"], 1)
    return {"route": route_ms, "score": score_ms}


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
    p.add_argument("--cost-score-calls", type=int, default=3, help="Score calls made alone to measure their cost")
    p.add_argument("--loads", type=int, nargs="+", default=[1, 2, 5, 10], help="multiples of the capacity")
    p.add_argument("--server-cores", default=server_cores)
    p.add_argument("--client-cores", default=client_cores)
    p.add_argument("--server-args", default="", help="more lmroute-serve flags, e.g. '--scoring-cpus 0'")
    p.add_argument(
        "--score-tenant",
        default="",
        help="the tenant the Score caller names (x-lmroute-tenant); default none, as Route's",
    )
    res = run(p.parse_args())
    print(report(res))


if __name__ == "__main__":
    main()
