"""The compiled scoring core (C++ via nanobind, OpenMP; sources in kernels/src/) behind a validating API.

    SWIndex     sw_ranking: the training-prompt table prepared once (float32 embeddings, cell counts as
                CSR), then `scores(query_emb, strong_tier, weak_tier, gamma, base)` with the core's own
                exact similarity scan, or `scores_from_sims(sims, ...)` when the scan ran elsewhere
                (FAISS); `cell_weights(query_emb, gamma)` exposes the weight + scatter step and
                `scores_from_cell_weights` the Newton step (lmroute.kernels.gpu runs the rest on a GPU)
    MFIndex     mf: per-model vectors folded once from the factors; `logits(emb)` [b, n_models] and
                `pair_scores(emb, pairs)` = P(strong beats weak) per (strong, weak) pair
    bt_ratings  the small Bradley-Terry Newton solve on its own
    blend_scores  a router's scores blended with the difficulty prior (one call per batch: after the
                encoder, a handful of NumPy calls on cold caches cost more than the math)
    WordPieceTokenizer  BERT uncased WordPiece tokenisation, id for id HF `tokenizers`'s, built from a
                tokenizer.json of that kind (`from_tokenizer_json`); Unicode text too (the characters'
                table: lmroute.kernels.wordpiece_chars), except a text holding a character whose Unicode
                properties HF's and Python's tables could disagree on, which comes back unhandled;
                `embed_static` goes on to a static encoder's embeddings in the same call (cut by the
                truncation rule, then `token_mean`)
    token_mean  a static encoder's embeddings of token ids: the L2-normalised sum of their table rows
    row_dots    x @ w.T row by row in a fixed order (the linear part of the adapted and quality heads)
    set_num_threads / get_num_threads   OpenMP threads every call uses (default 1: the service gives its
                cores to ONNX Runtime; benchmarks raise it)

Every function matches `lmroute.kernels.reference` (the spec) to <= 1e-6 relative; the property tests in
tests/unit/test_kernels_compiled.py check it. Embeddings are float32 (as stored in bundles and produced
by the encoder); dot products accumulate in float64, like the reference's.

Loading is strict: importing this module raises `KernelUnavailableError` (an ImportError) that names the
cause when `lmroute.kernels._core` is missing, was built for another Python ABI, or was built from other
sources than the ones in kernels/src (a stale build). There is no fallback to the NumPy reference.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from lmroute.kernels import reference
from lmroute.kernels.wordpiece_chars import char_table

__all__ = [
    "ABI_VERSION",
    "KernelUnavailableError",
    "MFIndex",
    "SWIndex",
    "StaticEmbedding",
    "UnsupportedTokenizerError",
    "WordPieceCut",
    "WordPieceIds",
    "WordPieceTokenizer",
    "blend_scores",
    "token_mean",
    "bt_ratings",
    "cpu_features",
    "get_num_threads",
    "pair_probabilities",
    "row_dots",
    "set_num_threads",
    "source_fingerprint",
]

ABI_VERSION = 8
"""The `_core.ABI_VERSION` this wrapper was written against (bump both when a signature changes)."""

_SRC_DIR = Path(__file__).resolve().parent / "src"
_REBUILD = "rebuild it with scripts/setup.sh (pip install -e . builds kernels/ with CMake)"

F64 = NDArray[np.float64]


class KernelUnavailableError(ImportError):
    """The compiled core cannot be used; the message says why and how to rebuild."""


def source_fingerprint(src_dir: Path = _SRC_DIR) -> str | None:
    """sha256 over "<name>:<sha256>\\n" of every source file in sorted order (CMakeLists.txt computes the
    same at build time); None when the sources are not beside the module (an installed wheel)."""
    if not src_dir.is_dir():
        return None
    files = sorted(p for p in src_dir.iterdir() if p.suffix in {".cpp", ".hpp"})
    text = "".join(f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in files)
    return hashlib.sha256(text.encode()).hexdigest()


def _load_core() -> Any:
    name = f"{__package__}._core"
    try:
        core = importlib.import_module(name)
    except ImportError as exc:
        spec = None
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            pass
        need = importlib.machinery.EXTENSION_SUFFIXES[0]
        if spec is None:
            built = sorted(p.name for p in Path(__file__).resolve().parent.glob("_core*"))
            found = f"found only {built}" if built else "no _core module was found"
            raise KernelUnavailableError(
                f"the compiled scoring core {name} is missing ({found}; this Python needs a file ending "
                f"in {need!r}): {_REBUILD}"
            ) from exc
        raise KernelUnavailableError(
            f"the compiled scoring core {name} at {spec.origin} cannot be loaded ({exc}); it was probably "
            f"built for another Python or platform (this one needs {need!r}): {_REBUILD}"
        ) from exc
    abi = getattr(core, "ABI_VERSION", None)
    if abi != ABI_VERSION:
        raise KernelUnavailableError(
            f"the compiled scoring core {name} has ABI version {abi!r}, this wrapper needs {ABI_VERSION}: {_REBUILD}"
        )
    want = source_fingerprint()
    if want is not None and core.SOURCE_SHA256 != want:
        raise KernelUnavailableError(
            f"the compiled scoring core {name} was built from other sources than {_SRC_DIR} "
            f"(fingerprint {core.SOURCE_SHA256[:12]}, sources {want[:12]}): a stale build; {_REBUILD}"
        )
    return core


_core = _load_core()
_threads_lock = threading.Lock()
_threads = 1


def set_num_threads(n: int) -> None:
    """OpenMP threads for every later call (1 .. the machine's OpenMP maximum)."""
    global _threads
    top = int(_core.max_threads())
    if not isinstance(n, int) or not 1 <= n <= max(top, 1):
        raise ValueError(f"threads must be an integer in 1..{top}, got {n!r}")
    with _threads_lock:
        _threads = n


def get_num_threads() -> int:
    return _threads


def cpu_features() -> str:
    """What the CPU offers the core's multi-versioned loops (e.g. 'x86-64 avx512f avx2 fma')."""
    return str(_core.cpu_features())


# ---------------------------------------------------------------------------------------------
# sw_ranking


class _Cells:
    """A validated cell design: int32 tiers a, b and the target P(a wins) y (1, 0 or 0.5)."""

    def __init__(self, cells: NDArray[np.integer], n_tiers: int) -> None:
        a, b, y = reference.check_cell_design(cells, n_tiers)
        self.n_tiers = int(n_tiers)
        self.a = np.ascontiguousarray(a, dtype=np.int32)
        self.b = np.ascontiguousarray(b, dtype=np.int32)
        self.y = np.ascontiguousarray(y, dtype=np.float64)

    def __len__(self) -> int:
        return int(self.a.shape[0])

    def check_tiers(self, strong_tier: int, weak_tier: int) -> None:
        for name, tier in (("strong_tier", strong_tier), ("weak_tier", weak_tier)):
            if not 0 <= tier < self.n_tiers:
                raise ValueError(f"{name} {tier} is outside 0..{self.n_tiers - 1}")


def _check_gamma_base(gamma: float, base: float) -> None:
    if not (gamma > 0.0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
    if not (base > 1.0 and math.isfinite(base)):
        raise ValueError(f"base must be a finite number > 1, got {base!r}")


def _csr_from_dense(counts: NDArray[np.floating]) -> tuple[NDArray[np.int64], NDArray[np.int32], F64]:
    dense = np.asarray(counts, dtype=np.float64)
    rows, cols = np.nonzero(dense)
    indptr = np.zeros(dense.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=dense.shape[0]), out=indptr[1:])
    return indptr, cols.astype(np.int32), np.ascontiguousarray(dense[rows, cols])


class SWIndex:
    """The sw_ranking table of one router, prepared for the compiled core.

    prompt_emb float32 [n, d] (L2-normalised training prompts); cell_counts either dense [n, c] or a
    CSR tuple (indptr int [n + 1], indices int [nnz], values float [nnz]) of per-prompt outcome counts
    per cell; cells [c, 3] = (tier_a, tier_b, outcome) as in `reference.bt_ratings_from_cells`.
    """

    def __init__(
        self,
        prompt_emb: NDArray[np.floating],
        cell_counts: NDArray[np.floating] | tuple[NDArray[Any], NDArray[Any], NDArray[Any]],
        cells: NDArray[np.integer],
        n_tiers: int,
    ) -> None:
        x = np.asarray(prompt_emb)
        if x.ndim != 2:
            raise ValueError(f"prompt_emb must be 2-D, got shape {x.shape}")
        self.embeddings = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(self.embeddings).all():
            raise ValueError("prompt_emb must be finite (a NaN row made every score of a query a wrong number)")
        self.cells = _Cells(cells, n_tiers)
        n, c = x.shape[0], len(self.cells)
        if isinstance(cell_counts, tuple):
            indptr, indices, values = (np.asarray(v) for v in cell_counts)
        else:
            dense = np.asarray(cell_counts)
            if dense.ndim != 2 or dense.shape != (n, c):
                raise ValueError(f"cell_counts must have shape ({n}, {c}) (prompts x cells), got {dense.shape}")
            indptr, indices, values = _csr_from_dense(dense)
        if indptr.shape != (n + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            raise ValueError(f"cell_counts indptr must be non-decreasing from 0 with {n + 1} entries")
        if indices.shape != values.shape or indices.ndim != 1 or indptr[-1] != indices.shape[0]:
            raise ValueError("cell_counts indices and values must be 1-D with indptr[-1] entries each")
        if indices.size and (indices.min() < 0 or indices.max() >= c):
            raise ValueError(f"cell_counts hold a cell index outside 0..{c - 1}")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("cell_counts must be finite and >= 0")
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int32)
        self.values = np.ascontiguousarray(values, dtype=np.float64)

    @property
    def n_prompts(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def _queries(self, query_emb: NDArray[np.floating]) -> NDArray[np.float32]:
        q = np.asarray(query_emb)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query_emb must have shape [b, {self.dim}], got {q.shape}")
        out = np.ascontiguousarray(q, dtype=np.float32)
        if not np.isfinite(out).all():
            raise ValueError("query_emb must be finite")
        return out

    def _design(self) -> dict[str, Any]:
        return {
            "indptr": self.indptr,
            "indices": self.indices,
            "counts": self.values,
            "cell_a": self.cells.a,
            "cell_b": self.cells.b,
            "cell_y": self.cells.y,
            "n_tiers": self.cells.n_tiers,
        }

    def scores(
        self,
        query_emb: NDArray[np.floating],
        strong_tier: int,
        weak_tier: int,
        gamma: float = 10.0,
        base: float = 10.0,
    ) -> F64:
        """P(strong tier beats weak tier) [b] under each query's similarity-weighted BT fit."""
        q = self._queries(query_emb)
        self.cells.check_tiers(strong_tier, weak_tier)
        _check_gamma_base(gamma, base)
        out = np.empty(q.shape[0], dtype=np.float64)
        _core.sw_scores(
            embeddings=self.embeddings,
            queries=q,
            strong=int(strong_tier),
            weak=int(weak_tier),
            gamma=float(gamma),
            base=float(base),
            threads=_threads,
            out=out,
            **self._design(),
        )
        return out

    def scores_from_sims(
        self,
        sims: NDArray[np.floating],
        strong_tier: int,
        weak_tier: int,
        gamma: float = 10.0,
        base: float = 10.0,
    ) -> F64:
        """As `scores`, from similarities [b, n] (float32 or float64) computed elsewhere (e.g. FAISS)."""
        s = np.asarray(sims)
        if s.ndim != 2 or s.shape[1] != self.n_prompts:
            raise ValueError(f"sims must have shape [b, {self.n_prompts}], got {s.shape}")
        if s.dtype not in (np.float32, np.float64):
            s = s.astype(np.float64)
        s = np.ascontiguousarray(s)
        if not np.isfinite(s).all():
            raise ValueError("sims must be finite")
        self.cells.check_tiers(strong_tier, weak_tier)
        _check_gamma_base(gamma, base)
        out = np.empty(s.shape[0], dtype=np.float64)
        _core.sw_scores_from_sims(
            sims=s,
            strong=int(strong_tier),
            weak=int(weak_tier),
            gamma=float(gamma),
            base=float(base),
            threads=_threads,
            out=out,
            **self._design(),
        )
        return out

    def scores_from_cell_weights(
        self, cell_weights: NDArray[np.floating], strong_tier: int, weak_tier: int, base: float = 10.0
    ) -> F64:
        """The Newton step alone, from per-query cell weights [b, c] computed elsewhere (the GPU scan)."""
        w = np.ascontiguousarray(cell_weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != len(self.cells):
            raise ValueError(f"cell_weights must have shape [b, {len(self.cells)}], got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0.0):
            raise ValueError("cell_weights must be finite and >= 0")
        self.cells.check_tiers(strong_tier, weak_tier)
        _check_gamma_base(10.0, base)
        out = np.empty(w.shape[0], dtype=np.float64)
        _core.sw_scores_from_cell_weights(
            w,
            self.cells.a,
            self.cells.b,
            self.cells.y,
            self.cells.n_tiers,
            int(strong_tier),
            int(weak_tier),
            float(base),
            _threads,
            out,
        )
        return out

    def cell_weights(self, query_emb: NDArray[np.floating], gamma: float = 10.0) -> F64:
        """Per-query cell weights [b, c] (the twin of `reference.sw_cell_weights`)."""
        q = self._queries(query_emb)
        _check_gamma_base(gamma, 10.0)
        out = np.empty((q.shape[0], len(self.cells)), dtype=np.float64)
        _core.sw_cell_weights(
            embeddings=self.embeddings,
            indptr=self.indptr,
            indices=self.indices,
            counts=self.values,
            n_cells=len(self.cells),
            queries=q,
            gamma=float(gamma),
            threads=_threads,
            out=out,
        )
        return out


def bt_ratings(cells: NDArray[np.integer], cell_weights: NDArray[np.floating], n_tiers: int) -> F64:
    """The twin of `reference.bt_ratings_from_cells`: ratings [n_tiers] in natural log-odds units."""
    design = _Cells(cells, n_tiers)
    w = np.ascontiguousarray(cell_weights, dtype=np.float64)
    if w.shape != (len(design),):
        raise ValueError(f"cell_weights must have shape ({len(design)},), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0.0):
        raise ValueError("cell_weights must be finite and >= 0")
    out = np.empty(design.n_tiers, dtype=np.float64)
    _core.bt_ratings(design.a, design.b, design.y, design.n_tiers, w, out)
    return out


# ---------------------------------------------------------------------------------------------
# mf


class MFIndex:
    """mf scoring with one vector per model: logit_m(e) = e . v_m, v_m = W^T (w * P_m / ||P_m||)."""

    def __init__(self, model_vectors: NDArray[np.floating]) -> None:
        v = np.asarray(model_vectors, dtype=np.float64)
        if v.ndim != 2 or v.shape[0] < 1:
            raise ValueError(f"model_vectors must have shape [n_models >= 1, d], got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError("model_vectors must be finite")
        self.vectors = np.ascontiguousarray(v)

    @classmethod
    def from_factors(
        cls,
        text_proj: NDArray[np.floating],
        model_emb: NDArray[np.floating],
        classifier: NDArray[np.floating],
    ) -> MFIndex:
        """Fold the factors of `reference.mf_logits` (W [k, d], P [m, k], w [k]) into [m, d] vectors."""
        w_proj, p_unit, w_cls = reference.check_mf_factors(text_proj, model_emb, classifier)
        return cls((p_unit * w_cls[None, :]) @ w_proj)

    @property
    def n_models(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def _emb(self, emb: NDArray[np.floating]) -> NDArray[np.float32]:
        e = np.asarray(emb)
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise ValueError(f"emb must have shape [b, {self.dim}], got {e.shape}")
        return np.ascontiguousarray(e, dtype=np.float32)

    def logits(self, emb: NDArray[np.floating]) -> F64:
        """Per-model logits [b, n_models]."""
        e = self._emb(emb)
        out = np.empty((e.shape[0], self.n_models), dtype=np.float64)
        _core.mf_dot(e, self.vectors, _threads, out)
        return out

    def pair_vectors(self, pairs: Sequence[tuple[int, int]]) -> F64:
        """u_p = v_strong - v_weak [n_pairs, d] (u . e = logit_strong(e) - logit_weak(e))."""
        idx = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_models):
            raise ValueError(f"pairs hold a model index outside 0..{self.n_models - 1}")
        return np.ascontiguousarray(self.vectors[idx[:, 0]] - self.vectors[idx[:, 1]])

    def pair_scores(self, emb: NDArray[np.floating], pairs: Sequence[tuple[int, int]]) -> F64:
        """P(strong beats weak) = sigmoid(logit_strong - logit_weak) [b, n_pairs]."""
        return pair_probabilities(emb, self.pair_vectors(pairs))


def blend_scores(
    router_scores: NDArray[np.floating],
    query_emb: NDArray[np.floating],
    prior_weights: NDArray[np.floating],
    prior_bias: float,
    prior_center: float,
    prior_scale: float,
    *,
    weight: float,
    center: float,
    scale: float,
) -> F64:
    """reference.blend_scores in one compiled call (same arguments, same refusals); query_emb is used
    as float32, as the encoder produces it."""
    p, e, w = reference.check_blend_inputs(
        router_scores, query_emb, prior_weights, prior_scale, scale, emb_dtype=np.float32
    )
    out = np.empty(e.shape[0], dtype=np.float64)
    _core.blend_scores(
        np.ascontiguousarray(p),
        np.ascontiguousarray(e),
        np.ascontiguousarray(w),
        float(prior_bias),
        float(prior_center),
        float(prior_scale),
        float(weight),
        float(center),
        float(scale),
        reference.LOGIT_EPS,
        out,
    )
    return out


def row_dots(x: NDArray[np.floating], w: NDArray[np.floating]) -> F64:
    """x @ w.T [n, m] for x [n, d] and w [m, d], in float64, each row's sums in an order that does not
    depend on the other rows (BLAS's does: a prompt would score differently alone and in a batch)."""
    xs = np.ascontiguousarray(x, dtype=np.float64)
    ws = np.ascontiguousarray(w, dtype=np.float64)
    if xs.ndim != 2 or ws.ndim != 2 or xs.shape[1] != ws.shape[1]:
        raise ValueError(f"row_dots: x {xs.shape} and w {ws.shape} must be [n, d] and [m, d]")
    out = np.empty((xs.shape[0], ws.shape[0]), dtype=np.float64)
    _core.row_dots(xs, ws, out)
    return out


def token_mean(table: NDArray[np.float32], ids: NDArray[np.int64], offsets: NDArray[np.int64]) -> NDArray[np.float32]:
    """The static encoder's embeddings: row r is the L2-normalised sum of table[ids[offsets[r]:offsets[r+1]]]
    (float32 [n, dim]; summed in order, so a row does not depend on the others). Every row needs an id;
    ValueError names an id outside the table."""
    t = np.asarray(table)
    if t.dtype != np.float32 or t.ndim != 2:
        raise ValueError(f"table must be float32 [vocab, dim], got {t.dtype} {t.shape}")
    i = np.ascontiguousarray(ids, dtype=np.int64)
    o = np.ascontiguousarray(offsets, dtype=np.int64)
    if i.ndim != 1 or o.ndim != 1 or o.size < 1:
        raise ValueError("ids and offsets must be 1-D, offsets non-empty")
    out = np.empty((o.size - 1, t.shape[1]), dtype=np.float32)
    bad = _core.token_mean(np.ascontiguousarray(t), i, o, out)
    if bad >= 0:
        raise ValueError(f"ids[{bad}] = {int(i[bad])} is outside the table's {t.shape[0]} rows")
    return out


def pair_probabilities(emb: NDArray[np.floating], pair_vectors: NDArray[np.floating]) -> F64:
    """sigmoid(e . u_p) [b, n_pairs] for collapsed pair vectors u [n_pairs, d] (a bundle's pair_vector)."""
    u = np.ascontiguousarray(np.atleast_2d(np.asarray(pair_vectors, dtype=np.float64)))
    e = np.asarray(emb)
    if e.ndim != 2 or e.shape[1] != u.shape[1]:
        raise ValueError(f"emb must have shape [b, {u.shape[1]}], got {e.shape}")
    e = np.ascontiguousarray(e, dtype=np.float32)
    out = np.empty((e.shape[0], u.shape[0]), dtype=np.float64)
    _core.mf_pair_probabilities(e, u, _threads, out)
    return out


# ---------------------------------------------------------------------------------------------
# WordPiece tokenisation


class UnsupportedTokenizerError(ValueError):
    """The tokenizer.json is not of the kind `WordPieceTokenizer` reproduces; the message says what differs."""


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise UnsupportedTokenizerError(what)


def _template_ends(post: Mapping[str, Any] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The special-token ids a single text's template puts before and after it (type ids all 0)."""
    if post is None:
        return (), ()
    kind = post.get("type")
    if kind == "BertProcessing":
        return (int(post["cls"][1]),), (int(post["sep"][1]),)
    _require(kind == "TemplateProcessing", f"post_processor {kind!r} is not TemplateProcessing or BertProcessing")
    specials = post.get("special_tokens", {})
    ends: tuple[list[int], list[int]] = ([], [])
    seen = 0
    for piece in post.get("single", []):
        ((role, item),) = piece.items()
        _require(int(item.get("type_id", 0)) == 0, "the single-text template has a type id other than 0")
        if role == "Sequence":
            _require(item.get("id") == "A" and seen == 0, "the single-text template is not [specials] A [specials]")
            seen = 1
        else:
            _require(role == "SpecialToken" and item["id"] in specials, f"template piece {piece!r} is unknown")
            ends[seen].extend(int(i) for i in specials[item["id"]]["ids"])
    _require(seen == 1, "the single-text template holds no sequence")
    return tuple(ends[0]), tuple(ends[1])


class WordPieceIds(NamedTuple):
    """What `WordPieceTokenizer.encode` gives: the ids of the handled texts one after the other (template
    tokens included), ids per text (0 when not handled), whether each text was handled and how many were."""

    ids: NDArray[np.int64]
    lengths: NDArray[np.int64]
    handled: NDArray[np.bool_]
    n_handled: int


class WordPieceCut(NamedTuple):
    """What `WordPieceTokenizer.encode_cut` gives: `WordPieceIds`'s fields, each text's ids being those it
    keeps after the cut, and whether each text was cut."""

    ids: NDArray[np.int64]
    lengths: NDArray[np.int64]
    handled: NDArray[np.bool_]
    truncated: NDArray[np.bool_]
    n_handled: int


class StaticEmbedding(NamedTuple):
    """What `WordPieceTokenizer.embed_static` gives: float32 [n, dim] embeddings, the ids kept of each text
    (template included) and whether it was cut."""

    embeddings: NDArray[np.float32]
    n_tokens: NDArray[np.int64]
    truncated: NDArray[np.bool_]


class WordPieceTokenizer:
    """BERT uncased WordPiece tokenisation (kernels/src/wordpiece.hpp states the rules).

    vocab: the token strings in id order; unk_id: the id a word that matches nothing becomes; prefix:
    the continuing-subword prefix; max_chars: words of more characters are unknown; literals: (text, id) of
    the added tokens, matched case-sensitively on the raw text; front_ids, back_ids: the template's special
    tokens; non_ascii: tokenise non-ASCII text as BertNormalizer with handle_chinese_chars and strip_accents
    does (the table of `lmroute.kernels.wordpiece_chars`, built on the first such tokenizer of the process,
    ~0.5 s), else leave every non-ASCII text unhandled. A text holding a character the table leaves to HF
    is unhandled either way. Thread-safe; `encode` releases the GIL.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        unk_id: int,
        prefix: str = "##",
        max_chars: int = 100,
        literals: Sequence[tuple[str, int]] = (),
        front_ids: Sequence[int] = (),
        back_ids: Sequence[int] = (),
        non_ascii: bool = True,
    ) -> None:
        vocab = list(vocab)
        if not all(isinstance(t, str) for t in vocab):
            raise TypeError("vocab must hold strings only")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab holds a token twice")
        if not 0 <= unk_id < len(vocab):
            raise ValueError(f"unk_id {unk_id} is outside 0..{len(vocab) - 1}")
        if not isinstance(max_chars, int) or max_chars < 0:
            raise ValueError(f"max_chars must be an int >= 0, got {max_chars!r}")
        self.front_ids = tuple(int(i) for i in front_ids)
        self.back_ids = tuple(int(i) for i in back_ids)
        self._specials = len(self.front_ids) + len(self.back_ids)
        self.non_ascii = bool(non_ascii)
        none = np.empty(0, dtype=np.uint32)
        table = char_table() if self.non_ascii else None
        self._widest = table.widest if table is not None else 1
        self._wp = _core.WordPiece(
            vocab,
            int(unk_id),
            str(prefix),
            int(max_chars),
            [(str(t), int(i)) for t, i in literals],
            list(self.front_ids),
            list(self.back_ids),
            table.blocks if table is not None else none,
            table.entries if table is not None else none,
            table.pool if table is not None else none,
        )

    @classmethod
    def from_tokenizer_json(cls, spec: Mapping[str, Any]) -> WordPieceTokenizer:
        """The tokenizer of a parsed tokenizer.json (its truncation and padding are not applied); raises
        UnsupportedTokenizerError naming the first part that is not the BERT uncased WordPiece kind."""
        model = spec.get("model") or {}
        _require(model.get("type") == "WordPiece", f"model {model.get('type')!r} is not WordPiece")
        vocab_ids: Mapping[str, int] = model.get("vocab", {})
        vocab = sorted(vocab_ids, key=vocab_ids.__getitem__)
        _require([vocab_ids[t] for t in vocab] == list(range(len(vocab))), "vocabulary ids are not 0..n-1")
        _require(model.get("unk_token") in vocab_ids, "the unknown token is not in the vocabulary")
        norm = spec.get("normalizer") or {}
        _require(norm.get("type") == "BertNormalizer", f"normalizer {norm.get('type')!r} is not BertNormalizer")
        _require(norm.get("clean_text") is True and norm.get("lowercase") is True, "BertNormalizer is not clean+lower")
        # handle_chinese_chars and strip_accents (None: as lowercase) touch only non-ASCII characters: without
        # them, non-ASCII text is left to HF
        non_ascii = norm.get("handle_chinese_chars") is True and norm.get("strip_accents") in (None, True)
        pre = (spec.get("pre_tokenizer") or {}).get("type")
        _require(pre == "BertPreTokenizer", f"pre_tokenizer {pre!r} is not BertPreTokenizer")
        literals = []
        for added in spec.get("added_tokens", []):
            _require(
                not any(added.get(k) for k in ("normalized", "lstrip", "rstrip", "single_word")),
                f"added token {added.get('content')!r} is normalized, stripped or single-word",
            )
            content = str(added["content"])
            _require(not any(c in content for c in "\t\n\r "), f"added token {content!r} holds whitespace")
            literals.append((content, int(added["id"])))
        front, back = _template_ends(spec.get("post_processor"))
        return cls(
            vocab,
            unk_id=int(vocab_ids[model["unk_token"]]),
            prefix=model.get("continuing_subword_prefix", "##"),
            max_chars=int(model.get("max_input_chars_per_word", 100)),
            literals=literals,
            front_ids=front,
            back_ids=back,
            non_ascii=non_ascii,
        )

    def encode(self, texts: Sequence[str], *, with_template: bool = True) -> WordPieceIds:
        """The ids of the texts, with the template's tokens around each or not; the texts it does not take
        are left unhandled (for HF `tokenizers`). TypeError for an item that is not a str."""
        items = texts if isinstance(texts, list) else list(texts)
        n = len(items)
        ids = self._id_room(items)
        lengths = np.empty(n, dtype=np.int64)
        handled = np.empty(n, dtype=np.bool_)
        total, n_handled = self._wp.encode(items, bool(with_template), ids, lengths, handled)
        return WordPieceIds(ids[:total], lengths, handled, n_handled)

    def _id_room(self, items: list[str]) -> NDArray[np.int64]:
        """Room for every id of `items`, template included: a character becomes at most `_widest` ids
        (np.empty: room that is not written costs nothing)."""
        return np.empty(sum(map(len, items)) * self._widest + len(items) * self._specials, dtype=np.int64)

    def encode_cut(self, texts: Sequence[str], *, max_tokens: int, head_end: int) -> WordPieceCut:
        """`encode` with the template, a text of more than `max_tokens` ids cut to its first `head_end`
        and last `max_tokens - head_end` (`lmroute.bundle.truncation.cut_positions`): the same kept ids as
        `encode` and the cut, but a long text is read only as far as they need (its tail from a word
        boundary, its head to the cut), so a character this tokenizer leaves to HF in the part cut away
        leaves the text handled. TypeError for an item that is not a str."""
        items = texts if isinstance(texts, list) else list(texts)
        n = len(items)
        ids = self._id_room(items)
        lengths = np.empty(n, dtype=np.int64)
        handled = np.empty(n, dtype=np.bool_)
        truncated = np.empty(n, dtype=np.bool_)
        total, n_handled = self._wp.encode_cut(items, max_tokens, head_end, ids, lengths, handled, truncated)
        return WordPieceCut(ids[:total], lengths, handled, truncated, n_handled)

    def embed_static(
        self, texts: list[str], table: NDArray[np.float32], *, max_tokens: int, head_end: int
    ) -> StaticEmbedding | None:
        """A static encoder's embeddings of `texts` in one compiled call: each text's kept ids as
        `encode_cut` gives them, then `token_mean` of them over `table` (float32 [vocab, dim]). None when a
        text holds a character this tokenizer leaves to HF in what it reads, or has no ids (no template
        tokens around an empty text): the caller takes the general path.
        TypeError for an item that is not a str or a table that is not float32; ValueError for an id
        outside the table."""
        n = len(texts)
        out = np.empty((n, table.shape[1]), dtype=np.float32)
        n_tokens = np.empty(n, dtype=np.int64)
        truncated = np.empty(n, dtype=np.bool_)
        handled = _core.static_embed(self._wp, texts, table, max_tokens, head_end, out, n_tokens, truncated)
        return StaticEmbedding(out, n_tokens, truncated) if handled == n else None
