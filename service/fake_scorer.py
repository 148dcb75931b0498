"""FakeScorer: a deterministic in-process Scorer for tests and demos that blocks, fails or is slow on cue.

Scores are a hash of (router, text) mapped to [0, 1), so batched == single by construction. Tokens are
whitespace-separated words + 2 special tokens, capped at `max_tokens`; its tokens of one prompt are
that uncapped count. `router_delay_s` makes a router slow (seconds per prompt that asks for it,
reported as that router's own time in `ScoredBatch.router_s`). Every call is recorded in `calls` (the
texts of each batch, in order), every text given to `tokenize` in `counted`, and every text `score` had
to tokenise itself (it came without tokens) in `scored_without_tokens`, so tests can prove what reached
the scorer and where each prompt was tokenised. With `record=False` nothing is recorded (a long
benchmark would otherwise keep every text).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np

from lmroute.service.scorer_api import Catalog, ModelDescription, RouterDescription, RouterSets, ScoredBatch, Tokenized

__all__ = ["FakeScorer", "FakeScorerError"]


class FakeScorerError(RuntimeError):
    """Raised by FakeScorer.score for a batch holding a text that contains `fail_marker`."""


class FakeScorer:
    """A Scorer double: `block()` / `release()` gate scoring; `fail_marker` texts make a batch raise;
    `oom_marker` texts make tokenize raise MemoryError, and a batch holding one, as a memory limit would."""

    def __init__(
        self,
        routers: Sequence[str] = ("random", "mf"),
        *,
        version: str = "fake-1",
        max_tokens: int = 256,
        delay_s: float = 0.0,
        router_delay_s: Mapping[str, float] | None = None,
        fail_marker: str = "<fail>",
        oom_marker: str = "<oom>",
        record: bool = True,
        encoder_kind: str = "onnx",
        default_router: str = "",
        tenant_routers: Mapping[str, str] | None = None,
        pair: tuple[str, str] = ("fake-strong", "fake-weak"),
    ) -> None:
        self._routers = tuple(routers)
        self.pair = pair  # (strong, weak): the models its catalog names
        self._version = version
        self.max_tokens = max_tokens
        self.delay_s = delay_s
        self.router_delay_s = dict(router_delay_s or {})
        self.fail_marker = fail_marker
        self.oom_marker = oom_marker
        self.record = record
        self.encoder_kind = encoder_kind  # what its catalog reports (a "static" one is inlined by default)
        self.default_router = default_router  # what its catalog reports ("": none)
        self.tenant_routers = dict(tenant_routers or {})  # and its tenants' own routers
        self.calls: list[list[str]] = []
        self.counted: list[str] = []  # texts given to tokenize, in order
        self.scored_without_tokens: list[str] = []  # texts score() was given without tokens, in order
        self.entered = threading.Event()  # set when a score() call starts
        self._gate = threading.Event()
        self._gate.set()
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self._version

    @property
    def router_names(self) -> tuple[str, ...]:
        return self._routers

    def describe(self) -> list[RouterDescription]:
        """Descriptions with a two-point calibration table (share p -> threshold 1 - p)."""
        return [RouterDescription(r, "fake", True, (0.0, 1.0), (1.0, 0.0)) for r in self._routers]

    def catalog(self) -> Catalog:
        """A catalog with a fake strong/weak pair."""
        return Catalog(
            version=self._version,
            routers=tuple(self.describe()),
            models=(ModelDescription(self.pair[0], 1100.0, 1), ModelDescription(self.pair[1], 900.0, 0)),
            strong_model=self.pair[0],
            weak_model=self.pair[1],
            encoder_name="fake-encoder",
            encoder_dim=4,
            encoder_max_tokens=self.max_tokens,
            encoder_pooling="mean",
            encoder_quantized=False,
            encoder_kind=self.encoder_kind,
            default_router=self.default_router,
            tenant_routers=self.tenant_routers,
        )

    def threshold_for_share(self, router: str, share: float) -> float:
        """Threshold 1 - share (the fake calibration table)."""
        if router not in self._routers:
            raise KeyError(router)
        return 1.0 - share

    def warmup(self) -> None:
        """Nothing to warm; kept so the server treats every scorer alike."""

    def block(self) -> None:
        """Make score() wait until release() is called."""
        self._gate.clear()

    def release(self) -> None:
        """Let blocked and future score() calls proceed."""
        self._gate.set()

    @staticmethod
    def words(text: str) -> int:
        """The uncapped token count of `text` (words + 2 special tokens)."""
        return len(text.split()) + 2

    def token_count(self, text: str) -> int:
        """The token count of `text` after truncation to `max_tokens`."""
        return min(self.words(text), self.max_tokens)

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized[int]]:
        if self.record:
            with self._lock:
                self.counted.extend(texts)
        if any(self.oom_marker in t for t in texts):
            raise MemoryError
        out = []
        for t in texts:
            words = self.words(t)
            out.append(Tokenized(min(words, self.max_tokens), words))
        return out

    def score(self, texts: Sequence[str], routers: RouterSets, tokens: Sequence[Tokenized[int] | None]) -> ScoredBatch:
        if self.record:
            with self._lock:
                self.calls.append(list(texts))
                self.scored_without_tokens.extend(t for t, tok in zip(texts, tokens, strict=True) if tok is None)
        self.entered.set()
        self._gate.wait()
        if self.delay_s:
            time.sleep(self.delay_s)
        if any(self.fail_marker in t for t in texts):
            raise FakeScorerError(f"fake failure on cue ({len(texts)} texts)")
        if any(self.oom_marker in t for t in texts):
            raise MemoryError
        n = len(texts)
        scores: dict[str, np.ndarray] = {}
        router_s: dict[str, float] = {}
        for name in {r for rs in routers for r in rs}:
            col = np.full(n, np.nan)
            for i, rs in enumerate(routers):
                if name in rs:
                    col[i] = self.score_one(name, texts[i])
            scores[name] = col
            if name in self.router_delay_s:
                t0 = time.perf_counter()
                time.sleep(self.router_delay_s[name] * int(np.isfinite(col).sum()))
                router_s[name] = time.perf_counter() - t0
        words = np.array(
            [self.words(t) if tok is None else tok.tokens for t, tok in zip(texts, tokens, strict=True)],
            dtype=np.int64,
        )
        return ScoredBatch(
            n_tokens=np.minimum(words, self.max_tokens),
            truncated=words > self.max_tokens,
            scores=scores,
            router_s=router_s,
        )

    @staticmethod
    def score_one(router: str, text: str) -> float:
        """The score FakeScorer gives `text` under `router`."""
        digest = hashlib.sha256(f"{router}\0{text}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64
