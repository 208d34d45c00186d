"""Images are rebuilt only when the files they are built from change: the tag is their hash."""

from __future__ import annotations

from pathlib import Path

from infra.images import QUEUE_MANAGER, ImageSource, context_hash, image_ref, worker_source


def make_repo(root: Path) -> Path:
    for relative, text in {
        "images/thing/Dockerfile": "FROM scratch\n",
        "services/thing/app.py": "print('v1')\n",
        "services/other/app.py": "print('other')\n",
        "pyproject.toml": "[project]\n",
    }.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


THING = ImageSource("thing", ("images/thing", "services/thing", "pyproject.toml"))


def test_the_hash_changes_with_an_input_file_and_not_with_anything_else(tmp_path: Path) -> None:
    before = context_hash(THING, make_repo(tmp_path / "a"))
    assert context_hash(THING, make_repo(tmp_path / "b")) == before, "same sources, same hash"
    elsewhere = make_repo(tmp_path / "c")
    (elsewhere / "services/other/app.py").write_text("print('changed elsewhere')\n")
    (elsewhere / "services/thing/__pycache__").mkdir()
    (elsewhere / "services/thing/__pycache__/app.cpython-311.pyc").write_bytes(b"\0")
    assert context_hash(THING, elsewhere) == before, "files the image does not copy do not count"
    changed = make_repo(tmp_path / "d")
    (changed / "services/thing/app.py").write_text("print('v2')\n")
    assert context_hash(THING, changed) != before


def test_a_renamed_file_changes_the_hash(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "a")
    moved = make_repo(tmp_path / "b")
    (moved / "services/thing/app.py").rename(moved / "services/thing/main.py")
    assert context_hash(THING, root) != context_hash(THING, moved)


def test_cpu_and_gpu_worker_images_are_distinct_and_tagged_by_content() -> None:
    cpu, gpu = worker_source("cpu"), worker_source("gpu")
    assert cpu.build_args == {"VARIANT": "cpu", "COMFYUI_VERSION": "v0.3.64"}
    assert image_ref(cpu).startswith("comfy-workshop/worker-cpu:")
    assert image_ref(cpu).split(":")[1] != image_ref(gpu).split(":")[1]
    assert QUEUE_MANAGER.dockerfile == "images/queue-manager/Dockerfile"
