"""What one batch costs the scorer alone, by routers asked: all of a bundle's routers vs mf only.

    .venv/bin/python benchmarks/scorer_cost.py --bundle DIR [--repeats 3]

Loads the bundle as the service does (BundleScorer, one intra-op thread) and times `score` on the
first 1, 4 and 16 of the ghz benchmark prompts (benchmarks/ghz/prompts.json), tokenised inside the
call, with every router and with mf alone; prints ms per batch (mean of `--repeats`). The overload
results (benchmarks/ghz/results/overload/RESULTS.md) cite it for how much a Score prompt asking all
routers costs against a Route prompt asking mf.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lmroute.service.bundle_scorer import BundleScorer

PROMPTS = Path(__file__).resolve().parent / "ghz" / "prompts.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    scorer = BundleScorer.load(args.bundle)
    texts = [row["text"] for row in json.loads(PROMPTS.read_text())]
    print("| routers | prompts | ms per batch | ms per prompt |")
    print("|---|---|---|---|")
    for label, routers in (("all", scorer.router_names), ("mf", ("mf",))):
        for n in (1, 4, 16):
            batch = texts[:n]
            scorer.score(batch, [routers] * n, [None] * n)  # warm
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                scorer.score(batch, [routers] * n, [None] * n)
            ms = (time.perf_counter() - t0) / args.repeats * 1000
            print(f"| {label} | {n} | {ms:.0f} | {ms / n:.0f} |")


if __name__ == "__main__":
    main()
