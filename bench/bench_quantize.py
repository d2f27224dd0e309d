"""Quantization and encoding speed on the CPU, beside the peers a user would otherwise call.

    python bench/bench_quantize.py --threads 1 2 --repeats 5 --out bench/results/quantize_cpu.json
    python bench/bench_quantize.py --formats bitmod_fp4 --threads 1

For each thread count (the process is pinned to that many cores; numba, torch and BLAS use that
many threads) every format is quantized once to compile (numba, cached on disk), then
``--repeats`` times; the median wall time is reported with the throughput and the ratio to a
baseline run in the same process: a plain numpy INT4 absmax fake-quantization
(``rint(clip(w / s))`` per group of 128), the code a user would write by hand.

Peers, timed in the same process at the same thread count, each beside the hwlab call that does
the same job (speedup = peer time / hwlab time):

* ml_dtypes ``x.astype(float8_e4m3fn | float8_e5m2 | float4_e2m1fn)`` and torch
  ``x.to(float8_e4m3fn | float8_e5m2)`` against ``get_format(...).encode(x)`` (same codes,
  except that the casts send overflow to NaN or inf where hwlab saturates);
* the BitMoD authors' ``quant_int`` (absmax INT4 per group of 128 in fp16 torch) and their
  per-group search over the four FP4 members (least MSE), re-expressed here in torch as their
  code does it, against ``quantize(w, "int4")`` and ``quantize(w, "bitmod_fp4")``;
* bitsandbytes ``quantize_4bit(nf4, blocksize=64)`` and torchao's MXFP4 ``MXTensor.to_mx``
  where those packages are installed (skipped with the reason otherwise).

hwlab's quantizer also packs the codes and rounds exactly under the stored scale; the peers
produce their own storage. Results (CPU, versions, date, git commit) are written as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time

import numba
import numpy as np

import hwlab

DEFAULT_FORMATS = ("int4", "int4_asym", "fp4_e2m1", "nf4", "bitmod_fp3", "bitmod_fp4", "fp8_e4m3", "mxfp4", "nvfp4",
                   "mixed_2_4", "olive4")
BITMOD_FP4_GRIDS = (  # the authors' "2 x E2M1" grids of ER+, ER-, EA+, EA- (quant_weight.py), ascending
    (-12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 10, 12),
    (-12, -10, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12),
    (-12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12, 16),
    (-16, -12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12),
)


def naive_int4(w: np.ndarray, group_size: int):
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
    fn()  # warm-up: compilation, caches, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---- peers -----------------------------------------------------------------------------------

def torch_quant_int(torch, w, bits: int = 4, group_size: int = 128):
    """The BitMoD authors' ``quant_int``: fp16 absmax scale per group, round, clamp, dequantize."""
    rows, cols = w.shape
    x = w.reshape(rows, cols // group_size, group_size).to(torch.float16)
    qmax = 2 ** (bits - 1) - 1
    scale = (x.abs().amax(dim=-1, keepdim=True) / qmax).clamp(min=1e-5, max=1e4)
    return (torch.clamp(torch.round(x / scale), -qmax, qmax) * scale).reshape(rows, cols)


def torch_bitmod_search(torch, w, group_size: int = 128):
    """The BitMoD authors' FP4 mixture search: per group and member, absmax scale, nearest grid value
    (argmin over the ascending grid), squared error; the least-error member wins."""
    rows, cols = w.shape
    x = w.reshape(-1, group_size).to(torch.float16)
    absmax = x.abs().amax(dim=-1, keepdim=True)
    best_err, best = None, None
    for grid in BITMOD_FP4_GRIDS:
        g = torch.tensor(grid, dtype=torch.float16)
        scale = (absmax / g.abs().max()).clamp(min=1e-5, max=1e4)
        t = x / scale
        q = g[torch.argmin((t.unsqueeze(-1) - g).abs(), dim=-1)] * scale
        err = ((q - x).float() ** 2).sum(dim=-1)
        if best is None:
            best_err, best = err, q
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better.unsqueeze(-1), q, best)
    return best.reshape(rows, cols)


