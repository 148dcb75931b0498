"""OK work/s of an overload run re-counted at costs fitted inside the mix, from its overload.json.

    .venv/bin/python benchmarks/ghz/overload_costs.py benchmarks/ghz/results/overload_pinned/overload.json

`overload.py` credits each answered prompt with its kind's cost measured alone (Route calls alone, Score
calls alone). Here the two costs are fitted to the phases themselves instead: least squares of each
phase's scoring time (the server's `score_ms`) on the prompts of each kind it scored (Route: scored
minus the Score caller's; Score: the Score caller's scored prompts), then OK work/s and its share of
the best phase are recounted at the fitted costs. The server's scoring time is the scoring thread's wall
time per batch, so the fit means something only where that thread has a core to itself
(`--scoring-cpus`); on a shared core the wall time includes the time the event loop took, and the fit
says so by giving a cost that is not positive.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def recount(res: dict) -> dict:
    phases = res["phases"]
    scored = np.array(
        [[p["server_counters"]["items_scored"] - p["score"]["ok_prompts"], p["score"]["ok_prompts"]] for p in phases],
        dtype=np.float64,
    )
    busy_s = np.array([p["scorer_busy"] * p["wall_s"] for p in phases])
    (route_s, score_s), *_ = np.linalg.lstsq(scored, busy_s, rcond=None)
    work = np.array([(p["route"]["ok"] * route_s + p["score"]["ok_prompts"] * score_s) / p["wall_s"] for p in phases])
    return {
        "fitted_ms": {"route": route_s * 1000, "score": score_s * 1000},
        "alone_ms": res["prompt_cost_ms"],
        "loads": [p["load"] for p in phases],
        "ok_work_per_s": work.tolist(),
        "of_best": (work / work.max()).tolist(),
        "meaningful": bool(route_s > 0 and score_s > 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, nargs="+", help="overload.json files")
    for path in ap.parse_args().results:
        r = recount(json.loads(path.read_text()))
        fitted, alone = r["fitted_ms"], r["alone_ms"]
        print(f"{path}:")
        print(
            f"  ms a prompt fitted in the mix: Route {fitted['route']:.1f}, Score {fitted['score']:.1f} "
            f"(alone: {alone['route']:.1f}, {alone['score']:.1f}){'' if r['meaningful'] else '  (not meaningful)'}"
        )
        cells = ", ".join(
            f"{k}x {w:.2f} ({b:.2f})" for k, w, b in zip(r["loads"], r["ok_work_per_s"], r["of_best"], strict=True)
        )
        print(f"  OK work/s at the fitted costs (of best): {cells}")


if __name__ == "__main__":
    main()
