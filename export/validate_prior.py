"""Difficulty-prior variants on the validation sources: what the prior should learn, measured alone.

The shipped prior (`lmroute.export.train_prior`) is a ridge regression of the LLMRouter models' mean
score on the prompt embedding. This module measures it next to two alternatives, each used alone as
a router (no mf / sw_ranking / bert), on every validation source's strong-vs-weak prompts. The prior
never trains on the comparisons, so every prompt of a source is a validation prompt; prompts within
cosine 0.95 of an LLMRouter question are dropped, as the harness does.

* ``mean``: the shipped prior (harder question -> strong model);
* ``mean+length``: the same regression with one more feature, log(1 + characters) standardised on
  the LLMRouter questions. Prompt length alone is the strongest baseline on the eval benchmarks, but
  below random on two validation sources; this asks whether the prior's training labels weigh it
  better than a raw length score does;
* ``gap``: the regression target is the big models' (>= 40 B parameters) mean score minus the small
  models' (7-9 B): "a bigger model makes a difference here" instead of "this is hard".

The rule that chooses is the one of docs/eval/validation.md, fixed before looking: the largest worst
z over the sources, then the largest mean z.

CLI: ``python -m lmroute.export.validate_prior --help``.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lmroute.export.data import DifficultyLabels
from lmroute.export.train_prior import fit_difficulty_prior
from lmroute.export.validation_tables import PairTable, SourceResult, evaluate_table, far_from, subset_table

__all__ = ["MODEL_PARAMS_B", "PriorVariant", "big_small_gap", "fit_prior_variants", "log_length", "main", "z_table"]

# Parameters (billions) of the LLMRouter table's models, from their names and model cards.
MODEL_PARAMS_B: dict[str, float] = {
    "codegemma-7b": 7,
    "gemma-2-9b-it": 9,
    "llama-3.1-8b-instruct": 8,
    "llama-3.1-nemotron-51b-instruct": 51,
    "llama-3.3-nemotron-super-49b-v1": 49,
    "llama3-chatqa-1.5-70b": 70,
    "llama3-chatqa-1.5-8b": 8,
    "mistral-7b-instruct-v0.3": 7,
    "qwen2.5-7b-instruct": 7,
}
BIG_B = 40.0

PriorScorer = Callable[[NDArray[np.float32], Sequence[str]], NDArray[np.float64]]


@dataclass(frozen=True)
class PriorVariant:
    """A named prior: scores(embeddings [n, d], texts [n]) -> float64 [n], higher -> strong model."""

    name: str
    score: PriorScorer


def log_length(texts: Sequence[str]) -> NDArray[np.float64]:
    """log(1 + length in characters) of each text."""
    return np.log1p(np.array([len(t) for t in texts], dtype=np.float64))


def big_small_gap(labels: DifficultyLabels, big_b: float = BIG_B) -> NDArray[np.float64]:
    """Per question: mean score of the models with >= `big_b` billion parameters minus that of the
    others (NaN where either group has no score). Every model of the table must be in MODEL_PARAMS_B."""
    unknown = [m for m in labels.models if m not in MODEL_PARAMS_B]
    if unknown:
        raise ValueError(f"big_small_gap: no parameter count for {', '.join(unknown)} (add it to MODEL_PARAMS_B)")
    big = np.array([MODEL_PARAMS_B[m] >= big_b for m in labels.models])
    if big.all() or not big.any():
        raise ValueError(f"big_small_gap: need models on both sides of {big_b:g} B")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN group gives NaN: the caller masks it
        return np.nanmean(labels.scores[:, big], axis=1) - np.nanmean(labels.scores[:, ~big], axis=1)


def fit_prior_variants(
    labels: DifficultyLabels, emb: NDArray[np.floating], *, ridge: float = 10.0
) -> list[PriorVariant]:
    """The three variants fitted on the questions of `labels` (embeddings `emb`, aligned)."""
    x = np.asarray(emb, dtype=np.float64)
    mean = fit_difficulty_prior(x, labels.mean_score, ridge=ridge)

    ll = log_length(labels.prompts)
    mu, sd = float(ll.mean()), float(ll.std()) or 1.0
    with_len = fit_difficulty_prior(np.hstack([x, ((ll - mu) / sd)[:, None]]), labels.mean_score, ridge=ridge)

    gap = big_small_gap(labels)
    ok = np.isfinite(gap)
    gap_fit = fit_difficulty_prior(x[ok], gap[ok], ridge=ridge)

    def mean_score(e: NDArray[np.float32], texts: Sequence[str]) -> NDArray[np.float64]:
        return mean.difficulty(e)

    def mean_length_score(e: NDArray[np.float32], texts: Sequence[str]) -> NDArray[np.float64]:
        z = (log_length(texts) - mu) / sd
        return with_len.difficulty(np.hstack([np.asarray(e, np.float64), z[:, None]]))

    def gap_score(e: NDArray[np.float32], texts: Sequence[str]) -> NDArray[np.float64]:
        return -gap_fit.difficulty(e)  # difficulty = -prediction; a larger predicted gap -> strong

    return [
        PriorVariant("mean", mean_score),
        PriorVariant("mean+length", mean_length_score),
        PriorVariant("gap", gap_score),
    ]


def evaluate_variants(
    variants: Sequence[PriorVariant],
    tables: Mapping[str, PairTable],
    emb_of: Callable[[Sequence[str]], NDArray[np.float32]],
    prior_emb: NDArray[np.float32],
    *,
    decontaminate: float = 0.95,
    random_seeds: int = 200,
) -> list[SourceResult]:
    """Each variant on each table, minus prompts within `decontaminate` cosine of a prior question."""
    results = []
    for table in tables.values():
        q = emb_of(table.prompts)
        clean = far_from(q, prior_emb, threshold=decontaminate)
        table, q = subset_table(table, clean), q[clean]
        if len(table.prompts) < 2 or table.strong_q.mean() == table.weak_q.mean():
            continue
        for v in variants:
            results.append(evaluate_table(table, v.score(q, table.prompts), router=v.name, random_seeds=random_seeds))
    return results


def z_table(results: Sequence[SourceResult]) -> str:
    """Markdown: APGR (z) per source for each variant, with the length baseline as a last row, and
    the worst and mean z. z = (APGR - random mean) / random std."""
    sources = sorted({r.source for r in results})
    rows: dict[str, dict[str, tuple[float, float]]] = {}
    length: dict[str, tuple[float, float]] = {}
    for r in results:
        rows.setdefault(r.router, {})[r.source] = (r.apgr, (r.apgr - r.random_apgr_mean) / r.random_apgr_std)
        length[r.source] = (r.length_apgr, (r.length_apgr - r.random_apgr_mean) / r.random_apgr_std)
    rows["length (baseline)"] = length
    n = {r.source: r.n_prompts for r in results}
    lines = [
        "| prior | " + " | ".join(f"{s} (n={n[s]})" for s in sources) + " | worst z | mean z |",
        "|---|" + "---|" * len(sources) + "---:|---:|",
    ]
    for name, cells in rows.items():
        zs = [cells[s][1] for s in sources]
        body = " | ".join(f"{cells[s][0]:.3f} ({cells[s][1]:+.1f})" for s in sources)
        lines.append(f"| {name} | {body} | {min(zs):+.1f} | {np.mean(zs):+.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Fit the variants on the LLMRouter labels (minus near-eval questions) and print the z table."""
    from lmroute.export.data import load_comparisons, load_difficulty_labels
    from lmroute.export.pipeline import DECONTAMINATION_FILE, REPO_ROOT, _decontamination_set
    from lmroute.export.recipe import SHIPPED
    from lmroute.export.validate import cached_embedder
    from lmroute.export.validation_tables import load_judge_scores, pair_tables

    ap = argparse.ArgumentParser(prog="python -m lmroute.export.validate_prior", description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    ap.add_argument("--cache-dir", type=Path, default=REPO_ROOT / ".cache")
    ap.add_argument("--random-seeds", type=int, default=200)
    ap.add_argument("--prior-ridge", type=float, default=SHIPPED.prior_ridge, help="the recipe's prior_ridge")
    args = ap.parse_args(argv)

    emb_of = cached_embedder(args.cache_dir)
    labels = load_difficulty_labels(args.data_dir)
    near_eval = _decontamination_set(args.data_dir / DECONTAMINATION_FILE)
    keep = np.array([p not in near_eval for p in labels.prompts], dtype=bool)
    labels = replace(
        labels,
        prompts=tuple(p for p, k in zip(labels.prompts, keep, strict=True) if k),
        mean_score=labels.mean_score[keep],
        scores=labels.scores[keep],
    )
    prior_emb = emb_of(labels.prompts)
    corr = np.corrcoef(log_length(labels.prompts), labels.mean_score)[0, 1]
    print(f"{len(labels.prompts)} LLMRouter questions: corr(log length, mean score) = {corr:+.3f}\n")
    variants = fit_prior_variants(labels, prior_emb, ridge=args.prior_ridge)
    comps = load_comparisons(args.data_dir).comparisons
    tables = pair_tables(comps, judge_scores=load_judge_scores(args.data_dir))
    print(z_table(evaluate_variants(variants, tables, emb_of, prior_emb, random_seeds=args.random_seeds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
