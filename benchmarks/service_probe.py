"""A first latency/throughput probe: routing decisions/s through the gRPC service vs the raw encoder.

    .venv/bin/python benchmarks/service_probe.py --bundle DIR [--concurrency 1 64] [--requests 400]
        [--router mf] [--intra-op-threads 1] [--max-batch-size 64] [--max-wait-us 2000]
        [--encoder-chunk-size 8]

For each concurrency it starts `lmroute-serve` as a child process on 127.0.0.1 (so client and server
do not share a GIL), drives Route calls from an asyncio gRPC client (one decision per call), stops the
server with SIGTERM and reads its mean batch size from the "stopped" log line. Then it times the raw
encoder (tokenize + embed, batches of --max-batch-size) on the same prompts. Prints a table. Not a test
and not the full benchmark suite; the client shares the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from lmroute.service.config import BatchPolicy, ServiceConfig
from lmroute.service.logs import configure_logging
from lmroute.v1 import router_pb2, router_pb2_grpc

__all__ = ["main", "drive", "raw_encoder_rate"]

REPO = Path(__file__).resolve().parent.parent


def prompts_for_bench(n: int, seed: int = 0) -> list[str]:
    """`n` real Arena prompts (the vendored calibration set), a fixed seeded sample in a fixed order."""
    from lmroute.export.data import load_calibration_prompts

    pool = load_calibration_prompts(REPO / "data")
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]


async def drive(target: str, prompts: Sequence[str], router: str, concurrency: int) -> tuple[float, np.ndarray]:
    """Send one Route per prompt with `concurrency` workers; (decisions/s, latencies in ms)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        await stub.ListRouters(router_pb2.ListRoutersRequest())
        next_i = 0
        lat: list[float] = []

        async def worker() -> None:
            nonlocal next_i
            while next_i < len(prompts):
                i = next_i
                next_i += 1
                req = router_pb2.RouteRequest(
                    prompt=router_pb2.Prompt(text=prompts[i]), router=router, strong_share=0.5
                )
                t0 = time.perf_counter()
                await stub.Route(req, timeout=60)
                lat.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return len(prompts) / wall, np.asarray(lat)


def raw_encoder_rate(bundle_dir: Path, prompts: Sequence[str], batch: int, threads: int) -> float:
    """Prompts/s of the bare encoder (tokenize + embed) at its best: all prompts sorted by length
    (the service only sorts within a batch), runs of `batch`."""
    from lmroute.bundle.loader import load_bundle

    enc = load_bundle(bundle_dir, intra_op_threads=threads).encoder
    enc.encode(list(prompts[:batch]), batch_size=batch)
    t0 = time.perf_counter()
    enc.encode(list(prompts), batch_size=batch)
    return len(prompts) / (time.perf_counter() - t0)


class _ChildServer:
    """`python -m lmroute.service.main` as a child process on a free port."""

    def __init__(self, cfg: ServiceConfig) -> None:
        self.cfg = cfg
        self.mean_batch = float("nan")
        self.target = ""
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> _ChildServer:
        c = self.cfg
        cmd = [
            sys.executable,
            "-m",
            "lmroute.service.main",
            "--bundle",
            str(c.bundle_path),
            "--port",
            "0",
            "--intra-op-threads",
            str(c.intra_op_threads),
            "--max-batch-size",
            str(c.batch.max_batch_size),
            "--max-wait-us",
            str(c.batch.max_wait_us),
            "--encoder-chunk-size",
            str(c.encoder_chunk_size),
            "--max-queue",
            str(c.batch.max_queue),
            "--queue-timeout-ms",
            str(c.batch.queue_timeout_ms),
            "--log-level",
            "warning",
        ]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        while True:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"server exited with {self.proc.wait()}")
            if m := re.search(r"serving on (\S+)", line):
                self.target = m.group(1)
                return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        self.proc.send_signal(signal.SIGTERM)
        for line in self.proc.stderr.read().splitlines():
            if '"event": "stopped"' in line:
                self.mean_batch = float(json.loads(line).get("mean_batch", "nan"))
        self.proc.wait(60)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the probe and print one table (and JSON with --json)."""
    ap = argparse.ArgumentParser(prog="benchmarks/service_probe.py", description=__doc__)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--router", default="mf")
    ap.add_argument("--intra-op-threads", type=int, default=1)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--max-wait-us", type=int, default=2000)
    ap.add_argument("--encoder-chunk-size", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    configure_logging("warning")
    prompts = prompts_for_bench(args.requests)
    cfg = ServiceConfig(
        bundle_path=args.bundle,
        port=0,
        intra_op_threads=args.intra_op_threads,
        batch=BatchPolicy(
            max_batch_size=args.max_batch_size, max_wait_us=args.max_wait_us, max_queue=4096, queue_timeout_ms=60_000
        ),
        encoder_chunk_size=args.encoder_chunk_size,
        log_level="warning",
    )
    # the machine is shared: time the raw encoder before and after the service and use the mean
    raw_before = raw_encoder_rate(args.bundle, prompts, args.encoder_chunk_size, args.intra_op_threads)
    rows = []
    for conc in args.concurrency:
        with _ChildServer(cfg) as child:
            rate, lat = asyncio.run(drive(child.target, prompts, args.router, conc))
        rows.append(
            {
                "what": f"service Route c={conc}",
                "per_s": rate,
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "mean_batch": child.mean_batch,
            }
        )
    raw_after = raw_encoder_rate(args.bundle, prompts, args.encoder_chunk_size, args.intra_op_threads)
    raw = (raw_before + raw_after) / 2
    for when, value in (("before", raw_before), ("after", raw_after)):
        rows.append(
            {
                "what": f"raw encoder {when}",
                "per_s": value,
                "p50_ms": float("nan"),
                "p99_ms": float("nan"),
                "mean_batch": args.encoder_chunk_size,
            }
        )
    print(f"{'what':<26}{'per s':>10}{'p50 ms':>10}{'p99 ms':>10}{'batch':>8}")
    for r in rows:
        print(f"{r['what']:<26}{r['per_s']:>10.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['mean_batch']:>8.1f}")
    top = float(rows[len(args.concurrency) - 1]["per_s"])  # type: ignore[arg-type]
    print(f"service at c={args.concurrency[-1]} / raw encoder (mean of before, after) = {top / raw:.2f}")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
