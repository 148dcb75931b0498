"""Rebuild the vendored data pack under ``data/`` from the shared data pack.

Usage (from the repository root)::

    .venv/bin/python data/vendor.py --source ../shared/data

What it does, file by file (see ``data/SOURCES.md`` for provenance and licenses):

* copies the train/, eval/ and calibration/ files we use, gzip-compressed with ``gzip -n -9``
  (no name, no timestamp: the output is byte-for-byte reproducible), same relative path + ``.gz``;
* reduces ``eval/mt_bench/judgements.jsonl`` to ``question_id, model, score, turn``;
* drops the two response-text columns of ``eval/gsm8k/gsm8k_responses.csv``;
* rewrites ``multi_model/llmrouter_9models_14tasks/train.json`` (one JSON array) as JSON Lines
  ``{"question", "scores"}`` (``cluster_id`` dropped), so that a bad record is reported by line;
* copies ``licenses/`` as is. The LLMRouter ``test.json`` and ``eval/mt_bench/commercial_routers/``
  are skipped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

COPIED = (
    "train/arena_human/battles.jsonl",
    "train/alpaca_eval_judge/judgments.csv",
    "train/alpaca_eval_judge/prompts.jsonl",
    "train/arena_bench_v1_judge/scores_wide.csv",
    "train/routerbench_golden/arc_challenge_train.csv",
    "train/routerbench_golden/mbpp_train.csv",
    "train/routerbench_golden/winograde_train.csv",
    "eval/mt_bench/question.jsonl",
    "eval/mt_bench/contaminated_prompts.jsonl",
    "eval/mmlu/contaminated_prompts.jsonl",
    "eval/gsm8k/contaminated_prompts.jsonl",
    "calibration/arena_hard_v0.1_questions.jsonl",
    "calibration/arena_hard_v2.0_questions.jsonl",
)
JUDGEMENT_KEYS = ("question_id", "model", "score", "turn")
GSM8K_DROPPED_COLUMNS = (
    "mistralai/Mixtral-8x7B-Instruct-v0.1_response",
    "gpt-4-1106-preview_response",
)


def _write_gz(payload: bytes, dest: Path) -> None:
    """Compress ``payload`` into ``dest`` with ``gzip -n -9`` (deterministic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["gzip", "-n", "-9", "-c"], input=payload, capture_output=True, check=True)
    dest.write_bytes(result.stdout)


def _reduced_judgements(src: Path) -> bytes:
    out = io.StringIO()
    for line in src.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            out.write(json.dumps({k: record[k] for k in JUDGEMENT_KEYS}) + "\n")
    return out.getvalue().encode("utf-8")


def _llmrouter_jsonl(src: Path) -> bytes:
    records = json.loads(src.read_text(encoding="utf-8"))
    lines = [json.dumps({"question": r["question"], "scores": r["scores"]}, ensure_ascii=False) for r in records]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _reduced_gsm8k(src: Path) -> bytes:
    with src.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames is not None
        columns = [c for c in reader.fieldnames if c not in GSM8K_DROPPED_COLUMNS]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(reader)
    return out.getvalue().encode("utf-8")


def vendor(source: Path, dest: Path) -> int:
    """Write the vendored pack from ``source`` into ``dest``; return its total size in bytes."""
    for rel in COPIED:
        _write_gz((source / rel).read_bytes(), dest / (rel + ".gz"))
    for mmlu in sorted((source / "eval/mmlu/responses").glob("mmlu_*.csv")):
        rel = mmlu.relative_to(source).as_posix()
        _write_gz(mmlu.read_bytes(), dest / (rel + ".gz"))
    _write_gz(
        _reduced_judgements(source / "eval/mt_bench/judgements.jsonl"),
        dest / "eval/mt_bench/judgements.jsonl.gz",
    )
    _write_gz(
        _reduced_gsm8k(source / "eval/gsm8k/gsm8k_responses.csv"),
        dest / "eval/gsm8k/gsm8k_responses.csv.gz",
    )
    _write_gz(
        _llmrouter_jsonl(source / "multi_model/llmrouter_9models_14tasks/train.json"),
        dest / "train/llmrouter/train.jsonl.gz",
    )
    shutil.copytree(source / "licenses", dest / "licenses", dirs_exist_ok=True)
    return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())


def main() -> None:
    """CLI entry point: ``--source`` (shared pack) and ``--dest`` (default: this folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the shared data pack folder")
    parser.add_argument("--dest", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    total = vendor(args.source, args.dest)
    print(f"vendored data: {total / 1e6:.2f} MB in {args.dest}")


if __name__ == "__main__":
    main()
