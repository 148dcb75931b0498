"""Another tenant's Feedback latency while one caller floods the outcome store with big Feedback calls.

    .venv/bin/python benchmarks/feedback_flood.py --bundle DIR [--seconds 30] [--transport threads aio]
        [--baseline-pythonpath PYROOT] [--variant LABEL=FLAGS ...] [--pin] [--out benchmarks/results/feedback_flood]

For each transport (and, with --baseline-pythonpath, for the code found there as well: an import root
laid out as `lmroute/` of another revision), one `lmroute-serve --bundle DIR --store sqlite:...` on a
free port, then, at once and from separate processes:
  - the flood: --flood-calls concurrent Feedback calls of 1,024 preference outcomes by prompt text each
    (fresh prompts), naming no tenant, re-sent as soon as answered (a refused one after 0.1 s);
  - the other tenant: `ops` (x-lmroute-tenant), one Feedback call of one outcome every 0.2 s, and (a
    process of its own) one Route call every 0.05 s.
Before the flood, ops alone for --seconds / 3 (its latency with nothing else). Prints and writes (--out:
table.md, summary.json) ops' latencies alone and under the flood, and the flood's calls answered OK and
refused (UNAVAILABLE STORE_BUSY: the per-tenant bound; RESOURCE_EXHAUSTED FEEDBACK_RATE: the tenant's
rate). Each `--variant LABEL=FLAGS` runs the code of this tree again with FLAGS added to the server's
command (e.g. `nolimit=--feedback-rate 0`); `--pin` puts the server on CPU 0 and the clients on CPU 1.
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

route = router_pb2.RouteRequest(prompt=router_pb2.Prompt(text="what is 2 + 2?"), router="mf", threshold=0.5)
call, pause = (lambda: stub.Route(route, metadata=meta, timeout=120), 0.05) if sys.argv[3] == "route" else (
    lambda: stub.Feedback(one(), metadata=meta, timeout=120), 0.2)
call()  # warm: the channel and the tenant's first call
latencies, failed = [], 0
stop = time.monotonic() + seconds
while time.monotonic() < stop:
    t0 = time.monotonic()
    try:
        call()
        latencies.append(time.monotonic() - t0)
    except grpc.RpcError:
        failed += 1
    time.sleep(pause)
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


def _ops(target: str, seconds: float, pin: list[str]) -> dict[str, dict[str, object]]:
    """ops' Feedback and Route probes side by side for `seconds`: each one's latencies and failures."""
    procs = {
        kind: subprocess.Popen(
            [*pin, PY, "-c", _OPS, target, str(seconds), kind], stdout=subprocess.PIPE, text=True, env=_env(None)
        )
        for kind in ("feedback", "route")
    }
    return {kind: json.loads(proc.communicate(timeout=seconds + 300)[0]) for kind, proc in procs.items()}


def run_one(
    bundle: Path, transport: str, seconds: float, calls: int, pythonpath: str | None, flags: list[str], pin: bool
) -> dict[str, object]:
    port = _free_port()
    server_pin, client_pin = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if pin else ([], [])
    with tempfile.TemporaryDirectory(prefix="lmroute-flood-") as tmp:
        server = subprocess.Popen(
            [*server_pin, PY, "-m", "lmroute.service.main", "--bundle", str(bundle), "--port", str(port),
             "--transport", transport, "--store", f"sqlite:{tmp}/outcomes.sqlite3", "--log-level", "warning",
             *flags],
            env=_env(pythonpath), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_serving(port, server)
            target = f"127.0.0.1:{port}"
            alone = _ops(target, seconds / 3, client_pin)
            flood = subprocess.Popen(
                [*client_pin, PY, "-c", _FLOOD, target, str(seconds + 5), str(calls), "1024"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(None),
            )  # fmt: skip
            assert flood.stdin is not None and flood.stdout is not None
            assert flood.stdout.readline().strip() == "ready"
            flood.stdin.write("go\n")
            flood.stdin.flush()
            time.sleep(5)  # the flood under way
            under = _ops(target, seconds, client_pin)
            flood_counts = json.loads(flood.communicate(timeout=300)[0].strip().splitlines()[-1])
        finally:
            server.terminate()
            server.wait(60)
    row: dict[str, object] = {"transport": transport, "code": pythonpath or "this tree", "flags": " ".join(flags)}
    for kind, prefix in (("feedback", "ops"), ("route", "ops_route")):
        row[f"{prefix}_alone"] = _quantiles(alone[kind]["latencies_s"])  # type: ignore[arg-type]
        row[f"{prefix}_under_flood"] = _quantiles(under[kind]["latencies_s"])  # type: ignore[arg-type]
        row[f"{prefix}_failed"] = alone[kind]["failed"] + under[kind]["failed"]  # type: ignore[operator]
    row["flood_calls"] = flood_counts
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=30.0, help="ops' run under the flood")
    ap.add_argument("--flood-calls", type=int, default=100, help="concurrent flood calls")
    ap.add_argument("--transport", nargs="+", default=["threads", "aio"])
    ap.add_argument("--baseline-pythonpath", default=None, help="an import root of another revision, run too")
    ap.add_argument("--variant", action="append", default=[], help="LABEL=FLAGS: this tree again, FLAGS added")
    ap.add_argument("--pin", action="store_true", help="the server on CPU 0, the clients on CPU 1")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    runs: list[tuple[str | None, list[str]]] = [(args.baseline_pythonpath, [])] if args.baseline_pythonpath else []
    runs += [(None, [])] + [(None, v.partition("=")[2].split()) for v in args.variant]
    rows = []
    for transport in args.transport:
        for pythonpath, flags in runs:
            row = run_one(args.bundle, transport, args.seconds, args.flood_calls, pythonpath, flags, args.pin)
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
        lines = [
            "| transport | code | server flags | ops Feedback alone p50 / p90 / max ms | ops Feedback under the "
            "flood (n) | ops Route alone | ops Route under the flood (n) | flood calls answered |",
            "|---|---|---|---|---|---|---|---|",
        ]

        def q(d: object, n: bool = False) -> str:
            assert isinstance(d, dict)
            return f"{d['p50_ms']:.1f} / {d['p90_ms']:.1f} / {d['max_ms']:.1f}" + (f" ({d['n']})" if n else "")

        for r in rows:
            lines.append(
                f"| {r['transport']} | {r['code']} | {r['flags'] or '-'} | {q(r['ops_alone'])} | "
                f"{q(r['ops_under_flood'], True)} | {q(r['ops_route_alone'])} | {q(r['ops_route_under_flood'], True)} "
                f"| {r['flood_calls']} |"
            )
        (args.out / "table.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
