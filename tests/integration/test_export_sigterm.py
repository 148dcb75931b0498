"""SIGTERM during `lmroute-export build` (a real process, a real staged bundle: the training replaced by
`make_tiny_bundle`, whose commit waits for the signal) cleans up as Ctrl-C does: no staging directory is
left beside --out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

BUILD = """
import sys, time
from pathlib import Path
import lmroute.bundle.writer as writer
import lmroute.export.pipeline as pipeline
from lmroute.bundle.testing import make_fake_encoder_dir, make_tiny_bundle
from lmroute.export.cli import main

root = Path(sys.argv[1])
encoder = make_fake_encoder_dir(root / "encoder", dim=16, seed=3)

def waiting_load(*args, **kwargs):
    print("staged", flush=True)  # the bundle's files lie in its staging directory now
    time.sleep(120)

def tiny_build(cfg):
    make_tiny_bundle(cfg.out_dir, encoder_dir=encoder, seed=5)

writer.load_bundle = waiting_load
pipeline.build_bundle = tiny_build
sys.exit(main(["build", "--out", str(root / "out"), "--quick"]))
"""


def test_sigterm_during_a_build_leaves_no_staging_directory(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", BUILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "staged\n"
    assert [p.name for p in tmp_path.glob(".out.tmp-*")]  # staged, not yet committed
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.endswith("lmroute-export: interrupted (signal SIGTERM)\n"), err
    assert "Traceback" not in err, err  # one line, as a command line's errors are
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]  # no .out.tmp-*, no out
