"""Training of the mf (matrix factorisation) router in torch, as RouteLLM with one addition.

Model (RouteLLM): z = W e (no bias), logit_m = w . (P_m / ||P_m|| * z); a comparison a vs b is
scored sigmoid(logit_a - logit_b) and trained with BCE on the outcome; ties and self-battles are
dropped; Gaussian noise (sigma `noise_sigma`) is added to the frozen prompt embeddings; Adam.

Our addition (`source_bias=True`): label sources disagree in base rates (the data probe in
shared/data/README.md), so during training each model's logit gets a per-(source, model) bias
beta[source, m]; it absorbs source-specific base rates and is dropped at scoring time. beta is
centred per model (sum over sources of beta[s, m] * share of m's rows from s = 0) so that it only
holds the sources' deviations: a bias common to all sources stays in the text term.

Batching (a speed-up over RouteLLM's row batches, same objective): rows are grouped by prompt and a
step takes whole prompts, shuffled each epoch, until it holds about `batch_size` rows. The text
projection then runs once per prompt and step instead of once per row (prompts carry ~60 rows each
here), and the Gaussian noise is drawn once per prompt and step (same distribution per row, rows of
one prompt within a step share the draw). The gradient is unbiased for the same loss; an epoch over
~250k comparisons costs a fraction of a second instead of tens of seconds on one core.

Deterministic for a seed: torch.manual_seed, seeded generators for shuffling and noise, one thread
during training (restored afterwards).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from lmroute.export.data import LABEL_KINDS
from lmroute.export.recipe import SHIPPED, Recipe

__all__ = ["MFArtifacts", "pairwise_accuracy", "train_mf", "train_mf_recipe"]


@dataclass(frozen=True)
class MFArtifacts:
    """Trained mf weights (float32): text_proj W [dim, d_text], model_emb P [n_models, dim] (rows in
    `models` order, not normalised), classifier w [dim]; history: per-epoch mean training loss;
    source_bias: the training-only, centred [n_sources, n_models] bias (zeros when disabled);
    train_seconds: wall time of the training loop."""

    text_proj: NDArray[np.float32]
    model_emb: NDArray[np.float32]
    classifier: NDArray[np.float32]
    models: tuple[str, ...]
    history: tuple[float, ...]
    source_bias: NDArray[np.float32]
    train_seconds: float


class _MF(torch.nn.Module):
    """RouteLLM's MF model plus the optional per-(source, model) training bias."""

    def __init__(self, n_models: int, d_text: int, dim: int, source_share: torch.Tensor | None) -> None:
        super().__init__()
        self.P = torch.nn.Embedding(n_models, dim)
        self.text_proj = torch.nn.Linear(d_text, dim, bias=False)
        self.classifier = torch.nn.Linear(dim, 1, bias=False)
        self.bias = None
        if source_share is not None:
            self.bias = torch.nn.Parameter(torch.zeros(source_share.shape, dtype=torch.float32))
            self.register_buffer("source_share", source_share)

    def centred_bias(self) -> torch.Tensor:
        """[n_sources, n_models] bias, centred per model over its rows' sources (identifiable:
        a bias shared by every source of a model would duplicate the text term)."""
        assert self.bias is not None
        return self.bias - (self.source_share * self.bias).sum(dim=0, keepdim=True)

    def prompt_logits(self, e: torch.Tensor) -> torch.Tensor:
        """[n_prompts, n_models] logits of every model for each prompt embedding row."""
        p_unit = torch.nn.functional.normalize(self.P.weight, p=2, dim=1)
        return self.text_proj(e) @ (p_unit * self.classifier.weight).T

    def pair_logit(
        self,
        logits: torch.Tensor,
        local: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        source: torch.Tensor,
    ) -> torch.Tensor:
        """logit_a - logit_b (+ source bias) of rows whose prompt is row `local` of `logits`."""
        out = logits[local, a] - logits[local, b]
        if self.bias is not None:
            bias = self.centred_bias()
            out = out + bias[source, a] - bias[source, b]
        return out


