#!/bin/sh
# Usage: restore.sh <queue manager container>
# Morning `pulumi up`: restore the queue snapshot the last evening's destroy saved (none on day one).
set -eu
container="$1"
docker exec -i "$container" python - <<'PY'
import asyncio, os, sys
from services.storage import open_storage

async def fetch() -> bytes | None:
    storage = open_storage(os.environ["QM_FILES_URL"])
    if not await storage.exists("snapshots/queue.json"):
        return None
    return b"".join([chunk async for chunk in storage.get("snapshots/queue.json")])

data = asyncio.run(fetch())
if data is None:
    print("no queue snapshot yet: starting with an empty queue")
    sys.exit(0)
open("/tmp/queue.json", "wb").write(data)
PY
if docker exec "$container" test -f /tmp/queue.json; then
  docker exec "$container" python -m services.queue_manager.cli restore --in /tmp/queue.json
  docker exec "$container" rm -f /tmp/queue.json
fi
