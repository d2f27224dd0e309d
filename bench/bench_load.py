"""What the integrity checks of ``hwlab.load`` cost, beside a plain read of the same file.

    python bench/bench_load.py --repeats 41 --out bench/results/load_cpu.json

Each format's 4096 x 11008 tensor (std 0.02 weights) is saved once; then, interleaved so that the
machine's noise falls on both alike, ``hwlab.load`` (checksums, digest, every metadata field,
the layout and every stored value checked) and a plain read of the same file (``safe_open`` and
``get_tensor`` of every array plus parsing the JSON metadata: what loading did before the checks)
are timed; the medians and their ratio are reported. The file is in the page cache (the worst
case for the ratio: a read from disk costs far more than the checks).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np

import hwlab
from bench_quantize import cpu_name, git_commit, own_group_size, versions

FORMATS = ("int4", "int4_asym", "nf4", "bitmod_fp4", "fp8_e4m3", "mxfp4", "nvfp4", "mixed_2_4", "olive4", "int3")


def plain_read(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as fh:
        json.loads(fh.metadata()["hwlab"])
        return {k: fh.get_tensor(k) for k in fh.keys()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS))
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    import torch

    w = (np.random.default_rng(0).standard_normal((4096, 11008)) * 0.02).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.formats:
            path = os.path.join(tmp, f"{name}.safetensors")
            qt = hwlab.quantize(w, name, own_group_size(name, 128))
            qt.save(path)
            hwlab.load(path), plain_read(path)  # warm-up: page cache, numba kernels
            checked, plain = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                hwlab.load(path)
                checked.append(time.perf_counter() - start)
                start = time.perf_counter()
                plain_read(path)
                plain.append(time.perf_counter() - start)
            row = {"format": name, "mbytes": qt.nbytes / 1e6, "load_ms": statistics.median(checked) * 1e3,
                   "plain_read_ms": statistics.median(plain) * 1e3}
            row["ratio"] = row["load_ms"] / row["plain_read_ms"]
            rows.append(row)
            print(f"{name:<12} {row['mbytes']:7.1f} MB  load {row['load_ms']:7.2f} ms  plain read "
                  f"{row['plain_read_ms']:7.2f} ms  {row['ratio']:5.2f}x", flush=True)
    result = {"benchmark": "load_cpu", "shape": [4096, 11008], "repeats": args.repeats, "results": rows,
              "cpu": cpu_name(), **versions(torch), "commit": git_commit()}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
