#!/usr/bin/env bash
# The image's runtime stage: the shared libraries the lmroute wheel's compiled core links against beyond
# the base image (libgomp.so.1: OpenMP). tests/integration/test_deploy.py checks the core's NEEDED list
# against this script. Debian's stable archive pins the version; the base image tag pins the release.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends libgomp1
rm -rf /var/lib/apt/lists/*
