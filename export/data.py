"""Training data: every vendored source turned into one table of pairwise comparisons.

``load_comparisons(data_dir)`` reads the sources under ``<data_dir>/train`` (plain files or their
``.gz``) and returns a ``LoadResult``: a ``Comparisons`` table (one row = one prompt, two models, one
outcome, one label kind, one source) plus the list of malformed rows (``RowIssue``: file, 1-based line,
reason) and the counts of rows skipped by rule (self-battles, the toy model ``example``, missing scores).
Nothing is dropped silently: malformed rows are returned, counted per file in the log and the first
``SHOWN_BAD_ROWS`` of each file logged as ``file:line: reason`` (``log_issues``). A file that cannot be
used at all (a compressed file that is truncated or corrupt, a CSV header missing a required column) and
a source left with no usable row raise ``DataError`` naming the file or the source.

Label rules per source:

* ``arena_human`` (human): winner ``model_a`` / ``model_b`` / ``tie`` / ``tie (bothbad)``;
  self-battles skipped; the routing prompt is the first user turn.
* ``alpaca_eval`` (judge): preference 1 -> generator_1 wins, 2 -> generator_2 wins, values in (1, 2)
  (weighted annotators) -> the nearer side, exactly 1.5 or 0 (AlpacaEval's draw code) -> tie;
  the toy model ``example`` and self-battles skipped.
* ``arena_bench_v1`` (judge): every pair of the scored models; higher GPT-4 score wins, equal -> tie;
  a missing score skips the pairs of that model only.
* ``routerbench_<task>`` (golden): every pair of models; correct beats incorrect, equal -> tie; the
  prompt is a python-list string, and ARC / Winogrande prompts carry a shared 5-shot prefix that is cut
  (the routing prompt is the final question, see ``final_question``).

``load_difficulty_labels(data_dir)``: LLMRouter's per-question scores in [0, 1] of 9 open models on 14
tasks (mostly 0/1 correctness, some partial credit), reduced to one label per question: the mean score.
None of these models is the strong or the weak model, so they are not comparisons of the table; they
train the difficulty prior (``lmroute.export.train_prior``).

``load_calibration_prompts(data_dir)``: arena-hard v0.1 + v2.0 prompts, then Arena first turns.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import io
import json
import logging
import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmroute.export.names import normalize_model_name

__all__ = [
    "LABEL_KINDS",
    "OUTCOMES",
    "SOURCES",
    "Comparisons",
    "DataError",
    "DifficultyLabels",
    "LoadResult",
    "RowIssue",
    "final_question",
    "load_calibration_prompts",
    "load_comparisons",
    "evenly_spaced",
    "load_difficulty_labels",
    "log_issues",
    "not_utf8",
    "open_data_file",
]

log = logging.getLogger(__name__)

LABEL_KINDS: tuple[str, ...] = ("human", "judge", "golden")
SHOWN_BAD_ROWS = 5  # per file, in the log (every one is in the build report)
OUTCOMES: tuple[str, ...] = ("a_wins", "b_wins", "tie")
A_WINS, B_WINS, TIE = 0, 1, 2
HUMAN, JUDGE, GOLDEN = 0, 1, 2

ROUTERBENCH_TASKS: dict[str, str] = {
    "routerbench_arc": "arc_challenge_train.csv",
    "routerbench_mbpp": "mbpp_train.csv",
    "routerbench_winogrande": "winograde_train.csv",
}
SOURCES: tuple[str, ...] = ("arena_human", "alpaca_eval", "arena_bench_v1", *ROUTERBENCH_TASKS)
DIFFICULTY_FILE = "train/llmrouter/train.jsonl"

ARENA_FILE = "train/arena_human/battles.jsonl"
ALPACA_JUDGMENTS = "train/alpaca_eval_judge/judgments.csv"
ALPACA_PROMPTS = "train/alpaca_eval_judge/prompts.jsonl"
ARENA_BENCH_FILE = "train/arena_bench_v1_judge/scores_wide.csv"
ROUTERBENCH_DIR = "train/routerbench_golden"
CALIBRATION_FILES = (
    "calibration/arena_hard_v0.1_questions.jsonl",
    "calibration/arena_hard_v2.0_questions.jsonl",
)

ARENA_WINNERS = {"model_a": A_WINS, "model_b": B_WINS, "tie": TIE, "tie (bothbad)": TIE}
TOY_MODELS = frozenset({"example"})
# A solved few-shot example ends with "Answer:" + one answer letter + a blank line.
_SOLVED_SHOT = re.compile(r"Answer:[ \t]*\n?[ \t]*[A-E][ \t]*\n[ \t]*\n")
_ROUTERBENCH_META = frozenset({"sample_id", "prompt", "eval_name", "oracle_model_to_route_to"})


class DataError(ValueError):
    """A training data file or source that cannot be used; the message names the file or the source."""


@dataclass(frozen=True)
class RowIssue:
    """One malformed row: the file read, its 1-based line number, and what was wrong."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True, eq=False)
