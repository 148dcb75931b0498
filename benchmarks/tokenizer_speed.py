"""Per-prompt cost of tokenising: HF `tokenizers` vs the compiled WordPiece fast path.

Corpora: benchmarks/ghz/prompts.json (its `short` and `long` prompts) and the training prompts
(`lmroute.export.data.load_comparisons(data/)`). Two comparisons, each at one text per call and at
64 texts per call (batches filled by cycling through the corpus), on the corpus's pure-ASCII texts, its
other texts and (PromptTokenizer) all of them:

  tokenizer                HF `Tokenizer.encode` / `encode_batch` (truncation and padding off) vs
                           `lmroute.kernels.compiled.WordPieceTokenizer.encode`
  PromptTokenizer          `PromptTokenizer.tokenize` (ids -> cut -> padded TokenBatch) with fast=False
                           (HF) vs fast=True; and, column "ASCII-only fast", fast=True with a compiled
                           tokenizer that takes only ASCII text (`non_ascii=False`: the path before the
                           compiled core read Unicode; a non-ASCII text is cut at ASCII whitespace, its
                           ASCII words go to the compiled core and the others to HF, a mostly non-ASCII
                           text to HF whole)

"fast path takes": the texts `WordPieceTokenizer.encode` takes whole (the others hold a character it
leaves to HF).

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
    # the path before the compiled core read Unicode: the same tokenizer.json, non-ASCII text left to HF
    pt_ascii = PromptTokenizer(path, max_tokens=256, fast=True)
    ascii_spec = json.loads(path.read_text(encoding="utf-8"))
    ascii_spec["normalizer"]["strip_accents"] = False  # read only for non-ASCII text: turns it off
    pt_ascii._fast = WordPieceTokenizer.from_tokenizer_json(ascii_spec)
    assert not pt_ascii._fast.non_ascii

    ghz = json.loads((ROOT / "benchmarks/ghz/prompts.json").read_text(encoding="utf-8"))
    corpora = {
        "ghz short": [p["text"] for p in ghz if p["kind"] == "short"],
        "ghz long": [p["text"] for p in ghz if p["kind"] == "long"],
        "training": list(load_comparisons(ROOT / "data").comparisons.prompts),
    }
    lines = [
        "| corpus | texts | pure ASCII | fast path takes | mean chars | what | batch | HF us/prompt "
        "| ASCII-only fast us/prompt | fast us/prompt | HF / fast |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, texts in corpora.items():
        ascii_texts = [t for t in texts if t.isascii()]
        other_texts = [t for t in texts if not t.isascii()]
        share = f"{len(ascii_texts)} ({100 * len(ascii_texts) / len(texts):.0f} %)"
        taken = fast.encode(texts).n_handled
        takes = f"{taken} ({100 * taken / len(texts):.0f} %)"
        chars = sum(map(len, texts)) / len(texts)
        want = pt_off.token_ids(texts)
        assert pt_on.token_ids(texts) == want and pt_ascii.token_ids(texts) == want, f"{name}: the paths differ"
        Call = Callable[[list[str]], object]
        rows: list[tuple[str, list[str], Call, Call, Call | None, Call]] = [  # HF one, HF many, ASCII-only, fast
            ("tokenizer, ASCII texts", ascii_texts, lambda c: hf.encode(c[0]), hf.encode_batch, None, fast.encode),
            ("tokenizer, non-ASCII texts", other_texts, lambda c: hf.encode(c[0]), hf.encode_batch, None, fast.encode),
            (
                "PromptTokenizer, ASCII texts",
                ascii_texts,
                pt_off.tokenize,
                pt_off.tokenize,
                pt_ascii.tokenize,
                pt_on.tokenize,
            ),
            (
                "PromptTokenizer, non-ASCII texts",
                other_texts,
                pt_off.tokenize,
                pt_off.tokenize,
                pt_ascii.tokenize,
                pt_on.tokenize,
            ),
            ("PromptTokenizer, all texts", texts, pt_off.tokenize, pt_off.tokenize, pt_ascii.tokenize, pt_on.tokenize),
        ]
        for what, sample, hf_one, hf_many, ascii_fn, fast_fn in rows:
            for batch in (1, BATCH):
                slow = per_prompt_us(hf_one if batch == 1 else hf_many, sample, batch, args.rounds)
                before = "-" if ascii_fn is None else f"{per_prompt_us(ascii_fn, sample, batch, args.rounds):,.2f}"
                quick = per_prompt_us(fast_fn, sample, batch, args.rounds)
                lines.append(
                    f"| {name} | {len(texts)} | {share} | {takes} | {chars:,.0f} | {what} | {batch} | {slow:,.2f} "
                    f"| {before} | {quick:,.2f} | {slow / quick:.1f}x |"
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
