"""LivenessWatchdog: the overall gRPC health (service "") follows whether scoring makes progress.

The serving process is alive while its event loop answers and its scoring thread finishes batches. The
watchdog asks the scheduler every `period_s` for how long work has been pending without a batch
finishing (`Scheduler.stalled_s`); past `stall_s` it sets the health of `LIVENESS_SERVICE` to
NOT_SERVING (a Kubernetes livenessProbe then restarts the container), and back to SERVING once a batch
finishes. Each change is logged once (`scorer_stalled`, `scorer_progressing`). An idle server is never
stalled. A stuck event loop needs no watchdog: the health check itself then gets no answer.

The readiness name (lmroute.v1.RouterService) is left alone: it says loaded and not draining.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import structlog
from grpc_health.v1 import health_pb2

from lmroute.service.health_check import HealthServicer

__all__ = ["LIVENESS_SERVICE", "LivenessWatchdog", "StallSource"]

LIVENESS_SERVICE = ""
"""The grpc.health.v1 service name whose status is liveness: the overall health."""

_log = structlog.get_logger("lmroute.liveness")


class StallSource(Protocol):
    """What the watchdog watches (the Scheduler)."""

    def stalled_s(self, now: float) -> float:
        """Seconds work has been pending without a batch finishing at `now` (time.monotonic()); 0.0 when
        idle or progressing."""
        ...


class LivenessWatchdog:
    """Polls `source.stalled_s` and sets LIVENESS_SERVICE's health. `start()` on the loop, `await close()`."""

    def __init__(
        self,
        source: StallSource,
        health_servicer: HealthServicer,
        stall_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stall_s <= 0:
            raise ValueError(f"stall_s: must be > 0 (got {stall_s})")
        self.source = source
        self.health = health_servicer
        self.stall_s = stall_s
        self.period_s = min(1.0, max(0.01, stall_s / 5))  # notices a stall within stall_s + period_s
        self.live = True
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lmroute-liveness")

    async def close(self) -> None:
        """Stop polling (the health status is left as it is)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def check(self) -> bool:
        """One poll: update the health status if liveness changed; True while live."""
        stalled = self.source.stalled_s(self._clock())
        live = stalled < self.stall_s
        if live != self.live:
            self.live = live
            if live:
                _log.warning("scorer_progressing", service=LIVENESS_SERVICE)
                await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
            else:
                _log.error("scorer_stalled", stalled_s=round(stalled, 3), limit_s=self.stall_s)
                await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        return live

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            await self.check()
