#!/usr/bin/env bash
# The image's runtime stage: the unprivileged user the server runs as (fixed uid/gid, no login shell,
# no home directory contents). Usage: scripts/docker/add_user.sh NAME UID
set -euo pipefail
name=${1:?usage: add_user.sh NAME UID}
uid=${2:?usage: add_user.sh NAME UID}
groupadd --system --gid "$uid" "$name"
useradd --system --uid "$uid" --gid "$uid" --no-create-home --home-dir /nonexistent \
  --shell /usr/sbin/nologin "$name"
echo "add_user: $(id "$name")"
