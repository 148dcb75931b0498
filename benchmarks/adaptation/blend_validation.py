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
in-domain base, a kernel head fitted on other stream prompts of the same seed (2,000 on MMLU, 157 on
GSM8K; neither pooled nor held back), standing in for a shipped router that knows the domain.

Single outcomes (MMLU): the pool is routed once by `mf` at a strong share of 0.5 with the default
exploration, each event keeps the answering model's quality and its propensity, and the shared outcome
ridge and the blend are fitted on the first N events as `adapt_single` fits them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_budget_validation import paired_table, run_line, write_page
from offline_curves import SHARE, budget_indices, load_set

from lmroute.adapt.head import Head, blended_scores
from lmroute.adapt.learners import BLEND_RESAMPLES, fit_paired, fit_shared, shared_head
from lmroute.adapt.pipeline import fit_blend
from lmroute.adapt.protocol import grouped_split, near_duplicate_groups
from lmroute.adapt.ridge import design
from lmroute.adapt.selection import ExplorationRule, explore
from lmroute.bundle.loader import load_bundle
from lmroute.export.metrics import router_metrics

# (set, base, pool, prompts the in-domain base is fitted on, judged sizes, seeds)
SETTINGS: tuple[tuple[str, str, int, int, tuple[int, ...], int], ...] = (
    ("mmlu", "mf", 5000, 0, (500, 1000, 2000), 12),
    ("mmlu", "in-domain", 3000, 2000, (100, 500, 1000), 12),
    ("gsm8k", "mf", 457, 0, (100, 200, 457), 20),
    ("gsm8k", "in-domain", 300, 157, (100, 200, 300), 20),
)
# single outcomes: (set, pool, event counts, seeds); the pool routed once by `mf` with the default exploration
SINGLE_SETTINGS: tuple[tuple[str, int, tuple[int, ...], int], ...] = (("mmlu", 5000, (1000, 5000), 12),)
RULES = ("argmax", "bagged (default)", "head alone")


def score_rules(
    row: dict[str, list[float]],
    d: dict[str, Any],
    idx: np.ndarray,
    val: np.ndarray,
    gain: np.ndarray,
    base: np.ndarray,
    head: Head,
    seed: int,
    out_of_fold_raw: np.ndarray | None = None,
) -> None:
    """Append to `row` the validation APGR (and n0) of each rule's blend of `head`, fitted on the outcomes
    `gain` of prompts `idx`, and of the head alone."""
    emb, lengths = d["emb"], d["len"]
    for rule, resamples in (("argmax", 0), ("bagged (default)", BLEND_RESAMPLES)):
        h, n0, weight, std = fit_blend(
            emb[idx], lengths[idx], gain, base[idx], head, seed, out_of_fold_raw, resamples=resamples
        )
        scores = blended_scores(h, emb[val], lengths[val], base[val], weight, std)
        row.setdefault(rule, []).append(router_metrics(scores, d["sq"][val], d["wq"][val]).apgr)
        row.setdefault(f"n0 {rule}", []).append(n0)
    raw = head.raw(emb[val], lengths[val])
    row.setdefault("head alone", []).append(router_metrics(raw, d["sq"][val], d["wq"][val]).apgr)


def run_setting(
    d: dict[str, Any], base_name: str, pool_size: int, base_prompts: int, sizes: tuple[int, ...], seeds: int
) -> dict[str, dict[str, list[float]]]:
    stream = d["stream"]
    emb, lengths, gap = d["emb"], d["len"], d["sq"] - d["wq"]
    got: dict[str, dict[str, list[float]]] = {}
    for seed in range(seeds):
        pool_local, rest = grouped_split(d["groups"], pool_size, seed)
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
                score_rules(got.setdefault(f"{n} judged, {how}", {}), d, idx, val, gap[idx], base, head, seed)
        print(f"{d['name']} {base_name}: seed {seed + 1}/{seeds}", file=sys.stderr)
    return got


