"""Speed of the simulators: the functional PE engine (numba, CPU and GPU) and the analytical engine.

    python bench/bench_sim.py --out bench/results/sim_cpu.json            # CPU: all of it
    python bench/bench_sim.py --cuda --skip-cpu --out $OUT/sim_cuda.json  # the GPU engine

* One 4096 x 11008 layer (``bitmod_fp4``, group 128) at batch 1 through :func:`hwlab.sim.run_pe`'s
  engine on 1 and 2 threads: weight-MACs per second, beside the numpy golden model
  (:func:`hwlab.sim.pe.golden`) on the same layer, bit-identical; and where the time goes
  (``pe.operands``: the hand-off; ``pe.pack_terms``: the K-major term streams; the arithmetic).
* One whole Llama-2-7B-shaped decode step: every linear layer (32 blocks of q, k, v, o, gate, up,
  down, and lm_head; random ``bitmod_fp3`` weights at its shapes: one random tensor per projection,
  a fresh random activation for each of the 225 layers) through the engine. The time excludes
  quantizing the random weights (reported apart) and includes everything else: the hand-off
  (``qt.unpacked()``), the term packing, the engine.
* The analytical engine on Llama-2-7B decode and prefill for the four presets.
* Term skipping on the same 4096 x 11008 layer (batch 1) for a few formats: the compute cycles of
  the authors' fixed rule (``ceil(bits / 2)`` cycles, or the format's most terms, per tile step)
  and with ``term_skipping=True`` (a step lasts as long as the slowest of its weights), on the
  ``bitmod`` preset's decode array (64 rows in lock step) and on narrower arrays (16, 4, 1 rows).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import numpy as np

import hwlab
from bench_quantize import cpu_name, git_commit, utc_now, write_result
from hwlab.sim import Workload, get_model, simulate
from hwlab.sim import pe


def layer_speed(threads: int) -> dict:
    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    qt = hwlab.quantize((rng.standard_normal((11008, 4096)) * 0.02).astype(np.float32), "bitmod_fp4", 128)
    x = rng.standard_normal((1, 4096)).astype(np.float16)
    ops = pe.operands(x, qt)
    pe.engine(ops)  # compile / load the cache
    times = []
    for _ in range(5):
        start = time.perf_counter()
        out = pe.engine(pe.operands(x, qt))
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    parts = {}  # where the time goes: the hand-off and operands, the term packing, the arithmetic
    for name, fn in (("operands", lambda: pe.operands(x, qt)), ("pack_terms", lambda: pe.pack_terms(ops)),
                     ("engine_given_operands", lambda: pe.engine(ops))):
        part = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            part.append(time.perf_counter() - start)
        parts[f"{name}_seconds"] = float(np.median(part))
    parts["arithmetic_seconds"] = parts["engine_given_operands_seconds"] - parts["pack_terms_seconds"]
    return {"threads": threads, "seconds": seconds, "mmacs_per_s": 4096 * 11008 / seconds / 1e6,
            "arithmetic_mmacs_per_s": 4096 * 11008 / parts["arithmetic_seconds"] / 1e6, **parts, "output": out}


def decode_step(model: str, device: str, fmt: str) -> dict:
    spec = get_model(model)
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    tensors = {}
    for name, cout, cin in spec.linear_shapes():
        kind = name.rsplit(".", 1)[-1]
        if kind not in tensors:
            tensors[kind] = hwlab.quantize((rng.standard_normal((cout, cin)) * 0.02).astype(np.float32), fmt, 128)
    made = time.perf_counter() - start
    engine = pe.engine
    if device == "cuda":
        from hwlab.sim.pe_cuda import engine_cuda as engine
    macs, start = 0, time.perf_counter()
    for name, cout, cin in spec.linear_shapes():
        qt = tensors[name.rsplit(".", 1)[-1]]
        engine(pe.operands(rng.standard_normal((1, cin)).astype(np.float16), qt))
        macs += cout * cin
    seconds = time.perf_counter() - start
    return {"model": model, "device": device, "format": fmt, "layers": len(spec.linear_shapes()), "macs": macs,
            "seconds": seconds, "quantize_seconds": made, "mmacs_per_s": macs / seconds / 1e6}


def analytical_speed() -> dict:
    start = time.perf_counter()
    for phase in ("decode", "prefill"):
        wl = Workload.for_model("llama2-7b", phase)
        for preset in ("bitmod", "ant", "olive", "fp16"):
            simulate(wl, preset)
    return {"llama2_7b_decode_and_prefill_four_presets_seconds": time.perf_counter() - start}


def term_skipping(formats=("bitmod_fp4", "bitmod_fp3", "int4", "int8"), rows=(16, 4, 1)) -> list[dict]:
    from hwlab.sim.config import get_preset

    preset_rows = get_preset("bitmod").array("decode")[0]
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((11008, 4096)) * 0.02).astype(np.float32)
    x = rng.standard_normal((1, 4096)).astype(np.float16)
    out = []
    for fmt in formats:
        ops = pe.operands(x, hwlab.quantize(w, fmt, 128))
        for r in (preset_rows, *rows):
            fixed, skipping = pe.tile_step_cycles(ops, r, False), pe.tile_step_cycles(ops, r, True)
            out.append({"format": fmt, "array_rows": r, "fixed_cycles": fixed, "term_skipping_cycles": skipping,
                        "speedup": fixed / skipping})
        print(f"term skipping {fmt}: " + ", ".join(f"{o['array_rows']} rows {o['speedup']:.3f}x"
                                                   for o in out if o["format"] == fmt), flush=True)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="also time the numba.cuda engine")
    parser.add_argument("--skip-cpu", action="store_true", help="only the GPU engine")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    result = {"benchmark": "sim", "cpu": cpu_name(), "cores": os.cpu_count(), "numba": numba.__version__,
              "numpy": np.__version__, "python": platform.python_version(), "hwlab": hwlab.__version__,
              "commit": git_commit(), "date": utc_now(),
              "loadavg_before": os.getloadavg()}
    if not args.skip_cpu:
        runs = [layer_speed(t) for t in (1, 2)]
        ops = pe.operands(np.random.default_rng(0).standard_normal((1, 4096)).astype(np.float16),
                          hwlab.quantize((np.random.default_rng(0).standard_normal((11008, 4096)) * 0.02)
                                         .astype(np.float32), "bitmod_fp4", 128))
        start = time.perf_counter()
        golden = pe.golden(ops)
        golden_s = time.perf_counter() - start
        exact = bool(np.array_equal(golden.view(np.uint32), pe.engine(ops).view(np.uint32)))
        result["layer_4096x11008"] = {"runs": [{k: v for k, v in r.items() if k != "output"} for r in runs],
                                      "golden_seconds": golden_s, "bit_exact": exact,
                                      "speedup_over_golden_2_threads": golden_s / runs[1]["seconds"]}
        print("layer 4096x11008 bitmod_fp4 batch 1: " + ", ".join(
            f"{r['threads']} thread(s) {r['seconds']:.3f} s ({r['mmacs_per_s']:.0f} MMAC/s)" for r in runs)
            + f"; golden {golden_s:.2f} s; {golden_s / runs[1]['seconds']:.1f}x; bit-exact {exact}", flush=True)
        result["decode_step_cpu"] = decode_step("llama2-7b", "cpu", "bitmod_fp3")
        print(f"Llama-2-7B decode step, CPU: {result['decode_step_cpu']['seconds']:.1f} s", flush=True)
        result["analytical"] = analytical_speed()
        print(f"analytical: {result['analytical']}")
        result["term_skipping"] = term_skipping()
    if args.cuda:
        from numba import cuda

        result["gpu"] = cuda.get_current_device().name.decode() if hasattr(cuda.get_current_device().name, "decode") \
            else str(cuda.get_current_device().name)
        decode_step("opt-1.3b", "cuda", "bitmod_fp3")  # compile
        result["decode_step_cuda"] = decode_step("llama2-7b", "cuda", "bitmod_fp3")
        print(f"Llama-2-7B decode step, numba.cuda: {result['decode_step_cuda']['seconds']:.2f} s", flush=True)
    result["loadavg_after"] = os.getloadavg()
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
