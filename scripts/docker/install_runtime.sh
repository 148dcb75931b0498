#!/usr/bin/env bash
# The image's runtime stage: a virtual environment with only the serving dependencies (the exact pins of
# requirements/runtime.txt: ONNX Runtime, NumPy, tokenizers, grpcio...; no torch) and the lmroute
# wheel; `pip check` proves the pins satisfy the wheel's requirements.
# Usage: scripts/docker/install_runtime.sh VENV_DIR WHEEL_DIR [RUNTIME_REQUIREMENTS]
#   (default requirements: requirements/runtime.txt of this checkout; PYTHON picks the interpreter)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv=${1:?usage: install_runtime.sh VENV_DIR WHEEL_DIR [RUNTIME_REQUIREMENTS]}
wheel_dir=${2:?usage: install_runtime.sh VENV_DIR WHEEL_DIR [RUNTIME_REQUIREMENTS]}
reqs=${3:-$root/requirements/runtime.txt}
[ -f "$reqs" ] || { echo "install_runtime: no requirements file at $reqs" >&2; exit 2; }
shopt -s nullglob
wheels=("$wheel_dir"/lmroute-*.whl)
[ ${#wheels[@]} -eq 1 ] || { echo "install_runtime: expected one lmroute-*.whl in $wheel_dir, found ${#wheels[@]}" >&2; exit 2; }
"${PYTHON:-python3}" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# --no-deps: the pins are the whole closure; a missing one shows up in `pip check` below.
"${pip[@]}" install --quiet --only-binary=:all: --no-deps -r "$reqs"
"${pip[@]}" install --quiet --no-deps "${wheels[0]}"
"${pip[@]}" check
"$venv/bin/python" -c "import lmroute.service.main, lmroute.v1.router_pb2_grpc, psycopg"  # PostgreSQL stores too
echo "install_runtime: $venv ready ($(basename "${wheels[0]}"))"
