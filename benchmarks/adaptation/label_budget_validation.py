"""Which prompts to judge: label-budget rules against a random sample, on a validation split of the MMLU
stream half only (the adaptation protocol's test half is never read).

    .venv/bin/python benchmarks/adaptation/label_budget_validation.py --bundle /tmp/tiers/onnx \
        --out benchmarks/adaptation/RESULTS_label_budget.md

Per seed the stream half (`lmroute.adapt.protocol.stream_mask`) is split by `grouped_split` (prompts
within cosine 0.95 of each other stay on one side, as the hash split keeps identical texts in one half):
--pool prompts (or the few more that close a group) pass as traffic in windows of 500, and each rule
marks --labels of them for judging (the same number per window, as the service's label budget would);
the paired learner (`fit_paired`, --learner: its default kernel ridge of strong - weak quality, or the
linear ridge) is fitted on the marked prompts' outcomes and scores the remaining stream prompts (the
validation split), APGR by the paper's deciles.
Rules:

- random: a uniform sample of each window;
- label budget (default): `lmroute.adapt.selection.label_budget` as the service runs it (random share
  0.9, the rest by the ridge's posterior variance);
- label budget (random share 0.3): the same with 70 % of the marks by variance;
- disagreement (alpha A, mix M): the first window uniform; later windows sampled with probability
  proportional to the predicted chance that the two models' qualities differ (a ridge of |strong - weak|
  on the prompts judged so far, clipped at 0.02, to the power A), mixed with a share M of uniform
  (depends on the outcomes judged so far, not on those of the prompts it picks);
- representative (k-means): each window's marks are the prompts nearest the centres of a k-means of its
  embeddings into as many clusters (a design that covers the traffic);
- k-center: each window's marks chosen greedily farthest from every prompt marked so far (coverage of
  the embedding space, the classic core-set rule);
- and, for scale, random with every prompt of the pool judged.

Reported: mean and standard deviation over seeds, and each rule's paired difference from random (same
seed, same pool and validation split) with its standard error.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

from lmroute.adapt.head import log_length
from lmroute.adapt.learners import PAIRED_LEARNERS, fit_paired
from lmroute.adapt.protocol import grouped_split, near_duplicate_groups, stream_mask
from lmroute.adapt.selection import design_inverse, label_budget
from lmroute.bundle.loader import load_bundle
from lmroute.export.embed_cache import embed_texts, encoder_id_of
from lmroute.export.evalsets import load_eval
from lmroute.export.metrics import router_metrics

WINDOW = 500
DEFAULTS = {"pool": 5000, "labels": 1000, "seeds": 20, "learner": "kernel"}  # flags written when they differ
Rule = Callable[[np.ndarray, np.random.Generator, int], np.ndarray]


class Stream:
    """The stream half of an eval set (MMLU unless told): embeddings, log lengths, both models' quality."""

    def __init__(self, bundle: Path, data: Path, cache: Path, dataset: str = "mmlu") -> None:
        enc = load_bundle(bundle).encoder
        self.encoder_id = encoder_id_of(enc)
        ev = load_eval(dataset, data)
        emb = embed_texts(enc, ev.prompts, cache, encoder_id=self.encoder_id)
        keep = stream_mask(ev.prompts)
        self.emb = np.asarray(emb, dtype=np.float64)[keep]
        self.len = log_length([p for p, k in zip(ev.prompts, keep, strict=True) if k])
        self.sq = np.asarray(ev.strong_quality, dtype=np.float64)[keep]
        self.wq = np.asarray(ev.weak_quality, dtype=np.float64)[keep]
        self.gap = self.sq - self.wq
        self.groups = near_duplicate_groups(self.emb)

    def split(self, pool: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(pool, validation) of the stream half for one seed: `grouped_split`, near-duplicates on one side."""
        return grouped_split(self.groups, pool, seed)

    def windows(self, pool: np.ndarray, k: int) -> list[tuple[np.ndarray, int]]:
        """The pool in windows of WINDOW and how many of each to mark (k in all, spread evenly)."""
        out, done = [], 0
        for start in range(0, pool.size, WINDOW):
            win = pool[start : start + WINDOW]
            n = int(round(k * (start + win.size) / pool.size)) - done
            out.append((win, n))
            done += n
        return out


def rules(s: Stream, k: int) -> dict[str, Rule]:
    def uniform(pool: np.ndarray, rng: np.random.Generator, seed: int) -> np.ndarray:
        return np.concatenate([rng.choice(w, n, replace=False) for w, n in s.windows(pool, k)])

    def budget(share: float) -> Rule:
        def pick(pool: np.ndarray, rng: np.random.Generator, seed: int) -> np.ndarray:
            inverse, out = design_inverse(s.emb.shape[1], 30.0), []
            for i, (w, n) in enumerate(s.windows(pool, k)):
                idx, inverse = label_budget(s.emb[w], s.len[w], n, inverse, random_share=share, seed=seed + i)
                out.append(w[idx])
            return np.concatenate(out)

        return pick

    def disagreement(alpha: float, mix: float) -> Rule:
        def pick(pool: np.ndarray, rng: np.random.Generator, seed: int) -> np.ndarray:
            out: list[np.ndarray] = []
            for w, n in s.windows(pool, k):
                if not out:
                    out.append(rng.choice(w, n, replace=False))
                    continue
                seen = np.concatenate(out)
                head = fit_paired(s.emb[seen], s.len[seen], np.abs(s.gap[seen]), learner="ridge", seed=seed)
                p = np.clip(head.raw(s.emb[w], s.len[w]), 0.02, 1.0) ** alpha
                p = (1.0 - mix) * p / p.sum() + mix / w.size
                out.append(rng.choice(w, n, replace=False, p=p / p.sum()))
            return np.concatenate(out)

        return pick

    def representative(pool: np.ndarray, rng: np.random.Generator, seed: int) -> np.ndarray:
        out = []
        for w, n in s.windows(pool, k):
            x = s.emb[w]
            centres = KMeans(n_clusters=n, n_init=1, random_state=seed, max_iter=50).fit(x).cluster_centers_
            dist = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
            taken: list[int] = []
            for c in range(n):  # the nearest prompt not taken yet
                taken.append(next(int(j) for j in np.argsort(dist[:, c]) if j not in taken))
            out.append(w[np.asarray(taken)])
        return np.concatenate(out)

    def k_center(pool: np.ndarray, rng: np.random.Generator, seed: int) -> np.ndarray:
        out: list[np.ndarray] = []
        for w, n in s.windows(pool, k):
            x = s.emb[w]
            if out:
                marked = s.emb[np.concatenate(out)]
                nearest = np.min(((x[:, None, :] - marked[None]) ** 2).sum(-1), axis=1)
                chosen: list[int] = []
            else:
                first = int(rng.integers(w.size))
                nearest, chosen = ((x - x[first]) ** 2).sum(1), [first]
            while len(chosen) < n:
                j = int(np.argmax(nearest))
                chosen.append(j)
                nearest = np.minimum(nearest, ((x - x[j]) ** 2).sum(1))
            out.append(w[np.asarray(chosen)])
        return np.concatenate(out)

    return {
        "random": uniform,
        "label budget (default: random share 0.9)": budget(0.9),
        "label budget (random share 0.3)": budget(0.3),
        "disagreement (alpha 1, mix 0.3)": disagreement(1.0, 0.3),
        "disagreement (alpha 2, mix 0.3)": disagreement(2.0, 0.3),
        "disagreement (alpha 2, mix 0.1)": disagreement(2.0, 0.1),
        "representative (k-means)": representative,
        "k-center": k_center,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="a bundle whose encoder embeds the prompts")
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--cache", type=Path, default=Path(".cache/embeddings"))
    p.add_argument("--pool", type=int, default=DEFAULTS["pool"])
    p.add_argument("--labels", type=int, default=DEFAULTS["labels"])
    p.add_argument("--seeds", type=int, default=DEFAULTS["seeds"])
    p.add_argument("--learner", choices=PAIRED_LEARNERS, default=DEFAULTS["learner"], help="the paired learner")
    p.add_argument("--out", type=Path, default=Path("benchmarks/adaptation/RESULTS_label_budget.md"))
    args = p.parse_args(argv)
    t0 = time.time()
    s = Stream(args.bundle, args.data, args.cache)
    if args.pool >= s.gap.size:
        p.error(f"--pool {args.pool}: the stream half holds {s.gap.size} prompts; leave some for validation")
    table = rules(s, args.labels)
    table[f"random, all {args.pool} judged"] = lambda pool, rng, seed: pool
    got: dict[str, list[float]] = {name: [] for name in table}
    for seed in range(args.seeds):
        pool, val = s.split(args.pool, seed)
        for name, rule in table.items():
            idx = rule(pool, np.random.default_rng(10_000 + seed), seed)
            head = fit_paired(s.emb[idx], s.len[idx], s.gap[idx], learner=args.learner, seed=seed)
            got[name].append(router_metrics(head.raw(s.emb[val], s.len[val]), s.sq[val], s.wq[val]).apgr)
        print(f"seed {seed + 1}/{args.seeds}", file=sys.stderr)
    lines = [
        "# Label budget: which prompts to judge, on a validation split of the MMLU stream half",
        "",
        "```bash",
        " ".join(
            [f".venv/bin/python benchmarks/adaptation/label_budget_validation.py --bundle {args.bundle}"]
            + [f"--{k} {getattr(args, k)}" for k, v in DEFAULTS.items() if getattr(args, k) != v]
        ),
        "```",
        "",
        run_line(t0, f"encoder of `{args.bundle}` ({s.encoder_id[:16]}...)"),
        f"- MMLU stream half: {s.gap.size} prompts; per seed a pool of {args.pool} (whole near-duplicate groups) "
        f"passes in windows of {WINDOW}, {args.labels} of it judged; the {args.learner} learner fitted on them; "
        f"APGR on the other ~{s.gap.size - args.pool} stream prompts; {args.seeds} seeds.",
        "",
    ]
    table, summary = paired_table(got, "random", "rule", "APGR (validation)")
    write_page(args.out, lines + table, summary)
    return 0


def paired_table(got: dict[str, list[float]], baseline: str, what: str, metric: str) -> tuple[list[str], dict]:
    """Markdown rows of each entry's mean ± sd and its paired difference from `baseline` (same seeds) with
    the standard error, and the same numbers for the JSON page."""
    lines = [f"| {what} | {metric}, mean ± sd | minus {baseline} (same seed), mean ± se |", "|---|---|---|"]
    base = np.asarray(got[baseline])
    summary = {}
    for name, values in got.items():
        v = np.asarray(values)
        diff = v - base
        se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
        summary[name] = {"apgr": values, "mean": float(v.mean()), "diff_mean": float(diff.mean()), "diff_se": se}
        cell = "-" if name == baseline else f"{diff.mean():+.4f} ± {se:.4f}"
        lines.append(f"| {name} | {v.mean():.4f} ± {v.std(ddof=1):.4f} | {cell} |")
    return lines, summary


def run_line(t0: float, source: str) -> str:
    """The page's line saying when it ran (t0: time.time() at the start), on which Python, how long, and
    from what (`source`)."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0))
    return f"- {when}; Python {platform.python_version()}; wall {time.time() - t0:.0f} s; {source}."


def write_page(out: Path, lines: list[str], summary: dict) -> None:
    """The result page and its JSON numbers beside it, then the page on stdout."""
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    raise SystemExit(main())
