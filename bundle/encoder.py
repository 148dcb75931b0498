"""Sentence-encoder runtime: HF `tokenizers` + an ONNX Runtime session (serving path, no torch).

Holds:
- `TokenBatch`: the tokenised, dynamically padded batch (int64 arrays) with per-text token counts and
  truncation flags.
- `PromptTokenizer`: `tokenizer.json` + `max_tokens` + a truncation rule (`lmroute.bundle.truncation`):
  tokenises whole texts, cuts each one longer than `max_tokens` by the rule (`cut_and_pad`) and pads to
  the longest text of the batch (never the fixed 128 of the shipped tokenizer.json). The serving
  encoder, the bert router (which reads the encoder's tokens) and the trainers all tokenise through it.
  For BERT's uncased WordPiece files it tokenises with the compiled core
  (`lmroute.kernels.compiled.WordPieceTokenizer`, the same ids as HF, 20-70x faster:
  benchmarks/RESULTS_tokenizer.md) and only the words holding a character it leaves to HF (unassigned
  code points, ~2,100 rare marks and signs: `lmroute.kernels.wordpiece_chars`) with HF, of a long text
  only those in a head and a tail window; `cut_and_pad_flat` cuts and pads rows given as one flat id
  array. A text holding a surrogate code point that HF would read is refused (ValueError).
- `OnnxEncoder`: a `PromptTokenizer` and `encoder/model.onnx`; checks the graph's signature (inputs
  input_ids / attention_mask / token_type_ids int64 [batch, seq]; output "sentence_embedding" float32
  [batch, dim]) and embeds.
- `SentenceEncoder`: the protocol every encoder kind meets (`OnnxEncoder` here, the static token table in
  `lmroute.bundle.static_encoder`, an embeddings endpoint in `lmroute.bundle.remote_encoder`).
- `EncoderModelError`: raised when the model or tokenizer file is missing or not what we expect; the
  message names the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import chain, groupby
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from lmroute.bundle.truncation import HEAD, Truncation, cut_positions

if TYPE_CHECKING:
    from lmroute.kernels.compiled import StaticEmbedding, WordPieceTokenizer

__all__ = [
    "EncoderModelError",
    "FileReader",
    "SentenceEncoder",
    "OnnxEncoder",
    "PromptTokenizer",
    "TokenBatch",
    "INPUT_NAMES",
    "OUTPUT_NAME",
    "cut_and_pad",
    "cut_and_pad_flat",
    "encode_in_batches",
]

#: Graph inputs the encoder must take (all int64 [batch, seq]).
INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
#: Graph output the encoder must give (float32 [batch, dim], mean-pooled and L2-normalised).
OUTPUT_NAME = "sentence_embedding"

_ASCII_SPACE = re.compile(r"[\t\n\r ]")

# Tokenizers' own thread pool would fight ORT and the event loop for our two cores.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class EncoderModelError(ValueError):
    """The encoder's model or tokenizer file is missing or malformed (message names file and problem)."""


FileReader = Callable[[Path], bytes]
"""How an encoder reads its files' bytes: `read_file` by default; the bundle loader passes the bytes it
checked against the manifest (`lmroute.bundle.files.BundleFiles.reader`), so a file replaced after the
check is never parsed."""


