"""Which paired learner, and at which settings: the linear ridge head against kernel ridge, on validation
splits of the stream halves only (the adaptation protocol's test half is never read).

    .venv/bin/python benchmarks/adaptation/learner_validation.py --bundle /tmp/tiers/onnx \
        --out benchmarks/adaptation/RESULTS_learner_validation.md

Per (set, N) and seed, the stream half (`lmroute.adapt.protocol.stream_mask`) is split by `grouped_split`
(near-duplicate prompts on one side): N of the pooled prompts (all of them when N = pool) are judged
(both models' quality) and every learner is fitted on the same N; APGR on the other stream prompts (the
validation split), the paper's deciles.
Learners: `fit_paired(learner="ridge")` (ridge of strong - weak on [embedding | log length], penalty by
5-fold cross-validation) and kernel ridge (`lmroute.adapt.kernel_ridge.fit_kernel_ridge`) over a grid
of kernel widths gamma and penalties; the shipped default is marked. Settings: MMLU with 1,000 and 5,000
judged prompts (pool 5,000; 2,021 validation prompts), GSM8K with all 457 of a pool of 457 (200
validation prompts). Reported: mean and sd over seeds, and each learner's paired difference from the
ridge (same seed and prompts) with its standard error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_budget_validation import Stream, paired_table, run_line, write_page

from lmroute.adapt.kernel_ridge import DEFAULT_KERNEL, KernelSettings, fit_kernel_ridge
from lmroute.adapt.learners import fit_paired
from lmroute.export.metrics import router_metrics

# (set, judged prompts, pool, seeds)
SETTINGS = (("mmlu", 1000, 5000, 12), ("mmlu", 5000, 5000, 12), ("gsm8k", 457, 457, 20))
GAMMAS = (2.0, 3.0, 4.0)
PENALTIES = (1.0, 3.0, 10.0)


def run(s: Stream, n: int, pool: int, seeds: int) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {}
    for seed in range(seeds):
        pooled, val = s.split(pool, seed)
        idx = pooled if n >= pool else np.random.default_rng(10_000 + seed).choice(pooled, n, replace=False)

        def score(name: str, raw: np.ndarray, val: np.ndarray = val) -> None:
            got.setdefault(name, []).append(router_metrics(raw, s.sq[val], s.wq[val]).apgr)

        ridge = fit_paired(s.emb[idx], s.len[idx], s.gap[idx], learner="ridge", seed=seed)
        score("ridge", ridge.raw(s.emb[val], s.len[val]))
        for gamma in GAMMAS:
            for penalty in PENALTIES:
                settings = KernelSettings(gamma=gamma, penalty=penalty)
                fit = fit_kernel_ridge(s.emb[idx], s.len[idx], s.gap[idx], settings, seed=seed)
                mark = " (default)" if settings == DEFAULT_KERNEL else ""
                score(f"kernel gamma {gamma:g}, penalty {penalty:g}{mark}", fit.predict(s.emb[val], s.len[val]))
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="a bundle whose encoder embeds the prompts")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--cache", type=Path, default=Path(".cache/embeddings"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/adaptation/RESULTS_learner_validation.md"))
    args = p.parse_args(argv)
    t0 = time.time()
    streams: dict[str, Stream] = {}
    lines = [
        "# Paired learners on validation splits of the stream halves",
        "",
        "```bash",
        f".venv/bin/python benchmarks/adaptation/learner_validation.py --bundle {args.bundle}",
        "```",
        "",
    ]
    summary: dict[str, dict[str, object]] = {}
    for dataset, n, pool, seeds in SETTINGS:
        s = streams.setdefault(dataset, Stream(args.bundle, args.data, args.cache, dataset))
        got = run(s, n, pool, seeds)
        title = (
            f"{dataset}: {n} judged of a pool of {pool}, APGR on ~{s.gap.size - pool} validation prompts, {seeds} seeds"
        )
        table, summary[title] = paired_table(got, "ridge", "learner", "APGR")
        lines += [f"## {title}", "", *table, ""]
        print(f"{title}: done", file=sys.stderr)
    encoder_id = next(iter(streams.values())).encoder_id
    lines[6:6] = [
        run_line(t0, f"encoder of `{args.bundle}` ({encoder_id[:16]}...)"),
        "",
    ]
    write_page(args.out, lines, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
