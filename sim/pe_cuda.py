"""The functional PE engine on a GPU through ``numba.cuda``, bit-identical to the CPU engine.

One GPU thread computes one output ``(token, channel)``: it walks the layer's groups, tile steps and
term cycles exactly as :func:`hwlab.sim.pe.golden` defines them (the same integer alignment,
adder tree and block-floating accumulator, the same float32 accumulation of the dequantized
groups in group order), reading the packed terms ``[T, Kp, N]`` that the CPU engine streams (one
byte per weight and cycle, coalesced across the threads of a warp). numba.cuda is imported only
when this module is; without a GPU, ``NUMBA_ENABLE_CUDASIM=1`` runs the same kernel in numba's
simulator (the tests do, on small layers).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .pe import ACC_LIMIT, EMPTY, GUARD_BITS, LANES, MAX_SHIFT, NO_TERM, POINT, Operands, pack_terms

THREADS = 128  # per block


@cuda.jit
def _kernel(a_sign, a_exp, a_man, packed, s_sign, s_sig, s_exp, group_len, out):  # pragma: no cover - GPU
    terms, kp, n = packed.shape
    idx = cuda.grid(1)
    if idx >= n * a_man.shape[0]:
        return
    m, i = idx // n, idx % n
    total_out = np.float32(0)
    for g in range(kp // group_len):
        acc = 0
        acc_exp = EMPTY
        end = (g + 1) * group_len
        for tile in range(g * group_len, end, LANES):
            for c in range(terms):
                top = EMPTY
                for j in range(LANES):  # exponent match
                    k = tile + j
                    if k < end and a_man[m, k] != 0:
                        t = packed[c, k, i]
                        if t != NO_TERM:
                            top = max(top, a_exp[m, k] + (t >> 1))
                part = 0
                for j in range(LANES):  # alignment, sign, adder tree
                    k = tile + j
                    if k < end and a_man[m, k] != 0:
                        t = packed[c, k, i]
                        if t != NO_TERM:
                            aligned = (a_man[m, k] << GUARD_BITS) >> min(top - (a_exp[m, k] + (t >> 1)), MAX_SHIFT)
                            part += -aligned if ((t & 1) ^ a_sign[m, k]) == 1 else aligned
                x = max(acc_exp, top)  # the block-floating accumulator
                s = (acc >> min(x - acc_exp, MAX_SHIFT)) + (part >> min(x - top, MAX_SHIFT))
                shift = 0
                if s >= ACC_LIMIT or s < -ACC_LIMIT:
                    shift += 1
                if s >= 2 * ACC_LIMIT or s < -2 * ACC_LIMIT:
                    shift += 1
                if s >= 4 * ACC_LIMIT or s < -4 * ACC_LIMIT:
                    shift += 1
                acc = s >> shift
                acc_exp = EMPTY if x == EMPTY else x + shift
        if acc_exp != EMPTY:  # the bit-serial dequantizer, then the float32 output accumulator
            r = 0 if s_sig.shape[0] == 1 else i
            sig = -s_sig[r, g] if s_sign[r, g] == 1 else s_sig[r, g]
            total_out += np.float32(math.ldexp(float(acc * sig), int(acc_exp - POINT + s_exp[r, g])))
    out[m, i] = total_out


def engine_cuda(ops: Operands, packed: np.ndarray | None = None) -> np.ndarray:
    """The output of :func:`hwlab.sim.pe.engine`, computed on the GPU (float32 ``[M, N]``)."""
    packed = pack_terms(ops) if packed is None else packed
    m, n = ops.a_man.shape[0], ops.shape[0]
    args = [cuda.to_device(np.ascontiguousarray(a)) for a in
            (ops.a_sign.astype(np.int32), ops.a_exp, ops.a_man, packed, ops.s_sign.astype(np.int32), ops.s_sig,
             ops.s_exp)]
    out = cuda.device_array((m, n), dtype=np.float32)
    blocks = -(-(m * n) // THREADS)
    _kernel[blocks, THREADS](*args, ops.group_len, out)
    return out.copy_to_host()
