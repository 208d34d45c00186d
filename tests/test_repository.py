"""The repository stands on its own: nothing in it points outside the checkout, and the README's
layout names folders that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Paths a clone does not have: the folder beside the checkout, and absolute machine paths.
OUTSIDE = re.compile(r"\.\./shared/|/work/(shared|briefs|realcomfy|\.mirror)|DESIGN\.md")


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / n for n in names.stdout.splitlines() if n != "uv.lock" and (ROOT / n).is_file()]


def test_no_file_names_a_path_outside_the_repository() -> None:
    offenders = []
    for path in tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        lines = enumerate(text.splitlines(), 1)
        offenders += [f"{path.relative_to(ROOT)}:{n}" for n, line in lines if OUTSIDE.search(line)]
    assert offenders == [], "write it into docs/ in the repository's own words: " + ", ".join(offenders)


def test_the_readme_layout_names_folders_that_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("Repository layout") :].split("\n\n", 2)[1]
    named = set(re.findall(r"`((?:infra|services|images|tests|bench|docs)(?:/[a-z_]+)*)/`", layout))
    tests_row = layout.split("| `tests/` |")[1].split("\n")[0]
    named |= {f"tests/{sub}" for sub in re.findall(r"`([a-z_]+)/` \(", tests_row)}
    missing = sorted(p for p in named if not (ROOT / p).is_dir())
    assert len(named) > 10 and missing == [], f"the README's layout names missing folders: {missing}"
