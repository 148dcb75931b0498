#!/usr/bin/env bash
# Builds the Go client: generates the Go stubs of proto/lmroute/v1/*.proto into clients/go/gen/ and builds
# clients/go/bin/lmroute-go-client. Needs Go (>= the go line of clients/go/go.mod) and the Python venv
# (.venv, for grpc_tools.protoc). Modules come from the Go module proxy, pinned by go.mod/go.sum; the two
# protoc plugins are installed with `go install <pkg>@<version>` into clients/go/.bin.
# Idempotent: a second run reinstalls nothing, rewrites stubs only when they change, and `go build` is
# incremental; concurrent runs are serialised with a lock.
# Usage: scripts/build_go_client.sh [python]   (default: .venv/bin/python of the repository)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${1:-$root/.venv/bin/python}"
gomod="$root/clients/go"
module="lmroute/clients/go"
PROTOC_GEN_GO_VERSION="v1.36.12"        # google.golang.org/protobuf/cmd/protoc-gen-go
PROTOC_GEN_GO_GRPC_VERSION="v1.6.2"     # google.golang.org/grpc/cmd/protoc-gen-go-grpc

command -v go >/dev/null || { echo "build_go_client: 'go' is not on PATH (install Go from go.dev)" >&2; exit 1; }
[ -x "$py" ] || { echo "build_go_client: no Python at $py (run scripts/setup.sh first)" >&2; exit 1; }
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false" GOBIN="$gomod/.bin"

# Concurrent runs are serialised: step 2 deletes and re-copies gen/, which a second run (or its go build)
# would read half-written. The lock is in bin/ (ignored by git, never deleted here).
mkdir -p "$gomod/bin"
exec 9>"$gomod/bin/.build.lock"
flock 9

# 1. protoc plugins, pinned (reinstalled only when missing or at another version).
install_plugin() {  # name package version
  local bin="$GOBIN/$1" want="${3#v}"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qx "$1 v\?$want"; then return; fi
  echo "build_go_client: go install $2@$3"
  (cd "$gomod" && GOFLAGS= go install "$2@$3")
}
install_plugin protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
install_plugin protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"

# 2. Stubs. The .proto carries no go_package: the Go import path is given here (M option).
cd "$root"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
protos=(proto/lmroute/v1/*.proto)
maps=()
for p in "${protos[@]}"; do
  rel="${p#proto/}"
  maps+=("--go_opt=M$rel=$module/gen/lmroute/v1;lmroutev1" "--go-grpc_opt=M$rel=$module/gen/lmroute/v1;lmroutev1")
done
"$py" -m grpc_tools.protoc -Iproto \
  --plugin=protoc-gen-go="$GOBIN/protoc-gen-go" --plugin=protoc-gen-go-grpc="$GOBIN/protoc-gen-go-grpc" \
  --go_out="$tmp" --go_opt=paths=source_relative \
  --go-grpc_out="$tmp" --go-grpc_opt=paths=source_relative \
  "${maps[@]}" "${protos[@]}"
mkdir -p "$gomod/gen"
if ! diff -rq "$tmp/lmroute" "$gomod/gen/lmroute" >/dev/null 2>&1; then
  rm -rf "$gomod/gen/lmroute"
  cp -r "$tmp/lmroute" "$gomod/gen/lmroute"
  echo "build_go_client: generated $(cd "$gomod" && ls gen/lmroute/v1/*.go | tr '\n' ' ')"
fi

# 3. The binary.
cd "$gomod"
go build -o bin/lmroute-go-client ./cmd/lmroute-go-client
echo "build_go_client: built clients/go/bin/lmroute-go-client"
