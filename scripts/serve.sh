#!/usr/bin/env bash
# Set up (scripts/setup.sh), make sure a router bundle exists, then serve it on 127.0.0.1 with an
# embedded outcome store (artifacts/outcomes.sqlite3). Extra arguments go to lmroute-serve (see
# `lmroute-serve --help`); LMROUTE_BUNDLE (or --bundle DIR among them) picks another bundle.
#
# The first run builds a starter bundle in about a minute (the static encoder tier; routers random, mf,
# sw_ranking and quality) and serves it at once. The default bundle (`lmroute-export build`: the default recipe,
# bert included, about 10 minutes on 2 cores: benchmarks/RESULTS_build.md) is then built in the
# background, niced, into the same directory (log: <bundle>.build.log); the server watches the directory
# and swaps the new bundle in without dropping a call. LMROUTE_BACKGROUND_BUILD=0 skips that build; a
# bundle that LMROUTE_BUNDLE names and that exists already is served as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
named=${LMROUTE_BUNDLE:-}
prev=
for arg in "$@"; do  # --bundle DIR among the arguments names the bundle as LMROUTE_BUNDLE does (the last wins)
  case $arg in --bundle=*) named=${arg#--bundle=} ;; esac
  if [ "$prev" = --bundle ]; then named=$arg; fi
  prev=$arg
done
bundle=${named:-artifacts/default}
# decisions and Feedback go to an embedded SQLite outcome store next to the bundle (LMROUTE_STORE: another
# store, e.g. postgresql://...; docs/OUTCOMES.md); Route among candidates prices them from RouterBench's
# list prices unless LMROUTE_MODELS_FILE names another file (docs/MODELS.md)
serve=(--bundle "$bundle" --host "${LMROUTE_HOST:-127.0.0.1}" --store "${LMROUTE_STORE:-sqlite:artifacts/outcomes.sqlite3}"
  --models-file "${LMROUTE_MODELS_FILE:-data/prices/routerbench.json}")
for arg in "$@"; do  # the server's usage, with nothing built or served
  case $arg in -h | --help) exec .venv/bin/lmroute-serve --help ;; esac
done
# the settings and the ports are checked before a bundle is built (a port in use is said at once)
.venv/bin/lmroute-serve --check "${serve[@]}" "$@"
watch=()
ours=${named:+0}  # a bundle named (LMROUTE_BUNDLE, --bundle) is never rebuilt in the background, unless built here
if [ ! -f "$bundle/manifest.json" ]; then
  echo "serve: no bundle at $bundle; building a starter bundle (static encoder; random, mf, sw_ranking, quality)"
  .venv/bin/lmroute-export build --encoder static --routers random mf sw_ranking quality --out "$bundle"
  ours=1
fi
if [ "${ours:-1}" = 1 ] && [ ! -d "$bundle/routers/bert" ] && [ "${LMROUTE_BACKGROUND_BUILD:-1}" != 0 ]; then
  echo "serve: building the default bundle in the background (log: $bundle.build.log); it is swapped in when written"
  # the build lives as long as the server: once the server (this shell's process after exec) is gone, by
  # Ctrl-C, SIGTERM or a failed start, the build is stopped (SIGTERM: it leaves no half-written bundle)
  server=$$
  (
    exec </dev/null >/dev/null 2>&1  # holds no pipe of the caller's open (serve.sh | tee ... ends with the server)
    nice -n 10 .venv/bin/lmroute-export build --out "$bundle" >"$bundle.build.log" 2>&1 &
    build=$!
    while kill -0 "$build" 2>/dev/null; do
      if ! kill -0 "$server" 2>/dev/null; then
        kill -TERM "$build" 2>/dev/null || true
        break
      fi
      sleep 1
    done
    wait "$build" 2>/dev/null || true
  ) &
  watch=(--bundle-watch-s 10)
fi
exec .venv/bin/lmroute-serve "${serve[@]}" "${watch[@]}" "$@"
