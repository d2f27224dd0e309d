"""Triton kernels of ``mixed_2_4`` with asynchronous dequantization (:mod:`hwlab.kernels.async_mixed`).

"Enabling fast 2-bit LLM on GPUs" (seed paper) dequantizes the group scales (8-bit scale code times
the row's fp16 scale) while the weights of the next groups are already on their way, instead of
finishing the scale stage before the weight loads. Here every loop issues the loads of its next
iteration (code words, scale code, zero point, group index) before it decodes the current one:
register double buffering, so the memory latency of group ``g + 1`` overlaps the scale stage and the
decode of group ``g``. The scale stage is arithmetic (``code * row_scale`` is exact in float32: 8 by
11 significant bits), where the synchronous kernel reads a table entry after the code's load.

``mixed_gemv_async_kernel`` (M = 1)
    Groups in K order, each row's 4-bit or 2-bit words (a running rank per row; each row loads only
    its own width), a 2-bit group's fields spread into 4-bit ones (three shift-and-mask steps per 16
    bits), so every row decodes one 4-bit stream, as fp16 pairs (one LOP3 and one HFMA2 per two codes,
    :func:`~hwlab.kernels.triton_kernels.half_products`, as the int4 GEMV); the zero point and the
    scale code are applied once per row and group.
``mixed_tile_async_kernel`` (M > 1)
    Groups in K order, ``[BN, G]`` tiles of the row's 4-bit or 2-bit codes (a running rank per
    row) decoded as fp16 pairs (:func:`~hwlab.kernels.triton_kernels.half_tile`, x's columns read in
    the pairs' order), minus zero points, as fp16 integers into ``tl.dot`` with the fp16 activations;
    the next group's words are loaded before the current dot.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_kernels import (
    finish,
    half_column_products,
    half_scale,
    half_tile,
    load_field,
    lut_registers,
    mask_all,
    pair_order,
    popcount32,
)


@triton.jit
def _spread2(v):
    """The eight 2-bit fields in the low 16 bits of ``v`` (uint32), each moved to the low bits of a 4-bit field."""
    v = (v | (v << 8)) & 0x00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F
    return (v | (v << 2)) & 0x33333333


@triton.jit
def _load_group(codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, rn, nmask, g, rank, NG,
                row_words4, row_words2, flag_words, zero_words4, zero_words2, G: tl.constexpr):
    """Issue every load of group ``g`` of rows ``rn`` (``rank``: the row's 4-bit groups before ``g``):
    its 4-bit flag, both streams' words (each row reads only its own width; the 4-bit words as their even
    and odd columns, ``[BN, G / 16]`` each, the 2-bit words ``[BN, G / 16]``), zero point and scale code."""
    H: tl.constexpr = G // 16
    flags = tl.load(flags_ptr + rn * flag_words + g // 32, mask=nmask, other=0).to(tl.uint32, bitcast=True)
    wide = (((flags >> (g % 32)) & 1) == 1) & nmask
    narrow = (~wide) & nmask
    even = codes4_ptr + (rn * row_words4 + rank * (G // 8))[:, None] + 2 * tl.arange(0, H)[None, :]
    u4e = tl.load(even, mask=wide[:, None], other=0, eviction_policy="evict_first").to(tl.uint32, bitcast=True)
    u4o = tl.load(even + 1, mask=wide[:, None], other=0, eviction_policy="evict_first").to(tl.uint32, bitcast=True)
    u2 = tl.load(codes2_ptr + (rn * row_words2 + (g - rank) * H)[:, None] + tl.arange(0, H)[None, :],
                 mask=narrow[:, None], other=0, eviction_policy="evict_first")
    z4 = load_field(zeros4_ptr, zero_words4, rn, rank, wide, 4)
    z2 = load_field(zeros2_ptr, zero_words2, rn, g - rank, narrow, 2)
    code = tl.load(scales_ptr + rn * NG + g, mask=nmask, other=0)
    return wide, u4e, u4o, u2.to(tl.uint32, bitcast=True), tl.where(wide, z4, z2), code


@triton.jit
def _as_wide(wide, u4e, u4o, u2):
    """The even and odd columns (uint32, ``[..., G / 16]`` each) of groups' words of 4-bit fields: the row's own
    for 4-bit groups (``wide``, broadcast to them), else its 2-bit words spread (the low 16 bits of 2-bit word
    ``c`` make 4-bit word ``2c``, the high 16 bits word ``2c + 1``)."""
    return tl.where(wide, u4e, _spread2(u2 & 0xFFFF)), tl.where(wide, u4o, _spread2(u2 >> 16))


@triton.jit
def _first_rank(flags_ptr, rn, nmask, flag_words, first):
    """4-bit groups of every row before group ``first``."""
    rank = tl.zeros(rn.shape, tl.int32)
    for i in range(0, first // 32):
        word = tl.load(flags_ptr + rn * flag_words + i, mask=nmask, other=0).to(tl.uint32, bitcast=True)
        rank += popcount32(word).to(tl.int32)
    below = tl.load(flags_ptr + rn * flag_words + first // 32, mask=nmask, other=0).to(tl.uint32, bitcast=True)
    return rank + popcount32(below & ((tl.full((), 1, tl.uint32) << (first % 32).to(tl.uint32)) - 1)).to(tl.int32)


@triton.jit
def mixed_gemv_async_kernel(x_ptr, codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, rows_ptr,
                            out_ptr, work_ptr, count_ptr, N, K, NG, row_words4, row_words2, flag_words, zero_words4, zero_words2,
                            steps_per_program, G: tl.constexpr, BN: tl.constexpr, EVEN: tl.constexpr,
                            ATOMIC: tl.constexpr, OUT_MAX: tl.constexpr, HALF_TOP: tl.constexpr, HALF_PTX: tl.constexpr,
                            HALF_XCHUNK: tl.constexpr, HALF_XCHUNKS: tl.constexpr):
    """M = 1. Program ``(i, s)`` owns rows ``i*BN ..`` and groups ``s*steps_per_program ..``; ``EVEN``: K is
    whole groups (no activation masks). Every row's group arrives as 4-bit words (a 2-bit group spread,
    :func:`_as_wide`) and is decoded as fp16 pairs (:func:`~hwlab.kernels.triton_kernels.half_column_products`,
    unsigned codes: ``HALF_TOP`` of 4 bits, ``HALF_PTX`` its PTX where compiled); x is scaled into the pairs'
    range once a program (``HALF_XCHUNK(S)``, :func:`~hwlab.kernels.triton_kernels.half_scale`)."""
    P: tl.constexpr = G // 8
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    nmask = rn < N
    first = tl.program_id(1) * steps_per_program
    last = tl.minimum(first + steps_per_program, NG)
    rank = _first_rank(flags_ptr, rn, nmask, flag_words, first)
    xs, unscale = half_scale(x_ptr, K, HALF_XCHUNK, HALF_XCHUNKS, HALF_TOP, 0)
    acc = tl.zeros((BN, P // 2 if HALF_PTX != "" else P), tl.float32)  # summed over word columns after the loop
    wide_n, u4e_n, u4o_n, u2_n, zero_n, code_n = _load_group(
        codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, rn, mask_all(nmask, first < last), first,
        rank, NG, row_words4, row_words2, flag_words, zero_words4, zero_words2, G)
    for g in range(first, last):
        wide, u4e, u4o, u2, zero, code = wide_n, u4e_n, u4o_n, u2_n, zero_n, code_n
        rank += wide.to(tl.int32)
        wide_n, u4e_n, u4o_n, u2_n, zero_n, code_n = _load_group(  # in flight while group g is scaled and decoded
            codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, rn, mask_all(nmask, g + 1 < last),
            g + 1, rank, NG, row_words4, row_words2, flag_words, zero_words4, zero_words2, G)
        we, wo = _as_wide(wide[:, None], u4e, u4o, u2)
        part, xsum = half_column_products(we.to(tl.int32, bitcast=True), wo.to(tl.int32, bitcast=True), x_ptr,
                                          lut_registers(x_ptr, 0), g * P + tl.arange(0, P), K, xs, EVEN, 4, 0, 0, 0,
                                          HALF_PTX, 0)
        # per word column: sum (q - zero) x', unscaled (exact: a power of two), times the group's scale code
        acc += (part - zero.to(tl.float32)[:, None] * xsum[None, :]) * (unscale * code.to(tl.float32)[:, None])
    y = tl.sum(acc, axis=1) * tl.load(rows_ptr + rn, mask=nmask, other=0.0).to(tl.float32)
    finish(y, out_ptr, rn, nmask, work_ptr, count_ptr, tl.program_id(0), tl.num_programs(1), ATOMIC, OUT_MAX)


@triton.jit
def mixed_tile_async_kernel(x_ptr, codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, rows_ptr,
                            out_ptr, work_ptr, count_ptr, M, N, K, NG, row_words4, row_words2, flag_words, zero_words4, zero_words2,
                            steps_per_program, BM: tl.constexpr, BN: tl.constexpr, G: tl.constexpr,
                            EXACT_DOT: tl.constexpr, ATOMIC: tl.constexpr, OUT_MAX: tl.constexpr,
                            WFIRST: tl.constexpr):
    """M > 1 on tensor cores. Program ``(i, j, s)``: rows ``i*BN ..``, activations ``j*BM ..``, groups
    ``s*steps_per_program ..``. ``x``: fp16 or bf16 ``[M, K]``; out ``[M, N]``. ``EXACT_DOT`` (the
    interpreter, whose bfloat16 arithmetic is not faithful) multiplies the same operands in float32.
    ``WFIRST``: the decoded weights are the MMA's first operand (``acc[BN, BM] += w @ x^T``, transposed
    once at the end), which sm_90's ``wgmma`` reads from registers
    (:func:`~hwlab.kernels.triton_kernels.half_dot_loop`)."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    nmask = rn < N
    mmask = rm < M
    first = tl.program_id(2) * steps_per_program
    last = tl.minimum(first + steps_per_program, NG)
    rank = _first_rank(flags_ptr, rn, nmask, flag_words, first)
    kk = tl.arange(0, G)
    acc = tl.zeros((BN, BM) if WFIRST else (BM, BN), tl.float32)
    wide_n, u4e_n, u4o_n, u2_n, zero_n, code_n = _load_group(
        codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, rn, mask_all(nmask, first < last), first,
        rank, NG, row_words4, row_words2, flag_words, zero_words4, zero_words2, G)
    for g in range(first, last):
        wide, u4e, u4o, u2, zero, code = wide_n, u4e_n, u4o_n, u2_n, zero_n, code_n
        rank += wide.to(tl.int32)
        wide_n, u4e_n, u4o_n, u2_n, zero_n, code_n = _load_group(  # in flight during group g's decode and dot
            codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, rn, mask_all(nmask, g + 1 < last),
            g + 1, rank, NG, row_words4, row_words2, flag_words, zero_words4, zero_words2, G)
        # fp16 pairs (half_tile's column order, x's columns read in the same order) minus the zero points:
        # integers in [-15, 15], exact in fp16 and bf16
        we, wo = _as_wide(wide[:, None], u4e, u4o, u2)
        v = half_tile(tl.reshape(tl.join(we, wo), (BN, G // 8)), 4, 0, False, 0) - zero.to(tl.float16)[:, None]
        xk = pair_order(tl.load(x_ptr + rm[:, None] * K + (g * G + kk)[None, :],
                                mask=mmask[:, None] & (g * G + kk < K)[None, :], other=0.0), 8)
        if EXACT_DOT:
            xk, v = xk.to(tl.float32), v.to(tl.float32)
        else:
            v = v.to(x_ptr.dtype.element_ty)
        if WFIRST:
            acc += tl.dot(v, tl.trans(xk), input_precision="ieee" if EXACT_DOT else None) * code.to(tl.float32)[:, None]
        else:
            acc += tl.dot(xk, tl.trans(v), input_precision="ieee" if EXACT_DOT else None) * code.to(tl.float32)[None, :]
    if WFIRST:
        acc = tl.trans(acc)
    y = acc * tl.load(rows_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    tile = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    finish(y, out_ptr, rm[:, None] * N + rn[None, :], mmask[:, None] & nmask[None, :], work_ptr, count_ptr, tile,
           tl.num_programs(2), ATOMIC, OUT_MAX)
