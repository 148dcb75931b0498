"""Request bytes that do not decode as a method's request message: a `Malformed` marker, not an exception.

gRPC decodes a request with its handler's deserializer before the handler runs; a deserializer that
raises ends the call as UNKNOWN (grpc.aio) or INTERNAL (the synchronous server), unlogged. Each handler
the service wraps gets `tolerant_deserializer` instead, which returns a Malformed marker, and the wrapper
answers it with `malformed_error`: INVALID_ARGUMENT, reason MALFORMED_REQUEST, logged once as
`malformed_request` with the peer and the byte count (never the bytes). Unary calls
(lmroute.service.interceptors) and streaming calls with one request (lmroute.service.stream_cap: a health
Watch) alike, on both transports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from lmroute.service.errors import InvalidArgument

__all__ = ["Malformed", "malformed_error", "tolerant_deserializer"]

_log = structlog.get_logger("lmroute.service")


@dataclass(frozen=True)
class Malformed:
    """What `tolerant_deserializer` returns for bytes that do not decode: their count and the error."""

    n_bytes: int
    error: str


def tolerant_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserialize`, returning a Malformed marker where it would raise (None stays None: raw bytes)."""
    if deserialize is None:
        return None

    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, and anything else the decoder raises on hostile bytes
            return Malformed(len(data), f"{type(exc).__name__}: {exc}"[:200])

    return tolerant


def malformed_error(request: Malformed, method: str, peer: str) -> InvalidArgument:
    """Log the undecodable request once and the InvalidArgument it is answered with."""
    _log.warning("malformed_request", peer=peer, bytes=request.n_bytes, error=request.error)
    why = request.error.rpartition(": ")[2] if request.error.startswith("DecodeError") else ""
    said = f" ({why}: a string field that is not UTF-8 fails the whole message)" if "UTF-8" in why else ""
    said = said or (f" ({why})" if why else "")
    return InvalidArgument(
        f"request: {request.n_bytes} bytes that do not decode as the request message of {method}{said}",
        reason="MALFORMED_REQUEST",
    )
