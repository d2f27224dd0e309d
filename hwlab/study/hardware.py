"""Cycles and energy of the studied model's layers on the simulators' machines, per format.

* **PE-array accelerators** (:func:`hwlab.sim.simulate`, the BitMoD authors' analytical model):
  each format at its code bits, its weights in DRAM at the bits per weight it really stores.
  Which preset runs which format:

  - ``bitmod``: the bit-serial shift-and-add PE runs every format the functional engine accepts
    (:mod:`hwlab.sim.pe`: an exact sign/magnitude/exponent decomposition and no zero points); the
    others are left out with the engine's own reason;
  - ``ant``: ANT's 4-bit types that hwlab defines, ``int4`` and ``flint4`` (Guo et al., MICRO 2022;
    its PoT type is not an hwlab format);
  - ``olive``: OliVe's 4-bit outlier-victim pairs, ``olive4`` (Guo et al., ISCA 2023);
  - ``fp16``: the baseline, its own 16-bit weights whatever the format (one run, the speedups'
    reference).

* **Edge SIMD cores** (:func:`hwlab.sim.edge_engine.simulate_edge`, presets ``a72``, ``a77``): the
  TRIP kernels take symmetric integer weights of 4 or 8 bits with one fp16 scale per output
  channel, so ``int4`` (w4a8 and w4a4) and ``int8`` (w8a8) run, beside the fp16 baseline; the
  group size does not enter this model, and edge energy is not modelled (no sourced
  per-instruction energies).

The workload is the model's linear layers and attention for one sequence of
:data:`SIM_TOKENS` tokens (an encoder reads its whole input at once: the prefill phase).
"""
from __future__ import annotations

from hwlab.sim import HWConfig, Op, Workload, get_preset, simulate
from hwlab.sim.edge import ALIASES as EDGE_ALIASES
from hwlab.sim.edge import PRESETS as EDGE_PRESETS
from hwlab.sim.edge import EdgeCore, get_edge_preset
from hwlab.sim.edge_engine import simulate_edge
from hwlab.sim.pe import PEError, term_table

ACCELERATORS = ("bitmod", "ant", "olive")
BASELINE = "fp16"
EDGE_CORES = ("a72", "a77")
# the formats the bit-parallel presets' PEs are built for (module docstring; fp16: its own 16-bit weights only)
PRESET_FORMATS = {"ant": ("int4", "flint4"), "olive": ("olive4",), "fp16": ()}
EDGE_KERNELS = {"int4": ((4, 8), (4, 4)), "int8": ((8, 8),)}  # format -> (weight bits, activation bits) of TRIP
SIM_TOKENS = 128  # tokens of the simulated sequence: a paragraph (the shipped sentences average 14)


