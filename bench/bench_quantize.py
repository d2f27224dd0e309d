"""Quantization speed on one CPU core: ``hwlab.quantize`` per format on an LLM-sized matrix.

    python bench/bench_quantize.py                      # 4096 x 11008, group 128, default formats
    python bench/bench_quantize.py --formats bitmod_fp4 --repeats 5 --out bench/results/x.json

Each format is run once to compile (numba, cached on disk), then ``--repeats`` times; the median
wall time is reported, with the throughput and the ratio to a baseline run in the same process:
a plain numpy INT4 absmax fake-quantization (``rint(clip(w / s))`` per group of 128), the code a
user would write by hand. The process is pinned to one core and BLAS/numba threads are set to 1
before numpy is imported. Results (with CPU, versions and git commit) are written as JSON.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

import hwlab  # noqa: E402

DEFAULT_FORMATS = ("int4", "int4_asym", "fp4_e2m1", "nf4", "bitmod_fp3", "bitmod_fp4", "fp8_e4m3", "mxfp4", "nvfp4",
                   "mixed_2_4", "olive4")


def naive_int4(w: np.ndarray, group_size: int) -> np.ndarray:
    """Baseline: numpy INT4 absmax fake-quantization per group (codes and fp16 scales)."""
    g = w.reshape(-1, group_size)
    scale = (np.abs(g).max(axis=1, keepdims=True) / 7).astype(np.float16).astype(np.float32)
    scale[scale == 0] = 1
    return np.clip(np.rint(g / scale), -7, 7).astype(np.int8), scale


def own_group_size(name: str, wanted: int) -> int:
    """``wanted``, or the format's own block size where it fixes one (MX: 32, NVFP4: 16)."""
    fmt = hwlab.get_format(name)
    try:
        fmt.check_group_size(wanted)
    except ValueError:
        return fmt.default_group_size
    return wanted


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=11008)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--formats", nargs="+", default=list(DEFAULT_FORMATS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    w = (np.random.default_rng(0).standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    baseline = median_seconds(lambda: naive_int4(w, args.group_size), args.repeats)
    rows = []
    print(f"{'format':<12} {'group':>5} {'seconds':>8} {'Mweights/s':>11} {'vs numpy int4':>14} {'bits/weight':>12}")
    for name in args.formats:
        group_size = own_group_size(name, args.group_size)
        hwlab.quantize(w[:8, :4 * group_size], name, group_size)  # compile / load cache
        qt = hwlab.quantize(w, name, group_size)
        seconds = median_seconds(lambda: hwlab.quantize(w, name, group_size), args.repeats)
        row = {"format": name, "group_size": group_size, "seconds": seconds, "mweights_per_s": w.size / seconds / 1e6,
               "ratio_to_numpy_int4": seconds / baseline, "bits_per_weight": qt.bits_per_weight}
        rows.append(row)
        print(f"{name:<12} {group_size:5d} {seconds:8.3f} {row['mweights_per_s']:11.1f} {row['ratio_to_numpy_int4']:13.2f}x "
              f"{qt.bits_per_weight:12.4f}")
    print(f"{'numpy int4':<12} {args.group_size:5d} {baseline:8.3f} (baseline)")
    result = {
        "benchmark": "quantize_cpu_single_core", "shape": [args.rows, args.cols],
        "group_size": args.group_size, "repeats": args.repeats, "baseline_numpy_int4_seconds": baseline,
        "results": rows, "cpu": cpu_name(), "python": platform.python_version(),
        "numpy": np.__version__, "numba": numba.__version__, "hwlab": hwlab.__version__,
        "commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
