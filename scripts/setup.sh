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

want=$(cat requirements/lock.txt pyproject.toml | sha256sum | cut -c1-16)
have=$(cat .venv/.lmroute-installed 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "setup: installing pinned packages (first run installs ~6 GB: torch is the PyPI CUDA build)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 \
    | grep -v -i -e warning -e '!!' -e 'wheel_obj' -e '^ *$' || true
  echo "$want" > .venv/.lmroute-installed
fi

if [ -x scripts/gen_proto.sh ]; then
  scripts/gen_proto.sh
fi
