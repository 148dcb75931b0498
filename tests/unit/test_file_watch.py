"""FileStamps: a change is reported once; edits in place, replacement by rename, removal and return all
count; within `recheck_s` of a look nothing is looked at."""

from __future__ import annotations

import os
import time
from pathlib import Path

from lmroute.service.file_watch import FileStamps


def test_each_kind_of_change_is_reported_once(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("a\n")
    watch = FileStamps([path])
    assert not watch.changed()
    path.write_text("ab\n")  # edited in place
    assert watch.changed() and not watch.changed()
    spare = tmp_path / "next"
    spare.write_text("ab\n")  # same size, replaced by rename: another inode
    os.replace(spare, path)
    assert watch.changed() and not watch.changed()
    path.unlink()
    assert watch.changed() and not watch.changed()
    path.write_text("c\n")
    assert watch.changed() and not watch.changed()
    before = os.stat(path)
    time.sleep(0.01)
    with path.open("r+") as f:  # rewritten in place, same size, its time put back (`cp -p`, rsync --inplace)
        f.write("d\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (before.st_mtime_ns, before.st_size, before.st_ino)
    assert watch.changed() and not watch.changed()  # its change time moved: a copy cannot set it


def test_nothing_is_looked_at_within_recheck_s(tmp_path: Path) -> None:
    path = tmp_path / "cert"
    path.write_text("one\n")
    watch = FileStamps([path], recheck_s=1.0)
    path.write_text("two two\n")
    assert not watch.changed()  # within 1 s of the first look
    time.sleep(1.05)
    assert watch.changed() and not watch.changed()
