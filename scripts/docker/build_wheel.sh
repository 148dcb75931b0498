#!/usr/bin/env bash
# Build the lmroute wheel (no dependencies) into OUT_DIR, from a clean copy of the source tree, with the
# build backend of an environment set up from requirements/lock.txt (no build isolation: the backend's
# version is the pinned one, and no download is needed).
# Usage: scripts/docker/build_wheel.sh OUT_DIR [PYTHON]    (default PYTHON: .venv/bin/python)
# LMROUTE_WHEEL_WORKDIR: keep the source copy there between builds (its build/cmake-* directory holds
# CMake's incremental build of the compiled core; everything else is replaced on each run). Default: a fresh
# temporary copy, removed afterwards.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out=${1:?usage: build_wheel.sh OUT_DIR [PYTHON]}
py=${2:-$root/.venv/bin/python}
[ -x "$py" ] || { echo "build_wheel: no interpreter at $py (run scripts/setup.sh or pass PYTHON)" >&2; exit 2; }
if ! ls "$root"/proto/lmroute/v1/*_pb2_grpc.py >/dev/null 2>&1; then
  "$root/scripts/gen_proto.sh" "$py"   # the wheel ships the generated gRPC code
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -n "${LMROUTE_WHEEL_WORKDIR:-}" ]; then
  src=$LMROUTE_WHEEL_WORKDIR
  mkdir -p "$src"
  find "$src" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
  [ ! -d "$src/build" ] || find "$src/build" -mindepth 1 -maxdepth 1 ! -name 'cmake-*' -exec rm -rf {} +
else
  src=$(mktemp -d "${TMPDIR:-/tmp}/lmroute-wheel-src.XXXXXX")
  trap 'rm -rf "$src"' EXIT
fi
# Same exclusions as .dockerignore: environments, caches, artifacts, previous builds (an in-tree
# lmroute/kernels/_core*.so too: the wheel compiles its own), non-Python parts.
tar -C "$root" -cf - \
  --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude=./artifacts --exclude=./build \
  --exclude=./dist --exclude=./clients --exclude=./deploy --exclude=./tests --exclude=./benchmarks --exclude=./docs \
  --exclude=./scripts/docker/.tools --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
  --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.hypothesis --exclude='*.so' . | tar -C "$src" -xf -
rm -f "$out"/lmroute-*.whl
"$py" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$out" "$src"
wheel=$(ls "$out"/lmroute-*.whl)
echo "build_wheel: $wheel"
