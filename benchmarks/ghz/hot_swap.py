"""Hot swap under load: Route traffic at 80 % of the measured capacity while the bundle is swapped 10
times (AdminService ReloadBundle) and a tampered and a corrupt candidate are refused, against one
`lmroute-serve` with its defaults.

    scripts/install_ghz.sh
    .venv/bin/python benchmarks/ghz/hot_swap.py --bundle DIR --out benchmarks/ghz/results/hot_swap

Server-side work is pinned to `--server-cores`, ghz and the admin client to `--client-cores` (taskset),
as in overload.py, whose helpers it uses.
0. Candidates, made from --bundle in a temporary directory: B, a copy re-stamped with another label
   (`lmroute.bundle.writer.restamp_bundle`: the same files, its own bundle_version); "tampered", a copy
   whose manifest.json has one model rating edited; "corrupt", a copy with one byte of a router array
   flipped. The server starts on --bundle itself (A).
1. Idle swaps: A -> B -> A with no traffic (the load and warm-up times of a swap on an idle core).
   Capacity: closed-loop Route (ghz, concurrency 16 and 32); the better OK calls/s is the capacity C.
2. Baseline: open-loop Route at --load x C calls/s (ghz --async --rps, the committed route.json
   prompts) for --baseline-seconds, nothing swapped.
3. Swaps: the same load for --seconds; meanwhile the admin client waits --lead-s, then swaps to B, A,
   B, ... (--swaps times, each --gap-s after the previous one returned), then asks for the tampered
   and the corrupt candidates, then reads GetBundle and routes one prompt to see what serves.
Recorded: every ghz call's start time, latency and status; Route latency percentiles of the baseline,
of the swap phase, and of the swap phase's calls that started while a candidate was being loaded and
warmed vs the others; each swap's load, warm-up and switch times and the RPC's wall time; each
refusal's status and message; the server's peak RSS before and after the swaps; its counters.
Goals it checks: every call of the swap phase OK; all swaps done; both bad candidates refused with
FAILED_PRECONDITION and the last good version still serving.
Writes OUT/hot_swap.json, OUT/RESULTS.md and the ghz reports (OUT/ghz/, without per-call details).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import GhzRun, ghz_version, run_ghz_details
from overload import _cpu_model, _log, measure_capacity
from procs import ChildServer, peak_rss_bytes, service_cmd
from run import default_cores

from lmroute.bundle.loader import read_manifest
from lmroute.bundle.writer import restamp_bundle
from lmroute.service.client import RouterClient
from lmroute.service.stats import diff_snapshots

ROUTE_PROMPT = "Write a haiku about a router that sends hard questions to a strong model."


def rss_bytes(pid: int) -> int:
    """VmRSS of a live process (Linux), bytes; 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_ticks(cores: set[int], pid: int) -> tuple[int, int]:
    """(busy ticks of `cores` from /proc/stat, CPU ticks of process `pid` and its threads): their
    differences over a phase give the share of the server's core(s) that other processes used."""
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            ticks = [int(x) for x in fields]
            busy += sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_comm = stat[stat.rindex(")") + 2 :].split()
    return busy, int(after_comm[11]) + int(after_comm[12])  # utime + stime


def others_share(before: tuple[int, int], after: tuple[int, int], n_cores: int, seconds: float) -> float:
    """Share of the server core(s) used by other processes between two cpu_ticks readings."""
    hz = os.sysconf("SC_CLK_TCK")
    return max((after[0] - before[0]) - (after[1] - before[1]), 0) / hz / (n_cores * seconds)


def describe_bundle(bundle: Path, note: str) -> str:
    """`note` (how the bundle was made), then its routers and encoder from its manifest."""
    m = read_manifest(bundle)
    about = f"routers {', '.join(m.routers)}; encoder {m.encoder.name}"
    return f"{note}; {about}" if note else about


