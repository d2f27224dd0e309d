"""A GPU model of weight-only quantized matmul: time from bytes, bandwidth, launches and decode work.

``predict(gpu, fmt, m, k, n)`` estimates what one ``hwlab.kernels.matmul`` call costs:

* memory: every stored byte of W (codes, scales, zero points, type ids: ``bits_per_weight``),
  x and y, at ``copy_GBps * stream_fraction`` (the fraction of the device copy rate a Triton
  kernel that only streams packed words reaches); split-K adds its float32 workspace traffic;
* decode work: the SASS instructions per code of the kernel that runs, weighed by the pipe each
  opcode issues to (``weighted_per_code``: warp shuffles, shared and local memory and conversions
  issue at a quarter to an eighth of the FP32 rate; counted statically by
  ``bench/kernel_instructions.py``, kept in ``sim/data/kernel_instructions.json``), times the codes
  decoded (``N * K`` once per batch tile of ``BM`` rows), over the issue rate of the SMs
  (``sms * 4 schedulers * 32 lanes * clock * issue_efficiency``; ``pair_tile_efficiency`` for the
  fp16-pair tensor-core tiles, ``Launch.half_pairs``, which issue their few instructions a code at
  about half the rate of the other loops: Triton's ``tile_dot`` and the CUDA kernel ``int_mma_cupy``,
  whose chunk loop ``bench/kernel_instructions.py --kernels int_mma`` counts from nvcc's SASS);
* occupancy: the programs an SM holds at once (:meth:`GPUConfig.programs_per_sm`: the kernel's registers a thread,
  warps and shared memory, as compiled and counted in the same table, against the SM's limits), or the programs of
  the grid an SM gets where there are fewer (:attr:`GPUPrediction.warps_per_sm`). A launch of one batch
  row (``BM = 1``: the GEMVs and the one-row tile) issues at ``issue_efficiency`` only with at least
  ``one_row_latency_warps`` warps resident an SM, and proportionally slower with fewer: each warp of these loops
  waits on its own chain of dependent instructions, so the issue rate grows with the warps resident. The batch
  tiles' efficiencies were fitted at their own occupancies (8-32 warps an SM) and their errors show no trend
  with it (run 14), so they take no such factor;
* the two overlap: the kernel takes the larger, plus ``kernel_us`` (start and tail); split-K
  is one launch (its workspace is left zeroed by the kernel);
* ``graph_us`` is that device time (a call inside a CUDA graph); ``us`` (a call launched from
  Python, as ``triton.testing.do_bench`` times it) cannot be shorter than the host's
  ``host_call_us`` per call (checks, the launch, the output allocation).

Presets ``h200`` and ``h100`` give every constant with its source. The benchmark script prints
the prediction beside each measurement (``bench/gpu_kernels.py``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os

DATA = os.path.join(os.path.dirname(__file__), "data", "kernel_instructions.json")
LANES, SCHEDULERS = 32, 4  # threads a warp; warp schedulers per SM (Hopper, NVIDIA H100 white paper)
# How CUDA's occupancy calculator (cuda_occupancy.h, compute capability 9.0) allocates an SM: registers to a warp in
# units of 256, from one of the SM's four sub-partitions (a quarter of its registers each: a warp's registers never
# span two); shared memory to a program in units of 128 bytes. A thread may address at most 255 registers and a
# program hold at most 32 warps (1024 threads; CUDA C++ Programming Guide, "Technical Specifications per Compute
# Capability")
REGISTER_UNIT, SHARED_UNIT, MAX_REGISTERS, MAX_PROGRAM_WARPS = 256, 128, 255, 32
MAX_DIMENSION = 1 << 26  # the largest M, K or N predict takes: N * K stays within float64's exact integers (2**53)
# the range of a GPUConfig constant: a machine past it predicts times of no use (1e-6 GHz: years a layer), and
# every time stays a float far from overflow
MIN_CONSTANT, MAX_CONSTANT = 1e-6, 1e12


@dataclasses.dataclass(frozen=True)
class GPUConfig:
    """Constants of one GPU (units in the names)."""

    name: str
    sms: int
    clock_ghz: float
    copy_gbps: float  # device-to-device copy, read + write bytes over time
    stream_fraction: float  # of copy_gbps, reached by a Triton kernel that only streams packed words (the preset says
    # which clock: a CUDA graph where measured so, as the model predicts graph times; do_bench for the H200)
    issue_efficiency: float  # of the peak warp-instruction issue rate, reached by a decode-bound loop
    l2_mb: float
    kernel_us: float  # a kernel's start and tail on the device
    host_call_us: float  # host time of one hwlab matmul call from Python (checks, allocation, launch)
    pair_tile_efficiency: float  # issue_efficiency of tile_dot's fp16-pair decode (Launch.half_pairs)
    weights_first_efficiency: float  # issue_efficiency of a tile with the weights first (Launch.weights_first)
    # resident warps an SM below which a launch of one batch row issues proportionally slower than issue_efficiency:
    # the occupancy of the launches issue_efficiency was fitted to (int4's GEMV: 128 registers, four 4-warp programs);
    # run 16's ncu of int2's GEMV (bench/results/ncu_int2_gemv_h100_run16.txt: 168 registers, 12 warps) and its
    # register cap (register_cap_probe_h100_run16.json: 34.4 us at 168, 29.4 at 128) and run 14's one-row loops of
    # 8 and 12 warps at K=8192 N=28672 (int3, bitmod_fp3, olive4: 23-50% under their times without it, within 8%
    # with it)
    one_row_latency_warps: int = 16
    # the SM's limits, compute capability 9.0 (CUDA C++ Programming Guide, "Technical Specifications per Compute
    # Capability"): 64 K 32-bit registers, 64 resident warps, 32 resident blocks, 228 KB of shared memory of which
    # a block may use 227 KB, and 1 KB the system reserves for each block (the guide's "Shared Memory" section)
    registers_per_sm: int = 65536
    max_warps_per_sm: int = 64
    max_programs_per_sm: int = 32
    shared_bytes_per_sm: int = 228 * 1024
    max_shared_bytes_per_program: int = 227 * 1024
    reserved_shared_bytes: int = 1024

    def __post_init__(self):
        positive = ("sms", "clock_ghz", "copy_gbps", "stream_fraction", "issue_efficiency", "l2_mb",
                    "pair_tile_efficiency", "weights_first_efficiency", "one_row_latency_warps", "registers_per_sm",
                    "max_warps_per_sm", "max_programs_per_sm", "shared_bytes_per_sm", "max_shared_bytes_per_program")
        counts = ("sms", "one_row_latency_warps", "registers_per_sm", "max_warps_per_sm", "max_programs_per_sm",
                  "shared_bytes_per_sm", "max_shared_bytes_per_program", "reserved_shared_bytes")
        for field in dataclasses.fields(self)[1:]:
            value = getattr(self, field.name)
            if field.name in counts:  # an integer, up to MAX_CONSTANT (so every product stays a float)
                number = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value <= MAX_CONSTANT
            else:
                number = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                          and (value == 0 or MIN_CONSTANT <= abs(value) <= MAX_CONSTANT))
            if not (number and (value > 0 if field.name in positive else value >= 0)):
                low = 1 if field.name in positive else 0
                kind = (f"an integer from {low}" if field.name in counts else
                        f"a number from {MIN_CONSTANT:g}" if low else f"0 or a number from {MIN_CONSTANT:g}")
                raise ValueError(f"GPUConfig {self.name!r}: {field.name} must be {kind} to {MAX_CONSTANT:g}, "
                                 f"got {value!r:.60}")
        for name in ("stream_fraction", "issue_efficiency", "pair_tile_efficiency", "weights_first_efficiency"):
            if getattr(self, name) > 1:
                raise ValueError(f"GPUConfig {self.name!r}: {name} is a fraction of a peak, at most 1, got "
                                 f"{getattr(self, name)!r}")
        if self.max_shared_bytes_per_program > self.shared_bytes_per_sm:
            raise ValueError(f"GPUConfig {self.name!r}: max_shared_bytes_per_program "
                             f"({self.max_shared_bytes_per_program}) exceeds shared_bytes_per_sm "
                             f"({self.shared_bytes_per_sm})")

    def issue_rate(self, pair_tile: bool = False, weights_first: bool = False) -> float:
        """Thread-instructions per microsecond at ``issue_efficiency`` (``pair_tile_efficiency`` for an
        fp16-pair tile, ``weights_first_efficiency`` for a tile whose decoded weights are the MMA's first
        operand)."""
        efficiency = (self.weights_first_efficiency if weights_first else self.pair_tile_efficiency if pair_tile
                      else self.issue_efficiency)
        return self.sms * SCHEDULERS * LANES * self.clock_ghz * 1e3 * efficiency

    def programs_per_sm(self, registers: int, warps: int, shared_bytes: int = 0) -> int:
        """Programs (CUDA blocks) of ``warps`` warps, each thread using ``registers`` registers and the program
        ``shared_bytes`` bytes of shared memory, that one SM holds at once: the fewest its registers, warps,
        block slots and shared memory allow, by the rules of CUDA's occupancy calculator (:data:`REGISTER_UNIT`,
        with the largest shared-memory carve-out). ``ValueError`` for a program no SM of this GPU can hold."""
        registers = _count("registers", registers, 1, MAX_REGISTERS, self.name)
        warps = _count("warps", warps, 1, min(MAX_PROGRAM_WARPS, self.max_warps_per_sm), self.name)
        shared_bytes = _count("shared_bytes", shared_bytes, 0, self.max_shared_bytes_per_program, self.name)
        warp_registers = -(-registers * LANES // REGISTER_UNIT) * REGISTER_UNIT
        program_shared = -(-(shared_bytes + self.reserved_shared_bytes) // SHARED_UNIT) * SHARED_UNIT
        programs = min(self.registers_per_sm // SCHEDULERS // warp_registers * SCHEDULERS // warps,
                       self.max_warps_per_sm // warps, self.max_programs_per_sm,
                       self.shared_bytes_per_sm // program_shared)
        if programs < 1:
            raise ValueError(f"no SM of {self.name} holds a program of {warps} warps at {registers} registers a thread "
                             f"and {shared_bytes} bytes of shared memory")
        return programs


def _count(name: str, value, low: int, high: int, gpu: str) -> int:
    """``value`` as a Python int, if it is an integer (a numpy one too) in ``[low, high]``; else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}] for a program on {gpu}; got {value!r}")
    return int(value)


