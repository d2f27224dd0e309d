"""Triton kernel of TRIP's integer matmul (:mod:`hwlab.kernels.trip`): int8 activations times
int4 weights, int32 accumulation on the int8 tensor cores (``tl.dot`` with ``out_dtype=int32``).

A program owns ``BN`` weight rows and ``BM`` activation rows and a run of K steps (split-K adds
int32 partial sums atomically: integer addition is exact in any order). Each step loads
``KS / 8`` words per weight row and sign-extends their nibbles with two shifts
(``(word << (28 - 4 j)) >> 28``, arithmetic), giving an int8 ``[BN, KS]`` tile.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def trip_int8_kernel(x_ptr, w_ptr, acc_ptr, M, N, K, steps_per_program,
                     BM: tl.constexpr, BN: tl.constexpr, KS: tl.constexpr, ATOMIC: tl.constexpr):
    """``acc[M, N] (+)= x[M, K] @ w[N, K]^T``; ``x`` int8 row-major, ``w`` int32 ``[N, K / 8]`` words."""
    P: tl.constexpr = KS // 8
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    nmask = rn < N
    mmask = rm < M
    words = K // 8
    shifts = 28 - tl.arange(0, 8) * 4
    acc = tl.zeros((BM, BN), tl.int32)
    first = tl.program_id(2) * steps_per_program
    for step in range(first, tl.minimum(first + steps_per_program, tl.cdiv(K, KS))):
        k0 = step * KS
        cw = k0 // 8 + tl.arange(0, P)
        u = tl.load(w_ptr + rn[:, None] * words + cw[None, :], mask=nmask[:, None] & (cw < words)[None, :], other=0,
                    eviction_policy="evict_first")
        q = tl.reshape((u[:, :, None] << shifts[None, None, :]) >> 28, (BN, KS)).to(tl.int8)
        kk = k0 + tl.arange(0, KS)
        xk = tl.load(x_ptr + rm[:, None] * K + kk[None, :], mask=mmask[:, None] & (kk < K)[None, :], other=0)
        acc += tl.dot(xk, tl.trans(q), out_dtype=tl.int32)
    target = acc_ptr + rm[:, None] * N + rn[None, :]
    omask = mmask[:, None] & nmask[None, :]
    if ATOMIC:
        tl.atomic_add(target, acc, mask=omask, sem="relaxed")
    else:
        tl.store(target, acc, mask=omask)
