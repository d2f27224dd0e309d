"""``hwlab.kernels.matmul(x, qt)`` and its dispatch: ``y = x @ dequant(W)^T`` for any quantized tensor, on the GPU.

:func:`choose` picks a kernel of :mod:`hwlab.kernels.triton_kernels` and its launch from the
tensor's plan and M (:func:`explain` prints it):

* M = 1 and codes in whole words (1, 2, 4, 8 bits) with groups of whole words: ``gemv_words``;
* M = 1, ``mixed_2_4`` with groups of a power of two >= 16: ``gemv_mixed``;
* M = 1 otherwise: ``tile`` on CUDA cores;
* M > 1 with groups of a multiple of 16 elements: ``tile`` with ``tl.dot`` (tensor cores);
* otherwise (M > 1, groups such as 100): the weights are dequantized by ``dequantize_kernel``
  and multiplied in float32 by torch, the one path that materialises them.

Split-K is chosen so that about ``WAVES`` programs run per SM; its float32 partial sums go to a
zeroed buffer and are cast once. Outputs saturate at the output dtype's largest finite value.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import numpy as np

from hwlab.formats.scales import BF16_LARGEST, FP16_LARGEST

from .async_mixed import ASYNC_KERNELS
from .device import PAIR_TABLE_MAX, DeviceTensor, register_table
from .half_pairs import (HALF_BITS, LUT_BITS, LUT_ENTRIES, SUBNORMAL_TOP, WORDS, half_top, half_word_ptx,
                         wide_activations)
from .plan import KernelPlan, minifloat_in_fp16

PACK_IDS = {"words": 0, "bits": 1, "trit5": 2, "mixed": 3}
DECODE_IDS = {"int": 0, "float": 1, "lut": 2, "pairs": 3}
MEMBER_IDS = {"none": 0, "group": 1, "pairs": 2}
SCALE_IDS = {"float": 0, "bf16": 1, "table": 2, "exponent": 3}  # "exponent": a table that is E8M0 (_scale_id)
EXPONENT_SCALES = True  # E8M0 scale tables decoded from the code (False: looked up, as before H200 run 10)
# binary32 bits of E8M0 codes (OCP MX v1.0: 2**(c - 127) for codes 0-254, code 0 a binary32 subnormal; 255 is NaN,
# which the plan's table reads as 0)
E8M0_CODE_BITS = np.where(np.arange(256) == 0, 1 << 22, np.where(np.arange(256) == 255, 0, np.arange(256) << 23)
                          ).astype(np.uint32)
X_DTYPES = ("float16", "bfloat16")
OUT_MAX = {"float16": FP16_LARGEST, "bfloat16": BF16_LARGEST, "float32": 3.4028234663852886e38}
GEMV_BN, TILE_BN = 128, 64  # rows per program of gemv_mixed and of the M = 1 tile kernel
# gemv_words tiles: (rows per program, uint32 words of a row per step, software pipeline stages). Long runs of
# each row per step (128 words: 512 contiguous bytes) and whole rows per program (no split-K on a large layer) let
# the DRAM stream rows instead of 64-byte pieces of 256 rows. H200, CUDA graph times at K=8192 N=28672
# (bench/results/gpu_launch_variants_h200_run6.log):
HALF_TILE = (32, 128, 1)  # fp16 pair path: int4 38.1 us against 54.0 at (256, 16, 1); int2 34.8 against 41.4
# (and bitmod_fp4's type ids, run 12, gpu_launch_variants_h200_run12.log: 64.8 us against 66.5 at (16, 128, 1),
# 73.3 at (64, 64, 1), 90.9 at (32, 64, 1))
OTHER_TILE = (32, 64, 3)  # other decodes: nf4 76.3 us, fp4_e2m1 78.6 against 168 and 169 at (128, 16, 1)
# type ids of tables the pairs do not take (read per row when a step lies in one group): bitmod_fp4 176 us before
# run 12 (HALF_GEMV_TABLES=False), 451+ at OTHER_TILE
MEMBER_TILE = (128, 16, 1)
# gemv_words decodes integer codes as fp16 subnormals, one LOP3 a pair instead of a LOP3 and an HFMA2 (Launch.subnormal,
# half_pairs.subnormal_pair_constants): int2 33.6 us against 35.6, 4 and 8 bits 0-2% (H100, CUDA graphs, K=8192
# N=28672, bench/results/gpu_launch_variants_h100_run16*.log); off: its roundings are relative to (|q| + flip) |x|
# (testing.subnormal_bounds), and an inf activation gives NaN
GEMV_SUBNORMAL = False
# fp16 activations of the decodes of small values (the 4-bit minifloat pairs) scaled in two fp16 multiplies, up to
# 2**30 (half_pairs.wide_activations): a row of tiny x keeps normal fp16 products (stop 30; False: one multiply, as
# before, for timing its cost: +0.6-5% static loop instructions, untimed on a GPU)
WIDE_ACTIVATIONS = True
# ... and caps its registers a thread (Launch.registers, Triton's maxnreg) by code width: 2-bit codes take 168 without
# a cap, three programs of 4 warps an SM; at 128, four: int2 29.4 us against 34.4 (int4 at 128: 43.5 against 43.8),
# H100, CUDA graphs, K=8192 N=28672, bench/results/register_cap_probe_h100_run16.json. Both flags are read when a
# tensor's launch for an x shape is first prepared (kept on the DeviceTensor: _prepare), not at every call
GEMV_MAX_REGISTERS = {2: 128}
# The one-row tile's cap by code width (the M = 1 launches of codes that no whole-word GEMV takes: 3, 5, 6 and 7 bits,
# the 3-bit BitMoD mixture). None is shipped; it is there to time what the GPU model predicts (stop 31, BENCHMARKS
# "occupancy"): int5's tile takes 179 registers, two 4-warp programs an SM, and at 168 (triton 3.6: 4 LDL in the
# loop) three, which the model puts at 1.4x faster, untimed
TILE_MAX_REGISTERS = {}
MAX_REGISTERS = 255  # registers a thread can address (CUDA C Programming Guide, compute capability 9.0)
MIN_REGISTERS = 16  # the smallest register cap a launch takes (Launch.registers, GEMV_ and TILE_MAX_REGISTERS)
REGISTER_CAPPED = ("gemv_words", "tile", "tile_dot")  # the kernels whose launches pass the cap to Triton
MAX_GROUPS_PER_STEP = 16  # words per step are halved until a step holds at most this many groups (nvfp4: 16 of 16)
# gemv_words takes at least 32 rows: with 16, triton 3.6 fails to compile its table decodes for sm_90
# (TritonGPUOptimizeThreadLocality; shift2 in tests/test_kernels.py, H200)
GEMV_MIN_BN = 32
HALF_XCHUNK = 2048  # x values a program reads per load for its scale (half_scale: ceil(K / 2048) loads, unrolled)
KS_MAX, DOT_MIN = 128, 16  # tile steps: at most 128 elements; tl.dot needs 16 on every side
WAVES = 4  # programs per SM that split-K aims for
# gemv_words gathers from a table held in registers up to this many entries (all members); a larger one
# (8-bit tables: 791 instructions a code, static SASS) is read from memory instead
REGISTER_TABLE_MAX = 64
FP32_ONE_BITS = 0x3F800000  # IEEE binary32 1.0 (gemv_words_kernel's run-time one_bits)
NUM_WARPS = 4
# software pipeline depth of each kernel's K loop (tl.range num_stages: the loads of stages - 1 later steps
# are issued as cp.async into shared memory before a step is decoded; gemv_words and the fp16 pair tile_dot: their
# tiles). Three stages made gemv_mixed 2.2x and the M = 1 tile kernel 5% slower (same log)
STAGES = {"gemv_mixed": 1, "tile": 1, "tile_dot": 3}
# tile_dot by batch tile BM: rows per program and warps (static SASS counts for sm_90, triton 3.6: BM=16 with
# 128 rows spends 9.1 instructions a code against 10.4 with 64; BM=64 spills registers with 4 warps, not with 8)
DOT_BN = {16: 128, 32: 64, 64: 64}
DOT_WARPS = {16: 4, 32: 8, 64: 8}
# ... and for the fp16 pair decode (half_dot_applies): (rows, warps, stages, weights first) by batch tile, and where
# timed otherwise by (BM, code bits, zero points). Fewer warps read x's tile (every warp reads all of it) fewer times.
# Weights first (Launch.weights_first), run 8 (bench/results/gpu_launch_variants_h200_run8.log): M=64 int4 148.5 us
# at (128, 4, 1, True) against 179.8 at run 7's (64, 4, 1, False), 161.9 at 64 rows, 215.7 with 8 warps; M=16 int4
# 103.4 against 100.8 with run 7's tile, which it keeps; M=32 (not timed) takes M=64's.
# H200, CUDA graph, K=8192 N=28672 (bench/results/gpu_launch_variants_h200_run7.log, calls 1-3): M=16 int4 102.1 us
# at (64, 2, 1) against 107.9 at (64, 1, 1), 123.6 at (64, 4, 1), 132.1 at (128, 4, 1) and 211.6 at (64, 4, 3); int8
# 98.0 at (64, 4, 3) against 135.8 at (64, 2, 1); M=64 int4 180.8 at (64, 4, 1) against 233.4 at (64, 2, 1) and 212.2
# at (64, 8, 1). With 8 warps at M=64, 32 or 128 rows crashed for int4_asym (an illegal address, triton 3.6)
HALF_DOT_TILE = {16: (64, 2, 1, False), 32: (128, 4, 1, True), 64: (128, 4, 1, True)}
HALF_DOT_TILES = {(16, 8, False): (64, 4, 3, False)}
HALF_FLOAT_BITS = (4, 8)  # minifloat widths of whole words that the pair decode of tile_dot takes
# ... and of gemv_words (M = 1; empty: those minifloats read their table, as fp16 pairs where HALF_GEMV_TABLES takes
# it, else gathered from registers as before H200 run 10)
HALF_GEMV_FLOAT_BITS = (4, 8)
# ... and whether it reads 16-entry tables (NF4, the FP4 splits' tables, lookup tables) as binary16 from byte
# permutes of registers (half_pairs._lut_word; False: a gather from the float32 table, as before)
HALF_GEMV_TABLES = True
# matmul's kernel for fp16 x of CUPY_MMA_ROWS rows, codes of CUPY_MMA_BITS bits in whole words and layers of at least
# CUPY_MMA_MIN_WEIGHTS weights: the CuPy tensor-core kernel (kernels/cuda/int_mma.cu, cupy_kernels.int_mma_cupy),
# where CuPy is installed and the kernel reads the plan; where it was timed faster than the Triton kernels. H200, CUDA
# graph (bench/results/cupy_mma_probe_h200_run12_call6*.log): K=8192 N=28672, M=16 / 4, int4 69.6 / 55.1 us against
# tile_dot's 101.3 / 95.7, int4_asym 75.0 / 61.9 against 107.0 / 103.2, int8 102.4 against 100.1 at M=16 (not
# taken); 4096 x 4096 int4 18.4 / 13.1 against 11.7 / 11.8 (not taken); at M = 1 gemv_words (38.6 against 73.6).
# Run 13 (cupy_mma_probe_h200_run13_call3.log: x staged for the tile's rows only, no split-K): M = 1 42.0 against
# gemv_words' 38.3 (still not taken), M = 4 46.5, M = 16 71.3
CUPY_MMA = True
CUPY_MMA_ROWS = (2, 64)
CUPY_MMA_BITS = (4,)
# its decodes that matmul takes: "int" and "table" (nf4, the FP4 splits, flint4, shift4 through 256 shared-memory
# pairs). H100, CUDA graph, K=8192 N=28672 (bench/results/cupy_mma_probe_h100_run14_call1.log): M = 4 / 16 nf4 83.0
# / 106.3 us against tile_dot's 280.1 / 270.8, fp4_e2m1 64.5 / 88.4 against 95.4 / 98.8; M = 1 stays gemv_words
# (nf4 62.4 against 77.6)
CUPY_MMA_DECODES = ("int", "table")
# ... on layers of at least this many weights (N * K), by (decode, batch tiles of 8 rows that M rounds up to: 1, 2, 4,
# 8); math.inf: never. Below 2**24 (4096 x 4096) it was not timed. H100, CUDA graph and do_bench at 4096 x 4096,
# 4096 x 11008, 11008 x 4096 (bench/results/cupy_mma_probe_h100_run14_call3.log): int4 at M = 4 faster everywhere
# (10.9 / 17.3 / 18.7 us against 11.9 / 23.6 / 25.1), at M = 16 not (15.3 / 25.2 / 24.5 against 12.2 / 24.4 / 25.6,
# slower under do_bench on all three), but at 8192 x 28672 (75.5 against 99.8, call 1); nf4 and flint4 faster at M = 4
# and 16 everywhere (nf4 M = 16: 19.8 / 35.8 / 33.1 against 24.1 / 58.5 / 53.5). M = 32 (run 15, call 1,
# bench/results/cupy_mma_probe_h100_run15_call1*.log; the same three and 8192 x 28672): nf4 faster everywhere (27.3 /
# 47.3 / 48.4 / 158.2 against 29.9 / 78.8 / 80.7 / 341.6), int4 nowhere under do_bench (27.9 / 45.5 / 45.1 / 141.9
# against 20.3 / 38.4 / 33.1 / 134.0). M = 64, two M-blocks of four tiles (call 2, cupy_mma_probe_h100_run15_call2*):
# nf4 faster at 4096 x 11008 and 11008 x 4096 (71.0 / 68.9 against 92.2 / 92.1) but slower at 4096 x 4096 (44.5
# against 35.2) and 8192 x 28672 (414.0 against 389.4; M = 48 376.9 against 387.8): not taken, as no single size
# bound holds; int4 and fp4_e2m1 at 8192 x 28672 299.0 / 338.0 against 149.2 / 156.8
CUPY_MMA_MIN_WEIGHTS = {("int", 1): 2**24, ("int", 2): 2**27, ("int", 4): math.inf, ("int", 8): math.inf,
                        ("table", 1): 2**24, ("table", 2): 2**24, ("table", 4): 2**24, ("table", 8): math.inf}
FP16_SMALLEST_NORMAL = 2.0**-14  # IEEE binary16: from here to FP16_LARGEST, rounding to fp16 errs by 2**-11 at most


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch: which kernel, its tile (rows ``bn``, batch rows ``bm``, K step ``ks``),
    split-K (``split`` programs along K, ``steps`` steps each) and the decode it uses."""

    kernel: str  # gemv_words, gemv_mixed, tile, tile_dot, dequantize_then_torch; mixed_*_async (async_mixed);
    # int_mma_cupy (cupy_kernels: ks codes a chunk, steps chunks a block)
    bn: int
    bm: int
    ks: int
    split: int
    steps: int
    decode: str  # the plan's decode, "lut" (every plan has a table) or "pairs" (the table as 16-bit patterns)
    warps: int = 4
    stages: int = 1  # software pipeline depth of the K loop (1: none; n: n - 1 steps' loads in flight, cp.async)
    half_pairs: bool = False  # tile_dot decodes integer codes as fp16 pairs (half_dot_applies); int_mma_cupy always
    weights_first: bool = False  # the decoded weights are the MMA's first operand (w @ x^T: from registers on sm_90)
    subnormal: bool = False  # gemv_words' fp16 pairs hold integer codes as subnormals (GEMV_SUBNORMAL)
    registers: int = 0  # registers a thread may use (Triton's maxnreg; 0: as the compiler likes; GEMV_MAX_REGISTERS,
    # TILE_MAX_REGISTERS)

    def __post_init__(self):
        if self.half_pairs and not (self.kernel == "tile_dot" and self.decode in ("int", "float")
                                    or self.kernel == "int_mma_cupy"):
            raise ValueError(f"a launch with fp16 pairs is a tile_dot of integer or minifloat codes or int_mma_cupy, "
                             f"got {self.kernel} with decode {self.decode!r} (replace half_pairs=False as well)")
        if not _register_count(self.registers):
            raise ValueError(f"registers must be 0 (the compiler's choice) or a whole number from {MIN_REGISTERS} to "
                             f"{MAX_REGISTERS}, got {self.registers!r}")
        object.__setattr__(self, "registers", int(self.registers))  # a numpy integer as a Python one
        if not isinstance(self.subnormal, bool):
            raise ValueError(f"subnormal must be True or False, got {self.subnormal!r}")
        if self.registers and self.kernel not in REGISTER_CAPPED:
            raise ValueError(f"a register cap is a launch of {', '.join(REGISTER_CAPPED)}, got {self.kernel} "
                             f"(replace registers=0 as well)")
        if self.subnormal and not (self.kernel == "gemv_words" and self.decode == "int"):
            raise ValueError(f"the subnormal decode is a launch of gemv_words with the int decode, got {self.kernel} "
                             f"with decode {self.decode!r} (replace subnormal=False as well)")
        if self.weights_first and not (self.half_pairs or self.kernel in ("trip_int8", "mixed_tile_async")):
            raise ValueError(f"weights_first is a launch of the fp16-pair tile_dot, trip_int8 or mixed_tile_async, got "
                             f"{self.kernel} without fp16 pairs (replace weights_first=False as well)")

    def describe(self) -> str:
        return (f"{self.kernel}: BN={self.bn} BM={self.bm} KS={self.ks}, split-K {self.split} x {self.steps} steps, "
                f"{self.decode} decode{' (fp16 pairs)' if self.half_pairs else ''}"
                f"{', weights first' if self.weights_first else ''}"
                f"{', codes as fp16 subnormals' if self.subnormal else ''}"
                f"{f', at most {self.registers} registers a thread' if self.registers else ''}, {self.warps} warps, "
                f"{self.stages} stages")


