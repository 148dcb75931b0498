"""Sentence-encoder runtime: HF `tokenizers` + an ONNX Runtime session (serving path, no torch).

Holds:
- `TokenBatch`: the tokenised, dynamically padded batch (int64 arrays) with per-text token counts and
  truncation flags.
- `PromptTokenizer`: `tokenizer.json` + `max_tokens` + a truncation rule (`lmroute.bundle.truncation`):
  tokenises whole texts, cuts each one longer than `max_tokens` by the rule (`cut_and_pad`) and pads to
  the longest text of the batch (never the fixed 128 of the shipped tokenizer.json). The serving
  encoder, the bert router (which reads the encoder's tokens) and the trainers all tokenise through it.
- `OnnxEncoder`: a `PromptTokenizer` and `encoder/model.onnx`; checks the graph's signature (inputs
  input_ids / attention_mask / token_type_ids int64 [batch, seq]; output "sentence_embedding" float32
  [batch, dim]) and embeds.
- `EncoderModelError`: raised when the model or tokenizer file is missing or not what we expect; the
  message names the file and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from lmroute.bundle.truncation import HEAD, Truncation, cut_positions

__all__ = [
    "EncoderModelError",
    "OnnxEncoder",
    "PromptTokenizer",
    "TokenBatch",
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "cut_and_pad",
]

#: Graph inputs the encoder must take (all int64 [batch, seq]).
INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
#: Graph output the encoder must give (float32 [batch, dim], mean-pooled and L2-normalised).
OUTPUT_NAME = "sentence_embedding"

# Tokenizers' own thread pool would fight ORT and the event loop for our two cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class EncoderModelError(ValueError):
    """The encoder's model or tokenizer file is missing or malformed (message names file and problem)."""


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """A tokenised batch, right-padded to its longest text.

    input_ids, attention_mask, token_type_ids: int64 [n, seq]; n_tokens: int64 [n] (tokens kept,
    special tokens included); truncated: bool [n] (the text had more than max_tokens tokens and was cut
    by the tokenizer's truncation rule).
    """

    @staticmethod
    def empty() -> TokenBatch:
        """A batch of no texts."""
        none = np.zeros((0, 0), dtype=np.int64)
        return TokenBatch(none, none.copy(), none.copy(), np.zeros(0, np.int64), np.zeros(0, bool))

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    n_tokens: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        """Padded sequence length of the batch."""
        return int(self.input_ids.shape[1])

    @property
    def padded_tokens(self) -> int:
        """Tokens the model will process for this batch (n x seq_len), padding included."""
        return int(self.input_ids.shape[0] * self.input_ids.shape[1])

    @staticmethod
    def stack(parts: Sequence[TokenBatch], pad_id: int) -> TokenBatch:
        """The rows of `parts`, in order, as one batch right-padded to its longest row (ids `pad_id`,
        mask 0, type 0: what the tokenizer's own padding writes). Equal to tokenising all texts at once."""
        n = sum(len(p) for p in parts)
        if n == 0:
            empty = np.zeros((0, 0), dtype=np.int64)
            return TokenBatch(empty, empty.copy(), empty.copy(), np.zeros(0, np.int64), np.zeros(0, bool))
        n_tokens = np.concatenate([p.n_tokens for p in parts]).astype(np.int64)
        width = int(n_tokens.max())
        ids = np.full((n, width), pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        row = 0
        for p in parts:
            w = min(p.seq_len, width)
            ids[row : row + len(p), :w] = p.input_ids[:, :w]
            mask[row : row + len(p), :w] = p.attention_mask[:, :w]
            types[row : row + len(p), :w] = p.token_type_ids[:, :w]
            row += len(p)
        return TokenBatch(ids, mask, types, n_tokens, np.concatenate([p.truncated for p in parts]).astype(bool))

    def select(self, indices: Sequence[int] | np.ndarray) -> TokenBatch:
        """Rows `indices` (in that order), with padding trimmed to the longest selected row."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"TokenBatch.select: indices must be 1-D, got shape {idx.shape}")
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"TokenBatch.select: index out of range for a batch of {len(self)}")
        n_tokens = self.n_tokens[idx]
        width = int(n_tokens.max()) if idx.size else 0
        return TokenBatch(
            input_ids=np.ascontiguousarray(self.input_ids[idx, :width]),
            attention_mask=np.ascontiguousarray(self.attention_mask[idx, :width]),
            token_type_ids=np.ascontiguousarray(self.token_type_ids[idx, :width]),
            n_tokens=n_tokens,
            truncated=self.truncated[idx],
        )


def cut_and_pad(
    ids: Sequence[Sequence[int]],
    type_ids: Sequence[Sequence[int]],
    *,
    max_tokens: int,
    truncation: Truncation,
    front: int,
    back: int,
    pad_id: int,
) -> TokenBatch:
    """Whole token rows (special tokens included, `front` of them leading and `back` trailing each row)
    -> a TokenBatch: each row longer than `max_tokens` cut by `truncation`
    (`lmroute.bundle.truncation.cut_positions`), every row right-padded to the longest kept row (ids
    `pad_id`, mask 0, type 0). One gather over the batch; rows that fit are copied unchanged."""
    n = len(ids)
    if len(type_ids) != n:
        raise ValueError(f"cut_and_pad: {n} id rows but {len(type_ids)} type-id rows")
    if n == 0:
        return TokenBatch.empty()
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=n)
    total = int(lengths.sum())
    flat_ids = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=total)
    flat_types = np.fromiter(chain.from_iterable(type_ids), dtype=np.int64, count=total)
    truncated = lengths > max_tokens
    positions, valid = cut_positions(lengths, max_tokens=max_tokens, truncation=truncation, front=front, back=back)
    input_ids = np.full(valid.shape, pad_id, dtype=np.int64)
    token_type_ids = np.zeros(valid.shape, dtype=np.int64)
    if truncated.any():
        # The kept tokens in row-major order, as indices into the concatenated rows.
        source = ((np.cumsum(lengths) - lengths)[:, None] + positions)[valid]
        input_ids[valid] = flat_ids[source]
        token_type_ids[valid] = flat_types[source]
    else:  # every row kept whole: the concatenated rows are the kept tokens in row-major order
        input_ids[valid] = flat_ids
        token_type_ids[valid] = flat_types
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=valid.astype(np.int64),
        token_type_ids=token_type_ids,
        n_tokens=np.minimum(lengths, max_tokens),
        truncated=truncated,
    )


class PromptTokenizer:
    """The HF `tokenizers` file with the bundle's length limit and truncation rule: texts -> TokenBatch.

    Texts are tokenised whole (the file's own truncation and padding are switched off) and cut by
    `cut_and_pad`. The leading and trailing special tokens of the tokenizer's template are learnt once
    from a probe text. Thread-safe (the Rust tokenizer is). Raises EncoderModelError naming the file when
    it is missing or not a tokenizers file, ValueError for a bad max_tokens.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_tokens: int, truncation: Truncation = HEAD) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
            raise ValueError(f"max_tokens must be an int >= 2 (room for [CLS] and [SEP]), got {max_tokens!r}")
        if not isinstance(truncation, Truncation):
            raise TypeError(f"truncation must be a Truncation, got {type(truncation).__name__}")
        self.path = Path(path)
        self.max_tokens = max_tokens
        self.truncation = truncation
        if not self.path.is_file():
            raise EncoderModelError(f"{self.path}: tokenizer file missing")
        try:
            tok = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise EncoderModelError(f"{self.path}: not a valid HF tokenizers file ({exc})") from exc
        self.pad_id = int((tok.padding or {}).get("pad_id", 0))
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self.front, self.back = self._special_ends(tok, self.path)
        if self.front + self.back >= max_tokens:
            raise ValueError(
                f"max_tokens {max_tokens} leaves no room for text next to the tokenizer's "
                f"{self.front + self.back} special tokens"
            )

    @staticmethod
    def _special_ends(tok: Tokenizer, path: Path) -> tuple[int, int]:
        """How many special tokens the tokenizer's template puts before and after a text's tokens."""
        mask = tok.encode("a").special_tokens_mask
        content = [i for i, m in enumerate(mask) if not m]
        if not content:
            raise EncoderModelError(f"{path}: the tokenizer gives no text token for the probe text 'a'")
        return content[0], len(mask) - 1 - content[-1]

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenise `texts` (cut to max_tokens by the rule, pad to the longest); "" gives [CLS] [SEP]."""
        if isinstance(texts, str):
            raise TypeError("tokenize expects a sequence of strings, got a single str")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        if not texts:
            return TokenBatch.empty()
        encs = self._tok.encode_batch(texts)
        return cut_and_pad(
            [e.ids for e in encs],
            [e.type_ids for e in encs],
            max_tokens=self.max_tokens,
            truncation=self.truncation,
            front=self.front,
            back=self.back,
            pad_id=self.pad_id,
        )

    def token_ids(self, texts: Sequence[str], *, chunk: int = 1024) -> list[list[int]]:
        """The kept ids of each text, unpadded (what `tokenize` puts in its rows), for training loops."""
        texts = list(texts)
        out: list[list[int]] = []
        for start in range(0, len(texts), chunk):
            tb = self.tokenize(texts[start : start + chunk])
            out.extend(row[:n].tolist() for row, n in zip(tb.input_ids, tb.n_tokens.tolist(), strict=True))
        return out


def _elem_type_ok(ort_type: str, wanted: str) -> bool:
    return ort_type == wanted


class OnnxEncoder:
    """Tokeniser + ONNX sentence encoder. Thread-safe for concurrent `embed` calls (ORT sessions are).

    max_tokens: the token limit ([CLS] and [SEP] included). truncation: what a longer prompt keeps
    (`lmroute.bundle.truncation`; the bundle's `encoder.truncation`, `head` when it states none).
    providers: ORT execution providers, in order of preference. intra_op_threads: ORT threads per call.
    allow_spinning: let idle ORT threads spin; off by default because on our shared 2 cores a spinning
    pool starves the event loop and other workers (measured 2-4x lower throughput under load; on an idle
    machine spinning saves ~5-15 %).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        tokenizer_path: str | os.PathLike[str],
        *,
        max_tokens: int = 256,
        truncation: Truncation = HEAD,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 1,
        allow_spinning: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.tokenizer_path = Path(tokenizer_path)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
            raise ValueError(f"max_tokens must be an int >= 2 (room for [CLS] and [SEP]), got {max_tokens!r}")
        if not isinstance(intra_op_threads, int) or intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be an int >= 1, got {intra_op_threads!r}")
        if not providers:
            raise ValueError("providers must name at least one ONNX Runtime execution provider")
        self.max_tokens = max_tokens
        self.truncation = truncation
        self.tokenizer = PromptTokenizer(self.tokenizer_path, max_tokens=max_tokens, truncation=truncation)
        self.pad_id = self.tokenizer.pad_id
        self._session = self._load_session(self.model_path, providers, intra_op_threads, allow_spinning)
        self.dim = self._check_signature(self._session, self.model_path)

    # ----------------------------------------------------------------------------------------- loading
    @staticmethod
    def _load_session(
        path: Path, providers: Sequence[str], intra_op_threads: int, allow_spinning: bool
    ) -> ort.InferenceSession:
        if not path.is_file():
            raise EncoderModelError(f"{path}: encoder model file missing")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        try:
            return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
        except Exception as exc:
            raise EncoderModelError(f"{path}: ONNX Runtime cannot load the encoder model ({exc})") from exc

    @staticmethod
    def _check_signature(session: ort.InferenceSession, path: Path) -> int:
        inputs = {i.name: i for i in session.get_inputs()}
        if set(inputs) != set(INPUT_NAMES):
            raise EncoderModelError(f"{path}: encoder inputs are {sorted(inputs)}, expected {sorted(INPUT_NAMES)}")
        for name in INPUT_NAMES:
            arg = inputs[name]
            if not _elem_type_ok(arg.type, "tensor(int64)") or len(arg.shape) != 2:
                raise EncoderModelError(
                    f"{path}: input {name!r} is {arg.type} {arg.shape}, expected tensor(int64) [batch, seq]"
                )
        outputs = {o.name: o for o in session.get_outputs()}
        if OUTPUT_NAME not in outputs:
            raise EncoderModelError(f"{path}: encoder has no output {OUTPUT_NAME!r} (outputs: {sorted(outputs)})")
        out = outputs[OUTPUT_NAME]
        if not _elem_type_ok(out.type, "tensor(float)") or len(out.shape) != 2:
            raise EncoderModelError(
                f"{path}: output {OUTPUT_NAME!r} is {out.type} {out.shape}, expected tensor(float) [batch, dim]"
            )
        dim = out.shape[1]
        if isinstance(dim, int) and dim > 0:
            return dim
        # Symbolic dim: learn it from a one-token probe.
        probe = np.array([[0]], dtype=np.int64)
        feeds = {name: probe if name != "attention_mask" else np.ones_like(probe) for name in INPUT_NAMES}
        (emb,) = session.run([OUTPUT_NAME], feeds)
        return int(emb.shape[1])

    # ---------------------------------------------------------------------------------------- running
    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """`PromptTokenizer.tokenize`: cut to max_tokens by the truncation rule, padded to the longest."""
        return self.tokenizer.tokenize(texts)

    def embed(self, tokens: TokenBatch) -> np.ndarray:
        """Run the encoder on one batch as given (no re-sorting): float32 [n, dim], L2-normalised."""
        n = len(tokens)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        feeds = {
            "input_ids": tokens.input_ids,
            "attention_mask": tokens.attention_mask,
            "token_type_ids": tokens.token_type_ids,
        }
        (emb,) = self._session.run([OUTPUT_NAME], feeds)
        if emb.shape != (n, self.dim):
            raise EncoderModelError(
                f"{self.model_path}: output {OUTPUT_NAME!r} has shape {emb.shape}, expected {(n, self.dim)}"
            )
        return np.asarray(emb, dtype=np.float32)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed any number of texts: sort by length into sub-batches of `batch_size`, restore order."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        tokens = self.tokenize(texts)
        n = len(tokens)
        out = np.empty((n, self.dim), dtype=np.float32)
        order = np.argsort(tokens.n_tokens, kind="stable")
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.embed(tokens.select(idx))
        return out
