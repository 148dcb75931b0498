"""Validation harness: the RouteLLM evaluation protocol replayed on held-out *training* prompts.

MT-Bench, MMLU and GSM8K are for the final report only; recipes are tuned here instead. This module
runs the folds: `validate_recipe` trains a `Recipe`'s routers on each fold's training part and scores
its validation prompts; `validate_bundle` scores a built bundle's routers (bert included) on the
pipeline's own validation split. The pieces live next door:

* `lmroute.export.validation_tables`: per-source quality tables (`PairTable`), metrics of one router
  on one table (`evaluate_table`: APGR, CPT(50 %), random and length baselines), the K-fold split,
  summaries and the Markdown table;
* `lmroute.export.validation_recipes`: `Experiment` (the build's `Recipe` plus the harness-only knobs)
  and `fit_scorers` (train mf / sw_ranking / bert on a split as the build does).

The recipe's defaults are the shipped recipe (`lmroute.export.recipe`), and the CLI's recipe flags are
derived from its fields, as those of `lmroute-export build` are.

CLI: ``python -m lmroute.export.validate --help`` (flags: `lmroute.export.validation_flags`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lmroute.export import names
from lmroute.export.data import Comparisons, evenly_spaced
from lmroute.export.train_prior import DifficultyPrior
from lmroute.export.validation_recipes import (
    Experiment,
    Recipe,
    Scorer,
    as_experiment,
    blend_sweep,
    blend_weights,
    fit_scorers,
    fit_tiers,
    training_weights,
)
from lmroute.export.validation_tables import (
    PairTable,
    SourceResult,
    Summary,
    evaluate_table,
    far_from,
    format_results,
    kfold_by_prompt,
    length_scores,
    load_judge_scores,
    pair_tables,
    subset_table,
    summarise,
)

__all__ = [  # the harness's API in one place: the names of the two modules next door are re-exported
    "Experiment",
    "PairTable",
    "Recipe",
    "Scorer",
    "SourceResult",
    "Summary",
    "cached_embedder",
    "evaluate_table",
    "fit_scorers",
    "fit_tiers",
    "format_results",
    "kfold_by_prompt",
    "length_scores",
    "load_judge_scores",
    "main",
    "pair_tables",
    "summarise",
    "training_weights",
    "validate_bundle",
    "validate_recipe",
]

log = logging.getLogger(__name__)


def validate_recipe(
    recipe: Recipe | Experiment,
    comps: Comparisons,
    emb_of: Callable[[Sequence[str]], NDArray[np.float32]],
    *,
    judge_scores: Mapping[str, Mapping[str, float]] | None,
    folds: int = 10,
    only_folds: Sequence[int] | None = (0,),
    split_seed: int = 0,
    routers: Sequence[str] = ("mf", "sw_ranking"),
    strong: str = names.STRONG,
    weak: str = names.WEAK,
    random_seeds: int = 10,
    pool: bool = False,
    decontaminate: float | None = 0.95,
    prior: DifficultyPrior | None = None,
    prior_emb: NDArray[np.float32] | None = None,
    prior_weights: Sequence[float] | None = None,
) -> list[SourceResult]:
    """Train on each chosen fold's training part, score its validation prompts, and evaluate.

    emb_of: texts -> L2-normalised embeddings (e.g. a cached encoder). only_folds: which of the
    `folds` folds to run (default: fold 0 of 10, the pipeline's validation split; None: all).
    pool: evaluate once per (router, source) on the out-of-fold scores of all chosen folds pooled
    (result fold -1): many more prompts per source than one fold, at the price of mixing the score
    scales of K models trained on 1 - 1/K of the data each (same recipe).
    decontaminate: drop validation prompts whose cosine similarity to some training prompt of the
    fold is >= this (the eval protocol drops eval prompts at 0.95 to a training prompt); None keeps
    all. It matters: ~27 % of Winogrande prompts have a twin (same sentence, one word changed,
    the answer flipped) at >= 0.95, and the two twins' strong-vs-weak gains are anti-correlated.
    prior / prior_emb: the difficulty prior (needed when the recipe's prior_weights blend one of
    `routers`) and the embeddings of the questions it was fitted on; validation prompts this close to
    one of those are dropped too (the LLMRouter table holds ~100 near-copies of RouterBench MBPP questions).
    prior_weights: a sweep: each router is trained once per fold (the recipe must blend none of
    `routers`) and blended with `prior` at every weight, its center / scale fixed as the build fixes
    them; results are named "<router>@<weight>"."""
    exp = as_experiment(recipe)
    blended = blend_weights(exp.recipe, routers)
    if prior_weights is not None and (blended or prior is None):
        raise ValueError(
            "validate_recipe: a prior_weights sweep needs a prior and a recipe that blends none of the routers "
            f"(it blends {blended})"
        )
    if blended and prior is None:
        raise ValueError(f"validate_recipe: recipe prior_weights {blended} need a difficulty prior")
    splits = kfold_by_prompt(comps, folds, seed=split_seed)
    chosen = range(folds) if only_folds is None else only_folds
    results: list[SourceResult] = []
    pooled: dict[tuple[str, str], tuple[list[PairTable], list[NDArray[np.float64]]]] = {}
    for j in chosen:
        train, val = splits[j]
        train_emb = emb_of(train.prompts)
        scorers = fit_scorers(exp, train, train_emb, routers=routers, strong=strong, weak=weak, prior=prior)
        if prior_weights is not None:
            assert prior is not None
            std_prior = prior.with_standardisation(train_emb)
            sample = evenly_spaced(len(train.prompts), exp.recipe.prior_standardise_on)
            sample_texts = [train.prompts[i] for i in sample]
            train_scores = {r: f(train_emb[sample], sample_texts) for r, f in scorers.items()}
        tables = pair_tables(
            val, strong=strong, weak=weak, judge_scores=judge_scores, min_prompts=1, require_gap=not pool
        )
        for table in tables.values():
            q = emb_of(table.prompts)
            if decontaminate is not None:
                clean = far_from(q, train_emb, prior_emb, threshold=decontaminate)
                if not clean.all():
                    table = subset_table(table, clean)
                    q = q[clean]
                if not clean.any():
                    continue
            for router, scorer in scorers.items():
                plain = scorer(q, table.prompts)
                if prior_weights is None:
                    variants = {router: plain}
                else:
                    swept = blend_sweep(plain, q, std_prior, train_scores[router], prior_weights)
                    variants = {f"{router}@{w:g}": sc for w, sc in swept.items()}
                for name, scores in variants.items():
                    if pool:
                        tabs, scs = pooled.setdefault((name, table.source), ([], []))
                        tabs.append(table)
                        scs.append(scores)
                    elif len(table.prompts) >= 2 and table.strong_q.mean() != table.weak_q.mean():
                        results.append(evaluate_table(table, scores, router=name, fold=j, random_seeds=random_seeds))
    for (router, _), (tabs, scs) in pooled.items():
        table = PairTable(
            tabs[0].source,
            tabs[0].kind,
            tuple(p for t in tabs for p in t.prompts),
            np.concatenate([t.strong_q for t in tabs]),
            np.concatenate([t.weak_q for t in tabs]),
        )
        if len(table.prompts) >= 2 and table.strong_q.mean() != table.weak_q.mean():
            results.append(
                evaluate_table(table, np.concatenate(scs), router=router, fold=-1, random_seeds=random_seeds)
            )
    return results


def validate_bundle(
    bundle_dir: Path,
    comps: Comparisons,
    emb_of: Callable[[Sequence[str]], NDArray[np.float32]],
    *,
    judge_scores: Mapping[str, Mapping[str, float]] | None,
    prior: DifficultyPrior,
    prior_emb: NDArray[np.float32],
    prior_weights: Sequence[float],
    routers: Sequence[str],
    strong: str = names.STRONG,
    weak: str = names.WEAK,
    random_seeds: int = 10,
    decontaminate: float = 0.95,
    standardise_on: int = 1000,
) -> list[SourceResult]:
    """A built bundle's routers (bert included) on the pipeline's validation split (fold 0 of 10, the
    prompts the build held out), each blended with `prior` at every weight of `prior_weights` (a blend
    the bundle already has is taken off first).

    The blend is standardised on `standardise_on` training prompts (evenly spread over the table, as
    the pipeline does) scored by the bundle. Results are named "<router>@<weight>"."""
    from lmroute.bundle import load_bundle

    bundle = load_bundle(bundle_dir, require_calibration=False)
    train, val = kfold_by_prompt(comps, 10)[0]
    train_texts = [train.prompts[i] for i in evenly_spaced(len(train.prompts), standardise_on)]

    def bundle_scores(router: str, texts: Sequence[str]) -> NDArray[np.float64]:
        plain = getattr(bundle.routers[router], "inner", bundle.routers[router])  # the bundle's own blend off
        out = [plain.score(bundle.prompt_batch(texts[i : i + 64])) for i in range(0, len(texts), 64)]
        return np.concatenate(out) if out else np.zeros(0)

    train_emb = emb_of(train.prompts)
    std_prior = prior.with_standardisation(emb_of(train_texts))
    train_scores = {r: bundle_scores(r, train_texts) for r in routers}
    results: list[SourceResult] = []
    for table in pair_tables(val, strong=strong, weak=weak, judge_scores=judge_scores).values():
        q = emb_of(table.prompts)
        clean = far_from(q, train_emb, prior_emb, threshold=decontaminate)
        table, q = subset_table(table, clean), q[clean]
        if len(table.prompts) < 2 or table.strong_q.mean() == table.weak_q.mean():
            continue
        for router in routers:
            swept = blend_sweep(bundle_scores(router, table.prompts), q, std_prior, train_scores[router], prior_weights)
            for weight, blended in swept.items():
                results.append(evaluate_table(table, blended, router=f"{router}@{weight:g}", random_seeds=random_seeds))
    return results


# --------------------------------------------------------------------------------------------
# CLI


def cached_embedder(
    cache_dir: Path, recipe: Recipe | None = None, data_dir: Path | None = None
) -> Callable[[Sequence[str]], NDArray[np.float32]]:
    """texts -> embeddings with the build's encoder of `recipe` (its tier, encoder_model_dir, max_tokens
    and truncation; None: the shipped recipe's) and the embedding cache under cache_dir. A static tier's
    table is the build's: distilled with the token frequencies of data_dir's training prompts."""
    from lmroute.export.embed_cache import embed_texts
    from lmroute.export.pipeline import REPO_ROOT, count_corpus, prepare_encoder

    recipe = Recipe() if recipe is None else recipe
    data = REPO_ROOT / "data" if data_dir is None else data_dir
    prepared = prepare_encoder(recipe, cache_dir, lambda: count_corpus(data))
    encoder, encoder_id = prepared.encoder, prepared.encoder_id
    memo: dict[str, NDArray[np.float32]] = {}

    def emb_of(texts: Sequence[str]) -> NDArray[np.float32]:
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            for t, e in zip(
                missing,
                embed_texts(encoder, missing, cache_dir / "embeddings", encoder_id=encoder_id, progress=False),
                strict=True,
            ):
                memo[t] = e
        return np.stack([memo[t] for t in texts]) if texts else np.zeros((0, encoder.dim), np.float32)

    return emb_of


def main(argv: Sequence[str] | None = None) -> int:
    """Validate one experiment (the shipped recipe unless flags say otherwise) and print the table."""
    from lmroute.export.data import load_comparisons, load_difficulty_labels
    from lmroute.export.pipeline import DECONTAMINATION_FILE, _decontamination_set
    from lmroute.export.train_prior import fit_difficulty_prior
    from lmroute.export.validation_flags import parse_args

    args, experiment, sweep = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    recipe = experiment.recipe
    routers = tuple(r for r in args.routers.split(",") if r)
    comps = load_comparisons(args.data_dir).comparisons
    emb_of = cached_embedder(args.cache_dir, recipe, args.data_dir)
    labels = load_difficulty_labels(args.data_dir)
    near_eval = _decontamination_set(args.data_dir / DECONTAMINATION_FILE)
    keep = np.array([p not in near_eval for p in labels.prompts], dtype=bool)
    prior_emb = emb_of([p for p, k in zip(labels.prompts, keep, strict=True) if k])
    prior = fit_difficulty_prior(prior_emb, labels.mean_score[keep], ridge=recipe.prior_ridge)
    if args.bundle is not None:
        results = validate_bundle(
            args.bundle,
            comps,
            emb_of,
            judge_scores=load_judge_scores(args.data_dir),
            prior=prior,
            prior_emb=prior_emb,
            prior_weights=sweep if sweep is not None else [0.0, 0.5, 1.0, 2.0, 4.0],
            routers=routers,
            random_seeds=args.random_seeds,
            standardise_on=recipe.prior_standardise_on,
        )
        print(format_results(results, title=f"bundle {args.bundle}, fold 0"))
        return 0
    results = validate_recipe(
        experiment,
        comps,
        emb_of,
        judge_scores=load_judge_scores(args.data_dir),
        folds=args.folds,
        only_folds=None if args.all_folds else (0,),
        routers=routers,
        pool=args.pool,
        decontaminate=args.decontaminate if args.decontaminate > -1 else None,
        prior=prior,
        prior_emb=prior_emb,
        prior_weights=sweep,
        random_seeds=args.random_seeds,
    )
    print(format_results(results, title=experiment.describe()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