def make_candidates(bundle: Path, work: Path) -> dict[str, Path]:
    """B (a re-stamped copy), a tampered copy (one rating edited in manifest.json) and a corrupt copy
    (one byte of a router array flipped) of `bundle`, under `work`."""
    out = {"b": work / "b", "tampered": work / "tampered", "corrupt": work / "corrupt"}
    for path in out.values():
        shutil.copytree(bundle, path)
    restamp_bundle(out["b"], label="hot-swap benchmark copy")
    manifest = out["tampered"] / "manifest.json"
    text = manifest.read_text()
    model, elo = next(iter(read_manifest(bundle).elo.items()))
    old = f'"{model}": {json.dumps(elo)}'
    if old not in text:
        raise RuntimeError(f"cannot find {old} in {manifest} to tamper with")
    manifest.write_text(text.replace(old, f'"{model}": {json.dumps(elo + 1.0)}', 1))
    array = sorted((out["corrupt"] / "routers").rglob("*.npy"))[0]
    data = bytearray(array.read_bytes())
    data[-1] ^= 0x01
    array.write_bytes(bytes(data))
    return out


def run_ghz_calls(run: GhzRun, target: str, cores: str | None, out_dir: Path) -> tuple[dict[str, Any], np.ndarray]:
    """loadgen.run_ghz, and also every call as (start, epoch seconds; latency, ms; ok 1/0)."""
    summary, details = run_ghz_details(run, target, cores, out_dir)
    calls = np.array(
        [
            (datetime.fromisoformat(d["timestamp"]).timestamp(), d["latency"] / 1e6, d.get("status") == "OK")
            for d in details
        ],
        dtype=np.float64,
    ).reshape(-1, 3)
    return summary, calls


def latency(calls: np.ndarray) -> dict[str, Any]:
    """Count, failures and OK latency percentiles (ms) of (start, ms, ok) rows."""
    ok = calls[calls[:, 2] == 1.0, 1] if calls.size else np.zeros(0)
    pct = {f"p{q}_ms": float(np.percentile(ok, q)) if ok.size else float("nan") for q in (50, 90, 99)}
    return {"calls": int(len(calls)), "failed": int(len(calls) - ok.size), **pct, "max_ms": float(ok.max(initial=0.0))}


class Driver(threading.Thread):
    """The admin client: the swaps, then the bad candidates, then what serves."""

    def __init__(self, target: str, a: Path, cands: dict[str, Path], swaps: int, lead_s: float, gap_s: float) -> None:
        super().__init__(daemon=True)
        self.target, self.a, self.cands = target, a, cands
        self.n_swaps, self.lead_s, self.gap_s = swaps, lead_s, gap_s
        self.swaps: list[dict[str, Any]] = []
        self.refusals: list[dict[str, Any]] = []
        self.after: dict[str, Any] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with RouterClient(self.target, timeout_s=300) as c:
                time.sleep(self.lead_s)
                for i in range(self.n_swaps):
                    path = self.cands["b"] if i % 2 == 0 else self.a
                    t0 = time.time()
                    r = c.reload_bundle(str(path))
                    t1 = time.time()
                    self.swaps.append(
                        {
                            "to": r.bundle_version,
                            "from": r.previous_version,
                            "path": str(path),
                            "load_s": r.load_seconds,
                            "warm_s": r.warm_seconds,
                            "switch_ms": r.switch_seconds * 1000,
                            "release_ms": r.release_seconds * 1000,
                            "rpc_s": t1 - t0,
                            "window": (t0, t1),
                        }
                    )
                    _log(f"swap {i + 1}: {r.previous_version} -> {r.bundle_version} in {t1 - t0:.2f} s")
                    time.sleep(self.gap_s)
                for name in ("tampered", "corrupt"):
                    t0 = time.time()
                    try:
                        c.reload_bundle(str(self.cands[name]))
                        code, message = "OK", ""
                    except grpc.RpcError as err:
                        code, message = err.code().name, err.details() or ""
                    t1 = time.time()
                    self.refusals.append({"candidate": name, "code": code, "message": message, "window": (t0, t1)})
                    _log(f"{name}: {code} after {t1 - t0:.2f} s")
                    time.sleep(self.gap_s)
                info = c.get_bundle()
                route = c.route(ROUTE_PROMPT, router="mf", threshold=0.5)
                self.after = {
                    "serving": info.bundle_version,
                    "swaps": info.swaps,
                    "refused": info.refused,
                    "route_bundle_version": route.bundle_version,
                }
        except BaseException as exc:  # reported, and the goals say NO
            self.error = exc