def read_file(path: Path) -> bytes:
    """The bytes of the file at `path`; EncoderModelError naming it when it is missing or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise EncoderModelError(f"{path}: missing") from None
    except OSError as exc:
        raise EncoderModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_text(path: Path, read: FileReader) -> str:
    """The UTF-8 text of the file at `path` as `read` gives it; EncoderModelError when it is not UTF-8."""
    try:
        return read(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EncoderModelError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """A tokenised batch, right-padded to its longest text.

    input_ids, attention_mask, token_type_ids: int64 [n, seq]; n_tokens: int64 [n] (tokens kept,
    special tokens included); truncated: bool [n] (the text had more than max_tokens tokens and was cut
    by the tokenizer's truncation rule); texts: the texts themselves, for an encoder that embeds text
    rather than token ids (`lmroute.bundle.remote_encoder`), else empty.
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
    texts: tuple[str, ...] = ()

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
        texts = tuple(t for p in parts for t in p.texts) if all(p.texts for p in parts) else ()
        truncated = np.concatenate([p.truncated for p in parts]).astype(bool)
        return TokenBatch(ids, mask, types, n_tokens, truncated, texts)

    def row(self, i: int) -> TokenBatch:
        """Row `i` alone, trimmed to its tokens, as views of this batch's arrays (no copy)."""
        n = int(self.n_tokens[i])
        return TokenBatch(
            self.input_ids[i : i + 1, :n],
            self.attention_mask[i : i + 1, :n],
            self.token_type_ids[i : i + 1, :n],
            self.n_tokens[i : i + 1],
            self.truncated[i : i + 1],
            self.texts[i : i + 1],
        )

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
            texts=tuple(self.texts[j] for j in idx.tolist()) if self.texts else (),
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
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=n)
    total = int(lengths.sum())
    return cut_and_pad_flat(
        np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=total),
        lengths,
        flat_type_ids=np.fromiter(chain.from_iterable(type_ids), dtype=np.int64, count=total),
        max_tokens=max_tokens,
        truncation=truncation,
        front=front,
        back=back,
        pad_id=pad_id,
    )


