"""What the validation harness trains: the build's `Recipe` plus a few row-weighting knobs of its own,
and the code that trains mf, sw_ranking and bert on a split the way the build does.

`Experiment` (a frozen dataclass) holds a `Recipe` (`lmroute.export.recipe`, the knobs the build
honours too, defaults = the shipped recipe) and the knobs only the harness has (source weights, pair
and tier filters on the training rows); `fit_scorers` trains the routers on a training split and
returns scoring functions; `blend_sweep` blends a router's scores with the difficulty prior at several
weights exactly as the bundle does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from lmroute.export import names
from lmroute.export.data import Comparisons, evenly_spaced
from lmroute.export.dataclass_flags import knob
from lmroute.export.recipe import Recipe
from lmroute.export.train_prior import DifficultyPrior

__all__ = [
    "HARNESS_ROUTERS",
    "Experiment",
    "Recipe",
    "Scorer",
    "blend_sweep",
    "fit_scorers",
    "fit_tiers",
    "training_weights",
]

# The routers `fit_scorers` can train.
HARNESS_ROUTERS = ("mf", "sw_ranking", "bert")

# scores(query embeddings [b, d], query texts [b]) -> float64 [b]: mf and sw_ranking read the
# embeddings, bert the texts.
Scorer = Callable[[NDArray[np.float32], Sequence[str]], NDArray[np.float64]]


# --------------------------------------------------------------------------------------------
# Experiments


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """A `Recipe` and the harness-only knobs: factors on the training rows of mf and sw_ranking that the
    build does not have (all neutral by default, so `Experiment()` trains the shipped recipe). Each
    field's description is its `help` metadata (the flag's help)."""

    recipe: Recipe = field(default_factory=Recipe)
    source_weights: tuple[tuple[str, float], ...] = knob(
        (), "per-source weight factor of the comparisons in mf and sw_ranking, source=weight,...; unnamed 1"
    )
    pair_model_weight: float = knob(
        1.0, "weight factor in mf and sw_ranking of the comparisons that involve the strong or the weak model"
    )
    other_weight: float = knob(
        1.0, "weight factor in mf and sw_ranking of the comparisons that involve neither (0: the pair's only)"
    )
    tier_window: int | None = knob(
        None,
        "mf and sw_ranking keep only comparisons whose two models both lie in tiers weak - window .. "
        "strong + window (none: all)",
    )
    mf_pair_only: bool = knob(False, "mf learns from the direct strong-vs-weak comparisons only")
    sw_pair_weight: float = knob(1.0, "weight factor of the direct strong-vs-weak comparisons in sw_ranking")

    def __post_init__(self) -> None:
        object.__setattr__(self, "source_weights", tuple((str(k), float(v)) for k, v in self.source_weights))
        for name in ("pair_model_weight", "other_weight", "sw_pair_weight"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be finite and >= 0 (got {value!r})")
        if self.tier_window is not None and self.tier_window < 0:
            raise ValueError(f"tier_window: must be >= 0 (got {self.tier_window})")

    def describe(self) -> str:
        """The fields (the recipe's included) that differ from the defaults, as `k=v` pairs ("default"
        when none)."""
        base = asdict(Experiment())
        own = [f"{k}={v}" for k, v in asdict(self).items() if k != "recipe" and base[k] != v]
        recipe = self.recipe.describe()
        return ", ".join(([] if recipe == "default" else [recipe]) + own) or "default"


def as_experiment(recipe: Recipe | Experiment) -> Experiment:
    """`recipe` itself when it is an Experiment, else the Experiment of that recipe alone."""
    return recipe if isinstance(recipe, Experiment) else Experiment(recipe=recipe)


def training_weights(
    recipe: Recipe | Experiment,
    train: Comparisons,
    strong: str,
    weak: str,
    tiers: Mapping[str, int] | None = None,
    *,
    router: str,
) -> NDArray[np.float64]:
    """Per-comparison row weights of `router` ("mf" or "sw_ranking"): the recipe's pair factor or
    pair-only filter of that router, times the harness-only factors (source, pair-model / other, tier
    window). Label weights are not in it: the trainers take them apart, as in the build."""
    exp = as_experiment(recipe)
    if router not in ("mf", "sw_ranking"):
        raise ValueError(f"training_weights: router {router!r} is not mf or sw_ranking")
    from lmroute.export.elo import comparison_weights

    w = comparison_weights(train, source_weights=dict(exp.source_weights) or None)
    s_idx, w_idx = train.models.index(strong), train.models.index(weak)
    a, b = train.model_a, train.model_b
    involves = (a == s_idx) | (b == s_idx) | (a == w_idx) | (b == w_idx)
    is_pair = train.pair_mask(strong, weak)
    if router == "mf":
        pair_weight, pair_only = exp.recipe.mf_pair_weight, exp.mf_pair_only
    else:
        pair_weight, pair_only = exp.sw_pair_weight, exp.recipe.sw_pair_only
    w = w * np.where(involves, exp.pair_model_weight, exp.other_weight) * np.where(is_pair, pair_weight, 1.0)
    if pair_only:
        w = w * is_pair
    if exp.tier_window is not None:
        if tiers is None:
            tiers = fit_tiers(exp.recipe, train)
        lo, hi = tiers[weak] - exp.tier_window, tiers[strong] + exp.tier_window
        tier = np.array([tiers.get(m, -(10**6)) for m in train.models])
        inside = (tier >= lo) & (tier <= hi)
        w = w * (inside[a] & inside[b])
    return w


def fit_tiers(recipe: Recipe | Experiment, train: Comparisons) -> dict[str, int]:
    """Elo (label weights, Elo source weights and minimum comparisons of the recipe) -> tiers of the
    rated models, as the build fits them."""
    from lmroute.export.elo import compute_elo, segment_tiers

    r = as_experiment(recipe).recipe
    elo = compute_elo(
        train,
        label_weights=dict(r.label_weights),
        source_weights=dict(r.elo_source_weights) or None,
    )
    ratings = elo.as_dict(min_comparisons=r.elo_min_comparisons)
    return segment_tiers(ratings, n_tiers=min(r.n_tiers, len(ratings)))


def fit_scorers(
    recipe: Recipe | Experiment,
    train: Comparisons,
    train_emb: NDArray[np.float32],
    *,
    routers: Sequence[str] = ("mf", "sw_ranking"),
    strong: str = names.STRONG,
    weak: str = names.WEAK,
    prior: DifficultyPrior | None = None,
) -> dict[str, Scorer]:
    """Train the requested routers on `train` (prompt embeddings aligned with `train.prompts`) as the
    build trains them; return {router: scores(query embeddings [b, d], query texts [b]) -> float64 [b]}.

    prior: the difficulty prior; with it, each router that recipe.prior_weights names with a weight > 0
    is blended with it exactly as the bundle does (prior standardised on the training prompts, the
    blend's center / scale fixed on recipe.prior_standardise_on of them, evenly spread). Without it the
    routers are returned alone (`validate_recipe` refuses a recipe that blends and no prior)."""
    exp = as_experiment(recipe)
    r = exp.recipe
    unknown = [name for name in routers if name not in HARNESS_ROUTERS]
    if unknown:
        raise ValueError(f"fit_scorers: unknown routers {unknown} ({', '.join(HARNESS_ROUTERS)})")
    blend = blend_weights(r, routers)
    if blend and prior is not None:
        plain = fit_scorers(
            replace(exp, recipe=replace(r, prior_weights=())),
            train,
            train_emb,
            routers=routers,
            strong=strong,
            weak=weak,
        )
        sample = evenly_spaced(len(train.prompts), r.prior_standardise_on)
        std_prior = prior.with_standardisation(train_emb)
        return {
            name: _blended(f, std_prior, train_emb[sample], [train.prompts[i] for i in sample], blend[name])
            if name in blend
            else f
            for name, f in plain.items()
        }
    needs_tiers = "sw_ranking" in routers or "bert" in routers or exp.tier_window is not None
    tiers = fit_tiers(r, train) if needs_tiers else None
    out: dict[str, Scorer] = {}
    if "mf" in routers:
        from lmroute.export.train_mf import train_mf_recipe
        from lmroute.kernels.reference import mf_pair_vector

        mf_rows = training_weights(exp, train, strong, weak, tiers, router="mf")
        mf = train_mf_recipe(train, train_emb, r, row_weights=mf_rows)
        u = mf_pair_vector(
            mf.text_proj, mf.model_emb, mf.classifier, train.models.index(strong), train.models.index(weak)
        )
        out["mf"] = lambda e, texts, u=u: 1.0 / (1.0 + np.exp(-(np.asarray(e, np.float64) @ u)))
    if "sw_ranking" in routers:
        from lmroute.export.train_sw import train_sw_recipe
        from lmroute.kernels.reference import sw_scores

        assert tiers is not None
        for name in (strong, weak):
            if name not in tiers:
                raise ValueError(f"recipe {exp.describe()}: {name} got no tier")
        sw_rows = training_weights(exp, train, strong, weak, tiers, router="sw_ranking")
        sw = train_sw_recipe(train, train_emb, tiers, r, strong=strong, weak=weak, row_weights=sw_rows)
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
        out["bert"] = _fit_bert(r, train, tiers, strong, weak)
    return out


def blend_weights(recipe: Recipe, routers: Sequence[str]) -> dict[str, float]:
    """{router: prior weight} of the routers among `routers` that `recipe` blends with the prior (> 0)."""
    return {name: w for name, w in recipe.prior_weights if name in routers and w > 0}


def _fit_bert(recipe: Recipe, train: Comparisons, tiers: Mapping[str, int], strong: str, weak: str) -> Scorer:
    """Fine-tune bert as the build does (`lmroute.bundle.kinds.bert`) and score with PyTorch: P(strong
    tier wins). The bundle runs the ONNX export of the same model (equal within the export check's
    tolerance)."""
    from lmroute.export.train_bert import LABELS, predict_proba, train_bert_recipe

    trained = train_bert_recipe(train, tiers, recipe, strong=strong, weak=weak)
    column = LABELS.index("strong_wins")

    def bert_scorer(e: NDArray[np.float32], texts: Sequence[str]) -> NDArray[np.float64]:
        if not len(texts):
            return np.zeros(0)
        probs = predict_proba(
            trained, trained.tokenizer_dir, texts, max_tokens=recipe.bert_max_tokens, truncation=recipe.truncation_rule
        )
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
    train_scores: the router's plain scores on the training prompts that fix the blend's center / scale
    (the build's: recipe.prior_standardise_on of them, evenly spread).
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
    scorer: Scorer,
    std_prior: DifficultyPrior,
    sample_emb: NDArray[np.float32],
    sample_texts: Sequence[str],
    weight: float,
) -> Scorer:
    """`scorer` blended with `std_prior` (standardised on the training prompts) at `weight`; the blend's
    center / scale come from the scorer's scores on the sample of training prompts."""
    sample_scores = scorer(sample_emb, sample_texts)

    def blended(e: NDArray[np.float32], texts: Sequence[str]) -> NDArray[np.float64]:
        return blend_sweep(scorer(e, texts), e, std_prior, sample_scores, [weight])[weight]

    return blended
