"""Models sync: ``python -m bench.models [--files 20] [--mb 2048]`` prints one JSON object.

A generated manifest (``--files`` files, ``--mb`` MiB in all, cheap pseudo-random bytes) sits in a
``file://`` bucket. One worker (``python -m services.worker sync-models``, its own process) starts
filling a shared volume and is killed (SIGKILL) in the middle of a file; then two workers start
together on the same volume, as two hosts of one pool would. They wait out the dead sync's lock,
one of them resumes the cut file and fetches the rest, the other waits and then finds every file
verified.

* ``bytes``, ``seconds``, ``mb_per_s``: the manifest's size; from the first worker's start to both
  workers done (the kill and the lock take-over included); their ratio.
* ``hash_mb_per_s``: sha256 over files read back from the volume: how fast a worker checks a
  read-only volume whose files carry no verified mark.
* ``resume_ok``: the cut file went on from where it stopped (a ranged read from a byte > 0), and
  every file on the volume has the manifest's sha256.
* ``downloads_per_file``: the most times any file was downloaded from its start (1: once).

Everything lives in a temporary directory (``--dir``), removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

STALE_SECONDS = 2.0
DOWNLOAD = re.compile(r"downloading model (\S+) from byte (\d+) of (\d+)")
BLOCK = 1024 * 1024


def generate(bucket: Path, files: int, total_mb: int) -> list[dict[str, Any]]:
    """``files`` files of ``total_mb`` MiB in all: a random block, stamped per file and MiB so no
    two MiB are alike (cheap to make, impossible to mistake one file for another)."""
    base = os.urandom(BLOCK)
    per_file = max(1, total_mb // files)
    models = []
    for index in range(files):
        path = f"checkpoints/bench-{index:02d}.safetensors"
        digest = hashlib.sha256()
        target = bucket / "weights" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as handle:
            for mib in range(per_file):
                block = f"{index:08d}:{mib:08d}".encode() + base[17:]
                handle.write(block)
                digest.update(block)
        models.append(
            {
                "path": path,
                "size": per_file * BLOCK,
                "sha256": digest.hexdigest(),
                "source": f"weights/{path}",
            }
        )
    return models


def worker(root: Path, name: str, manifest: Path, bucket: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "WORKER_ID": name,
        "WORKER_MODELS_MANIFEST": str(manifest),
        "WORKER_MODELS_URL": bucket.as_uri(),
        "WORKER_SHARED_MODELS_DIR": str(root / "volume"),
        "WORKER_MODELS_DIR": str(root / f"{name}-disk"),
        "WORKER_MODELS_LOCK_STALE_SECONDS": str(STALE_SECONDS),
    }
    env.pop("WORKER_TOKEN", None)
    log = (root / f"{name}.log").open("wb")
    command = [sys.executable, "-m", "services.worker", "sync-models"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)


def kill_mid_file(process: subprocess.Popen[bytes], volume: Path, deadline_s: float = 120.0) -> bool:
    """SIGKILL the worker once a file is partly downloaded; False if it finished first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and process.poll() is None:
        if any(part.stat().st_size > 0 for part in volume.rglob("*.part")):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.001)  # polling the file system: the worker is another process
    return False


def downloads(root: Path, names: list[str]) -> list[tuple[str, int]]:
    found = []
    for name in names:
        found += [(m[1], int(m[2])) for m in DOWNLOAD.finditer((root / f"{name}.log").read_text())]
    return found


def hash_rate(volume: Path, models: list[dict[str, Any]]) -> tuple[float, bool]:
    """MiB/s of sha256 over the volume's files, and whether each matches the manifest."""
    started, done, all_match = time.perf_counter(), 0, True
    for model in models:
        digest = hashlib.sha256()
        with (volume / model["path"]).open("rb") as handle:
            while block := handle.read(8 * BLOCK):
                digest.update(block)
                done += len(block)
        all_match &= digest.hexdigest() == model["sha256"]
    return done / BLOCK / (time.perf_counter() - started), all_match


def run(files: int, total_mb: int, directory: Path | None) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bench-models-", dir=directory))
    try:
        bucket, volume = root / "bucket", root / "volume"
        volume.mkdir()
        models = generate(bucket, files, total_mb)
        manifest = root / "models.json"
        manifest.write_text(json.dumps({"models": models}))
        started = time.perf_counter()
        cut = kill_mid_file(worker(root, "killed", manifest, bucket), volume)
        pair = [worker(root, name, manifest, bucket) for name in ("host-a", "host-b")]
        codes = [process.wait(timeout=1800) for process in pair]
        seconds = time.perf_counter() - started
        if codes != [0, 0]:
            logs = {name: (root / f"{name}.log").read_text()[-2000:] for name in ("host-a", "host-b")}
            raise SystemExit(f"a worker's sync failed (exit codes {codes}): {logs}")
        before, after = downloads(root, ["killed"]), downloads(root, ["host-a", "host-b"])
        fresh = Counter(path for path, start in before + after if start == 0)
        resumed = [(path, start) for path, start in after if start > 0]
        rate, intact = hash_rate(volume, models)
        size = sum(model["size"] for model in models)
        return {
            "bytes": size,
            "seconds": round(seconds, 2),
            "mb_per_s": round(size / BLOCK / seconds, 1),
            "hash_mb_per_s": round(rate, 1),
            "resume_ok": cut and intact and len(resumed) == 1 and before[-1][0] == resumed[0][0],
            "downloads_per_file": max(fresh.values(), default=0),
            "files": len(models),
            "files_downloaded": len(fresh),
            "resumed_from_byte": resumed[0][1] if resumed else None,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--mb", type=int, default=2048, help="MiB in all")
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary bucket and volume go")
    args = parser.parse_args()
    print(json.dumps(run(args.files, args.mb, args.dir)))


if __name__ == "__main__":
    main()