class Comparisons:
    """Pairwise comparisons: row i says prompt ``prompts[prompt_idx[i]]`` was answered by
    ``models[model_a[i]]`` and ``models[model_b[i]]`` with ``outcome[i]`` (0 = a wins, 1 = b wins,
    2 = tie), labelled by ``LABEL_KINDS[label_kind[i]]`` and coming from ``sources[source[i]]``."""

    prompts: tuple[str, ...]
    prompt_idx: np.ndarray
    model_a: np.ndarray
    model_b: np.ndarray
    outcome: np.ndarray
    label_kind: np.ndarray
    source: np.ndarray
    models: tuple[str, ...]
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.prompt_idx)
        checks = (
            ("prompt_idx", self.prompt_idx, np.int32, len(self.prompts)),
            ("model_a", self.model_a, np.int32, len(self.models)),
            ("model_b", self.model_b, np.int32, len(self.models)),
            ("outcome", self.outcome, np.int8, len(OUTCOMES)),
            ("label_kind", self.label_kind, np.int8, len(LABEL_KINDS)),
            ("source", self.source, np.int8, len(self.sources)),
        )
        for name, arr, dtype, bound in checks:
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != 1:
                raise ValueError(f"Comparisons.{name}: expected a 1-D {np.dtype(dtype)} array")
            if len(arr) != n:
                raise ValueError(f"Comparisons.{name}: length {len(arr)} != prompt_idx length {n}")
            if n and (arr.min() < 0 or arr.max() >= bound):
                raise ValueError(f"Comparisons.{name}: values outside [0, {bound})")
        if list(self.models) != sorted(set(self.models)):
            raise ValueError("Comparisons.models: must be sorted and unique")

    def __len__(self) -> int:
        return len(self.prompt_idx)

    def fingerprint(self) -> str:
        """sha256 (hex) over a canonical serialisation of the whole table."""
        digest = hashlib.sha256(b"lmroute-comparisons-v1\0")
        for group in (self.sources, self.models, self.prompts):
            digest.update(len(group).to_bytes(8, "little"))
            for text in group:
                raw = text.encode("utf-8")
                digest.update(len(raw).to_bytes(8, "little") + raw)
        for arr, dtype in (
            (self.prompt_idx, "<i4"),
            (self.model_a, "<i4"),
            (self.model_b, "<i4"),
            (self.outcome, "i1"),
            (self.label_kind, "i1"),
            (self.source, "i1"),
        ):
            digest.update(np.ascontiguousarray(arr, dtype=dtype).tobytes())
        return digest.hexdigest()

    def select(self, mask: np.ndarray | Sequence[bool] | Sequence[int]) -> Comparisons:
        """Rows picked by a boolean mask or integer indices; unused prompts are dropped (order kept),
        ``models`` and ``sources`` are kept whole so indices stay comparable across subsets."""
        rows = np.asarray(mask)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise ValueError(f"select: boolean mask of shape {rows.shape}, expected ({len(self)},)")
            rows = np.flatnonzero(rows)
        elif rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"select: expected a boolean mask or integer indices, got {rows.dtype}")
        rows = rows.astype(np.int64, copy=False)
        used = np.unique(self.prompt_idx[rows])
        remap = np.full(len(self.prompts), -1, dtype=np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        return Comparisons(
            prompts=tuple(self.prompts[i] for i in used),
            prompt_idx=remap[self.prompt_idx[rows]],
            model_a=self.model_a[rows],
            model_b=self.model_b[rows],
            outcome=self.outcome[rows],
            label_kind=self.label_kind[rows],
            source=self.source[rows],
            models=self.models,
            sources=self.sources,
        )

    def pair_mask(self, model_1: str, model_2: str) -> np.ndarray:
        """Boolean mask [n] of the comparisons between `model_1` and `model_2`, either side."""
        i, j = self.models.index(model_1), self.models.index(model_2)
        a, b = self.model_a, self.model_b
        return ((a == i) & (b == j)) | ((a == j) & (b == i))

    def split_by_prompt(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[Comparisons, Comparisons]:
        """(train, val) with no prompt in both. The val prompts are the ``round(val_fraction * n)``
        prompts with the smallest sha256(seed, text): stable under reordering and row changes."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"split_by_prompt: val_fraction must be in (0, 1), got {val_fraction}")
        keys = [hashlib.sha256(f"{seed}\0{text}".encode()).digest() for text in self.prompts]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        n_val = round(val_fraction * len(self.prompts))
        is_val_prompt = np.zeros(len(self.prompts), dtype=bool)
        is_val_prompt[order[:n_val]] = True
        is_val_row = is_val_prompt[self.prompt_idx]
        return self.select(~is_val_row), self.select(is_val_row)

    def counts(self) -> dict[str, Any]:
        """Row counts by label kind and by source, plus table sizes."""
        by_kind = np.bincount(self.label_kind, minlength=len(LABEL_KINDS))
        by_source = np.bincount(self.source, minlength=len(self.sources))
        return {
            "n_comparisons": len(self),
            "n_prompts": len(self.prompts),
            "n_models": len(self.models),
            "by_label_kind": {k: int(by_kind[i]) for i, k in enumerate(LABEL_KINDS)},
            "by_source": {s: int(by_source[i]) for i, s in enumerate(self.sources)},
        }


@dataclass(frozen=True)
class LoadResult:
    """What ``load_comparisons`` returns: the table, the malformed rows, and rule-based skips
    (``"<source>: <reason>" -> count``)."""

    comparisons: Comparisons
    issues: list[RowIssue]
    skipped: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# File access


def open_data_file(data_dir: Path, rel: str) -> tuple[Path, io.TextIOBase]:
    """Open ``<data_dir>/<rel>.gz`` (preferred) or ``<data_dir>/<rel>`` as UTF-8 text; bytes that are not
    UTF-8 come through as lone surrogates (``surrogateescape``), so a reader can name their line
    (``text_lines``) instead of failing the whole file."""
    base = Path(data_dir) / rel
    gz = base.with_name(base.name + ".gz")
    if gz.is_file():
        return gz, io.TextIOWrapper(gzip.open(gz, "rb"), encoding="utf-8", errors="surrogateescape", newline="")
    if base.is_file():
        return base, base.open(encoding="utf-8", errors="surrogateescape", newline="")
    raise FileNotFoundError(f"{base}: missing (neither it nor {gz.name} exists)")


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, as surrogateescape decodes it


def not_utf8(text: str) -> bool:
    """Whether `text`, read by `open_data_file`, held bytes that are not UTF-8."""
    return _NOT_UTF8.search(text) is not None


def text_lines(path: Path, handle: io.TextIOBase, issues: list[RowIssue]) -> Iterator[tuple[int, str | None]]:
    """(1-based line number, the line; None for a line that is not UTF-8, an issue recorded) of an opened
    data file. A compressed file that ends early or is corrupt (found at any line, or only by the checksum
    at its end) raises ``DataError`` naming the file: none of its lines can be trusted."""
    with handle:
        line_no = 0
        try:
            for line_no, line in enumerate(handle, start=1):
                if not_utf8(line):
                    issues.append(RowIssue(str(path), line_no, "not UTF-8 text"))
                    yield line_no, None
                else:
                    yield line_no, line
        except (EOFError, OSError, zlib.error) as exc:  # gzip: truncated (EOFError), corrupt (BadGzipFile, zlib)
            raise DataError(
                f"{path}: unreadable after line {line_no} ({type(exc).__name__}: {exc}); the file is damaged "
                "and nothing read from it is used"
            ) from exc


def jsonl_records(path: Path, handle: io.TextIOBase, issues: list[RowIssue]) -> Iterator[tuple[int, dict]]:
    """(line, record) for each JSON object line; bad lines become issues. Blank lines are skipped."""
    for line_no, line in text_lines(path, handle, issues):
        if line is None or not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            issues.append(RowIssue(str(path), line_no, f"invalid JSON: {exc.msg}"))
            continue
        except RecursionError:
            issues.append(RowIssue(str(path), line_no, "invalid JSON: nested too deeply"))
            continue
        if not isinstance(record, dict):
            issues.append(RowIssue(str(path), line_no, "JSON line is not an object"))
            continue
        if "\\u" in line and not _encodes_utf8(record):
            issues.append(RowIssue(str(path), line_no, "not valid Unicode (an escaped lone surrogate, e.g. \\ud800)"))
            continue
        yield line_no, record


def _encodes_utf8(record: dict) -> bool:
    """Whether every string of `record` (keys too, at any depth) can be written as UTF-8: JSON's escapes can
    spell a lone surrogate ("\\ud800"), which parses but which no UTF-8 file or bundle can hold."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _csv_records(
    path: Path, handle: io.TextIOBase, required: Iterable[str], issues: list[RowIssue]
) -> Iterator[tuple[int, dict[str, str]]]:
    """(first line of the record, row) for each CSV row with the right number of fields. A record CSV
    cannot read (an unterminated quote runs into the field size limit, or to the end of the file) is an
    issue at its first line, and reading goes on from the line after it; a record holding a line that is
    not UTF-8 is an issue too. A header that cannot be read is an issue, and no row is read; a header
    without a `required` column raises ``DataError`` naming the file and the columns."""
    numbered = list(text_lines(path, handle, issues))
    lines = [line if line is not None else "\n" for _, line in numbered]  # lines[i] is line i + 1
    bad_lines = {n for n, line in numbered if line is None}
    header: list[str] | None = None
    start: int | None = 0  # index of the line to read from; None: done
    while start is not None:
        reader, read_before, resume = csv.reader(iter(lines[start:])), start, None
        while True:
            first = read_before + 1  # the record's first line
            try:
                fields = next(reader)
                read_before = start + reader.line_num
                if read_before == len(lines) and _open_quote(lines[first - 1 :]):
                    raise csv.Error("a quoted field runs to the end of the file")
            except StopIteration:
                break
            except csv.Error as exc:
                issues.append(RowIssue(str(path), first, f"unreadable CSV: {exc}"))
                resume = first  # lines[first] is the line after the record's first
                break
            if header is None:
                header = fields
                missing = [c for c in required if c not in header]
                if missing:
                    raise DataError(f"{path}:1: the header lacks the required column(s) {', '.join(missing)}")
                continue
            if not fields:
                continue
            if bad_lines and any(n in bad_lines for n in range(first, read_before + 1)):
                continue  # its issue is recorded
            if len(fields) != len(header):
                issues.append(RowIssue(str(path), first, f"{len(fields)} fields, header has {len(header)}"))
                continue
            yield first, dict(zip(header, fields, strict=True))
        if resume is not None and header is None:
            return  # the header itself cannot be read
        start = resume
    if header is None:
        issues.append(RowIssue(str(path), 1, "empty file (no header)"))


def _open_quote(record_lines: Sequence[str]) -> bool:
    """Whether a record's lines leave a quoted field open (an odd number of quote characters: a quote
    inside a quoted field is written twice)."""
    return sum(line.count('"') for line in record_lines) % 2 == 1


# --------------------------------------------------------------------------------------------
# Per-source readers. Each yields (prompt, model_a, model_b, outcome) with raw model names.

Row = tuple[str, str, str, int]


class _Reader:
    """Shared state of one load: issues and skip counts."""

    def __init__(self) -> None:
        self.issues: list[RowIssue] = []
        self.skipped: dict[str, int] = {}

    def skip(self, source: str, reason: str, n: int = 1) -> None:
        key = f"{source}: {reason}"
        self.skipped[key] = self.skipped.get(key, 0) + n

    def issue(self, path: Path, line: int, reason: str) -> None:
        self.issues.append(RowIssue(str(path), line, reason))


def _text(value: Any) -> str | None:
    """A non-empty stripped string, or None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _first_turn(rec: dict) -> str | None:
    """The first user turn of an Arena battle record (``turns[0]``, else ``prompt``), stripped."""
    turns = rec.get("turns")
    return _text(turns[0] if isinstance(turns, list) and turns else rec.get("prompt"))


def _arena_human(data_dir: Path, rd: _Reader) -> Iterator[Row]:
    path, handle = open_data_file(data_dir, ARENA_FILE)
    for line, rec in jsonl_records(path, handle, rd.issues):
        a, b = _text(rec.get("model_a")), _text(rec.get("model_b"))
        prompt = _first_turn(rec)
        winner = rec.get("winner")
        if a is None or b is None:
            rd.issue(path, line, "missing field model_a/model_b")
        elif prompt is None:
            rd.issue(path, line, "missing field turns/prompt (no first user turn)")
        elif not isinstance(winner, str) or winner not in ARENA_WINNERS:
            rd.issue(path, line, f"unknown winner value {winner!r}")
        elif normalize_model_name(a) == normalize_model_name(b):
            rd.skip("arena_human", "self-battle")
        else:
            yield prompt, a, b, ARENA_WINNERS[winner]


def _alpaca_outcome(raw: str) -> int | None:
    """Outcome of an AlpacaEval preference string; None when it is not a valid preference."""
    try:
        value = float(raw)
    except ValueError:
        return None
    if value == 0.0 or value == 1.5:
        return TIE
    if not 1.0 <= value <= 2.0:  # also rejects NaN
        return None
    return A_WINS if value < 1.5 else B_WINS


def _alpaca_eval(data_dir: Path, rd: _Reader) -> Iterator[Row]:
    ppath, phandle = open_data_file(data_dir, ALPACA_PROMPTS)
    instructions: dict[str, str] = {}
    for line, rec in jsonl_records(ppath, phandle, rd.issues):
        pid, text = _text(rec.get("prompt_id")), _text(rec.get("instruction"))
        if pid is None or text is None:
            rd.issue(ppath, line, "missing field prompt_id/instruction")
        else:
            instructions[pid] = text
    path, handle = open_data_file(data_dir, ALPACA_JUDGMENTS)
    required = ("prompt_id", "generator_1", "generator_2", "preference")
    for line, row in _csv_records(path, handle, required, rd.issues):
        g1, g2 = _text(row["generator_1"]), _text(row["generator_2"])
        raw_pref = row["preference"].strip()
        prompt = instructions.get(row["prompt_id"].strip())
        if g1 is None or g2 is None:
            rd.issue(path, line, "missing field generator_1/generator_2")
        elif prompt is None:
            rd.issue(path, line, f"unknown prompt_id {row['prompt_id']!r}")
        elif not raw_pref:
            rd.issue(path, line, "missing field preference")
        elif (outcome := _alpaca_outcome(raw_pref)) is None:
            rd.issue(path, line, f"bad preference {raw_pref!r} (expected 0, or a value in [1, 2])")
        elif normalize_model_name(g1) in TOY_MODELS or normalize_model_name(g2) in TOY_MODELS:
            rd.skip("alpaca_eval", "toy model 'example'")
        elif normalize_model_name(g1) == normalize_model_name(g2):
            rd.skip("alpaca_eval", "self-battle")
        else:
            yield prompt, g1, g2, outcome


def _score(raw: str, low: float, high: float) -> float | None:
    """A finite number in [low, high], or None."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and low <= value <= high else None


def _pairs_from_scores(
    prompt: str, scores: list[tuple[str, float]], outcome_of: Callable[[float, float], int]
) -> Iterator[Row]:
    """Every pair of scored models, in sorted normalised-name order, with the outcome of their scores."""
    ranked = sorted(scores, key=lambda item: normalize_model_name(item[0]))
    for i, (a, sa) in enumerate(ranked):
        for b, sb in ranked[i + 1 :]:
            yield prompt, a, b, outcome_of(sa, sb)


def _compare(sa: float, sb: float) -> int:
    return A_WINS if sa > sb else B_WINS if sb > sa else TIE


def _score_row(
    source: str,
    path: Path,
    line: int,
    row: dict[str, str],
    models: list[str],
    bounds: tuple[float, float],
    rd: _Reader,
) -> list[tuple[str, float]]:
    """The valid scores of one wide row; a missing score skips that model, a bad one is an issue."""
    scores: list[tuple[str, float]] = []
    for model in models:
        raw = row[model].strip()
        if not raw:
            rd.skip(source, "missing score (cell; that model left out of the row's pairs)")
            continue
        value = _score(raw, *bounds)
        if value is None:
            low, high = bounds
            rd.issue(path, line, f"bad score {raw!r} for {model} (expected a number in [{low:g}, {high:g}])")
            continue
        scores.append((model, value))
    return scores


def _arena_bench(data_dir: Path, rd: _Reader) -> Iterator[Row]:
    path, handle = open_data_file(data_dir, ARENA_BENCH_FILE)
    models: list[str] | None = None
    for line, row in _csv_records(path, handle, ("prompt",), rd.issues):
        if models is None:
            models = [c for c in row if c not in ("question_id", "prompt")]
        prompt = _text(row["prompt"])
        if prompt is None:
            rd.issue(path, line, "missing field prompt")
            continue
        scores = _score_row("arena_bench_v1", path, line, row, models, (1.0, 10.0), rd)
        yield from _pairs_from_scores(prompt, scores, _compare)


def final_question(prompt: str) -> str:
    """The last question of a few-shot prompt: the text after the last solved example
    (``Answer: <letter>`` followed by a blank line). A prompt without solved examples is returned whole.

    RouterBench's ARC and Winogrande prompts all share one 5-shot prefix (1.2-1.7k characters); cut
    at this rule every ARC / Winogrande row keeps exactly its final question with options."""
    matches = list(_SOLVED_SHOT.finditer(prompt))
    return prompt[matches[-1].end() :].strip() if matches else prompt.strip()


def _routerbench_prompt(raw: str) -> str | None:
    """Parse the python-list prompt string; the routing prompt is the final question of its last item."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return None
    return _text(final_question(value[-1]))


def _routerbench(source: str, data_dir: Path, rd: _Reader) -> Iterator[Row]:
    path, handle = open_data_file(data_dir, f"{ROUTERBENCH_DIR}/{ROUTERBENCH_TASKS[source]}")
    models: list[str] | None = None
    for line, row in _csv_records(path, handle, ("prompt",), rd.issues):
        if models is None:
            models = [c for c in row if c not in _ROUTERBENCH_META and "|" not in c]
        prompt = _routerbench_prompt(row["prompt"])
        if prompt is None:
            rd.issue(path, line, "prompt is not a python list of non-empty strings")
            continue
        scores = _score_row(source, path, line, row, models, (0.0, 1.0), rd)
        bad = [m for m, v in scores if v not in (0.0, 1.0)]
        for model in bad:
            rd.issue(path, line, f"bad score {row[model].strip()!r} for {model} (expected 0 or 1)")
        yield from _pairs_from_scores(prompt, [s for s in scores if s[0] not in bad], _compare)


def _read_source(source: str, data_dir: Path, rd: _Reader) -> Iterator[Row]:
    if source == "arena_human":
        return _arena_human(data_dir, rd)
    if source == "alpaca_eval":
        return _alpaca_eval(data_dir, rd)
    if source == "arena_bench_v1":
        return _arena_bench(data_dir, rd)
    return _routerbench(source, data_dir, rd)


_LABEL_KIND_OF = {"arena_human": HUMAN, "alpaca_eval": JUDGE, "arena_bench_v1": JUDGE}


def evenly_spaced(n: int, limit: int | None) -> np.ndarray:
    """Indices of a deterministic, evenly spread subset of ``min(n, limit)`` of ``n`` rows."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def load_comparisons(
    data_dir: Path,
    *,
    sources: Sequence[str] | None = None,
    limit_per_source: int | None = None,
) -> LoadResult:
    """Load the training sources under ``data_dir`` into one ``Comparisons`` table.

    ``sources``: names from ``SOURCES`` (default: all), kept in ``SOURCES`` order.
    ``limit_per_source``: keep at most this many comparisons per source, evenly spread over the file
    (a deterministic quick mode; issues are still reported for the whole file).
    Raises ``DataError`` when a compressed file is damaged, a file lacks a required column or a source
    yields no comparison."""
    if isinstance(sources, str):
        raise TypeError(f"sources must be a sequence of source names, not the string {sources!r}")
    chosen = tuple(SOURCES) if sources is None else tuple(s for s in SOURCES if s in set(sources))
    unknown = sorted(set(sources or ()) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; known: {list(SOURCES)}")
    if not chosen:
        raise ValueError("load_comparisons: no source selected")
    if limit_per_source is not None and limit_per_source < 1:
        raise ValueError(f"limit_per_source must be >= 1, got {limit_per_source}")

    rd = _Reader()
    per_source: list[list[Row]] = []
    for source in chosen:
        n_issues = len(rd.issues)
        rows = list(_read_source(source, Path(data_dir), rd))
        if not rows:
            bad = _count_by_file(rd.issues[n_issues:])
            skipped = sum(n for key, n in rd.skipped.items() if key.startswith(f"{source}: "))
            why = [f"{n} bad rows in {file}" for file, n in bad.items()] + [f"{skipped} rows skipped by rule"]
            raise DataError(f"training source {source} has no usable rows ({'; '.join(why)})")
        per_source.append([rows[i] for i in evenly_spaced(len(rows), limit_per_source)])
        log_issues(rd.issues[n_issues:])

    models = sorted({normalize_model_name(m) for rows in per_source for _, a, b, _ in rows for m in (a, b)})
    model_id = {m: i for i, m in enumerate(models)}
    prompt_id: dict[str, int] = {}
    cols: dict[str, list[int]] = {k: [] for k in ("p", "a", "b", "o", "k", "s")}
    for s_idx, (source, rows) in enumerate(zip(chosen, per_source, strict=True)):
        kind = _LABEL_KIND_OF.get(source, GOLDEN)
        for prompt, a, b, outcome in rows:
            cols["p"].append(prompt_id.setdefault(prompt, len(prompt_id)))
            cols["a"].append(model_id[normalize_model_name(a)])
            cols["b"].append(model_id[normalize_model_name(b)])
            cols["o"].append(outcome)
            cols["k"].append(kind)
            cols["s"].append(s_idx)
    table = Comparisons(
        prompts=tuple(prompt_id),
        prompt_idx=np.asarray(cols["p"], dtype=np.int32),
        model_a=np.asarray(cols["a"], dtype=np.int32),
        model_b=np.asarray(cols["b"], dtype=np.int32),
        outcome=np.asarray(cols["o"], dtype=np.int8),
        label_kind=np.asarray(cols["k"], dtype=np.int8),
        source=np.asarray(cols["s"], dtype=np.int8),
        models=tuple(models),
        sources=chosen,
    )
    for key, count in sorted(rd.skipped.items()):
        log.info("skipped %d rows (%s)", count, key)
    return LoadResult(comparisons=table, issues=rd.issues, skipped=dict(rd.skipped))


def _count_by_file(issues: Iterable[RowIssue]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for issue in issues:
        counts[issue.file] = counts.get(issue.file, 0) + 1
    return counts


def log_issues(issues: Iterable[RowIssue]) -> None:
    """Log the bad rows of each file: how many (skipped), then the first ``SHOWN_BAD_ROWS`` as
    ``file:line: reason``."""
    by_file: dict[str, list[RowIssue]] = {}
    for issue in issues:
        by_file.setdefault(issue.file, []).append(issue)
    for file, found in by_file.items():
        shown = found[:SHOWN_BAD_ROWS]
        first = f"the first {len(shown)}" if len(shown) < len(found) else "each"
        log.warning("%d bad rows in %s, skipped (%s below)", len(found), file, first)
        for issue in shown:
            log.warning("  %s", issue)


def load_calibration_prompts(data_dir: Path, *, issues: list[RowIssue] | None = None) -> list[str]:
    """Arena-hard v0.1 then v2.0 ``prompt`` fields, then Arena battle first turns (file order),
    whitespace-stripped and de-duplicated (first occurrence kept). Bad rows are logged, then skipped; they
    are added to `issues` when given."""
    issues = [] if issues is None else issues
    n_before = len(issues)
    seen: dict[str, None] = {}
    for rel in CALIBRATION_FILES:
        path, handle = open_data_file(Path(data_dir), rel)
        for line, rec in jsonl_records(path, handle, issues):
            text = _text(rec.get("prompt"))
            if text is None:
                issues.append(RowIssue(str(path), line, "missing field prompt"))
            else:
                seen.setdefault(text, None)
    path, handle = open_data_file(Path(data_dir), ARENA_FILE)
    for line, rec in jsonl_records(path, handle, issues):
        text = _first_turn(rec)
        if text is None:
            issues.append(RowIssue(str(path), line, "missing field turns/prompt (no first user turn)"))
        else:
            seen.setdefault(text, None)
    log_issues(issues[n_before:])
    return list(seen)


@dataclass(frozen=True)
class DifficultyLabels:
    """One label per question: ``mean_score[i]`` = the mean of the models' scores in [0, 1] on
    ``prompts[i]`` (1 = every model answered fully right). ``scores[i, j]``: model ``models[j]``'s
    score on ``prompts[i]``, NaN where the row has none. ``issues``: malformed rows, by line."""

    prompts: tuple[str, ...]
    mean_score: np.ndarray
    models: tuple[str, ...]
    issues: list[RowIssue]
    scores: np.ndarray


def load_difficulty_labels(data_dir: Path, *, min_models: int = 2) -> DifficultyLabels:
    """Read ``train/llmrouter/train.jsonl`` (``{"question", "scores": {model: score}}`` per line).

    A line whose question is missing, whose scores are not an object, or with a score that is not a
    number in [0, 1] is an issue (file and line) and left out whole, as is a question with fewer than
    ``min_models`` scores; a repeated question keeps its first line (counted in the log)."""
    path, handle = open_data_file(Path(data_dir), DIFFICULTY_FILE)
    issues: list[RowIssue] = []
    prompts: dict[str, float] = {}
    per_model: dict[str, dict[str, float]] = {}
    models: set[str] = set()
    repeats = 0
    for line, rec in jsonl_records(path, handle, issues):
        prompt = _text(rec.get("question"))
        raw_scores = rec.get("scores")
        if prompt is None:
            issues.append(RowIssue(str(path), line, "missing field question"))
            continue
        if not isinstance(raw_scores, dict):
            issues.append(RowIssue(str(path), line, "field scores must be an object {model: score}"))
            continue
        bad = [
            (m, v)
            for m, v in raw_scores.items()
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0.0 <= v <= 1.0)
        ]
        if bad:
            model, value = bad[0]
            issues.append(RowIssue(str(path), line, f"bad score {value!r} for {model} (expected a number in [0, 1])"))
            continue
        if len(raw_scores) < min_models:
            issues.append(RowIssue(str(path), line, f"{len(raw_scores)} scores, need at least {min_models}"))
            continue
        if prompt in prompts:
            repeats += 1
            continue
        prompts[prompt] = float(np.mean([float(v) for v in raw_scores.values()]))
        per_model[prompt] = {normalize_model_name(m): float(v) for m, v in raw_scores.items()}
        models.update(per_model[prompt])
    log_issues(issues)
    if repeats:
        log.info("%s: %d repeated questions kept once", path, repeats)
    model_names = tuple(sorted(models))
    return DifficultyLabels(
        prompts=tuple(prompts),
        mean_score=np.fromiter(prompts.values(), dtype=np.float64, count=len(prompts)),
        models=model_names,
        issues=issues,
        scores=np.array(
            [[per_model[p].get(m, np.nan) for m in model_names] for p in prompts], dtype=np.float64
        ).reshape(len(prompts), len(model_names)),
    )
