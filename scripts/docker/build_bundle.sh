#!/usr/bin/env bash
# Build a router bundle with the offline pipeline (`lmroute-export build`), as the image's build stage does.
# Usage: scripts/docker/build_bundle.sh --out DIR [--quick] [--python PY] [more `lmroute-export build` flags]
#   --python PY  an interpreter that already has lmroute[train] installed (e.g. .venv/bin/python);
#                without it, scripts/setup.sh sets up .venv (exact pins of requirements/lock.txt, with torch).
#   --quick      CI-sized build (`lmroute-export build --quick`): minutes, numbers not meaningful.
# Other flags (--cache-dir, --routers, --seed, ...) go to `lmroute-export build` unchanged.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
py=""
out=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) py=${2:?build_bundle: --python needs a path}; shift 2 ;;
    --out) out=${2:?build_bundle: --out needs a directory}; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
[ -n "$out" ] || { echo "build_bundle: --out DIR is required" >&2; exit 2; }
if [ -z "$py" ]; then
  "$root/scripts/setup.sh"
  py="$root/.venv/bin/python"
fi
export_cli="$(dirname "$py")/lmroute-export"
[ -x "$export_cli" ] || { echo "build_bundle: $export_cli not found (is lmroute installed for $py?)" >&2; exit 2; }
export TOKENIZERS_PARALLELISM=false
"$export_cli" build --out "$out" "${args[@]}"
[ -f "$out/manifest.json" ] || { echo "build_bundle: no manifest.json in $out after the build" >&2; exit 1; }
echo "build_bundle: bundle at $out"
