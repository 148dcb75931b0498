"""A second view of the prompt for the paired kernel learner: the static token-table embedding beside the
bundle's transformer embedding, on validation splits of the stream halves only (the adaptation
protocol's test half is never read).

    .venv/bin/python benchmarks/adaptation/view_validation.py --bundle /tmp/defb --static /tmp/tiers/static \
        --out benchmarks/adaptation/RESULTS_view_validation.md

Per (set, N) and seed, as `learner_validation.py`: the stream half split by `grouped_split`
(near-duplicate prompts on one side), N of the pool judged (both models' quality), every learner fitted
on the same N, APGR on the other stream prompts (the paper's deciles). The learners are kernel ridge of
strong - weak quality with the linear log-length term of `lmroute.adapt.kernel_ridge`, over

- the shipped learner: the `--bundle` encoder's embedding (all-MiniLM-L6-v2 for the default bundle),
  k = exp(4 (cos - 1)), penalty 3;
- static alone: the `--static` bundle's token-table embedding (the static tier, distilled from that
  encoder), k = exp(gamma (cos_s - 1));
- product: both views, k = exp(gamma (cos_e + cos_s) / 2 - gamma) (the cosine of the two unit
  embeddings side by side);
- sum: k = w exp(4 (cos_e - 1)) + (1 - w) exp(gamma (cos_s - 1));
- chosen by CV: per seed, the shipped learner or one two-view kernel, whichever has the larger routing
  gain area (`lmroute.adapt.ranking.gain_area`) of its 5-fold out-of-fold predictions on the N judged
  outcomes (what a deployment could decide from its own outcomes).

Reported: mean and sd over seeds, and each learner's paired difference from the shipped one.
The experiment kernels are written here (the shipped `fit_kernel_ridge` takes one embedding).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_budget_validation import Stream, paired_table, run_line, write_page

from lmroute.adapt.kernel_ridge import unit_rows
from lmroute.adapt.protocol import stream_mask
from lmroute.adapt.ranking import gain_area
from lmroute.adapt.ridge import fold_ids
from lmroute.bundle.loader import load_bundle
from lmroute.export.embed_cache import embed_texts, encoder_id_of
from lmroute.export.evalsets import load_eval
from lmroute.export.metrics import router_metrics

# (set, judged prompts, pool, seeds)
SETTINGS = (("mmlu", 1000, 5000, 20), ("mmlu", 5000, 5000, 6), ("gsm8k", 457, 457, 20))
SHIPPED = "shipped: encoder, gamma 4, penalty 3"
CHOSEN = "chosen by CV: shipped or sum 0.7 / 0.3"
Kernel = Callable[[np.ndarray, np.ndarray], np.ndarray]  # rows a, rows b -> k(a, b)


def kernels(e: np.ndarray, st: np.ndarray) -> dict[str, tuple[Kernel, float]]:
    """Name -> (kernel over row indices, penalty); e and st are unit rows of the two views."""

    def rbf(u: np.ndarray, gamma: float) -> Kernel:
        return lambda a, b: np.exp(gamma * (u[a] @ u[b].T - 1.0))

    def total(w: float, k1: Kernel, k2: Kernel) -> Kernel:
        return lambda a, b: w * k1(a, b) + (1.0 - w) * k2(a, b)

    both = np.hstack([e, st]) / np.sqrt(2.0)
    return {
        SHIPPED: (rbf(e, 4.0), 3.0),
        "static alone, gamma 8": (rbf(st, 8.0), 3.0),
        "product, gamma 6": (rbf(both, 6.0), 3.0),
        "sum 0.5 / 0.5, static gamma 8": (total(0.5, rbf(e, 4.0), rbf(st, 8.0)), 3.0),
        "sum 0.7 / 0.3, static gamma 8": (total(0.7, rbf(e, 4.0), rbf(st, 8.0)), 3.0),
    }


def fit_predict(
    kernel: Kernel, penalty: float, z: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray
) -> np.ndarray:
    """Kernel ridge with unpenalised columns z ([1 | log length]) fitted on rows tr, predicted on te
    (the model of `lmroute.adapt.kernel_ridge`, any kernel)."""
    k = kernel(tr, tr)
    k[np.diag_indices(tr.size)] += penalty
    solved = np.linalg.solve(k, np.column_stack([y[tr], z[tr]]))
    my, mz = solved[:, 0], solved[:, 1:]
    beta = np.linalg.solve(z[tr].T @ mz, z[tr].T @ my)
    alpha = my - mz @ beta
    out: np.ndarray = kernel(te, tr) @ alpha + z[te] @ beta
    return out


def cv_area(kernel: Kernel, penalty: float, z: np.ndarray, y: np.ndarray, idx: np.ndarray, seed: int) -> float:
    """Routing gain area of 5-fold out-of-fold predictions over the judged rows idx."""
    ids = fold_ids(idx.size, 5, seed)
    pred = np.empty(idx.size)
    for f in range(5):
        test = ids == f
        pred[test] = fit_predict(kernel, penalty, z, y, idx[~test], idx[test])
    return gain_area(pred, y[idx])


def static_view(s: Stream, static: Path, data: Path, cache: Path, dataset: str) -> np.ndarray:
    """The static bundle's embedding of every stream-half prompt, in the Stream's order."""
    enc = load_bundle(static).encoder
    ev = load_eval(dataset, data)
    emb = embed_texts(enc, ev.prompts, cache, encoder_id=encoder_id_of(enc))
    view: np.ndarray = np.asarray(emb, dtype=np.float64)[stream_mask(ev.prompts)]
    if view.shape[0] != s.gap.size:
        raise RuntimeError(f"static view: {view.shape[0]} rows for {s.gap.size} stream prompts")
    return view


def run(s: Stream, st: np.ndarray, n: int, pool: int, seeds: int) -> dict[str, list[float]]:
    table = kernels(unit_rows(s.emb), unit_rows(st))
    z = np.column_stack([np.ones(s.gap.size), s.len])
    got: dict[str, list[float]] = {}
    for seed in range(seeds):
        pooled, val = s.split(pool, seed)
        idx = pooled if n >= pool else np.random.default_rng(10_000 + seed).choice(pooled, n, replace=False)
        preds = {name: fit_predict(k, p, z, s.gap, idx, val) for name, (k, p) in table.items()}
        pick = max(
            (SHIPPED, "sum 0.7 / 0.3, static gamma 8"), key=lambda name: cv_area(*table[name], z, s.gap, idx, seed)
        )
        preds[CHOSEN] = preds[pick]
        got.setdefault(f"{CHOSEN}: times two-view", []).append(float(pick != SHIPPED))
        for name, raw in preds.items():
            got.setdefault(name, []).append(router_metrics(raw, s.sq[val], s.wq[val]).apgr)
        print(f"seed {seed + 1}/{seeds}", file=sys.stderr)
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="a bundle whose encoder embeds the prompts")
    p.add_argument("--static", type=Path, required=True, help="a static-tier bundle: the second view")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--cache", type=Path, default=Path(".cache/embeddings"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/adaptation/RESULTS_view_validation.md"))
    args = p.parse_args(argv)
    t0 = time.time()
    lines = [
        "# A second view for the paired kernel learner, on validation splits of the stream halves",
        "",
        "```bash",
        f".venv/bin/python benchmarks/adaptation/view_validation.py --bundle {args.bundle} --static {args.static}",
        "```",
        "",
    ]
    summary: dict[str, dict[str, object]] = {}
    streams: dict[str, tuple[Stream, np.ndarray]] = {}
    for dataset, n, pool, seeds in SETTINGS:
        if dataset not in streams:
            s = Stream(args.bundle, args.data, args.cache, dataset)
            streams[dataset] = (s, static_view(s, args.static, args.data, args.cache, dataset))
        s, st = streams[dataset]
        got = run(s, st, n, pool, seeds)
        share = got.pop(f"{CHOSEN}: times two-view")
        title = (
            f"{dataset}: {n} judged of a pool of {pool}, APGR on ~{s.gap.size - pool} validation prompts, {seeds} seeds"
        )
        table, summary[title] = paired_table(got, SHIPPED, "learner", "APGR")
        summary[title]["two_view_chosen"] = share
        lines += [
            f"## {title}",
            "",
            *table,
            "",
            f"CV chose the two-view kernel in {int(sum(share))} of {seeds} seeds.",
            "",
        ]
        print(f"{title}: done", file=sys.stderr)
    s0 = next(iter(streams.values()))[0]
    lines[6:6] = [
        run_line(t0, f"encoder of `{args.bundle}` ({s0.encoder_id[:16]}...), static view of `{args.static}`"),
        "",
    ]
    write_page(args.out, lines, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
