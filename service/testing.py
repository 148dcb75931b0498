"""ServerThread: a RouterServer on its own event loop in a daemon thread, for tests and benchmarks.

with ServerThread(config, scorer_factory=lambda cfg: FakeScorer()) as srv:
    RouterClient(srv.target).health()

`fake_server(**settings)` starts one over FakeScorer with test defaults.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from lmroute.service.config import ServiceConfig
from lmroute.service.server import RouterServer, ScorerFactory, load_bundle_scorer

__all__ = ["ServerThread", "fake_server"]

R = TypeVar("R")


class ServerThread:
    """Start with `start()` (binds; loads unless wait_ready=False leaves loading in the background)."""

    def __init__(self, config: ServiceConfig, scorer_factory: ScorerFactory = load_bundle_scorer) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lmroute-server", daemon=True)
        self.server = RouterServer(config, scorer_factory)
        self.loaded: concurrent.futures.Future[None] | None = None
        self.port: int | None = None

    @property
    def target(self) -> str:
        """host:port to dial."""
        assert self.port is not None
        return self.server.config.address(self.port)

    def call(self, coro: Coroutine[Any, Any, R], timeout_s: float = 60.0) -> R:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def start(self, *, wait_ready: bool = True, timeout_s: float = 60.0) -> ServerThread:
        """Bind (and, with wait_ready, load + warm; loading errors are raised here)."""
        self._thread.start()
        self.port = self.call(self.server.bind(), timeout_s)
        self.loaded = asyncio.run_coroutine_threadsafe(self.server.load(), self.loop)
        if wait_ready:
            self.loaded.result(timeout_s)
        return self

    def stop(self, grace_s: float = 0.0, timeout_s: float = 60.0) -> None:
        """Drain with `grace_s`, stop the loop and join the thread."""
        if self._thread.is_alive():
            try:
                self.call(self.server.stop(grace_s), timeout_s)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(timeout_s)
        if not self.loop.is_closed() and not self.loop.is_running():
            self.loop.close()

    def __enter__(self) -> ServerThread:
        return self if self.port is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fake_server(
    *, quiet: bool = True, default_router: str = "", tenant_routers: dict[str, str] | None = None, **settings: Any
) -> ServerThread:
    """A started ServerThread over FakeScorer (routers random and mf; `default_router` its default router,
    "" none; `tenant_routers` its tenants' own) on 127.0.0.1, a free port, no grace period and the thread
    transport (what `--transport auto` picks for a bundle whose calls cost microseconds, as FakeScorer's
    do; its bundle path names no manifest) (with `quiet`, logging set to warnings); `settings` are more
    ServiceConfig fields (or overrides of those)."""
    from pathlib import Path

    from lmroute.service.fake_scorer import FakeScorer
    from lmroute.service.logs import configure_logging

    if quiet:
        configure_logging("warning")
    base: dict[str, Any] = dict(
        bundle_path=Path("unused"), port=0, log_level="warning", grace_s=0.0, transport="threads"
    )
    base.update(settings)
    fake = FakeScorer(routers=("random", "mf"), default_router=default_router, tenant_routers=tenant_routers)
    return ServerThread(ServiceConfig(**base), scorer_factory=lambda _cfg: fake).start()
