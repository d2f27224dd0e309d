"""Cycles of an edge SIMD core on a model's layers: instructions issued, dependencies, DRAM.

For each layer the kernel's instruction counts (:func:`hwlab.sim.simd.instruction_counts`, the
counts its functional run issues) give the compute time as the largest of four bounds:

* the SIMD pipes: every ASIMD instruction kind takes ``count / throughput`` cycles of the pipes
  they all share (the throughputs of the presets are per core, pipes included);
* the load/store pipe: ``LD1`` and ``ST1`` at their own throughput;
* issue: all instructions over ``issue_width``;
* dependency: a kernel keeps ``accumulators`` independent accumulator registers, each a chain of
  multiply-accumulates ``accumulate_latency`` cycles apart.

Memory: the weights (code bits plus a 16-bit scale per output channel), activations and outputs
stream at ``dram_gbps``; weights are read once per layer (a decode-step working set far above the
caches). The layer takes the larger of compute and memory (prefetch overlaps them).
"""
from __future__ import annotations

import numpy as np

from .edge import EdgeCore, get_edge_preset
from .report import Report
from .simd import EdgeError, instruction_counts
from .workload import Workload

LOAD_STORE = ("ld1", "st1")
ACCUMULATE = ("fmla_h", "fmla_s", "sdot", "smull", "mla")  # the accumulating instruction of each kernel
BITS = {"fp16": (16, 16), "w8a8": (8, 8), "w4a8": (4, 8), "w4a4": (4, 4)}  # (weight bits, activation bits)
SCALE_BITS = 16  # an fp16 scale per output channel (TRIP's per-channel weights)


def kernel_for(act_bits: int, weight_bits: int = 4) -> str:
    """The kernel of ``act_bits`` activations (16: the fp16 baseline) and ``weight_bits`` weights."""
    for name, (w, a) in BITS.items():
        if a == act_bits and (w == weight_bits or name == "fp16"):
            return name
    raise EdgeError(f"no kernel for {weight_bits}-bit weights and {act_bits}-bit activations; "
                    f"expected act_bits 16 (fp16), 8 (w4a8, w8a8) or 4 (w4a4)")


def compute_cycles(core: EdgeCore, counts: dict) -> tuple[float, dict]:
    """Compute cycles of ``counts`` on ``core`` and each bound (``pipes``, ``load_store``, ``issue``, ``chain``)."""
    missing = [op for op, c in counts.items() if c and not core.has(op)]
    if missing:
        raise EdgeError(f"{core.name} has no {missing[0]} instruction (kernel counts name {missing})")
    bounds = {
        "pipes": sum(c / core.throughput[op] for op, c in counts.items() if c and op not in LOAD_STORE),
        "load_store": max((counts.get(op, 0) / core.throughput[op] for op in LOAD_STORE if core.has(op)), default=0.0),
        "issue": sum(counts.values()) / core.issue_width,
        "chain": sum(counts.get(op, 0) for op in ACCUMULATE) / core.accumulators * core.accumulate_latency,
    }
    return max(bounds.values()), bounds


