"""Holding a spend per 1,000 requests among N priced models on drifting traffic: the live controller
against a cost weight calibrated once.

    .venv/bin/lmroute-export build --encoder static --routers random mf quality --out /tmp/drift/q
    .venv/bin/python benchmarks/drift_spend.py --bundle /tmp/drift/q --out benchmarks/results/drift_spend

The stream is `benchmarks/drift_share.py`'s (Arena-like -> MMLU -> GSM8K -> code -> Arena-like, 21,000
prompts with cross-fades). Every prompt chooses among all the models the bundle's `quality` router
predicts, priced by `data/prices/routerbench.json` (answer length: 256 tokens, the server's default),
by "maximise predicted quality - lambda x expected cost", two ways at each target:

    static      one lambda, chosen on the calibration prompts (Arena-like) to spend the target there
    controlled  `lmroute.service.spend_control.SpendController`, the code the server runs

Reported per target: the spend of every 500-decision window (USD per 1,000 requests, in expected cost),
the share of windows after the first two within +-5 % of the target (goal: >= 95 %), the largest
window error, and the mean predicted quality of the choices.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmroute.bundle.loader import load_bundle
from lmroute.bundle.model_choice import choose_max_utility
from lmroute.export.data import load_calibration_prompts
from lmroute.export.pipeline import REPO_ROOT
from lmroute.service.model_prices import expected_cost_usd, input_tokens, load_models_file
from lmroute.service.share_control import ControlSettings
from lmroute.service.spend_control import GRID, SpendController

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drift_share import build_stream, report_sources, tune_sources

WINDOW = 500
TARGETS_PER_1K = (1.0, 3.0, 6.0)
OUTPUT_TOKENS = 256


def qualities_and_costs(bundle_path: Path, texts: Sequence[str], prices_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """[n, m] predicted qualities of the bundle's quality router and [n, m] expected costs (USD)."""
    bundle = load_bundle(bundle_path)
    router = bundle.routers["quality"]
    models = router.models  # type: ignore[attr-defined]
    prices = load_models_file(prices_path)
    q = np.concatenate(
        [router.qualities(bundle.prompt_batch(texts[i : i + 256])) for i in range(0, len(texts), 256)]  # type: ignore[attr-defined]
    )
    n_in = np.array([input_tokens(t) for t in texts])
    c = np.stack([[expected_cost_usd(prices[m], int(k), OUTPUT_TOKENS) for m in models] for k in n_in])
    return q, c


def windows(spent: np.ndarray) -> np.ndarray:
    k = len(spent) // WINDOW
    return 1000.0 * spent[: k * WINDOW].reshape(k, WINDOW).mean(axis=1)


def static_lambda(q: np.ndarray, c: np.ndarray, target: float) -> float:
    """The smallest grid lambda at which these prompts spend at most `target` per request."""
    rows = np.arange(len(q))
    for lam in GRID:
        if c[rows, choose_max_utility(q, c, float(lam))].mean() <= target:
            return float(lam)
    return float(GRID[-1])


def tracking(spent: np.ndarray, target_1k: float, chosen_q: np.ndarray) -> dict[str, object]:
    w = windows(spent)[2:]
    err = np.abs(w - target_1k) / target_1k
    return {
        "spend_per_1k": round(float(1000 * spent.mean()), 4),
        "within": float((err <= 0.05 + 1e-12).mean()),
        "max_error_pct": float(100 * err.max()),
        "mean_abs_error_pct": float(100 * err.mean()),
        "predicted_quality": float(chosen_q.mean()),
        "windows": [round(float(x), 3) for x in windows(spent)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--prices", type=Path, default=REPO_ROOT / "data" / "prices" / "routerbench.json")
    ap.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--stream", choices=("report", "tune"), default="report")
    ap.add_argument("--grid", action="store_true", help="sweep the controller's constants")
    args = ap.parse_args(argv)

    phases = report_sources(args.data_dir) if args.stream == "report" else tune_sources(args.data_dir)
    stream = build_stream(phases)
    texts = [phases[k][0].prompts[i] for k, i in zip(stream.source, stream.item, strict=True)]
    unique = list(dict.fromkeys(texts))
    q_u, c_u = qualities_and_costs(args.bundle, unique, args.prices)
    at = {t: i for i, t in enumerate(unique)}
    rows = np.array([at[t] for t in texts])
    q, c = q_u[rows], c_u[rows]
    cal_texts = load_calibration_prompts(args.data_dir)
    q_cal, c_cal = qualities_and_costs(args.bundle, cal_texts, args.prices)

    if args.grid:
        for window in (300, 1000):
            for repay in (5, 10, 20, 50):  # SPEND_REPAY was chosen here
                cells = []
                for target_1k in TARGETS_PER_1K:
                    ctl = SpendController(target_1k, ControlSettings(window=window, repay=repay, horizon=2000))
                    chosen = np.array([ctl.decide(q[i], c[i]) for i in range(len(q))])
                    r = tracking(c[np.arange(len(q)), chosen], target_1k, q[np.arange(len(q)), chosen])
                    cells.append(
                        f"{target_1k:g}: {r['within'] * 100:.0f}% max {r['max_error_pct']:.1f}% q {r['predicted_quality']:.4f}"
                    )
                print(f"window={window} repay={repay} | " + " | ".join(cells), flush=True)
        return 0

    result: dict[str, object] = {"n": len(texts), "hardware": f"{platform.machine()} CPU, 2 cores, no GPU"}
    per_target: dict[str, object] = {}
    idx = np.arange(len(q))
    for target_1k in TARGETS_PER_1K:
        lam = static_lambda(q_cal, c_cal, target_1k / 1000)
        fixed = choose_max_utility(q, c, lam)
        ctl = SpendController(target_1k)
        chosen = np.array([ctl.decide(q[i], c[i]) for i in range(len(q))])
        per_target[f"{target_1k:g}"] = {
            "static": {**tracking(c[idx, fixed], target_1k, q[idx, fixed]), "lambda": lam},
            "controlled": tracking(c[idx, chosen], target_1k, q[idx, chosen]),
        }
    result["targets"] = per_target
    command = ".venv/bin/python benchmarks/drift_spend.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Holding a spend per 1,000 requests on drifting traffic",
        "",
        f"Command: `{command}`",
        "",
        f"Hardware: {result['hardware']}. Stream: {len(texts)} prompts (drift_share's report stream); "
        f"{q.shape[1]} candidate models at data/prices/routerbench.json, {OUTPUT_TOKENS}-token answers.",
        "",
        "| target (USD / 1k) | policy | spend | within +-5 % | max error | mean abs error | mean predicted quality |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for t, row in per_target.items():
        for policy in ("static", "controlled"):
            r = row[policy]  # type: ignore[index]
            lines.append(
                f"| {t} | {policy} | {r['spend_per_1k']:.3f} | {r['within'] * 100:.0f} % | {r['max_error_pct']:.1f} % "
                f"| {r['mean_abs_error_pct']:.1f} % | {r['predicted_quality']:.4f} |"
            )
    lines += ["", "Window spends (controlled):", ""]
    for t, row in per_target.items():
        lines.append(f"- {t}: " + " ".join(f"{x:.2f}" for x in row["controlled"]["windows"]))  # type: ignore[index]
    lines += ["", "Window spends (static):", ""]
    for t, row in per_target.items():
        lines.append(f"- {t}: " + " ".join(f"{x:.2f}" for x in row["static"]["windows"]))  # type: ignore[index]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps({**result, "command": command}, indent=1) + "\n")
        (args.out / "report.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
