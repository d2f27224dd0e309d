"""Speed of the simulators: the functional PE engine (numba, CPU and GPU) and the analytical engine.

    python bench/bench_sim.py --out bench/results/sim_cpu.json            # CPU: all of it
    python bench/bench_sim.py --cuda --skip-cpu --out $OUT/sim_cuda.json  # the GPU engine (about a minute)

* One 4096 x 11008 layer (``bitmod_fp4``, group 128) at batch 1 through :func:`hwlab.sim.run_pe`'s
  engine on 1 and 2 threads, beside the numpy golden model (:func:`hwlab.sim.pe.golden`) on the
  same layer, bit-identical; weight-MACs per second of

  - the first call on a tensor: :func:`hwlab.sim.prepare_pe` (the hand-off ``qt.unpacked()``, the
    term table and scale fields; the term packing, :func:`hwlab.sim.pe.pack_streams`), the
    activations' FP16 fields, the arithmetic;
  - a repeated call on the prepared weights: the activations' fields and the arithmetic (and the
    whole ``run_pe(x, weights)``, with its cycle report; the float64 reference is not read);
  - and each part alone.
* One whole Llama-2-7B-shaped decode step: every linear layer (32 blocks of q, k, v, o, gate, up,
  down, and lm_head: 225 layers, 6.6 GMAC) with random ``bitmod_fp3`` weights at its shapes (one
  random tensor per projection, shared by the 32 blocks; a fresh random activation for each layer,
  drawn before the clock starts). Each tensor is prepared once, as a model would be loaded; the
  step's time counts, per layer, the activations' fields and the engine (on the GPU also the
  activations' copy in, both kernels and the output's copy back). Reported apart: quantizing the
  random weights (not counted) and preparing them, measured per tensor and summed over the 225
  layers as a model load would need (the step "with preparation").
* ``--cuda``: the same decode step on the GPU through numba.cuda (the term streams copied to the
  device once per tensor, counted in the preparation), per-layer and total times of
  ``--cuda-repeats`` steps, and the outputs of the first block and lm_head checked bit for bit
  against the CPU engine.
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
from hwlab.sim import Workload, get_model, prepare_pe, run_pe, simulate
from hwlab.sim import pe

LAYER = (11008, 4096)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def layer_speed(qt, x, threads: int) -> dict:
    numba.set_num_threads(threads)
    macs = LAYER[0] * LAYER[1]
    weights = prepare_pe(qt, cache=False)
    acts = weights.activations(x)
    out = pe.engine((weights, acts))  # compile / load the cache
    first = median_time(lambda: pe.engine((prepare_pe(qt, cache=False), weights.activations(x))), 5)
    repeated = median_time(lambda: pe.engine((weights, weights.activations(x))), 5)
    whole = median_time(lambda: run_pe(x, weights), 5)
    w = pe._weight_operands(qt)
    parts = {"handoff_seconds": median_time(lambda: pe._weight_operands(qt), 3),  # unpacked, term table, scales
             "pack_seconds": median_time(lambda: pe.pack_streams(w["codes"], w["member"], w["terms"]), 3),
             "activations_seconds": median_time(lambda: weights.activations(x), 5),
             "arithmetic_seconds": median_time(lambda: pe.engine((weights, acts)), 5)}
    return {"threads": threads, "first_call_seconds": first, "first_call_mmacs_per_s": macs / first / 1e6,
            "prepared_call_seconds": repeated, "prepared_call_mmacs_per_s": macs / repeated / 1e6,
            "run_pe_prepared_seconds": whole, "arithmetic_mmacs_per_s": macs / parts["arithmetic_seconds"] / 1e6,
            **parts, "output": out}


def model_tensors(model: str, fmt: str) -> tuple[list, dict, float]:
    """The model's linear layers, one random quantized tensor per projection, the quantizing time."""
    spec = get_model(model)
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    tensors = {}
    for name, cout, cin in spec.linear_shapes():
        kind = name.rsplit(".", 1)[-1]
        if kind not in tensors:
            tensors[kind] = hwlab.quantize((rng.standard_normal((cout, cin)) * 0.02).astype(np.float32), fmt, 128)
    return spec.linear_shapes(), tensors, time.perf_counter() - start


