"""The contract between the scheduler and the scorers: the `Scorer` protocol, its token and result types.

A scorer is synchronous and thread-confined: the scheduler calls `tokenize` from its tokenising thread
and `score` from its scoring thread, never from the event loop. A scorer is generic in its own tokens
of one prompt (`T`): `tokenize` returns them with their count, the scheduler keeps them on the queued
prompt and hands them back to `score` with the batch, so a prompt is tokenised once. It imports neither
gRPC nor asyncio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["Catalog", "ModelDescription", "RouterDescription", "RouterSets", "ScoredBatch", "Scorer", "Tokenized"]

T = TypeVar("T")

# routers[i]: the loaded routers that text i asked for (resolved by the transport)
RouterSets = Sequence[tuple[str, ...]]


@dataclass(frozen=True)
class Tokenized(Generic[T]):
    """One prompt as the scorer tokenised it: its token count after truncation (what the queue's
    padded-token budget reads) and the scorer's own tokens of it (handed back to `Scorer.score`)."""

    n_tokens: int
    tokens: T


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of one batch: `scores[router][i]` for every item i that asked for that router (NaN else)."""

    n_tokens: npt.NDArray[np.int64]  # [n] encoder tokens after truncation
    truncated: npt.NDArray[np.bool_]  # [n]
    scores: Mapping[str, npt.NDArray[np.float64]]  # router -> [n]
    encoder_s: float = 0.0  # seconds of this call spent in the encoder (0 when the scorer has none)
    # router -> seconds of this call spent in that router alone (after the shared encoder); routers left
    # out count as shared cost. Admission weighs each prompt's routers by it (admission.ServiceRate).
    router_s: Mapping[str, float] = field(default_factory=dict)
    # [n, dim] the shared encoder's embedding of each item, when the batch ran the encoder (a router of
    # the batch reads it); None otherwise. The outcome store keeps it with the decision.
    embeddings: npt.NDArray[np.float32] | None = None
    # router -> [n, models] each model's predicted quality, for the routers that predict them
    # (RouterDescription.models; NaN rows for items that did not ask for the router)
    qualities: Mapping[str, npt.NDArray[np.float64]] = field(default_factory=dict)


@dataclass(frozen=True)
class RouterDescription:
    """What a client may know about one router."""

    name: str
    kind: str
    uses_encoder: bool
    calibration_strong_share: tuple[float, ...]
    calibration_thresholds: tuple[float, ...]
    # the models whose quality the router predicts, in column order (a `quality` router; empty: the
    # router only scores the default pair)
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelDescription:
    """One model known to the artifacts: name, global rating, tier (0 = weakest)."""

    name: str
    elo: float
    tier: int


@dataclass(frozen=True)
class Catalog:
    """Everything ListRouters reports about the loaded artifacts."""

    version: str
    routers: tuple[RouterDescription, ...]
    models: tuple[ModelDescription, ...]
    strong_model: str
    weak_model: str
    encoder_name: str
    encoder_dim: int
    encoder_max_tokens: int
    encoder_pooling: str
    encoder_quantized: bool
    # What the encoder keeps of a prompt longer than encoder_max_tokens: "head", "tail", "head_tail:<H>"
    # (`lmroute.bundle.truncation.Truncation` as text).
    encoder_truncation: str = "head"
    # Identity of the encoder's embedding space (16 hex: its manifest entry and file checksums): embeddings
    # with the same id are comparable, so the outcome store and adaptation can tell which they may mix.
    encoder_id: str = ""
    # "onnx" (a transformer) or "static" (a token table): the bundle's encoder.kind.
    encoder_kind: str = "onnx"
    # The router of a Route call that names none (the manifest's default_router); "" = none: such a call
    # is refused.
    default_router: str = ""
    # The same for a Route among candidates (the manifest's default_quality_router).
    default_quality_router: str = ""
    # Per tenant, the router of its Route calls that name none, in place of default_router (the
    # manifest's tenant_routers: routers adapted to one tenant's traffic).
    tenant_routers: Mapping[str, str] = field(default_factory=dict)
    # The same for Route calls among candidates (the manifest's tenant_quality_routers).
    tenant_quality_routers: Mapping[str, str] = field(default_factory=dict)

    def router_for(self, tenant: str, among: bool = False) -> str:
        """The router a Route call of `tenant` ("" = none named) uses when it names none ("" = none); with
        `among`, a Route call among candidates."""
        own, default = (
            (self.tenant_quality_routers, self.default_quality_router)
            if among
            else (self.tenant_routers, self.default_router)
        )
        return own.get(tenant, default) if tenant else default

    def others_routers(self, tenant: str) -> frozenset[str]:
        """The routers other tenants have as their own and `tenant` does not (neither its own nor a default
        router): hidden from a caller bound to `tenant`, as if not loaded."""
        theirs = set(self.tenant_routers.values()) | set(self.tenant_quality_routers.values())
        mine = {
            self.tenant_routers.get(tenant),
            self.tenant_quality_routers.get(tenant),
            self.default_router,
            self.default_quality_router,
        }
        return frozenset(theirs - mine)


class Scorer(Protocol[T]):
    """Encoder + routers behind one call; the product implementation wraps a router bundle."""

    @property
    def version(self) -> str:
        """Version of the loaded artifacts (bundle_version)."""
        ...

    @property
    def router_names(self) -> tuple[str, ...]:
        """Loaded routers, in bundle order."""
        ...

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized[T]]:
        """Each text's tokens and token count after truncation, in order."""
        ...

    def score(self, texts: Sequence[str], routers: RouterSets, tokens: Sequence[Tokenized[T] | None]) -> ScoredBatch:
        """Score texts[i] with each router of routers[i]; one encoding shared by all routers.

        tokens[i] is what `tokenize` gave for texts[i], or None when it was not tokenised yet (the
        scorer tokenises it then). Router names are the loaded ones (the transport checked them)."""
        ...

    def warmup(self) -> None:
        """Run the first computations (allocations, caches) before the server reports SERVING."""
        ...

    def catalog(self) -> Catalog:
        """What is loaded (routers, models, encoder, calibration, version)."""
        ...

    def threshold_for_share(self, router: str, share: float) -> float:
        """Threshold that sends `share` of calibration prompts to the strong model."""
        ...
