"""FileStamps: whether files changed since they were last looked at, for settings re-read without a restart.

A file's stamp is (modification time in ns, change time in ns, size, inode, device), so an edit in place,
a replacement by rename and a Kubernetes Secret volume's update (a symlink swapped to a new directory) all
count as changes, and so does a copy that keeps the old file's modification time and size (`cp -p`,
`rsync -a --inplace`, files dated by SOURCE_DATE_EPOCH): the change time, which no copy can set, moves;
a file that cannot be seen has its own stamp, so it going away and coming back are changes too. Looking
costs one `os.stat` a file; with `recheck_s` the files are looked at no more than that often, however
often a caller asks. Used by the TLS certificate files (lmroute.service.tls), the tokens file
(lmroute.service.auth) and the upstreams' key files (lmroute.service.upstream_keys).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RECHECK_S", "FileStamps"]

RECHECK_S = 1.0
"""How often (seconds) the settings re-read at calls (the tokens file, the OpenAI front's certificate
files) are looked at, at most: a change is taken within about this long."""

_UNSEEN = (-1, -1, -1, -1, -1)


def _stamp(path: Path) -> tuple[int, int, int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return _UNSEEN
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev


class FileStamps:
    """The stamps of `paths` when last looked at (from construction: take them before reading the files,
    so a change made while they are read is seen at the next look)."""

    def __init__(self, paths: Sequence[Path], recheck_s: float = 0.0) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self._recheck_s = recheck_s
        self._lock = threading.Lock()
        self._stamps = self._now()
        self._next_look = time.monotonic() + recheck_s
        self._retry_at: float | None = None  # look_again's time

    def _now(self) -> tuple[tuple[int, int, int, int, int], ...]:
        return tuple(_stamp(p) for p in self.paths)

    def changed(self) -> bool:
        """True, once, when a file changed since the last look (none within `recheck_s` of it)."""
        if time.monotonic() < self._next_look:
            return False
        with self._lock:
            now = time.monotonic()
            if now < self._next_look:
                return False  # another thread looked meanwhile
            self._next_look = now + self._recheck_s
            stamps = self._now()
            due = self._retry_at is not None and now >= self._retry_at
            if stamps == self._stamps and not due:
                return False
            self._stamps, self._retry_at = stamps, None
            return True

    def look_again(self, after_s: float) -> None:
        """Count the files as changed at the first look from `after_s` seconds on, changed or not (a change
        before then is seen as ever): what was read from them is tried again (a certificate refused as not
        yet valid may be valid by then)."""
        with self._lock:
            self._retry_at = time.monotonic() + after_s
