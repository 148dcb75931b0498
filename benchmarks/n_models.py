"""Routing among N priced models, offline: RouterBench (11 models, the real cost of every answer) and
LLMRouter (9 open models, list prices).

    .venv/bin/python benchmarks/n_models.py            # writes docs/eval/n_models.{md,json} and two PNGs

Per dataset: a fixed hash split by prompt holds out 20 % (`lmroute.export.multi_data.split_by_prompt`);
the quality predictor and the cost predictor are chosen by 5-fold cross-validation inside the training
part (`lmroute.export.multi_select`), refitted on the whole training part, and evaluated once on the
held-out prompts (`lmroute.export.multi_eval`): every single model, the random-mix line (the single
models' hull), the oracle, and the three policies of `lmroute.export.multi_policy` swept over their
knob. Embeddings come from the shipped encoder through the build's own code and cache
(`benchmarks/n_models_embed.py`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from n_models_embed import embed_prompts
from n_models_report import plot_dataset, render_markdown

from lmroute.export.multi_data import MultiModelTable, load_llmrouter, load_routerbench, split_by_prompt
from lmroute.export.multi_eval import (
    CurvePoint,
    aiq,
    cost_to_reach,
    hull_quality_at,
    oracle_choice,
    single_model_points,
    sweep,
    upper_hull,
)
from lmroute.export.multi_policy import (
    CostModel,
    choose_max_utility,
    choose_quality_floor,
    choose_within_margin,
    fit_cost,
)
from lmroute.export.multi_select import Candidate, default_candidates, fold_ids, lambda_grid, select_predictor

REPO = Path(__file__).resolve().parents[1]
COST_ALPHAS: tuple[float | None, ...] = (None, 1.0, 10.0, 100.0)
MARGINS = [float(v) for v in np.linspace(0.0, 1.0, 41)]
FLOORS = [float(v) for v in np.linspace(0.0, 1.0, 41)]
#: lambda x (median model's mean training cost) shown in the table of operating points: the quality
#: given up for one such cost
SHOWN_LAMBDAS = (0.0, 0.001, 0.003, 0.01, 0.02, 0.03, 0.1, 0.3, 1.0, math.inf)


def choose_cost_model(
    emb: np.ndarray, cost: np.ndarray, prompts: Sequence[str], folds: int, seed: int
) -> tuple[float | None, dict[str, float]]:
    """The cost predictor (mean, or ridge penalty) with the least inner-CV squared error, each model's
    error relative to its mean cost."""
    fold = fold_ids(prompts, folds, seed)
    scale = cost.mean(axis=0)
    errors: dict[str, float] = {}
    best: tuple[float, float | None] | None = None
    for alpha in COST_ALPHAS:
        pred = np.empty_like(cost)
        for f in range(folds):
            test = fold == f
            pred[test] = fit_cost(emb[~test], cost[~test], alpha).predict(emb[test])
        err = float(np.mean(((pred - cost) / scale) ** 2))
        errors["mean" if alpha is None else f"ridge(alpha={alpha:g})"] = err
        if best is None or err < best[0]:
            best = (err, alpha)
    assert best is not None
    return best[1], errors


def curve_summary(
    points: list[CurvePoint], lo: float, hi: float, best_cost: float, best_quality: float
) -> dict[str, Any]:
    """Hull, AIQ, the match point (least cost reaching the best single model's quality, on the hull and
    among the swept points) and the quality at the best model's cost."""
    hull = upper_hull(np.array([(p.cost, p.quality) for p in points]))
    reach = cost_to_reach(hull, best_quality)
    swept = [p.cost for p in points if p.quality >= best_quality - 1e-12]
    return {
        "points": [{"param": p.param, "cost": p.cost, "quality": p.quality, "shares": list(p.shares)} for p in points],
        "hull": hull.tolist(),
        "aiq": aiq(hull, lo, hi),
        "match_cost": reach,
        "match_share": None if reach is None else reach / best_cost,
        "match_cost_swept": min(swept) if swept else None,
        "match_share_swept": min(swept) / best_cost if swept else None,
        "quality_at_best_cost": hull_quality_at(hull, best_cost),
        "quality_at_half_best_cost": hull_quality_at(hull, 0.5 * best_cost),
    }


