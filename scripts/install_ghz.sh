#!/usr/bin/env bash
# Installs ghz (the gRPC load generator users measure this service with), pinned, from the Go module
# proxy with `go install`, into benchmarks/ghz/.bin/ghz (gitignored). Idempotent: a binary that already
# reports the pinned version is kept. Needs Go >= 1.22 on PATH. GHZ_BIN=... prints nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

GHZ_VERSION=v0.121.0
BIN_DIR=benchmarks/ghz/.bin
BIN=$BIN_DIR/ghz

have=$("$BIN" --version 2>&1 || true)
if [ "$have" = "${GHZ_VERSION#v}" ] || [ "$have" = "$GHZ_VERSION" ]; then
  echo "install_ghz: $BIN is ghz $have (up to date)"
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "install_ghz: go not found on PATH (need Go >= 1.22 to build ghz $GHZ_VERSION)" >&2
  exit 1
fi
mkdir -p "$BIN_DIR"
echo "install_ghz: go install github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION -> $BIN (about 1-4 min cold)"
# -trimpath and a stripped binary: smaller (carried to GPU machines), same code.
GOBIN="$(pwd)/$BIN_DIR" GOFLAGS="${GOFLAGS:-} -trimpath" \
  go install -ldflags="-s -w -X main.version=${GHZ_VERSION#v}" "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
have=$("$BIN" --version 2>&1)
echo "install_ghz: done ($BIN, ghz $have)"
