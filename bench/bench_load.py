"""What the integrity checks of ``hwlab.load`` cost, beside a plain read of the same file.

    python bench/bench_load.py --repeats 41 --cold-repeats 11 --out bench/results/load_cpu.json

Each format's 4096 x 11008 tensor (std 0.02 weights) is saved once; then, interleaved so that the
machine's noise falls on both alike, ``hwlab.load`` (checksums, digest, every metadata field,
the layout and every stored value checked) and a plain read of the same file (``safe_open`` and
``get_tensor`` of every array plus parsing the JSON metadata: what loading did before the checks)
are timed; the medians and their ratio are reported. Hot: the file is in the page cache (the
worst case for the ratio). Cold (``--cold-repeats``, 0 to skip): before every timed call the
file's pages are dropped from the page cache (``fsync``, then ``posix_fadvise(DONTNEED)``), so
each call reads the file from the disk (on a virtual machine, from whatever caches the host
keeps under its virtual disk). The load average before and after is recorded: other processes
on the machine make every time longer; the CPU time of the hot calls (``process_time``, every
thread of the process) is reported beside the wall time, as it depends less on them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
from bench_quantize import (
    cpu_name,
    git_commit,
    own_group_size,
    utc_now,
    versions,
    write_result,
)

import hwlab

FORMATS = ("int4", "int4_asym", "nf4", "bitmod_fp4", "fp8_e4m3", "mxfp4", "nvfp4", "mixed_2_4", "olive4", "int3")


def plain_read(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as fh:
        json.loads(fh.metadata()["hwlab"])
        names = fh.keys()  # a safe_open is not iterable
        return {k: fh.get_tensor(k) for k in names}


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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS))
    parser.add_argument("--repeats", type=int, default=41, help="hot-cache timings of each (default 41)")
    parser.add_argument("--cold-repeats", type=int, default=11,
                        help="cold-cache timings of each (default 11; 0: none)")
    parser.add_argument("--shape", type=int, nargs=2, default=[4096, 11008], metavar=("N", "K"))
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    import torch

    cold_ok = hasattr(os, "posix_fadvise")
    w = (np.random.default_rng(0).standard_normal(tuple(args.shape)) * 0.02).astype(np.float32)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.formats:
            path = os.path.join(tmp, f"{name}.safetensors")
            qt = hwlab.quantize(w, name, own_group_size(name, 128))
            qt.save(path)
            hwlab.load(path), plain_read(path)  # warm-up: page cache, numba kernels
            row = {"format": name, "mbytes": qt.nbytes / 1e6}
            for cache, repeats in (("", args.repeats), ("_cold", args.cold_repeats if cold_ok else 0)):
                checked, plain = [], []
                for _ in range(repeats):
                    checked.append(timed(hwlab.load, path, bool(cache)))
                    plain.append(timed(plain_read, path, bool(cache)))
                if repeats:
                    row[f"load{cache}_ms"] = statistics.median(t for t, _ in checked) * 1e3
                    row[f"plain_read{cache}_ms"] = statistics.median(t for t, _ in plain) * 1e3
                    row[f"ratio{cache}"] = row[f"load{cache}_ms"] / row[f"plain_read{cache}_ms"]
                if repeats and not cache:  # CPU time: what other processes on the machine change least
                    row["load_cpu_ms"] = statistics.median(c for _, c in checked) * 1e3
                    row["plain_read_cpu_ms"] = statistics.median(c for _, c in plain) * 1e3
                    row["ratio_cpu"] = row["load_cpu_ms"] / row["plain_read_cpu_ms"]
            rows.append(row)
            cold = (f"   cold: load {row['load_cold_ms']:7.2f} ms  plain read {row['plain_read_cold_ms']:7.2f} ms  "
                    f"{row['ratio_cold']:5.2f}x" if "ratio_cold" in row else "")
            print(f"{name:<12} {row['mbytes']:7.1f} MB  load {row['load_ms']:7.2f} ms  plain read "
                  f"{row['plain_read_ms']:7.2f} ms  {row['ratio']:5.2f}x (CPU time {row['ratio_cpu']:5.2f}x){cold}",
                  flush=True)
    result = {"benchmark": "load_cpu", "shape": list(args.shape), "repeats": args.repeats,
              "cold_repeats": args.cold_repeats if cold_ok else 0, "results": rows, "cpu": cpu_name(),
              "cores_available": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              **versions(torch), "commit": git_commit(),
              "date": utc_now()}
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
