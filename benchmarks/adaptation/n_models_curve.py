"""Learning to route among N models from a deployment's outcomes: the learning curve of the
`adapted_quality` heads (`lmroute.adapt.quality_heads.adapt_qualities`, gate included) on LLMRouter's 9
open models, none of which the shipped `quality` router knows.

LLMRouter's questions (14 tasks, `lmroute.export.multi_data.load_llmrouter`, costs from its public price
list) are replayed as traffic and split by the sha256 of each prompt (`lmroute.adapt.protocol`): the
stream half feeds the learner, the test half is only scored. For N outcomes from the stream (N in
--sizes; each seed draws which stream prompts arrive, in which order) and two kinds of outcome:

- judged: every model's quality on each of the N prompts (a judge run over all answers);
- single: one model per prompt, drawn uniformly at random, and only its quality (what a deployment sees
  when it spreads traffic and records task success), with the choice logged as `Route` among candidates
  logs it (propensity 1/9, every model's expected cost): the gate's routing condition reads it;

the heads are fitted and gated exactly as `lmroute-export adapt --kind qualities` does (the champion
knows none of these models: its prediction is each model's mean quality on the earlier outcomes), and
the max-utility policy (predicted quality - lambda x expected cost) is swept over lambda on the test
half. Expected cost is the price list's cost of the prompt (its input tokens and 200 output tokens: what
the server computes from the candidates' prices before answering; LLMRouter's costs are that formula). Reported per N: AIQ (RouterBench's
metric, over the single models' cost range), the cost at which the router matches the best single
model's quality as a share of that model's cost, the quality at that model's cost, and how often the
gate accepted. Baselines on the same test half: every single model, random mixes (their hull), per-model
means from the same N outcomes (routing by cost and average quality alone), the oracle.

    .venv/bin/python benchmarks/adaptation/n_models_curve.py --bundle /tmp/nm/q --out benchmarks/adaptation
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
from lmroute.adapt.protocol import stream_mask
from lmroute.adapt.quality_heads import adapt_qualities
from lmroute.adapt.routing_value import LoggedChoices
from lmroute.bundle.loader import load_bundle
from lmroute.export.multi_data import MultiModelTable, load_llmrouter
from lmroute.export.multi_eval import aiq, cost_to_reach, hull_quality_at, single_model_points, sweep, upper_hull
from lmroute.export.multi_policy import choose_max_utility
from lmroute.export.multi_select import lambda_grid

REPO = Path(__file__).resolve().parents[2]


def curve(quality: np.ndarray, cost: np.ndarray, q_hat: np.ndarray, c_hat: np.ndarray, lams: list[float]) -> np.ndarray:
    """The hull of the max-utility policy on (quality, cost) of the test half."""
    pts = sweep(quality, cost, lambda lam: choose_max_utility(q_hat, c_hat, lam), lams)
    return upper_hull(np.array([(p.cost, p.quality) for p in pts]))


def summary(hull: np.ndarray, lo: float, hi: float, best_cost: float, best_quality: float) -> dict[str, Any]:
    reach = cost_to_reach(hull, best_quality)
    return {
        "aiq": aiq(hull, lo, hi),
        "match_share": None if reach is None else reach / best_cost,
        "quality_at_best_cost": hull_quality_at(hull, best_cost),
    }


def run(table: MultiModelTable, emb: np.ndarray, lengths: np.ndarray, sizes: list[int], seeds: int) -> dict[str, Any]:
    stream = np.flatnonzero(stream_mask(table.prompts))
    test = np.flatnonzero(~stream_mask(table.prompts))
    q_test, c_test = table.quality[test], table.cost[test]
    singles = single_model_points(q_test, c_test)
    lo, hi = float(singles[:, 0].min()), float(singles[:, 0].max())
    top = float(singles[:, 1].max())
    best_j = int(np.argmin(np.where(singles[:, 1] >= top, singles[:, 0], np.inf)))
    best_cost, best_quality = float(singles[best_j, 0]), float(singles[best_j, 1])
    lams = lambda_grid(table.cost[stream].mean(axis=0))
    oracle = curve(q_test, c_test, q_test, c_test, lams)
    out: dict[str, Any] = {
        "models": list(table.models),
        "n_stream": int(stream.size),
        "n_test": int(test.size),
        "best_single": {"model": table.models[best_j], "cost": best_cost, "quality": best_quality},
        "singles": {
            m: {"cost": float(singles[j, 0]), "quality": float(singles[j, 1])} for j, m in enumerate(table.models)
        },
        "random_mix": {"aiq": aiq(upper_hull(singles), lo, hi)},
        "oracle": summary(oracle, lo, hi, best_cost, best_quality),
        "curves": {},
    }
    m = len(table.models)
    for kind in ("judged", "single"):
        rows_out = []
        for n in sizes:
            per_seed: list[dict[str, Any]] = []
            for seed in range(seeds):
                rng = np.random.default_rng(1000 + seed)
                rows = stream[rng.permutation(stream.size)[: min(n, stream.size)]]
                q = table.quality[rows].copy()
                seen = np.ones_like(q, dtype=bool)
                logged = None
                if kind == "single":
                    pick = rng.integers(0, m, rows.size)
                    seen = np.zeros_like(q, dtype=bool)
                    seen[np.arange(rows.size), pick] = True
                    q[~seen] = np.nan
                    # the choice behind each outcome, as Route among candidates logs it
                    logged = LoggedChoices.build(pick, np.full(rows.size, 1.0 / m), table.cost[rows])
                t0 = time.perf_counter()
                result = adapt_qualities(
                    emb[rows],
                    lengths[rows],
                    q,
                    np.full_like(q, np.nan),
                    table.models,
                    [False] * m,
                    np.zeros((rows.size, 0)),
                    [],
                    np.arange(rows.size, dtype=float),
                    logged=logged,
                    seed=seed,
                )
                fit_s = time.perf_counter() - t0
                heads = result.heads
                cols = [table.models.index(x) for x in heads.models]
                q_hat = heads.predict(emb[test], lengths[test], np.zeros((test.size, len(cols))))
                c_hat = c_test[:, cols]  # known before answering: the prices and the prompt's length
                routed: dict[str, Any] = {"aiq": None, "match_share": None, "quality_at_best_cost": None}
                if len(cols) >= 2:  # else too few outcomes per model: no router (every model left out)
                    routed = summary(curve(q_test[:, cols], c_hat, q_hat, c_hat, lams), lo, hi, best_cost, best_quality)
                q_mean = np.nan_to_num(np.nanmean(q, axis=0), nan=0.0)
                prior_hat = np.broadcast_to(q_mean, (test.size, m))
                prior = summary(curve(q_test, c_test, prior_hat, c_test, lams), lo, hi, best_cost, best_quality)
                per_seed.append(
                    {
                        "seed": seed,
                        "outcomes": int(np.sum(seen)),
                        "accepted": result.accepted,
                        "gate_routing": {
                            "champion": _num(result.decision.champion_routing),
                            "candidate": _num(result.decision.candidate_routing),
                            "lower_bound": _num(result.decision.routing_lower_bound),
                        },
                        "models_kept": len(cols),
                        "router": routed,
                        "prior_only": prior,
                        "test_brier": float(np.mean((q_hat - q_test[:, cols]) ** 2)) if cols else None,
                        "fit_s": round(fit_s, 2),
                    }
                )
            rows_out.append({"n_prompts": min(n, int(stream.size)), "seeds": per_seed})
            print(json.dumps({"kind": kind, "n": n, **_mean_row(per_seed)}), flush=True)
        out["curves"][kind] = rows_out
    return out


def _num(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 4)


def _mean_row(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    def values(path: tuple[str, ...]) -> list[float | None]:
        out = []
        for s in per_seed:
            v: Any = s
            for k in path:
                v = v[k]
            out.append(None if v is None else float(v))
        return out

    def stat(path: tuple[str, ...]) -> tuple[float, float] | None:
        vals = [v for v in values(path) if v is not None]
        return (float(np.mean(vals)), float(np.std(vals))) if vals else None

    match = values(("router", "match_share"))
    reached = [v for v in match if v is not None]
    # what serves: the router where the gate accepted it, else the champion (per-model means)
    served = [
        float(s["router"]["aiq"]) if s["accepted"] and s["router"]["aiq"] is not None else float(s["prior_only"]["aiq"])
        for s in per_seed
    ]
    worse = sum(v < float(s["prior_only"]["aiq"]) - 1e-12 for v, s in zip(served, per_seed, strict=True))
    return {
        "aiq": stat(("router", "aiq")),
        "served_aiq": (float(np.mean(served)), float(np.std(served))),
        "served_worse": worse,
        "prior_aiq": stat(("prior_only", "aiq")),
        "quality_at_best_cost": stat(("router", "quality_at_best_cost")),
        "match_reached": len(reached),
        "match_median": float(np.median(reached)) if reached else None,
        "accepted": sum(bool(s["accepted"]) for s in per_seed),
        "runs": len(per_seed),
    }


def _fmt(v: tuple[float, float] | None) -> str:
    return "no router (too few outcomes per model)" if v is None else f"{v[0]:.4f} +- {v[1]:.4f}"


def render(res: dict[str, Any], command: str) -> str:
    best = res["best_single"]
    lines = [
        "# Routing among N models learnt from outcomes: learning curve on LLMRouter's 9 open models",
        "",
        "Written by `benchmarks/adaptation/n_models_curve.py` (its docstring says what is measured). Command:",
        "",
        f"    {command}",
        "",
        f"- {res['date']}; {res['machine']}; Python {res['python']}; bundle {res['bundle']} ({res['encoder']}).",
        f"- Stream half {res['n_stream']} prompts, test half {res['n_test']} (sha256 split); {res['seeds']} seeds per size.",
        f"- Best single model on the test half: {best['model']}, quality {best['quality']:.4f} at "
        f"{1000 * best['cost']:.4f} USD per 1,000 prompts. Random mixes AIQ {res['random_mix']['aiq']:.4f}; "
        f"oracle AIQ {res['oracle']['aiq']:.4f}, matches the best model at "
        f"{100 * res['oracle']['match_share']:.1f} % of its cost.",
        "",
        'Mean +- standard deviation over seeds. "match": in how many seeds the router\'s curve reaches the best '
        "single model's quality, and the median cost at which it does as a share of that model's cost (issue 17's "
        'goal: <= 50 %). "prior only": per-model mean quality from the same outcomes, no prompt features. '
        '"gate accepted": how often `lmroute-export adapt --kind qualities` would have written the router; '
        '"AIQ served": the router where the gate accepted it, else the champion (per-model means); "served '
        'worse": seeds where what serves routes worse than per-model means.',
        "",
        "| outcomes | prompts | AIQ router | AIQ prior only | match: seeds, median share | quality at best model's cost "
        "| gate accepted | AIQ served | served worse |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, rows in res["curves"].items():
        for row in rows:
            mean = _mean_row(row["seeds"])
            match = f"{mean['match_reached']} / {mean['runs']}"
            if mean["match_median"] is not None:
                match += f", {100 * mean['match_median']:.1f} %"
            lines.append(
                f"| {kind} | {row['n_prompts']:,} | {_fmt(mean['aiq'])} | {_fmt(mean['prior_aiq'])} | {match} | "
                f"{_fmt(mean['quality_at_best_cost'])} | {mean['accepted']} / {mean['runs']} | "
                f"{_fmt(mean['served_aiq'])} | {mean['served_worse']} / {mean['runs']} |"
            )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True, help="a bundle whose encoder embeds the prompts")
    ap.add_argument("--data-dir", type=Path, default=REPO / "data")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000, 2000, 100000])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True, help="directory for n_models_curve.{json,md}")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json in --out")
    args = ap.parse_args()
    if args.render:
        res = json.loads((args.out / "n_models_curve.json").read_text())
        (args.out / "n_models_curve.md").write_text(render(res, res["command"]))
        return
    bundle = load_bundle(args.bundle)
    table = load_llmrouter(args.data_dir)
    t0 = time.perf_counter()
    emb = np.asarray(bundle.encoder.encode(list(table.prompts), batch_size=64), dtype=np.float64)
    lengths = log_length(list(table.prompts))
    embed_s = time.perf_counter() - t0
    res = run(table, emb, lengths, args.sizes, args.seeds)
    enc = bundle.manifest.encoder
    res.update(
        {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(),
            "bundle": bundle.version,
            "encoder": f"{enc.kind} {enc.name} ({enc.dim} dims)",
            "seeds": args.seeds,
            "embed_s": round(embed_s, 1),
        }
    )
    res["command"] = ".venv/bin/python " + " ".join(["benchmarks/adaptation/n_models_curve.py", *sys.argv[1:]])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "n_models_curve.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / "n_models_curve.md").write_text(render(res, res["command"]))


if __name__ == "__main__":
    main()
