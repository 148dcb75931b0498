"""One side's upstream down: what the OpenAI front's callers get, without fallback, with it, and with it
and its circuit breaker.

    .venv/bin/python benchmarks/front_outage.py [--requests 400] [--concurrency 8] [--timeout-s 0.5]
        [--out benchmarks/results/front_outage]

A real server (lmroute.service.testing.ServerThread over FakeScorer, so that the front's handling is what
is measured, not scoring) with its OpenAI front on 127.0.0.1, and two fake upstream LLMs
(lmroute.service.fake_upstream: real HTTP, answering at once). The strong side's upstream fails in one of
two ways, each run on its own:

    hung          it takes the connection and never answers: each request to it fails after the entry's
                  `timeout_s` (`--timeout-s`)
    unreachable   nothing listens at its address: each request to it fails at connect

and the upstreams file sets the strong side, for each fault, to each of:

    no fallback   the default: a request routed strong fails (504 hung, 502 unreachable)
    fallback      `fallback: true` with the breaker kept closed (`fallback_after` 1,000,000): a request
                  routed strong is answered by the weak upstream after the strong one fails it
    breaker       `fallback: true` with the defaults (3 failures in a row skip the strong upstream for 30 s)

`--requests` chat requests (model `router-mf-0.5`, distinct prompts, about half routed strong) from
`--concurrency` closed-loop callers. Reported per fault and setting: the answers by HTTP status, the
requests the strong upstream received, and latency (p50, p90, p99, max) of every request. Writes
RESULTS.md and results.json to `--out`.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from lmroute.service.config import ServiceConfig
from lmroute.service.fake_scorer import FakeScorer
from lmroute.service.fake_upstream import FakeUpstream
from lmroute.service.logs import configure_logging
from lmroute.service.testing import ServerThread

SETTINGS: dict[str, dict[str, object]] = {
    "no fallback": {},
    "fallback": {"fallback": True, "fallback_after": 1_000_000},
    "breaker": {"fallback": True},
}


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _run(strong_url: str, weak: FakeUpstream, setting: dict[str, object], args: argparse.Namespace) -> dict[str, Any]:
    """One server whose strong side is at `strong_url` with `setting`; the requests' statuses and times."""
    work = Path(tempfile.mkdtemp(prefix="lmroute-outage-"))
    ups = {
        "strong": {"model": "strong-model", "base_url": strong_url, "timeout_s": args.timeout_s, **setting},
        "weak": {"model": "weak-model", "base_url": weak.base_url},
    }
    (work / "upstreams.json").write_text(json.dumps(ups))
    cfg = ServiceConfig(
        bundle_path=Path("unused"),
        port=0,
        http_port=0,
        log_level="error",
        grace_s=0.0,
        upstreams_file=str(work / "upstreams.json"),
    )
    srv = ServerThread(cfg, scorer_factory=lambda _cfg: FakeScorer(routers=("mf",))).start()
    url = f"http://127.0.0.1:{srv.server.http_port}/v1/chat/completions"

    def one(i: int) -> tuple[int, float, str]:
        body = {"model": "router-mf-0.5", "messages": [{"role": "user", "content": f"question {i}: why {i * 7}?"}]}
        t0 = time.perf_counter()
        r = requests.post(url, json=body, timeout=60)
        return r.status_code, (time.perf_counter() - t0) * 1000, r.headers.get("x-lmroute-tier", "")

    try:
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            t0 = time.perf_counter()
            answers = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - t0
    finally:
        srv.stop()
    ms = [a[1] for a in answers]
    return {
        "statuses": dict(sorted(collections.Counter(str(a[0]) for a in answers).items())),
        "answered_by": dict(sorted(collections.Counter(a[2] for a in answers if a[0] == 200).items())),
        "wall_s": wall,
        "p50_ms": _percentile(ms, 0.5),
        "p90_ms": _percentile(ms, 0.9),
        "p99_ms": _percentile(ms, 0.99),
        "max_ms": max(ms),
    }


def _report(res: dict[str, Any]) -> str:
    lines = [
        "# One side's upstream down: the OpenAI front without fallback, with it, and with its breaker",
        "",
        "```bash",
        f".venv/bin/python {res['command']}",
        "```",
        "",
        f"- {res['date']}; {res['machine']}; Python {res['python']}.",
        f"- {res['requests']} chat requests (`router-mf-0.5` over FakeScorer, distinct prompts) from "
        f"{res['concurrency']} closed-loop callers; the strong upstream's `timeout_s` {res['timeout_s']:g} s; "
        "the weak upstream answers at once.",
        "",
        "| strong upstream | setting | answers by status | answered by (tier) | strong upstream asked "
        "| p50 ms | p90 ms | p99 ms | max ms | wall s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fault, runs in res["runs"].items():
        for setting, r in runs.items():
            statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
            by = ", ".join(f"{k}: {v}" for k, v in r["answered_by"].items()) or "-"
            asked = "-" if r["strong_asked"] is None else str(r["strong_asked"])
            lines.append(
                f"| {fault} | {setting} | {statuses} | {by} | {asked} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} "
                f"| {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['wall_s']:.2f} |"
            )
    lines += [
        "",
        '"strong upstream asked": requests the hung upstream received (an unreachable one receives none: '
        "`-`). Without fallback every request routed strong fails; with it none does, but each pays the "
        "strong upstream's failure first (its `timeout_s` when it hangs); the breaker stops asking it "
        "after 3 failures in a row, so the requests after those are answered at the weak side's speed "
        "(those already sent to it when it opened still wait; later, one request a `fallback_for_s` probes "
        "it). The callers, the server and the fake upstreams share one process and its interpreter lock: "
        "the milliseconds of the unreachable rows are mostly theirs, alike in the three settings.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout-s", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    configure_logging("error")
    runs: dict[str, dict[str, Any]] = {}
    with FakeUpstream("weak", record=False) as weak, FakeUpstream("strong", delay_s=3600.0) as hung:
        for fault in ("hung", "unreachable"):
            runs[fault] = {}
            for name, setting in SETTINGS.items():
                before = len(hung.requests)
                url = hung.base_url if fault == "hung" else f"http://127.0.0.1:{_free_port()}/v1"
                runs[fault][name] = _run(url, weak, setting, args)
                runs[fault][name]["strong_asked"] = len(hung.requests) - before if fault == "hung" else None
    res = {
        "command": "benchmarks/front_outage.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "timeout_s": args.timeout_s,
        "runs": runs,
    }
    text = _report(res)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
        (args.out / "RESULTS.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
