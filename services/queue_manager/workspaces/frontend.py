"""The stock ComfyUI web frontend (PyPI ``comfyui-frontend-package``), served at ``/w/<user>/``.

The frontend derives every URL from the page location (``api_base`` is the page path without its
last segment), so ``/w/alice/`` makes it call ``/w/alice/api/...`` and ``/w/alice/ws``: the
per-user API lives under the same prefix and no path of the queue manager's own ``/api`` is shadowed.
Static assets are the public package and need no login; only the page itself and the API do.
"""

from __future__ import annotations

import mimetypes
import re
from functools import cache
from pathlib import Path

import comfyui_frontend_package
from fastapi import HTTPException
from fastapi.responses import FileResponse, Response

INDEX_HEADERS = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"}
# Built files carry a content hash in their name: a browser never needs to ask for them twice.
HASHED_HEADERS = {"Cache-Control": "public, max-age=31536000, immutable"}
# The rest (vendored libraries of the import map, fonts) change only with the package version.
ASSET_HEADERS = {"Cache-Control": "public, max-age=86400"}
HASHED_NAME = re.compile(r"-[A-Za-z0-9_-]{8}\.(js|css|svg|woff2?|ttf|eot|json|png)$")

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/json", ".map")


def package_folder(module_file: str, folder: str, marker: str, what: str) -> Path:
    """``folder`` of the installed package whose ``__init__`` is ``module_file``, checked to hold
    ``marker``; a missing one names ``what`` and how to install it."""
    root = Path(module_file).resolve().parent / folder
    if not (root / marker).is_file():
        raise RuntimeError(
            f"{what} is missing at {root}: install the queue-manager dependency group "
            "(`uv sync --group queue-manager`)"
        )
    return root


@cache
def static_root() -> Path:
    """The folder of the installed frontend package's built files."""
    return package_folder(comfyui_frontend_package.__file__, "static", "index.html", "the ComfyUI frontend")


def frontend_version() -> str:
    """The installed frontend's version (shown in ``/system_stats``)."""
    from importlib.metadata import version

    return version("comfyui-frontend-package")


def index_response() -> FileResponse:
    """The workspace page; never cached, so a new frontend version is picked up on reload."""
    return FileResponse(static_root() / "index.html", headers=INDEX_HEADERS, media_type="text/html")


def package_file(root: Path, path: str, what: str) -> Path:
    """The file ``path`` names inside a package's folder ``root``; 404 naming ``what`` for anything
    else (a missing file, a folder, a ``..`` or link leading out of ``root``)."""
    try:
        target = (root / path).resolve()
        found = target.is_relative_to(root) and target.is_file()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL
        found = False
    if not found:
        raise HTTPException(404, f"no {what} {path[:200]!r}")
    return target


def asset_response(path: str) -> Response:
    """One static file of the frontend, refusing anything outside the package folder."""
    target = package_file(static_root(), path, "frontend file")
    hashed = path.startswith("assets/") and HASHED_NAME.search(path) is not None
    return FileResponse(target, headers=HASHED_HEADERS if hashed else ASSET_HEADERS)
