"""The flags of the validation harness (``python -m lmroute.export.validate``).

The protocol's own flags (folds, pooling, decontamination, baselines, a built bundle), one flag per field
of the training recipe (`lmroute.export.recipe.Recipe`, derived as for `lmroute-export build`, without
variables) and of the harness-only knobs (`Experiment`), and shorthands that set knobs of mf and
sw_ranking together: --pair-weight, --pair-only, --no-source-bias, --prior-weight. --prior-weights
takes the recipe's `router=weight,...` or a bare list of weights, a sweep.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmroute.export.dataclass_flags import add_flags, format_value, parse_pairs, values_from
from lmroute.export.recipe import Recipe
from lmroute.export.validation_recipes import HARNESS_ROUTERS, Experiment

__all__ = ["DESCRIPTION", "build_parser", "parse_args"]

DESCRIPTION = "Validation harness: the RouteLLM evaluation protocol replayed on held-out *training* prompts."


class _SetAll(argparse.Action):
    """Store one parsed value under several destinations (a flag that sets knobs of two routers)."""

    def __init__(self, option_strings: list[str], dest: str, *, dests: Sequence[str], **kw: Any) -> None:
        super().__init__(option_strings, dest, **kw)
        self.dests = tuple(dests)

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        for dest in self.dests:
            setattr(namespace, dest, self.const if self.nargs == 0 else values)


class _PriorWeights(argparse.Action):
    """--prior-weights: `router=weight,...` sets the recipe's blend weights (as on `lmroute-export
    build`); a bare list `0,0.5,1` is a sweep (each router trained once per fold, blended at each)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        text = str(values)
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if parts and not any("=" in p for p in parts):
            try:
                namespace.prior_sweep = [float(p) for p in parts]
            except ValueError:
                parser.error(f"{option_string}: expected router=weight,... or a list of weights, got {text!r}")
            return
        try:
            namespace.prior_weights = parse_pairs(text)
        except ValueError as exc:
            parser.error(f"{option_string}: {exc}")


def build_parser() -> argparse.ArgumentParser:
    """The harness's parser: the protocol's flags, the recipe's (derived from `Recipe`, as on
    `lmroute-export build`, without variables), the harness-only knobs' (from `Experiment`) and the
    shorthands that set knobs of mf and sw_ranking together."""
    from lmroute.export.pipeline import REPO_ROOT

    ap = argparse.ArgumentParser(prog="python -m lmroute.export.validate", description=DESCRIPTION)
    ap.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    ap.add_argument("--cache-dir", type=Path, default=REPO_ROOT / ".cache")
    ap.add_argument("--routers", default="mf,sw_ranking", help=f"comma-separated, of {', '.join(HARNESS_ROUTERS)}")
    ap.add_argument("--folds", type=int, default=10, help="K of the K-fold split (10: fold 0 = pipeline's val)")
    ap.add_argument("--all-folds", action="store_true", help="run every fold, not only fold 0")
    ap.add_argument(
        "--pool", action="store_true", help="with --all-folds: one evaluation on the pooled out-of-fold scores"
    )
    ap.add_argument(
        "--decontaminate",
        type=float,
        default=0.95,
        help="drop val prompts this close (cosine) to a training prompt; <= -1 keeps all",
    )
    ap.add_argument("--random-seeds", type=int, default=10, help="seeds of the random baseline (its mean and std)")
    ap.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="score this built bundle's routers on fold 0 instead of training (bert included)",
    )
    add_flags(ap.add_argument_group("training recipe (lmroute.export.recipe.Recipe)"), Recipe, skip=("prior_weights",))
    add_flags(ap.add_argument_group("harness-only knobs (Experiment)"), Experiment, skip=("recipe",))
    short = ap.add_argument_group("the prior's blend weights, and shorthands for knobs of mf and sw_ranking")
    short.add_argument(
        "--prior-weights",
        action=_PriorWeights,
        dest="prior_weights",
        default=None,
        metavar="R=W,...|W,W,...",
        help="router=weight,...: the recipe's blend weights (default "
        f"{format_value(Recipe().prior_weights)}; empty: none); a bare list of weights: a sweep, each router "
        "trained once per fold and blended at every weight (with --bundle: default 0,0.5,1,2,4)",
    )
    short.add_argument(
        "--prior-weight",
        action=_SetAll,
        dests=("prior_weights",),
        type=_every_router_at,
        default=None,
        metavar="W",
        help="blend every router with the difficulty prior at weight W (0: the routers alone)",
    )
    short.add_argument(
        "--pair-weight",
        action=_SetAll,
        dests=("mf_pair_weight", "sw_pair_weight"),
        type=float,
        default=None,
        metavar="FLOAT",
        help="--mf-pair-weight and --sw-pair-weight at once",
    )
    short.add_argument(
        "--pair-only",
        action=_SetAll,
        dests=("mf_pair_only", "sw_pair_only"),
        nargs=0,
        const=True,
        default=None,
        help="--mf-pair-only and --sw-pair-only at once",
    )
    short.add_argument(
        "--no-source-bias",
        action="store_const",
        dest="mf_source_bias",
        const=False,
        default=None,
        help="= --no-mf-source-bias",
    )
    return ap


def _every_router_at(text: str) -> tuple[tuple[str, float], ...]:
    """--prior-weight W -> every harness router at weight W."""
    return tuple((name, float(text)) for name in HARNESS_ROUTERS)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Experiment, list[float] | None]:
    """The parsed flags, the experiment they describe and the prior-weight sweep (None: no sweep).

    With a sweep the recipe blends nothing (the sweep blends); giving both is an error."""
    ap = build_parser()
    args = ap.parse_args(argv)
    sweep: list[float] | None = getattr(args, "prior_sweep", None)
    try:
        recipe_values = values_from(args, Recipe)
        if sweep is not None and "prior_weights" in recipe_values:
            raise ValueError("a sweep (--prior-weights W,W,...) replaces the recipe's prior weights: give one")
        if sweep is not None:
            recipe_values["prior_weights"] = ()
        experiment = Experiment(recipe=Recipe(**recipe_values), **values_from(args, Experiment, skip=("recipe",)))
    except ValueError as exc:
        ap.error(str(exc))
    return args, experiment, sweep
