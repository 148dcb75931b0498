"""HealthServicer: grpc.health.v1 as gRPC's own servicer serves it, with a NOT_FOUND that says why.

gRPC's servicer answers `Check` for a service name it does not hold with NOT_FOUND and no message; a
probe configured with a misspelt name then reads as an unexplained failure. This one names the service
asked for (its first 100 characters) and the names it does hold. `Watch` is unchanged (an unknown name
is answered SERVICE_UNKNOWN, as the health protocol says).
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

__all__ = ["HealthServicer"]

_NAME_SHOWN = 100  # characters of an unknown service name repeated in the message


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]  # grpc_health has no type stubs: Any
    """gRPC's asyncio health servicer; `Check` of an unknown service names it and the known ones."""

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        status = self._server_status.get(request.service)
        if status is None:
            asked = request.service
            shown = repr(asked[:_NAME_SHOWN]) + (
                f" (first {_NAME_SHOWN} of {len(asked)} characters)" if len(asked) > _NAME_SHOWN else ""
            )
            known = ", ".join(repr(name) for name in sorted(self._server_status))
            await context.abort(grpc.StatusCode.NOT_FOUND, f"health: no service {shown}; this server has {known}")
        return health_pb2.HealthCheckResponse(status=status)
