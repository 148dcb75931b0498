"""lmroute: an LLM router service. `lmroute.Controller` is RouteLLM's Python API over a running server
(lmroute.service.routellm_api); the rest lives in lmroute.service, lmroute.bundle, lmroute.export."""

from __future__ import annotations

from typing import Any

__all__ = ["Controller"]


def __getattr__(name: str) -> Any:
    if name == "Controller":  # imported on first use: `import lmroute.v1` stays light
        from lmroute.service.routellm_api import Controller

        return Controller
    raise AttributeError(f"module 'lmroute' has no attribute {name!r}")
