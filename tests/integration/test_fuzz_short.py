"""A short run of the request-path fuzzer (benchmarks/fuzz_requests.py; the 100,000-input run and its
results are in benchmarks/results/fuzz): random and mutated request bytes of every RouterService RPC
through a real server on 127.0.0.1 end only in OK, INVALID_ARGUMENT or NOT_FOUND (an unknown router)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_short_fuzz_run_finds_no_failure(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/fuzz_requests.py", "--runs", "3000", "--out", str(tmp_path), "-seed=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (tmp_path / "results.json").is_file(), f"exit {run.returncode}, no results:\n{run.stderr[-3000:]}"
    result = json.loads((tmp_path / "results.json").read_text())
    assert run.returncode == 0, (result["failures"], run.stderr[-3000:])
    assert result["inputs"] == 3000 and result["failures"] == []
    codes = {c["code"] for c in result["counts"]}
    assert {"OK", "INVALID_ARGUMENT"} <= codes <= {"OK", "INVALID_ARGUMENT", "NOT_FOUND"}
