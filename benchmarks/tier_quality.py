"""The encoder tiers' routing quality side by side, from the outputs of three existing commands per tier.

    for t in onnx onnx-int8 static; do
      .venv/bin/lmroute-export build --encoder $t --routers random mf sw_ranking --out /tmp/tiers/$t
      .venv/bin/python -m lmroute.export.validate --encoder $t --all-folds --pool --random-seeds 200 \\
          --routers mf,sw_ranking --prior-weights 0,0.5,1,2,4 > /tmp/tiers/validate-$t.txt
      .venv/bin/lmroute-export evaluate --bundle /tmp/tiers/$t --out /tmp/tiers/eval-$t --routers mf sw_ranking
      OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adaptation/offline_curves.py --bundle /tmp/tiers/$t \\
          --out /tmp/tiers/curves-$t.json --markdown /tmp/tiers/curves-$t.md
    done
    .venv/bin/python benchmarks/tier_quality.py --dir /tmp/tiers > docs/eval/encoder_tiers_tables.md

Prints three tables (Markdown): the validation harness (held-out training prompts: APGR and z per
source, worst and mean z, per router and prior weight), the zero-shot eval (MT-Bench, MMLU, GSM8K APGR
of mf and sw_ranking) and the adaptation protocol's learning curves (paired random sample, served after
the gate, and the candidate; MMLU and GSM8K test halves).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TIERS = ("onnx", "onnx-int8", "static")


def validation_rows(path: Path) -> dict[str, list[tuple[str, float, float]]]:
    """router@weight -> [(source, APGR, z)] from a `lmroute.export.validate` table."""
    rows: dict[str, list[tuple[str, float, float]]] = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 5 and "@" in cells[0]:
            rows.setdefault(cells[0], []).append((cells[1], float(cells[4]), float(cells[5])))
    return rows


def validation_table(root: Path) -> list[str]:
    per_tier = {t: validation_rows(root / f"validate-{t}.txt") for t in TIERS}
    sources = [s for s, _, _ in next(iter(per_tier["onnx"].values()))]
    out = [
        "| tier | router@prior weight | " + " | ".join(sources) + " | worst z | mean z |",
        "|---|---|" + "---|" * len(sources) + "---:|---:|",
    ]
    for router in per_tier["onnx"]:
        for t in TIERS:
            vals = per_tier[t][router]
            zs = [z for _, _, z in vals]
            cells = [f"{a:.3f} ({z:+.1f})" for _, a, z in vals]
            out.append(f"| {t} | {router} | " + " | ".join(cells) + f" | {min(zs):+.1f} | {sum(zs) / len(zs):+.2f} |")
    return out


def eval_table(root: Path) -> list[str]:
    out = ["| tier | router | MT-Bench APGR (z) | MMLU APGR (z) | GSM8K APGR (z) |", "|---|---|---|---|---|"]
    for t in TIERS:
        bench = json.loads((root / f"eval-{t}" / "results.json").read_text())["benchmarks"]
        for router in ("mf", "sw_ranking"):
            cells = []
            for name in ("mt_bench", "mmlu", "gsm8k"):
                r = bench[name]["routers"][router]
                cells.append(f"{r['apgr']:.3f} ({r['apgr_z_vs_random']:+.1f})")
            out.append(f"| {t} | {router} | " + " | ".join(cells) + " |")
    return out


def curves_table(root: Path) -> list[str]:
    out = [
        "| tier | set | zero-shot mf | N | paired random: candidate | served (gate) | single + exploration: served |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for t in TIERS:
        sets = json.loads((root / f"curves-{t}.json").read_text())["sets"]
        for name, x in sets.items():
            for n in x["sizes"]:
                pr, sg = x["paired_random"][str(n)], x["single"][str(n)]
                out.append(
                    f"| {t} | {name} | {x['zero_shot']['mf']:.3f} | {n} | "
                    f"{pr['candidate']['mean']:.3f} ± {pr['candidate']['sd']:.3f} | "
                    f"{pr['served']['mean']:.3f} ± {pr['served']['sd']:.3f} | "
                    f"{sg['served']['mean']:.3f} ± {sg['served']['sd']:.3f} |"
                )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, required=True, help="where the commands above wrote their outputs")
    args = p.parse_args(argv)
    parts = [
        "## Validation harness (held-out training prompts; 10 folds pooled; z vs 200 random routers)",
        "",
        *validation_table(args.dir),
        "",
        "## Zero-shot eval (RouteLLM protocol)",
        "",
        *eval_table(args.dir),
        "",
        "## Adaptation protocol: learning curves (test half, mean ± sd over 5 seeds)",
        "",
        *curves_table(args.dir),
    ]
    print("\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
