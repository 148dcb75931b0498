"""Near-duplicate check of the training prompts against the eval sets (the paper's contamination step).

For every eval prompt (MT-Bench turn 1, MMLU, GSM8K, after the eval sets' own decontamination) the
highest cosine similarity to any training prompt (the comparisons' prompts and the difficulty labels'
questions) is computed with the bundle's encoder; pairs at or
above the threshold (0.95, as the paper) are reported. The eval sets are never used for training, so
the fix for a hit is to drop the training prompt, not the eval prompt: `training_prompts_to_drop`
names them.

`eval_prompt_keys` is the cheap check the build runs on every load besides that list: the eval prompts,
casefolded with whitespace collapsed (`prompt_key`); a training prompt with the same key is dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EVAL_SETS = ("mt_bench", "mmlu", "gsm8k")

log = logging.getLogger(__name__)


def prompt_key(text: str) -> str:
    """What an exact match compares: the text casefolded, its whitespace runs made one space, stripped."""
    return " ".join(text.casefold().split())


def eval_prompt_keys(data_dir: Path) -> frozenset[str]:
    """`prompt_key` of every prompt the eval sets score (MT-Bench turn 1, MMLU, GSM8K, as `load_eval`
    reads them); only the prompts are read. Empty, with a warning, when `data_dir` has no eval/ folder."""
    from lmroute.export.evalsets import load_eval

    if not (Path(data_dir) / "eval").is_dir():
        log.warning("%s: no eval/ folder: training prompts are not checked against the eval prompts", data_dir)
        return frozenset()
    return frozenset(prompt_key(p) for name in EVAL_SETS for p in load_eval(name, Path(data_dir)).prompts)


@dataclass(frozen=True)
class NearDuplicate:
    """One eval prompt whose nearest training prompt is at least `threshold` similar."""

    benchmark: str
    eval_prompt: str
    train_prompt: str
    cosine: float


def near_duplicates(
    eval_emb: np.ndarray,
    train_emb: np.ndarray,
    *,
    threshold: float,
    chunk: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """For each eval row: (index of the most similar training row, its cosine). Rows are L2-normalised.

    Returns arrays of length len(eval_emb); callers keep the rows with cosine >= threshold.
    """
    if eval_emb.ndim != 2 or train_emb.ndim != 2 or eval_emb.shape[1] != train_emb.shape[1]:
        raise ValueError(f"embedding shapes do not match: eval {eval_emb.shape}, train {train_emb.shape}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold: {threshold} must be in (0, 1]")
    best_idx = np.zeros(len(eval_emb), dtype=np.int64)
    best_cos = np.full(len(eval_emb), -np.inf, dtype=np.float64)
    for start in range(0, len(eval_emb), chunk):
        sims = eval_emb[start : start + chunk] @ train_emb.T
        best_idx[start : start + chunk] = sims.argmax(axis=1)
        best_cos[start : start + chunk] = sims.max(axis=1)
    return best_idx, best_cos


def find_contamination(
    train_prompts: Sequence[str],
    train_emb: np.ndarray,
    evalsets: dict[str, tuple[Sequence[str], np.ndarray]],
    *,
    threshold: float = 0.95,
) -> list[NearDuplicate]:
    """Every (eval prompt, nearest training prompt) pair with cosine >= threshold, per benchmark."""
    found: list[NearDuplicate] = []
    for bench, (prompts, emb) in evalsets.items():
        idx, cos = near_duplicates(emb, train_emb, threshold=threshold)
        for i in np.flatnonzero(cos >= threshold):
            found.append(NearDuplicate(bench, prompts[i], train_prompts[idx[i]], round(float(cos[i]), 6)))
    return found


def main(args: argparse.Namespace) -> int:
    """`lmroute-export contamination`: embed training and eval prompts (cached) and report hits."""
    from lmroute.export.data import load_comparisons, load_difficulty_labels
    from lmroute.export.embed_cache import embed_texts
    from lmroute.export.evalsets import load_eval
    from lmroute.export.pipeline import ensure_encoder, open_encoder

    enc_dir, _ = ensure_encoder(None, args.cache_dir, 256)
    encoder, enc_id = open_encoder(enc_dir, 256)
    cache = args.cache_dir / "embeddings"
    train_prompts = list(
        dict.fromkeys(
            [*load_comparisons(args.data_dir).comparisons.prompts, *load_difficulty_labels(args.data_dir).prompts]
        )
    )
    train_emb = embed_texts(encoder, train_prompts, cache, encoder_id=enc_id)
    sets = {}
    for name in EVAL_SETS:
        es = load_eval(name, args.data_dir)
        sets[name] = (list(es.prompts), embed_texts(encoder, list(es.prompts), cache, encoder_id=enc_id))
    hits = find_contamination(train_prompts, train_emb, sets, threshold=args.threshold)
    summary = {
        "threshold": args.threshold,
        "n_train_prompts": len(train_prompts),
        "n_eval_prompts": {k: len(v[0]) for k, v in sets.items()},
        "n_hits": {k: sum(h.benchmark == k for h in hits) for k in sets},
        "training_prompts_to_drop": sorted({h.train_prompt for h in hits}),
        "hits": [h.__dict__ for h in hits],
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps({k: summary[k] for k in ("threshold", "n_train_prompts", "n_eval_prompts", "n_hits")}, indent=2))
    return 0
