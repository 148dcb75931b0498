"""How the blend weighs the shipped router: the blend's n0 bagged over bootstrap resamples (the default)
against the single best grid point on all the outcomes, on validation splits of the stream halves only
(the adaptation protocol's test half is never read).

    .venv/bin/python benchmarks/adaptation/blend_validation.py --bundle /tmp/defb \
        --out benchmarks/adaptation/RESULTS_blend_validation.md

The stream half (`lmroute.adapt.protocol.stream_mask`) is split per seed by `grouped_split` (near-duplicate
prompts stay on one side, as the hash split keeps identical texts in one half): --pool prompts pass as
traffic, N of them are judged (a random sample, or the label budget's marks in windows of 500 as
offline_curves.py draws them), the default paired learner is fitted on them, and the blend's n0 is chosen
by `lmroute.adapt.pipeline.fit_blend` with 0 resamples (the single best of the grid: the rule before
bagging) or the default number; APGR of the blend on the held-back stream prompts (the paper's deciles).
The head alone (n0 = 0, no weight on the base) is shown for scale.

Two kinds of base router, because a rule that always discounts the base would win on MMLU and GSM8K
alone (the shipped routers are near random there): the bundle's `mf` (zero-shot, near random), and an
in-domain base, a kernel head fitted on --base-prompts other stream prompts of the same seed (neither
pooled nor held back), standing in for a shipped router that knows the domain.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_budget_validation import paired_table, write_page
from offline_curves import budget_indices, load_set

from lmroute.adapt.head import blended_scores
from lmroute.adapt.learners import BLEND_RESAMPLES, fit_paired
from lmroute.adapt.pipeline import fit_blend
from lmroute.adapt.protocol import grouped_split, near_duplicate_groups
from lmroute.bundle.loader import load_bundle
from lmroute.export.metrics import router_metrics

# (set, base, pool, prompts the in-domain base is fitted on, judged sizes, seeds)
SETTINGS: tuple[tuple[str, str, int, int, tuple[int, ...], int], ...] = (
    ("mmlu", "mf", 5000, 0, (500, 1000, 2000), 12),
    ("mmlu", "in-domain", 3000, 2000, (100, 500, 1000), 12),
    ("gsm8k", "mf", 457, 0, (100, 200, 457), 20),
    ("gsm8k", "in-domain", 300, 157, (100, 200, 300), 20),
)
RULES = ("argmax", "bagged (default)", "head alone")


def run_setting(
    d: dict[str, Any], base_name: str, pool_size: int, base_prompts: int, sizes: tuple[int, ...], seeds: int
) -> dict[str, dict[str, list[float]]]:
    stream = d["stream"]
    emb, lengths, gap = d["emb"], d["len"], d["sq"] - d["wq"]
    groups = near_duplicate_groups(emb[stream])
    got: dict[str, dict[str, list[float]]] = {}
    for seed in range(seeds):
        pool_local, rest = grouped_split(groups, pool_size, seed)
        pool, rest = stream[pool_local], stream[rest]
        if base_prompts:
            fitted_on, val = rest[:base_prompts], rest[base_prompts:]
            base = fit_paired(emb[fitted_on], lengths[fitted_on], gap[fitted_on], seed=seed).score(emb, lengths)
        else:
            val, base = rest, d["zero_shot"][base_name]
        for n in sizes:
            picks = {
                "random": pool
                if n >= pool.size
                else np.random.default_rng(10_000 + seed).choice(pool, n, replace=False)
            }
            if n < pool.size:
                picks["label budget"] = budget_indices(d, pool, n, seed)
            for how, idx in picks.items():
                head = fit_paired(emb[idx], lengths[idx], gap[idx], seed=seed)
                row = got.setdefault(f"{n} judged, {how}", {})
                for rule, resamples in (("argmax", 0), ("bagged (default)", BLEND_RESAMPLES)):
                    h, n0, weight, std = fit_blend(
                        emb[idx], lengths[idx], gap[idx], base[idx], head, seed, resamples=resamples
                    )
                    scores = blended_scores(h, emb[val], lengths[val], base[val], weight, std)
                    row.setdefault(rule, []).append(router_metrics(scores, d["sq"][val], d["wq"][val]).apgr)
                    row.setdefault(f"n0 {rule}", []).append(n0)
                raw = head.raw(emb[val], lengths[val])
                row.setdefault("head alone", []).append(router_metrics(raw, d["sq"][val], d["wq"][val]).apgr)
        print(f"{d['name']} {base_name}: seed {seed + 1}/{seeds}", file=sys.stderr)
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="a bundle with the `mf` router (the shipped base)")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--cache", type=Path, default=Path(".cache/embeddings"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/adaptation/RESULTS_blend_validation.md"))
    args = p.parse_args(argv)
    t0 = time.time()
    bundle = load_bundle(args.bundle)
    sets: dict[str, dict[str, Any]] = {}
    lines = [
        "# The blend's n0: bagged against the single best grid point, on validation splits of the stream halves",
        "",
        "```bash",
        f".venv/bin/python benchmarks/adaptation/blend_validation.py --bundle {args.bundle}",
        "```",
        "",
    ]
    summary: dict[str, Any] = {}
    for name, base_name, pool, base_prompts, sizes, seeds in SETTINGS:
        d = sets.setdefault(name, load_set(name, argparse.Namespace(data=args.data, cache=args.cache), bundle))
        got = run_setting(d, base_name, pool, base_prompts, sizes, seeds)
        held = d["stream"].size - pool - base_prompts
        base_text = (
            "the bundle's `mf`, zero-shot"
            if not base_prompts
            else f"in-domain (a kernel head fitted on {base_prompts} other stream prompts)"
        )
        for row, values in got.items():
            title = f"{name}, base {base_text}: {row} of a pool of {pool}, about {held} held back, {seeds} seeds"
            n0s = {rule: np.asarray(values.pop(f"n0 {rule}")) for rule in RULES[:2]}
            table, summary[title] = paired_table(values, "argmax", "n0 rule", "APGR (validation)")
            n0_text = "; ".join(f"{rule} {v.mean():.0f} ± {v.std(ddof=1):.0f}" for rule, v in n0s.items())
            summary[title]["n0"] = {rule: v.tolist() for rule, v in n0s.items()}
            lines += [f"## {title}", "", *table, "", f"n0 chosen, mean ± sd: {n0_text}.", ""]
    lines[6:6] = [
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))}; Python {platform.python_version()}; wall "
        f"{time.time() - t0:.0f} s; bundle `{args.bundle}` (version {bundle.version}).",
        "",
    ]
    write_page(args.out, lines, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
