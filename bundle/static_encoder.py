"""The static sentence encoder: a token table instead of a transformer (serving path, NumPy only).

A text's embedding is the L2-normalised mean of its kept tokens' rows of a float32 table [vocab, dim]
(special tokens included; the rows already carry each token's weight). The table is distilled at build
time from the bundle's transformer encoder (`lmroute.export.static_distill`); the tokenizer, the token
limit and the truncation rule are the transformer's, so the bert router reads the same tokens whichever
encoder the bundle has.

Holds `StaticEncoder` (same interface as `lmroute.bundle.encoder.OnnxEncoder`: `tokenize`, `embed`,
`encode`, `dim`, `max_tokens`, `truncation`, `tokenizer`, `model_path`) and `load_table` (the table's
checks: 2-D float32, finite, one row per tokenizer id, values small enough that a prompt's sum of
max_tokens rows stays far below float32's largest value, so no prompt's embedding overflows).

The gather, sum and norm are one call of the compiled core (`lmroute.kernels.compiled.token_mean`). A
row of the batch is summed over its own kept tokens only, in order (padding is never read), so a
prompt's embedding never depends on what it was batched with, and a batch costs its real tokens, not
its padded size: the service embeds a whole batch in one call (`chunk_by_length` is False).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lmroute.bundle.encoder import (
    EncoderModelError,
    FileReader,
    PromptTokenizer,
    TokenBatch,
    encode_in_batches,
    read_file,
)
from lmroute.bundle.files import npy_array
from lmroute.bundle.truncation import HEAD, Truncation
from lmroute.kernels.compiled import StaticEmbedding, token_mean

__all__ = ["MAX_TOKEN_SUM", "StaticEncoder", "load_table"]

MAX_TOKEN_SUM = 1e30
"""The largest a prompt's sum of table values may get (max_tokens x the table's largest |value|): about
3e8 times below float32's largest value (3.4e38), so the float32 sum of a prompt's rows never overflows."""


def load_table(
    path: Path, vocab_size: int, read: FileReader = read_file, *, max_tokens: int = 1
) -> npt.NDArray[np.float32]:
    """The token table at `path` (its bytes as `read` gives them): float32 [vocab_size, dim], finite, a
    plain .npy (no pickles, no .npz), its values at most MAX_TOKEN_SUM / max_tokens in magnitude (the
    sum of a prompt's max_tokens rows stays finite); EncoderModelError names the file and what is wrong."""
    data = read(path)
    try:
        table = npy_array(data)
    except ValueError as exc:
        raise EncoderModelError(f"{path}: {exc}") from None
    if table.dtype != np.float32 or table.ndim != 2 or table.shape[1] < 1:
        raise EncoderModelError(f"{path}: table is {table.dtype} {table.shape}, expected float32 [vocab, dim]")
    if table.shape[0] != vocab_size:
        raise EncoderModelError(f"{path}: table has {table.shape[0]} rows, the tokenizer has {vocab_size} ids")
    if not np.isfinite(table).all():
        raise EncoderModelError(f"{path}: table holds NaN or infinite values")
    largest = float(np.abs(table).max())
    if largest * max(max_tokens, 1) > MAX_TOKEN_SUM:
        raise EncoderModelError(
            f"{path}: table holds a value of magnitude {largest:.3g}; a prompt of {max_tokens} tokens could sum"
            f" to {largest * max_tokens:.3g}, above {MAX_TOKEN_SUM:.0e} (float32 overflows at 3.4e38): values"
            f" must be at most {MAX_TOKEN_SUM / max(max_tokens, 1):.3g}"
        )
    return np.ascontiguousarray(table)


class StaticEncoder:
    """Tokeniser + token table. Thread-safe (read-only arrays; the Rust tokenizer is thread-safe).

    table_path: float32 [vocab, dim] `.npy`. tokenizer_path, max_tokens, truncation: as for OnnxEncoder
    (`PromptTokenizer`). read: how the files' bytes are read (`lmroute.bundle.encoder.FileReader`). Raises
    EncoderModelError naming the file when the table or tokenizer is missing or malformed (`load_table`),
    and when the empty prompt (the template's special tokens alone) embeds to zero: their rows sum to
    zero (no direction).
    """

    def __init__(
        self,
        table_path: str | os.PathLike[str],
        tokenizer_path: str | os.PathLike[str],
        *,
        max_tokens: int = 256,
        truncation: Truncation = HEAD,
        read: FileReader = read_file,
    ) -> None:
        self.model_path = Path(table_path)
        self.tokenizer_path = Path(tokenizer_path)
        self.tokenizer = PromptTokenizer(self.tokenizer_path, max_tokens=max_tokens, truncation=truncation, read=read)
        self.max_tokens = max_tokens
        self.truncation = truncation
        self.pad_id = self.tokenizer.pad_id
        self.chunk_by_length = False  # padding costs nothing here: embed whole batches
        table = load_table(self.model_path, self.tokenizer.vocab_size, read, max_tokens=max_tokens)
        self.dim = int(table.shape[1])
        self._table = table
        self._table.setflags(write=False)
        empty = self.tokenize([""])
        if not np.isfinite(self.embed(empty)).all():  # `embed` normalises a tiny sum in float64: only zero
            special = empty.input_ids[0][empty.attention_mask[0].astype(bool)].tolist()
            raise EncoderModelError(
                f"{self.model_path}: the empty prompt embeds to zero: the rows of its special tokens"
                f" (ids {special}) sum to zero, so it has no direction"
            )

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """`PromptTokenizer.tokenize`: cut to max_tokens by the truncation rule, padded to the longest."""
        return self.tokenizer.tokenize(texts)

    def embed(self, tokens: TokenBatch) -> npt.NDArray[np.float32]:
        """float32 [n, dim]: each row the L2-normalised sum (= mean, after normalising) of its kept tokens'
        table rows."""
        n = len(tokens)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        mask = tokens.attention_mask.astype(bool)
        counts = mask.sum(axis=1)
        if not counts.all():
            raise EncoderModelError(f"{self.model_path}: a row of the batch holds no token")
        offsets = np.concatenate(([0], np.cumsum(counts)))
        ids = tokens.input_ids[mask]
        out: npt.NDArray[np.float32] = token_mean(self._table, ids, offsets)
        for r in np.flatnonzero(~np.isfinite(out).all(axis=1)).tolist():
            out[r] = self._mean_in_float64(ids[offsets[r] : offsets[r + 1]])
        return out

    def _mean_in_float64(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """One row's embedding summed and normalised in float64: for a row whose float32 sum is too small
        to normalise in float32. A row whose rows sum to exactly zero stays non-finite (it has no
        direction)."""
        total = self._table[ids].astype(np.float64).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            row: npt.NDArray[np.float32] = (total / np.linalg.norm(total)).astype(np.float32)
        return row

    def embed_texts(self, texts: Sequence[str]) -> StaticEmbedding | None:
        """`embed(tokenize(texts))` with each text's kept tokens and whether it was cut, in one compiled
        call (no padded batch between: a one-prompt call's fast path). None when the compiled tokenizer
        is off, leaves a text to HF, or gives a non-finite row: then tokenise and embed."""
        got = self.tokenizer.embed_static(texts, self._table)
        if got is not None and not np.isfinite(got.embeddings).all():
            return None  # a row the float32 sum could not normalise: `embed` sums it again in float64
        return got

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> npt.NDArray[np.float32]:
        """Embed any number of texts, `batch_size` at a time (`encode_in_batches`)."""
        out: npt.NDArray[np.float32] = encode_in_batches(self, texts, batch_size)
        return out
