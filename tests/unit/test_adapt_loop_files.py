"""`lmroute-adapt`'s file handling: re-pointing the bundle link and pruning old adapted bundles."""

from __future__ import annotations

import os
import time
from pathlib import Path

from lmroute.adapt.loop import STALE_STAGING_S, point_link, prune_bundles

STAMPS = [f"adapted-20261205T0{h}0000000000Z" for h in range(7)]  # oldest first


def _bundles(root: Path) -> Path:
    for name in [*STAMPS, "base"]:
        (root / name).mkdir(parents=True)
        (root / name / "manifest.json").write_text("{}")
    return root


def test_the_link_is_repointed_relative_and_atomically(tmp_path: Path) -> None:
    root = _bundles(tmp_path / "bundles")
    link = root / "current"
    link.symlink_to("base")
    point_link(link, root / STAMPS[3])
    assert os.readlink(link) == STAMPS[3] and link.resolve() == (root / STAMPS[3]).resolve()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    point_link(link, elsewhere)  # outside the link's folder: still relative to it (the volume may move)
    assert os.readlink(link) == "../elsewhere" and link.resolve() == elsewhere.resolve()
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []


def test_pruning_keeps_the_newest_and_the_serving_bundle(tmp_path: Path) -> None:
    root = _bundles(tmp_path / "bundles")
    link = root / "current"
    link.symlink_to(STAMPS[1])  # an old bundle still serving (e.g. later candidates were refused by servers)
    deleted = prune_bundles(root, 3, link)
    assert sorted(p.name for p in deleted) == [STAMPS[0], STAMPS[2], STAMPS[3]]
    assert sorted(p.name for p in root.iterdir()) == sorted(["base", "current", STAMPS[1], *STAMPS[4:]])
    assert prune_bundles(root, 3, link) == []  # nothing more to delete
    assert prune_bundles(root, 0, root / "base") == []  # 0 keeps all
    assert len(list(root.iterdir())) == 6


def test_pruning_deletes_what_a_killed_round_left_half_written(tmp_path: Path) -> None:
    """A round killed while writing (an evicted CronJob) leaves `.adapted-*.tmp-*`: deleted once older
    than STALE_STAGING_S, whatever --keep-bundles says; one being written now is left alone."""
    root = _bundles(tmp_path / "bundles")
    left = root / ".adapted-20261205T010000000000Z.tmp-abc123"
    replaced = root / ".adapted-20261205T010000000000Z.old-ghi789"  # killed while it replaced a bundle
    writing = root / ".adapted-20261205T020000000000Z.tmp-def456"
    for staged in (left, replaced, writing):
        (staged / "routers").mkdir(parents=True)
    now = time.time()
    for stale in (left, replaced):
        os.utime(stale, (now - STALE_STAGING_S - 60, now - STALE_STAGING_S - 60))
    assert sorted(prune_bundles(root, 0, root / "base", now=now)) == sorted([left, replaced])
    assert writing.is_dir() and not left.exists() and not replaced.exists()
    assert (root / STAMPS[0]).is_dir()  # keep 0: bundles kept
