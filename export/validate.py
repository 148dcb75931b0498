"""Validation harness: the RouteLLM evaluation protocol replayed on held-out *training* prompts.

MT-Bench, MMLU and GSM8K are for the final report only; recipes are tuned here instead. For the
validation prompts of a split (`Comparisons.split_by_prompt`, or the K folds of `kfold_by_prompt`)
this module builds, per source that holds the default pair, a per-prompt quality table
(`PairTable`: strong_q, weak_q), scores the prompts with a router and reports APGR and CPT(50 %)
next to the random router (mean and std over seeds) and the prompt-length baseline (longer prompt ->
strong model).

Quality per source kind (what each source stands in for):

* ``arena_bench_v1`` (``score``, like MT-Bench): each model's raw GPT-4 judge score 1-10, re-read
  from the data file by `load_judge_scores` (pairwise outcomes would lose the score gaps).
* ``routerbench_*`` (``correctness``, like MMLU / GSM8K): from the strong-vs-weak outcome, win =
  (1, 0), loss = (0, 1), tie = (0.5, 0.5). This is exact for 0/1 correctness: a tie adds the same
  value to the routed, all-strong and all-weak means, which cancels in PGR, and thresholds never
  look at quality.
* ``alpaca_eval`` and any other source with the pair (``preference``): the same reading of the
  pairwise verdicts, averaged over repeated verdicts of one prompt.

Recipes: `Recipe` (a frozen dataclass) holds the training knobs of the mf and sw_ranking routers
(label / source weights, Elo exclusions, tiers, gamma, mf hyper-parameters, up-weighting of the
default pair's rows); `fit_scorers` trains them on a training split and returns scoring functions;
`validate_recipe` runs folds and collects `SourceResult` rows; `format_results` renders them.

CLI: ``python -m lmroute_export.validate --help``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lmroute_export import names
from lmroute_export.data import ARENA_BENCH_FILE, Comparisons, evenly_spaced, open_data_file
from lmroute_export.metrics import random_baseline, router_metrics
from lmroute_export.names import normalize_model_name
from lmroute_export.train_prior import DifficultyPrior

__all__ = [
    "PairTable",
    "Recipe",
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

JUDGE_SCORE_SOURCE = "arena_bench_v1"
Scorer = Callable[[NDArray[np.float32]], NDArray[np.float64]]


# --------------------------------------------------------------------------------------------
# Quality tables


@dataclass(frozen=True)
class PairTable:
    """Per-prompt quality of the strong and the weak model's answers on one source.

    kind: "score" (judge score), "correctness" (0/1) or "preference" (pairwise verdict);
    prompts: prompt texts [n]; strong_q, weak_q: float64 [n]."""

    source: str
    kind: str
    prompts: tuple[str, ...]
    strong_q: NDArray[np.float64]
    weak_q: NDArray[np.float64]

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if self.strong_q.shape != (n,) or self.weak_q.shape != (n,):
            raise ValueError(
                f"PairTable {self.source}: {n} prompts but strong_q {self.strong_q.shape}, "
                f"weak_q {self.weak_q.shape}"
            )


def load_judge_scores(data_dir: Path) -> dict[str, dict[str, float]]:
    """{prompt text (stripped): {normalised model name: GPT-4 score}} from the arena-bench file.

    Cells that are empty or not a finite number in [1, 10] are left out (data.py reports them)."""
    path, handle = open_data_file(Path(data_dir), ARENA_BENCH_FILE)
    out: dict[str, dict[str, float]] = {}
    with handle:
        for row in csv.DictReader(handle):
            prompt = (row.get("prompt") or "").strip()
            if not prompt:
                continue
            scores: dict[str, float] = {}
            for col, raw in row.items():
                if col in ("question_id", "prompt") or col is None or raw is None:
                    continue
                try:
                    value = float(raw)
                except ValueError:
                    continue
                if math.isfinite(value) and 1.0 <= value <= 10.0:
                    scores[normalize_model_name(col)] = value
            out.setdefault(prompt, {}).update(scores)
    return out


def _kind_of(source: str) -> str:
    if source == JUDGE_SCORE_SOURCE:
        return "score"
    if source.startswith("routerbench_"):
        return "correctness"
    return "preference"


def pair_tables(
    comps: Comparisons,
    *,
    strong: str = names.STRONG,
    weak: str = names.WEAK,
    judge_scores: Mapping[str, Mapping[str, float]] | None = None,
    min_prompts: int = 2,
    require_gap: bool = True,
) -> dict[str, PairTable]:
    """One `PairTable` per source of `comps` with >= `min_prompts` strong-vs-weak prompts and (when
    `require_gap`) a non-zero quality gap (see the module docstring for the quality of each kind).

    judge_scores: `load_judge_scores` output; when given, arena_bench_v1 uses the raw scores of its
    prompts (those where both models are scored) instead of the pairwise outcomes."""
    if strong not in comps.models or weak not in comps.models:
        return {}
    s_idx, w_idx = comps.models.index(strong), comps.models.index(weak)
    a, b, o = comps.model_a, comps.model_b, comps.outcome
    pair_row = ((a == s_idx) & (b == w_idx)) | ((a == w_idx) & (b == s_idx))
    strong_won = ((a == s_idx) & (o == 0)) | ((b == s_idx) & (o == 1))
    tie = o == 2
    row_sq = np.where(strong_won, 1.0, np.where(tie, 0.5, 0.0))
    tables: dict[str, PairTable] = {}
    for src_i, source in enumerate(comps.sources):
        rows = np.flatnonzero(pair_row & (comps.source == src_i))
        if rows.size == 0:
            continue
        kind = _kind_of(source)
        if kind == "score" and judge_scores is not None:
            prompts, sq, wq = [], [], []
            for p in dict.fromkeys(comps.prompts[i] for i in comps.prompt_idx[rows]):
                scores = judge_scores.get(p, {})
                if strong in scores and weak in scores:
                    prompts.append(p)
                    sq.append(scores[strong])
                    wq.append(scores[weak])
            table = PairTable(source, kind, tuple(prompts), np.asarray(sq, float), np.asarray(wq, float))
        else:
            pidx, inverse = np.unique(comps.prompt_idx[rows], return_inverse=True)
            sums = np.bincount(inverse, row_sq[rows], minlength=pidx.size)
            strong_q = sums / np.bincount(inverse, minlength=pidx.size)
            table = PairTable(
                source,
                "preference" if kind == "score" else kind,
                tuple(comps.prompts[i] for i in pidx),
                strong_q,
                1.0 - strong_q,
            )
        gap_ok = not require_gap or table.strong_q.mean() != table.weak_q.mean()
        if len(table.prompts) >= max(1, min_prompts) and gap_ok:
            tables[source] = table
    return tables


# --------------------------------------------------------------------------------------------
# Metrics of one router on one table


@dataclass(frozen=True)
class SourceResult:
    """Metrics of one router on one source's validation prompts (APGR and CPT as fractions).

    random_*: mean and sample std over `random_seeds` U(0, 1) routers; length_*: score = prompt
    length in characters (longer -> strong)."""

    router: str
    source: str
    kind: str
    fold: int
    n_prompts: int
    strong_mean: float
    weak_mean: float
    apgr: float
    cpt50: float
    random_apgr_mean: float
    random_apgr_std: float
    random_cpt50_mean: float
    length_apgr: float
    length_cpt50: float


def length_scores(prompts: Sequence[str]) -> NDArray[np.float64]:
    """The prompt-length baseline's scores: the length of each prompt in characters."""
    return np.asarray([len(p) for p in prompts], dtype=np.float64)