def policy_curves(
    quality: np.ndarray, cost: np.ndarray, q_hat: np.ndarray, c_hat: np.ndarray, lams: list[float]
) -> dict[str, list[CurvePoint]]:
    """The three policies swept over their knob on the held-out prompts."""
    curves: dict[str, tuple[Callable[[float], np.ndarray], list[float]]] = {
        "max_utility": (lambda lam: choose_max_utility(q_hat, c_hat, lam), lams),
        "within_margin": (lambda mg: choose_within_margin(q_hat, c_hat, mg), MARGINS),
        "quality_floor": (lambda fl: choose_quality_floor(q_hat, c_hat, fl), FLOORS),
    }
    return {name: sweep(quality, cost, fn, params) for name, (fn, params) in curves.items()}


def evaluate_dataset(
    table: MultiModelTable, emb: np.ndarray, *, val_fraction: float, folds: int, seed: int
) -> dict[str, Any]:
    """Everything the report shows for one dataset (held-out numbers; choices made on the training part)."""
    train_rows, val_rows = split_by_prompt(table.prompts, val_fraction, seed)
    tr, va = table.select(train_rows), table.select(val_rows)
    x_tr, x_va = emb[train_rows], emb[val_rows]

    t0 = time.perf_counter()
    cost_alpha, cost_errors = choose_cost_model(x_tr, tr.cost, tr.prompts, folds, seed)
    cost_model: CostModel = fit_cost(x_tr, tr.cost, cost_alpha)
    chosen, inner = select_predictor(x_tr, tr.quality, tr.cost, tr.prompts, folds=folds, seed=seed)
    select_s = time.perf_counter() - t0
    predictor = chosen.fit(x_tr, tr.quality)
    q_hat, c_hat = predictor.predict(x_va), cost_model.predict(x_va)
    lams = lambda_grid(tr.cost.mean(axis=0))
    lam_scale = float(np.median(tr.cost.mean(axis=0)))

    singles = single_model_points(va.quality, va.cost)
    lo, hi = float(singles[:, 0].min()), float(singles[:, 0].max())
    top = float(singles[:, 1].max())
    best_j = int(np.argmin(np.where(singles[:, 1] >= top, singles[:, 0], np.inf)))
    best_cost, best_quality = float(singles[best_j, 0]), float(singles[best_j, 1])
    summary = lambda pts: curve_summary(pts, lo, hi, best_cost, best_quality)  # noqa: E731

    random_hull = upper_hull(singles)
    oracle_pts = sweep(va.quality, va.cost, lambda lam: choose_max_utility(va.quality, va.cost, lam), lams)
    oracle_c = oracle_choice(va.quality, va.cost)
    rows = np.arange(len(va))
    routers = {name: summary(pts) for name, pts in policy_curves(va.quality, va.cost, q_hat, c_hat, lams).items()}

    # the best setting of each family (by inner CV), refitted and evaluated the same way: what else was tried
    families: dict[str, dict[str, Any]] = {}
    by_name: dict[str, Candidate] = {c.name: c for c in default_candidates()}
    for score in inner:
        if score.family in families:
            continue
        cand = chosen if score.name == chosen.name else by_name.get(score.name)
        if cand is None:  # a blend other than the chosen one
            continue
        q_f = cand.fit(x_tr, tr.quality).predict(x_va)
        pts = sweep(va.quality, va.cost, lambda lam, q_f=q_f: choose_max_utility(q_f, c_hat, lam), lams)
        families[score.family] = {"name": score.name, "inner_aiq": score.aiq, **summary(pts)}
        families[score.family].pop("points")
    prior_pts = sweep(
        va.quality,
        va.cost,
        lambda lam: choose_max_utility(np.broadcast_to(tr.quality.mean(0), va.quality.shape), c_hat, lam),
        lams,
    )

    tasks_va = np.array(va.tasks)
    per_task = {
        t: {m: float(va.quality[tasks_va == t, j].mean()) for j, m in enumerate(table.models)}
        for t in sorted(set(va.tasks))
    }
    # a diagnostic bound on task-level routing: policy (a) fed every model's true mean quality and cost
    # per task on the held-out prompts themselves (it knows the task and peeks at the held-out outcomes)
    task_q, task_c = np.empty_like(va.quality), np.empty_like(va.cost)
    for t in set(va.tasks):
        rows_t = tasks_va == t
        task_q[rows_t], task_c[rows_t] = va.quality[rows_t].mean(axis=0), va.cost[rows_t].mean(axis=0)
    task_pts = sweep(va.quality, va.cost, lambda lam: choose_max_utility(task_q, task_c, lam), lams)
    return {
        "dataset": table.name,
        "per_task_quality": per_task,
        "n_train": len(tr),
        "n_val": len(va),
        "rows_left_out": len(table.issues),
        "tasks": {t: int(sum(1 for x in va.tasks if x == t)) for t in sorted(set(va.tasks))},
        "models": list(table.models),
        "singles": [
            {"model": m, "cost": float(singles[j, 0]), "quality": float(singles[j, 1])}
            for j, m in enumerate(table.models)
        ],
        "best_single": {"model": table.models[best_j], "cost": best_cost, "quality": best_quality},
        "cost_range": [lo, hi],
        "random_mix": {"hull": random_hull.tolist(), "aiq": aiq(random_hull, lo, hi)},
        "oracle": {
            "cost": float(va.cost[rows, oracle_c].mean()),
            "quality": float(va.quality[rows, oracle_c].mean()),
            **{k: v for k, v in summary(oracle_pts).items() if k != "points"},
        },
        "prior_only": {k: v for k, v in summary(prior_pts).items() if k != "points"},
        "task_oracle": {k: v for k, v in summary(task_pts).items() if k != "points"},
        "cost_model": {
            "chosen": "mean" if cost_alpha is None else f"ridge(alpha={cost_alpha:g})",
            "inner_rel_mse": cost_errors,
        },
        "predictor": chosen.name,
        "inner_scores": [{"name": s.name, "family": s.family, "aiq": s.aiq, "brier": s.brier} for s in inner],
        "selection_seconds": round(select_s, 1),
        "val_brier": float(np.mean((q_hat - va.quality) ** 2)),
        "lambda_scale": lam_scale,
        "shown_lambdas": [
            {
                "lambda_x_scale": s,
                **_point_at(routers["max_utility"]["points"], s / lam_scale),
            }
            for s in SHOWN_LAMBDAS
        ],
        "routers": routers,
        "families": families,
    }


