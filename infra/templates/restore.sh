#!/bin/sh
# Usage: restore.sh <queue manager container>
# Morning `pulumi up`: restore what the last evening's destroy saved, after checking its sha256.
# The first day has no snapshot; on any later day a missing or corrupt snapshot stops the `up`
# with a message that says how to go on, instead of opening the workshop on an empty queue.
set -eu
docker exec "$1" python -m services.queue_manager.cli load
