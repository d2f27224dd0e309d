"""The fp16 pair decode of ``gemv_words_kernel`` (:func:`~hwlab.kernels.triton_kernels.half_products`):
two integer codes of one uint32 word become an fp16x2 register with one LOP3 (the codes in the
mantissa of fp16 1024, the "magic number" conversion of FasterTransformer's and Marlin's int4
kernels) and one HFMA2, and multiply fp16 activations two at a time. This module holds the host
side: the PTX of one word and the activation range that keeps every fp16 partial sum finite."""
from __future__ import annotations

import math

import numpy as np

from hwlab.formats.scales import FP16_LARGEST

HALF_BITS = (2, 4, 8)  # code widths with a PTX word (1-bit words stay on the float32 placement)
WORDS = 2  # uint32 words summed in fp16 before one widening to float32 (halves the conversions)


def half_top(bits: int) -> int:
    """``gemv_words_kernel``'s ``HALF_TOP`` for ``bits``-bit integer codes: the largest t with
    ``WORDS * (16 / bits) * (2**bits - 1) * 2**t <= FP16_LARGEST`` (a half register sums WORDS * 16 / bits
    products of codes below 2**bits and activations below 2**t: every fp16 partial sum stays finite)."""
    return math.floor(math.log2(FP16_LARGEST / (WORDS * (16 // bits) * ((1 << bits) - 1))))


def half_word_ptx(bits: int, flip: int) -> str:
    """PTX of :data:`WORDS` words of :func:`half_products` for ``bits``-bit codes (2, 4 or 8), sign bit
    ``flip``: ``$0`` (f32) = the words' ``sum q x'``, ``$1``..``$WORDS`` the words, then each word's x'
    pairs (f16x2: codes ``i`` and ``i + E/2``). Per word of E codes: E/2 LOP3, at most one shift, E/2
    HADD2/HFMA2 to decode, E/2 HMUL2/HFMA2 for the products; two conversions and one add per WORDS words."""
    pairs, window = 16 // bits, 10 // bits
    mask = (1 << bits) - 1
    lines = ["{", ".reg .b32 t, h, s, k, c;", ".reg .b16 a, b;", ".reg .f32 lo, hi;"]
    first = True
    for word in range(WORDS):
        src_word = f"${1 + word}"
        lines.append(f"shr.u32 t, {src_word}, {window * bits};")
        for i in range(pairs):
            p0 = (i % window) * bits
            fields = (mask << p0) | (mask << (16 + p0))
            magic = 0x64006400 | (flip << p0) | (flip << (16 + p0))
            x = f"${1 + WORDS + word * pairs + i}"
            lines.append(f"lop3.b32 h, {src_word if i < window else 't'}, {fields:#010x}, {magic:#010x}, 0x6a;")
            lines.append(f"mov.b32 c, {_f16x2_bits(-((1 << (10 - p0)) + flip)):#010x};")
            if p0:
                lines += [f"mov.b32 k, {_f16x2_bits(2.0 ** -p0):#010x};", "fma.rn.f16x2 h, h, k, c;"]
            else:
                lines.append("add.rn.f16x2 h, h, c;")
            lines.append(f"mul.rn.f16x2 s, h, {x};" if first else f"fma.rn.f16x2 s, h, {x}, s;")
            first = False
    lines += ["mov.b32 {a, b}, s;", "cvt.f32.f16 lo, a;", "cvt.f32.f16 hi, b;", "add.f32 $0, lo, hi;", "}"]
    return "\n".join(lines)


def _f16x2_bits(value: float) -> int:
    """``value`` as IEEE binary16 in both halves of a 32-bit word (``value`` exact in fp16)."""
    half = int(np.array(value, np.float16).view(np.uint16))
    return half | (half << 16)
