#!/usr/bin/env bash
# Set up (scripts/setup.sh), build the default router bundle if it is missing (artifacts/default, about
# 10 minutes on a 2-core CPU the first time: benchmarks/RESULTS_build.md), then serve it on 127.0.0.1 with
# an embedded outcome store (artifacts/outcomes.sqlite3). Extra arguments go to
# lmroute-serve (see `lmroute-serve --help`); LMROUTE_BUNDLE picks another bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
bundle=${LMROUTE_BUNDLE:-artifacts/default}
if [ ! -f "$bundle/manifest.json" ]; then
  echo "serve: no bundle at $bundle; building the default bundle"
  .venv/bin/lmroute-export build --out "$bundle"
fi
# decisions and Feedback go to an embedded SQLite outcome store next to the bundle (LMROUTE_STORE: another
# store, e.g. postgresql://...; docs/OUTCOMES.md)
exec .venv/bin/lmroute-serve --bundle "$bundle" --host "${LMROUTE_HOST:-127.0.0.1}" \
  --store "${LMROUTE_STORE:-sqlite:artifacts/outcomes.sqlite3}" "$@"