PRESETS = {
    # H200 SXM: 132 SMs, 1.98 GHz boost, 60 MB L2 (NVIDIA H200 datasheet); copy 4270 GB/s and the
    # streaming kernel's 0.74 of it measured on the lent H200 (shared/REFERENCES.md, GPU limits).
    # issue_efficiency 0.62 and kernel_us 3: fitted to the CUDA-graph times of the first H200 run
    # (bench/results/gpu_kernels_h200_76b8199.json, K=8192 N=28672, int4, int8, nf4, fp4_e2m1 and
    # mixed_2_4 at M=1 and 16) with the weighted counts of those kernels (see tests/test_gpu_model.py).
    # host_call_us 12: an estimate, to be remeasured: 5-8 us of Python a call measured on CPU with
    # the launch stubbed out (prepared launch, /work/notes/sections/kernels_perf.md) plus Triton's C
    # launcher and cuLaunchKernelEx (about 4 us).
    # pair_tile_efficiency 0.31: the median over the fp16-pair tiles of the H200 run of their tiles
    # (bench/results/gpu_launch_variants_h200_run7.json, call 3: int4, int4_asym, int2, ternary, int8,
    # fp4_e2m1, fp8_e4m3 at M = 16 and 64, K=8192 N=28672; 0.29-0.41 on the decode-bound rows): their
    # static count halved against the float32 tile decode while their time fell by a third.
    # The same rate for int_mma_cupy (fp16 pairs into mma.sync's registers; not fitted to it): H200 run 13, int4
    # K=8192 N=28672, CUDA graph (bench/results/cupy_mma_probe_h200_run13_call3.json): M = 4 predicted 58.0 us
    # against 46.5 measured (+25%), M = 16 62.3 against 71.3 (-13%); tests/test_gpu_model.py.
    # weights_first_efficiency 0.18: the median over the weights-first fp16-pair tiles at M = 64 of run 8
    # (bench/results/gpu_kernels_h200_run8.json: int4, int4_asym, int2, int8, ternary, fp4_e2m1, fp8_e4m3,
    # 0.16-0.22), their counts (wgmma from registers) lower again while their time fell by a fifth; TRIP's
    # int8 kernel (weights first too, not fitted) then comes within 25% of its measured time.
    "h200": GPUConfig("h200", 132, 1.98, 4270.0, 0.74, 0.62, 60.0, 3.0, 12.0, pair_tile_efficiency=0.31,
                      weights_first_efficiency=0.18),
    # H100 SXM 80GB: 132 SMs, 1.98 GHz, 50 MB L2 (NVIDIA H100 white paper); copy 3020 GB/s measured
    # with the same peers script (shared/REFERENCES.md); the other constants as on the H200. stream_fraction 0.97:
    # bench/stream_probe.py's streaming kernel on the lent H100 in a CUDA graph, the clock the model predicts (W4,
    # K=8192 N=28672, 39.7 us; bench/results/stream_h100_run15_call{1,2}.json). Under do_bench it moved 0.75, the
    # H200's 0.74 of REFERENCES.md: do_bench zeroes 256 MB before each call, and the L2's dirty lines are written
    # back during the call timed (events around each call without that flush: 0.93). With the H200's 0.74 int4's
    # GEMV was predicted at 57.2 us against 46.2 in a graph (run 14), with 0.97 at 44.4. The flush is not modelled:
    # ``us`` of a memory-bound row is short of do_bench's time on the H100 (int4 M=1: 44.4 against 53.6).
    "h100": GPUConfig("h100", 132, 1.98, 3020.0, 0.97, 0.62, 50.0, 3.0, 12.0, pair_tile_efficiency=0.31,
                      weights_first_efficiency=0.18),
}


