"""Offline learning curves of the in-domain learners on the adaptation protocol (no server).

MMLU and GSM8K (decontaminated by `load_eval`) are replayed as traffic and split by the sha256 of each
prompt (`lmroute.adapt.protocol`): the stream half feeds the learners, the test half is only scored.
For N outcomes from the stream half (N in --sizes, up to what the half holds) and each seed (which N
prompts arrive, in which order), APGR on the test half (`lmroute.export.metrics`, the paper's deciles) of:

- paired, random sample: `adapt_paired` on N random stream prompts with both models' quality;
- paired, label budget: the N prompts chosen by `label_budget` (its default random share) from the
  stream, in windows of 500;
- single, exploring: the stream routed by the champion at strong share 0.5 with `explore` (flip rate
  <= 10 %), refitted at each checkpoint with `adapt_single` (its default learner, the shared outcome
  ridge of `lmroute.adapt.learners.fit_shared`); once a candidate was accepted, the gate holds out only
  the outcomes after those it was fitted on, as `lmroute-export adapt` does from its lineage; the quality
  lost to exploration is the mean realised quality of the exploring policy on the stream minus the same
  decisions unflipped;

each as the candidate (the head blended as `lmroute-export adapt` would write it, refitted on all N) and as
served after the gate (the candidate if the gate accepted it against the champion, else the champion).
Baselines: random (U(0, 1), the same seeds), log length, the default bundle's routers zero-shot (mf and
sw_ranking; bert is left out: it needs a full transformer pass over 15k prompts), the ceiling (the paired
learner on the whole stream half). Embeddings: the bundle's encoder, cached under --cache.

    .venv/bin/python benchmarks/adaptation/offline_curves.py --bundle artifacts/default
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lmroute.adapt.head import log_length
from lmroute.adapt.learners import MAX_INVERSE_PROPENSITY, PAIRED_LEARNERS, fit_paired
from lmroute.adapt.pipeline import adapt_paired, adapt_single
from lmroute.adapt.protocol import stream_mask
from lmroute.adapt.selection import ExplorationRule, design_inverse, explore, label_budget
from lmroute.bundle.loader import load_bundle
from lmroute.bundle.routers import PromptBatch
from lmroute.export.embed_cache import embed_texts, encoder_id_of
from lmroute.export.evalsets import load_eval
from lmroute.export.metrics import router_metrics

SIZES = (100, 500, 1000, 2000, 5000)
ZERO_SHOT = ("mf", "sw_ranking")
WINDOW = 500
SHARE = 0.5  # the operating point of the exploring policy
PARTS = ("paired", "budget", "single")  # random-sample paired rows, label-budget paired rows, single outcomes
ROWS = tuple(f"paired_{how}_{learner}" for how in ("random", "budget") for learner in PAIRED_LEARNERS) + ("single",)


def apgr(scores: np.ndarray, data: dict[str, Any]) -> float:
    return router_metrics(scores, data["sq"][data["test"]], data["wq"][data["test"]]).apgr


def load_set(name: str, args: argparse.Namespace, bundle: Any) -> dict[str, Any]:
    ev = load_eval(name, Path(args.data))
    emb = embed_texts(bundle.encoder, ev.prompts, Path(args.cache), encoder_id=encoder_id_of(bundle.encoder))
    zero_shot = {}
    for router in (r for r in ZERO_SHOT if r in bundle.routers):
        parts = []
        for start in range(0, len(ev), 512):
            texts = ev.prompts[start : start + 512]
            batch = PromptBatch(texts=texts, tokens=bundle.encoder.tokenize(texts), embeddings=emb[start : start + 512])
            parts.append(bundle.routers[router].score(batch))
        zero_shot[router] = np.concatenate(parts)
    stream = stream_mask(ev.prompts)
    return {
        "name": name,
        "emb": emb.astype(np.float64),
        "len": log_length(ev.prompts),
        "sq": ev.strong_quality,
        "wq": ev.weak_quality,
        "stream": np.flatnonzero(stream),
        "test": np.flatnonzero(~stream),
        "zero_shot": zero_shot,
        "n_dropped": ev.n_dropped_contaminated,
    }


def paired_run(d: dict[str, Any], idx: np.ndarray, base: np.ndarray, seed: int, learner: str) -> dict[str, float]:
    gap = d["sq"][idx] - d["wq"][idx]
    champion = base[idx]  # the zero-shot default serves until a candidate passes the gate
    result = adapt_paired(
        d["emb"][idx], d["len"][idx], gap, base[idx], champion, np.arange(idx.size), learner=learner, seed=seed
    )
    t = d["test"]
    cand = apgr(result.scores(d["emb"][t], d["len"][t], base[t]), d)
    return {
        "candidate": cand,
        "served": cand if result.accepted else apgr(base[t], d),
        "accepted": float(result.accepted),
        "n0": result.n0,
        "weight": result.weight,
    }


def budget_indices(d: dict[str, Any], order: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The N prompts the label budget marks while the stream passes in windows of WINDOW."""
    inverse = design_inverse(d["emb"].shape[1], 30.0)
    chosen: list[np.ndarray] = []
    done = 0
    for start in range(0, order.size, WINDOW):
        win = order[start : start + WINDOW]
        k = int(round(n * (start + win.size) / order.size)) - done
        if k <= 0:
            continue
        picks, inverse = label_budget(d["emb"][win], d["len"][win], k, inverse, seed=seed + start)
        chosen.append(win[picks])
        done += k
    return np.concatenate(chosen)