def train_mf(
    comparisons: Any,
    prompt_emb: NDArray[np.floating],
    *,
    dim: int = SHIPPED.mf_dim,
    epochs: int,
    batch_size: int = SHIPPED.mf_batch_size,
    lr: float = SHIPPED.mf_lr,
    weight_decay: float = SHIPPED.mf_weight_decay,
    noise_sigma: float = SHIPPED.mf_noise_sigma,
    seed: int = SHIPPED.seed,
    source_bias: bool = SHIPPED.mf_source_bias,
    label_weights: Mapping[str, float] | None = None,
    row_weights: NDArray[np.floating] | None = None,
    device: str = "cpu",
) -> MFArtifacts:
    """Train mf on the non-tie, non-self comparisons; see the module docstring for the model.

    prompt_emb: [len(comparisons.prompts), d_text] float32, L2-normalised. label_weights: optional
    {label kind name: weight} used as BCE sample weights. row_weights: optional per-comparison
    weights [len(comparisons)] (finite, >= 0), multiplied into the sample weights (e.g. source
    weights from `lmroute.export.elo.comparison_weights`); rows of weight 0 are dropped. The knobs'
    defaults are the shipped recipe's (`lmroute.export.recipe.Recipe.mf_*`, seed).
    """
    if epochs < 1 or batch_size < 1 or dim < 1:
        raise ValueError(f"epochs, batch_size and dim must be >= 1 (got {epochs}, {batch_size}, {dim})")
    emb_np = np.asarray(prompt_emb, dtype=np.float32)
    if emb_np.ndim != 2 or emb_np.shape[0] != len(comparisons.prompts):
        raise ValueError(f"prompt_emb must have shape [{len(comparisons.prompts)}, d], got {emb_np.shape}")
    models = tuple(comparisons.models)
    a = np.asarray(comparisons.model_a, dtype=np.int64)
    b = np.asarray(comparisons.model_b, dtype=np.int64)
    outcome = np.asarray(comparisons.outcome, dtype=np.int64)
    keep = (outcome != 2) & (a != b)
    weights = np.ones(len(outcome), dtype=np.float32)
    if label_weights:
        unknown = set(label_weights) - set(LABEL_KINDS)
        if unknown:
            raise ValueError(f"label_weights has unknown label kinds {sorted(unknown)}")
        table = np.array([float(label_weights.get(k, 1.0)) for k in LABEL_KINDS], dtype=np.float32)
        weights = table[np.asarray(comparisons.label_kind, dtype=np.int64)]
        keep &= weights > 0.0
    if row_weights is not None:
        extra = np.asarray(row_weights, dtype=np.float32)
        if extra.shape != (len(outcome),):
            raise ValueError(f"row_weights must have shape ({len(outcome)},), got {extra.shape}")
        if not np.all(np.isfinite(extra)) or np.any(extra < 0.0):
            raise ValueError("row_weights must be finite and >= 0")
        weights = weights * extra
        keep &= weights > 0.0
    if not np.any(keep):
        raise ValueError("no non-tie comparison between two different models to train on")

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        perm_gen = torch.Generator().manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed + 1)
        dev = torch.device(device)
        rows = np.flatnonzero(keep)
        rows = rows[np.argsort(np.asarray(comparisons.prompt_idx)[rows], kind="stable")]
        row_prompt = np.asarray(comparisons.prompt_idx, dtype=np.int64)[rows]
        prompts, first, per_prompt = np.unique(row_prompt, return_index=True, return_counts=True)
        t_a = torch.from_numpy(a[rows]).to(dev)
        t_b = torch.from_numpy(b[rows]).to(dev)
        t_y = torch.from_numpy((outcome[rows] == 0).astype(np.float32)).to(dev)
        t_w = torch.from_numpy(weights[rows].astype(np.float32)).to(dev)
        t_s = torch.from_numpy(np.asarray(comparisons.source, dtype=np.int64)[rows]).to(dev)
        t_emb = torch.from_numpy(emb_np[prompts]).to(dev)
        share = None
        if source_bias:
            n_src, n_mod = len(comparisons.sources), len(models)
            src_rows = np.asarray(comparisons.source, dtype=np.int64)[rows]
            count = np.zeros((n_src, n_mod), dtype=np.float64)
            np.add.at(count, (src_rows, a[rows]), 1.0)
            np.add.at(count, (src_rows, b[rows]), 1.0)
            share = torch.from_numpy((count / np.maximum(count.sum(axis=0, keepdims=True), 1.0)).astype(np.float32))
        model = _MF(len(models), emb_np.shape[1], dim, share).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        history: list[float] = []
        start = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(len(prompts), generator=perm_gen).numpy()
            cnt = per_prompt[perm]
            ends = np.cumsum(cnt)
            order = np.repeat(first[perm] - (ends - cnt), cnt) + np.arange(int(ends[-1]))
            slot = np.repeat(np.arange(len(perm)), cnt)
            step_of_prompt = (ends - 1) // batch_size
            cuts = np.flatnonzero(np.diff(step_of_prompt)) + 1
            p_lo = np.concatenate([[0], cuts])
            p_hi = np.concatenate([cuts, [len(perm)]])
            t_order = torch.from_numpy(order).to(dev)
            t_slot = torch.from_numpy(slot).to(dev)
            total, total_w = 0.0, 0.0
            for lo, hi in zip(p_lo.tolist(), p_hi.tolist(), strict=True):
                r_lo = int(ends[lo - 1]) if lo > 0 else 0
                r_hi = int(ends[hi - 1])
                idx = t_order[r_lo:r_hi]
                e = t_emb[torch.from_numpy(perm[lo:hi]).to(dev)]
                if noise_sigma > 0.0:
                    e = e + noise_sigma * torch.randn(e.shape, generator=gen, device=dev)
                logits = model.prompt_logits(e)
                diff = model.pair_logit(logits, t_slot[r_lo:r_hi] - lo, t_a[idx], t_b[idx], t_s[idx])
                w = t_w[idx]
                loss_each = torch.nn.functional.binary_cross_entropy_with_logits(diff, t_y[idx], reduction="none")
                loss = (loss_each * w).sum() / w.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * float(w.sum())
                total_w += float(w.sum())
            history.append(total / total_w)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(prev_threads)

    n_src = len(comparisons.sources)
    bias = (
        model.centred_bias().detach().cpu().numpy()
        if model.bias is not None
        else np.zeros((n_src, len(models)), dtype=np.float32)
    )
    return MFArtifacts(
        text_proj=model.text_proj.weight.detach().cpu().numpy().astype(np.float32),
        model_emb=model.P.weight.detach().cpu().numpy().astype(np.float32),
        classifier=model.classifier.weight.detach().cpu().numpy().reshape(-1).astype(np.float32),
        models=models,
        history=tuple(history),
        source_bias=bias.astype(np.float32),
        train_seconds=seconds,
    )


