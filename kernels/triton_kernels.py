"""Triton kernels that multiply by a quantized weight matrix: ``y = x @ dequant(W)^T``.

Every kernel reads the stored arrays of a tensor as its :class:`~hwlab.kernels.plan.KernelPlan`
says (constexpr switches below) and decodes codes with the plan's decode, so one kernel serves
every datatype of a family, built-in or user-defined:

``gemv_words_kernel``
    M = 1, codes in whole uint32 words (1, 2, 4 or 8 bits). A program owns ``BN`` rows and a
    run of K steps (split-K); each step loads ``KS / (32 / bits)`` words per row and decodes
    code ``j`` of every word at once. Integer codes of 2, 4 and 8 bits take the fp16 pair path
    (:func:`half_products`): two codes of a word become one fp16x2 register with one LOP3 and one
    HFMA2 and are multiplied by activations two at a time (2.3 instructions a code for int4, static
    SASS). Other integer codes use no int-to-float conversion: the code is moved into the upper
    mantissa of an fp32 ``1.0`` (``1 + q * 2**-bits``) and the activation is pre-multiplied by
    ``2**bits``, so one shift, one logic op and one FMA handle a code; the ``2**bits * sum(x)``
    this adds is subtracted once per word. Other decodes read the plan's
    table (one cached load per code). Scales, zero points and type ids are read once per step
    when a step lies in one group, once per step and group when a step holds whole groups (``GPS``;
    not with type ids), else once per word. The dispatch gives each row long runs per step (up to
    512 bytes) and, on a large layer, whole rows to one program (DRAM streams rows).
``gemv_mixed_kernel``
    M = 1 for ``mixed_2_4``: each row reads its 4-bit or 2-bit stream group by group (a running
    rank per row), both decoded as in ``gemv_words_kernel``.
``tile_kernel``
    Any M and every packing (3, 5, 6, 7-bit streams, trit5 bytes, ``mixed_2_4``). A step is one
    ``[BN, KS]`` tile of codes inside one group, decoded to values, then multiplied with
    ``tl.dot`` (M > 1: tensor cores, fp32 accumulation, the scale applied after each step's dot)
    or summed on CUDA cores (M = 1). Integer and minifloat codes in whole words reach ``tl.dot`` as
    fp16 pairs (:func:`half_tile`: two codes of a word with one logic op and one HFMA2, or two shifts
    and masks; x's columns read in the pairs' order), 3.9 instructions a code for int4 at M = 16
    against 9.4 for the float32 decode (static SASS).
``dequantize_kernel``
    The weights themselves, float32 ``[N, K]``: ``(value * (scale * scale_unit)) * value_scale``, the
    same product, rounded once, as :meth:`~hwlab.formats.Unpacked.dequantize` for every format but
    NF4 double quantization (whose float32 second level rounds twice, as bitsandbytes does).

The plan's value scale is applied as two factors (:func:`~hwlab.kernels.dispatch.split_value_scale`):
``scale_unit``, a power of two (at most 1 unless the value scale passes float32's range), multiplies each
scale as it is read (:func:`_scale`), before it meets codes or partial sums, and ``value_scale``, the rest,
in [1, 2**128), the outputs; so a decoded value times its scale never exceeds the weight it makes (mxint8:
code 127 times an E8M0 scale of 2**127 overflows float32, the weight, times 2**-6 first, is 2**128 - 2**121).

Split-K programs add float32 partial sums into a workspace that stays zeroed between calls, and
the last program of a tile stores the sum (``ATOMIC``, :func:`finish`); a program that owns all of
K stores its rows. Outputs saturate at ``OUT_MAX`` (finite in, finite out). Loop bounds are run
time values; all shapes of ``tl.arange`` are powers of two. Nothing here runs at import.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .half_pairs import HALF_SCALE_EXPONENT, SUBNORMAL_EXPONENT

FP32_ONE_BITS = tl.constexpr(0x3F800000)  # IEEE binary32 1.0
FP32_2_23_BITS = tl.constexpr(0x4B000000)  # IEEE binary32 2**23: its ulp is 1, so 2**23 | q = 2**23 + q for q < 2**23
FP32_MAX = tl.constexpr(3.4028234663852886e38)  # largest finite IEEE binary32
FP32_INF = tl.constexpr(float("inf"))
SUBNORMAL_UNIT = tl.constexpr(float(2**SUBNORMAL_EXPONENT))  # 1 / the fp16 subnormal of mantissa 1
FP16_SCALE_EXPONENT = tl.constexpr(HALF_SCALE_EXPONENT)  # half_scale's largest k for fp16 x multiplied in fp16
HALF_SCALE_MAX = tl.constexpr(float(2**HALF_SCALE_EXPONENT))  # ... and that scale, 2**k


@triton.jit
def mask_all(mask, condition):
    """``mask & condition`` for a scalar ``condition`` (the interpreter's ``&`` of a tensor and a
    scalar mask gives int32, which a load refuses as its mask)."""
    return (mask.to(tl.int32) & condition.to(tl.int32)) != 0


@triton.jit
def load_field(ptr, row_len, rows, idx, mask, BITS: tl.constexpr):
    """Entries ``idx`` of a little-endian stream of ``BITS``-bit fields, ``row_len`` int32 words a row."""
    bit = idx * BITS
    word = bit // 32
    shift = (bit % 32).to(tl.uint32)
    lo = tl.load(ptr + rows * row_len + word, mask=mask, other=0).to(tl.uint32, bitcast=True)
    v = lo >> shift
    if 32 % BITS != 0:  # a field may straddle two words
        spill = mask_all(mask, shift + BITS > 32)
        hi = tl.load(ptr + rows * row_len + word + 1, mask=spill, other=0).to(tl.uint32, bitcast=True)
        v = v | ((hi << 1) << (31 - shift))  # two shifts: never a shift by 32
    return v & ((1 << BITS) - 1)


@triton.jit
def popcount32(v):
    """Set bits of every uint32 lane (SWAR: no intrinsic, so it also runs in the interpreter)."""
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return (v * 0x01010101) >> 24


@triton.jit
def _pair_words(pairs_ptr, member):
    """The eight int32 words of table row ``member`` of a pair table (``DECODE == 3``): word ``j``
    holds the 16-bit patterns of codes ``2j`` (low half) and ``2j + 1`` (high half). Scalars, or one
    per row when ``member`` is a ``[BN, 1]`` tensor."""
    base = pairs_ptr + member * 8
    return (tl.load(base + 0), tl.load(base + 1), tl.load(base + 2), tl.load(base + 3), tl.load(base + 4),
            tl.load(base + 5), tl.load(base + 6), tl.load(base + 7))


@triton.jit
def _pair_select(q, words, TSIZE: tl.constexpr, HALF_BF16: tl.constexpr):
    """float32 values of codes ``q`` (< ``TSIZE`` <= 16) from the pair-table ``words`` in registers:
    a select tree on code bits 1..3 picks the word (``TSIZE / 2 - 1`` selects), bit 0 picks its half,
    a shift makes it a binary16 (or bfloat16, ``HALF_BF16``) value, exact in float32. No memory access
    and no warp shuffle per code (static SASS counts: bench/kernel_instructions.py)."""
    w0, w1, w2, w3, w4, w5, w6, w7 = words
    qi = q.to(tl.int32)
    if TSIZE > 2:
        b = (qi & 2) != 0
        w0 = tl.where(b, w1, w0)
        if TSIZE > 4:
            w2 = tl.where(b, w3, w2)
            b = (qi & 4) != 0
            w0 = tl.where(b, w2, w0)
            if TSIZE > 8:
                w4 = tl.where((qi & 2) != 0, w5, w4)
                w6 = tl.where((qi & 2) != 0, w7, w6)
                w4 = tl.where(b, w6, w4)
                w0 = tl.where((qi & 8) != 0, w4, w0)
    half = (w0 >> ((qi & 1) * 16)) & 0xFFFF
    if HALF_BF16:
        v = (half << 16).to(tl.float32, bitcast=True)
    else:
        v = half.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    return v


@triton.jit
def _decode(q, member, lut_ptr, B: tl.constexpr, DECODE: tl.constexpr, FLIP: tl.constexpr,
            MBITS: tl.constexpr, TSIZE: tl.constexpr, HALF_BF16: tl.constexpr, MEMBERS: tl.constexpr):
    """float32 values of uint32 codes ``q``: int, float (binary16 placement), table decode (a load per
    code) or pair-table decode (``lut_ptr`` is the pair table: :func:`_pair_select`)."""
    if DECODE == 0:
        v = (q ^ (FP32_2_23_BITS | FLIP)).to(tl.float32, bitcast=True) - (8388608.0 + FLIP)
    elif DECODE == 1:
        half = (((q >> (B - 1)) & 1) << 15) | ((q & ((1 << (B - 1)) - 1)) << (10 - MBITS))
        v = half.to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    elif DECODE == 2:
        v = tl.load(lut_ptr + member * TSIZE + q.to(tl.int32))
    elif MEMBERS == 2:  # OliVe: both members' values, then the element's
        v = tl.where(member == 1, _pair_select(q, _pair_words(lut_ptr, 1), TSIZE, HALF_BF16),
                     _pair_select(q, _pair_words(lut_ptr, 0), TSIZE, HALF_BF16))
    else:
        v = _pair_select(q, _pair_words(lut_ptr, member), TSIZE, HALF_BF16)
    return v


@triton.jit
def _pair_member(q, partner, odd, VICTIM: tl.constexpr):
    """OliVe: an element is an outlier (member 1) when its partner holds the victim code;
    with both victims the even one is the outlier."""
    partner_victim = partner == VICTIM
    return tl.where(odd, partner_victim & (q != VICTIM), partner_victim).to(tl.int32)


@triton.jit
def _scale(scales_ptr, stable_ptr, absmax_ptr, rows_ptr, n, g, mask, s_row_stride, NG, dq_offset, scale_unit,
           SCALE: tl.constexpr, DQB: tl.constexpr, ROW: tl.constexpr):
    """float32 scale of group ``g`` of row ``n``: stored float, raw bf16, E8M0 code as an exponent or 8-bit code
    looked up, then NF4 double quantization's block absmax and offset, then the int8 row scale, times
    ``scale_unit`` (module docstring)."""
    idx = n * s_row_stride + g
    if SCALE == 0:
        s = tl.load(scales_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    elif SCALE == 1:
        raw = tl.load(scales_ptr + idx, mask=mask, other=0).to(tl.int32) & 0xFFFF
        s = (raw << 16).to(tl.float32, bitcast=True)
    elif SCALE == 3:  # E8M0 (hwlab.kernels.dispatch.E8M0_CODE_BITS): 2**(code - 127), code 0 subnormal, 255 read as 0
        code = tl.load(scales_ptr + idx, mask=mask, other=0).to(tl.int32) & 0xFF
        s = tl.where(code == 0, 1 << 22, tl.where(code == 255, 0, code << 23)).to(tl.float32, bitcast=True)
    else:
        code = tl.load(scales_ptr + idx, mask=mask, other=0).to(tl.int32)
        s = tl.load(stable_ptr + code)
    if DQB > 0:
        s = s * tl.load(absmax_ptr + (n * NG + g) // DQB, mask=mask, other=0.0) + dq_offset
    if ROW:
        s = s * tl.load(rows_ptr + n, mask=mask, other=0.0).to(tl.float32)
    return s * scale_unit


@triton.jit
def saturate(y, OUT_MAX: tl.constexpr):
    """``y`` clamped to ``[-OUT_MAX, OUT_MAX]``; a NaN stays NaN (as in torch's ``linear``: a NaN
    in x reaches every output of its row)."""
    return tl.minimum(tl.maximum(y, -OUT_MAX, propagate_nan=tl.PropagateNan.ALL), OUT_MAX,
                      propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def finish(y, out_ptr, offsets, mask, work_ptr, count_ptr, tile, splits, ATOMIC: tl.constexpr,
            OUT_MAX: tl.constexpr):
    """Store ``y`` saturated in the output dtype; with split-K (``ATOMIC``) add it to the float32
    workspace instead, and the last of the ``splits`` programs of a tile (a per-tile arrival count)
    stores the sum, leaving workspace and count at zero for the next call: one launch, no zero fill
    and no cast kernel. (The barrier orders every thread's adds before the count's release, as in
    CUTLASS's split-K semaphore; the sums are read by atomic adds of zero, so they see every add.)"""
    if ATOMIC:
        tl.atomic_add(work_ptr + offsets, y, mask=mask, sem="relaxed")
        tl.debug_barrier()
        arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel")
        if arrived == splits - 1:
            total = tl.atomic_add(work_ptr + offsets, tl.zeros_like(y), mask=mask, sem="relaxed")
            tl.store(work_ptr + offsets, tl.zeros_like(y), mask=mask)
            tl.store(out_ptr + offsets, saturate(total, OUT_MAX).to(out_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(count_ptr + tile, 0, sem="relaxed")
    else:
        tl.store(out_ptr + offsets, saturate(y, OUT_MAX).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def placed_code(u, xj, j: tl.constexpr, B: tl.constexpr, one):
    """Code ``j`` of every uint32 word ``u`` as ``f = 1 + q * 2**(t-23)`` (no int-to-float conversion)
    and ``xj`` scaled to match, ``xj * 2**(23-t)``, so that ``f * x' = x * 2**(23-t) + q * x``.

    The code sits at bit ``j*B``; it moves to a bit ``t`` in [12, 23-B] (1 + q 2**(t-23) keeps |q x|
    above 2**-12 of the ``x * 2**(23-t)`` it rides on; float32 keeps 24 bits), chosen so that codes
    whose bits differ by a multiple of the window share one shifted copy of the word. ``one`` is the
    bits of 1.0 in a register: the AND with the code's mask and the OR fuse into one LOP3."""
    LO: tl.constexpr = 12
    SPAN: tl.constexpr = 23 - B - LO + 1
    t = LO + (j * B - LO) % SPAN  # = j * B when that is in the window
    if t > j * B:
        moved = u << (t - j * B)
    elif t < j * B:
        moved = u >> (j * B - t)
    else:
        moved = u
    f = ((moved & (((1 << B) - 1) << t)) | one).to(tl.float32, bitcast=True)
    return f, xj * (1 << (23 - t))


@triton.jit
def half_scale(x_ptr, K, XCHUNK: tl.constexpr, XCHUNKS: tl.constexpr, TOP: tl.constexpr, WIDE: tl.constexpr):
    """``(xs, 1 / xs)``, float32 scalars: the power of two ``2**k`` that brings the largest ``|x|`` of the
    row (``K`` values, read as ``XCHUNKS`` unrolled loads of ``XCHUNK``: all in flight at once) into
    ``[2**(TOP-1), 2**TOP)``, with ``k <= 15`` for fp16 x (``xs`` an fp16 value: fp16 x that small only
    gains range, every fp16 x times 2**15 is normal), ``k <= 30`` for fp16 x with ``WIDE`` 2 (two fp16 multiplies,
    :func:`_x_pair`), and ``k <= 126`` for bf16 and, with ``WIDE`` 1 (x' made in float32), for fp16 too
    (``1 / xs`` a normal float32); an all-zero x takes the largest k.
    Infinities and NaNs do not count (they stay what they are in ``x * xs``, so an inf gives the saturated outputs
    of the float32 path, not NaN; the subnormal decode's sign offset makes it NaN).
    :func:`half_products` multiplies by ``xs`` and the kernel by ``1 / xs``, both exact."""
    FP16: tl.constexpr = x_ptr.dtype.element_ty == tl.float16
    KMAX: tl.constexpr = FP16_SCALE_EXPONENT * (2 if WIDE == 2 else 1) if FP16 and WIDE != 1 else 126
    xm = tl.zeros((XCHUNK,), tl.float32)
    for c in tl.static_range(XCHUNKS):
        kk = c * XCHUNK + tl.arange(0, XCHUNK)
        ax = tl.abs(tl.load(x_ptr + kk, mask=kk < K, other=0.0).to(tl.float32))
        xm = tl.maximum(xm, tl.where(ax < FP32_INF, ax, 0.0))  # the finite |x| only: an inf stays inf in x'
    biased = (tl.max(xm, axis=0).to(tl.int32, bitcast=True) >> 23) & 0xFF  # |x| max in [2**(b-127), 2**(b-126))
    k = tl.minimum(126 + TOP - biased, KMAX)
    return ((127 + k) << 23).to(tl.float32, bitcast=True), ((127 - k) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _x_pair(x_ptr, cw, K, xs, i: tl.constexpr, E: tl.constexpr, EVEN: tl.constexpr, B: tl.constexpr,
            WIDE: tl.constexpr):
    """``x' = x * xs`` (fp16) of codes ``i`` and ``i + E/2`` of every word column ``cw`` (``B``-bit codes): the
    pair's bits as one int32 (low half code ``i``, :func:`half_word_ptx`) and its float32 sum. fp16 x is
    multiplied in fp16 by ``xs`` (``WIDE`` 0) or by its two factors ``min(xs, 2**15)`` and the rest (2: a decode of
    small values, :func:`~hwlab.kernels.half_pairs.wide_activations`; exact, the rest 1 but for a row whose largest
    ``|x|`` is below ``2**(TOP - 16)``, TOP of :func:`half_scale`).
    ``WIDE`` 1 (the subnormal decode):
    ``x * xs * 2**-p0`` made in float32 (``xs`` may exceed fp16's range), p0 the pair's bit in its half
    (:func:`~hwlab.kernels.half_pairs.subnormal_pair_constants`), and the sum of ``x * xs``."""
    P0: tl.constexpr = (i % (10 // B)) * B if WIDE == 1 else 0
    ka = cw * E + i
    if EVEN:
        xa = tl.load(x_ptr + ka, eviction_policy="evict_last")
        xb = tl.load(x_ptr + ka + E // 2, eviction_policy="evict_last")
    else:
        xa = tl.load(x_ptr + ka, mask=ka < K, other=0.0, eviction_policy="evict_last")
        xb = tl.load(x_ptr + ka + E // 2, mask=ka + E // 2 < K, other=0.0, eviction_policy="evict_last")
    if xa.dtype == tl.float16 and WIDE == 2:  # xs = s1 * s2, two fp16 powers of two (s2 = 1 for most rows)
        s1 = tl.minimum(xs, HALF_SCALE_MAX)
        s2 = (xs / s1).to(tl.float16)
        a = (xa * s1.to(tl.float16)) * s2
        b = (xb * s1.to(tl.float16)) * s2
    elif xa.dtype == tl.float16 and WIDE == 0:  # exact: xs is an fp16 power of two (:func:`half_scale`)
        a = xa * xs.to(tl.float16)
        b = xb * xs.to(tl.float16)
    else:
        a = (xa.to(tl.float32) * (xs * (1.0 / (1 << P0)))).to(tl.float16)
        b = (xb.to(tl.float32) * (xs * (1.0 / (1 << P0)))).to(tl.float16)
    bits = (a.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) | (b.to(tl.int16, bitcast=True).to(tl.int32) << 16)
    total = a.to(tl.float32) + b.to(tl.float32)
    if P0 > 0:
        total = total * (1 << P0)  # exact: the sum of x * xs
    return bits[None, :], total


@triton.jit
def _half_pair_values(u, i: tl.constexpr, B: tl.constexpr, FLIP: tl.constexpr, SUBNORMAL: tl.constexpr):
    """Codes ``i`` and ``i + E/2`` of every word ``u`` as exact fp16 values, ``[BN, P, 2]`` (the
    interpreter's twin of one decode step of :func:`half_word_ptx`); with ``SUBNORMAL``, the fp16 subnormals
    ``(q + FLIP) * 2**(p0 - 24)`` (:func:`~hwlab.kernels.half_pairs.subnormal_pair_constants`)."""
    W: tl.constexpr = 10 // B
    MASK: tl.constexpr = (1 << B) - 1
    p0 = (i % W) * B
    src = u if i < W else u >> (W * B)
    codes = src & ((MASK << p0) | (MASK << (16 + p0)))
    flips = (FLIP << p0) | (FLIP << (16 + p0))
    if SUBNORMAL:
        return _halves(codes ^ flips)
    return (_halves(codes ^ (0x64006400 | flips)) * tl.cast(1.0 / (1 << p0), tl.float16)
            - tl.cast((1 << (10 - p0)) + FLIP, tl.float16))


@triton.jit
def _halves(h):
    """The two binary16 halves of uint32 ``h`` as fp16 ``[..., 2]`` (low half first)."""
    h = h.to(tl.int32, bitcast=True)
    return tl.join((h & 0xFFFF).to(tl.int16), (h >> 16).to(tl.int16)).to(tl.float16, bitcast=True)


@triton.jit
def _shifted(u, d: tl.constexpr):
    """``u`` shifted left by ``d`` bits (right where ``d`` is negative)."""
    if d > 0:
        u = u << d
    elif d < 0:
        u = u >> (-d)
    return u


@triton.jit
def _float_pair_values(u, i: tl.constexpr, B: tl.constexpr, MBITS: tl.constexpr):
    """Minifloat codes ``i`` and ``i + E/2`` of every word ``u`` placed in binary16 as fp16 ``[BN, P, 2]``
    (:func:`~hwlab.kernels.plan.minifloat_in_fp16`: the sign to bit 15, the magnitude to bits
    ``10 - MBITS`` up; exact, the minifloat's value times ``2**(15 - bias)``), both halves with the same
    two shifts and masks."""
    P: tl.constexpr = i * B
    MAG: tl.constexpr = ((1 << (B - 1)) - 1) << (10 - MBITS)
    mag = _shifted(u, 10 - MBITS - P) & (MAG | (MAG << 16))
    sign = _shifted(u, 16 - P - B) & 0x80008000
    return _halves(mag | sign)


@triton.jit
def lut_registers(reg_ptr, PAIR: tl.constexpr):
    """The eight int32 registers of the fp16 pair table decode (``PAIR`` 2: member 0's row of the int32
    ``[members, 8]`` table at ``reg_ptr``, :func:`~hwlab.kernels.device.register_table`, i.e.
    :func:`~hwlab.kernels.half_pairs.lut_registers` of its binary16 entries; :func:`member_registers` reads the
    other members' where they differ), loaded once per program; zeros for the other decodes, which do not read
    them."""
    if PAIR == 2:
        table = (tl.load(reg_ptr), tl.load(reg_ptr + 1), tl.load(reg_ptr + 2), tl.load(reg_ptr + 3),
                 tl.load(reg_ptr + 4), tl.load(reg_ptr + 5), tl.load(reg_ptr + 6), tl.load(reg_ptr + 7))
    else:
        table = (0, 0, 0, 0, 0, 0, 0, 0)
    return table


@triton.jit
def _member_register(reg_ptr, ids, register, r: tl.constexpr, VARY: tl.constexpr, G: tl.constexpr,
                     COLS: tl.constexpr):
    """Register ``r`` of each type id's table where it differs between members (bit ``r`` of ``VARY``), as
    ``[R, COLS]`` columns (:func:`_spread`), else ``register`` (member 0's, the same for all)."""
    if (VARY >> r) & 1:
        register = _spread(tl.load(reg_ptr + ids * 8 + r), G, COLS)
    return register


@triton.jit
def member_registers(reg_ptr, ids, table, VARY: tl.constexpr, G: tl.constexpr, COLS: tl.constexpr):
    """The pair table registers of every row's and group's type id (``ids``: int32, one per row and group as
    :func:`_spread` takes them): :func:`lut_registers` ``table`` of member 0, with the registers that differ
    between members (``VARY``, a bit per register, :func:`~hwlab.kernels.dispatch.varying_registers`; BitMoD's
    members differ in entry 8 alone, so in one register) loaded per type id from the L1-resident table at
    ``reg_ptr``."""
    return (_member_register(reg_ptr, ids, table[0], 0, VARY, G, COLS),
            _member_register(reg_ptr, ids, table[1], 1, VARY, G, COLS),
            _member_register(reg_ptr, ids, table[2], 2, VARY, G, COLS),
            _member_register(reg_ptr, ids, table[3], 3, VARY, G, COLS),
            _member_register(reg_ptr, ids, table[4], 4, VARY, G, COLS),
            _member_register(reg_ptr, ids, table[5], 5, VARY, G, COLS),
            _member_register(reg_ptr, ids, table[6], 6, VARY, G, COLS),
            _member_register(reg_ptr, ids, table[7], 7, VARY, G, COLS))


@triton.jit
def _table_entry(q, table):
    """The binary16 patterns (int32) of the 4-bit codes ``q`` in ``table`` (:func:`lut_registers`; each register a
    scalar or a tensor that broadcasts with ``q``): entry c's low byte is byte c % 4 of register c // 4, its high
    byte the same byte of register 4 + c // 4."""
    r = q >> 2
    shift = (q & 3) * 8
    low = tl.where(r == 0, table[0], tl.where(r == 1, table[1], tl.where(r == 2, table[2], table[3])))
    high = tl.where(r == 0, table[4], tl.where(r == 1, table[5], tl.where(r == 2, table[6], table[7])))
    return ((low >> shift) & 0xFF) | (((high >> shift) & 0xFF) << 8)


@triton.jit
def _table_pair_values(u, table, i: tl.constexpr):
    """4-bit codes ``i`` and ``i + 4`` of every word ``u`` read from the bytes of ``table``
    (:func:`lut_registers`) as fp16, ``[BN, P, 2]`` (the interpreter's twin of
    :func:`~hwlab.kernels.half_pairs._lut_word`)."""
    low = _table_entry(((u >> (4 * i)) & 15).to(tl.int32), table)
    high = _table_entry(((u >> (16 + 4 * i)) & 15).to(tl.int32), table)
    return tl.join(low, high).to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def _half_pair_product(u, xbits, table, i: tl.constexpr, B: tl.constexpr, FLIP: tl.constexpr, PAIR: tl.constexpr,
                       MBITS: tl.constexpr):
    """``[BN, P, 2]`` fp16: codes ``i`` and ``i + E/2`` (``PAIR`` 0: integers; 1: minifloats placed in binary16;
    2: 4-bit codes of the binary16 ``table``, :func:`lut_registers`; 3: integers as fp16 subnormals) times their x'
    (the twin's product step)."""
    xp = tl.join((xbits & 0xFFFF).to(tl.int16), (xbits >> 16).to(tl.int16)).to(tl.float16, bitcast=True)
    if PAIR == 1:
        v = _float_pair_values(u, i, B, MBITS)
    elif PAIR == 2:
        v = _table_pair_values(u, table, i)
    else:
        v = _half_pair_values(u, i, B, FLIP, PAIR == 3)
    return v * xp


@triton.jit
def _columns(t):
    """The even and the odd columns of a 2-D tensor ``t`` (``[R, C]`` -> two ``[R, C/2]``)."""
    return tl.split(tl.reshape(t, (t.shape[0], t.shape[1] // 2, 2)))


@triton.jit
def half_products(u, x_ptr, table, cw, K, xs, EVEN: tl.constexpr, B: tl.constexpr, FLIP: tl.constexpr,
                  PAIR: tl.constexpr, MBITS: tl.constexpr, PTX: tl.constexpr, XW: tl.constexpr):
    """``sum_j q_j * x'_j`` over the codes of every uint32 word ``u`` ([BN, P]), float32, with ``x' = x * xs``,
    and ``sum_j x'_j`` ([P], float32); with ``PTX``, each of both per pair of word columns (2c, 2c + 1:
    ``[BN, P/2]`` and ``[P/2]``).

    Codes ``i`` and ``i + E/2`` of a word (E = 32 / B codes) sit in the two halves of one 32-bit
    register, so two codes become fp16 values with one logic op and one HFMA2: the code, its sign bit
    flipped (``FLIP``), is put into the mantissa of fp16 1024 (``0x6400``; 1024 + 2**(p B) c is exact
    while p B + B <= 10, else the word is shifted once), then scaled by 2**(-p B) and offset (``PAIR`` 0).
    ``PAIR`` 3: integer codes as fp16 subnormals, ``(q + FLIP) * 2**(p B - 24)`` with the one logic op alone, each
    pair's x' scaled by ``2**(-p B)`` instead: ``sum (q + FLIP) x' 2**-24`` (the caller removes the offset and the
    power of two; :func:`~hwlab.kernels.half_pairs.subnormal_pair_constants`).
    ``PAIR`` 1: sign-magnitude minifloat codes of ``MBITS`` mantissa bits, each pair's bits moved into binary16
    fields (:func:`_float_pair_values`: the value times ``2**(15 - bias)``, subnormals included). ``PAIR`` 2:
    4-bit codes of a binary16 table held in eight registers, ``table`` (:func:`lut_registers`), read with byte
    permutes (:func:`~hwlab.kernels.half_pairs.half_word_ptx`). The
    products with x' and their sum over two words are fp16 HFMA2s (``PTX``:
    :func:`~hwlab.kernels.half_pairs.half_word_ptx`), widened to float32 once per two words. ``xs``
    (:func:`half_scale`) keeps every fp16 partial sum finite (``TOP``:
    :func:`~hwlab.kernels.half_pairs.half_top`). Error: each product and each addition of a half's
    E - 1 rounds once in fp16 (unit roundoff 2**-11), relative to ``sum |q x'|``. ``PTX`` empty (the
    interpreter runs no PTX): the same decode and fp16 products in Triton operations, each word's summed in
    fp16 (so an x' range too wide for the decode overflows on the CPU too) and widened per word."""
    we, wo = _columns(u.to(tl.int32, bitcast=True))
    return half_column_products(we, wo, x_ptr, table, cw, K, xs, EVEN, B, FLIP, PAIR, MBITS, PTX, XW)


@triton.jit
def half_column_products(we, wo, x_ptr, table, cw, K, xs, EVEN: tl.constexpr, B: tl.constexpr, FLIP: tl.constexpr,
                         PAIR: tl.constexpr, MBITS: tl.constexpr, PTX: tl.constexpr, XW: tl.constexpr):
    """:func:`half_products` of the words whose even and odd columns (of ``cw``) are ``we`` and ``wo``
    (int32 ``[BN, P/2]`` each), for a caller that builds the two halves of its words apart (each in the
    layout the PTX call takes, so no layout conversion joins them first). ``XW``: how x' is made (:func:`_x_pair`'s
    ``WIDE``; the caller's, as its :func:`half_scale` took it)."""
    E: tl.constexpr = 32 // B
    tl.static_assert((PAIR == 3) == (XW == 1), "the subnormal pairs (PAIR 3) take x' made in float32 (XW 1)")
    x0, s0 = _x_pair(x_ptr, cw, K, xs, 0, E, EVEN, B, XW)
    x1, s1 = _x_pair(x_ptr, cw, K, xs, 1, E, EVEN, B, XW)
    xsum = s0 + s1
    if B <= 4:
        x2, s2 = _x_pair(x_ptr, cw, K, xs, 2, E, EVEN, B, XW)
        x3, s3 = _x_pair(x_ptr, cw, K, xs, 3, E, EVEN, B, XW)
        xsum += s2 + s3
    if B <= 2:
        x4, s4 = _x_pair(x_ptr, cw, K, xs, 4, E, EVEN, B, XW)
        x5, s5 = _x_pair(x_ptr, cw, K, xs, 5, E, EVEN, B, XW)
        x6, s6 = _x_pair(x_ptr, cw, K, xs, 6, E, EVEN, B, XW)
        x7, s7 = _x_pair(x_ptr, cw, K, xs, 7, E, EVEN, B, XW)
        xsum += s4 + s5 + s6 + s7
    if PTX != "":  # two words a call (half_pairs.WORDS): word columns 2c and 2c + 1
        x0e, x0o = _columns(x0)
        x1e, x1o = _columns(x1)
        if B == 8:
            part = tl.inline_asm_elementwise(PTX, "=f" + ",r" * 6, [we, wo, x0e, x1e, x0o, x1o], dtype=tl.float32,
                                             is_pure=True, pack=1)
        else:
            x2e, x2o = _columns(x2)
            x3e, x3o = _columns(x3)
            if B == 4 and PAIR == 2:  # the table's eight registers last
                part = tl.inline_asm_elementwise(PTX, "=f" + ",r" * 18,
                                                 [we, wo, x0e, x1e, x2e, x3e, x0o, x1o, x2o, x3o, table[0], table[1],
                                                  table[2], table[3], table[4], table[5], table[6], table[7]],
                                                 dtype=tl.float32, is_pure=True, pack=1)
            elif B == 4:
                part = tl.inline_asm_elementwise(PTX, "=f" + ",r" * 10,
                                                 [we, wo, x0e, x1e, x2e, x3e, x0o, x1o, x2o, x3o],
                                                 dtype=tl.float32, is_pure=True, pack=1)
            else:
                x4e, x4o = _columns(x4)
                x5e, x5o = _columns(x5)
                x6e, x6o = _columns(x6)
                x7e, x7o = _columns(x7)
                part = tl.inline_asm_elementwise(
                    PTX, "=f" + ",r" * 18, [we, wo, x0e, x1e, x2e, x3e, x4e, x5e, x6e, x7e,
                                            x0o, x1o, x2o, x3o, x4o, x5o, x6o, x7o],
                    dtype=tl.float32, is_pure=True, pack=1)
        se, so = _columns(xsum[None, :])
        xsum = tl.reshape(se + so, (se.shape[1],))
    else:  # the twin: a word's products summed in fp16 in the PTX's order, as its halves are (overflow shows)
        u = tl.reshape(tl.join(we, wo), (we.shape[0], 2 * we.shape[1])).to(tl.uint32, bitcast=True)
        h = _half_pair_product(u, x0, table, 0, B, FLIP, PAIR, MBITS)
        h = h + _half_pair_product(u, x1, table, 1, B, FLIP, PAIR, MBITS)
        if B <= 4:
            h = h + _half_pair_product(u, x2, table, 2, B, FLIP, PAIR, MBITS)
            h = h + _half_pair_product(u, x3, table, 3, B, FLIP, PAIR, MBITS)
        if B <= 2:
            h = h + _half_pair_product(u, x4, table, 4, B, FLIP, PAIR, MBITS)
            h = h + _half_pair_product(u, x5, table, 5, B, FLIP, PAIR, MBITS)
            h = h + _half_pair_product(u, x6, table, 6, B, FLIP, PAIR, MBITS)
            h = h + _half_pair_product(u, x7, table, 7, B, FLIP, PAIR, MBITS)
        part = tl.sum(h.to(tl.float32), axis=2)
    return part, xsum


@triton.jit
def _spread(t, G: tl.constexpr, COLS: tl.constexpr):
    """Entries per row and group as ``[R, COLS]`` columns: ``G = 1``, ``[R]`` entries as ``[R, 1]`` (they
    broadcast); ``G > 1``, ``[R, G]`` entries, each group's over its ``COLS / G`` columns; ``G = 0``, ``[R, COLS]``
    entries (one per column already) as they are."""
    if G == 1:
        t = t[:, None]
    elif G > 1:
        t = tl.reshape(tl.broadcast_to(t[:, :, None], (t.shape[0], G, COLS // G)), (t.shape[0], COLS))
    return t


@triton.jit
def gemv_words_kernel(
        x_ptr, codes_ptr, zeros_ptr, members_ptr, lut_ptr, scales_ptr, stable_ptr, absmax_ptr, rows_ptr, out_ptr,
        work_ptr, count_ptr,
        N, K, row_words, zero_words, member_words, s_row_stride, NG, steps_per_program, n_steps,
        value_scale, scale_unit, zero_unit, dq_offset, one_bits,
        B: tl.constexpr, EPG: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr, GPS: tl.constexpr,
        EVEN: tl.constexpr,
        DECODE: tl.constexpr, FLIP: tl.constexpr, FLIP_WORD: tl.constexpr, MBITS: tl.constexpr,
        TSIZE: tl.constexpr, HALF_BF16: tl.constexpr, TROWS: tl.constexpr, REGISTER_TABLE: tl.constexpr,
        MEMBERS: tl.constexpr,
        MEMBER_BITS: tl.constexpr,
        VICTIM: tl.constexpr, ZB: tl.constexpr, SCALE: tl.constexpr, DQB: tl.constexpr, ROW: tl.constexpr,
        ATOMIC: tl.constexpr, OUT_MAX: tl.constexpr, HALF_TOP: tl.constexpr, HALF_PTX: tl.constexpr,
        HALF_XCHUNK: tl.constexpr, HALF_XCHUNKS: tl.constexpr, TABLE_VARY: tl.constexpr, STAGES: tl.constexpr,
        HALF_SUBNORMAL: tl.constexpr, HALF_WIDE_X: tl.constexpr):
    """M = 1 with codes in whole words (module docstring). ``out``: [N] (float32 when ``ATOMIC``).
    ``one_bits``: FP32_ONE_BITS, passed at run time so that it lives in a register (:func:`placed_code`).
    ``HALF_TOP`` > 0 (integer, minifloat, 16-entry table codes: :func:`~hwlab.kernels.dispatch.half_pairs_apply`): codes
    through fp16 pairs (:func:`half_products`), x scaled into ``[2**(HALF_TOP-1), 2**HALF_TOP)``
    (:func:`half_scale`, ``HALF_XCHUNK(S)``); 0: the float32 placement or a table. A table read as fp16 pairs
    (``DECODE`` 2, ``HALF_TOP`` > 0): ``lut_ptr`` is the int32 register table, and with type ids (``MEMBERS`` 1)
    the registers of bitmask ``TABLE_VARY`` are read per type id (:func:`member_registers`). ``HALF_SUBNORMAL``:
    integer codes as fp16 subnormals (``half_products``' ``PAIR`` 3, one LOP3 a pair; x' up to ``2**HALF_TOP``
    made in float32), their sign offset ``FLIP * sum x'`` removed per word column in float32. ``HALF_WIDE_X``: fp16 x
    scaled by up to 2**30 in two fp16 multiplies (:func:`~hwlab.kernels.half_pairs.wide_activations`)."""
    E: tl.constexpr = 32 // B
    P: tl.constexpr = KS // E
    MASK: tl.constexpr = (1 << B) - 1
    X_ROUTE: tl.constexpr = 1 if HALF_SUBNORMAL else 2 if HALF_WIDE_X else 0  # _x_pair's WIDE
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    nmask = rn < N
    one = one_bits.to(tl.uint32, bitcast=True)
    PAIRED: tl.constexpr = HALF_PTX != ""  # half_products sums word columns 2c and 2c + 1 in one entry
    COLS: tl.constexpr = P // 2 if PAIRED else P
    acc = tl.zeros((BN, COLS), tl.float32)
    if DECODE == 3 and MEMBERS != 1:  # the pair table in registers for the whole program (both OliVe members)
        words0 = _pair_words(lut_ptr, 0)
        words1 = _pair_words(lut_ptr, TROWS - 1)
    first = tl.program_id(1) * steps_per_program
    last = tl.minimum(first + steps_per_program, n_steps)
    if HALF_TOP > 0:
        xs, unscale = half_scale(x_ptr, K, HALF_XCHUNK, HALF_XCHUNKS, HALF_TOP, X_ROUTE)
        half_table = lut_registers(lut_ptr, DECODE)  # lut_ptr: the register table (dispatch._arguments)
    for step in tl.range(first, last, num_stages=STAGES):
        k0 = step * KS
        cw = k0 // E + tl.arange(0, P)
        if EVEN:  # whole tiles: no masks
            raw = tl.load(codes_ptr + rn[:, None] * row_words + cw[None, :], eviction_policy="evict_first")
        else:
            wmask = nmask[:, None] & (cw < row_words)[None, :]
            raw = tl.load(codes_ptr + rn[:, None] * row_words + cw[None, :], mask=wmask, other=0,
                          eviction_policy="evict_first")
        if HALF_TOP > 0:
            u = raw.to(tl.uint32, bitcast=True)  # the sign flip rides in the fp16 magic
        elif DECODE == 0:
            u = (raw ^ FLIP_WORD).to(tl.uint32, bitcast=True)  # every sign bit flipped at once
        else:
            u = raw.to(tl.uint32, bitcast=True)
        if GPS == 1:  # the step lies in one group: one entry per row
            gn = rn
            gg = k0 // EPG
            gmask = nmask
        elif GPS > 1:  # the step holds GPS whole groups: one entry per row and group
            tl.static_assert(MEMBERS == 0 or HALF_TOP > 0, "the float32 decodes read type ids per row or per word")
            gn = rn[:, None]
            gg = (k0 // EPG + tl.arange(0, GPS))[None, :]
            gmask = nmask[:, None] & (gg < NG)
        else:  # one entry per word (per pair of words of one group when PAIRED)
            gw = k0 // E + tl.arange(0, COLS) * (2 if PAIRED else 1)
            gn = rn[:, None]
            gg = ((gw * E) // EPG)[None, :]
            gmask = nmask[:, None] & (gw < row_words)[None, :]
        member = 0
        if MEMBERS == 1:
            ids = load_field(members_ptr, member_words, gn, gg, gmask, MEMBER_BITS).to(tl.int32)
            member = ids[:, None] if GPS == 1 else ids
        if DECODE == 2 and REGISTER_TABLE and HALF_TOP == 0:  # each row's table (its group's member), or all tables
            if MEMBERS == 1 and GPS == 1:
                table = tl.load(lut_ptr + member * TSIZE + tl.arange(0, TSIZE)[None, :])
                member = 0
            else:
                table = tl.broadcast_to(tl.load(lut_ptr + tl.arange(0, TROWS * TSIZE))[None, :], (BN, TROWS * TSIZE))
        if DECODE == 3 and MEMBERS == 1:  # every row's (or word's) member's pair table
            words0 = _pair_words(lut_ptr, member)
        if HALF_TOP > 0:
            step_table = half_table
            if DECODE == 2 and MEMBERS == 1:  # each row's (or word's) member's table
                step_table = member_registers(lut_ptr, ids, half_table, TABLE_VARY, GPS, COLS)
            part, xsum = half_products(u, x_ptr, step_table, cw, K, xs, EVEN, B, FLIP, 3 if HALF_SUBNORMAL else DECODE,
                                       MBITS, HALF_PTX, X_ROUTE)
            if HALF_SUBNORMAL:  # sum (q + FLIP) x' 2**-24 -> sum q x' (exact scaling; xsum: sum x', float32)
                part = part * SUBNORMAL_UNIT - FLIP * xsum[None, :]
        else:
            part = tl.zeros((BN, P), tl.float32)
            xsum = tl.zeros((P,), tl.float32)
            xone = tl.zeros((P,), tl.float32)
            for j in tl.static_range(E):
                kk = cw * E + j
                if EVEN:
                    xj = tl.load(x_ptr + kk, eviction_policy="evict_last").to(tl.float32)
                else:
                    xj = tl.load(x_ptr + kk, mask=kk < K, other=0.0, eviction_policy="evict_last").to(tl.float32)
                if DECODE == 0:
                    f, xh = placed_code(u, xj, j, B, one)  # f = 1 + (q ^ FLIP) 2**(t-23)
                    part += f * xh[None, :]
                    xone += xh
                else:
                    q = (raw >> (j * B)) & MASK  # int32: a gather index as it is
                    m = member
                    if MEMBERS == 2:
                        partner = (raw >> ((j ^ 1) * B)) & MASK
                        m = _pair_member(q, partner, j % 2 == 1, VICTIM)
                    if DECODE == 2 and REGISTER_TABLE:  # the table from registers: no memory access per code
                        v = tl.gather(table, m * TSIZE + q, axis=1)
                    elif DECODE == 3:
                        v = _pair_select(q, words0, TSIZE, HALF_BF16)
                        if MEMBERS == 2:
                            v = tl.where(m == 1, _pair_select(q, words1, TSIZE, HALF_BF16), v)
                    else:
                        v = _decode(q, m, lut_ptr, B, DECODE, FLIP, MBITS, TSIZE, HALF_BF16, MEMBERS)
                    part += v * xj[None, :]
                xsum += xj
            if DECODE == 0:  # remove the 1.0 of the placement and the FLIP of the sign flip
                part -= (xone + FLIP * xsum)[None, :]
        if ZB > 0:
            z = load_field(zeros_ptr, zero_words, gn, gg, gmask, ZB).to(tl.float32)
            part -= _spread(z, GPS, COLS) * zero_unit * xsum[None, :]
        sc = _scale(scales_ptr, stable_ptr, absmax_ptr, rows_ptr, gn, gg, gmask, s_row_stride, NG, dq_offset,
                    scale_unit, SCALE, DQB, ROW)
        if HALF_TOP > 0:
            part = part * unscale  # exact (a power of two), before the scale: no overflow the float32 path lacks
        acc += part * _spread(sc, GPS, COLS)
    y = tl.sum(acc, axis=1) * value_scale
    finish(y, out_ptr, rn, nmask, work_ptr, count_ptr, tl.program_id(0), tl.num_programs(1), ATOMIC, OUT_MAX)


@triton.jit
def _stream_sum(codes_ptr, row_words, rn, offset, mask, x_ptr, k0, K, one, B: tl.constexpr, G: tl.constexpr,
                EVEN: tl.constexpr):
    """``sum_k q_k x_k`` per row over one group of unsigned ``B``-bit codes starting at word ``offset``
    of each row (rows where ``mask`` is false read nothing), and ``sum_k x_k``."""
    E: tl.constexpr = 32 // B
    P: tl.constexpr = G // E
    w = tl.arange(0, P)
    u = tl.load(codes_ptr + (rn * row_words + offset)[:, None] + w[None, :], mask=mask[:, None], other=0,
                eviction_policy="evict_first").to(tl.uint32, bitcast=True)
    part = tl.zeros(u.shape, tl.float32)
    xone = tl.zeros((P,), tl.float32)
    xsum = tl.zeros((P,), tl.float32)
    for j in tl.static_range(E):
        kk = k0 + w * E + j
        if EVEN:
            xj = tl.load(x_ptr + kk, eviction_policy="evict_last").to(tl.float32)
        else:
            xj = tl.load(x_ptr + kk, mask=kk < K, other=0.0, eviction_policy="evict_last").to(tl.float32)
        f, xh = placed_code(u, xj, j, B, one)
        part += f * xh[None, :]
        xone += xh
        xsum += xj
    return tl.sum(part - xone[None, :], axis=1), tl.sum(xsum, axis=0)


@triton.jit
def gemv_mixed_kernel(
        x_ptr, codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, stable_ptr, rows_ptr, out_ptr,
        work_ptr, count_ptr,
        N, K, row_words4, row_words2, flag_words, zero_words4, zero_words2, NG, steps_per_program, one_bits,
        value_scale, scale_unit, G: tl.constexpr, BN: tl.constexpr, ZB4: tl.constexpr, ZB2: tl.constexpr,
        EVEN: tl.constexpr, ATOMIC: tl.constexpr, OUT_MAX: tl.constexpr, STAGES: tl.constexpr):
    """M = 1 for ``mixed_2_4``: a step is one group; each row reads its 4-bit or its 2-bit stream (a
    flag per group), at the rank its earlier groups of that width give (a running count per row).
    Both streams decode as :func:`placed_code` unsigned codes; zero points and int8 scale codes times the
    row scale are applied once per group."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    nmask = rn < N
    one = one_bits.to(tl.uint32, bitcast=True)
    first = tl.program_id(1) * steps_per_program
    last = tl.minimum(first + steps_per_program, NG)
    rank = tl.zeros((BN,), tl.int32)  # 4-bit groups of the row before group `first`
    for i in range(0, first // 32):
        rank += popcount32(tl.load(flags_ptr + rn * flag_words + i, mask=nmask, other=0).to(tl.uint32, bitcast=True)).to(tl.int32)
    below = tl.load(flags_ptr + rn * flag_words + first // 32, mask=nmask, other=0).to(tl.uint32, bitcast=True)
    rank += popcount32(below & ((tl.full((), 1, tl.uint32) << (first % 32).to(tl.uint32)) - 1)).to(tl.int32)
    acc = tl.zeros((BN,), tl.float32)
    for g in tl.range(first, last, num_stages=STAGES):
        flags = tl.load(flags_ptr + rn * flag_words + g // 32, mask=nmask, other=0).to(tl.uint32, bitcast=True)
        wide = (((flags >> (g % 32)) & 1) == 1) & nmask
        narrow = (~wide) & nmask
        k0 = g * G
        s4, xs = _stream_sum(codes4_ptr, row_words4, rn, rank * (G * 4 // 32), wide, x_ptr, k0, K, one, 4, G, EVEN)
        s2, _ = _stream_sum(codes2_ptr, row_words2, rn, (g - rank) * (G * 2 // 32), narrow, x_ptr, k0, K, one, 2, G,
                            EVEN)
        z4 = load_field(zeros4_ptr, zero_words4, rn, rank, wide, ZB4).to(tl.float32)
        z2 = load_field(zeros2_ptr, zero_words2, rn, g - rank, narrow, ZB2).to(tl.float32)
        dot = tl.where(wide, s4 - z4 * xs, s2 - z2 * xs)
        code = tl.load(scales_ptr + rn * NG + g, mask=nmask, other=0).to(tl.int32)
        acc += dot * (tl.load(stable_ptr + code) * scale_unit)
        rank += wide.to(tl.int32)
    y = acc * tl.load(rows_ptr + rn, mask=nmask, other=0.0).to(tl.float32) * value_scale
    finish(y, out_ptr, rn, nmask, work_ptr, count_ptr, tl.program_id(0), tl.num_programs(1), ATOMIC, OUT_MAX)


@triton.jit
def _runs_of_32(codes_ptr, row_words, rn, nmask, k0, B: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr):
    """uint32 ``[BN, KS]`` codes ``k0 ..`` (``k0`` a multiple of 32) of a little-endian ``B``-bit stream, read as
    runs of 32 codes in ``B`` words: word slot ``s`` of every run is one load, and code ``j`` of a run takes
    its bits from slots ``B*j // 32`` and the next (constant per ``j``), so no load depends on a code's
    position and nothing is staged through shared memory per code (the per-code gathers of
    :func:`load_field` overflowed sm_90's shared memory once pipelined). Codes past the stored words read 0;
    those past ``Kp`` in a stored word are multiplied by masked (zero) activations or never stored."""
    T: tl.constexpr = KS // 32
    j = tl.arange(0, 32)
    slot = (j * B) // 32
    shift = ((j * B) % 32).to(tl.uint32)
    run = k0 // 32 + tl.arange(0, T)
    lo = tl.zeros((BN, T, 32), tl.uint32)
    hi = tl.zeros((BN, T, 32), tl.uint32)
    for s in tl.static_range(B):
        word = run * B + s
        w = tl.load(codes_ptr + rn[:, None] * row_words + word[None, :], mask=nmask[:, None] & (word < row_words)[None, :], other=0,
                    eviction_policy="evict_first").to(tl.uint32, bitcast=True)[:, :, None]
        lo = tl.where((slot == s)[None, None, :], w, lo)
        hi = tl.where((slot == s - 1)[None, None, :], w, hi)
    v = (lo >> shift[None, None, :]) | ((hi << 1) << (31 - shift)[None, None, :])  # two shifts: never by 32
    return tl.reshape(v & ((1 << B) - 1), (BN, KS))


@triton.jit
def _tile_values(codes_ptr, codes2_ptr, flags_ptr, zeros_ptr, zeros2_ptr, members_ptr, lut_ptr,
                 row_words, row_words2, flag_words, zero_words, zero_words2, member_words, zero_unit,
                 rn, nmask, k0, g, Kp,
                 B: tl.constexpr, EPG: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr, PACK: tl.constexpr, DECODE: tl.constexpr,
                 FLIP: tl.constexpr, MBITS: tl.constexpr, TSIZE: tl.constexpr, HALF_BF16: tl.constexpr,
                 MEMBERS: tl.constexpr,
                 MEMBER_BITS: tl.constexpr, VICTIM: tl.constexpr, ZB: tl.constexpr, ZB2: tl.constexpr,
                 B2: tl.constexpr):
    """float32 ``[BN, KS]`` values minus zero points of elements ``k0 ..`` (all in group ``g``) of rows ``rn``."""
    k = k0 + tl.arange(0, KS)
    mask = nmask[:, None] & (k < Kp)[None, :]
    rows = rn[:, None]
    member = 0
    if PACK == 3:  # mixed_2_4: a flag per group picks the 4-bit or the 2-bit stream; rank = earlier 4-bit groups
        flags = tl.load(flags_ptr + rn * flag_words + g // 32, mask=nmask, other=0).to(tl.uint32, bitcast=True)
        shift = (g % 32).to(tl.uint32)
        rank = popcount32(flags & ((tl.full((), 1, tl.uint32) << shift) - 1))
        for i in range(0, g // 32):
            rank += popcount32(tl.load(flags_ptr + rn * flag_words + i, mask=nmask, other=0).to(tl.uint32, bitcast=True))
        wide = ((flags >> shift) & 1) == 1
        rank = rank.to(tl.int32)
        within = (k - g * EPG)[None, :]
        q4 = load_field(codes_ptr, row_words, rows, rank[:, None] * EPG + within, mask & wide[:, None], B)
        q2 = load_field(codes2_ptr, row_words2, rows, (g - rank)[:, None] * EPG + within, mask & ~wide[:, None], B2)
        q = tl.where(wide[:, None], q4, q2)
        member = tl.where(wide, 0, 1)[:, None]
        z4 = load_field(zeros_ptr, zero_words, rn, rank, nmask & wide, ZB)
        z2 = load_field(zeros2_ptr, zero_words2, rn, g - rank, nmask & ~wide, ZB2)
        zero = tl.where(wide, z4, z2).to(tl.float32)[:, None]
    else:
        if PACK == 2:  # trit5: five base-3 digits a byte
            byte = tl.load(codes_ptr + rows * row_words + (k // 5)[None, :], mask=mask, other=0).to(tl.int32)
            digit = k % 5
            power = tl.where(digit == 0, 1, tl.where(digit == 1, 3, tl.where(digit == 2, 9, tl.where(digit == 3, 27, 81))))
            q = ((byte // power[None, :]) % 3).to(tl.uint32)
        elif PACK == 0:  # whole words: load them contiguously, then every code of a word
            E: tl.constexpr = 32 // B
            cw = k0 // E + tl.arange(0, KS // E)
            wmask = nmask[:, None] & (cw < row_words)[None, :]
            u = tl.load(codes_ptr + rows * row_words + cw[None, :], mask=wmask, other=0,
                        eviction_policy="evict_first").to(tl.uint32, bitcast=True)
            shifts = (tl.arange(0, E) * B).to(tl.uint32)
            q = tl.reshape((u[:, :, None] >> shifts[None, None, :]) & ((1 << B) - 1), (BN, KS))
            if MEMBERS == 2:
                partner_shifts = ((tl.arange(0, E) ^ 1) * B).to(tl.uint32)
                partner = tl.reshape((u[:, :, None] >> partner_shifts[None, None, :]) & ((1 << B) - 1), (BN, KS))
        elif KS % 32 == 0 and MEMBERS != 2:  # bit stream, whole runs of 32 codes (B words): :func:`_runs_of_32`
            q = _runs_of_32(codes_ptr, row_words, rn, nmask, k0, B, KS, BN)
        else:
            q = load_field(codes_ptr, row_words, rows, k[None, :], mask, B)
            if MEMBERS == 2:
                partner = load_field(codes_ptr, row_words, rows, (k ^ 1)[None, :], mask, B)
        if MEMBERS == 1:
            member = load_field(members_ptr, member_words, rn, g, nmask, MEMBER_BITS).to(tl.int32)[:, None]
        if MEMBERS == 2:
            member = _pair_member(q, partner, (k % 2 == 1)[None, :], VICTIM)
        if ZB > 0:
            zero = load_field(zeros_ptr, zero_words, rn, g, nmask, ZB).to(tl.float32)[:, None]
    v = _decode(q, member, lut_ptr, B, DECODE, FLIP, MBITS, TSIZE, HALF_BF16, MEMBERS)
    if ZB > 0:
        v = v - zero * zero_unit
    return v


@triton.jit
def _pair_tree(p0, p1, p2, p3, p4, p5, p6, p7, E: tl.constexpr):
    """The ``E/2`` pair tensors ``p0 ..`` (``[R, W, 2]``: codes ``i`` and ``i + E/2`` of each word) as one
    ``[R, W * E]``, position ``2 i + h`` of a word holding code ``i + h E/2`` (:func:`pair_order`): the two
    halves of a pair stay side by side, as the decode left them in one register."""
    t = tl.join(p0, p1)  # [R, W, h, i0]
    if E >= 8:
        t = tl.join(t, tl.join(p2, p3))  # [R, W, h, i0, i1]
    if E == 16:
        t = tl.join(t, tl.join(tl.join(p4, p5), tl.join(p6, p7)))  # [R, W, h, i0, i1, i2]
    if E == 4:
        t = tl.permute(t, (0, 1, 3, 2))
    elif E == 8:
        t = tl.permute(t, (0, 1, 4, 3, 2))
    else:
        t = tl.permute(t, (0, 1, 5, 4, 3, 2))
    return tl.reshape(t, (t.shape[0], t.shape[1] * E))


@triton.jit
def pair_order(t, E: tl.constexpr):
    """The columns of ``t`` (``[R, W * E]``, codes of words in order) in the order of :func:`_pair_tree`."""
    R: tl.constexpr = t.shape[0]
    W: tl.constexpr = t.shape[1] // E
    if E == 4:
        t = tl.permute(tl.reshape(t, (R, W, 2, 2)), (0, 1, 3, 2))  # code 2 h + i -> position 2 i + h
    elif E == 8:
        t = tl.permute(tl.reshape(t, (R, W, 2, 2, 2)), (0, 1, 3, 4, 2))  # code 4 h + 2 i1 + i0 -> 4 i1 + 2 i0 + h
    else:
        t = tl.permute(tl.reshape(t, (R, W, 2, 2, 2, 2)), (0, 1, 3, 4, 5, 2))
    return tl.reshape(t, (R, W * E))


@triton.jit
def _pair(u, i: tl.constexpr, B: tl.constexpr, FLIP: tl.constexpr, FLOAT: tl.constexpr, MBITS: tl.constexpr):
    """Codes ``i`` and ``i + E/2`` of every word ``u`` as an fp16 pair: integers or minifloats (``FLOAT``)."""
    if FLOAT:
        return _float_pair_values(u, i, B, MBITS)
    return _half_pair_values(u, i, B, FLIP, False)


@triton.jit
def half_tile(u, B: tl.constexpr, FLIP: tl.constexpr, FLOAT: tl.constexpr, MBITS: tl.constexpr):
    """fp16 ``[R, 32 / B * W]`` values of the codes of uint32 words ``u`` (``[R, W]``) in
    :func:`pair_order`: codes ``i`` and ``i + E/2`` of each word decoded as one fp16 pair, exact
    (:func:`_pair`: integers with one logic op and one HFMA2, minifloats with two shifts and masks)."""
    E: tl.constexpr = 32 // B
    p0 = _pair(u, 0, B, FLIP, FLOAT, MBITS)
    p1 = _pair(u, 1, B, FLIP, FLOAT, MBITS)
    if E == 4:
        return _pair_tree(p0, p1, p0, p0, p0, p0, p0, p0, E)
    p2 = _pair(u, 2, B, FLIP, FLOAT, MBITS)
    p3 = _pair(u, 3, B, FLIP, FLOAT, MBITS)
    if E == 8:
        return _pair_tree(p0, p1, p2, p3, p0, p0, p0, p0, E)
    return _pair_tree(p0, p1, p2, p3, _pair(u, 4, B, FLIP, FLOAT, MBITS), _pair(u, 5, B, FLIP, FLOAT, MBITS),
                      _pair(u, 6, B, FLIP, FLOAT, MBITS), _pair(u, 7, B, FLIP, FLOAT, MBITS), E)


@triton.jit
def _words(codes_ptr, row_words, rn, mask, k0, E: tl.constexpr, W: tl.constexpr):
    """uint32 ``[BN, W]``: the ``W`` code words of rows ``rn`` from element ``k0`` on (0 past a row's words)."""
    cw = k0 // E + tl.arange(0, W)
    return tl.load(codes_ptr + rn[:, None] * row_words + cw[None, :], mask=mask[:, None] & (cw < row_words)[None, :],
                   other=0, eviction_policy="evict_first").to(tl.uint32, bitcast=True)


@triton.jit
def half_dot_loop(codes_ptr, zeros_ptr, x_ptr, scales_ptr, stable_ptr, absmax_ptr, rows_ptr,
                  row_words, zero_words, s_row_stride, NG, dq_offset, scale_unit, rn, nmask, rm, mmask, first, steps,
                  K, Kp,
                  B: tl.constexpr, EPG: tl.constexpr, KS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                  FLIP: tl.constexpr, FLOAT: tl.constexpr, MBITS: tl.constexpr, ZB: tl.constexpr, SCALE: tl.constexpr,
                  DQB: tl.constexpr, ROW: tl.constexpr, EXACT_DOT: tl.constexpr, STAGES: tl.constexpr,
                  WFIRST: tl.constexpr):
    """float32 ``[BM, BN]``: ``sum`` over steps ``first .. first + steps`` of ``x[rm, step] @ (v - zero)^T`` times
    the step's scales, for integer or minifloat codes in whole words decoded by :func:`half_tile` (x's columns
    put in the same order). The values are integers below 2**9 in magnitude or binary16 placements of
    minifloats, exact in fp16 and in bf16 (at most 7 fraction bits). ``STAGES`` > 1: Triton's shared-memory
    pipeline (cp.async) of the loads. (Loading each step's words one step ahead into registers made int4 1.34x
    and int8 1.6x slower on the H200 at M = 16: BENCHMARKS.md, run 7.) ``WFIRST``: the decoded weights are the
    MMA's first operand (``w @ x^T``, accumulated as ``[BN, BM]`` and transposed once at the end): sm_90's
    ``wgmma`` reads its first operand from registers, so the decoded tile goes from the registers that decoded
    it to the tensor cores without the round trip through shared memory that a second operand takes."""
    E: tl.constexpr = 32 // B
    W: tl.constexpr = KS // E
    if WFIRST:
        acc = tl.zeros((BN, BM), tl.float32)
    else:
        acc = tl.zeros((BM, BN), tl.float32)
    for step in tl.range(steps, num_stages=STAGES):
        k0 = (first + step) * KS
        u = _words(codes_ptr, row_words, rn, nmask, k0, E, W)
        g = k0 // EPG
        sc = _scale(scales_ptr, stable_ptr, absmax_ptr, rows_ptr, rn, g, mask_all(nmask, k0 < Kp), s_row_stride, NG,
                    dq_offset, scale_unit, SCALE, DQB, ROW)
        w = half_tile(u, B, FLIP, FLOAT, MBITS)
        if ZB > 0:
            w = w - load_field(zeros_ptr, zero_words, rn, g, nmask, ZB).to(tl.float16)[:, None]
        w = w.to(x_ptr.dtype.element_ty)
        k = k0 + tl.arange(0, KS)
        xt = pair_order(tl.load(x_ptr + rm[:, None] * K + k[None, :], mask=mmask[:, None] & (k < K)[None, :],
                                other=0.0), E)
        if EXACT_DOT:
            xt, w = xt.to(tl.float32), w.to(tl.float32)
        if WFIRST:
            acc += tl.dot(w, tl.trans(xt), input_precision="ieee" if EXACT_DOT else None) * sc[:, None]
        else:
            acc += tl.dot(xt, tl.trans(w), input_precision="ieee" if EXACT_DOT else None) * sc[None, :]
    if WFIRST:
        acc = tl.trans(acc)
    return acc


@triton.jit
def tile_kernel(
        x_ptr, codes_ptr, codes2_ptr, flags_ptr, zeros_ptr, zeros2_ptr, members_ptr, lut_ptr,
        scales_ptr, stable_ptr, absmax_ptr, rows_ptr, out_ptr, work_ptr, count_ptr,
        M, N, K, Kp, row_words, row_words2, flag_words, zero_words, zero_words2, member_words, s_row_stride, NG,
        steps_per_program, value_scale, scale_unit, zero_unit, dq_offset,
        B: tl.constexpr, B2: tl.constexpr, EPG: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
        PACK: tl.constexpr, DECODE: tl.constexpr, FLIP: tl.constexpr, MBITS: tl.constexpr, TSIZE: tl.constexpr,
        HALF_BF16: tl.constexpr, MEMBERS: tl.constexpr, MEMBER_BITS: tl.constexpr, VICTIM: tl.constexpr, ZB: tl.constexpr, ZB2: tl.constexpr,
        SCALE: tl.constexpr, DQB: tl.constexpr, ROW: tl.constexpr,
        DOT: tl.constexpr, HALF_DOT: tl.constexpr, EXACT_DOT: tl.constexpr, ATOMIC: tl.constexpr,
        OUT_MAX: tl.constexpr, STAGES: tl.constexpr, WFIRST: tl.constexpr):
    """Any M, any packing (module docstring). ``out``: [M, N] (float32 when ``ATOMIC``).

    ``EXACT_DOT`` (the interpreter) multiplies the same operands in float32 IEEE arithmetic, as the
    interpreter's bfloat16 arithmetic is not faithful."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    nmask = rn < N
    mmask = rm < M
    if HALF_DOT:
        acc = half_dot_loop(codes_ptr, zeros_ptr, x_ptr, scales_ptr, stable_ptr, absmax_ptr, rows_ptr,
                            row_words, zero_words, s_row_stride, NG, dq_offset, scale_unit, rn, nmask, rm, mmask,
                            tl.program_id(2) * steps_per_program, steps_per_program, K, Kp, B, EPG, KS, BM, BN, FLIP,
                            DECODE == 1, MBITS, ZB, SCALE, DQB, ROW, EXACT_DOT, STAGES, WFIRST)
    else:
        acc = tl.zeros((BM, BN), tl.float32)
        for step in tl.range(steps_per_program, num_stages=STAGES):
            k0 = (tl.program_id(2) * steps_per_program + step) * KS
            k = k0 + tl.arange(0, KS)
            g = k0 // EPG
            sc = _scale(scales_ptr, stable_ptr, absmax_ptr, rows_ptr, rn, g, mask_all(nmask, k0 < Kp), s_row_stride,
                        NG, dq_offset, scale_unit, SCALE, DQB, ROW)
            v = _tile_values(codes_ptr, codes2_ptr, flags_ptr, zeros_ptr, zeros2_ptr, members_ptr, lut_ptr,
                             row_words, row_words2, flag_words, zero_words, zero_words2, member_words, zero_unit,
                             rn, nmask, k0, g, Kp, B, EPG, KS, BN, PACK, DECODE, FLIP, MBITS, TSIZE, HALF_BF16,
                             MEMBERS, MEMBER_BITS, VICTIM, ZB, ZB2, B2)
            xt = tl.load(x_ptr + rm[:, None] * K + k[None, :], mask=mmask[:, None] & (k < K)[None, :], other=0.0)
            if DOT:
                w = v.to(x_ptr.dtype.element_ty)  # exact: values (tables rounded to x's dtype by the plan)
                if EXACT_DOT:
                    d = tl.dot(xt.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
                else:
                    d = tl.dot(xt, tl.trans(w))
            else:
                d = tl.sum(v * xt.to(tl.float32), axis=1)[None, :]
            acc += d * sc[None, :]
    y = acc * value_scale
    tile = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    finish(y, out_ptr, rm[:, None] * N + rn[None, :], mmask[:, None] & nmask[None, :], work_ptr, count_ptr, tile,
            tl.num_programs(2), ATOMIC, OUT_MAX)


@triton.jit
def dequantize_kernel(
        codes_ptr, codes2_ptr, flags_ptr, zeros_ptr, zeros2_ptr, members_ptr, lut_ptr,
        scales_ptr, stable_ptr, absmax_ptr, rows_ptr, out_ptr,
        N, K, Kp, row_words, row_words2, flag_words, zero_words, zero_words2, member_words, s_row_stride, NG,
        value_scale, scale_unit, zero_unit, dq_offset,
        B: tl.constexpr, B2: tl.constexpr, EPG: tl.constexpr, KS: tl.constexpr, BN: tl.constexpr,
        PACK: tl.constexpr, DECODE: tl.constexpr, FLIP: tl.constexpr, MBITS: tl.constexpr, TSIZE: tl.constexpr,
        HALF_BF16: tl.constexpr, MEMBERS: tl.constexpr, MEMBER_BITS: tl.constexpr, VICTIM: tl.constexpr, ZB: tl.constexpr, ZB2: tl.constexpr,
        SCALE: tl.constexpr, DQB: tl.constexpr, ROW: tl.constexpr):
    """float32 weights ``out[N, K]``, one ``[BN, KS]`` tile (inside one group) a program."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    k0 = tl.program_id(1) * KS
    k = k0 + tl.arange(0, KS)
    g = k0 // EPG
    nmask = rn < N
    v = _tile_values(codes_ptr, codes2_ptr, flags_ptr, zeros_ptr, zeros2_ptr, members_ptr, lut_ptr,
                     row_words, row_words2, flag_words, zero_words, zero_words2, member_words, zero_unit,
                     rn, nmask, k0, g, Kp, B, EPG, KS, BN, PACK, DECODE, FLIP, MBITS, TSIZE, HALF_BF16, MEMBERS,
                     MEMBER_BITS, VICTIM, ZB, ZB2, B2)
    sc = _scale(scales_ptr, stable_ptr, absmax_ptr, rows_ptr, rn, g, nmask, s_row_stride, NG, dq_offset,
                scale_unit, SCALE, DQB, ROW)
    w = saturate((v * sc[:, None]) * value_scale, FP32_MAX)
    tl.store(out_ptr + rn[:, None] * K + k[None, :], w, mask=nmask[:, None] & (k < K)[None, :])
