"""Two tenants through the OpenAI front, one flooding a slow upstream: does the other wait for the flood?

    .venv/bin/python benchmarks/openai_front_tenants.py [--seconds 15] [--delay-s 0.2] [--slots 8]
        [--flood 48] [--steady 2] [--out benchmarks/results/openai_front_tenants]

Fake upstream LLMs (lmroute.service.fake_upstream: real HTTP on 127.0.0.1) answering each request after
--delay-s; the strong one takes --slots requests at once (the upstreams file's max_concurrency), so it
answers at most slots / delay requests a second. The server (lmroute-serve over FakeScorer, with the
front) routes every request to it (model router-mf-0). Tenant `flood` runs --flood closed-loop callers,
far more than the slots, so its requests queue for them; tenant `steady` runs --steady. Each variant runs
on a fresh server for --seconds after a 2 s warm-up: `--tenant-fair-share false` (an upstream's slots
first come, first served) and `true` (the default: a slot that frees goes to the waiting tenant holding
the fewest). Per tenant: answers/s and the latency p50 / p99 of the answers that arrive in the measured
seconds, and failed requests. Writes report.md and results.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests
from openai_front import _front_url, _percentile, _publish, _server_cmd, _start_upstreams, _upstreams_file

sys.path.insert(0, str(Path(__file__).resolve().parent / "ghz"))
from procs import ChildServer, default_cores

TENANTS = ("flood", "steady")
VARIANTS = (("first come", "false"), ("fair slots", "true"))  # (label, --tenant-fair-share)


def _load(front: str, callers: dict[str, int], warm_s: float, seconds: float) -> dict[str, dict[str, Any]]:
    """Closed-loop callers per tenant; the answers that arrive between the end of the warm-up and the
    stop, and their latencies."""
    body = json.dumps({"model": "router-mf-0", "messages": [{"role": "user", "content": "hello"}]}).encode()
    t_start = time.perf_counter() + warm_s
    t_stop = t_start + seconds
    lat: dict[str, list[float]] = {t: [] for t in callers}
    failed = dict.fromkeys(callers, 0)
    lock = threading.Lock()

    def caller(tenant: str) -> None:
        session = requests.Session()
        headers = {"Content-Type": "application/json", "x-lmroute-tenant": tenant}
        while (t0 := time.perf_counter()) < t_stop:
            r = session.post(front + "/chat/completions", data=body, headers=headers, timeout=60)
            t1 = time.perf_counter()
            with lock:
                if r.status_code != 200:
                    failed[tenant] += 1
                elif t_start <= t1 <= t_stop:
                    lat[tenant].append((t1 - t0) * 1000)

    threads = [threading.Thread(target=caller, args=(t,)) for t, n in callers.items() for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {
        t: {
            "answers_per_s": len(v) / seconds,
            "p50_ms": _percentile(v, 0.5) if v else float("nan"),
            "p99_ms": _percentile(v, 0.99) if v else float("nan"),
            "answers": len(v),
            "failed": failed[t],
        }
        for t, v in lat.items()
    }


def _report(res: dict[str, Any]) -> str:
    lines = [
        "# OpenAI front, two tenants, one flooding a slow upstream",
        "",
        f"Command: `{res['command']}`",
        "",
        f"{res['machine']}; server on cores {res['server_cores']}, callers and fake upstreams on cores "
        f"{res['client_cores']}; FakeScorer; {res['date']}. The strong upstream answers after "
        f"{res['delay_s']:g} s and takes {res['slots']} requests at once (at most "
        f"{res['slots'] / res['delay_s']:.0f} answers/s); tenant flood runs {res['callers']['flood']} closed-loop "
        f"callers, tenant steady {res['callers']['steady']}; {res['seconds']:g} s measured per variant after a "
        "2 s warm-up, each on a fresh server.",
        "",
        "| variant | tenant | answers/s | p50 ms | p99 ms | failed |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, per in res["variants"].items():
        for t in TENANTS:
            r = per[t]
            lines.append(
                f"| {label} | {t} | {r['answers_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['failed']} |"
            )
    first, fair = (res["variants"][label]["steady"] for label, _ in VARIANTS)
    lines += [
        "",
        f"steady's p50 with fair slots / first come: {fair['p50_ms'] / first['p50_ms']:.2f} "
        f"({fair['p50_ms']:.0f} ms against {first['p50_ms']:.0f} ms; the upstream's own answer takes "
        f"{res['delay_s'] * 1000:.0f} ms).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--delay-s", type=float, default=0.2)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--flood", type=int, default=48)
    ap.add_argument("--steady", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.bundle = None  # _server_cmd: FakeScorer
    server_cores, client_cores = default_cores()
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {int(c) for c in client_cores.split(",")})
    up_proc, urls = _start_upstreams(client_cores, args.delay_s)
    upstreams_file = _upstreams_file(urls, "lmroute-front-tenants-", max_concurrency=args.slots, timeout_s=60)
    callers = {"flood": args.flood, "steady": args.steady}
    res: dict[str, Any] = {
        "command": "benchmarks/openai_front_tenants.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "server_cores": server_cores,
        "client_cores": client_cores,
        "delay_s": args.delay_s,
        "slots": args.slots,
        "callers": callers,
        "seconds": args.seconds,
        "variants": {},
    }
    try:
        for label, fair in VARIANTS:
            cmd = _server_cmd(args, upstreams_file, "--tenant-fair-share", fair)
            with ChildServer(cmd, server_cores, stats=False) as server:
                res["variants"][label] = _load(_front_url(server), callers, 2.0, args.seconds)
            print(label, res["variants"][label], flush=True)
    finally:
        up_proc.terminate()
        up_proc.wait(30)
    _publish(args.out, res, _report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