@dataclasses.dataclass(frozen=True)
class GPUPrediction:
    """Predicted time of one matmul call and its terms, microseconds."""

    us: float  # a call launched from Python
    graph_us: float  # a call inside a CUDA graph: the device time
    memory_us: float
    decode_us: float
    overhead_us: float
    bound: str  # memory, decode or host
    kernel: str
    warps_per_sm: int  # warps resident an SM: programs_per_sm times the launch's warps, or fewer where the grid has
    # fewer programs an SM (int2's GEMV at 4096 x 4096: 256 programs on 132 SMs, two an SM)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# CUDA device names (torch.cuda.get_device_name) of the cards the presets describe, as the lent machines gave them
# (bench/results/nvidia-smi_h*.csv): the SXM cards. An H100 PCIe or NVL (114 or 132 SMs, 2.0 or 3.9 TB/s) or a GH200
# is another card, with no preset
DEVICE_PRESETS = {"NVIDIA H200": "h200", "NVIDIA H100 80GB HBM3": "h100"}


def preset_of(device_name) -> str | None:
    """The preset of a CUDA device by its name as the driver gives it (``"NVIDIA H100 80GB HBM3"``: ``h100``), or
    ``None`` for a GPU hwlab has no preset of (:data:`DEVICE_PRESETS`)."""
    return DEVICE_PRESETS.get(device_name) if isinstance(device_name, str) else None


