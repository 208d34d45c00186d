#!/bin/sh
# Usage: wait-ready.sh
# Block until cloud-init has finished (Docker and Tailscale installed) and Docker answers, then
# print the VPS's tailnet address (the worker API is published on it, and only on it).
set -eu
if ! cloud-init status --wait >/dev/null; then
  echo "cloud-init failed on the VPS: read /var/log/cloud-init-output.log there" >&2
  exit 1
fi
docker info >/dev/null
tailscale ip -4 | head -n 1
