"""Per-prompt cost of sw_ranking scoring: NumPy reference vs compiled core vs RouteLLM's own path.

Synthetic but realistic data: N tier battles (T = 10 tiers) whose outcomes come from a Bradley-Terry
model with prompt-dependent ratings (so the score depends on the query), d = 384 unit float32
embeddings clustered in topics. Two prompt layouts: `per_battle` (every battle its own prompt: the
worst case for a scan over unique prompts) and `shared` (~70 battles per prompt, like our data).
The per-prompt cell table (unique prompts x (tier_a < tier_b, outcome) cells) is built as the bundle
builds it (lmroute.export.train_sw).

Methods (ms per prompt, batch sizes 1/8/32, 1 and 2 threads):
  reference        lmroute.kernels.reference.sw_scores (dense float64 counts, float64 embeddings)
  compiled         lmroute.kernels.compiled.SWIndex.scores (its own scan; CSR counts)
  compiled+faiss   FAISS computes the similarity matrix, SWIndex.scores_from_sims does the rest
  routellm         RouteLLM 0.2.0 SWRankingRouter.calculate_strong_win_rate (batch 1), on the same
                   battles and embeddings; its OpenAI embedding call is replaced by a lookup of the
                   precomputed query embedding (no network)
Compiled columns appear when `from lmroute.kernels import compiled` works; RouteLLM when
scripts/install_routellm.sh has run. Equality: compiled vs reference (relative, goal <= 1e-6),
reference vs an independent weighted-BT fit on the battle rows (small N), reference vs RouteLLM
(absolute, goal <= 1e-3).

    .venv/bin/python benchmarks/sw_kernel_bench.py            # full: N = 10k, 100k, 1M (~15 min)
    .venv/bin/python benchmarks/sw_kernel_bench.py --quick    # N = 10k, few queries (~1-2 min)
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")  # the most this benchmark uses; lowered at run time

import argparse
import gc
import json
import math
import platform
import resource
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import threadpoolctl

from lmroute.kernels import reference

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
D = 384
N_TIERS = 10
STRONG_TIER, WEAK_TIER = 0, 3  # tier 0 is the strongest (RouteLLM's tier order)
GAMMA = 10.0  # RouteLLM hard-codes 10 * 10 ** (sim / max_sim) = gamma ** (1 + sim / max_sim), gamma 10
BATTLES_PER_PROMPT = 70
N_QUERIES = 64
GOAL_VS_REFERENCE = 5.0
GOAL_VS_ROUTELLM = 1000.0


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Dataset:
    layout: str
    n_battles: int
    prompt_emb: np.ndarray  # float32 [n_prompts, d], unit rows
    prompt_of_battle: np.ndarray  # int64 [n_battles]
    tier_a: np.ndarray  # int64 [n_battles], tier_a < tier_b
    tier_b: np.ndarray
    outcome: np.ndarray  # 0 a wins, 1 b wins, 2 tie
    cells: np.ndarray  # int64 [c, 3]
    cell_of_battle: np.ndarray  # int64 [n_battles]
    counts: np.ndarray  # float64 [n_prompts, c]
    csr: tuple[np.ndarray, np.ndarray, np.ndarray]  # indptr int64, indices int32, values float64
    queries: np.ndarray  # float32 [N_QUERIES, d]


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _topic_embeddings(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    """Unit vectors near random topic centres (cos to the centre ~0.65, within a topic ~0.4)."""
    emb = np.empty((n, D), dtype=np.float32)
    step = 1 << 16
    for lo in range(0, n, step):
        chunk = emb[lo : lo + step]
        rng.standard_normal(chunk.shape, dtype=np.float32, out=chunk)
        chunk *= np.float32(1.15 / math.sqrt(D))
        chunk += centres[rng.integers(0, centres.shape[0], size=chunk.shape[0])]
        _unit(chunk)
    return emb


def make_dataset(n_battles: int, layout: str, seed: int) -> Dataset:
    rng = np.random.default_rng([seed, n_battles, 0 if layout == "per_battle" else 1])
    centres = _unit(rng.standard_normal((64, D), dtype=np.float32))
    n_prompts = n_battles if layout == "per_battle" else max(1, round(n_battles / BATTLES_PER_PROMPT))
    prompt_emb = _topic_embeddings(rng, centres, n_prompts)
    prompt_of_battle = rng.permutation(np.arange(n_battles, dtype=np.int64) % n_prompts)

    # BT ratings depending on the prompt: a fixed tier ladder plus a topic-dependent shift
    ladder = np.linspace(2.0, -2.0, N_TIERS)
    shift_dirs = rng.standard_normal((N_TIERS, D)).astype(np.float32)
    pa = rng.integers(0, N_TIERS, size=n_battles)
    pb = (pa + rng.integers(1, N_TIERS, size=n_battles)) % N_TIERS  # distinct tiers
    tier_a, tier_b = np.minimum(pa, pb), np.maximum(pa, pb)
    outcome = np.empty(n_battles, dtype=np.int64)
    step = 1 << 18
    for lo in range(0, n_battles, step):
        sl = slice(lo, lo + step)
        shift = 0.7 * (prompt_emb[prompt_of_battle[sl]] @ shift_dirs.T).astype(np.float64)
        ra = ladder[tier_a[sl]] + shift[np.arange(shift.shape[0]), tier_a[sl]]
        rb = ladder[tier_b[sl]] + shift[np.arange(shift.shape[0]), tier_b[sl]]
        p_a = 1.0 / (1.0 + np.exp(rb - ra))
        u = rng.random(shift.shape[0])
        tie = rng.random(shift.shape[0]) < 0.2
        outcome[sl] = np.where(tie, 2, np.where(u < p_a, 0, 1))

    # the bundle's cell table: cells (tier_a < tier_b, outcome), counts per unique prompt
    cells, cell_of_battle = np.unique(np.stack([tier_a, tier_b, outcome], axis=1), axis=0, return_inverse=True)
    cell_of_battle = cell_of_battle.ravel().astype(np.int64)
    n_cells = cells.shape[0]
    key = prompt_of_battle * n_cells + cell_of_battle
    ukey, ucount = np.unique(key, return_counts=True)
    counts = np.zeros((n_prompts, n_cells), dtype=np.float64)
    counts.reshape(-1)[ukey] = ucount
    indptr = np.zeros(n_prompts + 1, dtype=np.int64)
    np.cumsum(np.bincount(ukey // n_cells, minlength=n_prompts), out=indptr[1:])
    csr = (indptr, (ukey % n_cells).astype(np.int32), ucount.astype(np.float64))
    queries = _topic_embeddings(rng, centres, N_QUERIES)
    return Dataset(
        layout,
        n_battles,
        prompt_emb,
        prompt_of_battle,
        tier_a,
        tier_b,
        outcome,
        cells.astype(np.int64),
        cell_of_battle,
        counts,
        csr,
        queries,
    )


# ---------------------------------------------------------------------------------------------
# an independent exact fit on battle rows (no cell aggregation), for the equality check


def row_level_scores(ds: Dataset, queries: np.ndarray, gamma: float) -> np.ndarray:
    """Weighted BT with ties fitted on every battle row by Newton (R_0 fixed at 0), solved to
    ||grad|| < 1e-13 * total weight; score = sigmoid(R_strong - R_weak)."""
    sims = queries.astype(np.float64) @ ds.prompt_emb.astype(np.float64).T
    out = np.empty(queries.shape[0])
    y = np.select([ds.outcome == 0, ds.outcome == 1], [1.0, 0.0], 0.5)
    a, b = ds.tier_a, ds.tier_b
    for qi in range(queries.shape[0]):
        s = sims[qi]
        w = (gamma ** (1.0 + s / s.max()))[ds.prompt_of_battle]
        r = np.zeros(N_TIERS)
        for _ in range(100):
            p = 1.0 / (1.0 + np.exp(r[b] - r[a]))
            g = w * (p - y)
            grad = np.bincount(a, g, N_TIERS) - np.bincount(b, g, N_TIERS)
            if np.linalg.norm(grad[1:]) < 1e-13 * w.sum():
                break
            h = w * p * (1.0 - p)
            hess = np.zeros((N_TIERS, N_TIERS))
            np.add.at(hess, (a, a), h)
            np.add.at(hess, (b, b), h)
            np.add.at(hess, (a, b), -h)
            np.add.at(hess, (b, a), -h)
            r[1:] -= np.linalg.solve(hess[1:, 1:], grad[1:])  # the likelihood is convex: plain Newton
        out[qi] = 1.0 / (1.0 + math.exp(r[WEAK_TIER] - r[STRONG_TIER]))
    return out


# ---------------------------------------------------------------------------------------------
# methods


def faiss_sims(queries: np.ndarray, prompt_emb: np.ndarray) -> np.ndarray:
    """Full similarity matrix [b, n] by FAISS: its SIMD scan (fvec_inner_products_ny) for one query,
    faiss.pairwise_distances (inner product = one sgemm) for a batch: the faster of the two on each."""
    b, n = queries.shape[0], prompt_emb.shape[0]
    if b == 1:
        out = np.empty((1, n), dtype=np.float32)
        faiss.fvec_inner_products_ny(
            faiss.swig_ptr(out[0]), faiss.swig_ptr(queries[0]), faiss.swig_ptr(prompt_emb), D, n
        )
        return out
    return faiss.pairwise_distances(queries, prompt_emb, faiss.METRIC_INNER_PRODUCT)


def load_compiled() -> tuple[Any, str | None]:
    try:
        from lmroute.kernels import compiled
    except Exception as exc:  # not built yet, or stale: the compiled columns stay empty
        return None, f"{type(exc).__name__}: {exc}"
    missing = [n for n in ("SWIndex", "set_num_threads") if not hasattr(compiled, n)]
    if missing:
        return None, f"lmroute.kernels.compiled lacks {missing}"
    return compiled, None


def our_methods(ds: Dataset, compiled: Any) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    emb64 = ds.prompt_emb.astype(np.float64)  # the reference computes in float64: convert once
    ref = lambda q: reference.sw_scores(  # noqa: E731
        q.astype(np.float64), emb64, ds.counts, ds.cells, N_TIERS, STRONG_TIER, WEAK_TIER, gamma=GAMMA
    )
    methods = {"reference": ref}
    if compiled is not None:
        # (a dense cell_counts is converted to this CSR form at construction: one kernel either way)
        idx_csr = compiled.SWIndex(ds.prompt_emb, ds.csr, ds.cells, N_TIERS)
        methods["compiled"] = lambda q: idx_csr.scores(q, STRONG_TIER, WEAK_TIER, GAMMA)
        methods["compiled+faiss"] = lambda q: idx_csr.scores_from_sims(
            faiss_sims(q, ds.prompt_emb), STRONG_TIER, WEAK_TIER, GAMMA
        )
    return methods


class _EmbeddingLookup:
    """Stands in for RouteLLM's module-level OpenAI client: `embeddings.create(input=[prompt])`
    returns the precomputed embedding of query "q<i>" (no network)."""

    def __init__(self, queries: np.ndarray) -> None:
        self._queries = queries
        self.embeddings = self

    def create(self, input: list[str], model: str) -> Any:
        vec = self._queries[int(input[0][1:])]
        item = type("Embedding", (), {"embedding": vec})()
        return type("Response", (), {"data": [item]})()


def routellm_router(rl: Any, ds: Dataset) -> Any:
    """RouteLLM's SWRankingRouter holding our battles, as its __init__ leaves it after relabelling
    models with tiers (its dataset download and global tiering are skipped: ours are tier battles)."""
    import pandas as pd

    router = object.__new__(rl.sw_ranking_router)
    router.strong_model, router.weak_model = "strong", "weak"
    router.model2tier = {"strong": STRONG_TIER, "weak": WEAK_TIER}
    router.embedding_model = "text-embedding-3-small"
    router.arena_df = pd.DataFrame(
        {
            "model_a": ds.tier_a,
            "model_b": ds.tier_b,
            "winner": np.array(["model_a", "model_b", "tie"])[ds.outcome],
        }
    )
    router.arena_conv_embedding = ds.prompt_emb[ds.prompt_of_battle]  # one row per battle, as RouteLLM
    rl.routers.OPENAI_CLIENT = _EmbeddingLookup(ds.queries)
    return router


# ---------------------------------------------------------------------------------------------
# timing


def set_threads(k: int, compiled: Any) -> None:
    threadpoolctl.threadpool_limits(limits=k)  # OpenBLAS and every loaded OpenMP runtime
    faiss.omp_set_num_threads(k)
    if compiled is not None:
        compiled.set_num_threads(k)


def time_interleaved(
    methods: dict[str, Callable[[np.ndarray], Any]],
    queries: np.ndarray,
    batch: int,
    min_s: float,
    max_reps: int,
) -> dict[str, tuple[float, float, int]]:
    """Median and minimum wall seconds per call of each method, {name: (median, min, calls)}. The methods take turns
    (rounds of ~20 ms per method, distinct query batches) so that a shared machine's load swings hit
    them alike; one warm-up call each, then at least 3 calls each, until every method has run for
    min_s or max_reps calls."""
    batches = [queries[i : i + batch] for i in range(0, queries.shape[0] - batch + 1, batch)]
    times: dict[str, list[float]] = {name: [] for name in methods}
    spent = dict.fromkeys(methods, 0.0)
    per_round = {}
    for name, fn in methods.items():
        t0 = time.perf_counter()
        fn(batches[0])
        per_round[name] = max(1, min(20, int(0.02 / max(time.perf_counter() - t0, 1e-6))))

    def wants(name: str) -> bool:
        n = len(times[name])
        return n < 3 or (spent[name] < min_s and n < max_reps)

    while any(wants(name) for name in methods):
        for name, fn in methods.items():
            for _ in range(per_round[name]):
                if not wants(name):
                    break
                q = batches[len(times[name]) % len(batches)]
                t0 = time.perf_counter()
                fn(q)
                dt = time.perf_counter() - t0
                times[name].append(dt)
                spent[name] += dt
    return {name: (float(np.median(t)), float(np.min(t)), len(t)) for name, t in times.items()}


def time_routellm(router: Any, n_queries: int, max_s: float) -> tuple[float, float, list[float], int, int]:
    """Median seconds per request over up to n_queries requests (at least one), stopping after max_s."""
    times, scores, n_conv = [], [], 0
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(n_queries):
            if times and time.perf_counter() - start > max_s:
                break
            t0 = time.perf_counter()
            scores.append(float(router.calculate_strong_win_rate(f"q{i}")))
            times.append(time.perf_counter() - t0)
    n_conv = sum("converge" in str(w.message).lower() for w in caught)
    return float(np.median(times)), float(np.min(times)), scores, len(times), n_conv


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


# ---------------------------------------------------------------------------------------------
# run


def bench_ours(
    ds: Dataset, args: argparse.Namespace, compiled: Any, base: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], np.ndarray]:
    """Timing rows and equality rows of reference / compiled / compiled+faiss, and the reference's
    scores of the first 32 queries (the yardstick for RouteLLM)."""
    rows: list[dict[str, Any]] = []
    equality: list[dict[str, Any]] = []
    methods = our_methods(ds, compiled)
    set_threads(1, compiled)  # results do not depend on threads
    q32 = ds.queries[:32]
    ref_scores = methods["reference"](q32)
    for name in methods:
        if name != "reference":
            rel = float(np.max(np.abs(methods[name](q32) - ref_scores) / np.abs(ref_scores)))
            equality.append({**base, "a": name, "b": "reference", "max_rel": rel, "n": 32, "ok": rel <= 1e-6})
    if ds.n_battles <= args.row_fit_max_n:
        exact = row_level_scores(ds, ds.queries[:8], GAMMA)
        for name in ("reference", "compiled"):
            if name in methods:
                rel = float(np.max(np.abs(methods[name](ds.queries[:8]) - exact) / exact))
                equality.append({**base, "a": name, "b": "row_fit", "max_rel": rel, "n": 8, "ok": rel <= 1e-6})
    for threads in args.threads:
        set_threads(threads, compiled)
        for batch in args.batches:
            timed = time_interleaved(methods, ds.queries, batch, args.min_s, args.max_reps)
            for name, (sec, sec_min, reps) in timed.items():
                rows.append(
                    {
                        **base,
                        "threads": threads,
                        "method": name,
                        "batch": batch,
                        "ms_per_prompt": 1e3 * sec / batch,
                        "ms_per_prompt_min": 1e3 * sec_min / batch,
                        "calls": reps,
                    }
                )
                print(
                    f"  t={threads} {name:15s} b={batch:2d}: {1e3 * sec / batch:10.3f} ms/prompt ({reps} calls)",
                    flush=True,
                )
    return rows, equality, ref_scores


def bench_routellm(
    ds: Dataset,
    args: argparse.Namespace,
    rl: Any,
    compiled: Any,
    base: dict[str, Any],
    ref_scores: np.ndarray,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    router = routellm_router(rl, ds)
    n_q = args.routellm_queries if ds.n_battles < 1_000_000 else max(1, args.routellm_queries // 3)
    for threads in args.threads:
        set_threads(threads, compiled)
        sec, sec_min, scores, ran, n_conv = time_routellm(router, n_q, args.routellm_max_s)
        rows.append(
            {
                **base,
                "threads": threads,
                "method": "routellm",
                "batch": 1,
                "ms_per_prompt": 1e3 * sec,
                "ms_per_prompt_min": 1e3 * sec_min,
                "calls": ran,
                "convergence_warnings": n_conv,
            }
        )
        print(
            f"  t={threads} routellm        b= 1: {1e3 * sec:10.3f} ms/prompt ({ran} requests, "
            f"{n_conv} sklearn convergence warnings)",
            flush=True,
        )
    diff = float(np.max(np.abs(np.asarray(scores) - ref_scores[:ran])))  # the same queries q0..
    return rows, [{**base, "a": "routellm", "b": "reference", "max_abs": diff, "n": ran, "ok": diff <= 1e-3}]


def run(args: argparse.Namespace) -> dict[str, Any]:
    compiled, compiled_missing = load_compiled()
    rl, rl_missing = None, None
    if not args.no_routellm:
        sys.path.insert(0, str(HERE))
        from routellm_env import RouteLLMMissing, import_routellm

        try:
            rl = import_routellm()
        except RouteLLMMissing as exc:
            rl_missing = str(exc)
    else:
        rl_missing = "--no-routellm"
    warnings.filterwarnings("ignore", category=FutureWarning)  # sklearn's penalty=None deprecation
    rows: list[dict[str, Any]] = []
    equality: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for n in args.sizes:
        for layout in args.layouts:
            t0 = time.perf_counter()
            ds = make_dataset(n, layout, args.seed)
            n_prompts = ds.prompt_emb.shape[0]
            print(
                f"[{t0 - t_start:7.1f}s] N={n} {layout}: {n_prompts} prompts, {ds.cells.shape[0]} cells, "
                f"nnz {ds.csr[2].size} (generated in {time.perf_counter() - t0:.1f}s)",
                flush=True,
            )
            base = {"n_battles": n, "layout": layout, "n_prompts": n_prompts, "n_cells": int(ds.cells.shape[0])}
            r, e, ref_scores = bench_ours(ds, args, compiled, base)
            rows += r
            equality += e
            gc.collect()
            if rl is not None:
                r, e = bench_routellm(ds, args, rl, compiled, base, ref_scores)
                rows += r
                equality += e
            del ds
            gc.collect()
            print(f"  peak RSS so far {peak_rss_gb():.2f} GB", flush=True)
    return {
        "rows": rows,
        "equality": equality,
        "compiled_missing": compiled_missing,
        "routellm_missing": rl_missing,
        "routellm_version": None if rl is None else rl.version,
        "compiled_info": compiled_info(compiled),
        "wall_s": time.perf_counter() - t_start,
        "peak_rss_gb": peak_rss_gb(),
    }


def compiled_info(compiled: Any) -> dict[str, Any] | None:
    if compiled is None:
        return None
    info = {}
    for attr in ("__version__", "SOURCE_SHA256", "source_sha256"):
        if hasattr(compiled, attr):
            info[attr] = str(getattr(compiled, attr))
    for fn in ("cpu_features", "max_threads"):
        try:
            info[fn] = getattr(compiled, fn)()
        except Exception:  # optional helpers
            pass
    return info


def machine_info() -> dict[str, Any]:
    import scipy
    import sklearn

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    try:
        import pandas

        pandas_v = pandas.__version__
    except ImportError:
        pandas_v = None
    return {
        "cpu": fields.get("Model name", "?").strip(),
        "cpus": int(fields.get("CPU(s)", "0").strip() or 0),
        "avx512": "avx512f" in fields.get("Flags", ""),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "sklearn": sklearn.__version__,
        "scipy": scipy.__version__,
        "pandas": pandas_v,
        "blas": [
            {k: p.get(k) for k in ("internal_api", "version", "threading_layer", "architecture")}
            for p in threadpoolctl.threadpool_info()
            if p.get("user_api") == "blas"
        ],
        "load_avg_at_end": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------------
# report


METHODS = ("reference", "compiled", "compiled+faiss", "routellm")


def _cost(rows: list[dict[str, Any]], **key: Any) -> float | None:
    for r in rows:
        if all(r[k] == v for k, v in key.items()):
            return r["ms_per_prompt"]
    return None


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if x < 1000 else f"{x:,.0f}"


def _goal(speedup: float | None, goal: float) -> str:
    if speedup is None:
        return "-"
    return f"{speedup:,.1f}x {'met' if speedup >= goal else 'MISSED'}"


def write_report(result: dict[str, Any], out_dir: Path) -> None:
    rows, eq, m = result["rows"], result["equality"], result["machine"]
    blas = ", ".join(f"{b['internal_api']} {b['version']}" for b in m["blas"]) or "?"
    layouts = sorted({r["layout"] for r in rows}, key=["per_battle", "shared"].index)
    sizes = sorted({r["n_battles"] for r in rows})
    threads = sorted({r["threads"] for r in rows})
    batches = sorted({r["batch"] for r in rows if r["method"] != "routellm"})
    present = [x for x in METHODS if any(r["method"] == x for r in rows)]
    lines = [
        "# sw_ranking scoring cost: NumPy reference vs compiled core vs RouteLLM",
        "",
        "Written by `benchmarks/sw_kernel_bench.py` (its docstring says what each method is; it sets "
        "OMP_NUM_THREADS / OPENBLAS_NUM_THREADS to 2 unless set, and lowers them to 1 at run time for the "
        "1-thread rows). Command, from the repository root after `scripts/install_routellm.sh`:",
        "",
        f"    {result['command']}",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, AVX-512 {'yes' if m['avx512'] else 'no'}; load average at "
        f"the end {', '.join(f'{x:.1f}' for x in m['load_avg_at_end'])} (a shared machine: timings are rough). "
        f"Python {m['python']}, numpy {m['numpy']} (BLAS: "
        f"{blas}), faiss {m['faiss']}, "
        f"scikit-learn {m['sklearn']}, scipy {m['scipy']}, pandas {m['pandas']}, "
        f"routellm {result['routellm_version'] or 'not run'}.",
        f"Run: {result['wall_s']:.0f} s wall, peak RSS {result['peak_rss_gb']:.2f} GB.",
        "",
        "Data: N battles over 10 tiers, outcomes from a BT model whose tier ratings shift with the prompt "
        "embedding (20 % ties), d = 384 unit float32 embeddings around 64 topics. `per_battle`: one prompt per "
        f"battle; `shared`: ~{result['params']['battles_per_prompt_shared']} battles per prompt. "
        f"gamma = {result['params']['gamma']:g} for every method (RouteLLM's hard-coded value); "
        f"strong tier {result['params']['strong_tier']}, weak tier {result['params']['weak_tier']}. "
        "The reference gets its embeddings converted to float64 once, outside the timing (its best case); "
        "RouteLLM gets float32 arrays (its own data are float64: this favours it) and one embedding row per "
        "battle, as it stores them; its OpenAI embedding call is a dictionary lookup here.",
        "",
        "`compiled` is the compiled core with its own exact scan (CSR counts; a dense table is converted to "
        "CSR at construction, so there is one kernel). `compiled+faiss`: FAISS computes the full similarity "
        "matrix, `scores_from_sims` does the rest: `faiss.fvec_inner_products_ny` (FAISS's SIMD scan) for one "
        "query, `faiss.pairwise_distances(..., METRIC_INNER_PRODUCT)` for a batch (for inner product that "
        "wrapper computes `xq @ xb.T`, one OpenBLAS sgemm); `IndexFlatIP.search` with k = n was ~2.5x slower "
        "than either (it keeps a heap over all rows).",
        "",
    ]
    if result["compiled_missing"]:
        lines += [
            f"**Compiled core not measured**: `from lmroute.kernels import compiled` failed "
            f"(`{result['compiled_missing']}`). Its columns appear when it imports.",
            "",
        ]
    if result["compiled_info"]:
        lines += [f"Compiled core: `{json.dumps(result['compiled_info'])}`.", ""]
    if result["routellm_missing"]:
        lines += [f"**RouteLLM not measured**: {result['routellm_missing']}", ""]
    lines += [
        "## Cost, ms per prompt (median over calls; a call scores `batch` prompts; minima in the JSON)",
        "",
        f"Speed-up goals: reference / compiled >= {GOAL_VS_REFERENCE:g}x at the same batch; RouteLLM "
        f"(one request) / compiled at batch 1 >= {GOAL_VS_ROUTELLM:g}x. `compiled` = own scan, CSR counts.",
        "",
        "| layout | N | prompts | threads | batch | "
        + " | ".join(present)
        + " | reference / compiled | RouteLLM / compiled |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(present) + "---|---|",
    ]
    for layout in layouts:
        for n in sizes:
            n_prompts = next((r["n_prompts"] for r in rows if r["layout"] == layout and r["n_battles"] == n), None)
            if n_prompts is None:
                continue
            for t in threads:
                for b in batches:
                    k = {"layout": layout, "n_battles": n, "threads": t}
                    cost = {x: _cost(rows, **k, method=x, batch=1 if x == "routellm" else b) for x in present}
                    if b != 1:
                        cost["routellm"] = None
                    comp, ref, rl = cost.get("compiled"), cost.get("reference"), cost.get("routellm")
                    vs_ref = ref / comp if comp and ref else None
                    vs_rl = rl / comp if comp and rl else None
                    lines.append(
                        f"| {layout} | {n:,} | {n_prompts:,} | {t} | {b} | "
                        + " | ".join(_fmt(cost.get(x)) for x in present)
                        + f" | {_goal(vs_ref, GOAL_VS_REFERENCE)} | {_goal(vs_rl, GOAL_VS_ROUTELLM) if b == 1 else ''} |"
                    )
    rl_rows = [r for r in rows if r["method"] == "routellm"]
    if rl_rows:
        lines += [
            "",
            "RouteLLM requests timed per config: "
            + ", ".join(
                f"{r['layout']} N={r['n_battles']:,} t={r['threads']}: {r['calls']}"
                f" ({r['convergence_warnings']} sklearn convergence warnings)"
                for r in rl_rows
            )
            + f" (cap {result['params']['routellm_max_s']:g} s per config after the first request).",
        ]
    lines += [
        "",
        "## Equality",
        "",
        "Scores on the first queries of each data set (probabilities in (0, 1)). `row_fit` is an independent "
        "Newton fit of the weighted BT likelihood on every battle row (no cell aggregation), to "
        "||grad|| < 1e-13 of the total weight. Goals: compiled and reference vs exact <= 1e-6 relative; "
        "RouteLLM (sklearn lbfgs, tol 1e-4) vs reference <= 1e-3 absolute.",
        "",
        "| layout | N | a | b | queries | max difference | goal |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for e in eq:
        diff = f"{e['max_rel']:.2e} rel" if "max_rel" in e else f"{e['max_abs']:.2e} abs"
        lines.append(
            f"| {e['layout']} | {e['n_battles']:,} | {e['a']} | {e['b']} | {e['n']} | {diff} | "
            f"{'met' if e['ok'] else 'MISSED'} |"
        )
    lines += [
        "",
        "## Plots",
        "",
        "![cost vs N](sw_kernel_cost_vs_n.png)",
        "",
        "![cost vs batch](sw_kernel_cost_vs_batch.png)",
        "",
    ]
    (out_dir / "RESULTS_sw_kernel.md").write_text("\n".join(lines))
    _plots(rows, layouts, sizes, threads, batches, present, out_dir)


def _plots(rows, layouts, sizes, threads, batches, present, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(METHODS, ("tab:blue", "tab:red", "tab:green", "tab:purple")))
    panels = [(lay, t) for lay in layouts for t in threads]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (lay, t) in zip(axes[0], panels):
        for x in present:
            for b, style in ((1, "-o"), (max(batches), "--s")):
                if x == "routellm" and b != 1:
                    continue
                pts = [(n, _cost(rows, layout=lay, n_battles=n, threads=t, method=x, batch=b)) for n in sizes]
                pts = [(n, c) for n, c in pts if c is not None]
                if pts:
                    ax.loglog(*zip(*pts), style, color=colours[x], label=f"{x} b={b}", ms=4)
        ax.set(title=f"{lay}, {t} thread{'s' * (t > 1)}", xlabel="training battles N", ylabel="ms / prompt")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "sw_kernel_cost_vs_n.png", dpi=110)
    plt.close(fig)

    n_max = max(sizes)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (lay, t) in zip(axes[0], panels):
        for x in present:
            if x == "routellm":
                c = _cost(rows, layout=lay, n_battles=n_max, threads=t, method=x, batch=1)
                if c is not None:
                    ax.axhline(c, color=colours[x], ls=":", label=f"{x} (one request)")
                continue
            pts = [(b, _cost(rows, layout=lay, n_battles=n_max, threads=t, method=x, batch=b)) for b in batches]
            pts = [(b, c) for b, c in pts if c is not None]
            if pts:
                ax.loglog(*zip(*pts), "-o", color=colours[x], label=x, ms=4)
        ax.set(title=f"N={n_max:,} {lay}, {t} thread{'s' * (t > 1)}", xlabel="batch size", ylabel="ms / prompt")
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "sw_kernel_cost_vs_batch.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 10k only, few queries, short timings")
    p.add_argument("--sizes", type=int, nargs="+", help="battle counts (default 10k 100k 1M)")
    p.add_argument("--layouts", nargs="+", default=["per_battle", "shared"], choices=["per_battle", "shared"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--min-s", type=float, help="seconds of timed calls per cell (default 1.0; quick 0.2)")
    p.add_argument("--max-reps", type=int, default=200)
    p.add_argument("--routellm-queries", type=int, help="RouteLLM requests per config (default 9; quick 3)")
    p.add_argument("--routellm-max-s", type=float, default=30.0, help="wall cap per RouteLLM config")
    p.add_argument("--row-fit-max-n", type=int, default=10_000, help="largest N for the row-level exact fit")
    p.add_argument("--no-routellm", action="store_true")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out-dir", type=Path, help="default benchmarks/ (quick: .cache/sw_kernel_quick/)")
    p.add_argument("--from-json", type=Path, help="only rewrite the report and plots from this results JSON")
    args = p.parse_args(argv)
    if args.from_json:
        out_dir = args.out_dir or args.from_json.parent
        write_report(json.loads(args.from_json.read_text()), out_dir)
        print(f"wrote {out_dir}/RESULTS_sw_kernel.md, sw_kernel_*.png from {args.from_json}")
        return 0
    args.sizes = args.sizes or ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    args.min_s = args.min_s if args.min_s is not None else (0.2 if args.quick else 1.0)
    args.routellm_queries = args.routellm_queries or (3 if args.quick else 9)
    out_dir = args.out_dir or (ROOT / ".cache" / "sw_kernel_quick" if args.quick else HERE)
    out_dir.mkdir(parents=True, exist_ok=True)

    command = ".venv/bin/python benchmarks/sw_kernel_bench.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    result = run(args)
    result["machine"] = machine_info()
    result["command"] = command.strip()
    result["params"] = {
        "d": D,
        "n_tiers": N_TIERS,
        "strong_tier": STRONG_TIER,
        "weak_tier": WEAK_TIER,
        "gamma": GAMMA,
        "battles_per_prompt_shared": BATTLES_PER_PROMPT,
        "n_queries": N_QUERIES,
        "seed": args.seed,
        "batches": args.batches,
        "threads": args.threads,
        "min_s": args.min_s,
        "routellm_queries": args.routellm_queries,
        "routellm_max_s": args.routellm_max_s,
    }
    (out_dir / "sw_kernel_results.json").write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, out_dir)
    print(
        f"wrote {out_dir}/RESULTS_sw_kernel.md, sw_kernel_results.json, sw_kernel_*.png "
        f"(wall {result['wall_s']:.0f}s, peak RSS {result['peak_rss_gb']:.2f} GB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
