"""Speed of the edge SIMD model: the NEON kernel simulator, ``hwlab edge``, and its paper table.

    python bench/bench_edge.py --out bench/results/edge_cpu.json
    python bench/bench_edge.py --shapes 1x64x256 --repeats 1 --no-cli     # a quick check

* The block-by-block NEON kernels of :mod:`hwlab.sim.simd` (``fp16``, ``w8a8``, ``w4a8``, ``w4a4``:
  numba, every lane computed and every instruction counted) on both presets (``a72``: SMLAL and
  fp32 FMLA after FCVTL; ``a77``: SDOT and fp16 FMLA) at ``M x N x K`` shapes (default a decode
  token and 16 tokens through a 2048 x 2048 layer): simulated MACs per second, each beside a numpy
  float64 matmul of the same shape timed in the same process (``slowdown`` = kernel time / numpy
  time), and the result checked bit for bit against the plain references (integer matmul; the fp16
  kernel's numpy twin :func:`hwlab.sim.simd.fp16_reference`). Inputs are TRIP codes
  (:func:`hwlab.sim.trip.trip_quantize` of std 0.02 weights, calibration activations of std 1
  with two outlier channels); fp16 takes the float weights and activations. Every timing is the
  median of ``--repeats`` runs after a warm-up that compiles or loads the cached kernels.
* ``hwlab edge --preset a77 --model opt-1.3b --act-bits 4`` and ``hwlab edge --paper-table`` as
  commands (wall time of a fresh process: interpreter, imports and all), and the same work in this
  process (:func:`hwlab.sim.edge_engine.simulate_edge` of the w4a4 run and its fp16 baseline;
  :func:`hwlab.sim.edge_engine.paper_table`).
* The paper table itself: predicted speedups over fp16 beside Agile-Quant's, with the bound, and
  the instructions each linear-layer kernel issues per 16 MACs (from the instruction counts the
  timing model uses), which explain the differences.
* What-ifs for those differences (not claims about the paper's kernels, which are not public): the
  paper's W4A8 run as the model's ``w8a8`` kernel (int8 weights streamed, as an int8 GEMM library
  would), and every preset with the SIMD throughput, issue width and accumulators of 4 cores
  sharing the one DRAM (the paper states no thread count; the Pi 4B has 4 Cortex-A72s).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numba
import numpy as np

import hwlab
from bench_quantize import cpu_name, git_commit, median_seconds, utc_now, write_result
from hwlab.sim import Workload
from hwlab.sim.edge import get_edge_preset
from hwlab.sim.edge_engine import compute_cycles, paper_table, simulate_edge
from hwlab.sim.simd import KERNELS, fp16_reference, instruction_counts, run_kernel
from hwlab.sim.trip import integer_matmul, trip_quantize

CORES = ("a72", "a77")
KERNEL_BITS = {"w8a8": (8, 8), "w4a8": (4, 8), "w4a4": (4, 4)}  # kernel -> (weight bits, activation bits)
EDGE_COMMAND = ["edge", "--preset", "a77", "--model", "opt-1.3b", "--act-bits", "4"]
PAPER_COMMAND = ["edge", "--paper-table"]


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        m, n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected MxNxK, e.g. 16x2048x2048") from None
    if min(m, n, k) < 1:
        raise argparse.ArgumentTypeError(f"shape {text!r}: M, N and K must be positive")
    return m, n, k


def inputs(m: int, n: int, k: int) -> dict:
    """Float weights and activations, and their TRIP codes for each integer kernel."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k)) * 0.02
    calibration = rng.standard_normal((max(m, 8), k))
    calibration[:, [k // 3, (2 * k) // 3]] *= 40  # two outlier channels, as TRIP expects
    x = calibration[:m]
    out = {"fp16": (x, w)}
    for kernel, (wbits, abits) in KERNEL_BITS.items():
        layer = trip_quantize(w, calibration, act_bits=abits, weight_bits=wbits)
        out[kernel] = (layer.quantize_activations(x), layer.weight_codes)
    return out


def kernel_speed(shapes, repeats: int) -> list[dict]:
    rows = []
    for m, n, k in shapes:
        data = inputs(m, n, k)
        xf, wf = data["fp16"]
        numpy_s = median_seconds(lambda: xf @ wf.T, max(repeats, 5))
        for core_name in CORES:
            core = get_edge_preset(core_name)
            for kernel in KERNELS:
                x, w = data[kernel]
                run = run_kernel(kernel, core, x, w)
                seconds = median_seconds(lambda: run_kernel(kernel, core, x, w), repeats)
                if kernel == "fp16":
                    exact = bool(np.array_equal(run.result, fp16_reference(x, w, core.has("fmla_h"))))
                else:
                    exact = bool(np.array_equal(run.result, integer_matmul(x, w)))
                counted = {op: v for op, v in instruction_counts(kernel, core, m, n, k).items() if v}
                row = {"core": core_name, "kernel": kernel, "m": m, "n": n, "k": k, "seconds": seconds,
                       "mmacs_per_s": m * n * k / seconds / 1e6, "numpy_float64_seconds": numpy_s,
                       "numpy_float64_mmacs_per_s": m * n * k / numpy_s / 1e6, "slowdown": seconds / numpy_s,
                       "bit_exact": exact, "overflows": run.overflows,
                       "counts_match_model": run.instructions == counted,
                       "instructions": run.instructions, "simulated_cycles": compute_cycles(core, run.instructions)[0]}
                rows.append(row)
                print(f"{core_name} {kernel:5s} {m}x{n}x{k}: {seconds * 1e3:9.1f} ms  {row['mmacs_per_s']:7.1f} MMAC/s  "
                      f"numpy float64 {numpy_s * 1e3:7.2f} ms  slowdown {row['slowdown']:8.0f}x  "
                      f"bit-exact {exact}", flush=True)
    return rows


def hwlab_command() -> list[str]:
    """How to run the ``hwlab`` command: the console script beside this interpreter, else ``-c``."""
    script = os.path.join(os.path.dirname(sys.executable), "hwlab")
    if os.path.exists(script):
        return [script]
    found = shutil.which("hwlab")
    return [found] if found else [sys.executable, "-c", "import sys; from hwlab.cli import main; sys.exit(main())"]


def command_speed(repeats: int) -> dict:
    base = hwlab_command()
    out = {"hwlab": " ".join(base)}
    for key, args in (("edge_a77_opt_1_3b_w4a4", EDGE_COMMAND), ("paper_table", PAPER_COMMAND)):
        times, text = [], ""
        for _ in range(repeats):
            start = time.perf_counter()
            done = subprocess.run(base + args, capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - start)
            text = done.stdout
        out[key] = {"command": "hwlab " + " ".join(args), "wall_seconds": statistics.median(times), "stdout": text}
        print(f"hwlab {' '.join(args)}: {statistics.median(times):.2f} s wall", flush=True)
    return out


def in_process_speed(repeats: int) -> dict:
    def edge_run():
        workload = Workload.for_model("opt-1.3b", phase="decode")
        simulate_edge("a77", workload, 4)
        simulate_edge("a77", workload, 16)

    return {"edge_a77_opt_1_3b_w4a4_seconds": median_seconds(edge_run, repeats),
            "paper_table_seconds": median_seconds(paper_table, repeats)}


def instruction_mix(n: int = 2048, k: int = 2048) -> list[dict]:
    """Per 16 MACs of one decode token through an ``n x k`` layer: what each kernel issues, the
    pipe cycles it costs, each compute bound, and the DRAM cycles of its weights."""
    rows = []
    for core_name in CORES:
        core = get_edge_preset(core_name)
        for kernel in KERNELS:
            counts = instruction_counts(kernel, core, 1, n, k)
            _, bounds = compute_cycles(core, counts)
            per16 = 16 / (n * k)
            wbits = 16 if kernel == "fp16" else KERNEL_BITS[kernel][0]
            rows.append({"core": core_name, "kernel": kernel,
                         "issued_per_16_macs": {op: v * per16 for op, v in counts.items() if v},
                         "pipe_cycles_per_16_macs": {op: v * per16 / core.throughput[op] for op, v in counts.items()
                                                     if v and op not in ("ld1", "st1")},
                         "bounds_per_16_macs": {b: v * per16 for b, v in bounds.items()},
                         "weight_dram_cycles_per_16_macs": 16 * wbits / 8 / core.dram_bytes_per_cycle})
    return rows


def what_ifs(models=("opt-1.3b", "llama2-7b"), context: int = 256) -> list[dict]:
    """Speedups over fp16 of every integer kernel, on each preset and on the preset with 4 cores'
    SIMD resources (one DRAM), for the decode step of :func:`paper_table`."""
    rows = []
    for model in models:
        workload = Workload.for_model(model, phase="decode", context=context)
        for core_name in CORES:
            core = get_edge_preset(core_name)
            for cores in (1, 4):
                c = core if cores == 1 else core.replace(
                    name=f"{core_name}x{cores}", throughput={op: v * cores for op, v in core.throughput.items()},
                    issue_width=core.issue_width * cores, accumulators=min(32, core.accumulators * cores))
                base = simulate_edge(c, workload, 16)
                for kernel, (wbits, abits) in KERNEL_BITS.items():
                    rows.append({"model": model, "core": core_name, "cores": cores, "kernel": kernel,
                                 "speedup": simulate_edge(c, workload, abits, wbits).speedup_over(base)})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[(1, 2048, 2048), (16, 2048, 2048)],
                        metavar="MxNxK", help="kernel shapes (default 1x2048x2048 16x2048x2048)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kernel (default 3)")
    parser.add_argument("--command-repeats", type=int, default=3, help="timed runs of each command (default 3)")
    parser.add_argument("--threads", type=int, help="numba threads (default: numba's, all cores)")
    parser.add_argument("--no-cli", action="store_true", help="skip timing the hwlab commands as processes")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        numba.set_num_threads(args.threads)
    load_before = os.getloadavg()
    result = {"benchmark": "edge_cpu", "threads": numba.get_num_threads(), "repeats": args.repeats}
    result["kernels"] = kernel_speed(args.shapes, args.repeats)
    result["in_process"] = in_process_speed(args.command_repeats)
    print(f"in process: {result['in_process']}", flush=True)
    if not args.no_cli:
        result["commands"] = command_speed(args.command_repeats)
    rows = paper_table()
    result["paper_table"] = rows
    for r in rows:
        print(f"{r['device']:16s} {r['model']:10s} a{r['act_bits']} {r['kernel']:5s} predicted {r['predicted']:5.2f}x  "
              f"paper {r['paper_low']:.2f}-{r['paper_high']:.2f}x  {r['off']:+.0%}  {r['bound']}", flush=True)
    result["instruction_mix_2048x2048_decode"] = instruction_mix()
    result["what_ifs"] = what_ifs()
    for r in result["what_ifs"]:
        print(f"what-if {r['model']:10s} {r['core']} x{r['cores']} {r['kernel']}: {r['speedup']:.2f}x", flush=True)
    result.update({"cpu": cpu_name(), "cores_available": os.cpu_count(), "loadavg_before": load_before,
                   "loadavg_after": os.getloadavg(), "python": platform.python_version(), "numpy": np.__version__,
                   "numba": numba.__version__, "hwlab": hwlab.__version__, "commit": git_commit(),
                   "date": utc_now()})
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