def evaluate_table(
    table: PairTable, scores: NDArray[np.floating], *, router: str, fold: int = 0, random_seeds: int = 10
) -> SourceResult:
    """APGR and CPT(50 %) of `scores` (one per prompt of `table`) with both baselines."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(table.prompts),):
        raise ValueError(f"{router} on {table.source}: {scores.size} scores for {len(table.prompts)} prompts")
    m = router_metrics(scores, table.strong_q, table.weak_q, targets=(0.5,))
    rnd = random_baseline(len(table.prompts), table.strong_q, table.weak_q, seeds=random_seeds, targets=(0.5,))
    ln = router_metrics(length_scores(table.prompts), table.strong_q, table.weak_q, targets=(0.5,))
    return SourceResult(
        router=router,
        source=table.source,
        kind=table.kind,
        fold=fold,
        n_prompts=len(table.prompts),
        strong_mean=float(table.strong_q.mean()),
        weak_mean=float(table.weak_q.mean()),
        apgr=m.apgr,
        cpt50=m.cpt[0.5],
        random_apgr_mean=rnd.apgr_mean,
        random_apgr_std=rnd.apgr_std,
        random_cpt50_mean=rnd.cpt_mean[0.5],
        length_apgr=ln.apgr,
        length_cpt50=ln.cpt[0.5],
    )


# --------------------------------------------------------------------------------------------
# Splits


def kfold_by_prompt(comps: Comparisons, k: int, seed: int = 0) -> list[tuple[Comparisons, Comparisons]]:
    """K (train, val) splits with disjoint val prompt sets covering every prompt once.

    Prompts are ordered by sha256(seed, text) as in `Comparisons.split_by_prompt`; fold j holds
    ranks round(j n / k) .. round((j + 1) n / k). Fold 0 of k = 10 is exactly
    `split_by_prompt(0.1, seed)`'s validation set (the pipeline's)."""
    if k < 2:
        raise ValueError(f"kfold_by_prompt: k must be >= 2, got {k}")
    keys = [hashlib.sha256(f"{seed}\0{text}".encode()).digest() for text in comps.prompts]
    order = np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys))
    n = len(keys)
    bounds = [round(j * n / k) for j in range(k + 1)]
    out = []
    for j in range(k):
        in_val = (rank >= bounds[j]) & (rank < bounds[j + 1])
        val_row = in_val[comps.prompt_idx]
        out.append((comps.select(~val_row), comps.select(val_row)))
    return out


# --------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Training knobs of mf and sw_ranking (defaults = the pipeline's BuildConfig defaults).

    label_weights / source_weights: per label kind / per source weight of each comparison in mf and
    sw_ranking. elo_source_weights: per-source weights of the Elo fit only (tiers), e.g.
    alpaca_eval 0 to keep the AlpacaEval judge's length bias out of the tiers; elo_min_comparisons:
    models with fewer rated comparisons get no tier (sw_ranking drops their rows).
    pair_weight: extra factor on comparisons between the default pair itself; pair_model_weight:
    extra factor on comparisons that involve the strong or the weak model; other_weight: factor on
    the comparisons that involve neither (0 trains on the pair models' comparisons only).
    pair_only: train on the direct strong-vs-weak comparisons only (every other row gets weight 0).
    tier_window: keep only comparisons whose two models both lie in tiers weak_tier - window ..
    strong_tier + window (tiers from the Elo fit above); None keeps all.
    mf_*: dimension, epochs, batch, learning rate, source bias on / off, Gaussian noise sigma on the
    prompt embeddings, Adam weight decay, seed.
    prior_weight: blend each router's score with the difficulty prior at this weight
    (`lmroute_export.train_prior`; 0 = the router alone). Needs `prior` in `fit_scorers`.
    """

    label_weights: tuple[tuple[str, float], ...] = (("human", 1.0), ("judge", 1.0), ("golden", 1.0))
    source_weights: tuple[tuple[str, float], ...] = ()
    elo_source_weights: tuple[tuple[str, float], ...] = ()
    elo_min_comparisons: int = 1
    n_tiers: int = 10
    gamma: float = 10.0
    pair_weight: float = 1.0
    pair_model_weight: float = 1.0
    other_weight: float = 1.0
    pair_only: bool = False
    tier_window: int | None = None
    mf_dim: int = 128
    mf_epochs: int = 20
    mf_batch_size: int = 256
    mf_lr: float = 3e-4
    mf_source_bias: bool = True
    mf_noise_sigma: float = 0.1
    mf_weight_decay: float = 1e-5
    mf_seed: int = 0
    prior_weight: float = 0.0

    def describe(self) -> str:
        """The fields that differ from the defaults, as `k=v` pairs ("default" when none)."""
        base = asdict(Recipe())
        diff = [f"{k}={v}" for k, v in asdict(self).items() if base[k] != v]
        return ", ".join(diff) or "default"


