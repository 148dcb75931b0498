#!/usr/bin/env bash
# The same ghz sweep on a GPU machine, in one go of under 8 minutes (hard stop at 470 s), using only
# what it is given: this checkout, a bundle directory, the ghz binary, and a Python that has the
# serving packages plus onnxruntime-gpu (CUDA provider). It checks each of those first and says what
# is missing. RouteLLM is driven when scripts/install_routellm.sh's directory is present, else marked
# "not run" in the results.
#
#   BUNDLE=artifacts/default PY=python3 benchmarks/ghz/gpu_sweep.sh
#
# Environment: BUNDLE (required), PY (default .venv/bin/python, else python3), OUT (default
# benchmarks/ghz/results/gpu), SERVER_CORES / CLIENT_CORES (default: first / second half of the
# CPUs), THREADS (ONNX Runtime intra-op threads, default 4), LABEL (default "<bundle name> on GPU").
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
BUNDLE=${BUNDLE:?set BUNDLE to the bundle directory (manifest.json inside)}
OUT=${OUT:-benchmarks/ghz/results/gpu}
THREADS=${THREADS:-4}
n=$(nproc)
half=$(( n / 2 ))
SERVER_CORES=${SERVER_CORES:-0-$(( half - 1 ))}
CLIENT_CORES=${CLIENT_CORES:-$half-$(( n - 1 ))}
LABEL=${LABEL:-"$(basename "$BUNDLE") on GPU"}

fail() { echo "gpu_sweep: $*" >&2; exit 1; }
[ -f "$BUNDLE/manifest.json" ] || fail "no bundle at $BUNDLE (manifest.json missing)"
[ -x benchmarks/ghz/.bin/ghz ] || fail "benchmarks/ghz/.bin/ghz missing: run scripts/install_ghz.sh (or carry it)"
command -v taskset >/dev/null || echo "gpu_sweep: taskset not found; client and server will not be pinned" >&2
"$PY" - <<'EOF' || fail "the Python at PY=$PY cannot serve on CUDA (see above)"
import importlib, sys
missing = [m for m in ("numpy", "onnxruntime", "grpc", "grpc_health", "grpc_reflection", "tokenizers",
                       "faiss", "structlog", "matplotlib", "lmroute.service", "lmroute.v1.router_pb2")
           if importlib.util.find_spec(m.split(".")[0]) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)}")
import onnxruntime as ort
if "CUDAExecutionProvider" not in ort.get_available_providers():
    sys.exit(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

start=$(date +%s)
timeout 470 "$PY" benchmarks/ghz/run.py --bundle "$BUNDLE" --label "$LABEL" --device cuda \
  --intra-op-threads "$THREADS" --server-cores "$SERVER_CORES" --client-cores "$CLIENT_CORES" \
  --seconds 5 --out "$OUT"
echo "gpu_sweep: done in $(( $(date +%s) - start )) s; results in $OUT/RESULTS.md"