def _point_at(points: list[dict[str, Any]], lam: float) -> dict[str, Any]:
    """The swept point whose lambda is closest (in log) to ``lam``."""
    if lam == 0 or math.isinf(lam):
        return next(p for p in points if p["param"] == lam)
    finite = [p for p in points if 0 < p["param"] < math.inf]
    return min(finite, key=lambda p: abs(math.log(p["param"] / lam)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs" / "eval")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "command": "python benchmarks/n_models.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "hardware": f"2-core x86 CPU, no GPU ({platform.machine()}, Python {platform.python_version()})",
        "val_fraction": args.val_fraction,
        "folds": args.folds,
        "seed": args.seed,
        "datasets": {},
    }
    for table in (load_routerbench(args.data_dir), load_llmrouter(args.data_dir)):
        emb, encoder_id = embed_prompts(table.prompts, args.cache_dir)
        results["encoder_id"] = encoder_id
        res = evaluate_dataset(
            table, emb.astype(np.float64), val_fraction=args.val_fraction, folds=args.folds, seed=args.seed
        )
        results["datasets"][table.name] = res
        plot_dataset(res, args.out_dir / f"n_models_{table.name}.png")
        mu = res["routers"]["max_utility"]
        print(
            f"{table.name}: best single {res['best_single']['model']} q={res['best_single']['quality']:.3f} "
            f"c={res['best_single']['cost']:.3g}; router {res['predictor']} AIQ {mu['aiq']:.4f} "
            f"(random mix {res['random_mix']['aiq']:.4f}, oracle {res['oracle']['aiq']:.4f}); "
            f"match share {mu['match_share']}"
        )
    results["seconds"] = round(time.perf_counter() - t0, 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "n_models.json").write_text(json.dumps(_finite(results), indent=1) + "\n")
    (args.out_dir / "n_models.md").write_text(render_markdown(results))
    print(f"wrote {args.out_dir / 'n_models.md'} in {results['seconds']} s")


def _finite(value: Any) -> Any:
    """``value`` with NumPy scalars as Python numbers and infinite floats as the string "inf" (strict JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


if __name__ == "__main__":
    main()
