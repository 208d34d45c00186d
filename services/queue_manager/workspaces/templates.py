"""ComfyUI's workflow templates (PyPI ``comfyui-workflow-templates``), at ``/w/<user>/templates/``.

The templates browser (the menu's Browse Templates) reads ``templates/index.json`` (and
``index.<locale>.json``), then each template's ``<name>.json`` and its thumbnails ``<name>-1.webp``
from the page's folder. ComfyUI 0.3.64 serves the package's ``templates`` folder as static files at
``/templates`` (not under ``/api``), pinned to 0.1.95 in its requirements.txt; so does a workspace,
read-only and to its owner only, like the rest of her workspace. The queue manager image installs the
version the configured ComfyUI release pins (``images/queue-manager/comfyui_pins.sh``).
"""

from __future__ import annotations

import mimetypes
from functools import cache
from importlib.metadata import version
from pathlib import Path

import comfyui_workflow_templates
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import NotModifiedResponse, StaticFiles

from services.queue_manager.workspaces.deps import Participant
from services.queue_manager.workspaces.frontend import package_file, package_folder

PACKAGE = "comfyui-workflow-templates"
# The index names the templates: asked again on each visit (answered 304 while the package is the same).
INDEX_HEADERS = {"Cache-Control": "private, no-cache"}
# A template and its thumbnails change only with the package version; behind a login, so private.
FILE_HEADERS = {"Cache-Control": "private, max-age=86400"}

mimetypes.add_type("image/webp", ".webp")  # as ComfyUI adds it: not every system's table knows it

router = APIRouter()
REVALIDATION = StaticFiles(directory=None, check_dir=False)
"""Only for its ``If-None-Match`` / ``If-Modified-Since`` check: a file the browser holds gets 304."""


@cache
def templates_root() -> Path:
    """The installed package's ``templates`` folder."""
    what = "the ComfyUI workflow templates package"
    return package_folder(comfyui_workflow_templates.__file__, "templates", "index.json", what)


def templates_version() -> str:
    """The installed templates' version (``/system_stats`` names it, as ComfyUI does)."""
    return version(PACKAGE)


@router.get("/templates/{path:path}")
async def template_file(path: str, request: Request, user: Participant) -> Response:
    """One file of the templates folder; 404 for anything else, a path leading out of it among them."""
    target = package_file(templates_root(), path, "workflow template file")
    index = target.parent == templates_root() and target.name.startswith("index")
    headers = INDEX_HEADERS if index else FILE_HEADERS
    found = FileResponse(target, headers=headers, stat_result=target.stat())  # etag set now, for the check
    if REVALIDATION.is_not_modified(found.headers, request.headers):
        return NotModifiedResponse(found.headers)
    return found
