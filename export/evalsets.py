"""Evaluation sets of the RouteLLM paper (MT-Bench, MMLU, GSM8K) for the strong/weak pair.

``load_eval(name, data_dir)`` reads ``<data_dir>/eval/<name>/...`` (plain or ``.gz``), drops the prompts
listed in ``contaminated_prompts.jsonl`` (``eval_prompt``, matched after whitespace strip) and returns an
``EvalSet``: the prompts the router scores and the quality of the strong and weak models on each.

* ``mt_bench``: the router sees turn 1; quality = mean GPT-4 score (1-10) of both turns.
* ``mmlu``: the 57 subject files in file-name order; quality = correctness 0/1.
* ``gsm8k``: quality = correctness 0/1.

Eval data must be exact, so a malformed row raises ``EvalDataError`` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmroute.export.data import RowIssue, evenly_spaced, jsonl_records, not_utf8, open_data_file
from lmroute.export.names import STRONG, WEAK, normalize_model_name

__all__ = ["EVAL_NAMES", "EvalDataError", "EvalSet", "load_eval"]

EVAL_NAMES: tuple[str, ...] = ("mt_bench", "mmlu", "gsm8k")
_BOOL = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}


class EvalDataError(ValueError):
    """A malformed evaluation file; the message names the file and the 1-based line."""


@dataclass(frozen=True, eq=False)
class EvalSet:
    """One decontaminated benchmark: ``prompts[i]`` is what the router scores; ``strong_quality[i]`` /
    ``weak_quality[i]`` the strong / weak model's quality on it; ``ids[i]`` a stable row id."""

    name: str
    prompts: tuple[str, ...]
    strong_quality: np.ndarray
    weak_quality: np.ndarray
    n_dropped_contaminated: int
    ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.prompts)
        for field_name in ("strong_quality", "weak_quality"):
            arr = getattr(self, field_name)
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float64 or arr.shape != (n,):
                raise ValueError(f"EvalSet.{field_name}: expected float64 of shape ({n},)")
        if self.ids and len(self.ids) != n:
            raise ValueError(f"EvalSet.ids: {len(self.ids)} ids for {n} prompts")

    def __len__(self) -> int:
        return len(self.prompts)


def _jsonl(data_dir: Path, rel: str) -> Iterator[tuple[Path, int, dict]]:
    """(path, line, record) per JSON line; unlike training data, a bad eval line is an error."""
    path, handle = open_data_file(data_dir, rel)
    issues: list[RowIssue] = []
    for line_no, record in jsonl_records(path, handle, issues):
        if issues:
            break
        yield path, line_no, record
    if issues:
        raise EvalDataError(f"{issues[0].file}:{issues[0].line}: {issues[0].reason}")


def _contaminated(data_dir: Path, name: str) -> set[str]:
    out: set[str] = set()
    for path, line, rec in _jsonl(data_dir, f"eval/{name}/contaminated_prompts.jsonl"):
        text = rec.get("eval_prompt")
        if not isinstance(text, str):
            raise EvalDataError(f"{path}:{line}: missing field eval_prompt")
        out.add(text.strip())
    return out


def _pair_columns(path: Path, header: list[str]) -> tuple[str, str]:
    """The strong and weak correctness columns of a CSV header (names normalised)."""
    by_name = {normalize_model_name(c): c for c in header if c != "prompt" and not c.endswith("_response")}
    missing = [c for c in ("prompt",) if c not in header] + [m for m in (STRONG, WEAK) if m not in by_name]
    if missing:
        raise EvalDataError(f"{path}:1: missing column(s) {', '.join(missing)}")
    return by_name[STRONG], by_name[WEAK]


def _readable_lines(path: Path, handle: io.TextIOBase) -> Iterator[str]:
    """The lines of an opened data file; one whose compressed stream ends early or is corrupt is an
    EvalDataError naming the line that cannot be read."""
    line_no = 0
    try:
        for line in handle:
            yield line
            line_no += 1
    except (EOFError, OSError, zlib.error) as exc:  # gzip: truncated (EOFError), corrupt (BadGzipFile, zlib)
        raise EvalDataError(
            f"{path}:{line_no + 1}: unreadable after line {line_no} ({type(exc).__name__}: {exc})"
        ) from None


