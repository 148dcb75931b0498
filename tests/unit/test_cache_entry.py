"""`lmroute.export.cache_entry.fill_once`: two builds at once make a cache entry once (they staged it in
one shared folder and deleted each other's files), and what a killed build left is replaced."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from lmroute.export.cache_entry import fill_once

_BUILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from lmroute.export.cache_entry import fill_once

    out, log = Path(sys.argv[1]), Path(sys.argv[2])

    def make(staging: Path) -> None:
        with log.open("a") as f:
            f.write(f"{staging.name}\\n")
        (staging / "table.npy").write_text("half")
        time.sleep(1.0)  # long enough for the other build to reach the entry meanwhile
        (staging / "distill.json").write_text("{}")

    made = fill_once(out, lambda o: (o / "distill.json").is_file(), make)
    print("made" if made else "found", (out / "table.npy").read_text(), flush=True)
    """
)


def test_two_builds_at_once_make_the_entry_once(tmp_path: Path) -> None:
    out, log = tmp_path / "static" / "0123abcd", tmp_path / "made.log"
    builds = [
        subprocess.Popen([sys.executable, "-c", _BUILD, str(out), str(log)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    said = sorted(b.communicate(timeout=60)[0].strip() for b in builds)
    assert [b.returncode for b in builds] == [0, 0]
    assert said == ["found half", "made half"]  # the second waited for the first, then found it
    assert len(log.read_text().splitlines()) == 1
    assert sorted(p.name for p in out.parent.iterdir()) == [".0123abcd.lock", "0123abcd"]


def test_what_a_killed_build_left_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "encoders" / "feed"
    (out / "model.onnx").parent.mkdir(parents=True)
    (out / "model.onnx").write_text("cut short")  # an entry without its completion marker
    left = out.with_name(".feed.tmp-4242")  # a killed build's staging folder
    left.mkdir()
    (left / "model.onnx").write_text("half")
    calls: list[str] = []

    def make(staging: Path) -> None:
        calls.append(staging.name)
        (staging / "model.onnx").write_text("whole")
        (staging / "export.json").write_text("{}")

    def complete(o: Path) -> bool:
        return (o / "export.json").is_file()

    def fail(staging: Path) -> None:
        (staging / "model.onnx").write_text("half")
        raise OSError(28, "No space left on device")

    try:
        fill_once(out, complete, fail)
    except OSError as exc:
        assert exc.errno == 28
    else:
        raise AssertionError("the failed make was not raised")
    assert list(out.parent.glob(".feed.tmp-*")) == []
    assert (out / "model.onnx").read_text() == "cut short"  # a failed make leaves the entry as it was
    assert fill_once(out, complete, make) is True
    assert (out / "model.onnx").read_text() == "whole" and not left.exists()
    assert fill_once(out, complete, make) is False and len(calls) == 1
