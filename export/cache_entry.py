"""Filling a build cache entry once, whatever else runs: `fill_once`.

`lmroute-export build` caches what is slow to make (an exported encoder, a distilled static table) under
`--cache-dir`. Two builds at once (a test run beside `scripts/serve.sh`, two CI jobs on one volume) used
to stage the same entry in the same `<key>.tmp` folder: one deleted the other's half-written files
(`tokenizer.json: missing`), or removed a finished entry while the other read it.

An entry is made under an exclusive `flock` on `.<key>.lock` beside it: one process makes it, in a
staging folder of its own (`.<key>.tmp-<pid>`), renamed into place when complete; a process that waited
for the lock finds the entry complete and makes nothing. An incomplete entry or staging folder a killed
build left is replaced or removed. The lock is released when its holder exits, killed or not.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["fill_once"]


def fill_once(out: Path, complete: Callable[[Path], bool], make: Callable[[Path], None]) -> bool:
    """Make the cache entry folder `out` unless `complete(out)`: `make(staging)` fills an empty folder,
    then renamed to `out`. Returns whether this call made it (False: it was complete, maybe made by a
    build this one waited for)."""
    if complete(out):
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out.with_name(f".{out.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while another build makes it
        if complete(out):
            return False
        for left in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):  # killed builds' (none runs now)
            shutil.rmtree(left, ignore_errors=True)
        staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        staging.mkdir()
        try:
            make(staging)
            shutil.rmtree(out, ignore_errors=True)  # what a killed build left incomplete
            staging.rename(out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would let two builds lock two files)
