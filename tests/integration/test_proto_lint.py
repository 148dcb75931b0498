"""`buf lint` over proto/ (STANDARD rules, proto/buf.yaml). buf comes from the npm registry, pinned."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROTO = Path(__file__).resolve().parents[2] / "proto"
BUF = "@bufbuild/buf@1.75.0"


@pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) is not installed")
def test_buf_lint_is_clean() -> None:
    run = subprocess.run(["npx", "--yes", BUF, "lint"], cwd=PROTO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"buf lint failed:\n{run.stdout}\n{run.stderr}"


@pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) is not installed")
def test_buf_lint_catches_a_violation(tmp_path: Path) -> None:
    """The lint really runs: a copy of the module with a badly named field fails."""
    shutil.copytree(PROTO, tmp_path / "proto", ignore=shutil.ignore_patterns("*_pb2*", "__pycache__", "*.py"))
    proto = tmp_path / "proto" / "lmroute" / "v1" / "router.proto"
    text = proto.read_text()
    proto.write_text(text.replace("message ScoreRequest {", "message ScoreRequest {\n  string BadName = 999;", 1))
    run = subprocess.run(["npx", "--yes", BUF, "lint"], cwd=tmp_path / "proto", capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "BadName" in run.stdout + run.stderr
