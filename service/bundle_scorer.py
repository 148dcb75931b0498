"""BundleScorer: the product Scorer over a loaded router bundle (encoder + routers from lmroute.bundle).

One call embeds the batch once; every router of the batch reads that one encoding (routers asked for
by only part of the batch read the selected rows). Inside a batch the encoder runs on length-sorted
chunks (`length_chunks`: at most `encoder_chunk_size` prompts and at most 25 % padding each, whatever
the batch size), so short prompts are not padded to the longest one (on CPU one padded run of
mixed-length prompts costs ~3x; benchmarks/RESULTS.md).

Prompts are tokenised once: `tokenize` (the scheduler's admission step, on another thread) gives each
prompt's tokens as a one-row `TokenBatch`; the scheduler keeps them on the queued item and hands them
back to `score` with the batch (`TokenBatch.stack` pads them to one batch, equal to tokenising the batch
at once). A prompt that comes without tokens (the scheduler's idle fast path) is tokenised in `score`;
with a static encoder and no router of the batch reading tokens (`RouterKind.reads_tokens`), such a
batch goes from text to embeddings in one compiled call instead (`StaticEncoder.embed_texts`: the same
embeddings, token counts and cuts, without a padded token batch between). Counters say which. Router
names are trusted: the transport resolved them against `router_names`.

`providers_for_device` turns `--device` into ONNX Runtime providers and refuses cuda when onnxruntime
has no CUDA provider.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np

from lmroute.bundle import kinds as router_kinds
from lmroute.bundle.encoder import TokenBatch
from lmroute.bundle.loader import Bundle, load_bundle
from lmroute.bundle.manifest import encoder_identity
from lmroute.bundle.remote_encoder import RemoteEncoderError, RemoteSettings
from lmroute.bundle.routers import ModelQualities, PromptBatch
from lmroute.bundle.static_encoder import StaticEncoder
from lmroute.service.errors import ConfigError, EncoderUnavailable
from lmroute.service.scorer_api import Catalog, ModelDescription, RouterDescription, RouterSets, ScoredBatch, Tokenized

__all__ = ["BundleScorer", "length_chunks", "providers_for_device", "WARMUP_PROMPTS", "MAX_PADDING"]

MAX_PADDING = 0.25
"""Most padding a chunk may carry, as a share of its real tokens (a chunk of one is always allowed)."""
_MAX_REMEMBERED_THRESHOLDS = 4096  # (router, strong share) thresholds a scorer keeps before starting again
_NO_TOKENS = TokenBatch.empty()  # the token batch of prompts embedded straight from their text (never written)


def length_chunks(n_tokens: Sequence[int] | np.ndarray, max_size: int) -> list[np.ndarray]:
    """Row indices grouped for the encoder: sorted by length, at most `max_size` rows per chunk, and a new
    chunk whenever padding everything to the chunk's longest row would add more than MAX_PADDING of
    its real tokens. Every row appears in exactly one chunk."""
    lengths = np.asarray(n_tokens, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    chunks: list[np.ndarray] = []
    start, real = 0, 0
    for pos, row in enumerate(order):
        size = pos - start + 1
        longest = int(lengths[row])  # sorted: the newest row is the longest
        if size > 1 and (size > max_size or longest * size > (1.0 + MAX_PADDING) * (real + longest)):
            chunks.append(order[start:pos])
            start, real = pos, 0
        real += longest
    if start < len(order):
        chunks.append(order[start:])
    return chunks


WARMUP_PROMPTS: tuple[str, ...] = (
    "Hello!",
    "Write a Python function that merges two sorted lists and explain its complexity.",
    "Prove that the square root of two is irrational. " * 8,
)


def providers_for_device(device: str) -> tuple[str, ...]:
    """ONNX Runtime providers for `device` ('cpu' or 'cuda'); ConfigError when cuda is not there."""
    if device == "cpu":
        return ("CPUExecutionProvider",)
    if device == "cuda":
        import onnxruntime as ort

        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise ConfigError(
                "device: cuda asked but onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu"
            )
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    raise ConfigError(f"device: must be one of cpu, cuda (got {device!r})")


class BundleScorer:
    """Scorer over one Bundle: `tokenize` from one thread (admission), `score` from one other thread.

    Its tokens of one prompt (`Tokenized.tokens`) are a one-row TokenBatch."""

    def __init__(self, bundle: Bundle, *, encoder_chunk_size: int = 8) -> None:
        if encoder_chunk_size < 1:
            raise ValueError(f"encoder_chunk_size must be >= 1, got {encoder_chunk_size}")
        self.bundle = bundle
        self.encoder_chunk_size = encoder_chunk_size
        self._names = tuple(bundle.routers)
        # per router, fixed for the bundle: whether it predicts N models' qualities (a Protocol check costs
        # microseconds a call) and whether it reads the embeddings
        self._with_qualities = frozenset(n for n, r in bundle.routers.items() if isinstance(r, ModelQualities))
        self._uses_encoder = frozenset(n for n, r in bundle.routers.items() if r.uses_encoder)
        specs = bundle.manifest.routers
        self._reads_tokens = frozenset(n for n in bundle.routers if router_kinds.get(specs[n].kind).reads_tokens)
        # a static encoder embeds texts in one compiled call when no router of the batch reads tokens
        self._embeds_texts = isinstance(bundle.encoder, StaticEncoder)
        self._thresholds: dict[tuple[str, float], float] = {}  # (router, strong share) -> threshold
        self.tokenized_at_admission = 0  # prompts tokenised by tokenize()
        self.tokenized_in_score = 0  # prompts score() tokenised because they came without tokens
        self.embedded_from_text = 0  # of those, prompts embedded straight from their text (`_embed_texts`)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        device: str = "cpu",
        intra_op_threads: int = 1,
        encoder_chunk_size: int = 8,
        public_key: Path | None = None,
        remote: RemoteSettings | None = None,
    ) -> BundleScorer:
        """Load and validate the bundle at `path` (raises BundleError naming the bad file). With
        `public_key` (an Ed25519 public key PEM file) the bundle must carry a valid signature by it; a
        key file that cannot be read as one is a ConfigError about bundle_public_key."""
        providers = providers_for_device(device)
        key = None
        if public_key is not None:
            from lmroute.bundle.signing import load_public_key

            try:
                key = load_public_key(public_key)
            except ValueError as exc:
                raise ConfigError(f"bundle_public_key: {exc}") from exc
        bundle = load_bundle(
            path, providers=providers, intra_op_threads=intra_op_threads, public_key=key, remote=remote
        )
        return cls(bundle, encoder_chunk_size=encoder_chunk_size)

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def router_names(self) -> tuple[str, ...]:
        return self._names

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized[TokenBatch]]:
        tokens = self.bundle.encoder.tokenize(texts)
        self.tokenized_at_admission += len(texts)
        return [Tokenized(int(n), tokens.row(i)) for i, n in enumerate(tokens.n_tokens.tolist())]

    def _tokens(self, texts: Sequence[str], given: Sequence[Tokenized[TokenBatch] | None]) -> TokenBatch:
        """The batch's tokens: the rows `tokenize` gave, the texts that came without them tokenised now."""
        missing = [i for i, t in enumerate(given) if t is None]
        if len(missing) == len(texts):
            self.tokenized_in_score += len(texts)
            return self.bundle.encoder.tokenize(texts)
        rows = [None if t is None else t.tokens for t in given]
        if missing:
            self.tokenized_in_score += len(missing)
            fresh = self.bundle.encoder.tokenize([texts[i] for i in missing])
            for j, i in enumerate(missing):
                rows[i] = fresh.row(j)
        return TokenBatch.stack([r for r in rows if r is not None], self.bundle.encoder.pad_id)

    def score(
        self, texts: Sequence[str], routers: RouterSets, tokens: Sequence[Tokenized[TokenBatch] | None]
    ) -> ScoredBatch:
        n = len(texts)
        if len(routers) != n or len(tokens) != n:
            raise ValueError(f"score: {n} texts but {len(routers)} router lists and {len(tokens)} token rows")
        wanted = tuple(dict.fromkeys(r for rs in routers for r in rs))
        needs_emb = any(r in self._uses_encoder for r in wanted)
        t0 = time.perf_counter()
        emb: np.ndarray | None
        straight = self._embed_texts(texts, tokens, wanted)
        if straight is not None:  # no token batch: no router of this batch reads one
            emb, n_tokens, truncated = straight
            batch_tokens = _NO_TOKENS
        else:
            batch_tokens = self._tokens(texts, tokens)
            n_tokens, truncated = batch_tokens.n_tokens, batch_tokens.truncated
            t0 = time.perf_counter()  # the encoder's time from here: tokenising is not part of it
            try:
                emb = self._embed(batch_tokens) if needs_emb else None
            except RemoteEncoderError as exc:  # each prompt of the batch gets it as its own error
                raise EncoderUnavailable(str(exc)) from exc
        encoder_s = time.perf_counter() - t0
        full = PromptBatch(list(texts), batch_tokens, emb)
        scores: dict[str, np.ndarray] = {}
        qualities: dict[str, np.ndarray] = {}
        router_s: dict[str, float] = {}
        for name in wanted:
            t_router = time.perf_counter()
            idx = [i for i, rs in enumerate(routers) if name in rs]
            if len(idx) == n:
                batch = full
            else:
                batch = PromptBatch(
                    [texts[i] for i in idx],
                    batch_tokens if straight is not None else batch_tokens.select(idx),
                    None if emb is None else emb[idx],
                )
            router = self.bundle.routers[name]
            got = np.asarray(router.score(batch), dtype=np.float64)
            if len(idx) == n:
                scores[name] = got
            else:
                scores[name] = col = np.full(n, np.nan)
                col[idx] = got
            if name in self._with_qualities:
                with_q = cast(ModelQualities, router)
                q = np.full((n, len(with_q.models)), np.nan)
                q[idx] = with_q.qualities(batch)
                qualities[name] = q
            router_s[name] = time.perf_counter() - t_router
        return ScoredBatch(
            n_tokens=np.asarray(n_tokens, dtype=np.int64),
            truncated=np.asarray(truncated, dtype=bool),
            scores=scores,
            encoder_s=encoder_s,
            router_s=router_s,
            embeddings=emb,
            qualities=qualities,
        )

    def _embed_texts(
        self, texts: Sequence[str], tokens: Sequence[Tokenized[TokenBatch] | None], wanted: tuple[str, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(embeddings, tokens kept, cut) of a batch that came without tokens, straight from its texts in
        one compiled call (`StaticEncoder.embed_texts`: the same embeddings, counts and cuts as tokenising
        and embedding), when the encoder is static and no router of `wanted` reads tokens; else None."""
        if not self._embeds_texts or any(t is not None for t in tokens) or not self._reads_tokens.isdisjoint(wanted):
            return None
        got = cast(StaticEncoder, self.bundle.encoder).embed_texts(texts)
        if got is None:
            return None
        self.tokenized_in_score += len(texts)
        self.embedded_from_text += len(texts)
        return got.embeddings, got.n_tokens, got.truncated

    def _embed(self, tokens: TokenBatch) -> np.ndarray:
        """Embeddings of every row, in the original order: for a transformer computed on length-sorted
        chunks (`length_chunks`), so a short prompt is never padded to a long one's length (attention
        cost grows with it); for an encoder whose cost padding does not change, in one call."""
        if not self.bundle.encoder.chunk_by_length:
            return self.bundle.encoder.embed(tokens)
        out = np.empty((len(tokens), self.bundle.encoder.dim), dtype=np.float32)
        for idx in length_chunks(tokens.n_tokens, self.encoder_chunk_size):
            out[idx] = self.bundle.encoder.embed(tokens.select(idx))
        return out

    def warmup(self) -> None:
        """Score the warm-up prompts with every router (first ONNX runs allocate)."""
        self.score(list(WARMUP_PROMPTS), [self._names] * len(WARMUP_PROMPTS), [None] * len(WARMUP_PROMPTS))

    def threshold_for_share(self, router: str, share: float) -> float:
        """`Bundle.threshold_for_share`, remembered per (router, share): callers send few distinct shares
        (at most _MAX_REMEMBERED_THRESHOLDS are kept; beyond, the table starts again)."""
        key = (router, share)
        found = self._thresholds.get(key)
        if found is None:
            found = self.bundle.threshold_for_share(router, share)
            if len(self._thresholds) >= _MAX_REMEMBERED_THRESHOLDS:
                self._thresholds.clear()
            self._thresholds[key] = found
        return found

    def catalog(self) -> Catalog:
        m = self.bundle.manifest
        cal = m.calibration
        routers = tuple(
            RouterDescription(
                name=name,
                kind=r.kind,
                uses_encoder=r.uses_encoder,
                calibration_strong_share=tuple(cal.strong_share) if cal else (),
                calibration_thresholds=tuple(cal.thresholds.get(name, ())) if cal else (),
                models=r.models if isinstance(r, ModelQualities) else (),
            )
            for name, r in self.bundle.routers.items()
        )
        models = tuple(
            ModelDescription(name, float(m.elo.get(name, 0.0)), int(m.tiers.get(name, 0))) for name in m.models
        )
        return Catalog(
            version=m.bundle_version,
            routers=routers,
            models=models,
            strong_model=m.default_pair.strong,
            weak_model=m.default_pair.weak,
            encoder_name=m.encoder.name,
            encoder_dim=m.encoder.dim,
            encoder_max_tokens=m.encoder.max_tokens,
            encoder_pooling=m.encoder.pooling,
            encoder_quantized=m.encoder.quantized,
            encoder_truncation=str(m.encoder.truncation),
            encoder_id=encoder_identity(m),
            encoder_kind=m.encoder.kind,
            default_router=m.default_router,
            default_quality_router=m.default_quality_router,
            tenant_routers=dict(m.tenant_routers),
            tenant_quality_routers=dict(m.tenant_quality_routers),
        )
