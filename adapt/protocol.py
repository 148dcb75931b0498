"""The adaptation protocol's split (docs/ADAPTATION.md, ROUTELLM.md): a benchmark replayed as traffic is
cut by the sha256 of each prompt's UTF-8 text; hex digest's first digit 0-7 = the stream half (the only
half ever trained on, or used for any choice), 8-f = the test half (reported only)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["STREAM_DIGITS", "stream_mask"]

STREAM_DIGITS = frozenset("01234567")


def stream_mask(texts: Sequence[str]) -> npt.NDArray[np.bool_]:
    """True for the prompts of the stream half, False for the test half."""
    return np.fromiter(
        (hashlib.sha256(t.encode("utf-8")).hexdigest()[0] in STREAM_DIGITS for t in texts),
        dtype=np.bool_,
        count=len(texts),
    )