def _csv_records(path: Path, lines: Iterator[str]) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) for each CSV record of `lines`; a record CSV cannot read (a field over its
    field size limit, often an unterminated quote) is an EvalDataError naming its first line."""
    reader = csv.reader(lines)
    end_of_previous = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise EvalDataError(f"{path}:{end_of_previous + 1}: unreadable CSV ({exc})") from None
        start, end_of_previous = end_of_previous + 1, reader.line_num
        yield start, fields


def _correctness_rows(data_dir: Path, rel: str, id_prefix: str) -> Iterator[tuple[str, str, float, float]]:
    """(id, prompt, strong, weak) for every row of a correctness CSV."""
    path, handle = open_data_file(data_dir, rel)
    with handle:
        records = _csv_records(path, _readable_lines(path, handle))
        header = next(records, (1, None))[1]
        if header is None:
            raise EvalDataError(f"{path}:1: empty file (no header)")
        strong_col, weak_col = _pair_columns(path, header)
        index = {c: i for i, c in enumerate(header)}
        row_no = 0
        for start, fields in records:
            if any(not_utf8(f) for f in fields):
                raise EvalDataError(f"{path}:{start}: not UTF-8 text")
            if len(fields) != len(header):
                raise EvalDataError(f"{path}:{start}: {len(fields)} fields, header has {len(header)}")
            values = []
            for col in (strong_col, weak_col):
                raw = fields[index[col]].strip().lower()
                if raw not in _BOOL:
                    raise EvalDataError(f"{path}:{start}: bad correctness {fields[index[col]]!r} for {col}")
                values.append(_BOOL[raw])
            yield f"{id_prefix}:{row_no}", fields[index["prompt"]], values[0], values[1]
            row_no += 1


def _mt_bench_rows(data_dir: Path) -> Iterator[tuple[str, str, float, float]]:
    scores: dict[tuple[int, str], dict[int, float]] = {}
    for path, line, rec in _jsonl(data_dir, "eval/mt_bench/judgements.jsonl"):
        try:
            qid, model, turn, score = int(rec["question_id"]), str(rec["model"]), int(rec["turn"]), rec["score"]
        except (KeyError, TypeError, ValueError) as exc:
            raise EvalDataError(f"{path}:{line}: missing or bad field ({exc})") from None
        if not isinstance(score, (int, float)) or not 1 <= score <= 10:
            raise EvalDataError(f"{path}:{line}: bad score {score!r} (expected 1-10)")
        by_turn = scores.setdefault((qid, normalize_model_name(model)), {})
        if turn in by_turn:
            raise EvalDataError(f"{path}:{line}: duplicate score for question {qid}, {model}, turn {turn}")
        by_turn[turn] = float(score)
    for path, line, rec in _jsonl(data_dir, "eval/mt_bench/question.jsonl"):
        turns, qid = rec.get("turns"), rec.get("question_id")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not isinstance(qid, int):
            raise EvalDataError(f"{path}:{line}: missing field question_id (int) / turns (list of str)")
        quality = []
        for model in (STRONG, WEAK):
            got = scores.get((qid, model), {})
            if sorted(got) != [1, 2]:
                raise EvalDataError(f"{path}:{line}: question {qid} lacks turn 1 and 2 scores for {model}")
            quality.append((got[1] + got[2]) / 2.0)
        yield f"mt_bench:{qid}", turns[0], quality[0], quality[1]


def _rows(name: str, data_dir: Path) -> Iterator[tuple[str, str, float, float]]:
    if name == "mt_bench":
        yield from _mt_bench_rows(data_dir)
    elif name == "gsm8k":
        yield from _correctness_rows(data_dir, "eval/gsm8k/gsm8k_responses.csv", "gsm8k")
    else:
        folder = Path(data_dir) / "eval/mmlu/responses"
        stems = sorted({p.name.removesuffix(".gz").removesuffix(".csv") for p in folder.glob("mmlu_*.csv*")})
        if not stems:
            raise FileNotFoundError(f"{folder}: no mmlu_*.csv files")
        for stem in stems:
            yield from _correctness_rows(data_dir, f"eval/mmlu/responses/{stem}.csv", stem)


def load_eval(name: str, data_dir: Path, *, limit: int | None = None) -> EvalSet:
    """Load benchmark ``name`` (one of ``EVAL_NAMES``), decontaminated.

    ``limit``: keep at most this many prompts, evenly spread over the set (deterministic quick mode)."""
    if name not in EVAL_NAMES:
        raise ValueError(f"unknown eval set {name!r}; known: {list(EVAL_NAMES)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    data_dir = Path(data_dir)
    contaminated = _contaminated(data_dir, name)
    kept, n_dropped = [], 0
    for row in _rows(name, data_dir):
        if row[1].strip() in contaminated:
            n_dropped += 1
        else:
            kept.append(row)
    if limit is not None and limit < len(kept):
        kept = [kept[i] for i in evenly_spaced(len(kept), limit)]
    return EvalSet(
        name=name,
        prompts=tuple(r[1] for r in kept),
        strong_quality=np.array([r[2] for r in kept], dtype=np.float64),
        weak_quality=np.array([r[3] for r in kept], dtype=np.float64),
        n_dropped_contaminated=n_dropped,
        ids=tuple(r[0] for r in kept),
    )
