#!/bin/sh
# What the participants' workspaces serve of ComfyUI: the frontend and the workflow templates that
# ComfyUI's own requirements.txt pins at the release the workers run (stack config comfyui.ref).
# Usage: comfyui_pins.sh <ComfyUI's requirements.txt> <frontend version infra/comfyui.py expects>
# Prints the two pins, one a line, for `pip install -r`; fails naming the fix when the file pins no
# frontend (it is not a ComfyUI release's requirements.txt), when ComfyUI pins another frontend than
# the table says, or no templates package.
set -eu

requirements=$1
expected_frontend=$2

# The version a line pins with `==` to the package whose name is given as words ("comfyui frontend
# package"): matched as pip matches names (PEP 503: any case, runs of '-', '_' and '.' alike).
pin() {
    name=$(printf '%s' "$1" | sed 's/ /[-_.]\\{1,\\}/g')
    sed -n "s/^[[:space:]]*${name}[[:space:]]*==[[:space:]]*\([0-9][0-9A-Za-z.]*\).*/\1/Ip" "$requirements" \
        | head -n 1
}

if [ ! -r "$requirements" ]; then
    echo "cannot read ComfyUI's requirements.txt at $requirements" >&2
    exit 1
fi
frontend=$(pin "comfyui frontend package")
templates=$(pin "comfyui workflow templates")

if [ -z "$frontend" ]; then
    echo "ComfyUI's requirements.txt pins no comfyui-frontend-package==<version>: it is not the" \
        "requirements.txt of a ComfyUI release whose frontend the workspaces can serve; check that" \
        "comfyui.ref in the stack config names such a release (v0.3.55 or later) and that the build" \
        "could download its requirements.txt" >&2
    exit 1
fi
if [ "$frontend" != "$expected_frontend" ]; then
    echo "ComfyUI's requirements.txt pins comfyui-frontend-package==$frontend, not" \
        "$expected_frontend: fix its line in FRONTENDS in infra/comfyui.py" >&2
    exit 1
fi
if [ -z "$templates" ]; then
    echo "ComfyUI's requirements.txt pins no comfyui-workflow-templates==<version>: the workspaces" \
        "serve its templates browser from that package; pick a ComfyUI release that pins it" >&2
    exit 1
fi
printf 'comfyui-frontend-package==%s\ncomfyui-workflow-templates==%s\n' "$frontend" "$templates"
