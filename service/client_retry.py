"""How the Python clients (lmroute.service.client) retry a call the server refused for now: the same policy
as the Go and Java clients (clients/README.md).

Only RESOURCE_EXHAUSTED (admission refused: the server carries a retry delay) and UNAVAILABLE (queue
timeout, not ready, draining, the store busy, the connection down) are retried; every other status comes
back at once, and so does a RESOURCE_EXHAUSTED that says a message is larger than gRPC's limit (sent or
received: the same message is as large again). The delay before retry n (n = 1 for the first) is
`initial_backoff_s * multiplier**(n-1)`, capped at `max_backoff_s`, spread by +-`jitter`; when the error
carries a google.rpc.RetryInfo its delay is waited instead, spread upwards only (never earlier than the
server asked). No retry starts that would begin past the call's deadline (the timeout counts from the
first attempt): the last error comes back.

Retrying a refused call is safe: a refusal (RESOURCE_EXHAUSTED) or a queue timeout happens before any
decision is made or outcome stored, and Feedback is idempotent (the same outcome again is a duplicate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["DEFAULT_RETRY", "NO_RETRY", "RETRYABLE", "RetryPolicy", "error_reason", "retry_delay_s", "retryable"]

RETRYABLE = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Attempts and backoff of one call (see the module docstring); ValueError naming a bad field."""

    max_attempts: int = 4  # the first attempt included; 1 = no retry
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0  # cap of the computed delay (not of the server's)
    multiplier: float = 2.0
    jitter: float = 0.2  # a fraction in [0, 1]

    def __post_init__(self) -> None:
        for name in ("max_attempts", "initial_backoff_s", "max_backoff_s", "multiplier", "jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"RetryPolicy.{name}: must be a finite number (got {value!r})")
        checks = [
            ("max_attempts", isinstance(self.max_attempts, int) and self.max_attempts >= 1, ">= 1"),
            ("initial_backoff_s", self.initial_backoff_s >= 0, ">= 0"),
            ("max_backoff_s", self.max_backoff_s >= self.initial_backoff_s, ">= initial_backoff_s"),
            ("multiplier", self.multiplier >= 1, ">= 1"),
            ("jitter", 0 <= self.jitter <= 1, "in [0, 1]"),
        ]
        for name, ok, bound in checks:
            if not ok:
                raise ValueError(f"RetryPolicy.{name}: must be {bound} (got {getattr(self, name)!r})")

    def backoff_s(self, n: int, err: grpc.RpcError, u: float) -> float:
        """Seconds to wait before retry `n` (>= 1) after `err`; `u` uniform in [0, 1)."""
        asked = retry_delay_s(err)
        if asked is not None:
            return asked * (1 + self.jitter * u)
        base = min(self.initial_backoff_s * self.multiplier ** (n - 1), self.max_backoff_s)
        return min(base * (1 + self.jitter * (2 * u - 1)), self.max_backoff_s)

    def next_delay_s(self, n: int, err: grpc.RpcError, u: float, remaining_s: float | None) -> float | None:
        """The wait before retry `n` after attempt `n` failed with `err`, or None when the call is over:
        the error is not retryable, the attempts are spent, or the wait leaves less than MIN_ATTEMPT_S of
        the deadline for the retry (`remaining_s`: seconds left of the call's timeout, None without one)."""
        if n >= self.max_attempts or not retryable(err):
            return None
        delay = self.backoff_s(n, err, u)
        if remaining_s is not None and delay + MIN_ATTEMPT_S >= remaining_s:
            return None
        if delay > MAX_WAIT_S:  # a server's delay of centuries (time.sleep cannot take it): its answer stands
            return None
        return delay


MIN_ATTEMPT_S = 0.01
"""A retry is not begun with less than this left of the call's timeout: it could only end
DEADLINE_EXCEEDED, and the caller is better told why the last attempt was refused."""

MAX_WAIT_S = 1e9
"""The longest wait before a retry (about 31 years; a call without a timeout may be asked for longer)."""

DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


_TOO_LARGE = "message larger than max"  # gRPC's own RESOURCE_EXHAUSTED for a message over its size limit


def retryable(err: grpc.RpcError) -> bool:
    """Whether `err` is a refusal for now: RESOURCE_EXHAUSTED or UNAVAILABLE, but not a message over the
    size limit (gRPC says "Sent message larger than max" / "Received message larger than max")."""
    code = _code(err)
    if code not in RETRYABLE:
        return False
    details = getattr(err, "details", None)
    text = details() if callable(details) else None
    return not (code == grpc.StatusCode.RESOURCE_EXHAUSTED and isinstance(text, str) and _TOO_LARGE in text)


def _code(err: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def _details(err: grpc.RpcError) -> list[Any]:
    """The google.rpc.Status details the error carries in its trailing metadata (sync or aio errors)."""
    trailing = getattr(err, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return list(status_pb2.Status.FromString(value).details)
            except Exception:  # undecodable details: as if there were none
                return []
    return []


def retry_delay_s(err: grpc.RpcError) -> float | None:
    """The retry delay (seconds) of the google.rpc.RetryInfo that `err` carries, if any."""
    for detail in _details(err):
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


def error_reason(err: grpc.RpcError) -> str:
    """The reason of the first google.rpc.ErrorInfo that `err` carries (e.g. "QUEUE_FULL"), or ""."""
    for detail in _details(err):
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""
