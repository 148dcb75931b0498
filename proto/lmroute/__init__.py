"""lmroute: an LLM router service. `lmroute.Controller` is RouteLLM's Python API over a running server
(lmroute.service.routellm_api), with its errors `RoutingError` and `UpstreamError`; `RouterClient` and
`AsyncRouterClient` call the server's gRPC API (lmroute.service.client); the rest lives in
lmroute.service, lmroute.bundle, lmroute.export."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AsyncRouterClient", "Controller", "RouterClient", "RoutingError", "UpstreamError"]

_HOMES = {  # imported on first use: `import lmroute.v1` stays light
    "Controller": "lmroute.service.routellm_api",
    "RoutingError": "lmroute.service.routellm_api",
    "UpstreamError": "lmroute.service.routellm_api",
    "RouterClient": "lmroute.service.client",
    "AsyncRouterClient": "lmroute.service.client",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'lmroute' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted([*__all__, "v1"])
