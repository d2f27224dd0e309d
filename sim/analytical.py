"""The analytical engine: cycles, traffic and energy of a workload on a PE-array accelerator.

For every op (the BitMoD authors' committed model, ``bitmod_sim/accelerator.py``, reproduced here
to the cycle; the numbers it reaches are in BENCHMARKS.md and ``tests/test_sim_analytical.py``):

* **tiles** ``= ceil(cin / macs_per_pe) * ceil(cout / rows) * ceil(tokens / cols) * batch``: output
  channels on the array's rows, tokens on its columns, ``macs_per_pe`` input channels per step;
* **compute cycles** ``= tiles * pe_latency``, the latency ``ceil(floor(bits) / 2)`` of a bit-serial
  PE (weight bits for linear layers, KV bits for attention), 1 otherwise;
* **bytes**: weights ``ceil(cin * bits / 8) * cout * weight_batch`` at their stored bits (scales
  included), inputs and outputs at the activation bits;
* **refetch**: when both the weights and the inputs of an op exceed their SRAMs, the cheaper of
  re-streaming the weights once per input tile or the inputs once per weight tile (ties: inputs);
* **memory cycles** ``= floor((weights * refetch + outputs + inputs * refetch) * 8 / dram_bits)``;
* **latency**: ``overlap="max"`` (the authors': compute and DRAM fully overlapped, ``max``),
  ``"double_buffer"`` (SRAM halves ping-pong: the max plus the one step that cannot overlap, the
  op cut into steps that each fill half of both SRAMs) or ``"serial"`` (``compute + memory``);
* **energy**: PE ``pe_energy_pj * pe_energy_scale * rows * cols`` per compute cycle; SRAM one
  full-width read of each SRAM per tile and writes of every byte brought in (64-bit granules; the
  access energy by port width from :mod:`hwlab.sim.sram`); DRAM ``dram_pj_per_bit`` per bit moved.

Ops are summed (no overlap between ops). Everything is vectorised over ops: a whole model for all
four presets takes milliseconds.
"""
from __future__ import annotations

import numpy as np

from .config import HWConfig, get_preset
from .report import Report
from .sram import access_energy
from .workload import Workload

BITS_PER_BYTE = 8
WRITE_GRANULE_BITS = 64  # SRAM write energy is charged per 64-bit granule (accelerator.py)


def simulate(workload, preset_or_config="bitmod", wbits: float | None = None, *, kv_bits: float | None = None,
             stored_bits: float | None = None, phase: str | None = None, compute_cycles=None) -> Report:
    """The analytical :class:`~hwlab.sim.report.Report` of ``workload`` on an accelerator.

    ``workload``: a :class:`~hwlab.sim.workload.Workload`, or a list of ``(out, in)`` shapes
    (linear layers at one token, ``phase`` decode). ``wbits``: code bits of the linear weights
    (default: the configuration's for the phase); ``stored_bits``: bits per weight in DRAM
    (default: ``wbits`` plus the configuration's scale overhead); ``kv_bits``: the KV cache's
    (default: the configuration's). ``compute_cycles`` (one per op) replaces the tile count's, for
    the functional engine, which counts the terms it processes.
    """
    cfg = get_preset(preset_or_config) if not isinstance(preset_or_config, HWConfig) else preset_or_config
    if not isinstance(workload, Workload):
        workload = Workload.from_shapes(workload, phase=phase or "decode")
    phase = workload.phase
    wbits = cfg.weight_bits(phase) if wbits is None else _bits("wbits", wbits)
    kv = cfg.kv_bits if kv_bits is None else _bits("kv_bits", kv_bits)
    stored = cfg.stored_bits(wbits) if stored_bits is None else _bits("stored_bits", stored_bits)
    rows, cols = cfg.array(phase)
    dp, act = cfg.macs_per_pe, cfg.act_bits
    ops = workload.ops
    attention = np.array([op.is_attention for op in ops])
    col = {k: np.array([getattr(op, k) for op in ops], dtype=np.float64)
           for k in ("weight_batch", "cout", "cin", "batch", "tokens")}
    cin, cout, tokens, batch = col["cin"], col["cout"], col["tokens"], col["batch"]
    bits = np.where(attention, kv, stored)
    latency = np.where(attention, cfg.pe_latency(kv), cfg.pe_latency(wbits))
    tiles = np.ceil(cin / dp) * np.ceil(cout / rows) * np.ceil(tokens / cols) * batch
    compute = tiles * latency if compute_cycles is None else np.asarray(compute_cycles, dtype=np.float64)
    w_bytes = np.ceil(cin * bits / BITS_PER_BYTE) * cout * col["weight_batch"]
    i_bytes = np.ceil(cin * act / BITS_PER_BYTE) * tokens * batch
    o_bytes = np.ceil(cout * act / BITS_PER_BYTE) * tokens * batch
    fetch_w, fetch_i = _refetch(w_bytes, i_bytes, cfg.weight_sram_kib * 1024, cfg.input_sram_kib * 1024)
    bw = cfg.dram_bits_per_cycle
    memory = np.floor(w_bytes * BITS_PER_BYTE / bw * fetch_w + o_bytes * BITS_PER_BYTE / bw
                      + i_bytes * BITS_PER_BYTE / bw * fetch_i)  # the authors' order of the float sum, then int()
    cycles = _latency(cfg, compute, memory, w_bytes * fetch_w + i_bytes * fetch_i)
    energy = _energy(cfg, rows, cols, wbits, tiles, compute, cin, cout, tokens, batch, col["weight_batch"], bits,
                     fetch_w, fetch_i, w_bytes, i_bytes, o_bytes)
    table = {"name": np.array([op.name for op in ops]), "kind": np.array([op.kind for op in ops]),
             "macs": np.array([op.macs for op in ops], dtype=np.int64), "tiles": tiles.astype(np.int64),
             "compute_cycles": compute.astype(np.int64), "memory_cycles": memory.astype(np.int64),
             "cycles": cycles.astype(np.int64), "stall_cycles": (cycles - compute).astype(np.int64),
             "weight_bytes": w_bytes.astype(np.int64), "input_bytes": (i_bytes * fetch_i).astype(np.int64),
             "output_bytes": o_bytes.astype(np.int64), "weight_refetch": fetch_w.astype(np.int64),
             "input_refetch": fetch_i.astype(np.int64), **energy}
    return Report(cfg.name, f"{workload.model} {phase} (batch {workload.batch}, context {workload.context})", table,
                  cfg.clock_ghz, {"engine": "analytical", "phase": phase, "wbits": wbits, "stored_bits": stored,
                                  "kv_bits": kv, "array": [rows, cols]})