def run_single(
    d: dict[str, Any], pool_size: int, sizes: tuple[int, ...], seeds: int
) -> dict[str, dict[str, list[float]]]:
    """Single outcomes: the pool routed by `mf` at a strong share of SHARE with the default exploration
    (the propensities logged), the shared outcome ridge fitted on the first N events, the blend's n0 on
    its out-of-fold gap and cross-fitted doubly robust pseudo-gap (as `adapt_single` does)."""
    stream = d["stream"]
    emb, lengths, base = d["emb"], d["len"], d["zero_shot"]["mf"]
    rule = ExplorationRule(floor=0.02, band=0.08, band_rate=0.45, max_rate=0.10)
    ref = base[stream]
    threshold = float(np.quantile(ref, 1.0 - SHARE))
    got: dict[str, dict[str, list[float]]] = {}
    for seed in range(seeds):
        pool_local, rest = grouped_split(d["groups"], pool_size, seed)
        pool, val = stream[pool_local], stream[rest]
        ex = explore(base[pool], threshold, ref, SHARE, rule, np.random.default_rng(1000 + seed))
        quality = np.where(ex.chose_strong, d["sq"][pool], d["wq"][pool])
        for n in sizes:
            idx = pool[:n]
            x = design(emb[idx], lengths[idx])
            shared = fit_shared(x, ex.chose_strong[:n], quality[:n], ex.propensity[:n], seed=seed)
            head = shared_head(x, shared, n)
            row = got.setdefault(f"{n} events (single outcomes, explored)", {})
            score_rules(row, d, idx, val, shared.pseudo_gap, base, head, seed, shared.oof_gap)
        print(f"{d['name']} single: seed {seed + 1}/{seeds}", file=sys.stderr)
    return got


def section(title: str, values: dict[str, list[float]], summary: dict[str, Any]) -> list[str]:
    """One setting's Markdown: the rules' APGR against the single pick, and the n0 each rule chose."""
    n0s = {rule: np.asarray(values.pop(f"n0 {rule}")) for rule in RULES[:2]}
    table, summary[title] = paired_table(values, "argmax", "n0 rule", "APGR (validation)")
    n0_text = "; ".join(f"{rule} {v.mean():.0f} ± {v.std(ddof=1):.0f}" for rule, v in n0s.items())
    summary[title]["n0"] = {rule: v.tolist() for rule, v in n0s.items()}
    return [f"## {title}", "", *table, "", f"n0 chosen, mean ± sd: {n0_text}.", ""]


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

    def data(name: str) -> dict[str, Any]:
        """The set's prompts, outcomes and zero-shot scores (`load_set`) and its stream's near-duplicate
        groups, loaded once."""
        if name not in sets:
            d = load_set(name, argparse.Namespace(data=args.data, cache=args.cache), bundle)
            d["groups"] = near_duplicate_groups(d["emb"][d["stream"]])
            sets[name] = d
        return sets[name]

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
        d = data(name)
        got = run_setting(d, base_name, pool, base_prompts, sizes, seeds)
        held = d["stream"].size - pool - base_prompts
        base_text = (
            "the bundle's `mf`, zero-shot"
            if not base_prompts
            else f"in-domain (a kernel head fitted on {base_prompts} other stream prompts)"
        )
        for row, values in got.items():
            title = f"{name}, base {base_text}: {row} of a pool of {pool}, about {held} held back, {seeds} seeds"
            lines += section(title, values, summary)
    for name, pool, sizes, seeds in SINGLE_SETTINGS:
        d = data(name)
        for row, values in run_single(d, pool, sizes, seeds).items():
            title = f"{name}, base the bundle's `mf`, zero-shot: {row} of a pool of {pool}, about {d['stream'].size - pool} held back, {seeds} seeds"
            lines += section(title, values, summary)
    lines[6:6] = [
        run_line(t0, f"bundle `{args.bundle}` (version {bundle.version})"),
        "",
    ]
    write_page(args.out, lines, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
