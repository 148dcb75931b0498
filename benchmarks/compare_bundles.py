"""Do two bundles score the same? For checking that a change to the pipeline or the runtime changed
nothing (or exactly what it meant to): every router both bundles have scores the same prompts of the
eval sets (MT-Bench, MMLU, GSM8K; up to --limit each, evenly spread), and the manifests are compared
key by key (created_at and library_versions ignored).

    .venv/bin/python benchmarks/compare_bundles.py BUNDLE_A BUNDLE_B [--limit 400] [--out result.json]

Prints the content versions, the manifest keys that differ, and per eval set and router the largest
|score difference| and whether the scores are bit-identical. Exit status 0 either way (a report).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from lmroute.bundle import load_bundle
from lmroute.export.evalsets import EVAL_NAMES, load_eval
from lmroute.export.evaluate import score_bundle

REPO = Path(__file__).resolve().parents[1]


def manifest_differences(a: dict[str, Any], b: dict[str, Any], path: str = "") -> list[str]:
    """Key paths whose values differ between two decoded manifests."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            where = f"{path}.{key}" if path else key
            if where in ("created_at", "library_versions"):
                continue
            if key not in a or key not in b:
                out.append(f"{where} (only in {'B' if key not in a else 'A'})")
            else:
                out += manifest_differences(a[key], b[key], where)
        return out
    return [] if a == b else [path]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--limit", type=int, default=400, help="prompts per eval set (evenly spread)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()
    bundles = [load_bundle(p, intra_op_threads=2) for p in (args.a, args.b)]
    manifests = [json.loads((p / "manifest.json").read_text()) for p in (args.a, args.b)]
    result: dict[str, Any] = {
        "content_version": [b.manifest.content_version() for b in bundles],
        "bundle_version": [b.manifest.bundle_version for b in bundles],
        "manifest_differences": manifest_differences(*manifests),
        "scores": {},
    }
    routers = [name for name in bundles[0].routers if name in bundles[1].routers]
    for name in EVAL_NAMES:
        prompts = load_eval(name, args.data_dir, limit=args.limit).prompts
        sa, sb = (score_bundle(b, prompts, routers=routers) for b in bundles)
        for router in routers:
            diff = float(np.max(np.abs(sa[router] - sb[router])))
            same = bool(np.array_equal(sa[router], sb[router]))
            result["scores"][f"{name}/{router}"] = {"n": len(prompts), "max_abs_diff": diff, "identical": same}
    print(f"content versions: {result['content_version'][0]} vs {result['content_version'][1]}")
    print(f"manifest keys that differ: {result['manifest_differences'] or 'none'}")
    print("| eval set / router | prompts | max abs diff | identical |")
    print("|---|---|---|---|")
    for key, row in result["scores"].items():
        print(f"| {key} | {row['n']} | {row['max_abs_diff']:.3g} | {row['identical']} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
