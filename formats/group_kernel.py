"""Inner loop of the group quantizer: nearest codes under candidate scales, least-SSE pick.

For every group ``g`` (a row of ``x``) and every candidate ``c`` the quantizer dequantizes to
``(value - offset[c, g]) * scale[c, g]`` over the candidate's element format, rounding each
input by comparing it with the *scaled midpoints* ``(midpoint - offset) * scale`` in float64.
For table values and midpoints of at most 28 significant bits and scales of at most 24 (every
built-in format and scale dtype) those products are exact, so the result is the exact nearest
value of ``x / scale`` under the format's tie rule, with no rounding of the division.

The candidate with the least sum of squared errors wins; ties keep the earlier candidate
(strict ``<``, the BitMoD authors' rule). Candidates are mixture members (BitMoD), clipping
ratios (MSE scale search) or both. Squared errors are summed in float64 in one fixed order (8
interleaved lanes, then a tree: :func:`sum_squares`), in the numba kernel and in the numpy
reference alike, so both pick the same candidate bit for bit. With one candidate nothing is
picked and no error is summed.

The numba kernel runs the groups in parallel (numba's threads; ``NUMBA_NUM_THREADS`` or
``numba.set_num_threads`` sets how many), each group by itself, so the result does not depend on
the thread count. Per candidate it counts the scaled midpoints below each element with float32
compares where those are exact (twice the SIMD lanes of float64), and for tables of more than
:data:`COUNT_LIMIT` midpoints (``fp8``) it finds each element's bucket of the unscaled table
(:func:`~hwlab.formats.rounding.bucket_starts`) from ``x / scale`` and compares only the few
midpoints there, exactly.

``quantize_groups`` runs the kernel when numba is enabled (:data:`~hwlab.formats.jit.USE_NUMBA`),
else the numpy reference.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import jit
from .jit import ABSOLUTE, PLAIN, SSE_LANES, bucket_of, count_below, lane_sum, njit, prange, round_index
from .jit import sum_squares as _sum_squares
from .rounding import MIN_BUCKET_BITS, bucket_starts

COUNT_LIMIT = 32  # tables with more midpoints than this are searched by bucket, not counted
GROUPS_PER_TASK = 64  # groups one thread takes at a time (its scratch buffers are reused across them)


@dataclasses.dataclass(frozen=True)
class MemberTables:
    """Rounding tables of several element formats, padded to one width for the kernel."""

    midpoints: np.ndarray  # float64 [M, T]
    tie_up: np.ndarray  # bool [M, T]
    values: np.ndarray  # float64 [M, T + 1] sorted distinct values
    codes: np.ndarray  # uint8 [M, T + 1]
    n_midpoints: np.ndarray  # int64 [M]
    negative_zero: np.ndarray  # int64 [M], -1 when the member has no -0 code
    starts: np.ndarray  # [M, 2**bucket_bits] bucket starts of large tables ([M, 1] of zeros if none)
    bucket_bits: int

    @classmethod
    def of(cls, members) -> "MemberTables":
        """The tables of element formats ``members`` (or of :class:`RoundingTable` objects)."""
        tables = [getattr(m, "rounding_table", m) for m in members]
        width = max(t.midpoints.size for t in tables)
        mids = np.zeros((len(tables), width))
        ties = np.zeros((len(tables), width), dtype=bool)
        vals = np.zeros((len(tables), width + 1))
        codes = np.zeros((len(tables), width + 1), dtype=np.uint8)
        for i, t in enumerate(tables):
            n = t.midpoints.size
            mids[i, :n], ties[i, :n] = t.midpoints, t.tie_up
            vals[i, :n + 1], codes[i, :n + 1] = t.sorted_values, t.sorted_codes
        bits = max(t.bucket_bits for t in tables) if width > COUNT_LIMIT else MIN_BUCKET_BITS
        if width > COUNT_LIMIT:
            starts = np.stack([bucket_starts(t.midpoints, bits).astype(np.int32) for t in tables])
        else:
            starts = np.zeros((len(tables), 1), dtype=np.int32)
        return cls(mids, ties, vals, codes,
                   np.array([t.midpoints.size for t in tables], dtype=np.int64),
                   np.array([t.negative_zero_code for t in tables], dtype=np.int64), starts, bits)


def quantize_groups(x: np.ndarray, tables: MemberTables, member_of: np.ndarray,
                    scales: np.ndarray, offsets: np.ndarray):
    """Codes ``uint8 [G, n]`` and winning candidate ``int64 [G]`` for groups ``x [G, n]``.

    ``member_of [C]`` names each candidate's member; ``scales`` and ``offsets`` are float64
    ``[C, G]`` (offset: the zero point of affine formats, 0 otherwise; scales must be > 0).
    """
    args = (np.ascontiguousarray(x), tables.midpoints, tables.tie_up, tables.values, tables.codes,
            tables.n_midpoints, tables.negative_zero, np.ascontiguousarray(member_of, dtype=np.int64),
            np.ascontiguousarray(scales, dtype=np.float64), np.ascontiguousarray(offsets, dtype=np.float64))
    if jit.USE_NUMBA:
        return _kernel(*args, tables.starts, tables.bucket_bits, args[0].dtype == np.float32)
    return quantize_groups_reference(*args)


def quantize_groups_reference(x, midpoints, tie_up, values, codes, n_midpoints, negative_zero,
                              member_of, scales, offsets):
    """Plain numpy float64 definition of :func:`quantize_groups` (the numba kernel must equal it)."""
    x = x.astype(np.float64)
    groups = x.shape[0]
    best_sse = np.full(groups, np.inf)
    best = np.zeros(groups, dtype=np.int64)
    best_codes = np.zeros(x.shape, dtype=np.uint8)
    for c, m in enumerate(member_of):
        n = n_midpoints[m]
        s, z = scales[c][:, None], offsets[c][:, None]
        mids = (midpoints[m, :n] - z) * s  # [G, n]
        idx = np.zeros(x.shape, dtype=np.intp)
        for j in range(n):  # one midpoint at a time: memory stays [G, group]
            idx += (mids[:, j:j + 1] < x) | ((mids[:, j:j + 1] == x) & tie_up[m, j])
        cand_codes = codes[m, idx]
        if negative_zero[m] >= 0:
            cand_codes = np.where((values[m, idx] == 0) & np.signbit(x), np.uint8(negative_zero[m]), cand_codes)
        if len(member_of) == 1:
            return cand_codes, best
        sse = sum_squares(x - (values[m, idx] - z) * s)
        better = sse < best_sse
        best_sse[better], best[better] = sse[better], c
        best_codes[better] = cand_codes[better]
    return best_codes, best


def sum_squares(err: np.ndarray) -> np.ndarray:
    """Row sums of ``err**2`` in the kernel's order: 8 interleaved sequential lanes, then a tree."""
    return sum_lanes(err * err)


