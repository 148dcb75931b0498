"""The raw encoder ceiling: ONNX Runtime alone (tokenize + embed, no gRPC, no queue) on the benchmark's
prompt mix, in the batch shapes the service forms.

    .venv/bin/python benchmarks/ghz/encoder_ceiling.py --bundle DIR [--seconds 6] [--batch 1 8 64]
        [--chunk 8] [--intra-op-threads 1] [--device cpu] [--json OUT]

Batch 1: every prompt alone, in the mix's order (latency per prompt: p50, p99; the floor of the
service's latency at concurrency 1). Batch B > 1: consecutive runs of B prompts from the mix (cycled),
tokenised together, sorted by length within the batch and embedded in chunks of `--chunk` prompts,
exactly as the service's BundleScorer does (prompts/s: the ceiling of the service's throughput with
full batches). `global_sorted`: all prompts of one pass sorted by length, then chunks (the best case,
which the service cannot reach because it only sorts within a batch). Each figure runs for at least
`--seconds`. `tokenize_ms_per_prompt`: the tokenizer alone (batches of the whole mix). Run it pinned to the server's cores (the runner uses taskset).

`--passes-from-stdin`: load and warm, print `ready`, then for every line read from stdin run one batch-1
pass over the mix in its order and print that pass's latencies (ms, a JSON list) on one line; stop at
end of input. The runner interleaves these passes with ghz passes against the service, so both see the
same machine state (benchmarks/ghz/run.py, "concurrency 1, interleaved").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def load_prompts() -> list[str]:
    return [p["text"] for p in json.loads((HERE / "prompts.json").read_text())]


def embed_like_service(encoder: object, texts: Sequence[str], chunk: int) -> None:
    """Tokenise once, then embed length-sorted chunks (BundleScorer's way)."""
    tokens = encoder.tokenize(texts)  # type: ignore[attr-defined]
    if len(tokens) <= chunk:
        encoder.embed(tokens)  # type: ignore[attr-defined]
        return
    order = np.argsort(tokens.n_tokens, kind="stable")
    for start in range(0, len(tokens), chunk):
        encoder.embed(tokens.select(order[start : start + chunk]))  # type: ignore[attr-defined]


def batch1_latency(encoder: object, prompts: Sequence[str], seconds: float) -> dict[str, float]:
    lat: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(lat) < len(prompts):
        for p in prompts:
            t0 = time.perf_counter()
            encoder.embed(encoder.tokenize([p]))  # type: ignore[attr-defined]
            lat.append((time.perf_counter() - t0) * 1000.0)
    arr = np.asarray(lat)
    return {
        "n": len(lat),
        "p50_ms": float(np.percentile(arr, 50)),
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "per_s": len(lat) / (arr.sum() / 1000.0),
    }


def batched_rate(
    encoder: object, prompts: Sequence[str], batch: int, chunk: int, seconds: float, global_sorted: bool = False
) -> dict[str, float]:
    n_done, i = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or n_done < len(prompts):
        if global_sorted:
            embed_like_service(encoder, prompts, chunk)
            n_done += len(prompts)
            continue
        texts = [prompts[(i + k) % len(prompts)] for k in range(batch)]
        i += batch
        embed_like_service(encoder, texts, chunk)
        n_done += batch
    wall = time.perf_counter() - t0
    return {"n": n_done, "per_s": n_done / wall, "ms_per_batch": wall * 1000.0 / max(n_done / batch, 1)}


def load_encoder(bundle: Path, threads: int, device: str) -> object:
    from lmroute.bundle.loader import load_bundle
    from lmroute.service.bundle_scorer import providers_for_device

    return load_bundle(bundle, providers=providers_for_device(device), intra_op_threads=threads).encoder


def serve_passes(encoder: object, prompts: Sequence[str]) -> None:
    """One batch-1 pass over `prompts` per stdin line, latencies (ms) printed as a JSON list."""
    embed_like_service(encoder, prompts, 8)  # warm
    print("ready", flush=True)
    for _ in sys.stdin:
        lat = []
        for p in prompts:
            t0 = time.perf_counter()
            encoder.embed(encoder.tokenize([p]))  # type: ignore[attr-defined]
            lat.append((time.perf_counter() - t0) * 1000.0)
        print(json.dumps(lat), flush=True)


def measure(
    bundle: Path, seconds: float, batches: Sequence[int], chunk: int, threads: int, device: str
) -> dict[str, object]:
    enc = load_encoder(bundle, threads, device)
    prompts = load_prompts()
    embed_like_service(enc, prompts, chunk)  # warm: first runs allocate
    out: dict[str, object] = {
        "chunk": chunk,
        "intra_op_threads": threads,
        "device": device,
        "batch1": batch1_latency(enc, prompts, seconds),
    }
    rates = {}
    for b in batches:
        if b > 1:
            rates[str(b)] = batched_rate(enc, prompts, b, chunk, seconds)
    rates["global_sorted"] = batched_rate(enc, prompts, len(prompts), chunk, seconds, global_sorted=True)
    out["batched"] = rates
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min(seconds, 2.0) or n == 0:
        enc.tokenize(prompts)
        n += len(prompts)
    out["tokenize_ms_per_prompt"] = (time.perf_counter() - t0) * 1000.0 / n
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="encoder_ceiling.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--intra-op-threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--passes-from-stdin", action="store_true")
    args = ap.parse_args(argv)
    if args.passes_from_stdin:
        serve_passes(load_encoder(args.bundle, args.intra_op_threads, args.device), load_prompts())
        return 0
    res = measure(args.bundle, args.seconds, args.batch, args.chunk, args.intra_op_threads, args.device)
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
