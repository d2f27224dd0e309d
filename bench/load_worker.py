"""Time ``hwlab.load`` of another revision of hwlab, in turns with ``bench_load.py``.

``bench_load.py --against REV`` exports REV of this repository (``git archive``) into a temporary
folder laid out as the installed package (``export_revision``: the ``package-dir`` table of that
revision's ``pyproject.toml``) and starts this file as a second process with that folder first on
``PYTHONPATH``. The process then answers one command per line on stdin, one JSON line on stdout:

- ``save NPY FORMAT GROUP PATH``: quantize the float32 weights in ``NPY`` with that revision's
  ``hwlab.quantize`` and save them to ``PATH`` (its own file version), then load it once (page
  cache, numba kernels). Answers ``{"bytes": file size}``.
- ``time PATH COLD COUNT``: ``COUNT`` timed calls of ``hwlab.load(PATH)``, one after the other;
  ``COLD`` is 1 to drop the file's pages from the page cache before each. Answers
  ``{"wall": [s, ...], "cpu": [s, ...]}`` (CPU: every thread of this process).

Only ``hwlab.quantize``, ``QuantizedTensor.save`` and ``hwlab.load`` are used: the API every
revision since the formats layer has. This file imports nothing of hwlab's at module level, so
``bench_load.py`` can import its timing helpers.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib


def drop_from_page_cache(path: str) -> None:
    """Evict ``path``'s pages from the page cache (written back first), so its next read is cold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn, path: str, cold: bool) -> tuple[float, float]:
    """Wall and CPU seconds (every thread of this process) of ``fn(path)``."""
    if cold:
        drop_from_page_cache(path)
    start, cpu = time.perf_counter(), time.process_time()
    fn(path)
    return time.perf_counter() - start, time.process_time() - cpu


def export_revision(repo: str, rev: str, dest: str) -> str:
    """Lay out ``rev`` of the git repository ``repo`` as an importable ``hwlab`` under ``dest``.

    Returns the folder to put first on ``PYTHONPATH``. Raises ``ValueError`` naming the revision
    when git does not know it or its ``pyproject.toml`` does not say where the packages are.
    """
    source, packages = os.path.join(dest, "source"), os.path.join(dest, "packages")
    archive = subprocess.run(["git", "-C", repo, "archive", "--format=tar", rev], capture_output=True)
    if archive.returncode:
        raise ValueError(f"--against {rev}: git cannot export it ({archive.stderr.decode().strip()})")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(source, filter="data")
    try:
        with open(os.path.join(source, "pyproject.toml"), "rb") as fh:
            package_dirs = tomllib.load(fh)["tool"]["setuptools"]["package-dir"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--against {rev}: no [tool.setuptools] package-dir in its pyproject.toml ({exc!r})") from None
    for package, folder in sorted(package_dirs.items()):  # "hwlab" before "hwlab.formats"
        shutil.copytree(os.path.join(source, folder), os.path.join(packages, *package.split(".")),
                        dirs_exist_ok=True)
    return packages


def serve(packages: str) -> None:
    """Answer ``save`` and ``time`` commands (module docstring) until stdin closes."""
    import numpy as np

    import hwlab

    if not os.path.abspath(hwlab.__file__).startswith(os.path.abspath(packages) + os.sep):
        raise SystemExit(f"load_worker: imported hwlab from {hwlab.__file__}, not from {packages}")
    for line in sys.stdin:
        command, *args = line.split()
        if command == "save":
            npy, name, group_size, path = args
            hwlab.quantize(np.load(npy), name, int(group_size)).save(path)
            hwlab.load(path)
            answer = {"bytes": os.path.getsize(path)}
        elif command == "time":
            path, cold, count = args
            walls, cpus = zip(*(timed(hwlab.load, path, cold == "1") for _ in range(int(count))))
            answer = {"wall": walls, "cpu": cpus}
        else:
            raise SystemExit(f"load_worker: unknown command {command!r}")
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve(sys.argv[1])
