#!/usr/bin/env bash
# Lint, format and type checks (what .ci/run runs before the tests; also the pre-commit hooks).
#   ruff check            lint (pyflakes, pycodestyle, isort, bugbear, pyupgrade)
#   ruff format --check   formatting
#   mypy                  strict on lmroute.bundle, lmroute.service, lmroute.kernels, lmroute.outcomes, lmroute.adapt
# Run scripts/setup.sh first (scripts/test.sh does). `--fix` applies ruff's fixes and formats instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin

if [ "${1:-}" = "--fix" ]; then
  "$bin/ruff" check --fix .
  "$bin/ruff" format .
  exit 0
fi

"$bin/ruff" check .
"$bin/ruff" format --check .

# mypy reads modules from folders named like their import path; the editable install maps the
# lmroute.* packages onto the design's folders (bundle/, service/, ...) with an import hook that mypy
# does not follow, so the namespace is laid out here as links to those folders.
tree=build/typecheck/lmroute
rm -rf build/typecheck
mkdir -p "$tree"
ln -s ../../../proto/lmroute/__init__.py "$tree/__init__.py"
ln -s ../../../proto/lmroute/v1 "$tree/v1"
for pkg in bundle export service kernels outcomes adapt; do
  ln -s "../../../$pkg" "$tree/$pkg"
done
MYPYPATH=build/typecheck "$bin/mypy" -p lmroute.bundle -p lmroute.service -p lmroute.kernels -p lmroute.outcomes -p lmroute.adapt
echo "check: ruff, ruff format and mypy clean"