def cut_and_pad_flat(
    flat_ids: np.ndarray,
    lengths: np.ndarray,
    *,
    flat_type_ids: np.ndarray | None = None,
    max_tokens: int,
    truncation: Truncation,
    front: int,
    back: int,
    pad_id: int,
) -> TokenBatch:
    """`cut_and_pad` of rows given one after the other: int64 `flat_ids` and row `lengths`
    (sum(lengths) == len(flat_ids)); type ids `flat_type_ids` alike, or all 0 when None."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.shape[0])
    if n == 0:
        return TokenBatch.empty()
    total = int(flat_ids.shape[0])
    if int(lengths.sum()) != total or (flat_type_ids is not None and flat_type_ids.shape != flat_ids.shape):
        raise ValueError(f"cut_and_pad: lengths sum to {int(lengths.sum())} for {total} ids")
    width = int(lengths.max())
    if width <= max_tokens and max_tokens >= front + back:  # nothing to cut: rows as they are
        types = np.zeros((n, width), dtype=np.int64)
        if n == 1:
            mask = np.ones((1, width), dtype=np.int64)
            ids = flat_ids.reshape(1, width).astype(np.int64)  # a copy
            if flat_type_ids is not None:
                types[0] = flat_type_ids
        else:
            valid = np.arange(width, dtype=np.int64) < lengths[:, None]
            mask = valid.astype(np.int64)
            ids = np.full((n, width), pad_id, dtype=np.int64)
            ids[valid] = flat_ids
            if flat_type_ids is not None:
                types[valid] = flat_type_ids
        return TokenBatch(ids, mask, types, lengths.copy(), np.zeros(n, dtype=bool))
    truncated = lengths > max_tokens
    positions, valid = cut_positions(lengths, max_tokens=max_tokens, truncation=truncation, front=front, back=back)
    input_ids = np.full(valid.shape, pad_id, dtype=np.int64)
    token_type_ids = np.zeros(valid.shape, dtype=np.int64)
    # The kept tokens in row-major order, as indices into the concatenated rows.
    source = ((np.cumsum(lengths) - lengths)[:, None] + positions)[valid]
    input_ids[valid] = flat_ids[source]
    if flat_type_ids is not None:
        token_type_ids[valid] = flat_type_ids[source]
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

    Fast path, same ids: when the file is BERT's uncased WordPiece kind (as
    `lmroute.kernels.compiled.WordPieceTokenizer.from_tokenizer_json` checks), `fast` is true and the
    environment variable LMROUTE_FAST_TOKENIZER is not "0", text is tokenised by the compiled core and
    only the words holding a character it leaves to HF by HF (`_fast_rows`); a few probe texts must come
    out as HF's first. The compiled core cuts as it reads (`encode_cut`): a text longer than the limit is
    read from its tail back to a word boundary and from its head up to the cut, not in between. A long
    text it leaves to HF is read the same way, by words (`_windowed_rows`): HF reads a head and a tail
    window of it cut at ASCII whitespace, grown until they hold the ids the cut keeps, not the middle.
    `fast_path` says whether it is on, `fast_path_note` why not. With `fast` on, a missing or stale
    compiled core raises KernelUnavailableError, as it does for the routers.
    """

    _ASCII_SPACES = re.compile(r"[\t\n\r ]+")
    _MIN_FAST_SHARE = 0.5
    #: A long text left to HF: its first windows hold this many characters for each id the cut keeps
    #: (English runs 4-5 characters an id); windows that give too few ids grow (`_windowed_rows`).
    _WINDOW_CHARS_PER_ID = 8
    #: Texts both paths must tokenise alike before the fast path is used (a check of the file's kind).
    _PROBES: tuple[str, ...] = (
        "",
        "Hello, World!! [SEP] x[CLS]y [cls] ##ab a##b don't",
        "  Tabs\tand\r\nnew\x00lines\x01\x7f, 3.14159 snake_case-word `~^|\\ unaffable qqqqzzzxx",
        "a" * 101 + " " + "b" * 100,
        "Naïve café\u00a0costs 3€ — “quoted” 日本語 [SEP] ΟΔΟΣ x\u0301y \u0301z",
        "Words left to HF: \u0378x and \u08d4 around İstanbul 한국어 [CLS]",  # _fast_rows cuts this one
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_tokens: int,
        truncation: Truncation = HEAD,
        fast: bool = True,
        read: FileReader = read_file,
    ) -> None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
            raise ValueError(f"max_tokens must be an int >= 2 (room for [CLS] and [SEP]), got {max_tokens!r}")
        if not isinstance(truncation, Truncation):
            raise TypeError(f"truncation must be a Truncation, got {type(truncation).__name__}")
        self.path = Path(path)
        self.max_tokens = max_tokens
        self.truncation = truncation
        text = read_text(self.path, read)
        try:
            tok = Tokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise EncoderModelError(f"{self.path}: not a valid HF tokenizers file ({exc})") from exc
        self.pad_id = int((tok.padding or {}).get("pad_id", 0))
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self.front, self.back = self._special_ends(tok, self.path)
        probe_ids = tok.encode("a").ids
        #: The template's special-token ids before and after a text's tokens ([CLS] and [SEP] for BERT).
        self.front_ids: tuple[int, ...] = tuple(probe_ids[: self.front])
        self.back_ids: tuple[int, ...] = tuple(probe_ids[len(probe_ids) - self.back :])
        if self.front + self.back >= max_tokens:
            raise ValueError(
                f"max_tokens {max_tokens} leaves no room for text next to the tokenizer's "
                f"{self.front + self.back} special tokens"
            )
        self._fast: WordPieceTokenizer | None = None
        self.fast_path_note = "off by request"
        if fast and os.environ.get("LMROUTE_FAST_TOKENIZER", "1") != "0":
            self._fast, self.fast_path_note = self._fast_tokenizer(text)
        if self._fast is not None:
            ids, lengths = self._fast_rows(list(self._PROBES))
            want = [e.ids for e in self._tok.encode_batch(list(self._PROBES))]
            if ids.tolist() != [i for row in want for i in row] or lengths.tolist() != [len(r) for r in want]:
                self._fast, self.fast_path_note = None, "the fast path disagrees with HF on the probe texts"
        self.fast_path = self._fast is not None

    def _fast_tokenizer(self, text: str) -> tuple[WordPieceTokenizer | None, str]:
        """The compiled tokenizer for this file (its `text`), or None and the reason it is not of the
        supported kind.
        Imports the compiled core (KernelUnavailableError when it is missing or stale, as for the routers)."""
        from lmroute.kernels.compiled import WordPieceTokenizer

        if self._tok.encode_special_tokens:
            return None, "special tokens are encoded as text"
        try:
            fast = WordPieceTokenizer.from_tokenizer_json(json.loads(text))
        # UnsupportedTokenizerError is a ValueError; RecursionError: JSON nested too deeply for the decoder
        except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
            return None, f"not a supported kind: {exc}"
        if (fast.front_ids, fast.back_ids) != (self.front_ids, self.back_ids):
            return None, "the template's special tokens differ from the probe's"
        return fast, ""

    @staticmethod
    def _special_ends(tok: Tokenizer, path: Path) -> tuple[int, int]:
        """How many special tokens the tokenizer's template puts before and after a text's tokens."""
        mask = tok.encode("a").special_tokens_mask
        content = [i for i, m in enumerate(mask) if not m]
        if not content:
            raise EncoderModelError(f"{path}: the tokenizer gives no text token for the probe text 'a'")
        return content[0], len(mask) - 1 - content[-1]

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenise `texts` (cut to max_tokens by the rule, pad to the longest); "" gives [CLS] [SEP].
        ValueError naming the text and the character for a text given to HF that holds a surrogate code
        point (U+D800-U+DFFF: not Unicode text, HF cannot read it)."""
        if isinstance(texts, str):
            raise TypeError("tokenize expects a sequence of strings, got a single str")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
        if not texts:
            return TokenBatch.empty()
        if self._fast is not None:
            cut = self._fast.encode_cut(texts, max_tokens=self.max_tokens, head_end=self._head_end)
            if cut.n_handled == len(texts):  # rows already cut: padded as they are, with their cut flags
                return replace(self.cut_and_pad_rows(cut.ids, cut.lengths), truncated=cut.truncated)
            left = np.flatnonzero(~cut.handled).tolist()
            _refuse_surrogates(texts, left)
            left_rows = self._windowed_rows([texts[i] for i in left])
            ids, lengths = _merge_rows(cut.handled, cut.ids, cut.lengths[cut.handled], *left_rows)
            batch = self.cut_and_pad_rows(ids, lengths)  # the rows taken are cut already: their flags kept
            return replace(batch, truncated=batch.truncated | (cut.handled & cut.truncated))
        _refuse_surrogates(texts, range(len(texts)))
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

    def cut_and_pad_rows(self, ids: np.ndarray, lengths: np.ndarray) -> TokenBatch:
        """Whole rows of ids one after the other (template included) cut by this tokenizer's limit and rule
        and padded (`cut_and_pad_flat`)."""
        return cut_and_pad_flat(
            ids,
            lengths,
            max_tokens=self.max_tokens,
            truncation=self.truncation,
            front=self.front,
            back=self.back,
            pad_id=self.pad_id,
        )

    def embed_static(self, texts: Sequence[str], table: np.ndarray) -> StaticEmbedding | None:
        """A static encoder's embeddings of `texts` over its token `table` (float32 [vocab, dim]) with the
        compiled tokenizer, cut and mean in one call: equal to the token-table mean of `tokenize(texts)`'s
        rows. None when the fast path is off or leaves a text to HF (then tokenise)."""
        if self._fast is None:
            return None
        items = texts if isinstance(texts, list) else list(texts)
        return self._fast.embed_static(items, table, max_tokens=self.max_tokens, head_end=self._head_end)

    @property
    def _head_end(self) -> int:
        """Where the kept head of a cut row ends: the template's front tokens and the rule's head."""
        return self.front + self.truncation.head_kept(self.max_tokens - self.front - self.back)

    def _fast_rows(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every text's ids (template included) one after the other, and the ids per text, as HF gives
        them. The fast path takes most texts whole; it leaves a text that holds a character it leaves to
        HF (`lmroute.kernels.wordpiece_chars`). Such a text is cut at ASCII whitespace (it ends words at
        every step of the pipeline, and no added token holds it) into words, all of them sent through the
        fast path in one call: its row is the template's tokens around the ids of the words it takes and
        of the runs of the other words, for HF (`_hf_runs`). A text whose words the fast path takes make
        under _MIN_FAST_SHARE of it goes to HF whole (cutting would not save HF's time). Type ids are 0
        (the template's are)."""
        assert self._fast is not None
        ids, lengths, handled, n_handled = self._fast.encode(texts)
        if n_handled == len(texts):
            return ids, lengths
        left = [i for i, h in enumerate(handled.tolist()) if not h]
        words = [[w for w in self._ASCII_SPACES.split(texts[i]) if w] for i in left]
        word_ids, word_lengths, word_taken, _ = self._fast.encode(list(chain.from_iterable(words)), with_template=False)
        fast_ids, taken = word_ids.tolist(), word_taken.tolist()
        word_ends = [0, *np.cumsum(word_lengths).tolist()]  # word j's ids: fast_ids[word_ends[j] : word_ends[j + 1]]
        whole: list[str] = []  # texts for HF whole
        hf_runs: list[str] = []  # runs of words for HF
        plans: list[list[tuple[bool, int, int]] | None] = []  # per text left: (fast, first word, end); None: whole
        first = 0
        for i, ws in zip(left, words, strict=True):
            end = first + len(ws)
            quick = sum(len(w) for w, t in zip(ws, taken[first:end], strict=True) if t)
            if quick < self._MIN_FAST_SHARE * len(texts[i]):
                whole.append(texts[i])
                plans.append(None)
            else:
                runs: list[tuple[bool, int, int]] = []
                j = first
                for fast, run in groupby(taken[first:end]):
                    k = j + sum(1 for _ in run)
                    runs.append((fast, j, k))
                    if not fast:
                        hf_runs.append(" ".join(ws[j - first : k - first]))
                    j = k
                plans.append(runs)
            first = end
        hf_ids, hf_lengths = self._hf_runs(hf_runs) if hf_runs else ([], [])
        hf_counts, hf_at = iter(hf_lengths), 0
        whole_rows = iter([e.ids for e in self._tok.encode_batch(whole)] if whole else [])
        rows: list[int] = []
        left_lengths = []
        for plan in plans:
            start = len(rows)
            if plan is None:
                rows += next(whole_rows)
            else:
                rows += self.front_ids
                for fast, j, k in plan:
                    if fast:
                        rows += fast_ids[word_ends[j] : word_ends[k]]
                    else:
                        n = next(hf_counts)
                        rows += hf_ids[hf_at : hf_at + n]
                        hf_at += n
                rows += self.back_ids
            left_lengths.append(len(rows) - start)
        return _merge_rows(handled, ids, lengths[handled], np.asarray(rows, dtype=np.int64), np.asarray(left_lengths))

    def _windowed_rows(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`_fast_rows` of `texts`, but a text longer than the cut needs is read from a head and a tail
        window only: its row is the template's tokens around the ids of both windows, a row that the cut
        (`cut_and_pad_rows`) gives the same kept ids, token count and cut flag as the whole text's row.
        A window ends (the head) or starts (the tail) at ASCII whitespace, which ends words at every step of
        the pipeline (see `_fast_rows`), so its ids are the whole text's first or last ones. The windows
        hold `_WINDOW_CHARS_PER_ID` characters per id kept at first; until the head gives the ids the rule
        keeps of the head, the tail those of the tail, and both together more than the limit holds (so the
        text is cut), they grow to twice the characters per id they gave (at least twice their size). A text
        whose windows would meet is read whole."""
        budget = self.max_tokens - self.front - self.back
        head = self.truncation.head_kept(budget)
        tail = budget - head
        rows: dict[int, np.ndarray] = {}  # text -> its row from its windows
        pending = dict.fromkeys(range(len(texts)), self._WINDOW_CHARS_PER_ID)  # text -> window chars per id
        while pending:
            cuts = {
                i: _window_cut(texts[i], per_id * (head + 1) if head else 0, per_id * (tail + 1) if tail else 0)
                for i, per_id in pending.items()
            }
            spans = {i: span for i, span in cuts.items() if span is not None}
            if not spans:
                break
            parts = [p for i, (e, s) in spans.items() for p in (texts[i][:e], texts[i][s:])]
            ids, lengths = self._fast_rows(parts)
            ends = np.cumsum(lengths).tolist()
            content = (lengths - self.front - self.back).tolist()
            grown = {}
            for k, (i, (e, s)) in enumerate(spans.items()):
                n_head, n_tail = content[2 * k], content[2 * k + 1]
                if n_head >= head and n_tail >= tail and n_head + n_tail > budget:
                    # [CLS] head ids, then tail ids [SEP]: the head's row less its back, the tail's less its front
                    head_end, tail_end = ends[2 * k], ends[2 * k + 1]
                    head_row = ids[head_end - int(lengths[2 * k]) : head_end - self.back]
                    rows[i] = np.concatenate([head_row, ids[head_end + self.front : tail_end]])
                else:  # too few ids: twice the characters per id these windows gave, at least twice as many
                    seen = max(e / max(n_head, 1) if head else 0, (len(texts[i]) - s) / max(n_tail, 1) if tail else 0)
                    grown[i] = max(2 * pending[i], math.ceil(2 * seen))
            pending = grown
        if not rows:
            return self._fast_rows(texts)
        windowed = np.zeros(len(texts), dtype=bool)
        windowed[list(rows)] = True
        kept = [rows[i] for i in sorted(rows)]
        whole_ids, whole_lengths = self._fast_rows([t for t, w in zip(texts, windowed.tolist(), strict=True) if not w])
        return _merge_rows(windowed, np.concatenate(kept), [len(r) for r in kept], whole_ids, whole_lengths)

    def _hf_runs(self, runs: list[str]) -> tuple[list[int], list[int]]:
        """HF's ids of the runs of words (no template) one after the other, and the ids per run, from one
        call on the runs joined by spaces: a token belongs to the run its first character is in (the
        offsets are in characters)."""
        enc = self._tok.encode(" ".join(runs), add_special_tokens=False)
        if len(runs) == 1:
            return enc.ids, [len(enc.ids)]
        starts = np.cumsum([0] + [len(r) + 1 for r in runs[:-1]])
        owner = np.searchsorted(starts, [o[0] for o in enc.offsets], side="right") - 1
        return enc.ids, np.bincount(owner, minlength=len(runs)).tolist()

    def token_ids(self, texts: Sequence[str], *, chunk: int = 1024) -> list[list[int]]:
        """The kept ids of each text, unpadded (what `tokenize` puts in its rows), for training loops."""
        texts = list(texts)
        out: list[list[int]] = []
        for start in range(0, len(texts), chunk):
            tb = self.tokenize(texts[start : start + chunk])
            out.extend(row[:n].tolist() for row, n in zip(tb.input_ids, tb.n_tokens.tolist(), strict=True))
        return out


def _window_cut(text: str, head_chars: int, tail_chars: int) -> tuple[int, int] | None:
    """Where a head window of at least `head_chars` characters of `text` ends and a tail window of at least
    `tail_chars` starts, both at ASCII whitespace (the head's end is a space's index, the tail's start one
    past a space's; 0 chars: no window, end 0 or start len(text)); None when the windows would meet or a
    window finds no whitespace."""
    if head_chars + tail_chars >= len(text):
        return None
    end = 0
    if head_chars:
        found = _ASCII_SPACE.search(text, head_chars)
        if found is None:
            return None
        end = found.start()
    start = len(text)
    if tail_chars:
        start = max(text.rfind(c, 0, len(text) - tail_chars) for c in "\t\n\r ") + 1
        if start == 0:
            return None
    return (end, start) if end < start else None


def _merge_rows(
    take_a: np.ndarray,
    a_ids: np.ndarray,
    a_lengths: Sequence[int] | np.ndarray,
    b_ids: np.ndarray,
    b_lengths: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows from two sources, each its rows' ids one after the other and their lengths: row i is the next
    row of a where `take_a[i]`, else the next row of b. Returns the rows' ids and lengths."""
    lengths = np.empty(take_a.shape[0], dtype=np.int64)
    lengths[take_a] = a_lengths
    lengths[~take_a] = b_lengths
    out = np.empty(int(lengths.sum()), dtype=np.int64)
    from_a = np.repeat(take_a, lengths)
    out[from_a] = a_ids
    out[~from_a] = b_ids
    return out, lengths


def _refuse_surrogates(texts: list[str], indices: Iterable[int]) -> None:
    """ValueError naming the first of `texts[indices]` that holds a surrogate code point and where (HF's
    own error for it is "TextInputSequence must be str")."""
    for i in indices:
        text = texts[i]
        if text.isascii():
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"texts[{i}] holds the surrogate code point U+{ord(text[exc.start]):04X} at character {exc.start}: "
                "not Unicode text (a lone half of a UTF-16 pair, or bytes decoded with surrogateescape)"
            ) from None


class SentenceEncoder(Protocol):
    """What the bundle, the trainers and the embedding cache use of an encoder: `OnnxEncoder` (a
    transformer) or `lmroute.bundle.static_encoder.StaticEncoder` (a token table). `model_path` is the
    file whose bytes name the embedding space (the ONNX graph or the table)."""

    dim: int
    max_tokens: int
    truncation: Truncation
    pad_id: int
    model_path: Path
    #: True when padding costs compute (a transformer): callers embed rows of similar length together.
    chunk_by_length: bool

    @property
    def tokenizer(self) -> PromptTokenizer | None:
        """The tokenizer (None: the encoder tokenises elsewhere, a remote endpoint)."""
        ...

    def tokenize(self, texts: Sequence[str]) -> TokenBatch: ...

    def embed(self, tokens: TokenBatch) -> np.ndarray: ...

    def encode(self, texts: Sequence[str], batch_size: int = ...) -> np.ndarray: ...


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
        read: FileReader | None = None,
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
        self.tokenizer = PromptTokenizer(
            self.tokenizer_path, max_tokens=max_tokens, truncation=truncation, read=read or read_file
        )
        self.pad_id = self.tokenizer.pad_id
        self.chunk_by_length = True  # attention runs over the padding: embed rows of similar length together
        self._session = self._load_session(self.model_path, providers, intra_op_threads, allow_spinning, read)
        self.dim = self._check_signature(self._session, self.model_path)

    # ----------------------------------------------------------------------------------------- loading
    @staticmethod
    def _load_session(
        path: Path, providers: Sequence[str], intra_op_threads: int, allow_spinning: bool, read: FileReader | None
    ) -> ort.InferenceSession:
        """The session over the model file (`read`'s bytes of it when given, else the file itself)."""
        if read is None and not path.is_file():
            raise EncoderModelError(f"{path}: encoder model file missing")
        model: str | bytes = read(path) if read is not None else str(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        try:
            return ort.InferenceSession(model, sess_options=opts, providers=list(providers))
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
        return encode_in_batches(self, texts, batch_size)


def encode_in_batches(encoder: SentenceEncoder, texts: Sequence[str], batch_size: int) -> np.ndarray:
    """Any number of texts through `encoder`: tokenised once, embedded in length-sorted sub-batches of
    `batch_size` (padding stays small), float32 [n, dim] in the texts' order. What every encoder's
    `encode` does."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    tokens = encoder.tokenize(texts)
    n = len(tokens)
    out = np.empty((n, encoder.dim), dtype=np.float32)
    order = np.argsort(tokens.n_tokens, kind="stable")
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        out[idx] = encoder.embed(tokens.select(idx))
    return out
