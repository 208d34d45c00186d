#!/bin/sh
# What the participants' workspaces serve of ComfyUI: the frontend and the workflow templates that
# ComfyUI's own requirements.txt pins at the release the workers run (stack config comfyui.ref).
# Usage: comfyui_pins.sh <ComfyUI's requirements.txt> <frontend version infra/comfyui.py expects>
# Prints the two pins, one a line, for `pip install -r`; fails naming the fix when ComfyUI pins another
# frontend than the table says, or no templates package.
set -eu

requirements=$1
expected_frontend=$2

pin() {
    sed -n "s/^[[:space:]]*$1[[:space:]]*==[[:space:]]*\([0-9][0-9A-Za-z.]*\).*/\1/p" "$requirements" | head -n 1
}

frontend=$(pin comfyui-frontend-package)
templates=$(pin comfyui-workflow-templates)

if [ "$frontend" != "$expected_frontend" ]; then
    echo "ComfyUI's requirements.txt pins comfyui-frontend-package==${frontend:-<none>}, not" \
        "$expected_frontend: fix its line in FRONTENDS in infra/comfyui.py" >&2
    exit 1
fi
if [ -z "$templates" ]; then
    echo "ComfyUI's requirements.txt pins no comfyui-workflow-templates==<version>: the workspaces" \
        "serve its templates browser from that package; pick a ComfyUI release that pins it" >&2
    exit 1
fi
printf 'comfyui-frontend-package==%s\ncomfyui-workflow-templates==%s\n' "$frontend" "$templates"