def training_weights(
    recipe: Recipe, train: Comparisons, strong: str, weak: str, tiers: Mapping[str, int] | None = None
) -> NDArray[np.float64]:
    """Per-comparison training weight of `recipe` (label, source, pair factors, tier window)."""
    from lmroute_export.elo import comparison_weights

    w = comparison_weights(
        train, label_weights=dict(recipe.label_weights), source_weights=dict(recipe.source_weights) or None
    )
    s_idx, w_idx = train.models.index(strong), train.models.index(weak)
    a, b = train.model_a, train.model_b
    involves = (a == s_idx) | (b == s_idx) | (a == w_idx) | (b == w_idx)
    is_pair = ((a == s_idx) & (b == w_idx)) | ((a == w_idx) & (b == s_idx))
    w = w * np.where(involves, recipe.pair_model_weight, recipe.other_weight) * np.where(is_pair, recipe.pair_weight, 1.0)
    if recipe.pair_only:
        w = w * is_pair
    if recipe.tier_window is not None:
        if tiers is None:
            tiers = fit_tiers(recipe, train)
        lo, hi = tiers[weak] - recipe.tier_window, tiers[strong] + recipe.tier_window
        tier = np.array([tiers.get(m, -10**6) for m in train.models])
        inside = (tier >= lo) & (tier <= hi)
        w = w * (inside[a] & inside[b])
    return w


