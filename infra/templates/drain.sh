#!/bin/sh
# Usage: drain.sh <queue manager container> <drain timeout seconds>
# Evening `pulumi destroy`: stop dispatch, let running jobs finish (bounded), snapshot the queue into
# the vault and flush user files not yet there. Runs before the containers and the server go.
set -eu
container="$1"
if ! docker inspect "$container" >/dev/null 2>&1; then
  echo "queue manager container $container is gone: nothing to drain" >&2
  exit 0
fi
docker exec "$container" python -m services.queue_manager.cli drain --timeout "$2"
docker exec "$container" python -m services.queue_manager.cli snapshot
docker exec "$container" python -m services.queue_manager.cli flush-files
