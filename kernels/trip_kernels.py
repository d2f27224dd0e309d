"""Triton kernel of TRIP's integer matmul (:mod:`hwlab.kernels.trip`): int8 activations times
int4 weights, int32 accumulation on the int8 tensor cores (``tl.dot`` with ``out_dtype=int32``).

A program owns ``BN`` weight rows and ``BM`` activation rows and a run of K steps (split-K adds
int32 partial sums atomically: integer addition is exact in any order). The weights are the MMA's
first operand (``acc[BN, BM] += w @ x^T``): on sm_90 ``wgmma`` takes its first operand from
registers, so the decoded weights go straight from the registers that decoded them to the tensor
cores (the second operand, x's small tile, goes through shared memory), the "swap AB" of small-batch
GEMM kernels. Each step reads ``KS / 2`` bytes of each weight row; byte ``j`` holds codes ``2 j``
(low nibble) and ``2 j + 1`` (high nibble), two's complement. One LOP3 per four low nibbles
(``(b ^ 0x88) & 0x0F``, bytewise in a 32-bit register) and a shift and a LOP3 per four high ones
give the codes plus 8 as int8 values in [0, 15], multiplied with x's even and odd columns; the
offset is taken off at the end, ``8 * sum_k x[m, k]`` per row (exact in int32: wrapping arithmetic is
exact modulo 2**32 and the true sum fits, as :data:`~hwlab.kernels.trip.ACC_LIMIT` checks).
"""
from __future__ import annotations

import triton
import triton.language as tl

# PTX of four bytes at once (inline_asm_elementwise, pack=4): (b ^ 0x88888888) & 0x0F0F0F0F, LOP3 table
# 0x28 = (0xF0 ^ 0xCC) & 0xAA (PTX ISA, lop3: immLut); the high nibbles shifted down first
LOW_NIBBLES_PTX = tl.constexpr("lop3.b32 $0, $1, 0x88888888, 0x0F0F0F0F, 0x28;")
HIGH_NIBBLES_PTX = tl.constexpr("{.reg .b32 t; shr.u32 t, $1, 4; lop3.b32 $0, t, 0x08080808, 0x0F0F0F0F, 0x28;}")


@triton.jit
def _offset_nibbles(b, HIGH: tl.constexpr, PTX: tl.constexpr):
    """int8 codes plus 8, in [0, 15], of the low (or ``HIGH``) nibbles of int8 bytes ``b``; ``PTX``:
    four bytes per instruction (the interpreter, which runs no PTX, takes the same arithmetic per byte)."""
    if PTX:
        return tl.inline_asm_elementwise(HIGH_NIBBLES_PTX if HIGH else LOW_NIBBLES_PTX, "=r,r", [b], dtype=tl.int8,
                                         is_pure=True, pack=4)
    v = b.to(tl.int32)
    if HIGH:
        v = v >> 4
    return ((v ^ 8) & 15).to(tl.int8)


@triton.jit
def trip_int8_kernel(x_ptr, w_ptr, acc_ptr, M, N, K, steps_per_program,
                     BM: tl.constexpr, BN: tl.constexpr, KS: tl.constexpr, ATOMIC: tl.constexpr,
                     PTX: tl.constexpr, STAGES: tl.constexpr):
    """``acc[M, N] (+)= x[M, K] @ w[N, K]^T``; ``x`` int8 row-major, ``w`` int8 ``[N, K / 2]``: the int4
    weight words as bytes (:func:`~hwlab.kernels.trip.pack_int4_words`, little-endian)."""
    H: tl.constexpr = KS // 2
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    nmask = rn < N
    mmask = rm < M
    row_bytes = K // 2
    acc = tl.zeros((BN, BM), tl.int32)
    xsum = tl.zeros((BM,), tl.int32)
    first = tl.program_id(2) * steps_per_program
    last = tl.minimum(first + steps_per_program, tl.cdiv(K, KS))
    for step in tl.range(first, last, num_stages=STAGES):
        cb = step * H + tl.arange(0, H)
        b = tl.load(w_ptr + rn[:, None] * row_bytes + cb[None, :], mask=nmask[:, None] & (cb < row_bytes)[None, :],
                    other=0, eviction_policy="evict_first")
        kk = step * KS + tl.arange(0, KS)
        xk = tl.load(x_ptr + rm[:, None] * K + kk[None, :], mask=mmask[:, None] & (kk < K)[None, :], other=0)
        xsum += tl.sum(xk.to(tl.int32), axis=1)
        xe, xo = tl.split(tl.reshape(xk, (BM, H, 2)))  # x's even and odd columns
        acc = tl.dot(_offset_nibbles(b, False, PTX), tl.trans(xe), acc, out_dtype=tl.int32)
        acc = tl.dot(_offset_nibbles(b, True, PTX), tl.trans(xo), acc, out_dtype=tl.int32)
    acc -= 8 * xsum[None, :]
    target = acc_ptr + rm[None, :] * N + rn[:, None]
    omask = mmask[None, :] & nmask[:, None]
    if ATOMIC:
        tl.atomic_add(target, acc, mask=omask, sem="relaxed")
    else:
        tl.store(target, acc, mask=omask)
