#!/usr/bin/env bash
# Build grpc-health-probe (the HEALTHCHECK and the tests' probe) from the Go module proxy into a directory.
# Usage: scripts/docker/install_health_probe.sh OUT_DIR     -> OUT_DIR/grpc-health-probe
# Needs Go (>= 1.24). The version is pinned here; go.sum checking is on (GOFLAGS must not relax it).
set -euo pipefail
PROBE_VERSION=v0.4.62
out=${1:?usage: install_health_probe.sh OUT_DIR}
command -v go >/dev/null || { echo "install_health_probe: no 'go' on PATH" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
GOBIN="$out" CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false" \
  go install "github.com/grpc-ecosystem/grpc-health-probe@$PROBE_VERSION"
go version -m "$out/grpc-health-probe" | awk '$1 == "mod" {print "install_health_probe: built", $2, $3}'
