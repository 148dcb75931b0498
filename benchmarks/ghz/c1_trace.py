"""Where one Route call's time goes at concurrency 1: timestamps inside the real server, call by call.

    .venv/bin/python benchmarks/ghz/c1_trace.py --bundle artifacts/default [--calls 256]
        [--out benchmarks/RESULTS_c1_trace.md]

Starts `lmroute-serve` (pinned like run.py: server cores / client cores) through this file's `--child`
mode, which wraps three functions of the running server with timestamps: the RPC handler inside the
request-context interceptor, `BundleScorer.score` and `BundleScorer._embed`. ghz then sends `--calls`
Route calls one at a time (route.json, the committed prompt mix), the child writes its timestamps when
told (SIGUSR1), and the table splits the client's latency into: transport (ghz's latency minus the
handler's time: network, HTTP/2, protobuf, the interceptor's outer part), dispatch (handler start to the
scorer starting: servicer checks, admission, queue, the hop to the scoring thread), tokenise (scorer
start to encoder start), encoder, routers (encoder end to scorer end) and return (scorer end to handler
end: the hop back to the event loop, futures, the response). The wrapping adds a few microseconds.
Three columns: (1) as served; (2) the encoder replaced by a sleep of (1)'s encoder p50 (zero
embeddings come back): the same server path without what running the model does to the core's caches;
(3) as (1) with a lowest-priority busy loop (nice 19) on each client core, so the core ghz waits on never
goes idle (the guest's idle exit is then not part of the wake-up when the reply arrives; the usual
"no deep C-states" setting of latency benchmarks, which a VM guest cannot set itself).
A diagnostic for benchmarks/RESULTS.md's concurrency-1 goal, not a benchmark of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loadgen import GhzRun, run_ghz
from procs import ChildServer
from run import default_cores

REPO = HERE.parent.parent
STAGES = ("transport", "dispatch", "tokenise", "encoder", "routers", "return")


def child(trace_path: Path, serve_args: list[str]) -> int:
    """Run lmroute-serve with timestamps around the handler, the scorer call and the encoder."""
    import grpc
    import numpy as np

    from lmroute.service import bundle_scorer, interceptors
    from lmroute.service.main import main

    calls: list[dict[str, float]] = []
    current: dict[str, float] = {}
    wrap_unary = interceptors._wrap_unary

    def traced_wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        inner = wrap_unary(handler, method).unary_unary

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.perf_counter()
            out = await inner(request, context)
            calls.append({**current, "rpc0": t0, "rpc1": time.perf_counter()})
            current.clear()
            return out

        return grpc.unary_unary_rpc_method_handler(
            timed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )

    scorer = bundle_scorer.BundleScorer
    score, embed = scorer.score, scorer._embed

    def timed_score(self: Any, *args: Any) -> Any:
        current["s0"] = time.perf_counter()
        out = score(self, *args)
        current["s1"] = time.perf_counter()
        return out

    sleep_s = float(os.environ.get("LMROUTE_TRACE_SLEEP_MS", "0")) / 1e3

    def timed_embed(self: Any, tokens: Any) -> Any:
        current["e0"] = time.perf_counter()
        if sleep_s > 0:  # the encoder's time without the encoder's work
            time.sleep(sleep_s)
            out = np.zeros((len(tokens), self.bundle.encoder.dim), dtype=np.float32)
        else:
            out = embed(self, tokens)
        current["e1"] = time.perf_counter()
        return out

    interceptors._wrap_unary = traced_wrap
    scorer.score, scorer._embed = timed_score, timed_embed  # type: ignore[method-assign]

    def write(*_: object) -> None:
        tmp = trace_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(calls))
        os.replace(tmp, trace_path)

    signal.signal(signal.SIGUSR1, write)
    return main(serve_args)


def stages(calls: list[dict[str, float]], client_ms: list[float]) -> dict[str, list[float]]:
    """Per call, ms per stage (calls and client latencies in the same order)."""
    out: dict[str, list[float]] = {s: [] for s in STAGES}
    for c, lat in zip(calls, client_ms, strict=True):
        ms = {k: v * 1e3 for k, v in c.items()}
        out["transport"].append(lat - (ms["rpc1"] - ms["rpc0"]))
        out["dispatch"].append(ms["s0"] - ms["rpc0"])
        out["tokenise"].append(ms["e0"] - ms["s0"])
        out["encoder"].append(ms["e1"] - ms["e0"])
        out["routers"].append(ms["s1"] - ms["e1"])
        out["return"].append(ms["rpc1"] - ms["s1"])
    return out


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(Path(sys.argv[2]), sys.argv[3:])
    server, client = default_cores()
    ap = argparse.ArgumentParser(
        prog="c1_trace.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--calls", type=int, default=256)
    ap.add_argument("--server-cores", default=server)
    ap.add_argument("--client-cores", default=client)
    ap.add_argument("--out", type=Path, help="Markdown table (default: print only)")
    a = ap.parse_args(argv)
    import numpy as np

    real = trace(a, 0.0)
    sleep_ms = float(np.median(stages(*real)["encoder"]))
    slept = trace(a, sleep_ms)
    spinners = [
        subprocess.Popen(["nice", "-n", "19", "taskset", "-c", core, sys.executable, "-c", "while True: pass"])
        for core in a.client_cores.split(",")
    ]
    try:
        spun = trace(a, 0.0)
    finally:
        for sp in spinners:
            sp.kill()
            sp.wait()
    runs = [real, slept, spun]
    cols = [stages(*r) for r in runs]
    lat = [r[1] for r in runs]
    lines = [
        "# Concurrency 1: where a Route call's time goes (`benchmarks/ghz/c1_trace.py`)",
        "",
        "Command: `.venv/bin/python benchmarks/ghz/c1_trace.py --bundle artifacts/default --out "
        f"benchmarks/RESULTS_c1_trace.md`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{a.calls} calls per column, server on cores `{a.server_cores}`, ghz on `{a.client_cores}`, load "
        f"average {'/'.join(f'{x:.2f}' for x in os.getloadavg())} at the end. Stages are defined in the "
        "script's docstring; medians of parts do not add up to the median of the whole. Columns: as "
        f"served; the encoder replaced by a {sleep_ms:.2f} ms sleep (the first column's encoder p50); as "
        "served with the client cores kept busy by a nice-19 loop. Each cell: p50 / mean, ms.",
        "",
        "| stage | as served | encoder slept | client core kept busy |",
        "|---|---|---|---|",
    ]
    rows = [("client latency (ghz)", lat)] + [(n, [c[n] for c in cols]) for n in STAGES]
    over = [
        np.asarray(lat[i]) - np.asarray(cols[i]["encoder"]) - np.asarray(cols[i]["tokenise"]) for i in range(len(runs))
    ]
    rows.append(("**client latency minus tokenise and encoder** (what the raw encoder baseline does not pay)", over))
    lines += [
        f"| {name} | " + " | ".join(f"{np.median(x):.3f} / {np.mean(x):.3f}" for x in xs) + " |" for name, xs in rows
    ]
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


def trace(a: argparse.Namespace, sleep_ms: float) -> tuple[list[dict[str, float]], list[float]]:
    """One traced server, a warm-up, then `a.calls` Route calls at concurrency 1: (stamps, latencies)."""
    with tempfile.TemporaryDirectory() as tmp:
        stamps = Path(tmp) / "trace.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            str(stamps),
            "--bundle",
            str(a.bundle.resolve()),
            "--port",
            "0",
            "--log-level",
            "warning",
            "--intra-op-threads",
            "1",
        ]
        os.environ["LMROUTE_TRACE_SLEEP_MS"] = str(sleep_ms)  # ChildServer passes the environment on
        try:
            with ChildServer(cmd, a.server_cores, stats=False) as srv:
                run_ghz(GhzRun("route.json", 1, 1, 3.0, label="trace_warm"), srv.target, a.client_cores, Path(tmp))
                n_warm = len(_written(srv, stamps))
                run = GhzRun("route.json", 1, 1, 0.0, label="trace", count=a.calls, keep_latencies=True)
                lat = run_ghz(run, srv.target, a.client_cores, Path(tmp))["latencies_ms"]
                calls = _written(srv, stamps)[n_warm:]
        finally:
            os.environ.pop("LMROUTE_TRACE_SLEEP_MS", None)
    if len(calls) != len(lat) or any(x is None for x in lat):
        raise SystemExit(f"c1_trace: {len(calls)} traced calls for {len(lat)} ghz calls (failed calls?)")
    return calls, lat


def _written(srv: ChildServer, path: Path) -> list[dict[str, float]]:
    """Ask the child for its stamps so far (SIGUSR1) and read them."""
    path.unlink(missing_ok=True)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGUSR1)
    for _ in range(200):
        if path.exists():  # written whole (renamed into place)
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise SystemExit("c1_trace: the traced server wrote no stamps")


if __name__ == "__main__":
    raise SystemExit(main())
