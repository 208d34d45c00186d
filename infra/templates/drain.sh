#!/bin/sh
# Usage: drain.sh <queue manager container> <drain timeout seconds>
# Evening `pulumi destroy`: stop dispatch, let running jobs finish (bounded), then save everything
# participants see (jobs, saved workflows, settings, hidden history, ...) into user-file storage
# (the vault's bucket, or the local files volume) as snapshots/queue-<time>.json, then the sha256 file naming it, where
# the next `pulumi up` restores it from. Runs before the containers and the server are deleted; a
# failure stops the destroy, so nothing is lost silently.
set -eu
container="$1"
if ! docker inspect "$container" >/dev/null 2>&1; then
  echo "queue manager container $container is gone: nothing to drain" >&2
  exit 0
fi
# Exit code 1 means running jobs did not finish in time: they are in the snapshot and run again.
docker exec "$container" python -m services.queue_manager.cli drain --timeout "$2" || [ "$?" -eq 1 ]
docker exec "$container" python -m services.queue_manager.cli save
