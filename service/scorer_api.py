"""The contract between the scheduler and the scorers: the `Scorer` protocol and its result type.

A scorer is synchronous and thread-confined: the scheduler calls it from one worker thread, never from
the event loop. It imports neither gRPC nor asyncio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["Catalog", "ModelDescription", "RouterDescription", "ScoredBatch", "Scorer"]


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of one batch: `scores[router][i]` for every item i that asked for that router (NaN else)."""

    n_tokens: npt.NDArray[np.int64]  # [n] encoder tokens after truncation
    truncated: npt.NDArray[np.bool_]  # [n]
    scores: Mapping[str, npt.NDArray[np.float64]]  # router -> [n]
    encoder_s: float = 0.0  # seconds of this call spent in the encoder (0 when the scorer has none)


@dataclass(frozen=True)
class RouterDescription:
    """What a client may know about one router."""

    name: str
    kind: str
    uses_encoder: bool
    calibration_strong_share: tuple[float, ...]
    calibration_thresholds: tuple[float, ...]


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


class Scorer(Protocol):
    """Encoder + routers behind one call; the product implementation wraps a router bundle."""

    @property
    def version(self) -> str:
        """Version of the loaded artifacts (bundle_version)."""
        ...

    @property
    def router_names(self) -> tuple[str, ...]:
        """Loaded routers, in bundle order."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Encoder tokens of each text after truncation (for the padded-token budget)."""
        ...

    def score(self, texts: Sequence[str], routers: Sequence[tuple[str, ...]]) -> ScoredBatch:
        """Score texts[i] with each router of routers[i]; one encoding shared by all routers."""
        ...

    def catalog(self) -> Catalog:
        """What is loaded (routers, models, encoder, calibration, version)."""
        ...

    def threshold_for_share(self, router: str, share: float) -> float:
        """Threshold that sends `share` of calibration prompts to the strong model."""
        ...