def fit_tiers(recipe: Recipe, train: Comparisons) -> dict[str, int]:
    """Elo (label weights and Elo source weights of `recipe`) -> tiers of the rated models."""
    from lmroute_export.elo import compute_elo, segment_tiers

    elo = compute_elo(
        train,
        label_weights=dict(recipe.label_weights),
        source_weights=dict(recipe.elo_source_weights) or None,
    )
    ratings = elo.as_dict(min_comparisons=max(1, recipe.elo_min_comparisons))
    return segment_tiers(ratings, n_tiers=min(recipe.n_tiers, len(ratings)))


def fit_scorers(
    recipe: Recipe,
    train: Comparisons,
    train_emb: NDArray[np.float32],
    *,
    routers: Sequence[str] = ("mf", "sw_ranking"),
    strong: str = names.STRONG,
    weak: str = names.WEAK,
    prior: DifficultyPrior | None = None,
) -> dict[str, Scorer]:
    """Train the requested routers on `train` (prompt embeddings aligned with `train.prompts`);
    return {router: scores(query embeddings [b, d]) -> float64 [b]}. With recipe.prior_weight > 0
    each score is blended with `prior` exactly as the bundle does (standardised on `train_emb`)."""
    if recipe.prior_weight > 0:
        if prior is None:
            raise ValueError(f"recipe {recipe.describe()}: prior_weight needs a difficulty prior")
        plain = fit_scorers(replace(recipe, prior_weight=0.0), train, train_emb, routers=routers, strong=strong, weak=weak)
        return {name: _blended(f, prior, train_emb, recipe.prior_weight) for name, f in plain.items()}
    tiers = fit_tiers(recipe, train) if "sw_ranking" in routers or recipe.tier_window is not None else None
    weights = training_weights(recipe, train, strong, weak, tiers)
    out: dict[str, Scorer] = {}
    if "mf" in routers:
        from lmroute_export.train_mf import train_mf
        from lmroute_kernels.reference import mf_pair_vector

        mf = train_mf(
            train,
            train_emb,
            dim=recipe.mf_dim,
            epochs=recipe.mf_epochs,
            batch_size=recipe.mf_batch_size,
            lr=recipe.mf_lr,
            seed=recipe.mf_seed,
            source_bias=recipe.mf_source_bias,
            noise_sigma=recipe.mf_noise_sigma,
            weight_decay=recipe.mf_weight_decay,
            row_weights=weights,
        )
        u = mf_pair_vector(mf.text_proj, mf.model_emb, mf.classifier, train.models.index(strong), train.models.index(weak))
        out["mf"] = lambda e, u=u: 1.0 / (1.0 + np.exp(-(np.asarray(e, np.float64) @ u)))
    if "sw_ranking" in routers:
        from lmroute_export.train_sw import train_sw_ranking
        from lmroute_kernels.reference import sw_scores

        assert tiers is not None
        for name in (strong, weak):
            if name not in tiers:
                raise ValueError(f"recipe {recipe.describe()}: {name} got no tier")
        n_tiers = max(tiers.values()) + 1
        sw = train_sw_ranking(
            train,
            train_emb,
            tiers,
            n_tiers=n_tiers,
            strong=strong,
            weak=weak,
            gamma=recipe.gamma,
            row_weights=weights,
            drop_unknown_models=True,
        )
        p = sw.params

        def sw_scorer(e: NDArray[np.float32], sw=sw, p=p) -> NDArray[np.float64]:
            return sw_scores(
                e, sw.prompt_embeddings, sw.cell_counts, sw.cells, int(p["n_tiers"]),
                int(p["strong_tier"]), int(p["weak_tier"]), gamma=float(p["gamma"]),
            )

        out["sw_ranking"] = sw_scorer
    return out


