"""Where the service's CPU time goes after the encoder: py-spy samples the server under Route load.

    .venv/bin/python benchmarks/profile_service.py --bundle artifacts/default [--routers mf sw_ranking]
        [--concurrency 16] [--requests 600] [--out benchmarks/RESULTS_profile.md]

For each router it starts `lmroute-serve` as a child process (one ONNX Runtime thread), warms it, attaches
`py-spy record --pid` (raw collapsed stacks, 250 Hz, idle frames excluded) while an asyncio client sends
Route calls with real Arena prompts, then writes a table of inclusive shares by stage (tokenizer, ONNX
encoder, router math, scheduler, gRPC transport, ...) and the top self-time frames. This is how issue 4
decided what else belongs in the compiled core. Client and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_probe import _ChildServer, drive, prompts_for_bench

from lmroute.service.config import BatchPolicy, ServiceConfig

REPO = Path(__file__).resolve().parent.parent
PY_SPY = Path(sys.executable).parent / "py-spy"

# Stage -> substrings of a frame "function (file:line)"; the first stage found from the leaf upwards wins.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("tokenizer", ("OnnxEncoder.tokenize", "encode_batch", "tokenizers")),
    ("encoder (ONNX Runtime run)", ("onnxruntime",)),
    ("router math (compiled core)", ("lmroute/kernels/compiled.py", "kernels/compiled.py")),
    ("router math (other)", ("routers.py",)),
    ("encoder wrapper (Python)", ("encoder.py",)),
    ("scorer / scheduler", ("bundle_scorer.py", "scheduler.py", "batch_queue.py")),
    ("servicer / interceptors", ("servicer.py", "interceptors.py", "errors.py", "prompts.py")),
    ("gRPC + protobuf", ("grpc", "protobuf")),
    ("asyncio loop", ("asyncio",)),
]


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip().rpartition(" ")
    return stack.split(";"), int(count)


def summarise(raw: str) -> tuple[Counter[str], Counter[str], int]:
    """(samples per stage, samples per leaf frame, total samples) from py-spy's raw output."""
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        total += count
        leaves[frames[-1]] += count
        for frame in reversed(frames):
            stage = next((s for s, keys in STAGES if any(k in frame for k in keys)), None)
            if stage:
                stages[stage] += count
                break
        else:
            stages["other"] += count
    return stages, leaves, total


def profile_router(bundle: Path, router: str, prompts: list[str], concurrency: int, out_dir: Path) -> str:
    cfg = ServiceConfig(bundle_path=bundle, port=0, intra_op_threads=1, batch=BatchPolicy(queue_timeout_ms=60_000))
    with _ChildServer(cfg) as server:
        assert server.proc is not None
        asyncio.run(drive(server.target, prompts[:64], router, concurrency))  # warm-up
        raw_path = out_dir / f"profile_{router}.txt"
        spy = subprocess.Popen(
            [
                str(PY_SPY),
                "record",
                "--pid",
                str(server.proc.pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--output",
                str(raw_path),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        rate, lat = asyncio.run(drive(server.target, prompts, router, concurrency))
        spy.send_signal(2)  # SIGINT: py-spy stops and writes the file
        spy.wait(60)
    stages, leaves, total = summarise(raw_path.read_text())
    lines = [
        f"### {router}: {rate:.1f} decisions/s at concurrency {concurrency}, p50 "
        f"{sorted(lat)[len(lat) // 2]:.1f} ms, {total} samples",
        "",
        "| stage (inclusive, first match from the leaf) | share of busy samples |",
        "|---|---|",
    ]
    lines += [f"| {s} | {100 * c / max(total, 1):.1f} % |" for s, c in stages.most_common()]
    lines += ["", "| top self-time frames | share |", "|---|---|"]
    lines += [f"| `{f.replace('|', '/')[:110]}` | {100 * c / max(total, 1):.1f} % |" for f, c in leaves.most_common(12)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--routers", nargs="+", default=["mf", "sw_ranking"])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS_profile.md")
    args = ap.parse_args(argv)
    prompts = prompts_for_bench(args.requests)
    raw_dir = Path("/tmp") / "lmroute-profile"
    raw_dir.mkdir(exist_ok=True)
    sections = [profile_router(args.bundle, r, prompts, args.concurrency, raw_dir) for r in args.routers]
    cmd = " ".join(["benchmarks/profile_service.py", *(argv if argv is not None else sys.argv[1:])])
    text = (
        "# Service CPU profile (py-spy)\n\nMade by `.venv/bin/python " + cmd + "` on the machine in "
        "benchmarks/RESULTS.md (2 cores; client on the same cores). Raw stacks: "
        + str(raw_dir)
        + ".\n\n"
        + "\n".join(sections)
    )
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
