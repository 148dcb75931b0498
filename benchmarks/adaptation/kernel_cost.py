"""What an adapted router costs the scorer, in process: the kernel head against the ridge head and the
base router alone, on one bundle (any encoder tier).

    .venv/bin/python benchmarks/adaptation/kernel_cost.py --bundle /tmp/tiers/static --bundle /tmp/tiers/onnx

Per bundle: both heads are fitted on --outcomes random MMLU stream prompts with both models' quality
(`fit_paired`, learner kernel and ridge; the kernel's support is every one of them, up to its cap of
5,000), written as adapted bundles (`write_adapted_bundle`, blend weight 1), loaded as the service loads
a bundle (`BundleScorer`, one intra-op thread) and timed on the ghz benchmark prompts
(benchmarks/ghz/prompts.json): `score` of 1 and of 64 prompts, tokenised inside the call, asking `mf`
alone or `adapted` (which also computes `mf`, its base). Median of --repeats timed calls after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ghz"))
from label_budget_validation import Stream
from procs import cpu_model

from lmroute.adapt.bundle_out import OutcomeSpan, write_adapted_bundle
from lmroute.adapt.head import BaseStandardisation
from lmroute.adapt.learners import PAIRED_LEARNERS, fit_paired
from lmroute.service.bundle_scorer import BundleScorer

PROMPTS = Path(__file__).resolve().parents[1] / "ghz" / "prompts.json"
SPAN = OutcomeSpan(kind="paired", n_outcomes=0, first_at="2026-01-01T00:00:00Z", last_at="2026-01-01T00:00:00Z")


def timed(scorer: BundleScorer, texts: list[str], router: str, repeats: int) -> float:
    """Median microseconds per `score` call of `texts` asking `router`."""
    args = ([(router,)] * len(texts), [None] * len(texts))
    scorer.score(texts, *args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scorer.score(texts, *args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, action="append", required=True, help="a calibrated bundle with mf")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--cache", type=Path, default=Path(".cache/embeddings"))
    p.add_argument("--outcomes", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("benchmarks/adaptation/RESULTS_kernel_cost.md"))
    args = p.parse_args(argv)
    t0 = time.time()
    texts = [row["text"] for row in json.loads(PROMPTS.read_text())][:64]
    lines = [
        "# What an adapted router costs the scorer (in process)",
        "",
        "```bash",
        " ".join(
            ["OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adaptation/kernel_cost.py"]
            + [f"--bundle {b}" for b in args.bundle]
            + ([f"--outcomes {args.outcomes}"] if args.outcomes != 5000 else [])
        ),
        "```",
        "",
        f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))}; {cpu_model()}; Python "
        f"{platform.python_version()}; heads fitted on {args.outcomes} MMLU stream prompts; median of "
        f"{args.repeats} calls.",
        "",
        "| bundle (encoder, dim) | router asked | head | 1 prompt: us per call | 64 prompts: us per call | "
        "us per prompt |",
        "|---|---|---|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for bundle_dir in args.bundle:
            s = Stream(bundle_dir, args.data, args.cache)
            idx = np.random.default_rng(0).choice(s.gap.size, args.outcomes, replace=False)
            base = BundleScorer.load(bundle_dir)
            label = f"`{bundle_dir}` ({base.bundle.manifest.encoder.kind}, {s.emb.shape[1]})"
            one, many = timed(base, texts[:1], "mf", args.repeats), timed(base, texts, "mf", args.repeats)
            lines.append(f"| {label} | mf | - | {one:.0f} | {many:.0f} | {many / 64:.1f} |")
            for learner in PAIRED_LEARNERS:
                head = fit_paired(s.emb[idx], s.len[idx], s.gap[idx], learner=learner)
                out = Path(tmp) / f"{bundle_dir.name}-{learner}"
                std = BaseStandardisation(center=0.0, scale=1.0)
                write_adapted_bundle(bundle_dir, out, head, "mf", 1.0, std, SPAN, head.raw(s.emb[:500], s.len[:500]))
                scorer = BundleScorer.load(out)
                one, many = (
                    timed(scorer, texts[:1], "adapted", args.repeats),
                    timed(scorer, texts, "adapted", args.repeats),
                )
                what = f"{learner} ({head.kernel.support.shape[0]} support prompts)" if head.kernel else learner
                lines.append(f"| {label} | adapted | {what} | {one:.0f} | {many:.0f} | {many / 64:.1f} |")
            print(f"{bundle_dir}: done", file=sys.stderr)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
