"""Router recipes of the validation harness: the training knobs of mf, sw_ranking and bert and the
code that trains them on a split.

`Recipe` (a frozen dataclass) holds the knobs (label / source weights, Elo exclusions, tiers, gamma,
mf and bert hyper-parameters, up-weighting of the default pair's rows, the difficulty prior's weight);
`fit_scorers` trains the routers on a training split and returns scoring functions; `blend_sweep`
blends a router's scores with the difficulty prior at several weights exactly as the bundle does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from numpy.typing import NDArray

from lmroute.export import names
from lmroute.export.data import Comparisons
from lmroute.export.train_prior import DifficultyPrior

__all__ = ["Recipe", "Scorer", "blend_sweep", "fit_scorers", "fit_tiers", "training_weights"]

# scores(query embeddings [b, d], query texts [b]) -> float64 [b]: mf and sw_ranking read the
# embeddings, bert the texts.
Scorer = Callable[[NDArray[np.float32], Sequence[str]], NDArray[np.float64]]


# --------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """Training knobs of mf, sw_ranking and bert. The mf and sw_ranking defaults are the harness's
    starting point (RouteLLM's gamma 10, no pair weighting); the flags that give the shipped recipe
    are in docs/eval/validation.md. The bert defaults are the pipeline's (`BuildConfig.bert_*`).

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
    bert_*: the pipeline's bert settings (`BuildConfig.bert_*` and `train_bert`'s defaults): train on
    the direct strong-vs-weak comparisons only (bert_pair_only), wall-clock budget of one fine-tuning
    run, truncation, epochs, peak learning rate, seed.
    prior_weight: blend each router's score with the difficulty prior at this weight
    (`lmroute.export.train_prior`; 0 = the router alone). Needs `prior` in `fit_scorers`.
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
    bert_pair_only: bool = True
    bert_time_budget_s: float = 420.0
    bert_max_tokens: int = 256
    bert_epochs: int = 3
    bert_lr: float = 1e-4
    bert_seed: int = 0
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
    from lmroute.export.elo import comparison_weights

    w = comparison_weights(
        train, label_weights=dict(recipe.label_weights), source_weights=dict(recipe.source_weights) or None
    )
    s_idx, w_idx = train.models.index(strong), train.models.index(weak)
    a, b = train.model_a, train.model_b
    involves = (a == s_idx) | (b == s_idx) | (a == w_idx) | (b == w_idx)
    is_pair = train.pair_mask(strong, weak)
    w = (
        w
        * np.where(involves, recipe.pair_model_weight, recipe.other_weight)
        * np.where(is_pair, recipe.pair_weight, 1.0)
    )
    if recipe.pair_only:
        w = w * is_pair
    if recipe.tier_window is not None:
        if tiers is None:
            tiers = fit_tiers(recipe, train)
        lo, hi = tiers[weak] - recipe.tier_window, tiers[strong] + recipe.tier_window
        tier = np.array([tiers.get(m, -(10**6)) for m in train.models])
        inside = (tier >= lo) & (tier <= hi)
        w = w * (inside[a] & inside[b])
    return w


