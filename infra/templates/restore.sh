#!/bin/sh
# Usage: restore.sh <queue manager container>
# Morning `pulumi up`: load the last queue snapshot from the vault (there is none on the first day).
set -eu
docker exec "$1" python -m services.queue_manager.cli restore --if-exists
