"""Test doubles for servers that cannot run on the development machines.

``devkit.doubles.comfyui.ComfyUIDouble``: a ComfyUI v0.3.64 stand-in (HTTP + WebSocket on loopback)
that follows ``docs/comfyui-protocol.md``; in-process (``with ComfyUIDouble(tmp_path) as comfy``) or as
``python -m devkit.doubles.comfyui`` with ComfyUI's own flags. See that module's docstring.
"""
