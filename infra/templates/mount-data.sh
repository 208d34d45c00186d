#!/bin/sh
# Usage: mount-data.sh <hetzner volume id> <mount point>
# Mount the data volume before Docker starts, so Docker's data (Redis's AOF, images) lives on it.
# The volume is attached right after the server boots: wait for its device, at most five minutes.
set -eu
device="/dev/disk/by-id/scsi-0HC_Volume_$1"
mount_point="$2"
tries=0
while [ ! -b "$device" ]; do
  tries=$((tries + 1))
  if [ "$tries" -gt 300 ]; then
    echo "data volume $device did not appear within 300 s" >&2
    exit 1
  fi
  sleep 1
done
mkdir -p "$mount_point"
if ! grep -q "$device" /etc/fstab; then
  echo "$device $mount_point ext4 discard,nofail,defaults 0 2" >>/etc/fstab
fi
mountpoint -q "$mount_point" || mount "$mount_point"
