"""Parity of `PromptTokenizer` (the compiled WordPiece fast path) with HF `tokenizers` on every text of
data folders: each string of their .jsonl / .json records and each cell of their .csv files (deduplicated),
plus benchmarks/ghz/prompts.json, tokenised whole (no cut) with the shipped tokenizer.json both ways.
Prints the texts compared, how many are pure ASCII, how many the fast path takes whole and how many
differ (with the first few), and exits 1 when any differs.

    .venv/bin/python benchmarks/tokenizer_parity.py /work/shared/data
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Tokenizer

from lmroute.bundle.encoder import PromptTokenizer
from lmroute.export.encoder_export import default_model_dir

ROOT = Path(__file__).resolve().parents[1]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def folder_texts(root: Path) -> Iterator[str]:
    """Every string of the folder's .jsonl / .json records and every cell of its .csv files."""
    csv.field_size_limit(sys.maxsize)
    for path in sorted(root.rglob("*")):
        if path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines: U+2028 is text
                if line.strip():
                    yield from _strings(json.loads(line))
        elif path.suffix == ".json":
            yield from _strings(json.loads(path.read_text(encoding="utf-8")))
        elif path.suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                for row in csv.reader(f):
                    yield from row


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args(argv)

    path = default_model_dir() / "tokenizer.json"
    hf = Tokenizer.from_file(str(path))
    hf.no_truncation()
    hf.no_padding()
    tok = PromptTokenizer(path, max_tokens=1 << 30)
    assert tok.fast_path and tok._fast is not None, tok.fast_path_note

    texts = dict.fromkeys(t for folder in args.folders for t in folder_texts(folder))
    ghz = json.loads((ROOT / "benchmarks/ghz/prompts.json").read_text(encoding="utf-8"))
    texts.update(dict.fromkeys(p["text"] for p in ghz))
    items = list(texts)
    got = tok.token_ids(items, chunk=256)
    want = [e.ids for e in hf.encode_batch(items)]
    bad = [t for t, g, w in zip(items, got, want, strict=True) if g != w]
    print(
        f"texts {len(items):,} ({sum(map(len, items)):,} characters), pure ASCII {sum(t.isascii() for t in items):,}, "
        f"taken whole by the fast path {tok._fast.encode(items).n_handled:,}, differing from HF {len(bad):,}"
    )
    for text in bad[:5]:
        print(f"  differs: {text[:200]!r}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