def single_run(
    d: dict[str, Any],
    order: np.ndarray,
    sizes: list[int],
    base: np.ndarray,
    seed: int,
    gate_clip: float = MAX_INVERSE_PROPENSITY,
) -> dict[int, dict]:
    """Route the stream with exploration, refit at each size; results per size (`gate_clip`: where the
    gate's gains clip 1 / propensity)."""
    rng = np.random.default_rng(1000 + seed)
    rule = ExplorationRule(floor=0.02, band=0.08, band_rate=0.45, max_rate=0.10)
    champion = base.copy()  # scores of every prompt under the serving router
    fitted_upto = 0  # outcomes the serving champion was fitted on (the first ones); 0: the zero-shot base
    arm = np.zeros(0, dtype=bool)
    prop = np.zeros(0)
    unflipped = np.zeros(0, dtype=bool)
    out: dict[int, dict] = {}
    accepted_any = 0.0
    for lo, hi in zip([0, *sizes[:-1]], sizes, strict=True):
        rows = order[lo:hi]
        ref = champion[d["stream"]]  # thresholds calibrated on the traffic's prompts
        threshold = float(np.quantile(ref, 1.0 - SHARE))
        ex = explore(champion[rows], threshold, ref, SHARE, rule, rng)
        arm = np.concatenate([arm, ex.chose_strong])
        prop = np.concatenate([prop, ex.propensity])
        unflipped = np.concatenate([unflipped, champion[rows] >= threshold])
        idx = order[:hi]
        q = np.where(arm, d["sq"][idx], d["wq"][idx])
        # as `lmroute-export adapt` does (its lineage): an adapted champion is judged only on outcomes it
        # was not fitted on, which it would otherwise predict in-sample
        unseen = np.arange(hi) >= fitted_upto if fitted_upto else None
        result = adapt_single(
            d["emb"][idx],
            d["len"][idx],
            arm,
            q,
            prop,
            base[idx],
            champion[idx],
            np.arange(hi),
            unseen=unseen,
            seed=seed,
            gate_max_inverse_propensity=gate_clip,
        )
        cand_all = result.scores(d["emb"], d["len"], base)
        cand = apgr(cand_all[d["test"]], d)
        if result.accepted:
            champion = cand_all
            fitted_upto = hi
            accepted_any = 1.0
        q_unflipped = np.where(unflipped, d["sq"][idx], d["wq"][idx])
        out[hi] = {
            "candidate": cand,
            "served": apgr(champion[d["test"]], d),
            "accepted": float(result.accepted),
            "ever_accepted": accepted_any,
            "explore_rate": float((arm != unflipped).mean()),
            "quality_explored": float(q.mean()),
            "quality_unexplored": float(q_unflipped.mean()),
            "quality_lost": float(q_unflipped.mean() - q.mean()),
        }
    return out


