"""Data for routing among N priced models: one quality matrix and one cost matrix per dataset.

``load_routerbench(data_dir)``: RouterBench's ARC-Challenge, MBPP and Winogrande files
(``train/routerbench_golden``): 0/1 correctness of 11 models and the real USD cost of every answer
(``<model>|total_cost``). The routing prompt is the final question of the prompt list (the shared 5-shot
prefix is cut, as for the pairwise tables of ``lmroute.export.data``); the cost stays that of the whole
prompt as it was sent.

``load_llmrouter(data_dir)``: LLMRouter's scores in [0, 1] of 9 open models (``train/llmrouter``). The
file has no costs and no task names: costs come from list prices and a token count
(``lmroute.export.multi_prices``), and every row's task is ``"llmrouter"``.

A row with a missing or malformed cell is left out whole and reported as a ``RowIssue`` (file, 1-based
line, reason) in the table's ``issues``; nothing is dropped silently. ``split_by_prompt`` makes the
held-out split: a fixed hash of the prompt text, so repeated prompts always land on the same side.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmroute.export.data import (
    DIFFICULTY_FILE,
    ROUTERBENCH_DIR,
    ROUTERBENCH_TASKS,
    RowIssue,
    _csv_records,
    _routerbench_prompt,
    jsonl_records,
    open_data_file,
)
from lmroute.export.multi_prices import LLMROUTER_PRICES, OUTPUT_TOKENS, ModelPrice, answer_cost_usd, approx_tokens
from lmroute.export.names import normalize_model_name

__all__ = ["MultiModelTable", "load_llmrouter", "load_routerbench", "split_by_prompt"]

log = logging.getLogger(__name__)

_ROUTERBENCH_META = frozenset({"sample_id", "prompt", "eval_name", "oracle_model_to_route_to"})
_COST_SUFFIX = "|total_cost"
LLMROUTER_TASK = "llmrouter"


@dataclass(frozen=True, eq=False)
class MultiModelTable:
    """Every model's quality and cost on every prompt of one dataset.

    Row i is prompt ``prompts[i]`` of task ``tasks[i]``; column j is model ``models[j]`` (normalised
    names, sorted). ``quality[i, j]`` in [0, 1] is how good model j's answer was (1 = right);
    ``cost[i, j]`` >= 0 is what that answer cost, USD. ``issues``: rows left out, with file and line.
    """

    name: str
    prompts: tuple[str, ...]
    tasks: tuple[str, ...]
    models: tuple[str, ...]
    quality: np.ndarray
    cost: np.ndarray
    issues: tuple[RowIssue, ...] = ()

    def __post_init__(self) -> None:
        n, m = len(self.prompts), len(self.models)
        if len(self.tasks) != n:
            raise ValueError(f"MultiModelTable.tasks: {len(self.tasks)} entries for {n} prompts")
        if list(self.models) != sorted(set(self.models)):
            raise ValueError("MultiModelTable.models: must be sorted and unique")
        for field_name in ("quality", "cost"):
            arr = getattr(self, field_name)
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float64 or arr.shape != (n, m):
                raise ValueError(f"MultiModelTable.{field_name}: expected float64 [{n}, {m}]")
            if not np.isfinite(arr).all():
                raise ValueError(f"MultiModelTable.{field_name}: holds NaN or infinity")
        if n and (self.quality.min() < 0 or self.quality.max() > 1):
            raise ValueError("MultiModelTable.quality: values outside [0, 1]")
        if n and self.cost.min() < 0:
            raise ValueError("MultiModelTable.cost: negative cost")

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, rows: np.ndarray | Sequence[int]) -> MultiModelTable:
        """The rows at integer indices ``rows`` (in that order); models and issues are kept."""
        idx = np.asarray(rows, dtype=np.int64)
        return MultiModelTable(
            name=self.name,
            prompts=tuple(self.prompts[i] for i in idx),
            tasks=tuple(self.tasks[i] for i in idx),
            models=self.models,
            quality=self.quality[idx],
            cost=self.cost[idx],
            issues=self.issues,
        )


def split_by_prompt(prompts: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows) as sorted integer indices. The val prompts are the ``round(val_fraction x
    distinct prompts)`` distinct prompts with the smallest sha256(seed, text); a repeated prompt's rows
    all fall on its side. Stable under reordering of the rows."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"split_by_prompt: val_fraction must be in (0, 1), got {val_fraction}")
    distinct = sorted(set(prompts), key=lambda t: hashlib.sha256(f"{seed}\0{t}".encode()).digest())
    val_prompts = set(distinct[: round(val_fraction * len(distinct))])
    is_val = np.fromiter((p in val_prompts for p in prompts), dtype=bool, count=len(prompts))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _unit_number(raw: str, *, binary: bool) -> float | None:
    """A finite number in [0, 1] (exactly 0 or 1 when ``binary``), or None."""
    try:
        value = float(raw)
    except ValueError:
        return None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0) or (binary and value not in (0.0, 1.0)):
        return None
    return value


def _cost_number(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def load_routerbench(data_dir: Path) -> MultiModelTable:
    """RouterBench's three golden files as one table (file order: ARC, MBPP, Winogrande).

    A row is left out (and reported) when its prompt is not a python list of strings, or when a model's
    correctness is not 0/1 or its cost is not a number >= 0, the cell empty included. Every file must
    name the same models; otherwise ValueError."""
    issues: list[RowIssue] = []
    prompts: list[str] = []
    tasks: list[str] = []
    quality: list[list[float]] = []
    cost: list[list[float]] = []
    models: tuple[str, ...] | None = None
    for file_name in ROUTERBENCH_TASKS.values():
        path, handle = open_data_file(Path(data_dir), f"{ROUTERBENCH_DIR}/{file_name}")
        raw_models: list[str] | None = None
        for line, row in _csv_records(path, handle, ("prompt",), issues):
            if raw_models is None:
                raw_models = [c for c in row if c not in _ROUTERBENCH_META and "|" not in c]
                names = tuple(sorted(normalize_model_name(c) for c in raw_models))
                if models is not None and names != models:
                    raise ValueError(f"{path}: models {list(names)} differ from the other files' {list(models)}")
                models = names
                missing = [c for c in raw_models if c + _COST_SUFFIX not in row]
                if missing:
                    raise ValueError(f"{path}: no cost column for {missing}")
                raw_models = sorted(raw_models, key=normalize_model_name)
            prompt = _routerbench_prompt(row["prompt"])
            if prompt is None:
                issues.append(RowIssue(str(path), line, "prompt is not a python list of non-empty strings"))
                continue
            q = [_unit_number(row[c].strip(), binary=True) for c in raw_models]
            c_ = [_cost_number(row[c + _COST_SUFFIX].strip()) for c in raw_models]
            bad_q = [m for m, v in zip(raw_models, q, strict=True) if v is None]
            bad_c = [m for m, v in zip(raw_models, c_, strict=True) if v is None]
            if bad_q or bad_c:
                parts = []
                if bad_q:
                    parts.append(f"correctness not 0/1 for {', '.join(bad_q)}")
                if bad_c:
                    parts.append(f"cost not a number >= 0 for {', '.join(bad_c)}")
                issues.append(RowIssue(str(path), line, "; ".join(parts) + " (row left out)"))
                continue
            prompts.append(prompt)
            tasks.append(row.get("eval_name", "").strip() or file_name.removesuffix("_train.csv"))
            quality.append([float(v) for v in q if v is not None])
            cost.append([float(v) for v in c_ if v is not None])
    if issues:
        log.warning("routerbench: %d rows left out (see issues)", len(issues))
    m = len(models or ())
    return MultiModelTable(
        name="routerbench",
        prompts=tuple(prompts),
        tasks=tuple(tasks),
        models=models or (),
        quality=np.asarray(quality, dtype=np.float64).reshape(len(prompts), m),
        cost=np.asarray(cost, dtype=np.float64).reshape(len(prompts), m),
        issues=tuple(issues),
    )


def load_llmrouter(
    data_dir: Path,
    *,
    prices: Mapping[str, ModelPrice] = LLMROUTER_PRICES,
    output_tokens: int = OUTPUT_TOKENS,
) -> MultiModelTable:
    """LLMRouter's questions with every priced model's score and the cost of its answer.

    The models are the keys of ``prices``. A line is left out (and reported) when its question is
    missing, when it lacks a score for a priced model, or when a score is not a number in [0, 1]; scores
    of models without a price are ignored. Cost = ``approx_tokens(question)`` input tokens and
    ``output_tokens`` output tokens at the model's price."""
    path, handle = open_data_file(Path(data_dir), DIFFICULTY_FILE)
    models = tuple(sorted(prices))
    issues: list[RowIssue] = []
    prompts: list[str] = []
    quality: list[list[float]] = []
    cost: list[list[float]] = []
    for line, rec in jsonl_records(path, handle, issues):
        question = rec.get("question")
        scores = rec.get("scores")
        if not isinstance(question, str) or not question.strip():
            issues.append(RowIssue(str(path), line, "missing field question"))
            continue
        if not isinstance(scores, dict):
            issues.append(RowIssue(str(path), line, "field scores must be an object {model: score}"))
            continue
        by_model = {normalize_model_name(k): v for k, v in scores.items() if isinstance(k, str)}
        absent = [m for m in models if m not in by_model]
        if absent:
            issues.append(RowIssue(str(path), line, f"no score for {', '.join(absent)} (row left out)"))
            continue
        values = [by_model[m] for m in models]
        bad = [
            (m, v)
            for m, v in zip(models, values, strict=True)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 <= v <= 1)
        ]
        if bad:
            issues.append(RowIssue(str(path), line, f"bad score {bad[0][1]!r} for {bad[0][0]} (expected [0, 1])"))
            continue
        text = question.strip()
        tokens = approx_tokens(text)
        prompts.append(text)
        quality.append([float(v) for v in values])
        cost.append([answer_cost_usd(prices[m], tokens, output_tokens) for m in models])
    if issues:
        log.warning("llmrouter: %d rows left out (see issues)", len(issues))
    return MultiModelTable(
        name="llmrouter",
        prompts=tuple(prompts),
        tasks=(LLMROUTER_TASK,) * len(prompts),
        models=models,
        quality=np.asarray(quality, dtype=np.float64).reshape(len(prompts), len(models)),
        cost=np.asarray(cost, dtype=np.float64).reshape(len(prompts), len(models)),
        issues=tuple(issues),
    )
