#!/usr/bin/env bash
# Validate the Kubernetes manifests of deploy/k8s offline: `go test` of the Go module deploy/k8s/validate,
# which decodes every manifest strictly into the typed Kubernetes API objects (k8s.io/api, pinned with
# go.sum) and checks the router sidecar's rules; broken copies must fail. Extra arguments go to go test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/validate"
command -v go >/dev/null || { echo "validate: no 'go' on PATH" >&2; exit 2; }
# go.sum is committed: never let go rewrite it (-mod=readonly), whatever GOFLAGS the caller had.
GOFLAGS="-mod=readonly -buildvcs=false" exec go test "$@" ./...
