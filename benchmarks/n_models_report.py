"""The N-model benchmark's outputs: one cost-quality PNG per dataset and the Markdown report
(`docs/eval/n_models.md`), both drawn from the results dictionary `benchmarks/n_models.py` builds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lmroute.export.multi_eval import hull_quality_at
from lmroute.export.multi_prices import LLMROUTER_PRICES, OUTPUT_TOKENS, PRICE_SOURCE

POLICY_LABELS = {
    "max_utility": "(a) max predicted quality - lambda x cost",
    "within_margin": "(b) cheapest within a margin of the best predicted",
    "quality_floor": "(c) cheapest above a quality floor",
}
PER_1K = 1000.0  # costs are shown in USD per 1,000 prompts


def _hull_line(hull: list[list[float]], lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Dense samples of a hull over [its first cost, hi] for a log-cost axis (segments are straight in
    linear cost, so they are sampled, not joined)."""
    h = np.asarray(hull)
    xs = np.geomspace(max(h[0, 0], lo * 0.999), hi, 400)
    return xs, np.array([hull_quality_at(h, x) for x in xs])


def plot_dataset(res: dict[str, Any], path: Path) -> Path:
    """Quality vs mean cost per 1,000 prompts (log): single models, random-mix line, oracle, routers."""
    fig = Figure(figsize=(8.0, 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    lo, hi = res["cost_range"]
    for s in res["singles"]:
        ax.scatter(s["cost"] * PER_1K, s["quality"], color="tab:blue", s=18, zorder=3)
        ax.annotate(
            s["model"], (s["cost"] * PER_1K, s["quality"]), fontsize=6.5, xytext=(3, 2), textcoords="offset points"
        )
    xs, ys = _hull_line(res["random_mix"]["hull"], lo, hi)
    ax.plot(
        xs * PER_1K,
        ys,
        color="grey",
        linestyle="--",
        label=f"random mix of single models (AIQ {res['random_mix']['aiq']:.3f})",
    )
    xs, ys = _hull_line(res["oracle"]["hull"], lo, hi)
    ax.plot(xs * PER_1K, ys, color="black", linestyle=":", label=f"oracle (AIQ {res['oracle']['aiq']:.3f})")
    colors = {"max_utility": "tab:red", "within_margin": "tab:green", "quality_floor": "tab:purple"}
    for name, curve in res["routers"].items():
        xs, ys = _hull_line(curve["hull"], lo, hi)
        ax.plot(xs * PER_1K, ys, color=colors[name], label=f"{POLICY_LABELS[name]} (AIQ {curve['aiq']:.3f})")
        if name == "max_utility":
            pts = np.array([(p["cost"], p["quality"]) for p in curve["points"]])
            ax.scatter(pts[:, 0] * PER_1K, pts[:, 1], color=colors[name], s=6, alpha=0.6, zorder=2)
    best = res["best_single"]
    ax.axhline(best["quality"], color="tab:blue", linewidth=0.8, alpha=0.5)
    ax.axvline(
        best["cost"] * PER_1K * 0.5, color="tab:orange", linewidth=0.8, alpha=0.7, label="50 % of the best model's cost"
    )
    ax.set_xscale("log")
    ax.set_xlabel("mean cost, USD per 1,000 prompts (log)")
    ax.set_ylabel("mean quality (held-out prompts)")
    ax.set_title(f"{res['dataset']}: {res['n_val']} held-out prompts\nrouter: {res['predictor']}", fontsize=8.5)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _usd(cost: float | None) -> str:
    return "n/a" if cost is None else f"{cost * PER_1K:.4g}"


def _pct(share: float | None) -> str:
    return "never" if share is None else f"{100 * share:.1f} %"


def _lam(value: float) -> str:
    return "inf (cheapest)" if math.isinf(value) else f"{value:g}"


def _dataset_section(res: dict[str, Any], png: str) -> list[str]:
    best = res["best_single"]
    out = [
        f"## {res['dataset']}",
        "",
        f"{res['n_train']} training prompts, {res['n_val']} held out"
        + (f" (by task: {', '.join(f'{k} {v}' for k, v in res['tasks'].items())})" if len(res["tasks"]) > 1 else "")
        + f"; {res['rows_left_out']} rows of the files left out as malformed (reported by file and line). "
        f"Quality predictor chosen on the training part: `{res['predictor']}` (held-out Brier {res['val_brier']:.4f}); "
        f"cost predictor: {res['cost_model']['chosen']}.",
        "",
        f"![{res['dataset']} cost-quality]({png})",
        "",
        "### Single models and the oracle (held-out prompts)",
        "",
        "| model | cost, USD / 1k prompts | quality |",
        "|---|---:|---:|",
    ]
    for s in sorted(res["singles"], key=lambda s: s["cost"]):
        mark = " **(best)**" if s["model"] == best["model"] else ""
        out.append(f"| {s['model']}{mark} | {_usd(s['cost'])} | {s['quality']:.4f} |")
    o = res["oracle"]
    out += [
        f"| oracle (per prompt, the cheapest of the best-quality models) | {_usd(o['cost'])} | {o['quality']:.4f} |",
        "",
        "### Curves: AIQ and the match point",
        "",
        f"AIQ over the single models' cost range ({_usd(res['cost_range'][0])} to {_usd(res['cost_range'][1])} USD / 1k "
        "prompts). Match point: the least mean cost at which the curve's hull reaches the best single model's "
        f"quality ({best['quality']:.4f}, {best['model']}), as a share of that model's cost (goal: <= 50 %); "
        "'swept' = the cheapest swept operating point itself (no mixing of two points) that reaches it.",
        "",
        "| curve | AIQ | match cost share (hull) | match cost share (swept point) | quality at the best model's cost "
        "| quality at half its cost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = [(POLICY_LABELS[k], v) for k, v in res["routers"].items()]
    rows += [("prior only (per-model mean quality, no prompt information)", res["prior_only"])]
    if len(res["per_task_quality"]) > 1:
        rows += [
            (
                "diagnostic: task-level oracle (each model's true mean quality and cost per task on the held-out "
                "prompts; not a router)",
                res["task_oracle"],
            )
        ]
    rows += [("oracle, swept over lambda with true quality and cost", o)]
    for label, c in rows:
        out.append(
            f"| {label} | {c['aiq']:.4f} | {_pct(c['match_share'])} | {_pct(c['match_share_swept'])} "
            f"| {c['quality_at_best_cost']:.4f} | {c['quality_at_half_best_cost']:.4f} |"
        )
    out.append(f"| random mix of single models (their hull) | {res['random_mix']['aiq']:.4f} | | | | |")
    out += [
        "",
        f"### Router (a) at a few lambdas (lambda in units of 1 / {res['lambda_scale']:.3g} USD, the median model's mean training cost)",
        "",
        "| lambda | cost, USD / 1k prompts | quality | cost share of the best model | most used models (share of prompts) |",
        "|---|---:|---:|---:|---|",
    ]
    for p in res["shown_lambdas"]:
        shares = sorted(zip(res["models"], p["shares"], strict=True), key=lambda t: -t[1])[:3]
        used = ", ".join(f"{m} {100 * s:.0f} %" for m, s in shares if s > 0)
        out.append(
            f"| {_lam(p['lambda_x_scale'])} | {_usd(p['cost'])} | {p['quality']:.4f} | "
            f"{100 * p['cost'] / best['cost']:.1f} % | {used} |"
        )
    out += [
        "",
        "### Predictor families (each family's best setting by inner cross-validation, policy (a), held out)",
        "",
        "| family | setting | inner-CV AIQ | held-out AIQ | match share (hull) | quality at the best model's cost |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for fam, f in res["families"].items():
        chosen = " (chosen)" if f["name"] == res["predictor"] else ""
        out.append(
            f"| {fam}{chosen} | `{f['name']}` | {f['inner_aiq']:.4f} | {f['aiq']:.4f} | {_pct(f['match_share'])} "
            f"| {f['quality_at_best_cost']:.4f} |"
        )
    errs = ", ".join(f"{k} {v:.4f}" for k, v in res["cost_model"]["inner_rel_mse"].items())
    out += ["", f"Cost predictor, inner-CV mean squared error relative to each model's mean cost: {errs}.", ""]
    return out


def _per_task_lines(res: dict[str, Any]) -> list[str]:
    best = res["best_single"]["model"]
    cost = {s["model"]: s["cost"] for s in res["singles"]}
    out = [
        "| task | best model on the task (quality) | "
        + f"{best} | the cheapest model within 0.05 of the task's best (quality, cost share of {best}) |",
        "|---|---|---:|---|",
    ]
    for task, qs in res["per_task_quality"].items():
        top_m = max(qs, key=lambda m: qs[m])
        near = [m for m in qs if qs[m] >= qs[top_m] - 0.05]
        cheap = min(near, key=lambda m: cost[m])
        out.append(
            f"| {task} | {top_m} ({qs[top_m]:.3f}) | {qs[best]:.3f} | {cheap} ({qs[cheap]:.3f}, "
            f"{100 * cost[cheap] / cost[best]:.0f} % of the cost overall) |"
        )
    return out


def _discussion(ds: dict[str, Any]) -> list[str]:
    """What the numbers say, per dataset, generated from them."""
    out = ["## Reading the results", ""]
    for name, res in ds.items():
        b, mu, o = res["best_single"], res["routers"]["max_utility"], res["oracle"]
        met = mu["match_share"] is not None and mu["match_share"] <= 0.5
        gain = mu["aiq"] - res["random_mix"]["aiq"]
        room = o["aiq"] - res["random_mix"]["aiq"]
        line = (
            f"- **{name}: goal {'met' if met else 'not met'}.** The router (a) reaches {b['model']}'s quality "
            f"({b['quality']:.4f}) at {_pct(mu['match_share'])} of its cost; at that model's cost it delivers "
            f"{mu['quality_at_best_cost']:.4f}. Its AIQ is {mu['aiq']:.4f} against {res['random_mix']['aiq']:.4f} "
            f"for random mixes of single models: it closes {100 * gain / room:.0f} % of the gap to the oracle "
            f"({o['aiq']:.4f}). The oracle matches {b['model']} at {_pct(o['match_share'])} of its cost, so the "
            "pool of models allows far more than the predictors find."
        )
        out.append(line)
        if not met:
            out.append(
                f"  Why: {b['model']} is the best model on every task of the held-out split or close to it (table "
                "below), and the cheaper models' mistakes, not the task, decide where it can be replaced; from "
                "the question's embedding the predictors tell those mistakes apart only weakly (held-out Brier "
                f"{res['val_brier']:.4f}). To keep {b['model']}'s quality while sending a prompt elsewhere, the "
                "router must be nearly sure the cheaper model is right on that prompt, and its confidence is "
                "not sharp enough for that on more than a small share of prompts."
            )
        if len(res["per_task_quality"]) > 1:
            t = res["task_oracle"]
            out.append(
                "  Routing by task alone cannot do it either: fed each model's true mean quality and cost per task "
                f"on the held-out prompts, policy (a) reaches {b['model']}'s quality at {_pct(t['match_share'])} of "
                f"its cost and {t['quality_at_half_best_cost']:.4f} at half its cost (the router: "
                f"{mu['quality_at_half_best_cost']:.4f})."
            )
            out += ["", *["  " + ln for ln in _per_task_lines(res)], ""]
        chosen = res["predictor"]
        others = [
            f"{fam} ({f['name']}: inner-CV AIQ {f['inner_aiq']:.4f}, held out {f['aiq']:.4f})"
            for fam, f in res["families"].items()
            if f["name"] != chosen
        ]
        if others:
            out.append(f"  Tried and not chosen (lower inner-CV AIQ than `{chosen}`): " + "; ".join(others) + ".")
        pol = res["routers"]
        out.append(
            f"  Policies (b) and (c) on the same predictions: AIQ {pol['within_margin']['aiq']:.4f} and "
            f"{pol['quality_floor']['aiq']:.4f} against (a)'s {pol['max_utility']['aiq']:.4f}."
        )
    return out + [""]


def render_markdown(results: dict[str, Any]) -> str:
    """The whole report as Markdown text."""
    ds = results["datasets"]
    head = [
        "# Routing among N priced models, offline: RouterBench and LLMRouter",
        "",
        "Produced by:",
        "",
        "```bash",
        f".venv/bin/{results['command'].strip()}",
        "```",
        "",
        f"on a {results['hardware']}, in {results['seconds']:.0f} s with the prompt embeddings already cached "
        "(embedding them the first time adds about 2 minutes). Every number is measured on held-out "
        f"prompts: a fixed hash split by prompt text ({100 * results['val_fraction']:.0f} % held out, seed "
        f"{results['seed']}); every choice (predictor family, regulariser, cost predictor) was made by "
        f"{results['folds']}-fold cross-validation inside the training part. Raw numbers: "
        "[n_models.json](n_models.json).",
        "",
        "## Headline",
        "",
        "| dataset | best single model: quality, USD / 1k prompts | router cost to match it (share of its cost) "
        "| router quality at its cost | at half its cost | AIQ router (a) | AIQ random mix | AIQ oracle "
        "| goal (<= 50 %) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, res in ds.items():
        b, mu = res["best_single"], res["routers"]["max_utility"]
        met = mu["match_share"] is not None and mu["match_share"] <= 0.5
        head.append(
            f"| {name} | {b['model']}: {b['quality']:.4f}, {_usd(b['cost'])} | {_usd(mu['match_cost'])} "
            f"({_pct(mu['match_share'])}) | {mu['quality_at_best_cost']:.4f} | {mu['quality_at_half_best_cost']:.4f} "
            f"| {mu['aiq']:.4f} "
            f"| {res['random_mix']['aiq']:.4f} | {res['oracle']['aiq']:.4f} | {'met' if met else '**not met**'} |"
        )
    setup = [
        "",
        "## What is measured",
        "",
        "- **Data.** RouterBench (`data/train/routerbench_golden`): ARC-Challenge, MBPP and Winogrande, 0/1 "
        "correctness of 11 models and the real USD cost of every answer (the cost of the whole prompt as "
        "sent, 5-shot prefix included); the router sees only the final question. LLMRouter "
        "(`data/train/llmrouter`): scores in [0, 1] of 9 open models on 14 tasks (no task labels in the "
        "file). LLMRouter has no costs: cost = input tokens x input price + output tokens x output price, "
        f"with prices from {PRICE_SOURCE}; input tokens = ceil(4/3 x whitespace words) of the question; "
        f"output tokens = {OUTPUT_TOKENS} per answer for every model and question (an assumption: the "
        "data holds no answers). All nine prices have input price = output price, so this figure scales "
        "every model's cost on a question alike; it moves the USD figures, not the ranking of models by cost.",
        "- **Prices used for LLMRouter (USD per million tokens, input / output):** "
        + ", ".join(
            f"{m} {p.input_usd_per_mtok:.2f} / {p.output_usd_per_mtok:.2f}" for m, p in sorted(LLMROUTER_PRICES.items())
        )
        + ".",
        "- **Embeddings.** The shipped encoder (all-MiniLM-L6-v2, ONNX fp32, 256 tokens, head_tail:96 "
        "truncation) through the build's own export and embedding cache.",
        "- **Quality predictors** (one column per model, `lmroute.export.multi_policy`): per-model ridge and "
        "L2-logistic regression on the embedding with a per-model intercept (prior), reduced-rank ridge (a "
        "shared low-rank model across models), kNN mean quality, ridge on kNN-smoothed targets, per-cluster "
        "mean quality over k-means clusters of the embeddings (per-task priors without task labels), and "
        "blends of the best linear and the best local (kNN or cluster) setting. The one with the highest AIQ of policy (a) on "
        "out-of-fold predictions of the training part is used (`lmroute.export.multi_select`).",
        "- **Expected cost:** each model's mean training cost, or a ridge of cost on the embedding, whichever "
        "has the lower inner-CV error.",
        "- **Policies:** (a) maximise predicted quality - lambda x expected cost, swept over lambda = 0, 81 "
        "log-spaced values and infinity; (b) the cheapest model predicted within a margin (0 to 1, 41 "
        "steps) of the best predicted; (c) the cheapest model predicted at or above a floor (0 to 1, 41 "
        "steps), else the best predicted.",
        "- **Metrics** (`lmroute.export.multi_eval`): each curve's non-decreasing concave hull (a point between "
        "two operating points is reached by choosing between them at random per prompt); AIQ = the mean of "
        "the hull's quality over the cost range from the cheapest to the dearest single model (RouterBench's "
        "Average Improvement in Quality, Hu et al. 2024, arXiv 2403.12031; own implementation, exact area of "
        "the piecewise-linear hull, flat beyond its last point); the random-mix line is the hull of the "
        "single models; the oracle picks per prompt the cheapest model with the best true quality, and its "
        "curve is policy (a) run on the true qualities and costs.",
        "",
    ]
    body: list[str] = []
    for name, res in ds.items():
        body += _dataset_section(res, f"n_models_{name}.png")
    return "\n".join(head + setup + _discussion(ds) + body) + "\n"
