#!/usr/bin/env bash
# Generates the Python protobuf/gRPC modules and mypy stubs next to every .proto file of proto/lmroute/v1/
# (router.proto: RouterService; admin.proto: AdminService), as lmroute.v1.<name>_pb2 / _pb2_grpc.
# Usage: scripts/gen_proto.sh [python]   (default: .venv/bin/python of the repository)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${1:-$root/.venv/bin/python}"
cd "$root"
export PATH="$(dirname "$py"):$PATH"   # protoc-gen-mypy lives next to the interpreter
"$py" -m grpc_tools.protoc -Iproto --python_out=proto --grpc_python_out=proto --mypy_out=proto \
  --mypy_grpc_out=proto proto/lmroute/v1/*.proto
echo "generated: $(ls proto/lmroute/v1/*_pb2*.py | tr '\n' ' ')"
