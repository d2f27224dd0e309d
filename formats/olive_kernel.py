"""Numba kernel of the ``olive4`` scale search: every candidate scale of every group in one pass.

The numba twin of :meth:`OliveFormat._search_reference
<hwlab.formats.olive.OliveFormat._search_reference>`, equal to it bit for bit, parallel over groups. For each group
and candidate scale ``s`` every element's squared error, after rounding to the union grid and
the pair rule, is summed in the order of :func:`~hwlab.formats.group_kernel.sum_squares`; the
least sum wins (strict ``<``: the earliest candidate wins a tie). The winner's codes are then
rounded by the library's engine (:func:`~hwlab.formats.jit.count_below` over the
scaled midpoints ``midpoint * s``, compared in float64).

Scoring a candidate does not count all 28 midpoints per element, as the engine does (that
alone would take longer than the whole search). The normal values are the integers
``-k_max..k_max``, so an element with ``t = x * (1 / s)`` reads ``k * s`` (= ``values[index]
* s``) with ``k = rint(clip(t, -k_max, k_max))``, which is the engine's choice unless ``t``
lies within ``GUARD`` of a midpoint ``k +- 0.5`` or beyond ``+-(m - GUARD)`` (``m``: the first
midpoint past ``+-k_max``, 9.5, where outliers begin): for ``|t| <= m``, ``t`` and the engine's
``midpoint * s`` are within a few float64 ulps (relative 2**-52) of the exact ``x / s`` and
``midpoint * s``, far inside ``GUARD``. Those few elements (outliers, exact ties) are rounded by
counting every midpoint as the engine does, and the pair rule zeroes the victims. A loop that
the compiler vectorizes scores the rest.
"""
from __future__ import annotations

import numpy as np

from .jit import SSE_LANES, count_below, njit, prange, sum_squares

GUARD = 2.0**-20  # in scale units: rint(t) is trusted only this far (>> float64 error) from a midpoint
OUTLIER_UNION_CODE = 16  # union codes 16 + c are outlier code c (olive.py)


def search(x: np.ndarray, midpoints: np.ndarray, tie_up: np.ndarray, values: np.ndarray,
           union_codes: np.ndarray, scales: np.ndarray, victim: int):
    """Pair codes ``uint8 [G, n]``, winning candidate ``int64 [G]`` and its sum of squared errors
    (float64 ``[G]``, in the units of ``x`` squared).

    ``x [G, n]`` float32 or float64 groups (``n`` even: pairs ``(2k, 2k+1)``); ``midpoints``,
    ``tie_up`` ``[T]`` and ``values``, ``union_codes`` ``[T + 1]``: the union grid's rounding
    table (row 0 of :class:`~hwlab.formats.group_kernel.MemberTables`; a union code ``>= 16`` is
    an outlier, so its pair partner is the victim, stored as code ``victim``); ``scales``
    float64 ``[C, G]``, positive. The values that are not outliers must be the consecutive
    integers ``-k_max..k_max``.
    """
    outlier = np.asarray(union_codes) >= OUTLIER_UNION_CODE
    normal = np.flatnonzero(~outlier)
    first, last = normal[0], normal[-1]
    k_max = values[last]
    if not (np.array_equal(values[first:last + 1], np.arange(-k_max, k_max + 1))
            and 0 < first and last < len(values) - 1):
        raise ValueError("olive_kernel.search: expected the normal values to be the integers -k..k with "
                         f"outliers on both sides, got values {list(values)} with outliers {list(outlier)}")
    return _search(np.ascontiguousarray(x), np.ascontiguousarray(midpoints, dtype=np.float64),
                   np.ascontiguousarray(tie_up, dtype=np.bool_),
                   np.ascontiguousarray(values, dtype=np.float64), first, last,
                   np.ascontiguousarray(scales, dtype=np.float64),
                   np.ascontiguousarray(union_codes, dtype=np.uint8), victim)


GROUPS_PER_TASK = 64  # groups one thread takes at a time (with scratch buffers of its own)


