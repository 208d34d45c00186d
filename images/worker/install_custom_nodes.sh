#!/usr/bin/env bash
# Clone each "<git url>@<ref>" line of $1 into $2/<repo name> at that ref and install its requirements.
set -euo pipefail

list="$1"
target="$2"

while IFS= read -r line || [ -n "$line" ]; do
    line="${line%%#*}"
    line="$(echo "$line" | xargs)"
    [ -z "$line" ] && continue
    url="${line%@*}"
    ref="${line##*@}"
    if [ "$url" = "$line" ] || [ -z "$ref" ]; then
        echo "custom node '$line' has no @<commit or tag>: pin it in images/worker/custom_nodes.txt" >&2
        exit 1
    fi
    name="$(basename "$url" .git)"
    git clone --quiet "$url" "$target/$name"
    git -C "$target/$name" checkout --quiet "$ref"
    if [ -f "$target/$name/requirements.txt" ]; then
        uv pip install --no-cache -r "$target/$name/requirements.txt"
    fi
done < "$list"
