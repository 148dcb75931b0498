"""Outcomes from a JSONL file (offline logs, a judge run over a sample): the format and its reader; and
the lines of the decisions a judge is handed (`to_judge_line`).

One JSON object per line; blank lines are skipped. Exactly one target and exactly one outcome:

    {"decision_id": "<32 hex>", "single": {"quality": 0.8}}
    {"decision_id": "<32 hex>", "paired": {"strong": 1.0, "weak": 0.0}, "source": "judge:gpt-4"}
    {"prompt": "text ...", "preference": "strong"}                  # "strong" | "weak" | "tie"
    {"prompt": "text ...", "single": {"quality": 1, "model": "mixtral-8x7b-instruct-v0.1"}}
    {"prompt": "text ...", "qualities": {"gpt-4-1106-preview": 1, "llama-3-8b": 0}}

Optional on every line: "source" (who judged; part of the outcome's identity, default "") and
"observed_unix_ms" (when it was observed; default: when it is imported). Qualities are numbers in
[0, 1]. Paired and preference outcomes are about the pair given to the reader (the bundle's default
pair). `read_outcomes` reads the whole file first and raises OutcomeFileError listing every bad line
as ``FILE:LINE: field: problem`` (at most 20, then a count), so a file is imported whole or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmroute.bundle.jsonread import unique_keys
from lmroute.outcomes.records import Outcome, OutcomeError, OutcomeKind

__all__ = ["OutcomeFileError", "numbered_lines", "parse_line", "read_outcome_lines", "read_outcomes", "to_judge_line"]

_PREFERENCE = {"strong": (1.0, 0.0), "weak": (0.0, 1.0), "tie": (0.5, 0.5)}
_KINDS = ("paired", "preference", "single", "qualities")
_MAX_LISTED = 20


class OutcomeFileError(ValueError):
    """Lines of an outcome file that cannot be imported; the message lists them as FILE:LINE: problem."""


def _quality(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OutcomeError(f"{field}: must be a number in [0, 1] (got {value!r})")
    if not 0.0 <= value <= 1.0:
        raise OutcomeError(f"{field}: must be in [0, 1] (got {value!r})")
    return float(value)


def _check_unicode(obj: dict[str, Any]) -> None:
    """OutcomeError naming the first key or string value, at the top level or one object down (where every
    text the reader keeps lies), that is not valid Unicode: JSON's escapes can spell a lone surrogate
    ("\\ud800"), which decodes but which no UTF-8 store or stream can hold."""
    for key, value in obj.items():
        texts = [(key, key), (key, value)]
        if isinstance(value, dict):
            texts += [(f"{key}.{k}", k) for k in value] + [(f"{key}.{k}", v) for k, v in value.items()]
        for field, text in texts:
            if isinstance(text, str) and not _encodes(text):
                shown = field[:80].encode("utf-8", "backslashreplace").decode("utf-8")
                raise OutcomeError(f"{shown}: not valid Unicode (a lone surrogate)")


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_line(obj: Any, *, strong: str, weak: str) -> list[Outcome]:
    """The outcomes of one decoded line; OutcomeError naming the field."""
    if not isinstance(obj, dict):
        raise OutcomeError(f"expected a JSON object (got {type(obj).__name__})")
    _check_unicode(obj)
    unknown = sorted(set(obj) - {"decision_id", "prompt", "source", "observed_unix_ms", *_KINDS})
    if unknown:
        raise OutcomeError(f"{unknown[0]}: unknown field")
    decision_id = obj.get("decision_id")
    prompt = obj.get("prompt")
    if (decision_id is None) == (prompt is None):
        raise OutcomeError("set exactly one of decision_id and prompt")
    if decision_id is not None and not isinstance(decision_id, str):
        raise OutcomeError(f"decision_id: must be a string (got {decision_id!r})")
    if prompt is not None and not isinstance(prompt, str):
        raise OutcomeError("prompt: must be a string")
    source = obj.get("source", "")
    if not isinstance(source, str):
        raise OutcomeError(f"source: must be a string (got {source!r})")
    observed = obj.get("observed_unix_ms")
    if observed is not None and (isinstance(observed, bool) or not isinstance(observed, int)):
        raise OutcomeError(f"observed_unix_ms: must be an integer (got {observed!r})")
    kinds = [k for k in _KINDS if k in obj]
    if len(kinds) != 1:
        raise OutcomeError(f"set exactly one of {', '.join(_KINDS)} (got {len(kinds)})")
    kind, body = kinds[0], obj[kinds[0]]

    def make(k: OutcomeKind, model: str, quality: float, side: str = "") -> Outcome:
        return Outcome(
            k,
            model,
            quality,
            decision_id=decision_id,
            prompt_text=prompt,
            source=source,
            observed_ms=observed,
            side=side,
        )

    if kind == "paired":
        if not isinstance(body, dict) or set(body) != {"strong", "weak"}:
            raise OutcomeError('paired: must be {"strong": q, "weak": q}')
        out = [
            make(OutcomeKind.PAIRED, strong, _quality(body["strong"], "paired.strong"), "strong"),
            make(OutcomeKind.PAIRED, weak, _quality(body["weak"], "paired.weak"), "weak"),
        ]
    elif kind == "preference":
        if body not in _PREFERENCE:
            raise OutcomeError(f'preference: must be "strong", "weak" or "tie" (got {body!r})')
        q_strong, q_weak = _PREFERENCE[body]
        out = [
            make(OutcomeKind.PREFERENCE, strong, q_strong, "strong"),
            make(OutcomeKind.PREFERENCE, weak, q_weak, "weak"),
        ]
    elif kind == "single":
        if not isinstance(body, dict) or "quality" not in body or set(body) - {"quality", "model"}:
            raise OutcomeError('single: must be {"quality": q} or {"quality": q, "model": name}')
        model = body.get("model", "")
        if not isinstance(model, str):
            raise OutcomeError("single.model: must be a string")
        out = [make(OutcomeKind.SINGLE, model, _quality(body["quality"], "single.quality"))]
    else:
        if not isinstance(body, dict) or not body:
            raise OutcomeError('qualities: must be a non-empty {"model": q, ...}')
        out = [make(OutcomeKind.SCORES, str(m), _quality(q, f"qualities.{m}")) for m, q in body.items()]
    for o in out:
        try:
            o.check("line")
        except OutcomeError as exc:  # a model the line names itself: named where it stands (single.model)
            if kind in ("single", "qualities") and str(exc).startswith("line.model:"):
                raise OutcomeError(kind + str(exc).removeprefix("line")) from None
            raise
    return out


def numbered_lines(path: Path) -> Iterator[tuple[int, str | UnicodeDecodeError]]:
    """Each line of the file at `path` with its number, as `wc -l` and `sed -n Np` count them (only "\n"
    ends a line: a lone "\r" is JSON whitespace, not a break), without its "\n" or "\r\n"; decoded, or,
    for a line that is not UTF-8, its UnicodeDecodeError (offsets within the line). OSError as opening
    the file raises it."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield n, exc


