#!/bin/sh
# Usage: wait-ready.sh
# Block until cloud-init has finished (Docker and Tailscale installed) and Docker answers, then
# print the VPS's tailnet address (the worker API is published on it, and only on it) and its full
# MagicDNS name (what workers in containers use: they may not have the tailnet's search domain).
# `cloud-init status --wait` exits 0 when done, 2 when done with recoverable errors (warnings, e.g.
# a deprecated key on Ubuntu 24.04: the host is usable) and 1 on a critical failure.
set -eu
code=0
cloud-init status --wait >/dev/null || code=$?
case "$code" in
  0) ;;
  2) echo "cloud-init finished with warnings on the VPS (see /var/log/cloud-init.log); going on" >&2 ;;
  *)
    echo "cloud-init failed on the VPS (exit $code): read /var/log/cloud-init-output.log there" >&2
    exit 1
    ;;
esac
docker info >/dev/null
tailscale ip -4 | head -n 1
# Self comes before the peers in `tailscale status --json`: the first DNSName is this node's.
tailscale status --json | sed -n 's/.*"DNSName": *"\([^"]*\)".*/\1/p' | head -n 1 | sed 's/\.$//'
