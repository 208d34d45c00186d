#!/bin/sh
# Usage: join-tailnet.sh <hostname> <tag[,tag...]>
# Join the tailnet with the single-use, pre-authorized key cloud-init wrote, then forget the key.
set -eu
key_file=/run/comfy/tailscale-authkey
tailscale up --auth-key="file:$key_file" --hostname="$1" --advertise-tags="$2"
rm -f "$key_file"
