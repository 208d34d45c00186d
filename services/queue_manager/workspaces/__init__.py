"""Participant workspaces: the stock ComfyUI frontend per participant on one shared, per-user API.

Decision 3 in docs/decisions.md: instead of one ComfyUI server per participant, the queue manager serves
``comfyui-frontend-package`` (pinned to 1.27.10, the version ComfyUI v0.3.64's requirements.txt
names) at ``/w/<user>/`` and implements the ComfyUI server routes that frontend calls, per user.

What the frontend 1.27.10 requests (from its bundled sources, ``src/scripts/api.ts`` and callers;
``api_base`` is the page path's folder, here ``/w/<user>``; ``fetchApi(r)`` is ``api_base + "/api" + r``):

- ``routes_user``: ``GET/POST /users`` (single-user mode, so ComfyUI shows no user picker);
  ``GET/POST /settings``, ``GET/POST /settings/{id}`` (``settings``: per user, Redis);
  ``GET /userdata?dir=&recurse=&split=&full_info=``, ``GET/POST/DELETE /userdata/{file}``,
  ``POST /userdata/{file}/move/{dest}`` (``userdata``: per user, Redis), ``api/userdata/user.css``.
- ``routes_info``: ``GET /object_info``, ``/object_info/{class}`` (the workers' catalogue, upload
  lists per user); ``GET /extensions`` then ``import(api_base + ext)`` for each non-core one (ours,
  ``notice.js``, tells the participant when no GPU is up, from ``GET /workshop``, and adds a
  "My place in line" sidebar tab; then the workers');
  ``/system_stats``, ``/features``, ``/embeddings``, ``/models``, ``/experiment/models[/{folder}]``,
  ``/view_metadata/{folder}``, ``/i18n``, ``/workflow_templates`` and
  ``/workflow_templates/{pack}/{name}.json`` (the custom nodes' example workflows the workers published),
  ``api_base/internal/folder_paths``, ``/internal/logs[/raw]``, ``PATCH /internal/logs/subscribe``.
- ``routes_jobs``: ``GET/POST /prompt``, ``GET/POST /queue``, ``GET/POST /history``,
  ``GET /history/{id}``, ``POST /interrupt``, ``POST /free``, on the shared queue.
- ``routes_files``: ``POST /upload/image``, ``POST /upload/mask``, ``GET /view?filename=&subfolder=&type=``
  (``&channel=rgb|a``, ``&preview=webp;90``: ``images``) on user-file storage.
- ``socket``: ``api_base/ws?clientId=``.
- ``templates``: ``api_base/templates/index.json`` (and ``index.<locale>.json``), each template's
  ``<name>.json`` and thumbnails, from the ``comfyui-workflow-templates`` package ComfyUI pins.
- ``pages``: ``api_base/`` (the page), ``./assets/*`` and the other static files, ``user.css``;
  ``/assets/*`` at the site root too (the progress favicon and default avatar are named from there),
  and ``/favicon.ico`` (the tab icon browsers ask the site root for).

Not served (404, the frontend copes): ``/viewvideo``, ``/api/v2/...`` (ComfyUI-Manager), ``/docs/...``
(embedded node docs package), a custom pack's template thumbnail
(``/workflow_templates/{pack}/{name}.jpg``: the workers publish the workflows only; the templates
browser shows the card without its picture).

Every route below (the socket included) answers at ``/w/<user>/<route>`` and at
``/w/<user>/api/<route>``, as ComfyUI answers at ``/<route>`` and ``/api/<route>``: a ComfyUI script
given ``/w/<user>`` as its server works as it does against ComfyUI.

WebSocket messages the frontend handles: text ``status`` (``{status: {exec_info: {queue_remaining}},
sid}``), ``executing``, ``execution_start``, ``execution_error``, ``execution_interrupted``,
``execution_cached``, ``execution_success``, ``progress``, ``progress_state``, ``executed``,
``feature_flags`` (reply to its own first message), ``logs``, ``b_preview``; binary frames type 1
(preview image: 4-byte format 1 JPEG / 2 PNG + bytes), 3 (progress text), 4 (preview with metadata).
"""

from __future__ import annotations

import re

from fastapi import APIRouter

from services.queue_manager.workspaces import (
    pages,
    routes_files,
    routes_info,
    routes_jobs,
    routes_user,
    socket,
    templates,
)

PREFIX = "/w/{user}"
PREFIXES = (PREFIX, PREFIX + "/api")
UPLOAD_PATH = re.compile(rf"/w/[^/]+(?:/api)?{re.escape(routes_files.UPLOADS)}")
"""The paths of every upload route, for ``BodyLimit``'s larger limit (``QM_MAX_UPLOAD_BYTES``)."""
WORKSPACE_PATH = re.compile(r"/w/(?P<user>[^/]+)/")
"""Every workspace route: only its owner may send it a body (``CallersFirst`` checks before reading)."""

router = APIRouter(tags=["workspaces"])
router.include_router(pages.pages)
for part in (routes_user.router, routes_jobs.router, routes_files.router, routes_info.router, socket.router):
    for prefix in PREFIXES:  # as ComfyUI: every route at /<route> and /api/<route>
        router.include_router(part, prefix=prefix, include_in_schema=False)
# ComfyUI serves its templates folder at /templates only (static files get no /api twin); before the
# frontend's own files, which would answer that path otherwise.
router.include_router(templates.router, prefix=PREFIX, include_in_schema=False)
router.include_router(pages.assets, prefix=PREFIX, include_in_schema=False)
router.include_router(pages.root_assets, include_in_schema=False)

__all__ = ["UPLOAD_PATH", "WORKSPACE_PATH", "router"]
