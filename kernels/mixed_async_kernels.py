"""Triton kernels of ``mixed_2_4`` with asynchronous dequantization (:mod:`hwlab.kernels.async_mixed`).

"Enabling fast 2-bit LLM on GPUs" (seed paper) dequantizes the group scales (8-bit scale code times
the row's fp16 scale) while the weights of the next groups are already on their way, instead of
finishing the scale stage before the weight loads. Here every loop issues the loads of its next
iteration (code words, scale code, zero point, group index) before it decodes the current one:
register double buffering, so the memory latency of group ``g + 1`` overlaps the scale stage and the
decode of group ``g``. The scale stage is arithmetic (``code * row_scale`` is exact in float32: 8 by
11 significant bits), where the synchronous kernel reads a table entry after the code's load.

``mixed_gemv_async_kernel`` (M = 1)
    Each row's 4-bit stream, then its 2-bit stream, group by group in stream order, so that every
    row decodes one width a step (the synchronous kernel decodes both widths of every group and
    keeps one). A group's activations are read at its group index, which a small table gives (one
    byte a group: ``group_order``, built once per device tensor from the unpacked view).
``mixed_tile_async_kernel`` (M > 1)
    Groups in K order, ``[BN, G]`` tiles of the row's 4-bit or 2-bit codes (a running rank per
    row), minus zero points, as fp16 integers into ``tl.dot`` with the fp16 activations; the next
    group's words are loaded before the current dot.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_kernels import finish, load_field, mask_all, placed_code, popcount32


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
    its 4-bit flag, both streams' words (each row reads only its own width), zero point and scale code."""
    flags = tl.load(flags_ptr + rn * flag_words + g // 32, mask=nmask, other=0).to(tl.uint32, bitcast=True)
    wide = (((flags >> (g % 32)) & 1) == 1) & nmask
    narrow = (~wide) & nmask
    u4 = tl.load(codes4_ptr + (rn * row_words4 + rank * (G // 8))[:, None] + tl.arange(0, G // 8)[None, :],
                 mask=wide[:, None], other=0, eviction_policy="evict_first")
    u2 = tl.load(codes2_ptr + (rn * row_words2 + (g - rank) * (G // 16))[:, None] + tl.arange(0, G // 16)[None, :],
                 mask=narrow[:, None], other=0, eviction_policy="evict_first")
    z4 = load_field(zeros4_ptr, zero_words4, rn, rank, wide, 4)
    z2 = load_field(zeros2_ptr, zero_words2, rn, g - rank, narrow, 2)
    code = tl.load(scales_ptr + rn * NG + g, mask=nmask, other=0)
    return wide, u4, u2, tl.where(wide, z4, z2), code


@triton.jit
def _as_wide(wide, u4, u2, BN: tl.constexpr, G: tl.constexpr):
    """uint32 ``[BN, G / 8]`` words of 4-bit fields: the row's own for 4-bit groups, else its 2-bit words spread."""
    u2 = u2.to(tl.uint32, bitcast=True)
    spread = tl.reshape(tl.join(_spread2(u2 & 0xFFFF), _spread2(u2 >> 16)), (BN, G // 8))
    return tl.where(wide[:, None], u4.to(tl.uint32, bitcast=True), spread)


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
                            steps_per_program, one_bits, G: tl.constexpr, BN: tl.constexpr, EVEN: tl.constexpr,
                            ATOMIC: tl.constexpr, OUT_MAX: tl.constexpr):
    """M = 1. Program ``(i, s)`` owns rows ``i*BN ..`` and groups ``s*steps_per_program ..``;
    ``one_bits``: 1.0's bits in a register (:func:`~hwlab.kernels.triton_kernels.placed_code`);
    ``EVEN``: K is whole groups (no activation masks)."""
    P: tl.constexpr = G // 8
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    nmask = rn < N
    one = one_bits.to(tl.uint32, bitcast=True)
    first = tl.program_id(1) * steps_per_program
    last = tl.minimum(first + steps_per_program, NG)
    rank = _first_rank(flags_ptr, rn, nmask, flag_words, first)
    w = tl.arange(0, P)
    acc = tl.zeros((BN, P), tl.float32)  # summed over words once, after the loop
    wide_n, u4_n, u2_n, zero_n, code_n = _load_group(
        codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, rn, mask_all(nmask, first < last), first,
        rank, NG, row_words4, row_words2, flag_words, zero_words4, zero_words2, G)
    for g in range(first, last):
        wide, u4, u2, zero, code = wide_n, u4_n, u2_n, zero_n, code_n
        rank += wide.to(tl.int32)
        wide_n, u4_n, u2_n, zero_n, code_n = _load_group(  # in flight while group g is scaled and decoded
            codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, rn, mask_all(nmask, g + 1 < last),
            g + 1, rank, NG, row_words4, row_words2, flag_words, zero_words4, zero_words2, G)
        u = _as_wide(wide, u4, u2, BN, G)
        part = tl.zeros((BN, P), tl.float32)
        xone = tl.zeros((P,), tl.float32)
        xsum = tl.zeros((P,), tl.float32)
        for j in tl.static_range(8):
            kk = g * G + w * 8 + j
            if EVEN:
                xj = tl.load(x_ptr + kk, eviction_policy="evict_last").to(tl.float32)
            else:
                xj = tl.load(x_ptr + kk, mask=kk < K, other=0.0, eviction_policy="evict_last").to(tl.float32)
            f, xh = placed_code(u, xj, j, 4, one)
            part += f * xh[None, :]
            xone += xh
            xsum += xj
        # per word: sum (q - zero) x, times the group's scale code; the placement's 1.0 removed with it
        acc += (part - xone[None, :] - zero.to(tl.float32)[:, None] * xsum[None, :]) * code.to(tl.float32)[:, None]
    acc1 = tl.sum(acc, axis=1)
    y = acc1 * tl.load(rows_ptr + rn, mask=nmask, other=0.0).to(tl.float32)
    finish(y, out_ptr, rn, nmask, work_ptr, count_ptr, tl.program_id(0), tl.num_programs(1), ATOMIC, OUT_MAX)


@triton.jit
def mixed_tile_async_kernel(x_ptr, codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, rows_ptr,
                            out_ptr, work_ptr, count_ptr, M, N, K, NG, row_words4, row_words2, flag_words, zero_words4, zero_words2,
                            steps_per_program, BM: tl.constexpr, BN: tl.constexpr, G: tl.constexpr,
                            EXACT_DOT: tl.constexpr, ATOMIC: tl.constexpr, OUT_MAX: tl.constexpr):
    """M > 1 on tensor cores. Program ``(i, j, s)``: rows ``i*BN ..``, activations ``j*BM ..``, groups
    ``s*steps_per_program ..``. ``x``: fp16 or bf16 ``[M, K]``; out ``[M, N]``. ``EXACT_DOT`` (the
    interpreter, whose bfloat16 arithmetic is not faithful) multiplies the same operands in float32."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    nmask = rn < N
    mmask = rm < M
    first = tl.program_id(2) * steps_per_program
    last = tl.minimum(first + steps_per_program, NG)
    rank = _first_rank(flags_ptr, rn, nmask, flag_words, first)
    shifts = (tl.arange(0, 8) * 4).to(tl.uint32)
    kk = tl.arange(0, G)
    acc = tl.zeros((BM, BN), tl.float32)
    wide_n, u4_n, u2_n, zero_n, code_n = _load_group(
        codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, rn, mask_all(nmask, first < last), first,
        rank, NG, row_words4, row_words2, flag_words, zero_words4, zero_words2, G)
    for g in range(first, last):
        wide, u4, u2, zero, code = wide_n, u4_n, u2_n, zero_n, code_n
        rank += wide.to(tl.int32)
        wide_n, u4_n, u2_n, zero_n, code_n = _load_group(  # in flight during group g's decode and dot
            codes4_ptr, codes2_ptr, flags_ptr, zeros4_ptr, zeros2_ptr, scales_ptr, rn, mask_all(nmask, g + 1 < last),
            g + 1, rank, NG, row_words4, row_words2, flag_words, zero_words4, zero_words2, G)
        u = _as_wide(wide, u4, u2, BN, G)
        q = tl.reshape((u[:, :, None] >> shifts[None, None, :]) & 0xF, (BN, G))
        v = q.to(tl.int32) - zero.to(tl.int32)[:, None]  # integers in [-15, 15]: exact in fp16 and bf16
        xk = tl.load(x_ptr + rm[:, None] * K + (g * G + kk)[None, :], mask=mmask[:, None] & (g * G + kk < K)[None, :],
                     other=0.0)
        if EXACT_DOT:
            d = tl.dot(xk.to(tl.float32), tl.trans(v.to(tl.float32)), input_precision="ieee")
        else:
            d = tl.dot(xk, tl.trans(v.to(x_ptr.dtype.element_ty)), out_dtype=tl.float32)
        acc += d * code.to(tl.float32)[None, :]
    y = acc * tl.load(rows_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    tile = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    finish(y, out_ptr, rm[:, None] * N + rn[None, :], mmask[:, None] & nmask[None, :], work_ptr, count_ptr, tile,
           tl.num_programs(2), ATOMIC, OUT_MAX)
