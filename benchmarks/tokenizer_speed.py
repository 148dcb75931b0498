"""Per-prompt cost of tokenising: HF `tokenizers` vs the compiled WordPiece fast path.

Corpora: benchmarks/ghz/prompts.json (its `short` and `long` prompts) and the training prompts
(`lmroute.export.data.load_comparisons(data/)`). Two comparisons, each at one text per call and at
64 texts per call (batches filled by cycling through the corpus):

  tokenizer, ASCII texts   HF `Tokenizer.encode` / `encode_batch` (truncation and padding off) vs
                           `lmroute.kernels.compiled.WordPieceTokenizer.encode`, on the corpus's pure-ASCII
                           texts (the ones the fast path takes)
  PromptTokenizer, ASCII / all   `PromptTokenizer.tokenize` (ids -> cut -> padded TokenBatch) with
                           fast=False vs fast=True, on the pure-ASCII texts, then on every text (with
                           fast=True a non-ASCII text is cut at ASCII whitespace: its ASCII runs go to the
                           fast path, the rest to HF; mostly non-ASCII texts go to HF whole)

A figure is the best of `--rounds` passes over the corpus of the mean CPU time (process time: the
machine is shared, and CPU time does not count waiting for a core) per prompt. Prints a Markdown table;
`--out FILE` also writes it with the command, date and machine.

    .venv/bin/python benchmarks/tokenizer_speed.py --out benchmarks/RESULTS_tokenizer.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from itertools import cycle, islice
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tokenizers
from tokenizers import Tokenizer

from lmroute.bundle.encoder import PromptTokenizer
from lmroute.export.data import load_comparisons
from lmroute.export.encoder_export import default_model_dir
from lmroute.kernels.compiled import WordPieceTokenizer

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64


def per_prompt_us(fn: Callable[[list[str]], object], texts: Sequence[str], batch: int, rounds: int) -> float:
    """Best over `rounds` of the mean CPU microseconds per prompt, calling fn on `batch` texts at a time."""
    if batch == 1:
        calls = [[t] for t in texts]
    else:
        n = max(len(texts), batch) // batch * batch
        flat = list(islice(cycle(texts), n))
        calls = [flat[i : i + batch] for i in range(0, n, batch)]
    count = sum(len(c) for c in calls)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time_ns()
        for c in calls:
            fn(c)
        best = min(best, (time.process_time_ns() - t0) / 1e3 / count)
    return best


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    path = default_model_dir() / "tokenizer.json"
    hf = Tokenizer.from_file(str(path))
    hf.no_truncation()
    hf.no_padding()
    fast = WordPieceTokenizer.from_tokenizer_json(json.loads(path.read_text(encoding="utf-8")))
    pt_on = PromptTokenizer(path, max_tokens=256, fast=True)
    pt_off = PromptTokenizer(path, max_tokens=256, fast=False)
    assert pt_on.fast_path, pt_on.fast_path_note

    ghz = json.loads((ROOT / "benchmarks/ghz/prompts.json").read_text(encoding="utf-8"))
    corpora = {
        "ghz short": [p["text"] for p in ghz if p["kind"] == "short"],
        "ghz long": [p["text"] for p in ghz if p["kind"] == "long"],
        "training": list(load_comparisons(ROOT / "data").comparisons.prompts),
    }
    lines = [
        "| corpus | texts | pure ASCII | mean chars | what | batch | HF us/prompt | fast us/prompt | HF / fast |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, texts in corpora.items():
        ascii_texts = [t for t in texts if t.isascii()]
        share = f"{len(ascii_texts)} ({100 * len(ascii_texts) / len(texts):.0f} %)"
        chars = sum(map(len, texts)) / len(texts)
        Call = Callable[[list[str]], object]
        rows: list[tuple[str, list[str], Call, Call, Call]] = [  # what, texts, HF one, HF many, fast
            ("tokenizer, ASCII texts", ascii_texts, lambda c: hf.encode(c[0]), hf.encode_batch, fast.encode),
            ("PromptTokenizer, ASCII texts", ascii_texts, pt_off.tokenize, pt_off.tokenize, pt_on.tokenize),
            ("PromptTokenizer, all texts", texts, pt_off.tokenize, pt_off.tokenize, pt_on.tokenize),
        ]
        for what, sample, hf_one, hf_many, fast_fn in rows:
            for batch in (1, BATCH):
                slow = per_prompt_us(hf_one if batch == 1 else hf_many, sample, batch, args.rounds)
                quick = per_prompt_us(fast_fn, sample, batch, args.rounds)
                lines.append(
                    f"| {name} | {len(texts)} | {share} | {chars:,.0f} | {what} | {batch} | {slow:,.2f} "
                    f"| {quick:,.2f} | {slow / quick:.1f}x |"
                )
                print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = " ".join([".venv/bin/python", *map(shlex.quote, [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])])
        args.out.write_text(
            "# Tokeniser cost: HF `tokenizers` vs the compiled WordPiece fast path\n\n"
            f"Written by `benchmarks/tokenizer_speed.py` (its docstring says what each row times). Command, from "
            f"the repository root:\n\n    {command}\n\n"
            f"Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Machine: {cpu_model()}, {os.cpu_count()} CPUs "
            f"(shared: timings are rough), load average at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}. "
            f"Python {platform.python_version()}, tokenizers {tokenizers.__version__}, TOKENIZERS_PARALLELISM "
            f"{os.environ['TOKENIZERS_PARALLELISM']}. CPU (process) time per prompt, best of {args.rounds} passes.\n\n"
            f"{table}\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