def _blended(scorer: Scorer, prior: DifficultyPrior, train_emb: NDArray[np.float32], weight: float) -> Scorer:
    from lmroute_export.train_prior import blend_params
    from lmroute_kernels.reference import blend_scores

    std_prior = prior.with_standardisation(train_emb)
    bp = blend_params(scorer(train_emb), weight)

    def blended(e: NDArray[np.float32]) -> NDArray[np.float64]:
        return blend_scores(
            scorer(e), e, std_prior.weights, std_prior.bias, std_prior.center, std_prior.scale,
            weight=bp.prior_weight, center=bp.center, scale=bp.scale,
        )

    return blended


def validate_recipe(
    recipe: Recipe,
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
    prior / prior_emb: the difficulty prior (for recipe.prior_weight > 0) and the embeddings of the
    questions it was fitted on; validation prompts this close to one of those are dropped too (the
    LLMRouter table holds ~100 near-copies of RouterBench MBPP questions)."""
    splits = kfold_by_prompt(comps, folds, seed=split_seed)
    chosen = range(folds) if only_folds is None else only_folds
    results: list[SourceResult] = []
    pooled: dict[tuple[str, str], tuple[list[PairTable], list[NDArray[np.float64]]]] = {}
    for j in chosen:
        train, val = splits[j]
        train_emb = emb_of(train.prompts)
        scorers = fit_scorers(recipe, train, train_emb, routers=routers, strong=strong, weak=weak, prior=prior)
        tables = pair_tables(val, strong=strong, weak=weak, judge_scores=judge_scores, min_prompts=1, require_gap=not pool)
        for table in tables.values():
            q = emb_of(table.prompts)
            if decontaminate is not None:
                clean = (q @ train_emb.T).max(axis=1) < decontaminate
                if prior_emb is not None and len(prior_emb):
                    clean &= (q @ prior_emb.T).max(axis=1) < decontaminate
                if not clean.all():
                    table = _subset(table, clean)
                    q = q[clean]
                if not clean.any():
                    continue
            for router, scorer in scorers.items():
                scores = scorer(q)
                if pool:
                    tabs, scs = pooled.setdefault((router, table.source), ([], []))
                    tabs.append(table)
                    scs.append(scores)
                elif len(table.prompts) >= 2 and table.strong_q.mean() != table.weak_q.mean():
                    results.append(evaluate_table(table, scores, router=router, fold=j, random_seeds=random_seeds))
    for (router, _), (tabs, scs) in pooled.items():
        table = PairTable(
            tabs[0].source,
            tabs[0].kind,
            tuple(p for t in tabs for p in t.prompts),
            np.concatenate([t.strong_q for t in tabs]),
            np.concatenate([t.weak_q for t in tabs]),
        )
        if len(table.prompts) >= 2 and table.strong_q.mean() != table.weak_q.mean():
            results.append(evaluate_table(table, np.concatenate(scs), router=router, fold=-1, random_seeds=random_seeds))
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
    from lmroute_bundle import load_bundle
    from lmroute_export.train_prior import blend_params
    from lmroute_kernels.reference import blend_scores

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
        clean = (q @ train_emb.T).max(axis=1) < decontaminate
        if len(prior_emb):
            clean &= (q @ prior_emb.T).max(axis=1) < decontaminate
        table, q = _subset(table, clean), q[clean]
        if len(table.prompts) < 2 or table.strong_q.mean() == table.weak_q.mean():
            continue
        for router in routers:
            scores = bundle_scores(router, table.prompts)
            for weight in prior_weights:
                bp = blend_params(train_scores[router], weight)
                blended = blend_scores(
                    scores, q, std_prior.weights, std_prior.bias, std_prior.center, std_prior.scale,
                    weight=bp.prior_weight, center=bp.center, scale=bp.scale,
                )
                results.append(evaluate_table(table, blended, router=f"{router}@{weight:g}", random_seeds=random_seeds))
    return results


def _subset(table: PairTable, keep: NDArray[np.bool_]) -> PairTable:
    return PairTable(
        table.source,
        table.kind,
        tuple(p for p, k in zip(table.prompts, keep, strict=True) if k),
        table.strong_q[keep],
        table.weak_q[keep],
    )


# --------------------------------------------------------------------------------------------
# Summaries


@dataclass(frozen=True)
class Summary:
    """Fold means of one (router, source): n folds, total prompts, metric means and their standard
    errors over folds (0 with one fold)."""

    router: str
    source: str
    n_folds: int
    n_prompts: int
    apgr: float
    apgr_se: float
    cpt50: float
    random_apgr: float
    random_apgr_std: float
    random_cpt50: float
    length_apgr: float
    length_cpt50: float


def summarise(results: Sequence[SourceResult]) -> list[Summary]:
    """Group results by (router, source) and average over folds."""
    groups: dict[tuple[str, str], list[SourceResult]] = {}
    for r in results:
        groups.setdefault((r.router, r.source), []).append(r)
    out = []
    for (router, source), rs in groups.items():
        ap = np.array([r.apgr for r in rs])
        out.append(
            Summary(
                router=router,
                source=source,
                n_folds=len(rs),
                n_prompts=sum(r.n_prompts for r in rs),
                apgr=float(ap.mean()),
                apgr_se=float(ap.std(ddof=1) / math.sqrt(len(rs))) if len(rs) > 1 else 0.0,
                cpt50=float(np.mean([r.cpt50 for r in rs])),
                random_apgr=float(np.mean([r.random_apgr_mean for r in rs])),
                random_apgr_std=float(np.mean([r.random_apgr_std for r in rs])) / math.sqrt(len(rs)),
                random_cpt50=float(np.mean([r.random_cpt50_mean for r in rs])),
                length_apgr=float(np.mean([r.length_apgr for r in rs])),
                length_cpt50=float(np.mean([r.length_cpt50 for r in rs])),
            )
        )
    return out


def format_results(results: Sequence[SourceResult], title: str = "") -> str:
    """Markdown table of `summarise(results)`: APGR (+- se over folds), CPT50 in %, baselines.

    random APGR std is the per-fold std divided by sqrt(n folds): the noise of a fold mean."""
    lines = [f"### {title}"] if title else []
    lines += [
        "| router | source | folds | prompts | APGR | CPT50 % | random APGR (std) | random CPT50 % | length APGR | length CPT50 % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted(summarise(results), key=lambda s: (s.router, s.source)):
        se = f" +- {s.apgr_se:.3f}" if s.n_folds > 1 else ""
        lines.append(
            f"| {s.router} | {s.source} | {s.n_folds} | {s.n_prompts} | {s.apgr:.3f}{se} | {100 * s.cpt50:.1f} | "
            f"{s.random_apgr:.3f} ({s.random_apgr_std:.3f}) | {100 * s.random_cpt50:.1f} | "
            f"{s.length_apgr:.3f} | {100 * s.length_cpt50:.1f} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# CLI


def cached_embedder(cache_dir: Path, max_tokens: int = 256) -> Callable[[Sequence[str]], NDArray[np.float32]]:
    """texts -> embeddings with the pipeline's exported encoder and embedding cache under cache_dir."""
    from lmroute_export.embed_cache import embed_texts
    from lmroute_export.pipeline import ensure_encoder, open_encoder

    enc_dir, _ = ensure_encoder(None, cache_dir, max_tokens)
    encoder, encoder_id = open_encoder(enc_dir, max_tokens)
    memo: dict[str, NDArray[np.float32]] = {}

    def emb_of(texts: Sequence[str]) -> NDArray[np.float32]:
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            for t, e in zip(missing, embed_texts(encoder, missing, cache_dir / "embeddings", encoder_id=encoder_id, progress=False), strict=True):
                memo[t] = e
        return np.stack([memo[t] for t in texts]) if texts else np.zeros((0, encoder.dim), np.float32)

    return emb_of


def _pairs(text: str) -> tuple[tuple[str, float], ...]:
    """`a=1,b=0.5` -> (("a", 1.0), ("b", 0.5))."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected name=weight, got {part!r}")
        out.append((key.strip(), float(value)))
    return tuple(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Validate one recipe (the defaults unless flags say otherwise) and print the table."""
    from lmroute_export.data import load_comparisons, load_difficulty_labels
    from lmroute_export.pipeline import DECONTAMINATION_FILE, REPO_ROOT, _decontamination_set
    from lmroute_export.train_prior import fit_difficulty_prior

    ap = argparse.ArgumentParser(prog="python -m lmroute_export.validate", description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    ap.add_argument("--cache-dir", type=Path, default=REPO_ROOT / ".cache")
    ap.add_argument("--routers", default="mf,sw_ranking")
    ap.add_argument("--folds", type=int, default=10, help="K of the K-fold split (10: fold 0 = pipeline's val)")
    ap.add_argument("--all-folds", action="store_true", help="run every fold, not only fold 0")
    ap.add_argument("--pool", action="store_true", help="with --all-folds: one evaluation on the pooled out-of-fold scores")
    ap.add_argument("--tier-window", type=int, default=None)
    ap.add_argument("--pair-only", action="store_true", help="train on the direct strong-vs-weak comparisons only")
    ap.add_argument("--decontaminate", type=float, default=0.95, help="drop val prompts this close (cosine) to a training prompt; <= -1 keeps all")
    ap.add_argument("--other-weight", type=float, default=1.0)
    ap.add_argument("--mf-noise-sigma", type=float, default=0.1)
    ap.add_argument("--label-weights", type=_pairs, default=Recipe().label_weights)
    ap.add_argument("--source-weights", type=_pairs, default=())
    ap.add_argument("--elo-source-weights", type=_pairs, default=())
    ap.add_argument("--n-tiers", type=int, default=10)
    ap.add_argument("--gamma", type=float, default=10.0)
    ap.add_argument("--pair-weight", type=float, default=1.0)
    ap.add_argument("--pair-model-weight", type=float, default=1.0)
    ap.add_argument("--mf-dim", type=int, default=128)
    ap.add_argument("--mf-epochs", type=int, default=20)
    ap.add_argument("--mf-lr", type=float, default=3e-4)
    ap.add_argument("--mf-batch-size", type=int, default=256)
    ap.add_argument("--no-source-bias", action="store_true")
    ap.add_argument("--random-seeds", type=int, default=10, help="seeds of the random baseline (its mean and std)")
    ap.add_argument("--prior-weight", type=float, default=0.0, help="blend with the difficulty prior at this weight (0: off)")
    ap.add_argument("--bundle", type=Path, default=None, help="score this built bundle's routers on fold 0 instead of training (bert included)")
    ap.add_argument("--prior-weights", default="0,0.5,1,2,4", help="with --bundle: the blend weights to try")
    ap.add_argument("--prior-ridge", type=float, default=10.0, help="ridge of the difficulty prior's regression")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    recipe = Recipe(
        label_weights=args.label_weights,
        source_weights=args.source_weights,
        elo_source_weights=args.elo_source_weights,
        n_tiers=args.n_tiers,
        gamma=args.gamma,
        pair_weight=args.pair_weight,
        pair_model_weight=args.pair_model_weight,
        other_weight=args.other_weight,
        pair_only=args.pair_only,
        tier_window=args.tier_window,
        mf_noise_sigma=args.mf_noise_sigma,
        mf_dim=args.mf_dim,
        mf_epochs=args.mf_epochs,
        mf_lr=args.mf_lr,
        mf_batch_size=args.mf_batch_size,
        mf_source_bias=not args.no_source_bias,
        prior_weight=args.prior_weight,
    )
    comps = load_comparisons(args.data_dir).comparisons
    emb_of = cached_embedder(args.cache_dir)
    labels = load_difficulty_labels(args.data_dir)
    near_eval = _decontamination_set(args.data_dir / DECONTAMINATION_FILE)
    keep = np.array([p not in near_eval for p in labels.prompts], dtype=bool)
    prior_emb = emb_of([p for p, k in zip(labels.prompts, keep, strict=True) if k])
    prior = fit_difficulty_prior(prior_emb, labels.mean_score[keep], ridge=args.prior_ridge)
    if args.bundle is not None:
        results = validate_bundle(
            args.bundle,
            comps,
            emb_of,
            judge_scores=load_judge_scores(args.data_dir),
            prior=prior,
            prior_emb=prior_emb,
            prior_weights=[float(w) for w in args.prior_weights.split(",") if w],
            routers=tuple(r for r in args.routers.split(",") if r),
            random_seeds=args.random_seeds,
        )
        print(format_results(results, title=f"bundle {args.bundle}, fold 0"))
        return 0
    results = validate_recipe(
        recipe,
        comps,
        emb_of,
        judge_scores=load_judge_scores(args.data_dir),
        folds=args.folds,
        only_folds=None if args.all_folds else (0,),
        routers=tuple(r for r in args.routers.split(",") if r),
        pool=args.pool,
        decontaminate=args.decontaminate if args.decontaminate > -1 else None,
        prior=prior,
        prior_emb=prior_emb,
        random_seeds=args.random_seeds,
    )
    print(format_results(results, title=recipe.describe()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
