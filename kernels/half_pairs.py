"""The fp16 pair decode of ``gemv_words_kernel`` (:func:`~hwlab.kernels.triton_kernels.half_products`):
two integer codes of one uint32 word become an fp16x2 register with one LOP3 (the codes in the
mantissa of fp16 1024, the "magic number" conversion of FasterTransformer's and Marlin's int4
kernels) and one HFMA2, two minifloat codes with two shifts and two logic ops (their bits moved into
binary16 fields, as Marlin's FP4 dequantization does), two codes of a 16-entry table (NF4, the FP4 splits'
tables, user lookup tables) with byte permutes of the table held in eight registers (:func:`_lut_word`), and
multiply fp16 activations two at a time. This module holds the host side: the PTX of one word and the
activation range that keeps every fp16 partial sum finite."""
from __future__ import annotations

import math

import numpy as np

from hwlab.formats.scales import FP16_LARGEST

HALF_BITS = (2, 4, 8)  # code widths with a PTX word (1-bit words stay on the float32 placement)
WORDS = 2  # uint32 words summed in fp16 before one widening to float32 (halves the conversions)
HALF_TOP_MAX = 15  # activations x' below 2**15: finite in fp16 (FP16_LARGEST = 65504), whatever the codes
SUBNORMAL_TOP = HALF_TOP_MAX  # the subnormal integer decode's x' range (its products are below 2**(bits - 9))
SUBNORMAL_EXPONENT = 24  # an fp16 subnormal of mantissa m is m * 2**-24 (IEEE 754 binary16)
HALF_SCALE_EXPONENT = 15  # fp16 x is scaled by at most 2**15 in one fp16 multiply (an fp16 power of two)
FP16_NORMAL_EXPONENT = -14  # binary16's smallest normal is 2**-14 (IEEE 754)
# the largest value of a pair decode below which fp16 x is scaled in two steps (wide_activations)
WIDE_BELOW = 2.0 ** (FP16_NORMAL_EXPONENT + SUBNORMAL_EXPONENT - HALF_SCALE_EXPONENT)
LUT_BITS = 4  # code width of the table decode: 16 entries, 32 bytes in eight registers (PTX ISA, prmt.b32)
LUT_ENTRIES = 1 << LUT_BITS