def read_outcomes(path: Path, *, strong: str, weak: str) -> list[Outcome]:
    """Every outcome of the file at `path`, in file order; OutcomeFileError listing the bad lines."""
    return [o for _, o in read_outcome_lines(path, strong=strong, weak=weak)]


def read_outcome_lines(path: Path, *, strong: str, weak: str) -> list[tuple[int, Outcome]]:
    """(line number, outcome) of every outcome of the file at `path`, in file order (a paired line gives
    two); OutcomeFileError listing the bad lines."""
    out: list[tuple[int, Outcome]] = []
    bad: list[str] = []
    for n, line in numbered_lines(path):
        if isinstance(line, UnicodeDecodeError):
            bad.append(f"{path}:{n}: not UTF-8 text ({line.reason} at byte {line.start + 1} of the line)")
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=unique_keys)
            out += [(n, o) for o in parse_line(obj, strong=strong, weak=weak)]
        except json.JSONDecodeError as exc:
            bad.append(f"{path}:{n}: not JSON ({exc.msg} at column {exc.colno})")
        except OutcomeError as exc:
            bad.append(f"{path}:{n}: {str(exc).removeprefix('line.').removeprefix('line: ')}")
        except ValueError as exc:  # unique_keys: a key given twice in one object
            bad.append(f"{path}:{n}: {exc}")
        except RecursionError:
            bad.append(f"{path}:{n}: nested too deeply")
    if bad:
        more = f"\n... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise OutcomeFileError(f"{len(bad)} bad lines, nothing imported:\n" + "\n".join(bad[:_MAX_LISTED]) + more)
    return out


def to_judge_line(decision_id: str, time_ms: int, prompt: str | None, strong_model: str, weak_model: str) -> str:
    """One decision to judge as a JSON line: `decision_id`, `time_ms`, `prompt` (null when the store kept
    no text), `strong_model`, `weak_model`; ASCII, so a prompt's U+2028 or U+0085 is escaped and the lines
    split as lines wherever they are read. The judge answers with `paired` lines by `decision_id` (above)."""
    line = {
        "decision_id": decision_id,
        "time_ms": time_ms,
        "prompt": prompt,
        "strong_model": strong_model,
        "weak_model": weak_model,
    }
    return json.dumps(line)