def peers(torch, w: np.ndarray, x: np.ndarray, repeats: int):
    """(peer name, what, peer callable, hwlab callable) for every peer installed here, and skips."""
    import ml_dtypes

    wt, xt = torch.from_numpy(w), torch.from_numpy(x)
    cases = [
        ("ml_dtypes float8_e4m3fn cast", "encode fp8_e4m3", lambda: x.astype(ml_dtypes.float8_e4m3fn),
         lambda: hwlab.get_format("fp8_e4m3").encode(x)),
        ("ml_dtypes float8_e5m2 cast", "encode fp8_e5m2", lambda: x.astype(ml_dtypes.float8_e5m2),
         lambda: hwlab.get_format("fp8_e5m2").encode(x)),
        ("ml_dtypes float4_e2m1fn cast", "encode fp4_e2m1", lambda: x.astype(ml_dtypes.float4_e2m1fn),
         lambda: hwlab.get_format("fp4_e2m1").encode(x)),
        ("torch float8_e4m3fn cast", "encode fp8_e4m3", lambda: xt.to(torch.float8_e4m3fn),
         lambda: hwlab.get_format("fp8_e4m3").encode(x)),
        ("torch float8_e5m2 cast", "encode fp8_e5m2", lambda: xt.to(torch.float8_e5m2),
         lambda: hwlab.get_format("fp8_e5m2").encode(x)),
        ("BitMoD quant_int (torch fp16)", "quantize int4 g128", lambda: torch_quant_int(torch, wt),
         lambda: hwlab.quantize(w, "int4", 128)),
        ("BitMoD FP4 mixture search (torch fp16)", "quantize bitmod_fp4 g128", lambda: torch_bitmod_search(torch, wt),
         lambda: hwlab.quantize(w, "bitmod_fp4", 128)),
    ]
    skipped = []
    try:
        import bitsandbytes.functional as bnbf

        cases.append(("bitsandbytes quantize_4bit nf4 b64", "quantize nf4 g64",
                      lambda: bnbf.quantize_4bit(wt, blocksize=64, quant_type="nf4"),
                      lambda: hwlab.quantize(w, "nf4", 64)))
    except Exception as exc:  # not installed, or no CPU backend in this build
        skipped.append(f"bitsandbytes: {type(exc).__name__}: {exc}")
    try:
        from torchao.prototype.mx_formats.mx_tensor import MXTensor

        cases.append(("torchao MXTensor.to_mx fp4_e2m1 b32", "quantize mxfp4",
                      lambda: MXTensor.to_mx(wt, torch.float4_e2m1fn_x2, 32),
                      lambda: hwlab.quantize(w, "mxfp4", 32)))
    except Exception as exc:
        skipped.append(f"torchao: {type(exc).__name__}: {exc}")
    rows = []
    for name, what, peer, ours in cases:
        try:
            peer_s = median_seconds(peer, repeats)
        except Exception as exc:  # a peer that fails on this build is reported, not fatal
            skipped.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            continue
        ours_s = median_seconds(ours, repeats)
        rows.append({"peer": name, "task": what, "peer_seconds": peer_s, "hwlab_seconds": ours_s,
                     "speedup": peer_s / ours_s})
    return rows, skipped


# ---- the run ---------------------------------------------------------------------------------

def run_threads(threads: int, w: np.ndarray, x: np.ndarray, args, torch) -> dict:
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0) | set(range(threads)))[:threads]
        os.sched_setaffinity(0, set(cores))
    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    baseline = median_seconds(lambda: naive_int4(w, args.group_size), args.repeats)
    rows = []
    print(f"\n{threads} thread(s)\n{'format':<12} {'group':>5} {'seconds':>8} {'Mweights/s':>11} "
          f"{'vs numpy int4':>14} {'bits/weight':>12}", flush=True)
    for name in args.formats:
        group_size = own_group_size(name, args.group_size)
        qt = hwlab.quantize(w, name, group_size)
        seconds = median_seconds(lambda: hwlab.quantize(w, name, group_size), args.repeats)
        row = {"format": name, "group_size": group_size, "seconds": seconds, "mweights_per_s": w.size / seconds / 1e6,
               "ratio_to_numpy_int4": seconds / baseline, "bits_per_weight": qt.bits_per_weight}
        rows.append(row)
        print(f"{name:<12} {group_size:5d} {seconds:8.3f} {row['mweights_per_s']:11.1f} "
              f"{row['ratio_to_numpy_int4']:13.2f}x {qt.bits_per_weight:12.4f}", flush=True)
    print(f"{'numpy int4':<12} {args.group_size:5d} {baseline:8.3f} (baseline)")
    peer_rows, skipped = peers(torch, w, x, args.repeats) if not args.no_peers else ([], ["--no-peers"])
    for r in peer_rows:
        print(f"  {r['peer']:<40} {r['task']:<24} peer {r['peer_seconds']:7.3f} s  hwlab {r['hwlab_seconds']:7.3f} s"
              f"  hwlab {r['speedup']:5.2f}x faster", flush=True)
    for s in skipped:
        print(f"  skipped: {s}")
    return {"threads": threads, "baseline_numpy_int4_seconds": baseline, "results": rows, "peers": peer_rows,
            "skipped_peers": skipped}


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


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (every result file's ``date``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_result(result: dict, out: str | None) -> dict:
    """Write ``result`` as indented JSON to ``out`` (when given) and return it."""
    if out:
        with open(out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


def versions(torch) -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
           "torch": torch.__version__, "hwlab": hwlab.__version__}
    for name in ("ml_dtypes", "bitsandbytes", "torchao"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            out[name] = None
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=11008)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--formats", nargs="+", default=list(DEFAULT_FORMATS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true", help="time hwlab only")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    import torch

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    x = (rng.standard_normal(args.rows * args.cols) * 2).astype(np.float32)  # encode input: O(1) values
    runs = [run_threads(t, w, x, args, torch) for t in args.threads]
    result = {
        "benchmark": "quantize_cpu", "shape": [args.rows, args.cols], "group_size": args.group_size,
        "repeats": args.repeats, "runs": runs, "cpu": cpu_name(), "cores_available": os.cpu_count(),
        **versions(torch), "commit": git_commit(), "date": utc_now(),
    }
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