def sum_lanes(v: np.ndarray) -> np.ndarray:
    """Float64 row sums of ``v [G, n]`` in the kernels' order: lane ``k`` adds ``v[:, k::8]`` in
    turn, then the 8 lanes are added in a tree (:func:`hwlab.formats.jit.lane_sum`)."""
    v = np.asarray(v, dtype=np.float64)
    n = v.shape[1]
    full = n - n % SSE_LANES
    lanes = np.zeros((v.shape[0], SSE_LANES))
    if full:
        lanes = np.cumsum(v[:, :full].reshape(v.shape[0], full // SSE_LANES, SSE_LANES), axis=1)[:, -1, :]
    lanes[:, :n - full] += v[:, full:]
    return ((lanes[:, 0] + lanes[:, 1]) + (lanes[:, 2] + lanes[:, 3])) + \
        ((lanes[:, 4] + lanes[:, 5]) + (lanes[:, 6] + lanes[:, 7]))


def group_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 ``(max, min, sum of |x|)`` of every row of ``x [G, n]`` (sums in :func:`sum_lanes` order)."""
    x = np.ascontiguousarray(x)
    if jit.USE_NUMBA:
        return _stats_kernel(x)
    return x.max(axis=1).astype(np.float64), x.min(axis=1).astype(np.float64), sum_lanes(np.abs(x))


def group_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 mean and standard deviation (Bessel's correction, as ``torch.std``) of every row of
    ``x [G, n]``, ``n >= 2``; both sums in :func:`sum_lanes` order, the deviations from the mean."""
    x = np.ascontiguousarray(x)
    if jit.USE_NUMBA:
        return _moments_kernel(x)
    x64 = x.astype(np.float64)
    mean = sum_lanes(x64) / x.shape[1]
    dev = x64 - mean[:, None]
    return mean, np.sqrt(sum_lanes(dev * dev) / (x.shape[1] - 1))


@njit(parallel=True)
def _moments_kernel(x):  # pragma: no cover - compiled by numba
    groups, n = x.shape
    mean, std = np.empty(groups), np.empty(groups)
    tasks = (groups + GROUPS_PER_TASK - 1) // GROUPS_PER_TASK
    for task in prange(tasks):
        lanes = np.empty(SSE_LANES)
        dev = np.empty(n)
        for g in range(task * GROUPS_PER_TASK, min(groups, (task + 1) * GROUPS_PER_TASK)):
            m = lane_sum(x[g], lanes, PLAIN) / n
            for i in range(n):
                dev[i] = np.float64(x[g, i]) - m
            mean[g] = m
            std[g] = np.sqrt(_sum_squares(dev, lanes) / (n - 1))
    return mean, std


@njit(parallel=True)
def _stats_kernel(x):  # pragma: no cover - compiled by numba
    groups, n = x.shape
    high, low, total = np.empty(groups), np.empty(groups), np.empty(groups)
    tasks = (groups + GROUPS_PER_TASK - 1) // GROUPS_PER_TASK
    for task in prange(tasks):
        lanes = np.empty(SSE_LANES)
        for g in range(task * GROUPS_PER_TASK, min(groups, (task + 1) * GROUPS_PER_TASK)):
            row = x[g]
            hi, lo = row[0], row[0]
            for i in range(n):
                hi = max(hi, row[i])
                lo = min(lo, row[i])
            high[g], low[g] = hi, lo
            total[g] = lane_sum(row, lanes, ABSOLUTE)
    return high, low, total


@njit(parallel=True)
def _kernel(x, midpoints, tie_up, values, codes, n_midpoints, negative_zero,
            member_of, scales, offsets, starts, bucket_bits, narrow):  # pragma: no cover - compiled by numba
    """The numba twin of :func:`quantize_groups_reference`; ``narrow``: x is float32."""
    groups, n = x.shape
    out = np.zeros((groups, n), dtype=np.uint8)
    best = np.zeros(groups, dtype=np.int64)
    tasks = (groups + GROUPS_PER_TASK - 1) // GROUPS_PER_TASK
    for task in prange(tasks):
        _groups(x, midpoints, tie_up, values, codes, n_midpoints, negative_zero, member_of, scales, offsets,
                starts, bucket_bits, narrow, task * GROUPS_PER_TASK, min(groups, (task + 1) * GROUPS_PER_TASK), out, best)
    return out, best


@njit(nogil=True)
def _groups(x, midpoints, tie_up, values, codes, n_midpoints, negative_zero, member_of, scales, offsets,
            starts, bucket_bits, narrow, first, last, out, best):  # pragma: no cover - compiled by numba
    """Groups ``first..last-1`` of :func:`_kernel`, with scratch buffers of their own."""
    n = x.shape[1]
    candidates = member_of.shape[0]
    width = midpoints.shape[1]
    x64 = np.empty(n)
    x32 = np.empty(n, dtype=np.float32)
    indices = np.empty((candidates, n), dtype=np.int32)  # sorted-value index per candidate
    err = np.empty(n)
    lanes = np.empty(SSE_LANES)
    mids = np.empty(width)
    for g in range(first, last):
        for i in range(n):
            x64[i] = x[g, i]
            x32[i] = x[g, i]  # exact when x is float32; unused otherwise
        best_sse = np.inf
        for c in range(candidates):
            idx = indices[c]
            m = member_of[c]
            t = n_midpoints[m]
            s, z = scales[c, g], offsets[c, g]
            if t > COUNT_LIMIT and z == 0.0:  # large table: bucket of x / s, then exact compares
                inv = 1.0 / s
                for i in range(n):
                    b = bucket_of(x64[i] * inv, bucket_bits)
                    idx[i] = round_index(x64[i], midpoints[m, :t], tie_up[m, :t], s, starts[m, max(b - 1, 0)])
            else:
                exact32 = narrow
                for j in range(t):
                    mids[j] = (midpoints[m, j] - z) * s
                    exact32 &= np.float64(np.float32(mids[j])) == mids[j]
                idx[:] = 0
                if exact32:  # float32 compares are exact: twice the SIMD lanes
                    for j in range(t):
                        count_below(x32, np.float32(mids[j]), tie_up[m, j], idx)
                else:
                    for j in range(t):
                        count_below(x64, mids[j], tie_up[m, j], idx)
            if candidates > 1:
                for i in range(n):
                    err[i] = x64[i] - (values[m, idx[i]] - z) * s
                sse = _sum_squares(err, lanes)
                if sse < best_sse:
                    best_sse = sse
                    best[g] = c
        c = best[g]
        m = member_of[c]
        idx = indices[c]
        for i in range(n):
            code = codes[m, idx[i]]
            if negative_zero[m] >= 0 and values[m, idx[i]] == 0 and np.signbit(x64[i]):
                code = negative_zero[m]
            out[g, i] = code
