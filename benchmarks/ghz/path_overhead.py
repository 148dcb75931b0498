"""The service path's own cost per call, side by side with the empty handler: no encoder involved.

    .venv/bin/python benchmarks/ghz/path_overhead.py [--seconds 6] [--rounds 2] [--out DIR]
        [--servers NAME,...] [--baseline-tree DIR]

Starts, all pinned to the server core (`taskset`; the first half of this process's CPUs), the servers
named by `--servers`:

| name | what |
|---|---|
| `service` | the real RouterServer (lmroute-serve's flags and defaults) over a near-zero-cost scorer (fake_server.py: FakeScorer, a hash per prompt and router) |
| `service-inline` | the same with `--inline-us 1000`: cheap tokenising and scoring on the event loop, idle one-prompt calls scored at once |
| `service-inline-b64` | and `--max-batch-size 64`: a 64-prompt call in one batch when alone, 16 prompts a visit when shared |
| `empty` | empty_server.py: the same grpc.aio setup and request-context interceptor as lmroute-serve, handlers that answer at once |
| `empty-bare` | empty_server.py --no-interceptor |
| `empty-sync` | empty_server.py --sync: a synchronous grpc.server with a thread pool, no interceptor |
| `service-baseline` | with `--baseline-tree DIR`: `service` importing `lmroute` from DIR first (another revision's packages laid out as DIR/lmroute/...), for a before/after side by side |

then runs ghz (pinned to the other half) against each in turn, phase by phase: Route at concurrency
1, 16 and 64 (route.json: the 64 prompts of prompts.json, router mf, strong_share 0.5), and Score with
all 64 prompts in one call (routers mf and sw_ranking) at `--score-concurrency`. Each phase runs every
server back to back, `--rounds` times, so a ratio compares runs made seconds apart. Prints one table
per round (calls/s, prompts/s for Score, p50 and p99 of OK calls, the service / empty ratio) and, with
`--out`, writes summary.json and table.md there. Idle servers cost the core next to nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import GhzRun, ghz_version, run_ghz
from procs import ChildServer, default_cores, empty_cmd

FAKE = [sys.executable, str(HERE / "fake_server.py"), "--port", "0", "--log-level", "warning"]
SERVERS: dict[str, list[str]] = {
    "service": FAKE,
    "service-inline": [*FAKE, "--inline-us", "1000"],
    "service-inline-b64": [*FAKE, "--inline-us", "1000", "--max-batch-size", "64"],
    "empty": empty_cmd(),
    "empty-bare": [*empty_cmd(), "--no-interceptor"],
    "empty-sync": [*empty_cmd(), "--sync"],
}


def score_data(path: Path) -> Path:
    """One ScoreRequest holding the 64 prompts of prompts.json (routers mf, sw_ranking)."""
    texts = [p["text"] for p in json.loads((HERE / "prompts.json").read_text())]
    req = {"prompts": [{"text": t} for t in texts], "routers": ["mf", "sw_ranking"]}
    path.write_text(json.dumps([req], ensure_ascii=False))
    return path


def phases(seconds: float, score_c: int, data64: Path) -> list[tuple[str, GhzRun, int]]:
    """(name, ghz run, prompts per call) of each phase."""
    out = [(f"Route c{c}", GhzRun("route.json", c, 1, seconds), 1) for c in (1, 16, 64)]
    out.append((f"Score 64/call c{score_c}", GhzRun("score.json", score_c, 1, seconds, extra=["-D", str(data64)]), 64))
    return out


def hardware() -> str:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    import os

    return f"{model or platform.processor()}, {len(os.sched_getaffinity(0))} CPUs"


def table(rows: list[dict[str, Any]], servers: list[str]) -> str:
    """One markdown table: per phase and server, calls/s (prompts/s), p50, p99, ratio to `empty`."""
    head = "| phase | server | calls/s | prompts/s | p50 ms | p99 ms | errors | vs empty |\n|---|---|---:|---:|---:|---:|---:|---:|"
    lines = [head]
    by_phase: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_phase.setdefault(r["phase"], {})[r["server"]] = r
    for phase, got in by_phase.items():
        base = got.get("empty")
        for name in servers:
            r = got.get(name)
            if r is None:
                continue
            ratio = f"{r['ok_per_s'] / base['ok_per_s']:.2f}" if base and base["ok_per_s"] else ""
            errors = r["count"] - r["ok"]
            lines.append(
                f"| {phase} | {name} | {r['ok_per_s']:,.0f} | {r['ok_per_s'] * r['prompts']:,.0f} | "
                f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {errors} | {ratio} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(prog="path_overhead.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each ghz run")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--score-concurrency", type=int, default=8)
    ap.add_argument(
        "--phases", default="", help="run only the phases whose name holds one of these words (comma-separated)"
    )
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--baseline-tree", type=Path, default=None, help="also run service-baseline from this tree")
    ap.add_argument("--label", default="", help="a name for this run (written with the results)")
    ap.add_argument("--out", type=Path, default=None, help="write summary.json and table.md here")
    ap.add_argument("--server-cores", default=None)
    ap.add_argument("--client-cores", default=None)
    a = ap.parse_args()
    server_cores, client_cores = default_cores()
    server_cores = a.server_cores or server_cores
    client_cores = a.client_cores or client_cores
    names = [n.strip() for n in a.servers.split(",") if n.strip()]
    if a.baseline_tree is not None:
        SERVERS["service-baseline"] = ["env", f"PYTHONPATH={a.baseline_tree.resolve()}", *FAKE]
        names.insert(0, "service-baseline")
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        ap.error(f"--servers: unknown {', '.join(unknown)} (known: {', '.join(SERVERS)})")
    info = {
        "label": a.label,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hardware": hardware(),
        "ghz": ghz_version(),
        "server_cores": server_cores,
        "client_cores": client_cores,
        "command": " ".join([".venv/bin/python", "benchmarks/ghz/path_overhead.py", *sys.argv[1:]]),
    }
    print(json.dumps(info), file=sys.stderr)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        tmpdir = Path(tmp)
        runs = phases(a.seconds, a.score_concurrency, score_data(tmpdir / "score64.json"))
        words = [w for w in a.phases.split(",") if w]
        runs = [r for r in runs if not words or any(w in r[0] for w in words)]
        srv = {n: stack.enter_context(ChildServer(SERVERS[n], server_cores, stats=False)) for n in names}
        for n, s in srv.items():  # warm: connections, code paths, the scorer's measured rate
            run_ghz(GhzRun("route.json", 16, 1, 1.0, label=f"warm-{n}"), s.target, client_cores, tmpdir)
        for rnd in range(1, a.rounds + 1):
            for phase, run, per_call in runs:
                for n, s in srv.items():
                    run.label = f"r{rnd}-{phase.replace(' ', '_').replace('/', '_')}-{n}"
                    res = run_ghz(run, s.target, client_cores, tmpdir)
                    rows.append({"round": rnd, "phase": phase, "server": n, "prompts": per_call, **res})
                    print(
                        f"round {rnd} {phase:>18} {n:>11}: {res['ok_per_s']:9,.0f} calls/s  "
                        f"p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms  ({res['count'] - res['ok']} errors)",
                        file=sys.stderr,
                        flush=True,
                    )
                    time.sleep(0.5)
    tables = [f"Round {r}:\n\n" + table([x for x in rows if x["round"] == r], names) for r in range(1, a.rounds + 1)]
    text = "\n\n".join(tables)
    print(text)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "summary.json").write_text(json.dumps({**info, "rows": rows}, indent=1))
        (a.out / "table.md").write_text(f"{json.dumps(info)}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
