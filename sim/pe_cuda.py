"""The functional PE engine on a GPU through ``numba.cuda``, bit-identical to the CPU engine.

**What stays on the device.** A tensor's :class:`~hwlab.sim.pe.TermStreams` (the int8 term
streams ``[T, Kp, N]`` and the scales' fields, what :func:`hwlab.sim.pe.prepare_pe` builds once)
are copied to the GPU on its first call there and kept with the streams (``derived["cuda"]``, one
copy per device), so a call transfers only the activations (one int32 word per input channel:
significand, exponent and sign of the FP16 value) and the float32 output.

**Two kernels per call.** The block-floating group accumulator is sequential within a group but
starts from zero in every group, and the output adds the dequantized groups in float32 in group
order (:mod:`hwlab.sim.pe`), so:

1. ``_group_kernel``: one thread per (token, group, output channel) walks its group's tile steps
   and term cycles exactly as :func:`hwlab.sim.pe.golden` defines them (the same integer
   alignment, adder tree, accumulator and bit-serial dequantizer) and writes the group's result,
   already rounded to float32 as the CPU engine rounds it before adding, to ``partial[m, g, n]``
   (0 for a group without terms: adding +0 to the running sum, which is never -0, changes nothing,
   as skipping it does on the CPU). The threads of a warp are consecutive output channels: their
   term bytes are consecutive (coalesced) and their activation word is the same (broadcast).
2. ``_sum_kernel``: one thread per output adds its groups' partials in group order in float32.

At batch 1 a 4096 x 4096 layer in groups of 128 runs 131072 threads in the first kernel where one
thread per output ran 4096. Per-channel or per-tensor granularity (one group a row) has only one
thread per output: the accumulator's order leaves nothing else to split without changing the
numerics.

numba.cuda is imported only when this module is; without a GPU, ``NUMBA_ENABLE_CUDASIM=1`` runs the
same kernels in numba's simulator (the tests do, on small layers).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .pe import ACC_LIMIT, EMPTY, GUARD_BITS, LANES, MAX_SHIFT, NO_TERM, POINT, Activations, Operands, PEWeights
from .pe import pack_terms

THREADS = 128  # per block, along the output channels
PARTIAL_LIMIT = 1 << 26  # float32 group partials per launch (256 MiB); more tokens run in chunks
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y; more (token, group) pairs are walked in a grid-stride loop


@cuda.jit
def _group_kernel(acts, packed, s_sign, s_sig, s_exp, group_len, partial):  # pragma: no cover - GPU
    terms, kp, n = packed.shape
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    groups = kp // group_len
    if i >= n:
        return
    r = 0 if s_sig.shape[0] == 1 else i
    for mg in range(cuda.blockIdx.y, acts.shape[0] * groups, cuda.gridDim.y):
        m = mg // groups
        g = mg - m * groups
        acc = np.int32(0)
        acc_exp = np.int32(EMPTY)
        end = (g + 1) * group_len
        for tile in range(g * group_len, end, LANES):
            for c in range(terms):
                top = np.int32(EMPTY)
                for j in range(LANES):  # exponent match
                    k = tile + j
                    if k < end:
                        word = acts[m, k]
                        t = np.int32(packed[c, k, i])
                        if (word & 0x7FF) != 0 and t != NO_TERM:
                            top = max(top, ((word >> 11) & 0x1F) + (t >> 1))
                part = np.int32(0)
                for j in range(LANES):  # alignment, sign, adder tree
                    k = tile + j
                    if k < end:
                        word = acts[m, k]
                        t = np.int32(packed[c, k, i])
                        if (word & 0x7FF) != 0 and t != NO_TERM:
                            d = min(top - (((word >> 11) & 0x1F) + (t >> 1)), MAX_SHIFT)
                            aligned = ((word & 0x7FF) << GUARD_BITS) >> d
                            part += -aligned if ((t & 1) ^ (word >> 16)) == 1 else aligned
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
        value = np.float32(0)
        if acc_exp != EMPTY:  # the bit-serial dequantizer, rounded to float32 as the CPU engine adds it
            sig = -s_sig[r, g] if s_sign[r, g] == 1 else s_sig[r, g]
            value = np.float32(math.ldexp(float(np.int64(acc) * sig), int(acc_exp - POINT + s_exp[r, g])))
        partial[m, g, i] = value


@cuda.jit
def _sum_kernel(partial, out):  # pragma: no cover - GPU
    m_tokens, groups, n = partial.shape
    idx = cuda.grid(1)
    if idx >= m_tokens * n:
        return
    m = idx // n
    i = idx - m * n
    total = np.float32(0)
    for g in range(groups):  # the float32 output accumulator, in group order
        total += partial[m, g, i]
    out[m, i] = total


def activation_words(acts: Activations | Operands) -> np.ndarray:
    """int32 ``[M, Kp]``: ``man | exp << 11 | sign << 16`` of every FP16 activation (11-bit significand
    with the hidden bit, 5-bit effective exponent, sign), one load per lane in the kernel."""
    return np.ascontiguousarray(acts.a_man | (acts.a_exp << 11) | (acts.a_sign.astype(np.int32) << 16), np.int32)


def _to_device(packed, s_sign, s_sig, s_exp) -> tuple:
    return tuple(cuda.to_device(np.ascontiguousarray(a)) for a in
                 (packed, s_sign.astype(np.int32), s_sig, s_exp.astype(np.int32)))


def device_streams(weights: PEWeights) -> tuple:
    """The device copies of ``weights``' term streams and scale fields on the current GPU, made on
    the first call and kept with the streams (``streams.derived["cuda"]``, per device id)."""
    kept = weights.streams.derived.setdefault("cuda", {})
    key = cuda.gpus.current.id
    if key not in kept:
        s = weights.streams
        kept[key] = _to_device(s.packed, s.s_sign, s.s_sig, s.s_exp)
    return kept[key]


def _launch(words: np.ndarray, device_arrays: tuple, group_len: int) -> np.ndarray:
    packed = device_arrays[0]
    m, (_, kp, n) = words.shape[0], packed.shape
    groups = kp // group_len
    chunk = max(1, PARTIAL_LIMIT // (groups * n))  # tokens per launch pair: partial stays under 256 MiB
    out = np.empty((m, n), dtype=np.float32)
    for lo in range(0, m, chunk):
        rows = min(chunk, m - lo)
        partial = cuda.device_array((rows, groups, n), dtype=np.float32)
        part_out = cuda.device_array((rows, n), dtype=np.float32)
        grid = (-(-n // THREADS), min(rows * groups, MAX_GRID_Y))
        _group_kernel[grid, THREADS](cuda.to_device(words[lo:lo + rows]), *device_arrays, group_len, partial)
        _sum_kernel[-(-(rows * n) // THREADS), THREADS](partial, part_out)
        out[lo:lo + rows] = part_out.copy_to_host()
    return out


def engine_cuda(weights: PEWeights | Operands, acts: Activations | None = None) -> np.ndarray:
    """The output of :func:`hwlab.sim.pe.engine`, computed on the GPU (float32 ``[M, N]``).

    ``engine_cuda(weights, acts)``: prepared weights (device copies kept) and
    :meth:`PEWeights.activations`; ``engine_cuda(ops)``: :class:`~hwlab.sim.pe.Operands`, packed and
    copied for this call only."""
    if isinstance(weights, Operands):
        return _launch(activation_words(weights), _to_device(pack_terms(weights), weights.s_sign, weights.s_sig,
                                                             weights.s_exp), weights.group_len)
    return _launch(activation_words(acts), device_streams(weights), weights.streams.group_len)
