#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run every test: unit, integration (real ONNX sessions, real artifacts
# built in the test session, a real gRPC server on 127.0.0.1). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest tests "$@"
