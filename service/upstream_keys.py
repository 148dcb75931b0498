"""KeyFile: an upstream's API key read from a file, and read again when the file changes.

An upstreams file entry's `api_key_file` (lmroute.service.upstreams) names a file holding the key (e.g. a
Kubernetes Secret mounted as a volume): its text, surrounding whitespace stripped. The file is looked at
no more than once a `RECHECK_S` (lmroute.service.file_watch) when a request is sent, so a rotated key is
sent from about a second after the file changes, without a restart. A changed file that cannot be read,
or holds no key, keeps the key in use (logged: `upstream_key_reload_failed`), as the tokens file does
(lmroute.service.auth): a half-written Secret does not take the upstream down.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from lmroute.service.file_watch import RECHECK_S, FileStamps

__all__ = ["KeyFile", "read_key_file"]

_log = structlog.get_logger("lmroute.upstreams")


def read_key_file(path: Path) -> str:
    """The key `path` holds; ValueError naming the file when it cannot be read or holds none."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if not key:
        raise ValueError(f"{path}: holds no key")
    if any(c.isspace() or not c.isprintable() for c in key):
        raise ValueError(f"{path}: a key is one line of printable characters without spaces")
    return key


class KeyFile:
    """The key of one upstream (`tier`), from `path`; `key` is the one to send now."""

    def __init__(self, tier: str, path: Path, key: str, recheck_s: float = RECHECK_S) -> None:
        self.tier = tier
        self.path = path
        self._watch = FileStamps([path], recheck_s)  # stamps first: a change from here on is seen
        try:
            self._key = read_key_file(path)
        except ValueError:
            self._key = key  # the one read at load (lmroute.service.upstreams)
        self.reloads = 0
        self.reload_failures = 0

    @property
    def key(self) -> str:
        if self._watch.changed():
            try:
                self._key = read_key_file(self.path)
            except ValueError as exc:
                self.reload_failures += 1
                _log.error("upstream_key_reload_failed", tier=self.tier, error=f"{exc}; the key in use is kept")
            else:
                self.reloads += 1
                _log.info("upstream_key_reloaded", tier=self.tier, file=str(self.path), reloads=self.reloads)
        return self._key