def summarise(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}


def run_set(d: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    base = d["zero_shot"][args.base_router]
    n_stream = d["stream"].size
    sizes = [n for n in args.sizes if n <= n_stream]
    if n_stream not in sizes and n_stream < max(args.sizes):
        sizes.append(n_stream)
    t = d["test"]
    res: dict[str, Any] = {"sizes": sizes, "n_stream": int(n_stream), "n_test": int(t.size)}
    res["random"] = summarise([apgr(np.random.default_rng(s).random(t.size), d) for s in range(args.seeds)])
    res["length"] = apgr(d["len"][t], d)
    res["zero_shot"] = {r: apgr(s[t], d) for r, s in d["zero_shot"].items()}
    s = d["stream"]
    for learner in PAIRED_LEARNERS:
        ceiling = fit_paired(d["emb"][s], d["len"][s], d["sq"][s] - d["wq"][s], learner=learner)
        res[f"ceiling_{learner}"] = apgr(ceiling.raw(d["emb"][t], d["len"][t]), d)
    rows: dict[str, dict[int, list[dict[str, float]]]] = {key: {} for key in ROWS}
    for seed in range(args.seeds):
        order = np.random.default_rng(seed).permutation(s)
        for n in sizes if {"paired", "budget"} & set(args.parts) else []:
            t0 = time.perf_counter()
            for learner in PAIRED_LEARNERS if "paired" in args.parts else ():
                rows[f"paired_random_{learner}"].setdefault(n, []).append(paired_run(d, order[:n], base, seed, learner))
            if n < n_stream and "budget" in args.parts:
                budget = budget_indices(d, order, n, seed)
                for learner in PAIRED_LEARNERS:
                    run = paired_run(d, budget, base, seed, learner)
                    rows[f"paired_budget_{learner}"].setdefault(n, []).append(run)
            print(f"{d['name']} seed {seed} N {n}: paired {time.perf_counter() - t0:.1f}s", flush=True)
        if "single" in args.parts:
            t0 = time.perf_counter()
            for n, r in single_run(d, order, sizes, base, seed, args.gate_max_inverse_propensity).items():
                rows["single"].setdefault(n, []).append(r)
            print(f"{d['name']} seed {seed}: single {time.perf_counter() - t0:.1f}s", flush=True)
    for key, by_n in rows.items():
        res[key] = {
            str(n): {field: summarise([r[field] for r in runs]) for field in runs[0]} for n, runs in by_n.items()
        }
    return res


def fmt(s: dict[str, float]) -> str:
    return f"{s['mean']:.3f} ± {s['sd']:.3f}"


def markdown(results: dict[str, Any], command: str) -> str:
    lines = [
        "# Adaptation: offline learning curves",
        "",
        "```",
        command,
        "```",
        "",
        f"- {results['hardware']}; Python {results['python']}; wall time {results['wall_s'] / 60:.1f} min.",
        f"- Bundle `{results['bundle_version']}` (encoder {results['encoder']}); base router `{results['base_router']}` "
        "(the zero-shot default the head blends with, and the champion the gate compares with).",
        f"- {results['seeds']} seeds (which N stream prompts arrive, in which order); mean ± sd. APGR on the test "
        "half, the paper's deciles (`lmroute.export.metrics`).",
        "- candidate: the head blended as `adapt` writes it, refitted on all N; served: the candidate if the gate "
        "with its defaults (10 random folds of the N outcomes, each held out from a candidate fitted on the other "
        "nine; not worse than the champion by more than 0.01 APGR, one-sided paired bootstrap; the candidate's "
        "order beats unrelated gains, permutation test; alpha 0.05) accepted it, else the zero-shot default.",
        "",
    ]
    for name, r in results["sets"].items():
        lines += [
            f"## {name} (stream {r['n_stream']} prompts, test {r['n_test']})",
            "",
            "| baseline | APGR (test half) |",
            "|---|---|",
            f"| random ({results['seeds']} seeds) | {fmt(r['random'])} |",
            f"| log length | {r['length']:.3f} |",
        ]
        lines += [f"| default bundle `{k}`, zero-shot | {v:.3f} |" for k, v in r["zero_shot"].items()]
        lines += [
            f"| ceiling: paired {learner} learner on the whole stream half ({r['n_stream']}) "
            f"| {r[f'ceiling_{learner}']:.3f} |"
            for learner in PAIRED_LEARNERS
        ]
        parts = set(results.get("parts", PARTS))
        if {"paired", "budget"} & parts:
            lines += paired_table(r)
        if "single" in parts:
            lines += single_table(r)
        lines.append("")
    return "\n".join(lines)


def paired_table(r: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Paired outcomes, the default kernel learner (ridge: the linear learner on the same prompts):",
        "",
        "| N | random sample: candidate | served | gate accepts | ridge: candidate | served |"
        " label budget: candidate | served | ridge: candidate | served |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in r["sizes"]:
        cells = [str(n)]
        for how in ("random", "budget"):
            for learner in PAIRED_LEARNERS:
                got = r[f"paired_{how}_{learner}"].get(str(n))
                if got is None:
                    whole = how == "budget" and n == r["n_stream"]
                    cells += ["– (whole half)" if whole else "–", "–"]
                    if how == "random" and learner == PAIRED_LEARNERS[0]:
                        cells.append("–")
                    continue
                cells += [fmt(got["candidate"]), fmt(got["served"])]
                if how == "random" and learner == PAIRED_LEARNERS[0]:
                    cells.append(f"{got['accepted']['mean']:.0%}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def single_table(r: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Single outcomes (the answering model's quality only), the stream routed with exploration:",
        "",
        "| N | candidate | served | explored | quality lost |",
        "|---|---|---|---|---|",
    ]
    for n in r["sizes"]:
        sg = r["single"].get(str(n))
        cells = [str(n)]
        if sg:
            cells += [
                fmt(sg["candidate"]),
                fmt(sg["served"]),
                f"{sg['explore_rate']['mean']:.1%}",
                f"{sg['quality_lost']['mean']:.4f} ± {sg['quality_lost']['sd']:.4f}",
            ]
        else:
            cells += ["–"] * 4
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="artifacts/default", help="a built default bundle (its encoder and routers)")
    p.add_argument("--data", default="data")
    p.add_argument("--cache", default=".cache/embeddings")
    p.add_argument("--sets", nargs="+", default=["mmlu", "gsm8k"])
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which rows to run (default all)")
    p.add_argument("--base-router", default="mf")
    p.add_argument("--out", default="benchmarks/adaptation/results_offline.json")
    p.add_argument("--markdown", default="benchmarks/adaptation/RESULTS_offline.md")
    p.add_argument(
        "--gate-max-inverse-propensity",
        type=float,
        default=MAX_INVERSE_PROPENSITY,
        help="single rows: where the gate's doubly robust gains clip 1 / propensity (inf: not at all)",
    )
    args = p.parse_args(argv)
    if not Path(args.bundle, "manifest.json").is_file():
        print(f"no built bundle at {args.bundle}: build one (`lmroute-export build`) or pass --bundle", file=sys.stderr)
        return 2
    started = time.perf_counter()
    bundle = load_bundle(args.bundle)
    results: dict[str, Any] = {
        "bundle_version": bundle.version,
        "encoder": f"{bundle.manifest.encoder.name}, truncation {bundle.manifest.encoder.truncation}",
        "base_router": args.base_router,
        "seeds": args.seeds,
        "parts": list(args.parts),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "python": platform.python_version(),
        "sets": {},
    }
    for name in args.sets:
        results["sets"][name] = run_set(load_set(name, args, bundle), args)
    results["wall_s"] = time.perf_counter() - started
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adaptation/offline_curves.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    Path(args.markdown).write_text(markdown(results, command))
    print(markdown(results, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