def half_top(bits: int, largest: float | None = None) -> int:
    """``gemv_words_kernel``'s ``HALF_TOP`` for ``bits``-bit codes whose pair decode gives values of at most
    ``largest`` in magnitude (integer codes: ``2**bits - 1``, the default; minifloats: their largest binary16
    placement): the largest t <= :data:`HALF_TOP_MAX` with ``WORDS * (16 / bits) * largest * 2**t <=
    FP16_LARGEST`` (a half register sums WORDS * 16 / bits products of such values and activations below 2**t:
    every fp16 partial sum stays finite)."""
    largest = (1 << bits) - 1 if largest is None else largest
    return min(HALF_TOP_MAX, math.floor(math.log2(FP16_LARGEST / (WORDS * (16 // bits) * largest))))


def wide_activations(largest: float) -> bool:
    """Whether fp16 activations are scaled by two fp16 powers of two, up to ``2**(2 * HALF_SCALE_EXPONENT)``, for a
    pair decode whose largest value (binary16, in magnitude) is ``largest``. In one multiply x' is at least
    ``2**-24 * 2**15 = 2**-9`` at a row's largest ``|x|`` (binary16's smallest subnormal times the largest fp16
    scale), so its products with a value of at least :data:`WIDE_BELOW` (``2**-5``: integer codes, the tables, which
    are normalized to a largest entry in [1, 2), fp8_e4m3) are normal fp16. A decode of smaller values (the 4-bit
    minifloats' binary16 placements, at most ``2**-8``; a user's 8-bit minifloat of 4 to 6 mantissa bits) would give
    a row whose largest ``|x|`` is far below 1 subnormal products, whose rounding is not relative to them. Scaled
    twice, such a row's x' at its largest ``|x|`` is at least ``2**6``, and its products with every value of at
    least ``2**-20`` are normal (a 4-bit minifloat's smallest nonzero placement is ``2**-16``). As in one multiply,
    the products of the row's smaller ``|x|`` may still be subnormal: their error is small beside the row's."""
    return largest < WIDE_BELOW


def half_word_ptx(bits: int, flip: int, mbits: int | None = None, table: bool = False, subnormal: bool = False) -> str:
    """PTX of :data:`WORDS` words of :func:`half_products` for ``bits``-bit codes (2, 4 or 8), sign bit
    ``flip``: ``$0`` (f32) = the words' ``sum q x'``, ``$1``..``$WORDS`` the words, then each word's x'
    pairs (f16x2: codes ``i`` and ``i + E/2``). Integer codes (``mbits`` None, no ``table``), per word of E
    codes: E/2 LOP3, at most one shift, E/2 HADD2/HFMA2 to decode; with ``subnormal``, the E/2 LOP3 and the
    shift only (:func:`subnormal_pair_constants`: ``$0`` is then ``sum (q + flip) x' 2**-24``, each pair's x'
    scaled by its own ``2**-p0``). Sign-magnitude minifloats of ``mbits``
    mantissa bits (4 or 8 bits wide): each pair placed in binary16 (:func:`hwlab.kernels.plan.minifloat_in_fp16`,
    the value times ``2**(15 - bias)``) with two shifts, an AND and a LOP3, no offset. ``table``: 4-bit codes
    read from a binary16 table whose bytes are the last eight operands (:func:`lut_registers`; run-time
    values, so that they stay in registers rather than being moved in from uniform registers before each
    permute), 23 integer instructions a word (:func:`_lut_word`). Then E/2 HMUL2/HFMA2 for the products; two
    conversions and one add per WORDS words."""
    pairs = 16 // bits
    lines = ["{", ".reg .b32 t, h, s, k, c, m, g;", ".reg .b16 a, b;", ".reg .f32 lo, hi;"]
    if table:
        if bits != LUT_BITS:
            raise ValueError(f"the table decode reads {LUT_BITS}-bit codes, not {bits}-bit ones")
        lines += [".reg .b32 sa, sb, ta, tb, la, ha, lb, hb, v, e;"]
        registers = [f"${1 + WORDS + WORDS * pairs + r}" for r in range(8)]
    first = True
    for word in range(WORDS):
        src = f"${1 + word}"
        if table:
            lines += _lut_word(src, registers)
        elif mbits is None:
            lines.append(f"shr.u32 t, {src}, {(10 // bits) * bits};")
        for i in range(pairs):
            if table:
                lines.append(_lut_pair(i))
            elif mbits is None:
                lines += _subnormal_pair(src, i, bits, flip) if subnormal else _int_pair(src, i, bits, flip)
            else:
                lines += _float_pair(src, i, bits, mbits)
            x = f"${1 + WORDS + word * pairs + i}"
            lines.append(f"mul.rn.f16x2 s, h, {x};" if first else f"fma.rn.f16x2 s, h, {x}, s;")
            first = False
    lines += ["mov.b32 {a, b}, s;", "cvt.f32.f16 lo, a;", "cvt.f32.f16 hi, b;", "add.f32 $0, lo, hi;", "}"]
    return "\n".join(lines)


def lut_registers(table: np.ndarray) -> list[int]:
    """The eight 32-bit registers the table decode permutes: byte ``k`` of register ``r`` is the low byte
    (registers 0-3) or the high byte (4-7) of entry ``4 (r % 4) + k`` of ``table`` (uint16 binary16 patterns,
    at most :data:`LUT_ENTRIES`; missing entries 0), so each register pair holds one byte of eight entries."""
    patterns = np.zeros(LUT_ENTRIES, np.uint32)
    patterns[:len(table)] = np.asarray(table, np.uint16)
    low, high = patterns & 0xFF, patterns >> 8
    return [int(sum(int(b) << (8 * k) for k, b in enumerate(part[4 * r:4 * r + 4])))
            for part in (low, high) for r in range(4)]


def _lut_word(src: str, q: list[str]) -> list[str]:
    """PTX looking up the eight 4-bit codes ``c0..c7`` of word ``src`` in the registers ``q`` (:func:`lut_registers`)
    (``prmt.b32``: a selector nibble picks one of the eight bytes of two registers, or with its bit 3 set
    replicates that byte's top bit). Each selector holds four codes, ``sa`` = (c0, c1, c4, c5) and ``sb`` =
    (c2, c3, c6, c7), and looks up the low and the high bytes of entries 0-7 as it is and of entries 8-15 with
    bit 3 flipped (``ta``, ``tb``). A byte mask from each code's bit 3 (``v``: the top bit of byte k is bit 3
    of code 2k + 1 in the word, of code 2k in the word shifted by 4) picks one of the two (LOP3 0xd8: ``m ? b :
    a``). The result: ``la``/``ha`` the low/high bytes of codes (c0, c1, c4, c5), ``lb``/``hb`` of the rest."""
    lines = [f"prmt.b32 sa, {src}, 0, 0x0020;", f"prmt.b32 sb, {src}, 0, 0x0031;",
             "xor.b32 ta, sa, 0x8888;", "xor.b32 tb, sb, 0x8888;", f"shl.b32 e, {src}, 4;"]
    for half, selectors, mask in (("a", ("sa", "ta"), 0xEAC8), ("b", ("sb", "tb"), 0xFBD9)):
        lines.append(f"prmt.b32 v, e, {src}, {mask:#06x};")
        for byte, base in (("l", 0), ("h", 4)):
            lines += [f"prmt.b32 t, {q[base]}, {q[base + 1]}, {selectors[0]};",
                      f"prmt.b32 g, {q[base + 2]}, {q[base + 3]}, {selectors[1]};",
                      f"lop3.b32 {byte}{half}, t, g, v, 0xd8;"]
    return lines


def _lut_pair(i: int) -> str:
    """PTX joining codes ``i`` and ``i + 4`` (their low and high bytes from :func:`_lut_word`) into ``h``."""
    half = "a" if i in (0, 1) else "b"
    return f"prmt.b32 h, l{half}, h{half}, {0x6240 if i % 2 == 0 else 0x7351:#06x};"


def int_pair_constants(i: int, bits: int, flip: int) -> tuple[bool, int, int, float, float]:
    """``(shifted, fields, magic, scale, offset)`` of integer pair ``i`` (codes ``i`` and ``i + E/2`` of a word of
    ``bits``-bit codes, sign bit ``flip``): ``h = (src & fields) ^ magic`` holds, in each half, binary16 1024 with
    the code (its sign bit flipped) in the mantissa from bit ``p0`` up, where ``src`` is the word, or the word
    shifted right by ``(10 // bits) * bits`` once the ``10 // bits`` codes that fit a mantissa are used up
    (``shifted``); then ``h * scale + offset`` (``scale = 2**-p0``) is the code's integer value, exactly. The fp16
    pair decodes of ``gemv_words`` (:func:`half_word_ptx`), ``tile_dot`` (its Triton twin) and the CuPy MMA kernel
    (``kernels/cuda/int_mma.cu``'s ``int_pair``) all compute these."""
    window = 10 // bits
    p0 = (i % window) * bits
    mask = (1 << bits) - 1
    fields = (mask << p0) | (mask << (16 + p0))
    magic = 0x64006400 | (flip << p0) | (flip << (16 + p0))
    return i >= window, fields, magic, 2.0**-p0, -float((1 << (10 - p0)) + flip)


def subnormal_pair_constants(i: int, bits: int, flip: int) -> tuple[bool, int, int, int]:
    """``(shifted, fields, flips, p0)`` of integer pair ``i`` for the subnormal decode: ``h = (src & fields) ^ flips``
    holds, in each half, the code with its sign bit flipped (``u = q + flip``, unsigned) in the mantissa of a zero
    exponent from bit ``p0`` up: the fp16 subnormal ``u * 2**(p0 - 24)``, exact, with no instruction to scale or
    offset it. The pair's x' is scaled by ``2**-p0`` instead (exact: a power of two), so that every product is
    ``u x' 2**-24``; the kernel removes ``flip * sum x'`` and the ``2**-24`` in float32. (``src``, ``shifted``,
    ``fields`` as in :func:`int_pair_constants`.)"""
    shifted, fields, magic, scale, _ = int_pair_constants(i, bits, flip)
    return shifted, fields, magic & ~0x64006400, round(-math.log2(scale))


def _subnormal_pair(src: str, i: int, bits: int, flip: int) -> list[str]:
    """PTX putting integer codes ``i`` and ``i + E/2`` of word ``src`` (``t``: it shifted right once) into ``h`` as
    fp16 subnormals (:func:`subnormal_pair_constants`): one LOP3."""
    shifted, fields, flips, _ = subnormal_pair_constants(i, bits, flip)
    return [f"lop3.b32 h, {'t' if shifted else src}, {fields:#010x}, {flips:#010x}, 0x6a;"]


def _int_pair(src: str, i: int, bits: int, flip: int) -> list[str]:
    """PTX putting integer codes ``i`` and ``i + E/2`` of word ``src`` (``t``: it shifted right once) into
    ``h`` as exact fp16 values: the code in the mantissa of fp16 1024, then scaled and offset
    (:func:`int_pair_constants`)."""
    shifted, fields, magic, scale, offset = int_pair_constants(i, bits, flip)
    lines = [f"lop3.b32 h, {'t' if shifted else src}, {fields:#010x}, {magic:#010x}, 0x6a;",
             f"mov.b32 c, {_f16x2_bits(offset):#010x};"]
    if scale != 1.0:
        return lines + [f"mov.b32 k, {_f16x2_bits(scale):#010x};", "fma.rn.f16x2 h, h, k, c;"]
    return lines + ["add.rn.f16x2 h, h, c;"]


def _float_pair(src: str, i: int, bits: int, mbits: int) -> list[str]:
    """PTX putting minifloat codes ``i`` and ``i + E/2`` of word ``src`` (at bits ``i * bits`` and
    ``16 + i * bits``) into ``h`` as their binary16 placements: the magnitude to bits ``10 - mbits`` up, the
    sign to bit 15 (``lop3`` 0xea: ``(g & 0x80008000) | m``)."""
    p0 = i * bits
    magnitude = ((1 << (bits - 1)) - 1) << (10 - mbits)
    return [_shift("m", src, 10 - mbits - p0), f"and.b32 m, m, {magnitude | (magnitude << 16):#010x};",
            _shift("g", src, 16 - p0 - bits), "lop3.b32 h, g, 0x80008000, m, 0xea;"]


def _shift(dst: str, src: str, left: int) -> str:
    """PTX: ``dst = src`` shifted left by ``left`` bits (right where negative)."""
    if left > 0:
        return f"shl.b32 {dst}, {src}, {left};"
    if left < 0:
        return f"shr.u32 {dst}, {src}, {-left};"
    return f"mov.b32 {dst}, {src};"


def _f16x2_bits(value: float) -> int:
    """``value`` as IEEE binary16 in both halves of a 32-bit word (``value`` exact in fp16)."""
    half = int(np.array(value, np.float16).view(np.uint16))
    return half | (half << 16)