def fit_tiers(recipe: Recipe, train: Comparisons) -> dict[str, int]:
    """Elo (label weights and Elo source weights of `recipe`) -> tiers of the rated models."""
    from lmroute.export.elo import compute_elo, segment_tiers

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
    return {router: scores(query embeddings [b, d], query texts [b]) -> float64 [b]}. With
    recipe.prior_weight > 0 each score is blended with `prior` exactly as the bundle does
    (standardised on the training prompts)."""
    unknown = [r for r in routers if r not in ("mf", "sw_ranking", "bert")]
    if unknown:
        raise ValueError(f"fit_scorers: unknown routers {unknown} (mf, sw_ranking, bert)")
    if recipe.prior_weight > 0:
        if prior is None:
            raise ValueError(f"recipe {recipe.describe()}: prior_weight needs a difficulty prior")
        plain = fit_scorers(
            replace(recipe, prior_weight=0.0), train, train_emb, routers=routers, strong=strong, weak=weak
        )
        return {name: _blended(f, prior, train_emb, train.prompts, recipe.prior_weight) for name, f in plain.items()}
    needs_tiers = "sw_ranking" in routers or "bert" in routers or recipe.tier_window is not None
    tiers = fit_tiers(recipe, train) if needs_tiers else None
    weights = training_weights(recipe, train, strong, weak, tiers)
    out: dict[str, Scorer] = {}
    if "mf" in routers:
        from lmroute.export.train_mf import train_mf
        from lmroute.kernels.reference import mf_pair_vector

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
        u = mf_pair_vector(
            mf.text_proj, mf.model_emb, mf.classifier, train.models.index(strong), train.models.index(weak)
        )
        out["mf"] = lambda e, texts, u=u: 1.0 / (1.0 + np.exp(-(np.asarray(e, np.float64) @ u)))
    if "sw_ranking" in routers:
        from lmroute.export.train_sw import train_sw_ranking
        from lmroute.kernels.reference import sw_scores

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

        def sw_scorer(e: NDArray[np.float32], texts: Sequence[str], sw=sw, p=p) -> NDArray[np.float64]:
            return sw_scores(
                e,
                sw.prompt_embeddings,
                sw.cell_counts,
                sw.cells,
                int(p["n_tiers"]),
                int(p["strong_tier"]),
                int(p["weak_tier"]),
                gamma=float(p["gamma"]),
            )

        out["sw_ranking"] = sw_scorer
    if "bert" in routers:
        assert tiers is not None
        out["bert"] = _fit_bert(recipe, train, tiers, strong, weak)
    return out


def _fit_bert(recipe: Recipe, train: Comparisons, tiers: Mapping[str, int], strong: str, weak: str) -> Scorer:
    """Fine-tune bert as the pipeline does (`pipeline._train_router`) and score with PyTorch: P(strong
    tier wins). The bundle runs the ONNX export of the same model (equal within the export check's
    tolerance)."""
    from lmroute.export.train_bert import LABELS, build_bert_examples, predict_proba, train_bert

    pairs = train.select(train.pair_mask(strong, weak)) if recipe.bert_pair_only else train
    texts, labels, weights = build_bert_examples(pairs, tiers)
    trained = train_bert(
        texts,
        labels,
        sample_weights=np.sqrt(weights),  # as the pipeline: raw counts would let a few prompts swamp the rest
        max_tokens=recipe.bert_max_tokens,
        epochs=recipe.bert_epochs,
        lr=recipe.bert_lr,
        seed=recipe.bert_seed,
        time_budget_s=recipe.bert_time_budget_s,
    )
    column = LABELS.index("strong_wins")

    def bert_scorer(e: NDArray[np.float32], texts: Sequence[str]) -> NDArray[np.float64]:
        if not len(texts):
            return np.zeros(0)
        probs = predict_proba(trained, trained.tokenizer_dir, texts, max_tokens=recipe.bert_max_tokens)
        return np.asarray(probs[:, column], dtype=np.float64)

    return bert_scorer


def blend_sweep(
    scores: NDArray[np.floating],
    emb: NDArray[np.floating],
    prior: DifficultyPrior,
    train_scores: NDArray[np.floating],
    weights: Sequence[float],
) -> dict[float, NDArray[np.float64]]:
    """{weight: `scores` blended with `prior` at that weight} as the bundle blends them.

    prior: already standardised on the training prompts (`DifficultyPrior.with_standardisation`);
    train_scores: the router's plain scores on those prompts (they fix the blend's center / scale).
    Weight 0 gives the plain scores back."""
    from lmroute.export.train_prior import blend_params
    from lmroute.kernels.reference import blend_scores

    out: dict[float, NDArray[np.float64]] = {}
    for weight in weights:
        if weight == 0:
            out[weight] = np.asarray(scores, dtype=np.float64)
            continue
        bp = blend_params(train_scores, weight)
        out[weight] = blend_scores(
            scores,
            emb,
            prior.weights,
            prior.bias,
            prior.center,
            prior.scale,
            weight=bp.prior_weight,
            center=bp.center,
            scale=bp.scale,
        )
    return out


def _blended(
    scorer: Scorer, prior: DifficultyPrior, train_emb: NDArray[np.float32], train_texts: Sequence[str], weight: float
) -> Scorer:
    std_prior = prior.with_standardisation(train_emb)
    train_scores = scorer(train_emb, train_texts)

    def blended(e: NDArray[np.float32], texts: Sequence[str]) -> NDArray[np.float64]:
        return blend_sweep(scorer(e, texts), e, std_prior, train_scores, [weight])[weight]

    return blended
