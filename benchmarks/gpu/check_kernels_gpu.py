"""GPU check of the sw_ranking device scan (lmroute.kernels.gpu on CuPy) against the CPU compiled core.

For a GPU machine, as one short run (well under the 15-minute device budget):

    python benchmarks/gpu/check_kernels_gpu.py --out "$OUT/kernels_gpu.json"

It needs CuPy and the compiled core built for that machine's Python (carry kernels/_core*.so when the
Python versions match; see the session notes). For N = 10k, 100k and 1M synthetic training prompts
(d = 384, 10 tiers) it checks device == CPU core to <= 1e-6 relative and times both per prompt at batch
sizes 1 and 32. Not run in CI: the CPU suite checks the same code on NumPy (test_kernels_compiled.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root when not installed


def _table(n: int, d: int, n_tiers: int, seed: int):  # type: ignore[no-untyped-def]
    from lmroute.kernels.compiled import SWIndex

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cells = np.array([(a, b, o) for a in range(n_tiers) for b in range(a + 1, n_tiers) for o in range(3)])
    indptr = np.arange(n + 1, dtype=np.int64)
    indices = rng.integers(0, cells.shape[0], size=n).astype(np.int32)
    return SWIndex(x, (indptr, indices, np.ones(n)), cells, n_tiers), x, rng


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = ap.parse_args()
    import cupy

    from lmroute.kernels.gpu import DeviceSWIndex, cuda_available

    if not cuda_available():
        print("no CUDA device visible to CuPy", file=sys.stderr)
        return 1
    rows = []
    for n in args.sizes:
        table, x, rng = _table(n, 384, 10, seed=n)
        device = DeviceSWIndex(table)
        for b in (1, 32):
            q = x[rng.integers(0, n, size=b)] + 0.05 * rng.normal(size=(b, 384)).astype(np.float32)
            device.scores(q, 9, 0, gamma=10.0)  # warm-up (kernels compile on first use)
            cupy.cuda.runtime.deviceSynchronize()
            t0 = time.perf_counter()
            got = device.scores(q, 9, 0, gamma=10.0)
            t_dev = (time.perf_counter() - t0) / b
            t0 = time.perf_counter()
            want = table.scores(q, 9, 0, gamma=10.0)
            t_cpu = (time.perf_counter() - t0) / b
            rel = float(np.max(np.abs(got - want) / np.abs(want)))
            rows.append(
                {
                    "n": n,
                    "batch": b,
                    "gpu_ms_per_prompt": 1e3 * t_dev,
                    "cpu_core_ms_per_prompt": 1e3 * t_cpu,
                    "max_rel_diff": rel,
                    "ok": rel <= 1e-6,
                }
            )
            print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "rows": rows}, indent=2)
    )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
