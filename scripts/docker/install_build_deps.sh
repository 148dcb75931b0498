#!/usr/bin/env bash
# The image's build stage: the Debian packages needed to build lmroute on top of python:3.11-slim-bookworm:
# a C++17 compiler with OpenMP for the compiled core (CMake, Ninja and nanobind come pinned from
# requirements/lock.txt through scripts/setup.sh). Debian's stable archive pins the versions of a
# release; the base image tag pins the release.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends build-essential ca-certificates
rm -rf /var/lib/apt/lists/*
echo "install_build_deps: $(g++ --version | head -1)"