def _in_windows(calls: np.ndarray, windows: list[tuple[float, float]]) -> np.ndarray:
    mask = np.zeros(len(calls), dtype=bool)
    for t0, t1 in windows:
        mask |= (calls[:, 0] >= t0) & (calls[:, 0] <= t1)
    return mask


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, {int(c) for c in args.client_cores.split(",")})  # the admin client's core(s)
    a = args.bundle.resolve()
    work = Path(tempfile.mkdtemp(prefix="lmroute-hot-swap-"))
    res: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "server_cores": args.server_cores,
        "client_cores": args.client_cores,
        "ghz": ghz_version(),
        "bundle": str(args.bundle),
        "bundle_about": describe_bundle(args.bundle, args.bundle_note),
        "load": args.load,
    }
    try:
        cands = make_candidates(a, work)
        res["versions"] = {"a": read_manifest(a).bundle_version, "b": read_manifest(cands["b"]).bundle_version}
        with ChildServer(service_cmd(a, log_level="info"), args.server_cores, stats=True) as srv:
            with RouterClient(srv.target, timeout_s=300) as c:
                idle = [c.reload_bundle(str(path)) for path in (cands["b"], a)]
            res["idle_swaps"] = [
                {"to": r.bundle_version, "load_s": r.load_seconds, "warm_s": r.warm_seconds} for r in idle
            ]
            capacity, cap = measure_capacity(srv.target, args, out)
            rps = max(1, round(args.load * capacity))
            res["capacity"] = {"calls_per_s": capacity, "runs": cap, "offered_rps": rps}
            _log(f"capacity {capacity:.1f} Route calls/s; offering {rps}/s")
            server_cores = {int(c) for c in args.server_cores.split(",")}
            ticks0 = cpu_ticks(server_cores, srv.proc.pid) if srv.proc is not None else (0, 0)
            base_sum, base = run_ghz_calls(
                GhzRun("route.json", 64, 4, args.baseline_seconds, rps=rps, label="baseline"),
                srv.target,
                args.client_cores,
                out / "ghz",
            )
            assert srv.proc is not None
            ticks1 = cpu_ticks(server_cores, srv.proc.pid)
            rss_before = peak_rss_bytes(srv.proc.pid), rss_bytes(srv.proc.pid)
            before = srv.snapshot_after(time.time(), idle=True)
            driver = Driver(srv.target, a, cands, args.swaps, args.lead_s, args.gap_s)
            driver.start()
            swap_sum, calls = run_ghz_calls(
                GhzRun("route.json", 64, 4, args.seconds, rps=rps, label="swaps"),
                srv.target,
                args.client_cores,
                out / "ghz",
            )
            driver.join(600)
            ticks2 = cpu_ticks(server_cores, srv.proc.pid)
            after = srv.snapshot_after(time.time(), idle=True)
            rss_after = peak_rss_bytes(srv.proc.pid), rss_bytes(srv.proc.pid)
        loading = _in_windows(calls, [s["window"] for s in driver.swaps])
        refusing = _in_windows(calls, [r["window"] for r in driver.refusals])
        after_switch = _in_windows(calls, [(s["window"][1], s["window"][1] + 1.0) for s in driver.swaps])
        n_cores = len(server_cores)
        res["baseline"] = {
            "ghz": base_sum,
            **latency(base),
            "others_on_server_cores": others_share(ticks0, ticks1, n_cores, base_sum["seconds"]),
        }
        res["swap_phase"] = {
            "ghz": swap_sum,
            "all": latency(calls),
            "while_loading": latency(calls[loading]),
            "while_refusing": latency(calls[refusing]),
            "after_switch": latency(calls[after_switch & ~loading]),
            "other": latency(calls[~(loading | refusing | after_switch)]),
            "server_counters": {
                k: after["counters"].get(k, 0) - before["counters"].get(k, 0) for k in after["counters"]
            },
            "scorer_busy": diff_snapshots(before, after)["score_ms"].total / 1000.0 / swap_sum["seconds"],
            "others_on_server_cores": others_share(ticks1, ticks2, n_cores, swap_sum["seconds"]),
        }
        for s in driver.swaps:
            s["during"] = latency(calls[_in_windows(calls, [s["window"]])])
        res["swaps"] = [{k: v for k, v in s.items() if k != "window"} for s in driver.swaps]
        res["refusals"] = [{k: v for k, v in r.items() if k != "window"} for r in driver.refusals]
        res["after"] = driver.after
        res["driver_error"] = repr(driver.error) if driver.error else ""
        res["rss_gib"] = {
            "peak_before_swaps": (rss_before[0] or 0) / 2**30,
            "peak_after_swaps": (rss_after[0] or 0) / 2**30,
            "before_swaps": rss_before[1] / 2**30,
            "after_swaps": rss_after[1] / 2**30,
        }
        last_good = driver.swaps[-1]["to"] if driver.swaps else ""
        res["goals"] = {
            "zero_failed_calls": res["swap_phase"]["all"]["failed"] == 0 and set(swap_sum["status"]) <= {"OK"},
            "all_swaps_done": len(driver.swaps) == args.swaps and not driver.error,
            "bad_candidates_refused_old_serving": len(driver.refusals) == 2
            and all(r["code"] == "FAILED_PRECONDITION" for r in driver.refusals)
            and driver.after.get("serving") == last_good
            and driver.after.get("route_bundle_version") == last_good,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "hot_swap.json").write_text(json.dumps(res, indent=1))
    (out / "RESULTS.md").write_text(report(res))
    return res