@njit(parallel=True)
def _search(x, midpoints, tie_up, values, first, last, scales, union_codes, victim):  # pragma: no cover - numba
    """See :func:`search`; ``values[first..last]`` are the normal values ``-k_max..k_max``.

    Groups are independent: threads take ``GROUPS_PER_TASK`` of them at a time, so the result
    does not depend on the thread count."""
    groups, n = x.shape
    best = np.zeros(groups, dtype=np.int64)
    best_sse = np.full(groups, np.inf)
    codes = np.zeros((groups, n), dtype=np.uint8)
    tasks = (groups + GROUPS_PER_TASK - 1) // GROUPS_PER_TASK
    for task in prange(tasks):
        _search_groups(x, midpoints, tie_up, values, first, last, scales, union_codes, victim,
                       task * GROUPS_PER_TASK, min(groups, (task + 1) * GROUPS_PER_TASK), best, best_sse, codes)
    return codes, best, best_sse


@njit(nogil=True)
def _search_groups(x, midpoints, tie_up, values, first, last, scales, union_codes, victim, first_group,
                   last_group, best, best_sse, codes):  # pragma: no cover - numba
    """Groups ``first_group..last_group-1`` of :func:`_search`."""
    n = x.shape[1]
    candidates, t = scales.shape[0], midpoints.shape[0]
    k_max = values[last]
    outlier_from = min(midpoints[last], -midpoints[first - 1]) - GUARD  # |t| beyond: perhaps an outlier
    x64 = np.empty(n)
    err = np.empty(n)
    special = np.empty(n, dtype=np.bool_)
    lanes = np.empty(SSE_LANES)
    mids = np.empty(t)
    vals = np.empty(t + 1)
    idx = np.empty(n, dtype=np.int32)
    for g in range(first_group, last_group):
        for i in range(n):
            x64[i] = x[g, i]
        for c in range(candidates):
            s = scales[c, g]
            inv = 1.0 / s  # finite: s >= 2**-149 (the least positive scale of every scale dtype)
            specials = 0
            for i in range(n):  # the common case, branch-free so that the compiler vectorizes it
                xi = x64[i]
                ti = xi * inv
                tc = min(max(ti, -k_max), k_max)
                k = np.rint(tc)
                err[i] = xi - k * s
                sp = (abs(tc - k) > 0.5 - GUARD) | (abs(ti) > outlier_from)
                special[i] = sp
                specials += sp
            if specials:
                for j in range(t):
                    mids[j] = midpoints[j] * s
                for j in range(t + 1):
                    vals[j] = values[j] * s
                for i in range(0, n, 2):  # round exactly; an outlier's partner is its victim
                    if special[i] or special[i + 1]:
                        even = _index(x64[i], mids, tie_up) if special[i] else first
                        odd = _index(x64[i + 1], mids, tie_up) if special[i + 1] else first
                        even_out = even < first or even > last
                        odd_out = odd < first or odd > last
                        if special[i]:
                            err[i] = x64[i] - (0.0 if odd_out and not even_out else vals[even])
                        elif odd_out:
                            err[i] = x64[i]
                        if special[i + 1]:
                            err[i + 1] = x64[i + 1] - (0.0 if even_out else vals[odd])
                        elif even_out:
                            err[i + 1] = x64[i + 1]
            sse = sum_squares(err, lanes)
            if sse < best_sse[g]:
                best_sse[g] = sse
                best[g] = c
        s = scales[best[g], g]
        idx[:] = 0
        for j in range(t):  # the winner's codes, by the engine
            count_below(x64, midpoints[j] * s, tie_up[j], idx)
        for i in range(0, n, 2):  # pair codes: an outlier's partner is its victim (olive.pair_codes)
            even, odd = union_codes[idx[i]], union_codes[idx[i + 1]]
            even_out, odd_out = even >= OUTLIER_UNION_CODE, odd >= OUTLIER_UNION_CODE
            codes[g, i] = victim if odd_out and not even_out else even & 15
            codes[g, i + 1] = victim if even_out else odd & 15


@njit(inline="always")
def _index(xi, mids, tie_up):  # pragma: no cover - compiled by numba
    """Index of the sorted value that ``xi`` rounds to: the midpoints it lies above (engine rule)."""
    count = 0
    for j in range(mids.shape[0]):
        count += mids[j] < xi or (tie_up[j] and mids[j] == xi)
    return count

