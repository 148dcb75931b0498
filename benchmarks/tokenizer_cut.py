"""What a long prompt costs the tokenizer: read whole then cut, against cut as it is read.

A prompt longer than the encoder's limit keeps its first and last tokens only (the truncation rule). The
compiled WordPiece path reads such a text from a word boundary far enough from its end for the kept tail
and from its start up to the kept head (`WordPieceTokenizer.encode_cut`), never the part cut away. Two ways to the
same `TokenBatch`, on the same texts (the script checks that they are equal):

  read whole   the compiled tokenizer's ids of the whole text (`PromptTokenizer._fast_rows`), then cut
               and padded (`cut_and_pad_flat`): the path before `encode_cut`
  cut as read  `PromptTokenizer.tokenize`

Limit 256 tokens, rule head_tail:96 (the shipped bundles'). Corpora: benchmarks/ghz/prompts.json's `long`
prompts (16, 3,140 characters on average); texts of 1,000, 5,000 and 20,000 characters (the service's
default `max_prompt_chars`) made by joining those prompts in turn and cutting at that length; and
20,000-character texts without a space (a Chinese sentence repeated, and `key=value;` code-like text),
whose tail starts after an ideograph or a punctuation mark.
A figure is the best of `--rounds` passes of the mean CPU time (process time) per prompt, one prompt per
call and 64 per call.

    .venv/bin/python benchmarks/tokenizer_cut.py --out benchmarks/RESULTS_tokenizer_cut.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from itertools import cycle
from pathlib import Path

import numpy as np

from lmroute.bundle.encoder import PromptTokenizer, TokenBatch
from lmroute.bundle.truncation import Truncation
from lmroute.export.encoder_export import default_model_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenizer_speed import cpu_model, per_prompt_us

ROOT = Path(__file__).resolve().parents[1]
MAX_TOKENS = 256
RULE = "head_tail:96"
LENGTHS = (1_000, 5_000, 20_000)
# Text without ASCII spaces: its tail starts after an ideograph or a punctuation mark.
CHINESE = "我们今天讨论一下这个问题的解决方案，请给出详细的步骤和理由。"
NO_SPACES = "key=value;next_key=3.14,list=[a,b,c];"


def read_whole(tok: PromptTokenizer, texts: list[str]) -> TokenBatch:
    return tok.cut_and_pad_rows(*tok._fast_rows(texts))


def joined(texts: list[str], chars: int, count: int) -> list[str]:
    """`count` texts of `chars` characters: the corpus joined in turn from a different start each."""
    out = []
    for k in range(count):
        parts, size = [], 0
        for t in cycle(texts[k % len(texts) :] + texts[: k % len(texts)]):
            parts.append(t)
            size += len(t) + 1
            if size >= chars:
                break
        out.append("\n".join(parts)[:chars])
    return out


def same(a: TokenBatch, b: TokenBatch) -> bool:
    fields = ("input_ids", "attention_mask", "token_type_ids", "n_tokens", "truncated")
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    tok = PromptTokenizer(
        default_model_dir() / "tokenizer.json", max_tokens=MAX_TOKENS, truncation=Truncation.parse(RULE)
    )
    assert tok.fast_path, tok.fast_path_note
    ghz = json.loads((ROOT / "benchmarks/ghz/prompts.json").read_text(encoding="utf-8"))
    long = [p["text"] for p in ghz if p["kind"] == "long"]
    corpora = {
        "ghz long": long,
        **{f"{n:,} chars": joined(long, n, 16) for n in LENGTHS},
        "20,000 chars, Chinese": [(CHINESE * 1000)[k : k + 20_000] for k in range(16)],
        "20,000 chars, no spaces": [(NO_SPACES * 2000)[k : k + 20_000] for k in range(16)],
    }
    lines = [
        "| corpus | texts | mean chars | cut (of the texts) | batch | read whole, us/prompt | cut as read, us/prompt "
        "| whole / cut |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, texts in corpora.items():
        got = tok.tokenize(texts)
        if not same(got, read_whole(tok, texts)):
            raise SystemExit(f"{name}: the two ways give different batches")
        chars = sum(map(len, texts)) / len(texts)
        for batch in (1, 64):
            whole = per_prompt_us(lambda c: read_whole(tok, c), texts, batch, args.rounds)
            cut = per_prompt_us(tok.tokenize, texts, batch, args.rounds)
            lines.append(
                f"| {name} | {len(texts)} | {chars:,.0f} | {int(got.truncated.sum())} | {batch} | {whole:,.1f} "
                f"| {cut:,.1f} | {whole / cut:.1f}x |"
            )
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/tokenizer_cut.py", *sys.argv[1:]])
        head = [
            "# A long prompt's tokenizer cost: read whole then cut, against cut as it is read",
            "",
            "Written by `benchmarks/tokenizer_cut.py` (its docstring says what each column times). Command, from "
            "the repository root:",
            "",
            f"    {command}",
            "",
            f"Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Machine: {cpu_model()}, "
            f"{len(os.sched_getaffinity(0))} CPUs. Python {platform.python_version()}. Limit "
            f"{MAX_TOKENS} tokens, rule {RULE}. CPU (process) time per prompt, best of {args.rounds} passes; "
            "both ways give equal batches for every corpus (checked by the script).",
            "",
        ]
        args.out.write_text("\n".join(head) + "\n" + table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
