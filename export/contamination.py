"""Near-duplicate check of the training prompts against the eval sets (the paper's contamination step).

For every eval prompt (MT-Bench turn 1, MMLU, GSM8K, after the eval sets' own decontamination) every
training prompt (the comparisons' prompts and the difficulty labels' questions) at or above the
threshold of cosine similarity (0.95, as the paper) is reported, embedded with all-MiniLM-L6-v2 (the
default encoder, cut by `head`). The eval sets are never used for training, so
the fix for a hit is to drop the training prompt, not the eval prompt: `training_prompts_to_drop`
names them.

`eval_prompt_keys` is the cheap check the build runs on every load besides that list: the eval prompts,
casefolded with whitespace collapsed (`prompt_key`); a training prompt with the same key is dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
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
    """One (eval prompt, training prompt) pair at least `threshold` similar."""

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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (eval row, training row) pair with cosine >= threshold: (eval indices, training indices,
    cosines), eval rows in order. Rows are L2-normalised. Every pair, not each eval row's nearest: two
    near-copies of one eval prompt in the training data are both found."""
    if eval_emb.ndim != 2 or train_emb.ndim != 2 or eval_emb.shape[1] != train_emb.shape[1]:
        raise ValueError(f"embedding shapes do not match: eval {eval_emb.shape}, train {train_emb.shape}")
    check_threshold(threshold)
    rows, cols, cosines = [], [], []
    for start in range(0, len(eval_emb), chunk):
        sims = eval_emb[start : start + chunk] @ train_emb.T
        r, c = np.nonzero(sims >= threshold)
        rows.append(r + start)
        cols.append(c)
        cosines.append(sims[r, c].astype(np.float64))
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(cosines)


def check_threshold(threshold: float) -> None:
    """ValueError unless `threshold` is a cosine in (0, 1]."""
    if not 0.0 < threshold <= 1.0:  # also refuses NaN
        raise ValueError(f"threshold: {threshold} must be in (0, 1]")


def find_contamination(
    train_prompts: Sequence[str],
    train_emb: np.ndarray,
    evalsets: dict[str, tuple[Sequence[str], np.ndarray]],
    *,
    threshold: float = 0.95,
) -> list[NearDuplicate]:
    """Every (eval prompt, training prompt) pair with cosine >= threshold, per benchmark."""
    found: list[NearDuplicate] = []
    for bench, (prompts, emb) in evalsets.items():
        rows, cols, cos = near_duplicates(emb, train_emb, threshold=threshold)
        for i, j, c in zip(rows.tolist(), cols.tolist(), cos.tolist(), strict=True):
            found.append(NearDuplicate(bench, prompts[i], train_prompts[j], round(c, 6)))
    return found


def main(args: argparse.Namespace) -> int:
    """`lmroute-export contamination`: embed training and eval prompts (cached) and report hits."""
    try:
        check_threshold(args.threshold)  # before the prompts are embedded
    except ValueError as exc:
        print(f"contamination: --{exc}", file=sys.stderr)
        return 2
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
