"""The repository stands on its own: nothing in it points outside the checkout, the README's layout
names folders that exist, and the tests' shared helpers live where their users can import them."""

from __future__ import annotations

import ast
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
    named = set(re.findall(r"`((?:infra|services|images|tests|bench|devkit|docs)(?:/[a-z_]+)*)/`", layout))
    for top in ("tests", "devkit"):
        row = layout.split(f"| `{top}/` |")[1].split("\n")[0]
        named |= {f"{top}/{sub}" for sub in re.findall(r"`([a-z_]+)/` \(", row)}
    missing = sorted(p for p in named if not (ROOT / p).is_dir())
    assert len(named) > 10 and missing == [], f"the README's layout names missing folders: {missing}"


def python_files(*folders: str) -> list[Path]:
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


def test_benchmarks_and_the_dev_loop_never_import_the_tests() -> None:
    """What bench/ and `make dev` share with the tests lives in devkit/, so neither needs tests/."""
    importing = re.compile(r"^\s*(?:from|import) tests\b|\"tests\.", re.M)
    offenders = [
        str(p.relative_to(ROOT)) for p in python_files("bench", "devkit") if importing.search(p.read_text())
    ]
    assert offenders == [], f"move what these import from tests/ into devkit/: {offenders}"


def test_test_modules_import_helpers_from_support_not_from_a_conftest() -> None:
    """A conftest.py holds fixtures; helpers several modules share live in tests/support/."""
    importing = re.compile(r"^\s*from [\w.]*conftest import", re.M)
    offenders = [
        str(p.relative_to(ROOT))
        for p in python_files("tests", "bench", "devkit")
        if importing.search(p.read_text())
    ]
    assert offenders == [], f"import these from tests/support/ instead of a conftest: {offenders}"


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (``from .x import y`` read against its own package),
    with the names ``from pkg import name`` takes (a name may be a module)."""
    package = path.relative_to(ROOT).parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            absolute = ".".join([*base, *([node.module] if node.module else [])])
            found |= {absolute, *(f"{absolute}.{alias.name}" for alias in node.names)}
    return found


def test_no_test_module_imports_another_test_module() -> None:
    """Helpers two test modules share live in tests/support/ (or devkit/), so each test module can be
    read, moved or deleted on its own."""
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in tracked_text_files()
        if path.suffix == ".py" and path.relative_to(ROOT).parts[0] in ("tests", "bench", "devkit")
        for module in sorted(imported_modules(path))
        if module.rsplit(".", 1)[-1].startswith("test_")
    ]
    assert offenders == [], f"move what these take into tests/support/: {offenders}"


# The policies both sides of a deployment must agree on; infra imports nothing else of the services.
SHARED_POLICIES = (
    "services.queue_manager.durability",
    "services.queue_manager.settings",
    "services.worker.manifest",
)


def crossings(folder: str, banned: str, allowed: tuple[str, ...] = ()) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in python_files(folder)
        for module in sorted(imported_modules(path))
        if (module == banned or module.startswith(f"{banned}.")) and not module.startswith(allowed)
    ]


def test_the_layers_import_only_downwards() -> None:
    """The services never import the Pulumi program, the worker and the queue manager never import
    each other, and the program takes from the services only the policies both must agree on
    (docs/architecture.md, "Layers")."""
    offenders = [
        *crossings("services", "infra"),
        *crossings("services/worker", "services.queue_manager"),
        *crossings("services/queue_manager", "services.worker"),
        *crossings("infra", "services", SHARED_POLICIES),
    ]
    assert offenders == [], f"these cross a layer: {offenders}"
