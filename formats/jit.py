"""Numba, when it is there: the one switch, the cache policy and the compiled helpers kernels share.

numba is a core dependency, but :mod:`hwlab.formats` also works on numpy alone (every kernel
has a numpy reference it equals bit for bit); ``HWLAB_DISABLE_NUMBA=1`` forces the references.

Compiled functions are cached on disk (``cache=True``) where numba finds a writable cache
directory (beside the source, ``$NUMBA_CACHE_DIR`` or the user's cache); on a read-only install
without one they compile in memory instead, with no error.
"""
from __future__ import annotations

import os

import numpy as np

try:
    import numba
    from numba import prange
except ImportError:  # pragma: no cover - exercised only on a numpy-only install
    numba = None
    prange = range

USE_NUMBA = numba is not None and os.environ.get("HWLAB_DISABLE_NUMBA", "0") != "1"
SSE_LANES = 8  # squared errors are summed in 8 interleaved lanes, then pairwise (see sum_squares)


def njit(**options):
    """``numba.njit(cache=True, **options)``, compiled in memory where no cache directory is writable.

    Returns the plain Python function unchanged when numba is missing.
    """
    def decorate(fn):
        if numba is None:
            return fn
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # numba: "cannot cache function ...: no locator available"
            return numba.njit(cache=False, **options)(fn)
    return decorate


@njit(inline="always")
def count_below(xs, mid, tie_up, idx):  # pragma: no cover - compiled by numba
    """``idx[i] += 1`` where ``xs[i]`` rounds above midpoint ``mid`` (ties go up when ``tie_up``)."""
    if tie_up:
        for i in range(xs.shape[0]):
            idx[i] += mid <= xs[i]
    else:
        for i in range(xs.shape[0]):
            idx[i] += mid < xs[i]


PLAIN, ABSOLUTE, SQUARED = 0, 1, 2  # what lane_sum adds up: x, |x| or x * x


@njit(inline="always")
def lane_sum(x, lanes, mode):  # pragma: no cover - compiled by numba
    """Float64 sum of ``x`` (``mode`` PLAIN), ``|x|`` (ABSOLUTE) or ``x * x`` (SQUARED) in one fixed
    order: lane k adds ``x[k::8]`` in turn, then the 8 lanes are added in a tree.

    The numpy twin is :func:`hwlab.formats.group_kernel.sum_lanes` (row sums, same order).
    """
    lanes[:] = 0.0
    n = x.shape[0]
    full = n - n % SSE_LANES
    for i in range(0, full, SSE_LANES):
        for k in range(SSE_LANES):
            v = np.float64(x[i + k])
            lanes[k] += v * v if mode == SQUARED else (abs(v) if mode == ABSOLUTE else v)
    for i in range(full, n):
        v = np.float64(x[i])
        lanes[i - full] += v * v if mode == SQUARED else (abs(v) if mode == ABSOLUTE else v)
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))


@njit(inline="always")
def sum_squares(err, lanes):  # pragma: no cover - compiled by numba
    """Sum of ``err * err`` in :func:`lane_sum` order (:func:`hwlab.formats.group_kernel.sum_squares`)."""
    return lane_sum(err, lanes, SQUARED)


@njit(inline="always")
def round_index(x, midpoints, tie_up, scale, start):  # pragma: no cover - compiled by numba
    """Index of the sorted value that ``x`` rounds to under ``scale``: ``start`` plus the midpoints
    from ``start`` on with ``midpoint * scale`` below ``x`` (or equal, where ties go up).

    ``start`` must not exceed the answer (every midpoint before it lies below ``x / scale``).
    """
    idx = start
    n = midpoints.shape[0]
    while idx < n:
        m = midpoints[idx] * scale
        if m < x or (m == x and tie_up[idx]):
            idx += 1
        else:
            break
    return idx


MAX_BUCKET_BITS = 17  # sign, 11 exponent and 5 fraction bits of a float64: 1/32 of a binade per bucket


@njit(inline="always")
def bucket_of(x, bucket_bits):  # pragma: no cover - compiled by numba
    """Bucket index ``0 .. 2**bucket_bits - 1`` of float64 ``x`` (its sign, exponent and top
    fraction bits, ``bucket_bits`` in all), non-decreasing in ``x``."""
    bits = np.int64(np.float64(x).view(np.int64))
    key = bits if bits >= 0 else -(bits & np.int64(0x7FFFFFFFFFFFFFFF)) - 1
    return (key >> (64 - bucket_bits)) + (1 << (bucket_bits - 1))


@njit(inline="always")
def bucket_of32(bits, bucket_bits):  # pragma: no cover - compiled by numba
    """:func:`bucket_of` for a float32 given by its int32 ``bits`` (sign, 8 exponent, fraction bits)."""
    key = bits if bits >= 0 else -(bits & np.int32(0x7FFFFFFF)) - np.int32(1)
    return (key >> np.int32(32 - bucket_bits)) + np.int32(1 << (bucket_bits - 1))
