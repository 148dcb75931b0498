"""The router kinds: one module per kind, behind this registry.

    get(name) -> RouterKind     the registered kind (KeyError naming the known kinds)
    names() -> tuple[str, ...]  every registered kind, sorted
    register(kind)              add a kind (a RouterKind instance); its module calls this on import
    unregister(name)            remove a kind (a test that registered one, or a plug-in being replaced)
    load_plugins(modules)       import modules that register more kinds (`--plugin` of both CLIs)

Built in: random, mf, sw_ranking, bert, quality, adapted, adapted_kernel, adapted_quality
(`kinds/<name>.py`; the three adapted kinds are written by `lmroute.adapt`; `sw_routellm_fit.py` holds
RouteLLM's own fit that sw_ranking's params.fit "routellm" uses).
Everything else (manifest parser, writer, loader, build pipeline, service) asks the registry, so a new kind
is one module plus its registration.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from lmroute.bundle.kinds.base import ArrayRole, FileRole, LoadContext, RouterArtifacts, RouterKind, TrainContext

__all__ = [
    "ArrayRole",
    "FileRole",
    "LoadContext",
    "RouterArtifacts",
    "RouterKind",
    "TrainContext",
    "get",
    "load_plugins",
    "names",
    "register",
    "unregister",
]

_REGISTRY: dict[str, RouterKind] = {}


def register(kind: RouterKind) -> RouterKind:
    """Register `kind` under `kind.name`; registering the same class again is a no-op, another class
    under a taken name is a ValueError."""
    if not isinstance(kind, RouterKind):
        raise TypeError(f"register: expected a RouterKind instance, got {type(kind).__name__}")
    name = getattr(type(kind), "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"register: {type(kind).__name__} has no name")
    taken = _REGISTRY.get(name)
    if taken is not None and type(taken) is not type(kind):
        raise ValueError(f"register: router kind {name!r} is already {type(taken).__module__}.{type(taken).__name__}")
    _REGISTRY[name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove the kind registered as `name` (KeyError naming the known kinds when there is none)."""
    get(name)
    del _REGISTRY[name]


def get(name: str) -> RouterKind:
    """The kind registered as `name`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown router kind {name!r} (known: {', '.join(names())})") from None


def names() -> tuple[str, ...]:
    """The registered kinds, sorted."""
    return tuple(sorted(_REGISTRY))


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module (dotted name on sys.path); a plugin module registers its kinds on import.
    A module that cannot be imported is an ImportError naming it."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"router kind plugin {module!r} cannot be imported: {exc}") from exc


def _register_builtins() -> None:
    from lmroute.bundle.kinds import adapted, adapted_kernel, adapted_quality, bert, mf, quality, random, sw_ranking

    for module in (random, mf, sw_ranking, bert, adapted, adapted_kernel, quality, adapted_quality):
        register(module.KIND)


_register_builtins()
