"""Import RouteLLM (the PyPI package `routellm`) for benchmarks, from the side directory that
scripts/install_routellm.sh fills (.cache/routellm/site), on top of .venv and without touching it.

    from routellm_env import import_routellm
    rl = import_routellm()
    rl.compute_elo_mle_with_tie(df, sample_weight=w)   # RouteLLM's own weighted BT fit
    rl.SWRankingRouter                                   # its sw_ranking router class

The side directory is appended to sys.path (after .venv's site-packages), so every package .venv already
has (torch, sklearn, numpy, transformers) comes from .venv. RouteLLM builds an OpenAI client at import
time; OPENAI_API_KEY is set to a dummy when unset (nothing here calls the network).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["ROUTELLM_SITE", "RouteLLM", "RouteLLMMissing", "import_routellm"]

ROUTELLM_SITE = Path(__file__).resolve().parent.parent / ".cache" / "routellm" / "site"
"""Where scripts/install_routellm.sh installs routellm and its missing dependencies."""


class RouteLLMMissing(ImportError):
    """RouteLLM is not installed (or does not import) in ROUTELLM_SITE."""


@dataclass(frozen=True)
class RouteLLM:
    """What the benchmarks use from RouteLLM."""

    version: str
    utils: ModuleType  # routellm.routers.similarity_weighted.utils
    routers: ModuleType | None  # routellm.routers.routers (None when imported with routers=False)
    compute_elo_mle_with_tie: Callable[..., Any]
    compute_tiers: Callable[..., Any]
    sw_ranking_router: type | None  # routers.SWRankingRouter


def import_routellm(*, routers: bool = True) -> RouteLLM:
    """Import RouteLLM from ROUTELLM_SITE; idempotent. routers=False skips routellm.routers.routers
    (which imports torch, transformers and datasets: seconds) when only the BT utils are needed."""
    if not (ROUTELLM_SITE / "routellm").is_dir():
        raise RouteLLMMissing(f"RouteLLM is not installed in {ROUTELLM_SITE}: run scripts/install_routellm.sh")
    site = str(ROUTELLM_SITE)
    if site not in sys.path:
        sys.path.append(site)
    os.environ.setdefault("OPENAI_API_KEY", "sk-dummy-no-network")
    try:
        import routellm.routers.similarity_weighted.utils as utils

        routers_mod = None
        if routers:
            import routellm.routers.routers as routers_mod
    except ImportError as exc:
        raise RouteLLMMissing(
            f"RouteLLM in {ROUTELLM_SITE} does not import ({exc}): rerun scripts/install_routellm.sh"
        ) from exc
    try:
        version = importlib.metadata.version("routellm")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return RouteLLM(
        version=version,
        utils=utils,
        routers=routers_mod,
        compute_elo_mle_with_tie=utils.compute_elo_mle_with_tie,
        compute_tiers=utils.compute_tiers,
        sw_ranking_router=None if routers_mod is None else routers_mod.SWRankingRouter,
    )
