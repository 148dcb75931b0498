"""Decision ids: one per routing decision (a `Route` answer, each scored prompt of a `Score` answer), so
that an outcome learned later (feedback) can be joined to the decision it judges.

An id is 32 lowercase hex characters: a 48-bit Unix time in milliseconds followed by 80 random bits
(the layout of a UUIDv7 without its version bits). Ids sort by the time they were made, are unique
without coordination between replicas, and cannot be guessed from one another.
"""

from __future__ import annotations

import secrets
import time

__all__ = ["decision_id_time_ms", "new_decision_id"]


def new_decision_id(now_ms: int | None = None) -> str:
    """A fresh decision id; `now_ms` (Unix milliseconds) is for tests."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    if not 0 <= ms < 1 << 48:
        raise ValueError(f"now_ms: must fit in 48 bits (got {ms})")
    return f"{ms:012x}{secrets.randbits(80):020x}"


def decision_id_time_ms(decision_id: str) -> int:
    """When a decision id was made (Unix milliseconds); ValueError for a string that is not one."""
    if len(decision_id) != 32 or any(c not in "0123456789abcdef" for c in decision_id):
        raise ValueError(f"not a decision id: {decision_id[:40]!r}")
    return int(decision_id[:12], 16)
