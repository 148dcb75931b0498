#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the tests. Extra arguments go to pytest (a path among them runs
# only what it names: scripts/test.sh tests/integration/test_feedback.py).
#   scripts/test.sh           every tier: unit, integration (real ONNX sessions, real artifacts built in the
#                             test session, a real gRPC server on 127.0.0.1) and e2e (Go and Java clients)
#   scripts/test.sh --unit    the fast tier (tests/unit: pure functions and fakes) without its tests marked
#                             slow (statistical tests of minutes of fitting): 1 min 58 s on 2 idle cores
#                             (`time scripts/test.sh --unit`, AMD EPYC, 2026-12-07)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ "${1:-}" = "--unit" ]; then
  shift
  exec .venv/bin/python -m pytest tests/unit -m "not slow" "$@"
fi
exec .venv/bin/python -m pytest "$@"  # no paths given: pyproject's testpaths, every tier under tests/
