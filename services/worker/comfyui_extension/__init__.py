"""A custom-nodes folder the worker loads into the ComfyUI it starts: the workshop's own extension
(``comfy_workshop_checks``). It adds no node."""

NODE_CLASS_MAPPINGS: dict[str, object] = {}  # ComfyUI imports this file too: a module without it "failed"
