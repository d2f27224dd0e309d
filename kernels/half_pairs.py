"""The fp16 pair decode of ``gemv_words_kernel`` (:func:`~hwlab.kernels.triton_kernels.half_products`):
two integer codes of one uint32 word become an fp16x2 register with one LOP3 (the codes in the
mantissa of fp16 1024, the "magic number" conversion of FasterTransformer's and Marlin's int4
kernels) and one HFMA2, two minifloat codes with two shifts and two logic ops (their bits moved into
binary16 fields, as Marlin's FP4 dequantization does), and multiply fp16 activations two at a time.
This module holds the host side: the PTX of one word and the activation range that keeps every fp16
partial sum finite."""
from __future__ import annotations

import math

import numpy as np

from hwlab.formats.scales import FP16_LARGEST

HALF_BITS = (2, 4, 8)  # code widths with a PTX word (1-bit words stay on the float32 placement)
WORDS = 2  # uint32 words summed in fp16 before one widening to float32 (halves the conversions)
HALF_TOP_MAX = 15  # activations x' below 2**15: finite in fp16 (FP16_LARGEST = 65504), whatever the codes


def half_top(bits: int, largest: float | None = None) -> int:
    """``gemv_words_kernel``'s ``HALF_TOP`` for ``bits``-bit codes whose pair decode gives values of at most
    ``largest`` in magnitude (integer codes: ``2**bits - 1``, the default; minifloats: their largest binary16
    placement): the largest t <= :data:`HALF_TOP_MAX` with ``WORDS * (16 / bits) * largest * 2**t <=
    FP16_LARGEST`` (a half register sums WORDS * 16 / bits products of such values and activations below 2**t:
    every fp16 partial sum stays finite)."""
    largest = (1 << bits) - 1 if largest is None else largest
    return min(HALF_TOP_MAX, math.floor(math.log2(FP16_LARGEST / (WORDS * (16 // bits) * largest))))


def half_word_ptx(bits: int, flip: int, mbits: int | None = None) -> str:
    """PTX of :data:`WORDS` words of :func:`half_products` for ``bits``-bit codes (2, 4 or 8), sign bit
    ``flip``: ``$0`` (f32) = the words' ``sum q x'``, ``$1``..``$WORDS`` the words, then each word's x'
    pairs (f16x2: codes ``i`` and ``i + E/2``). Integer codes (``mbits`` None), per word of E codes: E/2
    LOP3, at most one shift, E/2 HADD2/HFMA2 to decode. Sign-magnitude minifloats of ``mbits`` mantissa bits
    (4 or 8 bits wide): each pair placed in binary16 (:func:`hwlab.kernels.plan.minifloat_in_fp16`, the value
    times ``2**(15 - bias)``) with two shifts, an AND and a LOP3, no offset. Then E/2 HMUL2/HFMA2 for the
    products; two conversions and one add per WORDS words."""
    pairs = 16 // bits
    lines = ["{", ".reg .b32 t, h, s, k, c, m, g;", ".reg .b16 a, b;", ".reg .f32 lo, hi;"]
    first = True
    for word in range(WORDS):
        src = f"${1 + word}"
        if mbits is None:
            lines.append(f"shr.u32 t, {src}, {(10 // bits) * bits};")
        for i in range(pairs):
            lines += _int_pair(src, i, bits, flip) if mbits is None else _float_pair(src, i, bits, mbits)
            x = f"${1 + WORDS + word * pairs + i}"
            lines.append(f"mul.rn.f16x2 s, h, {x};" if first else f"fma.rn.f16x2 s, h, {x}, s;")
            first = False
    lines += ["mov.b32 {a, b}, s;", "cvt.f32.f16 lo, a;", "cvt.f32.f16 hi, b;", "add.f32 $0, lo, hi;", "}"]
    return "\n".join(lines)


def _int_pair(src: str, i: int, bits: int, flip: int) -> list[str]:
    """PTX putting integer codes ``i`` and ``i + E/2`` of word ``src`` (``t``: it shifted right once) into
    ``h`` as exact fp16 values: the code in the mantissa of fp16 1024, then scaled and offset."""
    window = 10 // bits
    p0 = (i % window) * bits
    mask = (1 << bits) - 1
    fields = (mask << p0) | (mask << (16 + p0))
    magic = 0x64006400 | (flip << p0) | (flip << (16 + p0))
    lines = [f"lop3.b32 h, {src if i < window else 't'}, {fields:#010x}, {magic:#010x}, 0x6a;",
             f"mov.b32 c, {_f16x2_bits(-((1 << (10 - p0)) + flip)):#010x};"]
    if p0:
        return lines + [f"mov.b32 k, {_f16x2_bits(2.0 ** -p0):#010x};", "fma.rn.f16x2 h, h, k, c;"]
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
