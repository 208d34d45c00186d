"""The floor under ``ready_ms_p50``: the same workspace page with no server work at all.

nginx serves the frontend package and, as static files, the very answers the queue manager gave to
the GET requests the page makes while it starts (``canned``). Whatever time the page still needs is
the stock frontend's own start-up on this machine, which no server can take away; the difference to
``ready_ms_p50`` is what the queue manager adds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx

from devkit.nginx import running_nginx
from devkit.servers import free_port, http_get, wait_until
from services.queue_manager.workspaces.frontend import static_root

# What the page GETs from its API while it starts (query strings do not change these answers).
STARTUP_GETS = (
    "system_stats", "users", "i18n", "settings", "extensions", "object_info", "queue", "history",
    "workshop", "features", "embeddings", "userdata/user.css", "experiment/models",
)  # fmt: skip
OWN_EXTENSION = "extensions/comfy-workshop/notice.js"

SITE = """
server {{
    listen 127.0.0.1:{port};
    include /etc/nginx/mime.types;
    location = /w/{user}/ {{ root {static}; try_files /index.html =404; add_header Cache-Control no-cache; }}
    location ~ ^/w/{user}/api/userdata/?$ {{ return 404; }}
    location /w/{user}/api/ {{ alias {canned}/api/; default_type application/json; }}
    location /w/{user}/extensions/ {{ alias {canned}/extensions/; default_type text/javascript; }}
    location ~ ^/w/{user}/(.+\\.mjs)$ {{
        alias {static}/$1;
        types {{}}
        default_type text/javascript;
        add_header Cache-Control "public, max-age=86400";
    }}
    location /w/{user}/ {{ alias {static}/; add_header Cache-Control "public, max-age=86400"; }}
}}
"""


def can_answers(url: str, user: str, cookie: str, root: Path) -> None:
    """Keep the queue manager's answers to the page's start-up requests as files under ``root``."""
    with httpx.Client(base_url=f"{url}/w/{user}", cookies={"qm_session": cookie}, timeout=30) as client:
        for path in (*(f"api/{get}" for get in STARTUP_GETS), OWN_EXTENSION):
            reply = client.get(f"/{path}")
            reply.raise_for_status()
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(reply.content)


@contextlib.contextmanager
def static_workspace(user: str, canned: Path, prefix: Path) -> Iterator[str]:
    """nginx serving ``/w/<user>/`` from the package and ``canned``; yields its base URL."""
    os.chmod(canned.parent, 0o755)  # nginx's workers run as nobody: a scratch folder is 0700
    for folder, _, files in os.walk(canned):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder, name), 0o644)
    port = free_port()
    site = SITE.format(port=port, user=user, static=static_root(), canned=canned)
    with running_nginx(prefix, site):
        url = f"http://127.0.0.1:{port}"
        page = f"{url}/w/{user}/"
        wait_until(lambda: http_get(page).status_code == 200, timeout=10, what="nginx to serve the page")
        yield url