def layer_bytes(kernel: str, m: int, n: int, k: int, weight_batch: int = 1) -> tuple[int, int, int]:
    """``(weight, input, output)`` bytes of one layer (fp16 outputs)."""
    wbits, abits = BITS[kernel]
    scale = 0 if kernel == "fp16" else SCALE_BITS * n
    return (weight_batch * (n * k * wbits + scale) // 8, weight_batch * m * k * abits // 8, weight_batch * m * n * 2)


def simulate_edge(core, workload: Workload, act_bits: int = 8, weight_bits: int = 4, *,
                  attention_fp16: bool = True) -> Report:
    """Cycles of ``workload`` on edge ``core`` (a preset name or :class:`EdgeCore`): the linear layers
    with the TRIP kernel of ``act_bits``/``weight_bits`` (16: the fp16 baseline), attention in fp16."""
    core = get_edge_preset(core)
    linear = kernel_for(act_bits, weight_bits)
    names, kinds, kernels, macs, comp, mem, cyc, wb, ib, ob, bound = ([] for _ in range(11))
    layer_counts = []
    for op in workload.ops:
        kernel = "fp16" if (op.is_attention and attention_fp16) else linear
        m, n, k = op.batch * op.tokens, op.cout, op.cin
        counts = instruction_counts(kernel, core, m, n, k)
        counts = {o: c * op.weight_batch for o, c in counts.items()}
        c, bounds = compute_cycles(core, counts)
        w, i, o = layer_bytes(kernel, m, n, k, op.weight_batch)
        memory = (w + i + o) / core.dram_bytes_per_cycle
        names.append(op.name), kinds.append(op.kind), kernels.append(kernel), macs.append(op.macs * op.weight_batch)
        comp.append(int(np.ceil(c))), mem.append(int(np.ceil(memory))), cyc.append(int(np.ceil(max(c, memory))))
        wb.append(w), ib.append(i), ob.append(o)
        bound.append("memory" if memory >= c else max(bounds, key=bounds.get))
        layer_counts.append(counts)
    rows = {"name": np.array(names, dtype=object), "kind": np.array(kinds, dtype=object),
            "kernel": np.array(kernels, dtype=object), "macs": np.array(macs, np.int64),
            "compute_cycles": np.array(comp, np.int64), "memory_cycles": np.array(mem, np.int64),
            "cycles": np.array(cyc, np.int64), "bound": np.array(bound, dtype=object)}
    rows["stall_cycles"] = rows["cycles"] - rows["compute_cycles"]
    rows.update(weight_bytes=np.array(wb, np.int64), input_bytes=np.array(ib, np.int64),
                output_bytes=np.array(ob, np.int64))
    for instruction in sorted({o_ for counts in layer_counts for o_, v in counts.items() if v}):
        rows[f"instructions_{instruction}"] = np.array([c.get(instruction, 0) for c in layer_counts], np.int64)
    meta = {"kernel": linear, "act_bits": act_bits, "weight_bits": weight_bits if linear != "fp16" else 16,
            "energy": "not modelled for edge cores (no sourced per-instruction energies)"}
    return Report(core.name, workload.model, rows, core.clock_ghz, meta)


def instruction_totals(report: Report) -> dict:
    """Instruction kind -> total issued over the report's layers."""
    prefix = "instructions_"
    return {k[len(prefix):]: int(report.total(k)) for k in report.rows if k.startswith(prefix)}


# Agile-Quant (AAAI 2024) Table 4, Raspberry Pi 4B, seconds: FP16, W4A8, W4A4 (shared/REFERENCES.md). The
# paper gives the Snapdragon 870 only as ranges: about 1.7-1.8x with 8-bit activations, 2.3-2.5x with 4-bit.
PAPER_SECONDS_PI = {"opt-1.3b": (754.25, 411.0, 296.50), "llama2-7b": (1473.4, 810.25, 610.98)}
PAPER_RANGE_PHONE = {8: (1.7, 1.8), 4: (2.3, 2.5)}
PAPER_CORES = {"a72": "Raspberry Pi 4B", "a77": "Snapdragon 870"}


def paper_table(models=("opt-1.3b", "llama2-7b"), cores=("a72", "a77"), context: int = 256) -> list[dict]:
    """Predicted speedups over fp16 of one decode step beside Agile-Quant's measurements, with the
    term that bounds each quantized run (the largest compute bound, or memory)."""
    rows = []
    for core in cores:
        for model in models:
            workload = Workload.for_model(model, phase="decode", context=context)
            base = simulate_edge(core, workload, 16)
            for act_bits in (8, 4):
                rep = simulate_edge(core, workload, act_bits)
                predicted = rep.speedup_over(base)
                if core == "a72" and model in PAPER_SECONDS_PI:
                    fp16, w4a8, w4a4 = PAPER_SECONDS_PI[model]
                    low = high = fp16 / (w4a8 if act_bits == 8 else w4a4)
                else:
                    low, high = PAPER_RANGE_PHONE[act_bits]
                paper = (low + high) / 2
                rows.append(dict(core=core, device=PAPER_CORES[core], model=model, act_bits=act_bits,
                                 kernel=rep.meta["kernel"], predicted=predicted, paper_low=low, paper_high=high,
                                 off=predicted / paper - 1, bound=_dominant_bound(rep, rep.rows["kind"] == "linear"),
                                 fp16_bound=_dominant_bound(base), seconds_per_token=rep.seconds,
                                 fp16_seconds_per_token=base.seconds))
    return rows


def _dominant_bound(report: Report, rows=slice(None)) -> str:
    """The bound (memory or a compute bound) that holds for most of the cycles of ``rows``."""
    totals = {}
    for b, c in zip(report.rows["bound"][rows], report.rows["cycles"][rows]):
        totals[b] = totals.get(b, 0) + int(c)
    return max(totals, key=totals.get)


def format_paper_table(rows: list[dict]) -> str:
    lines = [f"{'device':16s} {'model':10s} {'act':>4s} {'kernel':6s} {'predicted':>9s} {'paper':>11s} {'off':>6s}  bound"]
    for r in rows:
        paper = f"{r['paper_low']:.2f}" if r["paper_low"] == r["paper_high"] else f"{r['paper_low']:.1f}-{r['paper_high']:.1f}"
        lines.append(f"{r['device']:16s} {r['model']:10s} {r['act_bits']:>4d} {r['kernel']:6s} {r['predicted']:8.2f}x "
                     f"{paper:>10s}x {r['off']:+6.0%}  {r['bound']} (fp16: {r['fp16_bound']})")
    return "\n".join(lines)
