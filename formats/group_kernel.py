"""Inner loop of the group quantizer: nearest codes under candidate scales, least-SSE pick.

For every group ``g`` (a row of ``x``) and every candidate ``c`` the quantizer dequantizes to
``(value - offset[c, g]) * scale[c, g]`` over the candidate's element format, rounding each
input by comparing it with the *scaled midpoints* ``(midpoint - offset) * scale`` in float64.
For table values and midpoints of at most 28 significant bits and scales of at most 24 (every
built-in format and scale dtype) those products are exact, so the result is the exact nearest
value of ``x / scale`` under the format's tie rule, with no rounding of the division.

The candidate with the least sum of squared errors wins; ties keep the earlier candidate
(strict ``<``, the BitMoD authors' rule). Candidates are mixture members (BitMoD), clipping
ratios (MSE scale search) or both. Squared errors are summed in float64 in one fixed order (8 interleaved
lanes, then a tree: :func:`sum_squares`), in the numba kernel and in the numpy reference alike,
so both pick the same candidate bit for bit.

``quantize_groups`` runs the numba kernel when numba imports, else the numpy reference;
``HWLAB_DISABLE_NUMBA=1`` forces the reference.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

try:  # numba is a core dependency, but the formats package also works on numpy alone
    import numba
except ImportError:  # pragma: no cover - exercised only on a numpy-only install
    numba = None

SSE_LANES = 8  # squared errors are summed in 8 interleaved lanes, then pairwise (see sum_squares)
USE_NUMBA = numba is not None and os.environ.get("HWLAB_DISABLE_NUMBA", "0") != "1"


@dataclasses.dataclass(frozen=True)
class MemberTables:
    """Rounding tables of several element formats, padded to one width for the kernel."""

    midpoints: np.ndarray  # float64 [M, T]
    tie_up: np.ndarray  # bool [M, T]
    values: np.ndarray  # float64 [M, T + 1] sorted distinct values
    codes: np.ndarray  # uint8 [M, T + 1]
    n_midpoints: np.ndarray  # int64 [M]
    negative_zero: np.ndarray  # int64 [M], -1 when the member has no -0 code

    @classmethod
    def of(cls, members) -> "MemberTables":
        tables = [m._table for m in members]
        width = max(t.midpoints.size for t in tables)
        mids = np.zeros((len(tables), width))
        ties = np.zeros((len(tables), width), dtype=bool)
        vals = np.zeros((len(tables), width + 1))
        codes = np.zeros((len(tables), width + 1), dtype=np.uint8)
        for i, t in enumerate(tables):
            n = t.midpoints.size
            mids[i, :n], ties[i, :n] = t.midpoints, t.tie_up
            vals[i, :n + 1], codes[i, :n + 1] = t.sorted_values, t.sorted_codes
        return cls(mids, ties, vals, codes,
                   np.array([t.midpoints.size for t in tables], dtype=np.int64),
                   np.array([t.negative_zero_code for t in tables], dtype=np.int64))


def quantize_groups(x: np.ndarray, tables: MemberTables, member_of: np.ndarray,
                    scales: np.ndarray, offsets: np.ndarray):
    """Codes ``uint8 [G, n]`` and winning candidate ``int64 [G]`` for groups ``x [G, n]``.

    ``member_of [C]`` names each candidate's member; ``scales`` and ``offsets`` are float64
    ``[C, G]`` (offset: the zero point of affine formats, 0 otherwise; scales must be > 0).
    """
    args = (np.ascontiguousarray(x), tables.midpoints, tables.tie_up, tables.values, tables.codes,
            tables.n_midpoints, tables.negative_zero, np.ascontiguousarray(member_of, dtype=np.int64),
            np.ascontiguousarray(scales, dtype=np.float64), np.ascontiguousarray(offsets, dtype=np.float64))
    if USE_NUMBA:
        return _kernel(*args, args[0].dtype == np.float32)
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
        idx = (mids[:, None, :] < x[:, :, None]).sum(axis=2)
        at = np.minimum(idx, n - 1)
        tied = (idx < n) & (np.take_along_axis(mids, at, axis=1) == x) & tie_up[m, at]
        idx = idx + tied
        err = x - (values[m, idx] - z) * s
        sse = sum_squares(err)
        cand_codes = codes[m, idx]
        if negative_zero[m] >= 0:
            cand_codes = np.where((values[m, idx] == 0) & np.signbit(x), np.uint8(negative_zero[m]), cand_codes)
        better = sse < best_sse
        best_sse[better], best[better] = sse[better], c
        best_codes[better] = cand_codes[better]
    return best_codes, best


def sum_squares(err: np.ndarray) -> np.ndarray:
    """Row sums of ``err**2`` in the kernel's order: 8 interleaved sequential lanes, then a tree."""
    n = err.shape[1]
    full = n - n % SSE_LANES
    sq = err * err
    lanes = np.zeros((err.shape[0], SSE_LANES))
    if full:
        lanes = np.cumsum(sq[:, :full].reshape(err.shape[0], full // SSE_LANES, SSE_LANES), axis=1)[:, -1, :]
    lanes[:, :n - full] += sq[:, full:]
    return ((lanes[:, 0] + lanes[:, 1]) + (lanes[:, 2] + lanes[:, 3])) + \
        ((lanes[:, 4] + lanes[:, 5]) + (lanes[:, 6] + lanes[:, 7]))


def _kernel_py(x, midpoints, tie_up, values, codes, n_midpoints, negative_zero,
               member_of, scales, offsets, narrow):  # pragma: no cover - compiled by numba
    """The numba twin of :func:`quantize_groups_reference`; ``narrow``: x is float32."""
    groups, n = x.shape
    out = np.zeros((groups, n), dtype=np.uint8)
    best = np.zeros(groups, dtype=np.int64)
    x64 = np.empty(n)
    x32 = np.empty(n, dtype=np.float32)
    candidates = member_of.shape[0]
    indices = np.empty((candidates, n), dtype=np.int32)  # sorted-value index per candidate
    err = np.empty(n)
    lanes = np.empty(SSE_LANES)
    width = midpoints.shape[1]
    mids = np.empty(width)
    vals = np.empty(width + 1)
    for g in range(groups):
        for i in range(n):
            x64[i] = x[g, i]
            x32[i] = x[g, i]  # exact when x is float32; unused otherwise
        best_sse = np.inf
        for c in range(candidates):
            idx = indices[c]
            m = member_of[c]
            t = n_midpoints[m]
            s, z = scales[c, g], offsets[c, g]
            exact32 = narrow
            for j in range(t):
                mids[j] = (midpoints[m, j] - z) * s
                exact32 &= np.float64(np.float32(mids[j])) == mids[j]
            for j in range(t + 1):
                vals[j] = (values[m, j] - z) * s
            idx[:] = 0
            if exact32:  # float32 compares are exact: twice the SIMD lanes
                for j in range(t):
                    _count_below(x32, np.float32(mids[j]), tie_up[m, j], idx)
            else:
                for j in range(t):
                    _count_below(x64, mids[j], tie_up[m, j], idx)
            for i in range(n):
                err[i] = x64[i] - vals[idx[i]]
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
    return out, best


def _count_below_py(xs, mid, tie_up, idx):  # pragma: no cover - compiled by numba
    """``idx[i] += 1`` where ``xs[i]`` rounds above midpoint ``mid`` (ties per ``tie_up``)."""
    if tie_up:
        for i in range(xs.shape[0]):
            idx[i] += mid <= xs[i]
    else:
        for i in range(xs.shape[0]):
            idx[i] += mid < xs[i]


def _sum_squares_py(err, lanes):  # pragma: no cover - compiled by numba
    """Sum of squares in a fixed order: lane k adds err[k::8] in turn, then the lanes in a tree."""
    lanes[:] = 0.0
    n = err.shape[0]
    full = n - n % SSE_LANES
    for i in range(0, full, SSE_LANES):
        for k in range(SSE_LANES):
            lanes[k] += err[i + k] * err[i + k]
    for i in range(full, n):
        lanes[i - full] += err[i] * err[i]
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))


if numba is not None:
    _sum_squares = numba.njit(cache=True, inline="always")(_sum_squares_py)
    _count_below = numba.njit(cache=True, inline="always")(_count_below_py)
    _kernel = numba.njit(cache=True, nogil=True)(_kernel_py)
