"""Which ComfyUI the workshop runs: one setting for the GPU workers' ComfyUI and the participants' frontend.

The worker image clones ComfyUI at ``comfyui.ref``; the queue manager serves participants the
``comfyui-frontend-package`` and the ``comfyui-workflow-templates`` that ComfyUI release pins in its
``requirements.txt`` (its image build reads them there). The two must
agree (an older frontend misses the nodes' new widgets, a newer one calls routes the ComfyUI does
not have), so the frontend comes from the table below and a setting that contradicts it is a
config error naming the fix.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from infra.schema import Model

DEFAULT_REF = "v0.3.64"

# ComfyUI release tag -> the comfyui-frontend-package its requirements.txt pins at that tag.
# To add a release: read `requirements.txt` at the tag (github.com/Comfy-Org/ComfyUI) and add its line.
FRONTENDS: dict[str, str] = {
    "v0.3.55": "1.25.11",
    "v0.3.56": "1.25.11",
    "v0.3.57": "1.25.11",
    "v0.3.58": "1.25.11",
    "v0.3.59": "1.25.11",
    "v0.3.60": "1.26.13",
    "v0.3.61": "1.26.13",
    "v0.3.62": "1.26.13",
    "v0.3.63": "1.27.7",
    "v0.3.64": "1.27.10",
}


class ComfyUIConfig(Model):
    """``comfyui: {ref: v0.3.64}``; ``frontend`` may be given only to state what the ref pins."""

    ref: str = Field(default=DEFAULT_REF, pattern=r"^v\d+\.\d+\.\d+$", examples=["v0.3.64"])
    frontend: str | None = Field(default=None, pattern=r"^\d+\.\d+\.\d+$", examples=["1.27.10"])

    @model_validator(mode="after")
    def _known_and_agreeing(self) -> ComfyUIConfig:
        pinned = FRONTENDS.get(self.ref)
        if pinned is None:
            raise ValueError(
                f"ComfyUI {self.ref} is not in the table of known releases ({', '.join(FRONTENDS)}); "
                f"fix: add '{self.ref}': '<the comfyui-frontend-package version its requirements.txt "
                "pins>' to FRONTENDS in infra/comfyui.py, or set comfyui.ref to a known release"
            )
        if self.frontend is not None and self.frontend != pinned:
            raise ValueError(
                f"frontend {self.frontend} does not match ComfyUI {self.ref}, whose requirements.txt pins "
                f"comfyui-frontend-package=={pinned}; fix: set comfyui.frontend to {pinned} or leave it out"
            )
        return self

    @property
    def frontend_version(self) -> str:
        return FRONTENDS[self.ref]

    def worker_build_args(self) -> tuple[tuple[str, str], ...]:
        return (("COMFYUI_VERSION", self.ref),)

    def queue_manager_build_args(self) -> tuple[tuple[str, str], ...]:
        """The queue manager image installs the frontend and the workflow templates ComfyUI's
        requirements.txt pins at ``ref`` (the templates' version is read there at build time)."""
        return (("COMFYUI_VERSION", self.ref), ("COMFYUI_FRONTEND_VERSION", self.frontend_version))
