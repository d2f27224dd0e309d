"""What the integrity checks of ``hwlab.load`` cost, beside a plain read of the same file.

    python bench/bench_load.py --repeats 41 --cold-repeats 11 --against 068878c \
        --out bench/results/load_cpu_068878c.json

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

``--against REV`` also times ``hwlab.load`` as it was at that git revision (``068878c``: the last
commit before the integrity checks, the load that issue 7 bounds at 1.5x), on its own file of the
same weights, in a second process started from ``load_worker.py``. The two processes take turns in
blocks of ``--block`` calls (the worker first in every other block): a switch between processes
before every call slowed this revision's load by a third (its Python code and data are out of the
caches after it), more than the plain read's and the old load's, which run less Python.

Whether the memory a call's arrays land in is fresh (each page faulted in and zeroed by the kernel,
which on the KVM guest of BENCHMARKS.md costs more than the copy) or recycled from the call before is up
to glibc's malloc, which returns a freed block to the system when it is larger than a threshold
that moves with the process's history; hence a plain read of the same hot file at 1.2 ms in one run
and 3-4 ms in another. glibc's environment variables fix the regime for both processes, and the
ones set are recorded: ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296``
(memory always recycled), ``MALLOC_MMAP_THRESHOLD_=131072`` (always fresh).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import load_worker
import numpy as np
from bench_quantize import (
    cpu_name,
    git_commit,
    own_group_size,
    utc_now,
    versions,
    write_result,
)

from load_worker import export_revision, timed

import hwlab

FORMATS = ("int4", "int4_asym", "nf4", "bitmod_fp4", "fp8_e4m3", "mxfp4", "nvfp4", "mixed_2_4", "olive4", "int3")


def plain_read(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as fh:
        json.loads(fh.metadata()["hwlab"])
        names = fh.keys()  # a safe_open is not iterable
        return {k: fh.get_tensor(k) for k in names}


class OtherRevision:
    """``hwlab.load`` of another revision of this repository, timed in a second process (``load_worker.py``)."""

    def __init__(self, rev: str, tmp: str):
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        packages = export_revision(repo, rev, tmp)
        self.commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short", rev], capture_output=True,
                                     text=True, check=True).stdout.strip()
        env = {**os.environ, "PYTHONPATH": packages}
        self.process = subprocess.Popen([sys.executable, "-P", load_worker.__file__, packages], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp)

    def ask(self, *command) -> dict:
        self.process.stdin.write(" ".join(map(str, command)) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"the load worker of {self.commit} stopped (exit status {self.process.wait()})")
        return json.loads(answer)

    def timed(self, path: str, cold: bool, count: int) -> list:
        """``count`` timed loads of ``path``, one after the other in the worker: (wall, CPU) seconds each."""
        answer = self.ask("time", path, int(cold), count)
        return list(zip(answer["wall"], answer["cpu"]))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS))
    parser.add_argument("--repeats", type=int, default=41, help="hot-cache timings of each (default 41)")
    parser.add_argument("--cold-repeats", type=int, default=11,
                        help="cold-cache timings of each (default 11; 0: none)")
    parser.add_argument("--shape", type=int, nargs=2, default=[4096, 11008], metavar=("N", "K"))
    parser.add_argument("--against", metavar="REV",
                        help="also time hwlab.load as it was at this git revision (its own file of the same weights)")
    parser.add_argument("--block", type=int, default=8,
                        help="with --against: calls of each kind a turn, the other revision's in one block (default 8)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.block < 1:
        parser.error(f"--block must be at least 1, got {args.block}")
    import torch

    cold_ok = hasattr(os, "posix_fadvise")
    w = (np.random.default_rng(0).standard_normal(tuple(args.shape)) * 0.02).astype(np.float32)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            other = OtherRevision(args.against, os.path.join(tmp, "other")) if args.against else None
        except ValueError as exc:
            parser.error(str(exc))
        if other:
            np.save(os.path.join(tmp, "weights.npy"), w)
        for name in args.formats:
            path = os.path.join(tmp, f"{name}.safetensors")
            qt = hwlab.quantize(w, name, own_group_size(name, 128))
            qt.save(path)
            hwlab.load(path), plain_read(path)  # warm-up: page cache, numba kernels
            row = {"format": name, "mbytes": qt.nbytes / 1e6}
            calls = {"load": lambda cold: timed(hwlab.load, path, cold),
                     "plain_read": lambda cold: timed(plain_read, path, cold)}
            if other:
                other_path = os.path.join(tmp, f"{name}_{other.commit}.safetensors")
                other.ask("save", os.path.join(tmp, "weights.npy"), name, own_group_size(name, 128), other_path)
            keys = [*calls, "against"] if other else list(calls)
            for cache, repeats in (("", args.repeats), ("_cold", args.cold_repeats if cold_ok else 0)):
                times = {key: [] for key in keys}
                for block, first in enumerate(range(0, repeats, args.block)):  # blocks: one process switch each
                    count, cold = min(args.block, repeats - first), bool(cache)
                    turns = [lambda: interleaved(calls, times, count, cold)]
                    if other:
                        turns.append(lambda: times["against"].extend(other.timed(other_path, cold, count)))
                    for turn in turns[::-1] if block % 2 else turns:  # the other revision first every other block
                        turn()
                for key in keys if repeats else ():
                    row[f"{key}{cache}_ms"] = statistics.median(t for t, _ in times[key]) * 1e3
                    if not cache:  # CPU time: what other processes on the machine change least
                        row[f"{key}_cpu_ms"] = statistics.median(c for _, c in times[key]) * 1e3
                if repeats:
                    row[f"ratio{cache}"] = row[f"load{cache}_ms"] / row[f"plain_read{cache}_ms"]
                if repeats and other:
                    row[f"ratio_against{cache}"] = row[f"load{cache}_ms"] / row[f"against{cache}_ms"]
            row["ratio_cpu"] = row["load_cpu_ms"] / row["plain_read_cpu_ms"]
            rows.append(row)
            print(summary(name, row), flush=True)
        if other:
            other.close()
    result = {"benchmark": "load_cpu", "shape": list(args.shape), "repeats": args.repeats,
              "cold_repeats": args.cold_repeats if cold_ok else 0, "results": rows, "cpu": cpu_name(),
              "against": other.commit if other else None,
              "malloc_environment": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
              "cores_available": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              **versions(torch), "commit": git_commit(),
              "date": utc_now()}
    return write_result(result, args.out)


def interleaved(calls: dict, times: dict, count: int, cold: bool) -> None:
    """``count`` rounds of ``calls`` (name -> call(cold) -> (wall, CPU) seconds), each in turn first, so that
    the machine's noise falls on all alike; the times appended to ``times[name]``."""
    names = list(calls)
    for i in range(count):
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(calls[name](cold))


def summary(name: str, row: dict) -> str:
    """One printed line of ``row``'s medians and ratios."""
    line = (f"{name:<12} {row['mbytes']:7.1f} MB  load {row['load_ms']:7.2f} ms  plain read "
            f"{row['plain_read_ms']:7.2f} ms  {row['ratio']:5.2f}x (CPU time {row['ratio_cpu']:5.2f}x)")
    if "ratio_against" in row:
        line += f"  then {row['against_ms']:7.2f} ms  {row['ratio_against']:5.2f}x"
    if "ratio_cold" in row:
        line += (f"   cold: load {row['load_cold_ms']:7.2f} ms  plain read {row['plain_read_cold_ms']:7.2f} ms  "
                 f"{row['ratio_cold']:5.2f}x")
    if "ratio_against_cold" in row:
        line += f"  then {row['against_cold_ms']:7.2f} ms  {row['ratio_against_cold']:5.2f}x"
    return line


if __name__ == "__main__":
    main()