def print_layers(layers, times, label: str) -> None:
    """Per-layer times in ms, one line per block (``layers.0``: q, k, v, o, gate, up, down; lm_head)."""
    lines: dict = {}
    for (name, _, _), t in zip(layers, times):
        block, _, kind = name.rpartition(".")
        lines.setdefault(block or name, []).append(f"{kind.removesuffix('_proj')} {1e3 * t:.2f}")
    for block, parts in lines.items():
        print(f"  {label} {block}: " + ", ".join(parts) + " ms", flush=True)


def decode_step(model: str, device: str, fmt: str, repeats: int = 1, check: bool = False) -> dict:
    layers, tensors, quantize_s = model_tensors(model, fmt)
    engine = pe.engine
    if device == "cuda":
        from numba import cuda

        from hwlab.sim import pe_cuda

        pe_cuda.engine_cuda(*warm_up_weights())  # compile both kernels
    prepared, prepare_s = {}, {}
    for kind, qt in tensors.items():  # as a model is loaded: once per tensor
        start = time.perf_counter()
        prepared[kind] = prepare_pe(qt, cache=False)
        if device == "cuda":
            pe_cuda.device_streams(prepared[kind])
            cuda.synchronize()
        prepare_s[kind] = time.perf_counter() - start
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((1, cin)).astype(np.float16) for _, _, cin in layers]
    kinds = [name.rsplit(".", 1)[-1] for name, _, _ in layers]
    steps, outputs = [], {}
    for rep in range(repeats):
        times = []
        for i, (kind, x) in enumerate(zip(kinds, xs)):
            w = prepared[kind]
            start = time.perf_counter()
            out = pe_cuda.engine_cuda(w, w.activations(x)) if device == "cuda" else engine((w, w.activations(x)))
            times.append(time.perf_counter() - start)
            if rep == 0 and check and (i < 7 or kind == "lm_head"):
                outputs[i] = out
        steps.append(times)
        print_layers(layers, times, f"{device} step {rep + 1}")
    macs = sum(cout * cin for _, cout, cin in layers)
    totals = [float(sum(t)) for t in steps]
    load_s = float(sum(prepare_s[k] for k in kinds))  # every layer prepared, at its tensor's measured time
    result = {"model": model, "device": device, "format": fmt, "layers": len(layers), "macs": macs,
              "seconds": float(np.median(totals)), "step_seconds": totals,
              "mmacs_per_s": macs / float(np.median(totals)) / 1e6, "per_layer_seconds": steps,
              "layer_names": [name for name, _, _ in layers], "quantize_seconds": quantize_s,
              "prepare_seconds_per_tensor": prepare_s, "prepare_seconds_all_layers": load_s,
              "seconds_with_preparation": float(np.median(totals)) + load_s,
              "prepared_bytes": int(sum(w.streams.nbytes for w in prepared.values()))}
    if check:  # the GPU's outputs against the CPU engine's, bit for bit
        result["bit_exact_layers_checked"] = len(outputs)
        result["bit_exact"] = bool(all(np.array_equal(
            out.view(np.uint32), pe.engine((prepared[kinds[i]], prepared[kinds[i]].activations(xs[i]))).view(np.uint32))
            for i, out in outputs.items()))
    return result


