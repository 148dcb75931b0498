"""Training the `quality` router kind: per-model predicted quality from golden multi-model labels.

The labels are RouterBench's correctness of 11 models (`lmroute.export.multi_data.load_routerbench`),
restricted to the prompts of the build's training split (so the build's validation prompts stay
unseen) and to the models the bundle rates. The fit is `lmroute.export.multi_policy.fit_logistic`, its
penalty chosen among `lmroute.bundle.kinds.quality.ALPHAS` by log loss on a fixed fifth of those
prompts (a hash split), then refitted on all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmroute.bundle.kinds.base import TrainContext
from lmroute.bundle.kinds.quality import ALPHAS
from lmroute.export.multi_data import load_routerbench, split_by_prompt
from lmroute.export.multi_policy import fit_logistic

__all__ = ["QualityFit", "train_quality"]

LABELS = "routerbench golden correctness (arc_challenge, mbpp, winogrande train files)"


@dataclass(frozen=True)
class QualityFit:
    models: tuple[str, ...]
    center: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    alpha: float
    labels: str
    n_prompts: int


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def train_quality(ctx: TrainContext) -> QualityFit:
    """Fit the quality heads on the training split's RouterBench prompts (module docstring)."""
    if ctx.data_dir is None:
        raise ValueError("quality router: the build's data directory is needed (TrainContext.data_dir)")
    table = load_routerbench(ctx.data_dir)
    models = tuple(m for m in table.models if m in set(ctx.models))
    for model in (ctx.strong, ctx.weak):
        if model not in models:
            raise ValueError(f"quality router: the default pair's {model} has no golden labels in {LABELS}")
    where = {p: i for i, p in enumerate(ctx.comparisons.prompts)}
    rows = [i for i, p in enumerate(table.prompts) if p in where]
    if len(rows) < 50:
        raise ValueError(f"quality router: {len(rows)} training prompts with golden labels (need >= 50)")
    emb = ctx.embeddings[[where[table.prompts[i]] for i in rows]].astype(np.float64)
    cols = [table.models.index(m) for m in models]
    y = table.quality[np.ix_(rows, cols)]
    iters = 5 if ctx.recipe.quick else 25
    fit_part, held = split_by_prompt([table.prompts[i] for i in rows], 0.2, seed=ctx.recipe.seed)
    losses = {
        alpha: _log_loss(fit_logistic(emb[fit_part], y[fit_part], alpha, max_iter=iters).predict(emb[held]), y[held])
        for alpha in ALPHAS
    }
    alpha = min(losses, key=lambda a: (losses[a], a))
    fit = fit_logistic(emb, y, alpha, max_iter=iters)
    ctx.notes.update(
        n_prompts=len(rows),
        models=list(models),
        alpha=alpha,
        held_out_log_loss={str(a): round(v, 4) for a, v in losses.items()},
    )
    return QualityFit(
        models=models,
        center=fit.center.astype(np.float32),
        weights=fit.weights.astype(np.float32),
        bias=fit.bias.astype(np.float32),
        alpha=alpha,
        labels=LABELS,
        n_prompts=len(rows),
    )