def pairwise_accuracy(
    artifacts: MFArtifacts,
    comparisons: Any,
    prompt_emb: NDArray[np.floating],
    *,
    strong: str,
    weak: str,
) -> tuple[float, int]:
    """(accuracy, n) of sign(logit_strong - logit_weak) on the non-tie strong-vs-weak comparisons
    of `comparisons` (either side order); the training-only source bias is not used."""
    from lmroute.kernels.reference import mf_logits

    if tuple(comparisons.models) != artifacts.models:
        raise ValueError("comparisons.models differ from the models the artifacts were trained on")
    s, w = artifacts.models.index(strong), artifacts.models.index(weak)
    a = np.asarray(comparisons.model_a, dtype=np.int64)
    b = np.asarray(comparisons.model_b, dtype=np.int64)
    outcome = np.asarray(comparisons.outcome, dtype=np.int64)
    rows = (outcome != 2) & (((a == s) & (b == w)) | ((a == w) & (b == s)))
    if not np.any(rows):
        return float("nan"), 0
    emb = np.asarray(prompt_emb)[np.asarray(comparisons.prompt_idx)[rows]]
    logits = mf_logits(emb, artifacts.text_proj, artifacts.model_emb, artifacts.classifier)
    strong_pred = logits[:, s] > logits[:, w]
    strong_won = ((a[rows] == s) & (outcome[rows] == 0)) | ((b[rows] == s) & (outcome[rows] == 1))
    return float(np.mean(strong_pred == strong_won)), int(rows.sum())


def train_mf_recipe(
    comparisons: Any,
    prompt_emb: NDArray[np.floating],
    recipe: Recipe,
    *,
    row_weights: NDArray[np.floating] | None,
    epochs: int | None = None,
) -> MFArtifacts:
    """`train_mf` with every knob from `recipe` (the build's router kind and the validation harness
    train through this); `epochs` overrides recipe.mf_epochs (the build's quick mode)."""
    return train_mf(
        comparisons,
        prompt_emb,
        dim=recipe.mf_dim,
        epochs=recipe.mf_epochs if epochs is None else epochs,
        batch_size=recipe.mf_batch_size,
        lr=recipe.mf_lr,
        noise_sigma=recipe.mf_noise_sigma,
        weight_decay=recipe.mf_weight_decay,
        source_bias=recipe.mf_source_bias,
        seed=recipe.seed,
        label_weights=dict(recipe.label_weights),
        row_weights=row_weights,
    )
