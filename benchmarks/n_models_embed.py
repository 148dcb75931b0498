"""Prompt embeddings for the N-model benchmark (`benchmarks/n_models.py`), through the shipped encoder.

The encoder is the build's: the packaged all-MiniLM-L6-v2 exported to ONNX fp32 by
`lmroute.export.pipeline.ensure_encoder`, cut to the shipped recipe's token limit by its truncation rule
(`lmroute.export.recipe.SHIPPED`), and cached per text by `lmroute.export.embed_cache.embed_texts`
under `<cache_dir>/embeddings` (about 30 prompts/s on a 2-core x86 CPU the first time; later runs read the
cache). Run alone to fill the cache: `.venv/bin/python benchmarks/n_models_embed.py`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmroute.export.embed_cache import embed_texts
from lmroute.export.multi_data import load_llmrouter, load_routerbench
from lmroute.export.pipeline import ensure_encoder, open_encoder
from lmroute.export.recipe import SHIPPED

REPO = Path(__file__).resolve().parents[1]


def embed_prompts(prompts: Sequence[str], cache_dir: Path) -> tuple[np.ndarray, str]:
    """float32 [n, dim] embeddings of `prompts` (cached) and the encoder's cache id."""
    enc_dir, _ = ensure_encoder(None, cache_dir, SHIPPED.max_tokens)
    encoder, encoder_id = open_encoder(enc_dir, SHIPPED.max_tokens, SHIPPED.truncation_rule)
    return embed_texts(encoder, list(prompts), cache_dir / "embeddings", encoder_id=encoder_id), encoder_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    args = parser.parse_args()
    for table in (load_routerbench(args.data_dir), load_llmrouter(args.data_dir)):
        emb, encoder_id = embed_prompts(table.prompts, args.cache_dir)
        print(f"{table.name}: {emb.shape[0]} prompts embedded ({emb.shape[1]}-d, encoder {encoder_id})")


if __name__ == "__main__":
    main()
