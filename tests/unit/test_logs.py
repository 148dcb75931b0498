"""Logging settings: whether info lines are written follows the level configure_logging set (the access
line's fields are only computed when they are)."""

from __future__ import annotations

import structlog

from lmroute.service import logs


def test_info_enabled_follows_the_configured_level() -> None:
    saved, level = structlog.get_config(), logs._level
    try:
        seen = {}
        for name in ("warning", "info", "debug", "error"):
            logs.configure_logging(name)
            seen[name] = logs.info_enabled()
        assert seen == {"warning": False, "info": True, "debug": True, "error": False}
    finally:
        structlog.configure(**saved)
        logs._level = level
