"""Test doubles for servers that cannot run on the development machines (ComfyUI)."""