def warm_up_weights():
    w = prepare_pe(hwlab.quantize(np.random.default_rng(3).standard_normal((256, 512)).astype(np.float32),
                                  "bitmod_fp3", 128), cache=False)
    return w, w.activations(np.ones((1, 512), np.float16))


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
    parser.add_argument("--cuda-repeats", type=int, default=3, help="decode steps timed on the GPU")
    parser.add_argument("--skip-cpu", action="store_true", help="only the GPU engine")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    result = {"benchmark": "sim", "cpu": cpu_name(), "cores": os.cpu_count(), "numba": numba.__version__,
              "numpy": np.__version__, "python": platform.python_version(), "hwlab": hwlab.__version__,
              "commit": git_commit(), "date": utc_now(),
              "loadavg_before": os.getloadavg()}
    if not args.skip_cpu:
        rng = np.random.default_rng(0)
        qt = hwlab.quantize((rng.standard_normal(LAYER) * 0.02).astype(np.float32), "bitmod_fp4", 128)
        x = rng.standard_normal((1, LAYER[1])).astype(np.float16)
        runs = [layer_speed(qt, x, t) for t in (1, 2)]
        ops = pe.operands(x, qt)
        start = time.perf_counter()
        golden = pe.golden(ops)
        golden_s = time.perf_counter() - start
        exact = all(np.array_equal(golden.view(np.uint32), r["output"].view(np.uint32)) for r in runs) and \
            np.array_equal(golden.view(np.uint32), pe.engine(ops).view(np.uint32))
        two = runs[1]
        result["layer_4096x11008"] = {
            "runs": [{k: v for k, v in r.items() if k != "output"} for r in runs], "golden_seconds": golden_s,
            "bit_exact": bool(exact), "speedup_over_golden_first_call_2_threads": golden_s / two["first_call_seconds"],
            "speedup_over_golden_prepared_call_2_threads": golden_s / two["prepared_call_seconds"],
            "speedup_over_golden_run_pe_prepared_2_threads": golden_s / two["run_pe_prepared_seconds"]}
        for r in runs:
            print(f"layer 4096x11008 bitmod_fp4 batch 1, {r['threads']} thread(s): first call "
                  f"{r['first_call_seconds']:.3f} s ({r['first_call_mmacs_per_s']:.0f} MMAC/s), prepared call "
                  f"{r['prepared_call_seconds']:.4f} s ({r['prepared_call_mmacs_per_s']:.0f} MMAC/s), run_pe "
                  f"prepared {r['run_pe_prepared_seconds']:.4f} s; hand-off {r['handoff_seconds']:.3f} s, packing "
                  f"{r['pack_seconds']:.3f} s, arithmetic {r['arithmetic_seconds']:.4f} s", flush=True)
        print(f"golden {golden_s:.2f} s: {golden_s / two['first_call_seconds']:.1f}x (first call), "
              f"{golden_s / two['prepared_call_seconds']:.1f}x (prepared), bit-exact {exact}", flush=True)
        step = result["decode_step_cpu"] = decode_step("llama2-7b", "cpu", "bitmod_fp3")
        print(f"Llama-2-7B decode step, CPU: {step['seconds']:.2f} s prepared ({step['mmacs_per_s']:.0f} MMAC/s); "
              f"preparing every layer {step['prepare_seconds_all_layers']:.1f} s more", flush=True)
        result["analytical"] = analytical_speed()
        print(f"analytical: {result['analytical']}")
        result["term_skipping"] = term_skipping()
    if args.cuda:
        from numba import cuda

        name = cuda.get_current_device().name
        result["gpu"] = name.decode() if hasattr(name, "decode") else str(name)
        step = result["decode_step_cuda"] = decode_step("llama2-7b", "cuda", "bitmod_fp3", args.cuda_repeats, True)
        print(f"Llama-2-7B decode step, numba.cuda ({result['gpu']}): {step['seconds']:.3f} s median of "
              f"{args.cuda_repeats} ({', '.join(f'{t:.3f}' for t in step['step_seconds'])}); preparation (packing and "
              f"upload) {sum(step['prepare_seconds_per_tensor'].values()):.1f} s for 8 tensors; bit-exact "
              f"{step['bit_exact']} on {step['bit_exact_layers_checked']} layers", flush=True)
    result["loadavg_after"] = os.getloadavg()
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
