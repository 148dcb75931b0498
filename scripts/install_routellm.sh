#!/usr/bin/env bash
# Installs RouteLLM (PyPI `routellm`, pinned) for benchmarks only, into .cache/routellm/site, never into .venv:
# `--no-deps` plus only the pinned light packages .venv lacks (pandas, openai, datasets and theirs; torch,
# sklearn, transformers come from .venv). Use it via benchmarks/routellm_env.py `import_routellm()`. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
DEST=.cache/routellm/site

# routellm 0.2.0 (= github lm-sys/RouteLLM v0.2.0) and what `routellm.routers.routers` imports that .venv lacks,
# resolved against .venv (huggingface_hub 0.36.2, fsspec 2026.9.0 kept from .venv: datasets 4.8.5 is the last
# release that accepts huggingface_hub < 1; its fsspec cap is ignored, the API it uses is unchanged).
PINS=(
  routellm==0.2.0
  pandas==3.1.1
  openai==3.57.0 anyio==4.16.0 httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0 truststore==0.10.5
  jiter==0.19.0 sniffio==1.3.1
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 pyarrow==26.0.1 xxhash==4.1.0 httpx==0.28.1
  httpcore==1.0.9 aiohttp==3.14.5 multidict==7.2.1 yarl==1.25.1 aiohappyeyeballs==2.7.1
  aiosignal==1.4.0 attrs==26.1.0 frozenlist==1.8.0 propcache==0.5.4
)

want=$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-16)
if [ "$(cat "$DEST/.installed" 2>/dev/null || true)" = "$want" ]; then
  echo "install_routellm: $DEST is up to date"
  exit 0
fi
if [ ! -x "$PY" ]; then
  echo "install_routellm: $PY not found: run scripts/setup.sh first" >&2
  exit 1
fi

tmp="$DEST.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "install_routellm: installing ${#PINS[@]} pinned packages into $DEST (no deps, .venv untouched)"
"$PY" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --target "$tmp" "${PINS[@]}"

# check the install imports on top of .venv (dir appended after .venv's site-packages, as routellm_env does)
OPENAI_API_KEY=${OPENAI_API_KEY:-sk-dummy-for-import} "$PY" - "$tmp" <<'EOF'
import sys
sys.path.append(sys.argv[1])
import routellm.routers.similarity_weighted.utils as u
import routellm.routers.routers as r
assert callable(u.compute_elo_mle_with_tie) and hasattr(r, "SWRankingRouter")
EOF

rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$tmp" "$DEST"
trap - EXIT
echo "$want" > "$DEST/.installed"
echo "install_routellm: done ($DEST)"