def _torch():
    import torch

    return torch


def _kernels():
    from . import triton_kernels  # triton only when a kernel runs

    return triton_kernels


def interpreted() -> bool:
    """Whether the Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` at import)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_kernels().tile_kernel, InterpretedFunction)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return _torch().cuda.get_device_properties(index).multi_processor_count


def choose(plan: KernelPlan, m: int, sms: int = 1) -> Launch:
    """The launch for ``m`` rows of activations on a GPU of ``sms`` multiprocessors."""
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m must be a whole number of activation rows, at least 1, got {m!r}")
    n, kp = plan.shape[0], plan.padded_cols
    epg = plan.elements_per_group
    step_of_group = min(KS_MAX, epg & -epg)  # the largest power of two <= 128 dividing the group
    per_word = 32 // plan.bits if plan.packing == "words" else 0
    decode, warps, half, first, pairs = plan.decode, NUM_WARPS, False, False, False
    if m == 1 and plan.packing == "mixed" and epg >= 16 and epg & (epg - 1) == 0:
        kernel, bn, bm, ks = "gemv_mixed", GEMV_BN, 1, epg
    elif m == 1 and per_word and epg % per_word == 0:
        kernel, bm = "gemv_words", 1
        pairs = half_pairs_apply(plan, decode)
        if decode == "float" and plan.lut.size <= REGISTER_TABLE_MAX and not pairs:
            decode = "lut"  # its table: as fp16 pairs where it can be, else gathered from registers
            pairs = half_pairs_apply(plan, decode)  # (fewer issue slots than the pair select tree either way)
        bn, words, stages = HALF_TILE if pairs else MEMBER_TILE if plan.member_rule != "none" else OTHER_TILE
        while words > 1 and words * per_word > MAX_GROUPS_PER_STEP * epg:
            words //= 2
        ks = words * per_word
    elif m == 1:
        kernel, bn, bm, ks = "tile", TILE_BN, 1, step_of_group
        decode = _table_decode(plan, decode, exact_in_half=True)
    elif step_of_group >= DOT_MIN:
        bm = 16 if m <= 16 else 32 if m <= 32 else 64
        decode = _table_decode(plan, decode, exact_in_half=False)
        kernel, ks = "tile_dot", step_of_group
        half = half_dot_applies(plan, decode, ks)
        bn, warps, stages, first = (HALF_DOT_TILES.get((bm, plan.bits, bool(plan.zero_bits)), HALF_DOT_TILE[bm])
                                    if half else (DOT_BN[bm], DOT_WARPS[bm], STAGES[kernel], False))
    else:
        return Launch("dequantize_then_torch", 0, 0, step_of_group, 1, 0, plan.decode)
    bn = min(bn, max(GEMV_MIN_BN if kernel == "gemv_words" else 16, _next_power_of_two(n)))
    tiles = math.ceil(n / bn) * math.ceil(m / bm)
    total = math.ceil(kp / ks)
    split = min(total, max(1, math.ceil(WAVES * sms / tiles)))
    steps = math.ceil(total / split)
    if kernel not in ("gemv_words", "tile_dot"):
        stages = STAGES[kernel]
    return Launch(kernel, bn, bm, ks, math.ceil(total / steps), steps, decode, warps, stages, half, first,
                  subnormal=pairs and GEMV_SUBNORMAL and decode == "int",  # pairs: gemv_words' fp16 pairs
                  registers=_register_cap(plan.bits, "GEMV_MAX_REGISTERS") if kernel == "gemv_words" else
                  _register_cap(plan.bits, "TILE_MAX_REGISTERS") if kernel == "tile" else 0)


def _register_count(value) -> bool:
    """Whether ``value`` is a register cap: 0 (none) or a whole number from :data:`MIN_REGISTERS` to
    :data:`MAX_REGISTERS`."""
    return (isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
            and (value == 0 or MIN_REGISTERS <= value <= MAX_REGISTERS))


def _register_cap(bits: int, knob: str) -> int:
    """The cap of this module's ``knob`` (:data:`GEMV_MAX_REGISTERS` or :data:`TILE_MAX_REGISTERS`) for
    ``bits``-bit codes (0: none), checked here so that a bad entry is named."""
    caps = globals()[knob]
    if not isinstance(caps, dict):
        raise ValueError(f"dispatch.{knob} must be a dict of code widths to register caps, got {caps!r}")
    cap = caps.get(bits, 0)
    if not _register_count(cap):
        raise ValueError(f"dispatch.{knob}[{bits}] must be 0 or a whole number from {MIN_REGISTERS} to "
                         f"{MAX_REGISTERS}, got {cap!r}")
    return int(cap)


def half_pairs_apply(plan: KernelPlan, decode: str) -> bool:
    """Whether ``gemv_words_kernel`` takes the fp16 pair path (:mod:`hwlab.kernels.half_pairs`):
    integer codes of 2, 4 or 8 bits; minifloat codes of :data:`HALF_GEMV_FLOAT_BITS` without zero points
    whose binary16 placements leave x' a range of at least 1 (:func:`half_pair_top`; not fp8_e5m2, whose
    placements are its values, up to 57344); 4-bit codes of a table (:func:`half_table_applies`), with a type id
    per group (BitMoD) too. Groups of an even number of words (the PTX sums two words of one group)."""
    if decode == "int":
        codes = plan.bits in HALF_BITS
    elif decode == "float":
        codes = plan.bits in HALF_GEMV_FLOAT_BITS and not plan.zero_bits and half_pair_top(plan, decode) >= 1
    else:
        codes = decode == "lut" and half_table_applies(plan) and half_pair_top(plan, decode) >= 1
    members = plan.member_rule == "none" or (plan.member_rule == "group" and decode == "lut")
    return codes and members and plan.elements_per_group % (WORDS * 32 // plan.bits) == 0


def half_table_applies(plan: KernelPlan) -> bool:
    """Whether the fp16 pair GEMV reads the plan's table as binary16 (:data:`HALF_GEMV_TABLES`): 4-bit codes
    without zero points, with no type ids or one per group, and a table that :func:`table_fits_binary16`."""
    return (HALF_GEMV_TABLES and plan.bits == LUT_BITS and not plan.zero_bits
            and plan.member_rule in ("none", "group") and table_fits_binary16(plan))


def table_fits_binary16(plan: KernelPlan) -> bool:
    """At most :data:`~hwlab.kernels.half_pairs.LUT_ENTRIES` entries a member, each 0 or of a magnitude in fp16's
    normal range, so that each rounds to binary16 by at most 2**-11 of itself, as a table value rounds to x's dtype
    on the tensor cores (``matmul``'s error bound)."""
    values = np.abs(plan.lut.astype(np.float64))
    return plan.table_size <= LUT_ENTRIES and bool(np.all(
        (values == 0) | ((values >= FP16_SMALLEST_NORMAL) & (values <= FP16_LARGEST))))


def half_pair_values(plan: KernelPlan, decode: str) -> np.ndarray:
    """The finite magnitudes the fp16 pair decode of the plan's codes read with ``decode`` (the launch's: a
    minifloat plan may be read through its table) gives, float64: integers ``0 .. 2**bits - 1``, minifloats'
    binary16 placements (:func:`~hwlab.kernels.plan.minifloat_in_fp16` of every code: a code without a value counts
    too, so a corrupted one cannot overflow a sum), every member's table entries in binary16."""
    if decode == "lut":
        return np.abs(plan.lut.astype(np.float16).astype(np.float64)).ravel()
    if decode != "float":
        return np.arange(1 << plan.bits, dtype=np.float64)
    placed = np.abs(minifloat_in_fp16(np.arange(1 << plan.bits), plan.bits, plan.mbits))
    return placed[np.isfinite(placed)]


def half_pair_top(plan: KernelPlan, decode: str) -> int:
    """:func:`~hwlab.kernels.half_pairs.half_top` of the largest value of :func:`half_pair_values` (a table's at
    least fp16's smallest normal)."""
    largest = float(half_pair_values(plan, decode).max())
    return half_top(plan.bits, max(largest, FP16_SMALLEST_NORMAL) if decode == "lut" else largest)


def half_pair_wide_x(plan: KernelPlan, decode: str) -> bool:
    """:func:`~hwlab.kernels.half_pairs.wide_activations` of the largest value of :func:`half_pair_values`."""
    return wide_activations(float(half_pair_values(plan, decode).max()))


def half_dot_applies(plan: KernelPlan, decode: str, ks: int) -> bool:
    """Whether ``tile_dot`` decodes fp16 pairs (``half_tile``): integer codes as :func:`half_pairs_apply`
    (zero points, if any, in code units: ``q - z`` is then an integer, exact in fp16) or minifloat codes of
    4 or 8 bits placed in binary16, in whole words, and steps of ``ks`` codes that hold at least 16 of each
    pair index (``tl.dot``'s K: ``2 * ks * bits / 32``)."""
    integer = decode == "int" and half_pairs_apply(plan, decode) and (not plan.zero_bits or plan.decode_scale == 1.0)
    minifloat = decode == "float" and plan.bits in HALF_FLOAT_BITS and not plan.zero_bits
    return (plan.packing == "words" and plan.member_rule == "none" and (integer or minifloat)
            and 2 * ks * plan.bits // 32 >= DOT_MIN)


def _half_flags(plan: KernelPlan, launch: Launch) -> dict:
    """``gemv_words_kernel``'s ``HALF_TOP``, ``HALF_PTX``, ``HALF_SUBNORMAL`` and ``HALF_WIDE_X``
    (:func:`half_pairs_apply`, ``launch.subnormal``, :func:`half_pair_wide_x`); the PTX only where the kernel is
    compiled (the interpreter runs its Triton twin)."""
    if not half_pairs_apply(plan, launch.decode):
        if launch.subnormal:
            raise ValueError(f"the subnormal decode is an fp16 pair decode, which {plan.format_name} with decode "
                             f"{launch.decode!r} does not take")
        return dict(HALF_TOP=0, HALF_PTX="", HALF_XCHUNK=1, HALF_XCHUNKS=0, TABLE_VARY=0, HALF_SUBNORMAL=False,
                    HALF_WIDE_X=False)
    table = launch.decode == "lut"
    ptx = "" if interpreted() else half_word_ptx(plan.bits, plan.flip, plan.mbits if launch.decode == "float" else None,
                                                 table=table, subnormal=launch.subnormal)
    top = SUBNORMAL_TOP if launch.subnormal else half_pair_top(plan, launch.decode)
    return dict(HALF_TOP=top, HALF_PTX=ptx, HALF_SUBNORMAL=launch.subnormal,
                HALF_WIDE_X=WIDE_ACTIVATIONS and not launch.subnormal and half_pair_wide_x(plan, launch.decode),
                HALF_XCHUNK=HALF_XCHUNK, HALF_XCHUNKS=math.ceil(plan.padded_cols / HALF_XCHUNK),
                TABLE_VARY=varying_registers(register_table(plan.lut)) if table else 0)


def varying_registers(registers: np.ndarray) -> int:
    """A bit per register of the fp16 pair table decode (``[members, 8]``,
    :func:`~hwlab.kernels.device.register_table`) that differs between members (``gemv_words_kernel``'s
    ``TABLE_VARY``: those are read per type id)."""
    differs = np.any(registers != registers[:1], axis=0)
    return sum(1 << int(r) for r in np.flatnonzero(differs))


def _table_decode(plan: KernelPlan, decode: str, exact_in_half: bool) -> str:
    """``pairs`` for a table decode of at most 16 entries a member (a select tree in registers:
    fewer and cheaper instructions than a load or a gather per code, static SASS counts), where the
    kernel multiplies in x's dtype (``exact_in_half`` False: the table is rounded to it anyway) or
    the float32 table is exact in binary16; ``decode`` otherwise."""
    if decode == "lut" and plan.table_size <= PAIR_TABLE_MAX and (plan.half_exact or not exact_in_half):
        return "pairs"
    return decode


def _scale_id(plan: KernelPlan) -> int:
    """The kernels' ``SCALE``: the plan's scale kind, or ``exponent`` where its 256-entry table is E8M0's, bit for
    bit (:data:`E8M0_CODE_BITS`, as the plan reads code 255), which the kernels compute from the code (a shift
    and two selects) instead of a dependent table load per group."""
    if EXPONENT_SCALES and plan.scale_kind == "table" and np.array_equal(plan.scale_table.view(np.uint32), E8M0_CODE_BITS):
        return SCALE_IDS["exponent"]
    return SCALE_IDS[plan.scale_kind]


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def explain(qt: DeviceTensor, m: int = 1, x_dtype: str = "float16") -> str:
    """How :func:`matmul` multiplies ``m`` activation rows of ``x_dtype`` by ``qt``: its plan and its launch."""
    return f"{qt.plan.describe()}\n{launch_for(qt, m, x_dtype).describe()}"


def launch_for(qt: DeviceTensor, m: int, x_dtype: str) -> Launch:
    """The launch :func:`matmul` runs for ``m`` rows of ``x_dtype`` on ``qt``'s device: the CuPy tensor-core
    kernel where :func:`cupy_mma_applies`, else the Triton launch of :func:`choose`."""
    if x_dtype not in X_DTYPES:
        raise ValueError(f"x_dtype must be one of {X_DTYPES} (the activation dtypes matmul takes), got {x_dtype!r}")
    if cupy_mma_applies(qt, m, x_dtype):
        from .cupy_kernels import MMA_WARPS, mma_launch_plan

        return mma_launch(mma_launch_plan(qt.plan, m, sms=device_sms(qt.device)), MMA_WARPS)
    return choose(qt.plan, m, device_sms(qt.device))


def mma_launch(lp: dict, warps: int) -> Launch:
    """The :class:`Launch` of an ``int_mma`` launch plan (``cupy_kernels.mma_launch_plan``) of ``warps`` warps a
    block: ``bm`` the batch rows of its tiles (8 or 16: each code is decoded once for them), ``ks`` the codes of a
    chunk, ``steps`` the chunks of a block, ``stages`` its cp.async stages or its register bursts' D chunks in
    flight plus the one decoded, fp16 pairs (their issue rate in :mod:`hwlab.sim.gpu`)."""
    return Launch("int_mma_cupy", lp["rows"], 8 * lp["nj"], lp["codes_per_chunk"], lp["splits"],
                  lp["chunks_per_block"], "pairs" if lp["decode"] == "table" else "int", warps,
                  stages=lp["stages"] or lp["prefetch"] + 1, half_pairs=True)


def cupy_mma_applies(qt: DeviceTensor, m: int, x_dtype: str) -> bool:
    """Whether :func:`matmul` takes :func:`~hwlab.kernels.cupy_kernels.int_mma_cupy` (:data:`CUPY_MMA`): fp16
    ``x`` of :data:`CUPY_MMA_ROWS` rows on a CUDA device, codes of :data:`CUPY_MMA_BITS` bits that it decodes as
    :data:`CUPY_MMA_DECODES`, at least :data:`CUPY_MMA_MIN_WEIGHTS` weights for that decode and the batch tiles M
    rounds up to, a plan it reads (``mma_unsupported``), CuPy installed."""
    return (getattr(qt.device, "type", None) == "cuda" and not interpreted() and _cupy_installed()
            and mma_plan_applies(qt.plan, m, x_dtype) and qt.arrays[qt.plan.arrays["codes"]].data_ptr() % 16 == 0)


def mma_plan_applies(plan: KernelPlan, m: int, x_dtype: str) -> bool:
    """Whether :func:`cupy_mma_applies` takes ``plan`` (its ``shape`` the layer's) for ``m`` rows of ``x_dtype``
    where CuPy runs on a CUDA device: every condition of the plan, none of the device's."""
    from .cupy_kernels import MMA_MAX_M, mma_decode, mma_row_tiles, mma_unsupported

    if not (CUPY_MMA and CUPY_MMA_ROWS[0] <= m <= min(CUPY_MMA_ROWS[1], MMA_MAX_M) and x_dtype == "float16"
            and plan.bits in CUPY_MMA_BITS):
        return False
    decode = mma_decode(plan)
    return (mma_unsupported(plan) is None and decode in CUPY_MMA_DECODES
            and math.prod(plan.shape) >= _smallest_layer(decode, mma_row_tiles(m)))


def _smallest_layer(decode: str, tiles: int) -> int:
    """:data:`CUPY_MMA_MIN_WEIGHTS` of a decode and batch tile count; a table a user edited that lacks it is an error
    that names the entry, not a ``KeyError`` from inside :func:`matmul`."""
    table = CUPY_MMA_MIN_WEIGHTS
    if not isinstance(table, dict) or (decode, tiles) not in table:
        raise ValueError(f"dispatch.CUPY_MMA_MIN_WEIGHTS must be a dict of the smallest layer (N * K weights) by "
                         f"(decode, batch tiles), with an entry for {(decode, tiles)!r}; got {table!r:.200}")
    value = table[decode, tiles]
    if (not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, (bool, np.bool_))
            or not value >= 0):
        raise ValueError(f"dispatch.CUPY_MMA_MIN_WEIGHTS[{(decode, tiles)!r}] must be a number of weights >= 0 "
                         f"(math.inf: never), got {value!r}")
    return value


@functools.lru_cache(maxsize=1)
def _cupy_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("cupy") is not None


def device_sms(device) -> int:
    """Multiprocessors of a torch device (1 for the CPU: the interpreter)."""
    return _sm_count(device.index or 0) if device.type == "cuda" else 1


def check_tensor(qt) -> DeviceTensor:
    """``qt`` if it is a :class:`DeviceTensor`, else a ``TypeError`` that says how to make one."""
    if isinstance(qt, DeviceTensor):
        return qt
    if hasattr(qt, "unpacked") and hasattr(qt, "arrays"):
        raise TypeError("matmul needs the quantized tensor on the GPU: move it once with qt.to('cuda') "
                        "(kernels never copy weights behind your back)")
    raise TypeError(f"expected a quantized tensor on a device (qt.to('cuda')), got {type(qt).__name__}")


def check_runnable(device) -> None:
    """Raise unless kernels can run on ``device``: CUDA, or the CPU in Triton's interpreter."""
    if device.type == "cpu" and not interpreted():
        raise RuntimeError("hwlab kernels run on CUDA tensors, or on CPU tensors in Triton's interpreter "
                           "(set TRITON_INTERPRET=1 before importing hwlab.kernels)")
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"hwlab kernels run on CUDA devices, not {device.type!r}")


