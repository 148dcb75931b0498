"""Another tenant's Feedback latency while one caller floods the outcome store with big Feedback calls.

    .venv/bin/python benchmarks/feedback_flood.py --bundle DIR [--seconds 30] [--transport threads aio]
        [--baseline-pythonpath PYROOT] [--out benchmarks/results/feedback_flood]

For each transport (and, with --baseline-pythonpath, for the code found there as well: an import root
laid out as `lmroute/` of another revision), one `lmroute-serve --bundle DIR --store sqlite:...` on a
free port, then, at once and from separate processes:
  - the flood: --flood-calls concurrent Feedback calls of 1,024 preference outcomes by prompt text each
    (fresh prompts), naming no tenant, re-sent as soon as answered (a refused one after 0.1 s);
  - the other tenant: `ops` (x-lmroute-tenant), one Feedback call of one outcome every 0.2 s.
Before the flood, ops alone for --seconds / 3 (its latency with nothing else). Prints and writes (--out:
RESULTS.md, summary.json) ops' latency alone and under the flood, and the flood's calls answered OK and
refused (UNAVAILABLE STORE_BUSY: the per-tenant bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

_FLOOD = r"""
import asyncio, collections, json, os, sys, time, grpc
from lmroute.v1 import router_pb2
target, seconds, calls, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
counts = collections.Counter()

def body():
    return router_pb2.FeedbackRequest(outcomes=[router_pb2.OutcomeReport(
        prompt=router_pb2.Prompt(text=f"flood {os.urandom(8).hex()}"),
        preference=router_pb2.PREFERENCE_STRONG, source="judge:flood") for _ in range(n)]).SerializeToString()

async def caller(call, stop, pool):
    while time.monotonic() < stop:
        try:
            await call(pool.pop() if pool else body(), timeout=120)
            counts["OK"] += 1
        except grpc.RpcError as exc:
            counts[exc.code().name] += 1
            await asyncio.sleep(0.1)

async def main():
    pool = [body() for _ in range(3 * calls)]  # made before the clock starts: the client's CPU is not the test
    print("ready", flush=True)
    sys.stdin.readline()
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=opts) as channel:
        call = channel.unary_unary("/lmroute.v1.RouterService/Feedback")
        stop = time.monotonic() + seconds
        await asyncio.gather(*[caller(call, stop, pool) for _ in range(calls)])
    print(json.dumps(dict(counts)), flush=True)

asyncio.run(main())
"""

_OPS = r"""
import json, os, sys, time, grpc
from lmroute.v1 import router_pb2, router_pb2_grpc
target, seconds = sys.argv[1], float(sys.argv[2])
stub = router_pb2_grpc.RouterServiceStub(grpc.insecure_channel(target))
meta = [("x-lmroute-tenant", "ops")]

def one():
    return router_pb2.FeedbackRequest(outcomes=[router_pb2.OutcomeReport(
        prompt=router_pb2.Prompt(text=f"ops {os.urandom(8).hex()}"), preference=router_pb2.PREFERENCE_STRONG,
        source="judge:ops")])

stub.Feedback(one(), metadata=meta, timeout=60)  # warm: the channel and the tenant's first call
latencies, failed = [], 0
stop = time.monotonic() + seconds
while time.monotonic() < stop:
    t0 = time.monotonic()
    try:
        stub.Feedback(one(), metadata=meta, timeout=120)
        latencies.append(time.monotonic() - t0)
    except grpc.RpcError:
        failed += 1
    time.sleep(0.2)
print(json.dumps({"latencies_s": latencies, "failed": failed}), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(pythonpath: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMROUTE_")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def _wait_serving(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited {proc.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise SystemExit("the server did not report SERVING")


def _quantiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    if not xs:
        return {}
    at = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return {"n": len(xs), "p50_ms": at(0.5) * 1000, "p90_ms": at(0.9) * 1000, "max_ms": xs[-1] * 1000}


def run_one(bundle: Path, transport: str, seconds: float, calls: int, pythonpath: str | None) -> dict[str, object]:
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="lmroute-flood-") as tmp:
        server = subprocess.Popen(
            [PY, "-m", "lmroute.service.main", "--bundle", str(bundle), "--port", str(port), "--transport",
             transport, "--store", f"sqlite:{tmp}/outcomes.sqlite3", "--log-level", "warning"],
            env=_env(pythonpath), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_serving(port, server)
            target = f"127.0.0.1:{port}"
            alone = subprocess.run(
                [PY, "-c", _OPS, target, str(seconds / 3)], capture_output=True, text=True, env=_env(None), check=True
            )
            flood = subprocess.Popen(
                [PY, "-c", _FLOOD, target, str(seconds + 5), str(calls), "1024"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(None),
            )  # fmt: skip
            assert flood.stdin is not None and flood.stdout is not None
            assert flood.stdout.readline().strip() == "ready"
            flood.stdin.write("go\n")
            flood.stdin.flush()
            time.sleep(5)  # the flood under way
            under = subprocess.run(
                [PY, "-c", _OPS, target, str(seconds)], capture_output=True, text=True, env=_env(None), check=True
            )
            flood_counts = json.loads(flood.communicate(timeout=300)[0].strip().splitlines()[-1])
        finally:
            server.terminate()
            server.wait(60)
    ops_alone, ops_under = json.loads(alone.stdout), json.loads(under.stdout)
    return {
        "transport": transport,
        "code": pythonpath or "this tree",
        "ops_alone": _quantiles(ops_alone["latencies_s"]),
        "ops_under_flood": _quantiles(ops_under["latencies_s"]),
        "ops_failed": ops_alone["failed"] + ops_under["failed"],
        "flood_calls": flood_counts,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=30.0, help="ops' run under the flood")
    ap.add_argument("--flood-calls", type=int, default=100, help="concurrent flood calls")
    ap.add_argument("--transport", nargs="+", default=["threads", "aio"])
    ap.add_argument("--baseline-pythonpath", default=None, help="an import root of another revision, run too")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for transport in args.transport:
        for pythonpath in ([args.baseline_pythonpath] if args.baseline_pythonpath else []) + [None]:
            row = run_one(args.bundle, transport, args.seconds, args.flood_calls, pythonpath)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
        lines = [
            "| transport | code | ops alone p50 / p90 / max ms | ops under the flood p50 / p90 / max ms (n) | "
            "flood calls answered |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            a, u = r["ops_alone"], r["ops_under_flood"]
            assert isinstance(a, dict) and isinstance(u, dict)
            lines.append(
                f"| {r['transport']} | {r['code']} | {a['p50_ms']:.1f} / {a['p90_ms']:.1f} / {a['max_ms']:.1f} | "
                f"{u['p50_ms']:.1f} / {u['p90_ms']:.1f} / {u['max_ms']:.1f} ({u['n']}) | {r['flood_calls']} |"
            )
        (args.out / "table.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