def workload(shapes: dict, heads: int | None = None, tokens: int = SIM_TOKENS) -> Workload:
    """Prefill of one ``tokens``-long sequence through linear layers ``name -> (out, in)`` and, when
    ``heads`` is given (a transformer's attention heads), the attention of every block."""
    ops = [Op(name, "linear", 1, out, cin, 1, tokens) for name, (out, cin) in shapes.items()]
    if heads is not None:
        blocks = sorted({name.split(".")[2] for name in shapes if name.startswith("encoder.layer.")}, key=int)
        hidden = next(iter(shapes.values()))[1]
        for b in blocks:  # sim.workload's attention ops: K as the weight of Q K^T, V^T of P V, per head
            ops.append(Op(f"encoder.layer.{b}.attn_qk", "attn_qk", heads, tokens, hidden // heads, heads, tokens))
            ops.append(Op(f"encoder.layer.{b}.attn_v", "attn_v", heads, hidden // heads, tokens, heads, tokens))
    return Workload(tuple(ops), "prefill", 1, tokens, "study")


def accelerator_support(cfg: HWConfig, qt) -> str | None:
    """``None`` if accelerator ``cfg`` runs ``qt``'s format, else the reason it does not (module docstring;
    a configuration that is not a preset: the bit-serial PE's rule if ``bit_serial``, else any format)."""
    name = qt.format_name
    if cfg.name in PRESET_FORMATS:
        allowed = PRESET_FORMATS[cfg.name]
        return None if name in allowed else f"{cfg.name} PEs run {', '.join(allowed) or 'fp16 weights'} only"
    if not cfg.bit_serial:
        return None
    u = qt.unpacked()
    if u.zeros is not None:
        return f"{name} is affine (zero points): the bit-serial PE has no activation-sum path"
    try:
        term_table(qt.format, u.values)
    except PEError as exc:
        return str(exc)
    return None


def _row(machine: str, report, baseline=None, **extra) -> dict:
    energy = report.energy_components
    row = {"machine": machine, **extra, "cycles": report.total_cycles, "compute_cycles": report.compute_cycles,
           "stall_cycles": report.stall_cycles, "seconds": report.seconds,
           "energy_pj": report.energy_pj if energy else None,
           **{f"energy_{k}_pj": v for k, v in energy.items()}}
    if baseline is not None:
        row["speedup_over_fp16"] = report.speedup_over(baseline)
        if energy:
            row["energy_saving_over_fp16"] = baseline.energy_pj / report.energy_pj
    return row


def baselines(work: Workload) -> list[dict]:
    """The fp16 runs every speedup is measured against: the fp16 accelerator and each edge core's fp16 kernel."""
    return [baseline_run(BASELINE, work)] + [baseline_run(core, work) for core in EDGE_CORES]


def baseline_run(machine, work: Workload) -> dict:
    """The fp16 run of ``machine``: the fp16 accelerator for a PE array, the fp16 kernel on an edge core."""
    if isinstance(machine, EdgeCore) or machine in EDGE_PRESETS or machine in EDGE_ALIASES:
        core = get_edge_preset(machine)
        return _row(core.name, simulate_edge(core, work, 16), kind="edge", kernel="fp16")
    return _row(BASELINE, simulate(work, BASELINE), kind="accelerator", kernel="fp16")


def machine_runs(machine, work: Workload, qt, bits_per_weight: float) -> tuple[list[dict], str | None]:
    """``(rows, reason)``: the runs of ``qt``'s format on ``machine`` (an accelerator preset or
    :class:`~hwlab.sim.HWConfig`, an edge preset or :class:`~hwlab.sim.edge.EdgeCore`), each with
    cycles, energy and the speedup over the fp16 baseline; no rows and the reason where the
    machine does not run the format."""
    if isinstance(machine, EdgeCore) or machine in EDGE_PRESETS or machine in EDGE_ALIASES:
        core = get_edge_preset(machine)
        kernels = EDGE_KERNELS.get(qt.format_name)
        if kernels is None:
            return [], "the edge TRIP kernels take int4 or int8 weights only"
        base = simulate_edge(core, work, 16)
        return [_row(core.name, report, base, kind="edge", kernel=report.meta["kernel"])
                for report in (simulate_edge(core, work, abits, wbits) for wbits, abits in kernels)], None
    cfg = get_preset(machine)
    reason = accelerator_support(cfg, qt)
    if reason is not None:
        return [], reason
    report = simulate(work, cfg, float(qt.format.bits), stored_bits=bits_per_weight)
    return [_row(cfg.name, report, simulate(work, BASELINE), kind="accelerator", kernel=qt.format_name)], None


def simulate_variant(work: Workload, qt, bits_per_weight: float) -> tuple[list[dict], list[dict]]:
    """``(rows, skipped)`` over the study's machines (:data:`ACCELERATORS`, :data:`EDGE_CORES`): the
    runs of ``qt``'s format, and one ``{machine, reason}`` per machine that does not run it."""
    rows, skipped = [], []
    for machine in ACCELERATORS + EDGE_CORES:
        runs, reason = machine_runs(machine, work, qt, bits_per_weight)
        rows += runs
        if reason is not None:
            skipped.append({"machine": machine, "reason": reason})
    return rows, skipped