def matmul(x, qt: DeviceTensor, *, out=None):
    """``x @ dequant(qt)^T`` in ``x``'s dtype, like ``torch.nn.functional.linear(x, W)``.

    ``x``: float16 or bfloat16 ``[..., K]``, contiguous, on ``qt``'s device. ``out``: optional
    contiguous tensor ``[..., N]`` of ``x``'s dtype to write into. Accumulation is float32; the
    result saturates at the dtype's largest finite value.

    The first call for a shape, dtype and device of ``x`` checks everything and prepares the
    launch (:class:`Prepared`, kept on ``qt``); later calls check only what can change from call
    to call (contiguity, ``out``) and launch the compiled kernel directly.
    """
    torch = _torch()
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    try:
        prepared = qt.prepared[(x.shape, x.dtype, x.device)]
    except (AttributeError, KeyError):
        prepared = _prepare(x, qt)
    if not x.is_contiguous():
        raise ValueError(f"x must be contiguous (strides {tuple(x.stride())}); call x.contiguous()")
    if out is None:
        out = torch.empty(prepared.out_shape, dtype=x.dtype, device=x.device)
    elif (not isinstance(out, torch.Tensor) or out.shape != prepared.out_shape or out.dtype != x.dtype
          or out.device != x.device or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {prepared.out_shape} on {x.device}")
    if prepared.m:
        prepared(x, out)
    return out


def _prepare(x, qt) -> "Prepared":
    """Check ``x`` against ``qt`` once for its shape, dtype and device, and prepare the launch."""
    qt = check_tensor(qt)
    n, k = qt.shape
    dtype = str(x.dtype).removeprefix("torch.")
    if dtype not in X_DTYPES:
        raise TypeError(f"x must be float16 or bfloat16, got {x.dtype} (cast with x.half() or x.bfloat16())")
    if x.ndim == 0 or x.shape[-1] != k:
        raise ValueError(f"x has shape {tuple(x.shape)}: its last dimension must be K={k} of the {n}x{k} weights")
    if x.device != qt.device:
        raise ValueError(f"x is on {x.device} but the weights are on {qt.device}: move one of them "
                         "(kernels never copy weights behind your back)")
    check_runnable(x.device)
    lead = tuple(x.shape[:-1])
    m = math.prod(lead)
    launch = launch_for(qt, m, dtype) if m else None
    try:
        prepared = Prepared(qt, m, x.dtype, launch, lead + (n,))
    except Exception as exc:  # CuPy installed but unusable here (driver, NVRTC): the Triton kernels do the work
        if launch is None or launch.kernel != "int_mma_cupy":
            raise
        warnings.warn(f"hwlab.kernels.matmul: the CuPy tensor-core kernel could not be prepared ({type(exc).__name__}: "
                      f"{exc}); using the Triton kernels (hwlab.kernels.dispatch.CUPY_MMA = False skips it)",
                      RuntimeWarning, stacklevel=3)
        prepared = Prepared(qt, m, x.dtype, choose(qt.plan, m, device_sms(x.device)), lead + (n,))
    qt.prepared[(x.shape, x.dtype, x.device)] = prepared
    return prepared


def run(x2, qt: DeviceTensor, out2, launch: Launch) -> None:
    """Launch ``launch`` for ``x2 [M, K]`` into ``out2 [M, N]`` (checked by :func:`matmul`)."""
    m, n = out2.shape
    Prepared(qt, m, x2.dtype, launch, (m, n))(x2, out2)


class Prepared:
    """One launch for one tensor, ``m`` rows and one activation dtype, ready to go: the kernel,
    its grid, every argument but ``x`` and ``out`` (weights as device addresses), and once it has
    run compiled, Triton's compiled kernel, which later calls launch directly. That skips Triton's
    argument binding and specialization on every call (tens of microseconds with forty arguments);
    a call whose ``x`` or ``out`` address is not 16-byte aligned (the specialization compiled)
    goes through Triton's usual path.

    Split-K launches share a float32 workspace and per-tile arrival counts per device and stream,
    which the kernel leaves zeroed (:func:`hwlab.kernels.triton_kernels.finish`)."""

    def __init__(self, qt: DeviceTensor, m: int, x_dtype, launch: Launch | None, out_shape: tuple):
        self.qt, self.m, self.launch, self.out_shape = qt, m, launch, out_shape
        self.compiled = None
        if launch is not None and launch.kernel == "int_mma_cupy":
            from .cupy_kernels import int_mma_launcher

            self.mma = int_mma_launcher(qt, m)
        if launch is None or launch.kernel in ("dequantize_then_torch", "int_mma_cupy"):
            return
        self.fn, self.grid, self.args, self.kwargs = _arguments(qt, m, str(x_dtype).removeprefix("torch."), launch)
        names = self.fn.arg_names
        self.x_at, self.out_at = names.index("x_ptr"), names.index("out_ptr")
        self.work_at, self.count_at = names.index("work_ptr"), names.index("count_ptr")
        self.atomic = launch.split > 1
        self.tiles = math.prod(self.grid) // launch.split  # output tiles: every grid axis but the split-K one
        # every parameter in order, as Triton's launcher takes them (constexprs included, ignored by it)
        values = dict(zip(names, self.args), **self.kwargs)
        self.flat = [_address(values[name]) for name in names]

    def __call__(self, x2, out2) -> None:
        if self.launch is None:
            return
        if self.launch.kernel == "dequantize_then_torch":
            _dequantize_then_torch(x2, self.qt, out2)
            return
        if self.launch.kernel == "int_mma_cupy":
            self.mma(x2, out2)
            return
        work, count = (split_workspace(x2.device, self.m * self.qt.shape[0], self.tiles) if self.atomic
                       else (out2, out2))
        compiled = self.compiled
        xp, op = x2.data_ptr(), out2.data_ptr()
        if compiled is not None and not (xp | op) & 15:
            flat = self.flat
            flat[self.x_at], flat[self.out_at] = xp, op
            flat[self.work_at], flat[self.count_at] = work.data_ptr(), count.data_ptr()
            stream = _stream(x2.device.index)
            hook = _knobs().runtime.launch_enter_hook
            meta = compiled.launch_metadata(self.grid, stream, *flat) if hook is not None else None
            compiled.run(*self.grid, stream, compiled.function, compiled.packed_metadata, meta, hook,
                         _knobs().runtime.launch_exit_hook, *flat)
            return
        args = list(self.args)
        args[self.x_at], args[self.out_at], args[self.work_at], args[self.count_at] = x2, out2, work, count
        result = self.fn[self.grid](*args, **self.kwargs)
        if not (xp | op) & 15 and result is not None and hasattr(result, "packed_metadata"):
            self.compiled = result  # Triton's CompiledKernel (None in the interpreter)


def _address(v):
    """A tensor argument as its device address (Triton's launcher takes an int as it is)."""
    return v.data_ptr() if hasattr(v, "data_ptr") else v


def _knobs():
    from triton import knobs

    return knobs


@functools.lru_cache(maxsize=None)
def _stream_getter():
    from triton.runtime import driver

    return driver.active.get_current_stream


def _stream(index):
    return _stream_getter()(index)


_WORKSPACES: dict = {}  # (device, stream) -> (float32 workspace, int32 arrival counts), kept zeroed by the kernels


def split_workspace(device, size: int, tiles: int):
    """The split-K workspace of at least ``size`` float32 and ``tiles`` counts for the current stream (shared by
    the Triton kernels and :func:`hwlab.kernels.cupy_kernels.int_mma_cupy`: each leaves both zeroed)."""
    key = (device, _stream(device.index) if device.type == "cuda" else 0)
    pair = _WORKSPACES.get(key)
    if pair is None or pair[0].numel() < size or pair[1].numel() < tiles:
        torch = _torch()
        old = (0, 0) if pair is None else (pair[0].numel(), pair[1].numel())
        pair = _WORKSPACES[key] = (torch.zeros(max(size, old[0]), dtype=torch.float32, device=device),
                                   torch.zeros(max(tiles, old[1]), dtype=torch.int32, device=device))
    return pair


def _dequantize_then_torch(x2, qt, out2) -> None:
    w = dequantize(qt)
    y = x2.float() @ w.T
    limit = OUT_MAX[str(out2.dtype).removeprefix("torch.")]
    out2.copy_(y.clamp_(-limit, limit))


def _arguments(qt: DeviceTensor, m: int, x_dtype: str, launch: Launch) -> tuple:
    """``(kernel, grid, positional arguments, keyword arguments)`` of ``launch``; ``x``, ``out``,
    the workspace and the counts are placeholders (None) filled at each call."""
    if launch.kernel in ASYNC_KERNELS:
        from .async_mixed import launch_arguments

        return launch_arguments(qt, m, x_dtype, launch)
    n = qt.shape[0]
    atomic = launch.split > 1
    math_dtype = x_dtype if launch.kernel == "tile_dot" else "float32"
    ops, sizes, flags = _operands(qt, launch.decode, math_dtype)
    out_max = OUT_MAX[x_dtype]
    kern = _kernels()
    common = dict(flags, ATOMIC=atomic, OUT_MAX=out_max, STAGES=launch.stages, num_warps=launch.warps,
                  **({"maxnreg": launch.registers} if launch.registers else {}))
    x2 = out = work = count = None
    if launch.kernel == "gemv_words":
        grid = (math.ceil(n / launch.bn), launch.split, 1)
        pairs = half_pairs_apply(qt.plan, launch.decode)
        return kern.gemv_words_kernel, grid, [
            x2, ops["codes"], ops["zeros"], ops["members"],
            qt.tables["registers"] if pairs and launch.decode == "lut" else ops["lut"],
            ops["scales"], ops["scale_table"], ops["absmax"], ops["row_scales"], out, work, count,
            n, qt.shape[1], sizes["row_words"], sizes["zero_words"], sizes["member_words"], sizes["s_row_stride"],
            sizes["groups"], launch.steps, math.ceil(qt.plan.padded_cols / launch.ks),
            sizes["value_scale"], sizes["scale_unit"], sizes["zero_unit"], sizes["dq_offset"], FP32_ONE_BITS], dict(
            KS=launch.ks, BN=launch.bn,
            GPS=_groups_per_step(qt.plan, launch.ks, pairs),
            EVEN=n % launch.bn == 0 and qt.shape[1] == qt.plan.padded_cols and qt.plan.padded_cols % launch.ks == 0,
            FLIP_WORD=_flip_word(qt.plan), TROWS=qt.plan.lut.shape[0],
            REGISTER_TABLE=qt.plan.lut.size <= REGISTER_TABLE_MAX,
            **_half_flags(qt.plan, launch), **_without(common, "PACK", "B2", "ZB2"))
    if launch.kernel == "gemv_mixed":
        grid = (math.ceil(n / launch.bn), launch.split, 1)
        return kern.gemv_mixed_kernel, grid, [
            x2, ops["codes"], ops["codes2"], ops["group_bits"], ops["zeros"], ops["zeros2"], ops["scales"],
            ops["scale_table"], ops["row_scales"], out, work, count, n, qt.shape[1], sizes["row_words"],
            sizes["row_words2"], sizes["flag_words"], sizes["zero_words"], sizes["zero_words2"], sizes["groups"],
            launch.steps, FP32_ONE_BITS, sizes["value_scale"], sizes["scale_unit"]], dict(
            G=launch.ks, BN=launch.bn, ZB4=flags["ZB"], ZB2=flags["ZB2"],
            EVEN=n % launch.bn == 0 and qt.shape[1] == qt.plan.padded_cols, ATOMIC=atomic, OUT_MAX=out_max,
            STAGES=launch.stages, num_warps=launch.warps)
    grid = (math.ceil(n / launch.bn), math.ceil(m / launch.bm), launch.split)
    return kern.tile_kernel, grid, [
        x2, *_tile_pointers(ops), out, work, count, m, n, qt.shape[1], qt.plan.padded_cols, *_tile_sizes(sizes),
        launch.steps, sizes["value_scale"], sizes["scale_unit"], sizes["zero_unit"], sizes["dq_offset"]], dict(
        KS=launch.ks, BN=launch.bn, BM=launch.bm, DOT=launch.kernel == "tile_dot",
        HALF_DOT=launch.half_pairs, WFIRST=launch.weights_first, EXACT_DOT=interpreted(),
        **dict(common, PACK=_tile_packing(qt.plan, launch.ks)))


def dequantize(qt: DeviceTensor):
    """float32 ``[N, K]`` weights of ``qt`` on its device, decoded on the device.

    Equal bit for bit to ``qt.source.dequantize()`` (the float64 generic decode rounded once),
    except with NF4 double quantization, whose float32 second-level scales round twice."""
    torch = _torch()
    qt = check_tensor(qt)
    check_runnable(qt.device)
    n, k = qt.shape
    out = torch.empty((n, k), dtype=torch.float32, device=qt.device)
    plan = qt.plan
    epg = plan.elements_per_group
    ks = min(KS_MAX, epg & -epg)
    bn = min(32, max(16, _next_power_of_two(n)))
    ops, sizes, flags = _operands(qt, plan.decode, "float32")
    grid = (math.ceil(n / bn), math.ceil(plan.padded_cols / ks))
    _kernels().dequantize_kernel[grid](
        *_tile_pointers(ops), out, n, k, plan.padded_cols, *_tile_sizes(sizes),
        sizes["value_scale"], sizes["scale_unit"], sizes["zero_unit"], sizes["dq_offset"], KS=ks, BN=bn,
        num_warps=NUM_WARPS,
        **dict(flags, PACK=_tile_packing(plan, ks)))
    return out


def split_value_scale(value_scale: float) -> tuple[float, float]:
    """``(scale_unit, rest)``, ``scale_unit * rest == value_scale`` exactly (``scale_unit`` a power of two): the
    kernels multiply every group scale by ``scale_unit`` before it meets codes or partial sums, and their outputs
    by ``rest``, in [1, 2**128), so no decoded value times its scale exceeds the weight it makes.

    * A value scale in [1, 2**128) stays whole (``scale_unit`` 1, as before).
    * Below 1, its power of two goes into the scales: mxint8's 2**-6 (code 127 times an E8M0 scale of 2**122 or
      more overflows float32; the weight, 2**-6 of it, does not).
    * From 2**128 on, its excess over 2**127: NVFP4's float32 tensor scale times 2**14 (the binary16 placement of
      its codes) for weights above about 5.6e37.

    Folded scales are exact unless they need bits below 2**-149: E8M0's 2**-127 times 2**-6 is an exact
    subnormal; an E4M3 scale (lowest bit 2**-9) times 2**e is exact for e >= -140, and NVFP4's value scale is at
    least 2**-135 (IEEE 754 binary32)."""
    exponent = math.frexp(value_scale)[1] - 1  # value_scale in [2**exponent, 2**(exponent + 1))
    scale_unit = 2.0 ** (min(exponent, 0) + max(exponent - 127, 0))
    return scale_unit, value_scale / scale_unit


def _without(d: dict, *keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def _tile_pointers(ops: dict) -> tuple:
    return (ops["codes"], ops["codes2"], ops["group_bits"], ops["zeros"], ops["zeros2"], ops["members"], ops["lut"],
            ops["scales"], ops["scale_table"], ops["absmax"], ops["row_scales"])


def _tile_sizes(sizes: dict) -> tuple:
    return (sizes["row_words"], sizes["row_words2"], sizes["flag_words"], sizes["zero_words"], sizes["zero_words2"],
            sizes["member_words"], sizes["s_row_stride"], sizes["groups"])


def _groups_per_step(plan: KernelPlan, ks: int, pairs: bool) -> int:
    """``gemv_words_kernel``'s ``GPS``: 1 when a step of ``ks`` elements lies in one group, the groups of a
    step when it holds whole groups (and no type ids, which the float32 decodes read per row or per word; the
    fp16 ``pairs`` read them per row and group too), else 0 (entries per word)."""
    epg = plan.elements_per_group
    if epg % ks == 0:
        return 1
    return ks // epg if ks % epg == 0 and (plan.member_rule == "none" or pairs) else 0


def _flip_word(plan: KernelPlan) -> int:
    """The sign flip of every code of a word (two's complement codes), as a signed int32."""
    word = sum(plan.flip << (j * plan.bits) for j in range(32 // plan.bits)) if plan.flip else 0
    return word - (1 << 32) if word >= 1 << 31 else word


def _tile_packing(plan: KernelPlan, ks: int) -> int:
    """The tile kernels read whole words only when a step holds whole words; else the bit stream."""
    if plan.packing == "words" and ks % (32 // plan.bits):
        return PACK_IDS["bits"]
    return PACK_IDS[plan.packing]


def _operands(qt: DeviceTensor, decode: str, math_dtype: str) -> tuple[dict, dict, dict]:
    """Kernel pointers, run-time sizes and constexpr flags of ``qt`` read with ``decode``; a table
    decode reads the value table rounded to ``math_dtype``, the dtype the values are multiplied in.
    Kept on the tensor: a decode step calls the same layers again and again."""
    key = (decode, math_dtype)
    cached = qt.launch_cache.get(key)
    if cached is None:
        cached = qt.launch_cache[key] = _build_operands(qt, decode, math_dtype)
    return cached


def _build_operands(qt: DeviceTensor, decode: str, math_dtype: str) -> tuple[dict, dict, dict]:
    plan, arrays = qt.plan, qt.arrays
    stored = {op: arrays[name] for op, name in plan.arrays.items()}
    codes = stored["codes"]
    half = "bfloat16" if math_dtype == "bfloat16" else "float16"
    lut = qt.tables[f"pairs_{half}"] if decode == "pairs" else qt.tables[f"lut_{math_dtype}"]
    ops = {op: stored[op] if op in stored and stored[op].numel() else codes  # a pointer is never to nothing
           for op in ("codes", "codes2", "group_bits", "zeros", "zeros2", "members", "scales", "absmax", "row_scales")}
    ops.update(lut=lut, scale_table=qt.tables["scale_table"])
    width = {op: (stored[op].shape[1] if op in stored else 0) for op in ("codes2", "group_bits", "zeros", "zeros2",
                                                                        "members")}
    unit = plan.lut_scale if decode in ("lut", "pairs") else plan.decode_scale
    scale_unit, value_scale = split_value_scale(plan.value_scale(decode))
    sizes = dict(row_words=plan.row_words, row_words2=width["codes2"], flag_words=width["group_bits"],
                 zero_words=width["zeros"], zero_words2=width["zeros2"], member_words=width["members"],
                 s_row_stride=plan.groups if plan.scale_rows > 1 else 0, groups=plan.groups,
                 value_scale=value_scale, scale_unit=scale_unit, zero_unit=1.0 / unit,
                 dq_offset=plan.double_quant_offset)
    mixed = plan.packing == "mixed"
    flags = dict(B=plan.bits, B2=qt.layout["codes2"].bits if mixed else 1, EPG=plan.elements_per_group,
                 PACK=PACK_IDS[plan.packing], DECODE=DECODE_IDS[decode], FLIP=plan.flip, MBITS=plan.mbits,
                 TSIZE=plan.table_size, HALF_BF16=half == "bfloat16", MEMBERS=MEMBER_IDS[plan.member_rule],
                 MEMBER_BITS=max(plan.member_bits, 1),
                 VICTIM=plan.victim_code, ZB=plan.zero_bits, ZB2=qt.layout["zeros2"].bits if mixed else 0,
                 SCALE=_scale_id(plan), DQB=plan.double_quant_block, ROW=plan.has_row_scales)
    return ops, sizes, flags
