"""`buf lint` over proto/ (STANDARD rules, proto/buf.yaml) and `buf breaking` (FILE rules) of proto/
against the released API (proto/api-baseline.binpb, a buf image of lmroute.v1 as first published) and
against the main branch of the repository's own git. buf comes from the npm registry, pinned.

The baseline only changes on purpose: `cd proto && npx --yes @bufbuild/buf@1.75.0 build -o api-baseline.binpb`
after an API change that is meant to be compatible (new fields, new RPCs) passed the check against it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "proto"
BUF = "@bufbuild/buf@1.75.0"
ROUTER_PROTO = Path("lmroute") / "v1" / "router.proto"

needs_npx = pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) is not installed")


def buf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["npx", "--yes", BUF, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def copy_module(dst: Path) -> Path:
    """A copy of the proto/ module (the .proto files and buf.yaml only)."""
    shutil.copytree(PROTO, dst, ignore=shutil.ignore_patterns("*_pb2*", "__pycache__", "*.py"))
    return dst


def main_ref() -> str | None:
    """The git ref of main: the local branch, else origin/main; None outside a git checkout with main."""
    if not (REPO / ".git").is_dir() or shutil.which("git") is None:
        return None
    for ref, spec in (("refs/heads/main", "branch=main"), ("refs/remotes/origin/main", "ref=origin/main")):
        found = subprocess.run(["git", "rev-parse", "--verify", "-q", ref], cwd=REPO, capture_output=True)
        if found.returncode == 0:
            return spec
    return None


@needs_npx
def test_buf_lint_is_clean() -> None:
    run = buf("lint", cwd=PROTO)
    assert run.returncode == 0, f"buf lint failed:\n{run.stdout}\n{run.stderr}"


@needs_npx
def test_buf_lint_catches_a_violation(tmp_path: Path) -> None:
    """The lint really runs: a copy of the module with a badly named field fails."""
    module = copy_module(tmp_path / "proto")
    proto = module / ROUTER_PROTO
    text = proto.read_text()
    proto.write_text(text.replace("message ScoreRequest {", "message ScoreRequest {\n  string BadName = 999;", 1))
    run = buf("lint", cwd=module)
    assert run.returncode != 0
    assert "BadName" in run.stdout + run.stderr


@needs_npx
def test_buf_breaking_against_the_released_api_is_clean() -> None:
    """Runs everywhere, CI included (where the checkout is main itself, so the main check is vacuous)."""
    baseline = PROTO / "api-baseline.binpb"
    assert baseline.is_file(), f"{baseline} is missing"
    run = buf("breaking", "--against", str(baseline), cwd=PROTO)
    assert run.returncode == 0, f"buf breaking against {baseline.name} failed:\n{run.stdout}\n{run.stderr}"


@needs_npx
def test_buf_breaking_against_main_is_clean() -> None:
    """The working tree's API breaks nothing of main's (removed fields must stay `reserved`, numbers kept)."""
    spec = main_ref()
    if spec is None:
        pytest.skip("not a git checkout with a main branch: nothing to compare the API with")
    run = buf("breaking", "--against", f"{REPO / '.git'}#{spec},subdir=proto", cwd=PROTO)
    assert run.returncode == 0, f"buf breaking against main ({spec}) failed:\n{run.stdout}\n{run.stderr}"


@needs_npx
def test_buf_breaking_catches_a_removed_and_a_renumbered_field(tmp_path: Path) -> None:
    """The check really runs: a copy with RouteResponse.truncated deleted and ScoreRequest.routers
    renumbered breaks against the untouched copy."""
    before = copy_module(tmp_path / "before")
    after = copy_module(tmp_path / "after")
    proto = after / ROUTER_PROTO
    text = proto.read_text()
    edits = (("  bool truncated = 8;\n", ""), ("repeated string routers = 2;", "repeated string routers = 20;"))
    for old, new in edits:
        assert old in text, f"{old!r} no longer in router.proto: update this test"
        text = text.replace(old, new, 1)
    proto.write_text(text)
    run = buf("breaking", "--against", str(before), cwd=after)
    out = run.stdout + run.stderr
    assert run.returncode != 0, f"buf breaking passed a breaking change:\n{out}"
    assert '"truncated"' in out and "RouteResponse" in out, out
    assert '"routers"' in out and "ScoreRequest" in out, out
