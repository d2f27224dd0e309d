"""Kernels of an edge SIMD core, executed lane for lane in Numba, with the instructions they issue.

Four kernels multiply activations ``[M, K]`` by weights ``[N, K]`` the way a 128-bit NEON kernel
would; each runs functionally (the result is what the lanes hold, wrap-around included) and counts
every instruction it issues, per kind (:data:`hwlab.sim.edge.INSTRUCTIONS`):

``fp16``
    The baseline. With fp16 arithmetic (A77): ``FMLA .8h`` by element, eight rows a register,
    one fp16 rounding per multiply-add. Without it (A72, ARMv8.0): ``FCVTL``/``FCVTL2`` of the fp16
    weights and ``FMLA .4s`` in fp32. Fused multiply-adds are emulated in float64 and rounded once.
``w8a8`` / ``w4a8``
    int8 activations times int8 weights, or int4 weights stored two a byte and widened with
    ``SHL``/``SSHR`` (signed nibbles). With ``SDOT`` (A77): four products a 32-bit lane, exact in
    int32. Without (A72): ``DUP`` of the activation, ``SMLAL``/``SMLAL2`` into int16 lanes, flushed
    into int32 (``SADDW``) every ``flush`` steps; an int16 lane that overflows is detected.
``w4a4``
    Agile-Quant's packed multiplier: unsigned 4-bit weights ``w + 8`` of two adjacent rows in one
    16-bit lane, times the shared unsigned activation ``a + 8`` (``MUL .8h`` by element: 16 products
    an instruction, 8 bits each), widened to ``0|out_i|0|out_i+1`` in 32 bits (``UXTL``/``UXTL2``)
    and accumulated (``ADD``); every ``flush`` (at most 2**8) steps the 16-bit halves are split
    into int32 row sums (``UADDW``). The offsets come out with the row sums:
    ``sum (w+8)(a+8) = sum wa + 8 sum w + 8 sum a + 64 K``. A half that passes 16 bits is detected.

Each kernel runs block by block as the NEON code would (16 rows x 8 k for the integer kernels, 8
rows for fp16; weights loaded and widened once per block, activations per row), counting every
instruction as it issues it, and returns the exact integer (or float) results, the lane overflows
it detected and the counts. :func:`instruction_counts` gives the same counts from the shapes alone
(a test holds the two equal): it is what the whole-model timing of :mod:`hwlab.sim.edge_engine` uses.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from hwlab.formats.jit import njit, prange

from .edge import INSTRUCTIONS, EdgeCore

KERNELS = ("fp16", "w8a8", "w4a8", "w4a4")
OPS = tuple(INSTRUCTIONS)
OP = {op: i for i, op in enumerate(OPS)}
ROWS = 16  # rows a block of the integer kernels (a 16-byte register of int8, or 8 lanes of row pairs)
KSTEP = 8  # k a block of the integer kernels
FP16_ROWS = 8  # fp16 lanes in a register
W4A4_FLUSH_MAX = 256  # 2**8 additions of 8-bit products fit a 16-bit half (Agile-Quant)
SMLAL_FLUSH_MAX = 32  # int16 lanes: 32 * 127 * 8 = 32512 <= 32767 (int8 activations, int4 weights)
SMLAL_FLUSH_MAX_W8 = 2  # int8 weights: 2 * 127 * 128 = 32512 (symmetric activations: |a| <= 127)


class EdgeError(ValueError):
    """Inputs a SIMD kernel cannot run (shapes, codes out of range, an unknown kernel)."""


@dataclasses.dataclass(frozen=True)
class KernelRun:
    """What one kernel run gives: ``result`` (int64 accumulators, or float32 for fp16),
    ``instructions`` (kind -> count), ``overflows`` (lane overflows detected) and the shape."""

    kernel: str
    result: np.ndarray
    instructions: dict
    overflows: int
    m: int
    n: int
    k: int


def uses_sdot(core: EdgeCore) -> bool:
    return core.has("sdot")


def uses_fp16_arithmetic(core: EdgeCore) -> bool:
    return core.has("fmla_h")


def default_flush(kernel: str, core: EdgeCore) -> int:
    """The longest accumulation a lane holds without overflow (``0``: no flush needed)."""
    if kernel == "w4a4":
        return W4A4_FLUSH_MAX
    if kernel in ("w4a8", "w8a8") and not uses_sdot(core):
        return SMLAL_FLUSH_MAX if kernel == "w4a8" else SMLAL_FLUSH_MAX_W8
    return 0


def _blocks(n: int, rows: int) -> int:
    return -(-n // rows)


def instruction_counts(kernel: str, core: EdgeCore, m: int, n: int, k: int, flush: int | None = None) -> dict:
    """Instructions ``kernel`` issues for ``[m, k] x [n, k]`` on ``core`` (the loop structure of the
    module docstring; equal to what the functional kernels count)."""
    if kernel not in KERNELS:
        raise EdgeError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    flush = default_flush(kernel, core) if flush is None else flush
    c = dict.fromkeys(OPS, 0)
    if kernel == "fp16":
        blocks = _blocks(n, FP16_ROWS)
        c["ld1"] = blocks * k + m * blocks * _blocks(k, FP16_ROWS)  # weights; activations (8 fp16 a load)
        if uses_fp16_arithmetic(core):
            c["fmla_h"] = m * blocks * k
        else:
            c["fcvtl"] = blocks * k * 2 + m * blocks * _blocks(k, FP16_ROWS) * 2
            c["fmla_s"] = m * blocks * k * 2
            c["fcvtl"] += m * blocks * 2  # the fp32 sums back to fp16
        c["st1"] = m * blocks
        return c
    blocks, ksteps = _blocks(n, ROWS), _blocks(k, KSTEP)
    if kernel == "w4a4":
        c["ld1"] = blocks * ksteps * 4 + m * blocks * ksteps  # 16 rows x 8 k of nibbles; 8 halfword activations
        c["add"] = blocks * ksteps * 4  # AND 0x0f: low nibbles
        c["shift"] = blocks * ksteps * 4  # USHR #4: high nibbles
        c["mul"] = m * blocks * ksteps * KSTEP
        c["uxtl"] = m * blocks * ksteps * KSTEP * 2
        c["add"] += m * blocks * ksteps * KSTEP * 2
        c["uaddw"] = m * blocks * _blocks(ksteps * KSTEP, flush) * 4  # split the halves into int32 sums
        c["add"] += m * blocks * 4  # offset corrections (row sums)
    else:
        c["ld1"] = blocks * ksteps * (2 if kernel == "w4a8" else 8) + m * blocks * _blocks(ksteps * KSTEP, 16)
        if kernel == "w4a8":
            c["shift"] = blocks * ksteps * 2 * 3  # SHL + SSHR (low nibbles), SSHR (high)
        if uses_sdot(core):
            c["sdot"] = m * blocks * ksteps * 8
        else:
            c["add"] = m * blocks * ksteps * KSTEP  # DUP of the activation
            c["smull"] = m * blocks * ksteps * KSTEP * 2  # SMLAL + SMLAL2
            c["uaddw"] = m * blocks * _blocks(ksteps * KSTEP, flush) * 4
    c["scvtf"] = m * blocks * 4
    c["fmul"] = m * blocks * 4
    c["st1"] = m * blocks * 4
    return c


def _check_codes(a: np.ndarray, low: int, high: int, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2 or a.dtype.kind not in "iu":
        raise EdgeError(f"{what} must be a 2-D integer array, got {a.dtype} {a.shape}")
    if a.size and (a.min() < low or a.max() > high):
        raise EdgeError(f"{what} must lie in {low}..{high}, got {a.min()}..{a.max()}")
    return a.astype(np.int64)


def run_kernel(kernel: str, core: EdgeCore, x, w, *, flush: int | None = None) -> KernelRun:
    """Run ``kernel`` on ``core``: integer kernels take activation codes ``x [M, K]`` (-127..127 for
    8 bits, as TRIP makes them; -8..7 for 4) and weight codes ``w [N, K]`` (int8 or int4 ranges);
    ``fp16`` takes float arrays (rounded to fp16). The instruction counts are those the block loops issue as they run."""
    if kernel not in KERNELS:
        raise EdgeError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    flush = default_flush(kernel, core) if flush is None else int(flush)
    if flush < 0 or (kernel in ("w4a4",) or (kernel in ("w4a8", "w8a8") and not uses_sdot(core))) and flush < 1:
        raise EdgeError(f"flush must be a positive number of steps, got {flush}")
    if kernel == "fp16":
        xs, ws = np.asarray(x, np.float16), np.asarray(w, np.float16)
        _check_shapes(xs, ws)
        out = np.empty((xs.shape[0], ws.shape[0]), np.float32)
    else:
        abits = 4 if kernel == "w4a4" else 8
        wbits = 8 if kernel == "w8a8" else 4
        low = -(2 ** (abits - 1)) + (abits == 8)  # 8-bit activations are symmetric (TRIP): -127..127
        xs = _check_codes(x, low, 2 ** (abits - 1) - 1, "activation codes")
        ws = _check_codes(w, -(2 ** (wbits - 1)), 2 ** (wbits - 1) - 1, "weight codes")
        _check_shapes(xs, ws)
        out = np.zeros((xs.shape[0], ws.shape[0]), np.int64)
    m, n, k = xs.shape[0], ws.shape[0], xs.shape[1]
    blocks = _blocks(n, FP16_ROWS if kernel == "fp16" else ROWS)
    counts = np.zeros((blocks, len(OPS)), np.int64)
    events = np.zeros(blocks, np.int64)
    if kernel == "fp16":
        _fp16_blocks(xs.astype(np.float64), ws.astype(np.float64), uses_fp16_arithmetic(core), out, counts)
    elif kernel == "w4a4":
        _w4a4_blocks(xs, ws, flush, out, counts, events)
    elif uses_sdot(core):
        _sdot_blocks(xs, ws, kernel == "w4a8", out, counts)
    else:
        _smlal_blocks(xs, ws, kernel == "w4a8", flush, out, counts, events)
    issued = {op: int(v) for op, v in zip(OPS, counts.sum(axis=0)) if v}
    return KernelRun(kernel, out, issued, int(events.sum()), m, n, k)


def _check_shapes(x, w):
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1] or 0 in x.shape or 0 in w.shape:
        raise EdgeError(f"x must be [M, K] and w [N, K] with the same K, got {x.shape} and {w.shape}")


LD1, ST1, MUL, UXTL, ADD, SHIFT, SDOT, SMULL, UADDW = (OP[o] for o in ("ld1", "st1", "mul", "uxtl", "add", "shift",
                                                                       "sdot", "smull", "uaddw"))
FMLA_H, FMLA_S, FCVTL, SCVTF, FMUL = (OP[o] for o in ("fmla_h", "fmla_s", "fcvtl", "scvtf", "fmul"))


@njit(inline="always")
def _requantize(c, m):  # pragma: no cover - compiled by numba
    """16 int32 sums of a block to fp32, times the scales, stored: for each activation row."""
    c[SCVTF] += 4 * m
    c[FMUL] += 4 * m
    c[ST1] += 4 * m


@njit(parallel=True)
def _w4a4_blocks(x, w, flush, out, counts, events):  # pragma: no cover - compiled by numba
    m, k = x.shape
    n = w.shape[0]
    ksteps = (k + KSTEP - 1) // KSTEP
    for b in prange(counts.shape[0]):
        c = counts[b]
        rows = np.arange(b * ROWS, b * ROWS + ROWS)
        # weights: 16 rows x 8 k of nibbles in four 16-byte loads, split with AND and USHR
        c[LD1] += 4 * ksteps
        c[ADD] += 4 * ksteps
        c[SHIFT] += 4 * ksteps
        uw = np.zeros((ROWS, ksteps * KSTEP), np.int64)  # w + 8; padding (rows past n, k past K) is 0
        sum_w = np.zeros(ROWS, np.int64)
        for r in range(ROWS):
            if rows[r] < n:
                for kk in range(k):
                    uw[r, kk] = w[rows[r], kk] + 8
                    sum_w[r] += uw[r, kk]
        for row in range(m):
            lanes = np.zeros(ROWS // 2, np.uint64)  # eight 32-bit lanes: 0|out_2l+1|0|out_2l
            true = np.zeros(ROWS, np.int64)  # what the halves would hold without wrapping
            sums = np.zeros(ROWS, np.int64)
            sum_a, steps = 0, 0
            for kk in range(ksteps * KSTEP):
                if kk % KSTEP == 0:
                    c[LD1] += 1  # eight activations, one 16-bit lane each
                ua = x[row, kk] + 8 if kk < k else 0
                sum_a += ua if kk < k else 0
                c[MUL] += 1  # MUL .8h by element: two products a 16-bit lane
                c[UXTL] += 2  # UXTL, UXTL2: bytes to 16-bit halves
                c[ADD] += 2
                for lane in range(ROWS // 2):
                    packed = ((uw[2 * lane, kk] | (uw[2 * lane + 1, kk] << 8)) * ua) & 0xFFFF
                    spread = np.uint64((packed & 0xFF) | ((packed >> 8) << 16))
                    lanes[lane] = (lanes[lane] + spread) & np.uint64(0xFFFFFFFF)
                    true[2 * lane] += packed & 0xFF
                    true[2 * lane + 1] += packed >> 8
                steps += 1
                if steps == flush or kk == ksteps * KSTEP - 1:  # split the halves into int32 row sums
                    c[UADDW] += 4
                    for lane in range(ROWS // 2):
                        sums[2 * lane] += int(lanes[lane] & np.uint64(0xFFFF))
                        sums[2 * lane + 1] += int(lanes[lane] >> np.uint64(16))
                        lanes[lane] = np.uint64(0)
                    for r in range(ROWS):
                        if true[r] > 0xFFFF:
                            events[b] += 1
                        true[r] = 0
                    steps = 0
            c[ADD] += 4  # the offsets: sum (w+8)(a+8) - 8 sum(w+8) - 8 sum(a+8) + 64 K
            for r in range(ROWS):
                if rows[r] < n:
                    out[row, rows[r]] = sums[r] - 8 * sum_w[r] - 8 * sum_a + 64 * k
        _requantize(c, m)


@njit(inline="always")
def _int_weights(w, rows, k, ksteps, c, nibbles):  # pragma: no cover - compiled by numba
    """A block's weights as int8 lanes: loaded (two 16-byte loads of nibbles, or eight of bytes) and,
    for nibbles, widened with SHL + SSHR (low) and SSHR (high)."""
    n = w.shape[0]
    c[LD1] += ksteps * (2 if nibbles else 8)
    if nibbles:
        c[SHIFT] += ksteps * 6
    block = np.zeros((ROWS, ksteps * KSTEP), np.int64)
    for r in range(ROWS):
        if rows[r] < n:
            for kk in range(k):
                block[r, kk] = w[rows[r], kk]
    return block


@njit(parallel=True)
def _sdot_blocks(x, w, nibbles, out, counts):  # pragma: no cover - compiled by numba
    m, k = x.shape
    n = w.shape[0]
    ksteps = (k + KSTEP - 1) // KSTEP
    for b in prange(counts.shape[0]):
        c = counts[b]
        rows = np.arange(b * ROWS, b * ROWS + ROWS)
        block = _int_weights(w, rows, k, ksteps, c, nibbles)
        for row in range(m):
            acc = np.zeros(ROWS, np.int32)  # four int32 lanes in each of four registers
            for k4 in range(0, ksteps * KSTEP, 4):
                if k4 % 16 == 0:
                    c[LD1] += 1  # sixteen int8 activations
                c[SDOT] += 4  # SDOT .4s by element: four rows x four k each
                for r in range(ROWS):
                    dot = 0
                    for j in range(4):
                        if k4 + j < k:
                            dot += x[row, k4 + j] * block[r, k4 + j]
                    acc[r] = np.int32(acc[r] + np.int32(dot))
            for r in range(ROWS):
                if rows[r] < n:
                    out[row, rows[r]] = acc[r]
        _requantize(c, m)


@njit(parallel=True)
def _smlal_blocks(x, w, nibbles, flush, out, counts, events):  # pragma: no cover - compiled by numba
    m, k = x.shape
    n = w.shape[0]
    ksteps = (k + KSTEP - 1) // KSTEP
    for b in prange(counts.shape[0]):
        c = counts[b]
        rows = np.arange(b * ROWS, b * ROWS + ROWS)
        block = _int_weights(w, rows, k, ksteps, c, nibbles)
        for row in range(m):
            lanes = np.zeros(ROWS, np.int64)  # sixteen int16 lanes (two registers)
            true = np.zeros(ROWS, np.int64)
            sums = np.zeros(ROWS, np.int64)
            steps = 0
            for kk in range(ksteps * KSTEP):
                if kk % 16 == 0:
                    c[LD1] += 1
                a = x[row, kk] if kk < k else 0
                c[ADD] += 1  # DUP of the activation byte
                c[SMULL] += 2  # SMLAL, SMLAL2 into int16 lanes
                for r in range(ROWS):
                    p = a * block[r, kk]
                    lanes[r] = ((lanes[r] + p + 32768) & 0xFFFF) - 32768
                    true[r] += p
                steps += 1
                if steps == flush or kk == ksteps * KSTEP - 1:  # SADDW, SADDW2: int16 lanes into int32 sums
                    c[UADDW] += 4
                    for r in range(ROWS):
                        if true[r] > 32767 or true[r] < -32768:
                            events[b] += 1
                        sums[r] += lanes[r]
                        lanes[r], true[r] = 0, 0
                    steps = 0
            for r in range(ROWS):
                if rows[r] < n:
                    out[row, rows[r]] = sums[r]
        _requantize(c, m)


@njit(inline="always")
def _round_half(v):  # pragma: no cover - compiled by numba
    """float64 ``v`` rounded to the nearest IEEE binary16 value (ties to even, overflow to inf)."""
    if v == 0.0 or not np.isfinite(v):
        return v
    a = abs(v)
    _, e = math.frexp(a)  # a = f * 2**e, f in [0.5, 1): the leading bit is 2**(e-1)
    quantum = 2.0 ** (max(e - 1, -14) - 10)  # binary16: 11 significant bits, subnormals below 2**-14
    r = np.round(a / quantum) * quantum  # half to even
    if r > 65504.0:
        r = np.inf
    return r if v > 0 else -r


@njit(parallel=True)
def _fp16_blocks(x, w, half_arithmetic, out, counts):  # pragma: no cover - compiled by numba
    m, k = x.shape
    n = w.shape[0]
    ksteps = (k + FP16_ROWS - 1) // FP16_ROWS
    for b in prange(counts.shape[0]):
        c = counts[b]
        c[LD1] += k  # eight fp16 weights (rows) a k
        if not half_arithmetic:
            c[FCVTL] += 2 * k  # the weights to fp32, once for every activation row
        for row in range(m):
            c[LD1] += ksteps  # eight fp16 activations
            if half_arithmetic:
                c[FMLA_H] += k
            else:
                c[FCVTL] += 2 * ksteps
                c[FMLA_S] += 2 * k
                c[FCVTL] += 2  # FCVTN, FCVTN2: the fp32 sums back to fp16
            c[ST1] += 1
            for r in range(b * FP16_ROWS, min(n, b * FP16_ROWS + FP16_ROWS)):
                acc = 0.0
                for kk in range(k):
                    if half_arithmetic:  # FMLA .8h: one fp16 rounding (the product and sum exact in float64)
                        acc = _round_half(acc + x[row, kk] * w[r, kk])
                    else:  # FMLA .4s: one fp32 rounding
                        acc = np.float64(np.float32(acc + x[row, kk] * w[r, kk]))
                out[row, r] = acc if half_arithmetic else _round_half(acc)


def fp16_reference(x, w, half_arithmetic: bool) -> np.ndarray:
    """numpy reference of the fp16 kernel's arithmetic (one fused rounding a step, in k order)."""
    x = np.asarray(x, np.float16).astype(np.float64)
    w = np.asarray(w, np.float16).astype(np.float64)
    acc = np.zeros((x.shape[0], w.shape[0]))
    dtype = np.float16 if half_arithmetic else np.float32
    for kk in range(x.shape[1]):
        acc = (acc + x[:, kk:kk + 1] * w[None, :, kk]).astype(dtype).astype(np.float64)
    return acc.astype(np.float16).astype(np.float32)