def _row(name: str, x: dict[str, Any]) -> str:
    return (
        f"| {name} | {x['calls']} | {x['failed']} | {x['p50_ms']:.0f} | {x['p90_ms']:.0f} | {x['p99_ms']:.0f} | "
        f"{x['max_ms']:.0f} |"
    )


def report(res: dict[str, Any]) -> str:
    sp = res["swap_phase"]
    lines = [
        f"# Hot swap under load: Route at {res['load']:.0%} of capacity, {len(res['swaps'])} bundle swaps, "
        "two bad candidates refused",
        "",
        f"Command: `{res['command']}`  ",
        f"CPU: {res['cpu']}, {res.get('cpus', '?')} CPUs; server on core(s) {res['server_cores']}, ghz and the admin client on "
        f"{res['client_cores']}; {res['ghz']}  ",
        f"Bundle A: `{res['bundle']}` ({res['versions']['a']}; {res.get('bundle_about', '')}); B: a copy "
        f"re-stamped with another label ({res['versions']['b']}); server defaults.  ",
        f"Capacity (closed-loop Route, best of concurrency 16 / 32): {res['capacity']['calls_per_s']:.1f} calls/s; "
        f"offered {res['capacity']['offered_rps']} calls/s open loop ({res['load']:.0%}).",
        "",
        "Route calls (latency of OK calls, ms):",
        "",
        "| phase | calls | failed | p50 | p90 | p99 | max |",
        "|---|---|---|---|---|---|---|",
        _row(f"baseline, no swap ({res['baseline']['ghz']['seconds']:.0f} s)", res["baseline"]),
        _row(f"swap phase, all ({sp['ghz']['seconds']:.0f} s)", sp["all"]),
        _row("swap phase, started while a candidate loaded and warmed", sp["while_loading"]),
        _row("swap phase, started while a bad candidate was being refused", sp["while_refusing"]),
        _row("swap phase, started in the second after a switch", sp["after_switch"]),
        _row("swap phase, the other calls", sp["other"]),
        "",
        f"Statuses of the swap phase (ghz): {', '.join(f'{k} {v}' for k, v in sorted(sp['ghz']['status'].items()))}; "
        f"scorer busy {sp['scorer_busy']:.0%} of the phase. Share of the server's core used by other processes "
        f"(the machine is shared): {res['baseline']['others_on_server_cores']:.1%} in the baseline, "
        f"{sp['others_on_server_cores']:.1%} in the swap phase.",
        "",
        "| swap | from -> to | load s | warm s | switch ms | old bundle freed at the switch, ms | ReloadBundle RPC s "
        "| Route calls started during it: p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(res["swaps"], start=1):
        lines.append(
            f"| {i} | {s['from']} -> {s['to']} | {s['load_s']:.2f} | {s['warm_s']:.2f} | {s['switch_ms']:.3f} | "
            f"{s['release_ms']:.1f} | {s['rpc_s']:.2f} | {s['during']['p50_ms']:.0f} / {s['during']['p99_ms']:.0f} |"
        )
    idle = ", ".join(f"{x['load_s']:.2f} + {x['warm_s']:.2f} s" for x in res["idle_swaps"])
    lines += [
        "",
        f"The same swaps with no traffic (load + warm-up): {idle}. Loading and warming run on a nice-19 thread, so "
        "on the busy server core they take the CPU the scorer leaves, and a swap lasts seconds instead. The "
        "switch is `Scheduler.swap` + `RouterServicer.attach` on the event loop. The old bundle is freed at the "
        "switch unless calls in flight still hold it (0.0 here: the last of them frees it); freeing holds the GIL, "
        "so the server pauses that long once per swap. Compare latencies within one run only (shared machine).",
    ]
    lines += ["", "Bad candidates:", ""]
    for r in res["refusals"]:
        lines.append(f"- {r['candidate']}: {r['code']}: `{r['message']}`")
    after = res["after"]
    c = sp["server_counters"]
    rss = res["rss_gib"]
    lines += [
        "",
        f"After: GetBundle says {after.get('serving')} serving, {after.get('swaps')} swaps, "
        f"{after.get('refused')} refused; a Route call answered by {after.get('route_bundle_version')}.  ",
        f"Server counters over the swap phase: swaps {c.get('swaps', 0)}, batches {c.get('batches', 0)}, "
        f"queue full {c.get('rejected_queue_full', 0)}, overloaded {c.get('rejected_overload', 0)}, "
        f"expired in the queue {c.get('dropped_queue_timeout', 0)}.  ",
        f"Server RSS: {rss['before_swaps']:.2f} GiB before the swap phase (after the two idle swaps), "
        f"{rss['after_swaps']:.2f} GiB after it; peak {rss['peak_before_swaps']:.2f} GiB before it, "
        f"{rss['peak_after_swaps']:.2f} GiB after it (a candidate is loaded while the serving bundle is still in "
        "memory; a swapped-out bundle is freed once its last call is answered: tests/integration/test_hot_swap.py).",
    ]
    if res.get("driver_error"):
        lines.append(f"\nAdmin client error: `{res['driver_error']}`")
    g = res["goals"]
    yes = {True: "yes", False: "NO"}
    lines += [
        "",
        f"Goals: zero failed calls during the swaps: {yes[g['zero_failed_calls']]}; all swaps done: "
        f"{yes[g['all_swaps_done']]}; bad candidates refused (FAILED_PRECONDITION) and the last good version "
        f"still serving: {yes[g['bad_candidates_refused_old_serving']]}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    server_cores, client_cores = default_cores()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bundle-note", default="", help="how the bundle was made, for the report")
    p.add_argument("--redraw", action="store_true", help="only rewrite OUT/RESULTS.md from OUT/hot_swap.json")
    p.add_argument("--load", type=float, default=0.8, help="offered load, share of the capacity")
    p.add_argument("--swaps", type=int, default=10)
    p.add_argument("--seconds", type=float, default=120.0, help="length of the swap phase (must hold every swap)")
    p.add_argument("--baseline-seconds", type=float, default=30.0)
    p.add_argument("--capacity-seconds", type=float, default=8.0)
    p.add_argument("--lead-s", type=float, default=3.0, help="load before the first swap")
    p.add_argument("--gap-s", type=float, default=2.0, help="pause after each swap")
    p.add_argument("--server-cores", default=server_cores)
    p.add_argument("--client-cores", default=client_cores)
    args = p.parse_args()
    if args.redraw:
        res = json.loads((args.out / "hot_swap.json").read_text())
        (args.out / "RESULTS.md").write_text(report(res))
    elif args.bundle is None:
        p.error("--bundle is required (unless --redraw)")
    else:
        res = run(args)
    print(report(res))


if __name__ == "__main__":
    main()
