#!/usr/bin/env bash
# Set up everything the project needs in ./.venv: pinned packages (requirements/lock.txt), the project
# itself (editable) and the generated gRPC code. Idempotent: a second run with unchanged pins is fast.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi

# Reinstall when the pins, the package metadata or the compiled core's sources change.
want=$(cat requirements/lock.txt pyproject.toml setup.py kernels/CMakeLists.txt kernels/src/* | sha256sum | cut -c1-16)
have=$(cat .venv/.lmroute-installed 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "setup: installing pinned packages (first run installs ~6 GB: torch is the PyPI CUDA build)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
  # the project itself, editable; setup.py builds the compiled core lmroute.kernels._core with CMake
  if ! .venv/bin/python -m pip install --disable-pip-version-check --no-deps --no-build-isolation -e . \
      > .venv/.lmroute-build.log 2>&1; then
    cat .venv/.lmroute-build.log
    echo "setup: installing the project (and compiling kernels/) failed; the log is above" >&2
    exit 1
  fi
  .venv/bin/python -c "import lmroute.kernels.compiled"  # a clear error if the core does not load
  echo "$want" > .venv/.lmroute-installed
fi

if [ -x scripts/gen_proto.sh ]; then
  scripts/gen_proto.sh
fi