def get_gpu(name) -> GPUConfig:
    """A preset by name (``h200``, ``h100``) or a :class:`GPUConfig` as it is."""
    if isinstance(name, GPUConfig):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown GPU preset {name!r}; expected one of {sorted(PRESETS)}") from None


@functools.lru_cache(maxsize=1)
def instruction_table() -> dict:
    """``(format, kernel, bm) -> row`` of ``sim/data/kernel_instructions.json`` (``weighted_per_code``, and the
    ``registers`` a thread, ``warps`` and ``shared_bytes`` the kernel compiled to)."""
    with open(DATA) as f:
        rows = json.load(f)["rows"]
    return {(r["format"], r["kernel"], r["bm"]): r for r in rows}


class UncountedLaunch(ValueError):
    """A launch the instruction table has no count of (``sim/data/kernel_instructions.json``)."""


def instruction_row(fmt: str, kernel: str, bm: int) -> dict:
    """The counted row of ``kernel`` for format ``fmt`` at ``bm`` batch rows (:class:`UncountedLaunch` if none)."""
    table = instruction_table()
    if (fmt, kernel, bm) not in table:
        launches = sorted({(k, b) for f, k, b in table if f == fmt})
        counted = (f"{fmt} is counted for " + ", ".join(f"{k} (BM={b})" for k, b in launches) if launches else
                   f"{fmt} has no counts ({len({f for f, _, _ in table})} formats have)")
        raise UncountedLaunch(f"no instruction count for {fmt} in {kernel} (BM={bm}): {counted}; "
                              f"bench/kernel_instructions.py --formats {fmt} counts it")
    return table[(fmt, kernel, bm)]


COUNTED_FIELDS = ("weighted_per_code", "registers", "warps", "shared_bytes")  # what predict reads of a counted row


