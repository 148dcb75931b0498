"""The training recipe: every knob that decides what the routers learn, once, with the shipped defaults.

`Recipe` is read by the build (`lmroute.export.pipeline.BuildConfig.recipe`, handed to each router
kind's `train` as `BuildRecipe`) and by the validation harness (`lmroute.export.validation_recipes`),
and the flags of `lmroute-export build` and `python -m lmroute.export.validate` are derived from its
fields (`lmroute.export.dataclass_flags`): adding a knob is adding a field here.

The defaults are the shipped recipe, chosen on the validation harness (held-out training prompts, never
the eval sets; docs/eval/validation.md): sw_ranking learns only from the direct strong-vs-weak
comparisons with gamma 1e5 (RouteLLM's gamma 10 bounds the nearest / farthest weight ratio at 10x,
which leaves almost no locality); mf trains on every comparison with the direct pair weighted 10x, lr
1e-3, noise sigma 0.02, batch 1024; bert learns from the direct pair only; Elo and the tiers use every
comparison. The difficulty prior is blended into mf at weight 4, sw_ranking 0.5 and bert 0.25, chosen by
the largest worst-source z over random, then the mean, each on 10 pooled folds. A prompt longer than the
encoder's 256 tokens keeps its first 96 and its last 158 tokens (`truncation` head_tail:96; the encoder,
the embedding cache, bert and the bundle's manifest all take it from here), chosen by how well the
routers score RouterBench few-shot prompts sent whole as they score their final questions, on 10 pooled
folds (`python -m lmroute.export.validate_truncation`, docs/eval/truncation.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lmroute.bundle.truncation import Truncation
from lmroute.export.data import LABEL_KINDS, SOURCES
from lmroute.export.dataclass_flags import format_value, knob
from lmroute.export.static_distill import DEFAULT_SIF_A, DEFAULT_STATIC_DIM

__all__ = ["ENCODER_TIERS", "SHIPPED", "BuildRecipe", "Recipe"]

#: The sentence encoder tiers a build can give a bundle (`Recipe.encoder`).
ENCODER_TIERS: tuple[str, ...] = ("onnx", "onnx-int8", "static")

_Pairs = tuple[tuple[str, float], ...]
_MAX_SEED = 2**63 - 1  # numpy's and torch's generators take it; a negative seed neither


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """The training knobs of the routers, the Elo tiers and the difficulty-prior blend; each field's
    description is its `help` metadata (the flag's help). Invalid values raise ValueError naming the field.
    """

    seed: int = knob(0, "seeds the training of mf, bert and random, and the build's validation split and quick sample")
    encoder_model_dir: Path | None = knob(
        None,
        "a local Hugging Face BERT-class model dir: the sentence encoder and bert's starting point "
        "(none: the packaged all-MiniLM-L6-v2)",
    )
    encoder: str = knob(
        "onnx",
        "the sentence encoder's tier: onnx (the transformer, fp32), onnx-int8 (its MatMuls dynamically "
        "quantised to int8, per channel) or static (a token table distilled from it: microseconds per prompt)",
    )
    static_dim: int = knob(
        DEFAULT_STATIC_DIM, "the static encoder's dimension (principal components of the token embeddings)"
    )
    static_sif_a: float = knob(
        DEFAULT_SIF_A, "the static encoder's SIF constant: token t weighs a / (a + frequency of t)"
    )
    max_tokens: int = knob(256, "truncation of the sentence encoder, tokens (the bundle's encoder.max_tokens)")
    truncation: str = knob(
        "head_tail:96",
        "what the encoder and bert keep of a longer prompt: head, tail or head_tail:H (the first H and the "
        "last tokens); the bundle's encoder.truncation",
    )
    label_weights: _Pairs = knob(
        (("human", 1.0), ("judge", 1.0), ("golden", 1.0)),
        "weight of each label kind (human, judge, golden) in Elo, mf and sw_ranking; unnamed kinds 1",
    )
    elo_source_weights: _Pairs = knob(
        (), "per-source weights of the Elo fit only (the tiers), e.g. alpaca_eval=0; unnamed sources 1"
    )
    elo_min_comparisons: int = knob(
        1, "models with fewer rated comparisons get no Elo rating and no tier (sw_ranking drops their rows)"
    )
    n_tiers: int = knob(10, "Elo tiers (at most one per rated model)")
    gamma: float = knob(1e5, "sw_ranking's similarity weight of a training prompt: gamma ** (1 + sim / max sim)")
    sw_pair_only: bool = knob(True, "sw_ranking learns from the direct strong-vs-weak comparisons only")
    mf_dim: int = knob(128, "mf's latent dimension")
    mf_epochs: int = knob(20, "mf's passes over the training comparisons (quick mode: 2)")
    mf_batch_size: int = knob(1024, "mf's comparisons per Adam step (whole prompts, about this many rows)")
    mf_lr: float = knob(1e-3, "mf's Adam learning rate")
    mf_noise_sigma: float = knob(0.02, "sigma of the Gaussian noise on the prompt embeddings while mf trains")
    mf_weight_decay: float = knob(1e-5, "mf's Adam weight decay")
    mf_source_bias: bool = knob(True, "mf learns a per-(source, model) bias while it trains (dropped at scoring)")
    mf_pair_weight: float = knob(10.0, "weight factor of the direct strong-vs-weak comparisons in mf")
    bert_pair_only: bool = knob(True, "bert learns from the direct strong-vs-weak comparisons only")
    bert_time_budget_s: float = knob(420.0, "wall-clock budget of bert's fine-tuning, seconds (quick mode: 60)")
    bert_max_tokens: int = knob(256, "truncation of bert's training prompts, tokens")
    bert_epochs: int = knob(3, "upper bound on bert's passes over its training examples")
    bert_lr: float = knob(1e-4, "bert's peak AdamW learning rate")
    prior_weights: _Pairs = knob(
        (("mf", 4.0), ("sw_ranking", 0.5), ("bert", 0.25)),
        "routers blended with the difficulty prior and at what weight, router=weight,... (empty: no prior)",
    )
    prior_ridge: float = knob(10.0, "ridge of the difficulty prior's regression on the LLMRouter labels")
    prior_standardise_on: int = knob(
        1000, "training prompts (evenly spread) whose router scores fix each blend's center and scale"
    )

    def __post_init__(self) -> None:
        for name in ("label_weights", "elo_source_weights", "prior_weights"):
            pairs = tuple((str(k), float(v)) for k, v in getattr(self, name))
            object.__setattr__(self, name, pairs)
            keys = [k for k, _ in pairs]
            if len(set(keys)) != len(keys):
                raise ValueError(f"{name}: a name occurs twice ({format_value(pairs)})")
            for key, weight in pairs:
                if not (math.isfinite(weight) and weight >= 0):
                    raise ValueError(f"{name}: {key}={weight} must be finite and >= 0")
        unknown = {k for k, _ in self.label_weights} - set(LABEL_KINDS)
        if unknown:
            raise ValueError(f"label_weights: unknown label kinds {sorted(unknown)}; know {LABEL_KINDS}")
        unknown = {k for k, _ in self.elo_source_weights} - set(SOURCES)
        if unknown:
            raise ValueError(f"elo_source_weights: unknown sources {sorted(unknown)}; know {SOURCES}")
        if self.encoder not in ENCODER_TIERS:
            raise ValueError(f"encoder: {self.encoder!r} is not one of {', '.join(ENCODER_TIERS)}")
        if self.encoder_model_dir is not None and not isinstance(self.encoder_model_dir, Path):
            object.__setattr__(self, "encoder_model_dir", Path(self.encoder_model_dir))
        if isinstance(self.seed, bool) or not 0 <= self.seed <= _MAX_SEED:
            raise ValueError(f"seed: must be an integer in [0, 2**63 - 1] (got {self.seed!r})")
        for name, low in (
            ("max_tokens", 2),  # room for [CLS] and [SEP]
            ("static_dim", 1),
            ("elo_min_comparisons", 1),
            ("n_tiers", 2),
            ("mf_dim", 1),
            ("mf_epochs", 1),
            ("mf_batch_size", 1),
            ("bert_max_tokens", 8),  # bert's trainer (`lmroute.export.train_bert.BertTrainConfig`) takes 8 to 512
            ("bert_epochs", 1),
            ("prior_standardise_on", 1),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{name}: must be >= {low} (got {getattr(self, name)})")
        if self.bert_max_tokens > 512:
            raise ValueError(f"bert_max_tokens: must be <= 512, bert's positions (got {self.bert_max_tokens})")
        if not 0.0 < self.bert_lr < 1.0:  # what bert's trainer takes (BertTrainConfig), said before any step runs
            raise ValueError(f"bert_lr: must be in (0, 1) (got {self.bert_lr!r})")
        for name, positive in (
            ("gamma", True),
            ("static_sif_a", True),
            ("mf_lr", True),
            ("mf_noise_sigma", False),
            ("mf_weight_decay", False),
            ("mf_pair_weight", False),
            ("bert_time_budget_s", True),
            ("bert_lr", True),
            ("prior_ridge", False),
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
                raise ValueError(f"{name}: must be finite and {'> 0' if positive else '>= 0'} (got {value!r})")
        try:
            rule = Truncation.parse(str(self.truncation))
        except ValueError as exc:
            raise ValueError(f"truncation: {exc}") from None
        object.__setattr__(self, "truncation", str(rule))
        if rule.rule == "head_tail" and rule.head_tokens > self.max_tokens - 3:
            raise ValueError(
                f"truncation: head_tail keeps at most max_tokens - 3 = {self.max_tokens - 3} head tokens "
                f"(got {rule.head_tokens})"
            )

    @property
    def truncation_rule(self) -> Truncation:
        """`truncation` as the rule the encoder, the bert trainer and the manifest take."""
        return Truncation.parse(self.truncation)

    def describe(self) -> str:
        """The fields that differ from the defaults, as `k=v` pairs ("default" when none)."""
        base = asdict(type(self)())
        diff = [f"{k}={v}" for k, v in asdict(self).items() if base[k] != v]
        return ", ".join(diff) or "default"


@dataclass(frozen=True, kw_only=True)
class BuildRecipe(Recipe):
    """What a router kind's `train` reads as `TrainContext.recipe`: the recipe and the build's quick mode
    (CI: a trainer shortens its training; numbers are not meaningful)."""

    quick: bool = knob(False, "CI mode: short training")

    @classmethod
    def of(cls, recipe: Recipe, *, quick: bool) -> BuildRecipe:
        values: dict[str, Any] = {f.name: getattr(recipe, f.name) for f in fields(Recipe)}
        return cls(**values, quick=quick)


SHIPPED = Recipe()
"""The shipped recipe (the defaults); trainers take their knobs' defaults from it."""
