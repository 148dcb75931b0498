"""HealthServicer: the grpc.health.v1 service of the server.

The protocol as gRPC's own servicer serves it, with two differences an operator meets:

- `Check` of a service name the server does not hold answers NOT_FOUND naming the service asked for
  (its first 100 characters) and the names it holds (gRPC's says nothing, so a probe with a misspelt
  name failed unexplained);
- a `Watch` stream ends once the server drains, after it has sent NOT_SERVING: an open stream is not
  an in-flight call the drain waits `--grace-s` for (with one open, every stop took the whole grace).

`Watch` of an unknown name answers SERVICE_UNKNOWN and then every change, as the protocol says.
Event-loop only; `set` and `enter_graceful_shutdown` are the calls the server makes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["HealthServicer"]

_NAME_SHOWN = 100  # characters of an unknown service name repeated in the message
_Status = health_pb2.HealthCheckResponse


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # generated code: Any
    """Service name -> status ("" is the server as a whole, SERVING until set otherwise)."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {"": _Status.SERVING}
        self._version = 0  # counts changes; a watcher waits for it to move
        self._changed: asyncio.Condition | None = None  # made on the event loop at first use
        self._closing = False

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def set(self, service: str, status: int) -> None:
        """`service`'s status from now on (ignored once draining: every status is then NOT_SERVING)."""
        if self._closing:
            return
        async with self._condition():
            self._status[service] = status
            self._version += 1
            self._condition().notify_all()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING for good; open Watch streams send it and end."""
        if self._closing:
            return
        async with self._condition():
            self._closing = True
            for service in self._status:
                self._status[service] = _Status.NOT_SERVING
            self._version += 1
            self._condition().notify_all()

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        status = self._status.get(request.service)
        if status is None:
            asked = request.service
            shown = repr(asked[:_NAME_SHOWN])
            if len(asked) > _NAME_SHOWN:
                shown += f" (first {_NAME_SHOWN} of {len(asked)} characters)"
            known = ", ".join(repr(name) for name in sorted(self._status))
            await context.abort(grpc.StatusCode.NOT_FOUND, f"health: no service {shown}; this server has {known}")
        return _Status(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        changed = self._condition()
        seen, sent = -1, None
        while True:
            async with changed:
                while self._version == seen:
                    await changed.wait()
                seen = self._version
                status = self._status.get(request.service, _Status.SERVICE_UNKNOWN)
                closing = self._closing
            if status != sent:  # written outside the lock: a slow watcher holds up no one
                await context.write(_Status(status=status))
                sent = status
            if closing:
                return