def predict(gpu, fmt: str, m: int, k: int, n: int, *, bits_per_weight: float, launch,
            registers: int | None = None, counts: dict | None = None) -> GPUPrediction:
    """Predicted time of ``y[m, n] = x[m, k] @ W^T`` for a tensor of ``fmt`` stored at
    ``bits_per_weight``, run as ``launch`` (a :class:`hwlab.kernels.dispatch.Launch`).

    ``counts``: the counted row of the compiled launch (``bench/kernel_instructions.py``, whose ``--variant``
    counts a launch under other constants), default the table's row of ``fmt``, the launch's kernel and ``bm``.
    ``registers``: registers a thread of the compiled kernel, for a launch compiled otherwise than the one
    counted (default: the count's; a launch capped below them, ``Launch.registers``, takes its cap). Only the
    occupancy follows them: the spill code a cap makes the compiler add is not counted, so a cap that spills is
    predicted too fast (run 16: int2's GEMV at 96 registers took 35.7 us against 29.4 at 128); counting the
    capped launch (``counts``) takes its spill code in.
    """
    gpu = get_gpu(gpu)
    for name, value in (("m", m), ("k", k), ("n", n), ("the launch's bn", launch.bn), ("its split", launch.split)):
        _count(name, value, 1, MAX_DIMENSION, gpu.name)
    _count("the launch's bm", launch.bm, 0, MAX_DIMENSION, gpu.name)
    if not (isinstance(bits_per_weight, numbers.Real) and 0 < bits_per_weight <= 64):
        raise ValueError(f"bits_per_weight must be a number in (0, 64], got {bits_per_weight!r}")
    row = instruction_row(fmt, launch.kernel, launch.bm) if counts is None else counts
    missing = [f for f in COUNTED_FIELDS if not isinstance(row, dict) or f not in row]
    if missing:
        raise ValueError(f"counts must be a counted row of bench/kernel_instructions.py with {list(COUNTED_FIELDS)}; "
                         f"it lacks {missing}")
    per_code = row["weighted_per_code"]
    if not (isinstance(per_code, numbers.Real) and 0 < per_code < MAX_CONSTANT):
        raise ValueError(f"the counted weighted_per_code of {fmt} must be a positive number, got {per_code!r}")
    warps = getattr(launch, "warps", row["warps"])
    if registers is None and warps != row["warps"]:
        raise ValueError(f"the counted launch of {fmt} in {launch.kernel} (BM={launch.bm}) ran {row['warps']} warps, "
                         f"this one {warps!r}: its registers are another compile's (count that launch with "
                         "bench/kernel_instructions.py --variant, or give its registers)")
    registers = _count("registers", row["registers"] if registers is None else registers, 1, MAX_REGISTERS, gpu.name)
    cap = _count("the launch's register cap", getattr(launch, "registers", 0), 0, MAX_REGISTERS, gpu.name)
    programs = math.ceil(n / launch.bn) * math.ceil(m / max(launch.bm, 1)) * launch.split  # the launch's grid
    resident = min(gpu.programs_per_sm(min(registers, cap) if cap else registers, warps, row["shared_bytes"]),
                   math.ceil(programs / gpu.sms)) * warps
    moved = n * k * bits_per_weight / 8 + 2 * m * k + 2 * m * n  # bytes: W as stored, fp16 x and y
    if launch.split > 1:
        moved += (launch.split + 2) * 4 * m * n  # float32 partial sums added, read and zeroed by the last program
    memory = moved / (gpu.copy_gbps * 1e3 * gpu.stream_fraction)
    decoded = n * k * math.ceil(m / max(launch.bm, 1))
    rate = gpu.issue_rate(launch.half_pairs, launch.weights_first)
    if launch.bm == 1:
        rate *= min(1.0, resident / gpu.one_row_latency_warps)
    decode = decoded * per_code / rate
    device = max(memory, decode) + gpu.kernel_us
    us = max(device, gpu.host_call_us)
    if not math.isfinite(us):  # finite in, finite out: a constant of the GPU too small for the work
        raise ValueError(f"the prediction of {fmt} at M={m} K={k} N={n} on {gpu.name} is not finite (memory "
                         f"{memory:g} us, decode {decode:g} us): a rate of the GPU (clock_ghz, copy_gbps, "
                         "stream_fraction, the efficiencies) is too small")
    bound = "host" if gpu.host_call_us >= device else "memory" if memory >= decode else "decode"
    return GPUPrediction(us, device, memory, decode, gpu.kernel_us, bound, launch.kernel, resident)
