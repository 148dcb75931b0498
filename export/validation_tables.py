"""Quality tables and metrics of the validation harness (`lmroute.export.validate`).

For the validation prompts of a split, `pair_tables` builds, per source that holds the default pair,
a per-prompt quality table (`PairTable`: strong_q, weak_q); `evaluate_table` scores one router on one
table and reports APGR and CPT(50 %) next to the random router (mean and std over seeds) and the
prompt-length baseline (longer prompt -> strong model); `kfold_by_prompt` makes the splits;
`summarise` / `format_results` average results over folds and render them.

Quality per source kind (what each source stands in for):

* ``arena_bench_v1`` (``score``, like MT-Bench): each model's raw GPT-4 judge score 1-10, re-read
  from the data file by `load_judge_scores` (pairwise outcomes would lose the score gaps).
* ``routerbench_*`` (``correctness``, like MMLU / GSM8K): from the strong-vs-weak outcome, win =
  (1, 0), loss = (0, 1), tie = (0.5, 0.5). This is exact for 0/1 correctness: a tie adds the same
  value to the routed, all-strong and all-weak means, which cancels in PGR, and thresholds never
  look at quality.
* ``alpaca_eval`` and any other source with the pair (``preference``): the same reading of the
  pairwise verdicts, averaged over repeated verdicts of one prompt.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lmroute.export import names
from lmroute.export.data import ARENA_BENCH_FILE, Comparisons, not_utf8, open_data_file
from lmroute.export.metrics import random_baseline, router_metrics
from lmroute.export.names import normalize_model_name

__all__ = [
    "JUDGE_SCORE_SOURCE",
    "PairTable",
    "SourceResult",
    "Summary",
    "evaluate_table",
    "far_from",
    "format_results",
    "kfold_by_prompt",
    "length_scores",
    "load_judge_scores",
    "pair_tables",
    "subset_table",
    "summarise",
]

JUDGE_SCORE_SOURCE = "arena_bench_v1"


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
                f"PairTable {self.source}: {n} prompts but strong_q {self.strong_q.shape}, weak_q {self.weak_q.shape}"
            )


def load_judge_scores(data_dir: Path) -> dict[str, dict[str, float]]:
    """{prompt text (stripped): {normalised model name: GPT-4 score}} from the arena-bench file.

    Cells that are empty or not a finite number in [1, 10] are left out (data.py reports them)."""
    path, handle = open_data_file(Path(data_dir), ARENA_BENCH_FILE)
    out: dict[str, dict[str, float]] = {}
    with handle:
        for row in csv.DictReader(handle):
            prompt = (row.get("prompt") or "").strip()
            if not prompt or not_utf8(prompt):  # data.py reports a row that is not UTF-8
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
    s_idx = comps.models.index(strong)
    a, b, o = comps.model_a, comps.model_b, comps.outcome
    pair_row = comps.pair_mask(strong, weak)
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


def far_from(emb: NDArray[np.floating], *refs: NDArray[np.floating] | None, threshold: float) -> NDArray[np.bool_]:
    """Mask of the rows of `emb` whose cosine to every row of every array in `refs` is < `threshold`
    (rows L2-normalised; a None or empty array removes nothing): the harness's decontamination."""
    keep = np.ones(len(emb), dtype=bool)
    for ref in refs:
        if ref is not None and len(ref):
            keep &= (emb @ ref.T).max(axis=1) < threshold
    return keep


def subset_table(table: PairTable, keep: NDArray[np.bool_]) -> PairTable:
    """The rows of `table` where `keep` is True."""
    return PairTable(
        table.source,
        table.kind,
        tuple(p for p, k in zip(table.prompts, keep, strict=True) if k),
        table.strong_q[keep],
        table.weak_q[keep],
    )


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
    """Markdown table of `summarise(results)`: APGR (+- se over folds), z, CPT50 in %, baselines.

    random APGR std is the per-fold std divided by sqrt(n folds): the noise of a fold mean;
    z = (APGR - random APGR) / that std."""
    lines = [f"### {title}"] if title else []
    lines += [
        "| router | source | folds | prompts | APGR | z | CPT50 % | random APGR (std) | random CPT50 % "
        "| length APGR | length CPT50 % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in sorted(summarise(results), key=lambda s: (s.router, s.source)):
        se = f" +- {s.apgr_se:.3f}" if s.n_folds > 1 else ""
        z = (s.apgr - s.random_apgr) / s.random_apgr_std if s.random_apgr_std > 0 else float("nan")
        lines.append(
            f"| {s.router} | {s.source} | {s.n_folds} | {s.n_prompts} | {s.apgr:.3f}{se} | {z:+.1f} "
            f"| {100 * s.cpt50:.1f} | "
            f"{s.random_apgr:.3f} ({s.random_apgr_std:.3f}) | {100 * s.random_cpt50:.1f} | "
            f"{s.length_apgr:.3f} | {100 * s.length_cpt50:.1f} |"
        )
    return "\n".join(lines) + "\n"