def _bits(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not 1 <= value <= 32:
        raise ValueError(f"{name} must be a number of bits in 1..32, got {value!r}")
    return float(value)


def _refetch(w_bytes, i_bytes, w_sram, i_sram):
    """Times the weights and the inputs are streamed from DRAM (accelerator.py, buffer refetch)."""
    both = (w_bytes > w_sram) & (i_bytes > i_sram)
    refetch_inputs = np.ceil(w_bytes / w_sram)  # "num_refetch_input": once per weight tile
    refetch_weights = np.ceil(i_bytes / i_sram)  # once per input tile
    weights_cheaper = refetch_weights * w_bytes + i_bytes < refetch_inputs * i_bytes + w_bytes
    fetch_w = np.where(both & weights_cheaper, refetch_weights, 1.0)
    fetch_i = np.where(both & ~weights_cheaper, refetch_inputs, 1.0)
    return fetch_w, fetch_i


def _latency(cfg: HWConfig, compute, memory, streamed_bytes):
    if cfg.overlap == "max":
        return np.maximum(compute, memory)
    if cfg.overlap == "serial":
        return compute + memory
    half = (cfg.weight_sram_kib + cfg.input_sram_kib) * 1024 / 2  # one ping-pong half of both SRAMs
    steps = np.maximum(1.0, np.ceil(streamed_bytes / half))
    return np.maximum(compute, memory) + np.floor(np.minimum(compute, memory) / steps)


def _energy(cfg, rows, cols, wbits, tiles, compute, cin, cout, tokens, batch, weight_batch, bits, fetch_w, fetch_i,
            w_bytes, i_bytes, o_bytes) -> dict:
    """Energy columns in pJ: PE, SRAM (reads and writes), DRAM (accelerator.py, mem/)."""
    serial = 2 if cfg.bit_serial else 1  # a bit-serial PE reads half as many bits per cycle
    w_port = cfg.macs_per_pe * np.ceil(cfg.stored_bits(wbits) / 4) * 4 * rows / serial
    i_port = cfg.macs_per_pe * cfg.act_bits * cols / serial
    w_read, w_write = (cfg.sram_read_pj, cfg.sram_write_pj) if cfg.sram_read_pj is not None else access_energy(w_port)
    i_read, i_write = (cfg.sram_read_pj, cfg.sram_write_pj) if cfg.sram_read_pj is not None else access_energy(i_port)
    if cfg.sram_write_pj is not None:
        w_write = i_write = cfg.sram_write_pj
    w_granule = w_write / (w_port / WRITE_GRANULE_BITS)
    i_granule = i_write / (i_port / WRITE_GRANULE_BITS)
    g = WRITE_GRANULE_BITS
    writes = (np.ceil(cin * bits / g) * cout * weight_batch * w_granule * fetch_w
              + np.ceil(cin * cfg.act_bits / g) * tokens * batch * i_granule * fetch_i
              + np.ceil(cout * cfg.act_bits / g) * tokens * batch * i_granule)
    return {"energy_pe_pj": cfg.pe_energy_pj * cfg.pe_energy_scale * rows * cols * compute,
            "energy_sram_pj": tiles * (w_read + i_read) + writes,
            "energy_dram_pj": (w_bytes * fetch_w + i_bytes * fetch_i + o_bytes) * BITS_PER_BYTE * cfg.dram_pj_per_bit}
