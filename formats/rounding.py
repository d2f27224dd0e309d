"""The one rounding engine: sorted values, the midpoints between them, and which way ties go.

Every element format rounds through a :class:`RoundingTable`: an input ``x`` gets the sorted
value whose index is the number of midpoints lying below ``x`` (a midpoint equal to ``x`` counts
when its tie goes up). The midpoints are exactly the comparator thresholds a hardware encoder
needs, and the group quantizer uses the same table scaled by each group's stored scale.

:meth:`RoundingTable.encode` is compiled (numba) where numba is present: each input is placed in
one of ``2**17`` buckets of the float64 order (sign, exponent and five fraction bits), whose
first midpoint index is precomputed, and only the midpoints inside its bucket are compared,
exactly, in float64. The numpy path (``searchsorted``) gives the same codes.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from . import jit
from .jit import BUCKET_BITS, bucket_of, njit, prange, round_index


@dataclasses.dataclass(frozen=True, eq=False)
class RoundingTable:
    """Sorted distinct encodable values, the midpoints between them and the tie direction.

    ``tie_up[i]``: an input equal to ``midpoints[i]`` rounds to ``sorted_values[i + 1]``.
    ``negative_zero_code``: the ``-0`` code that negative inputs rounding to zero get (-1: none).
    """

    sorted_values: np.ndarray  # float64, ascending, distinct
    sorted_codes: np.ndarray  # uint8 code of each sorted value (+0 for zero)
    midpoints: np.ndarray  # float64, len = len(sorted_values) - 1
    tie_up: np.ndarray  # bool
    negative_zero_code: int

    @classmethod
    def build(cls, values: np.ndarray, emit: np.ndarray, rounding: str, name: str) -> "RoundingTable":
        """The table of the codes ``emit`` selects from ``values`` under rule ``rounding``.

        ``"nearest_even"``: a tie goes to the even code (a tie between codes of equal parity,
        only ``-v, +v`` around zero in zero-free formats, to the positive one);
        ``"nearest_down"``: a tie goes to the lower value.
        """
        codes = np.flatnonzero(emit)
        if codes.size == 0:
            raise ValueError(f"format {name!r} has no finite encodable value")
        vals = values[codes]
        negative_zero = codes[(vals == 0) & np.signbit(vals)]
        keep = ~((vals == 0) & np.signbit(vals))  # -0 merges into +0 for rounding
        codes, vals = codes[keep], vals[keep]
        order = np.argsort(vals, kind="stable")
        codes, vals = codes[order], vals[order]
        duplicates = np.flatnonzero(np.diff(vals) == 0)
        if duplicates.size:
            v = vals[duplicates[0]]
            raise ValueError(f"format {name!r}: value {v} appears at codes "
                             f"{codes[duplicates[0]]} and {codes[duplicates[0] + 1]}; mark one unused")
        if negative_zero.size and not (vals == 0).any():
            raise ValueError(f"format {name!r} has a -0 code but no +0 code")
        midpoints = (vals[:-1] + vals[1:]) / 2
        if not np.isfinite(midpoints).all() or np.any(np.diff(midpoints) <= 0):
            raise ValueError(f"format {name!r}: the midpoints between neighbouring values are not finite and "
                             "strictly increasing (values too large or too close for float64)")
        if rounding == "nearest_down":
            tie_up = np.zeros(midpoints.size, dtype=bool)
        else:
            lo_even, hi_even = codes[:-1] % 2 == 0, codes[1:] % 2 == 0
            tie_up = np.where(lo_even == hi_even, vals[1:] > 0, hi_even)
        table = cls(vals, codes.astype(np.uint8), midpoints, tie_up,
                    int(negative_zero[0]) if negative_zero.size else -1)
        for a in (table.sorted_values, table.sorted_codes, table.midpoints, table.tie_up):
            a.setflags(write=False)
        return table

    @functools.cached_property
    def bucket_starts(self) -> np.ndarray:
        """int32 ``[2**BUCKET_BITS]``: midpoints strictly below the least float64 of each bucket."""
        return bucket_starts(self.midpoints)

    def encode(self, x: np.ndarray, *, what: str = "input to encode") -> np.ndarray:
        """Codes (``uint8``, shaped like ``x``) of float32 or float64 ``x``; NaN raises ``ValueError``."""
        x = np.asarray(x)
        if jit.USE_NUMBA and x.dtype in (np.float32, np.float64):
            flat = np.ascontiguousarray(x).ravel()
            out = np.empty(flat.shape, dtype=np.uint8)
            nans = _encode_kernel(flat, self.midpoints, self.tie_up, self.sorted_codes, self.sorted_values,
                                  self.bucket_starts, self.negative_zero_code, out)
            if nans:
                raise_on_nan(x, what=what)
            return out.reshape(x.shape)
        x = x.astype(np.float64)
        raise_on_nan(x, what=what)
        return self.encode_reference(x)

    def encode_reference(self, x: np.ndarray) -> np.ndarray:
        """Numpy definition of :meth:`encode` for float64 ``x`` without NaN."""
        idx = np.searchsorted(self.midpoints, x, side="left")
        at = np.minimum(idx, self.midpoints.size - 1)
        tie = (idx < self.midpoints.size) & (x == self.midpoints[at]) & self.tie_up[at]
        codes = self.sorted_codes[idx + tie]
        if self.negative_zero_code >= 0:
            codes = np.where((self.sorted_values[idx + tie] == 0) & np.signbit(x),
                             np.uint8(self.negative_zero_code), codes)
        return codes


def raise_on_nan(x: np.ndarray, *, what: str) -> None:
    """``ValueError`` naming the first NaN of ``x``, if it has one."""
    bad = np.isnan(x)
    if bad.any():
        raise ValueError(f"{what} contains NaN at index {np.argwhere(bad)[0].tolist()}; "
                         "NaN has no code (expected finite values)")


def bucket_starts(midpoints: np.ndarray) -> np.ndarray:
    """For every bucket of :func:`~hwlab.formats.jit.bucket_of`, the number of midpoints strictly
    below the least float64 in it (buckets of NaN bit patterns: below or above everything)."""
    half = 1 << (BUCKET_BITS - 1)
    keys = (np.arange(1 << BUCKET_BITS, dtype=np.int64) - half) << (64 - BUCKET_BITS)
    bits = np.where(keys >= 0, keys, (-keys - 1) | np.int64(-2**63))
    low = bits.view(np.float64)
    low = np.where(np.isnan(low), np.where(keys >= 0, np.inf, -np.inf), low)
    return np.searchsorted(midpoints, low, side="left").astype(np.int32)


@njit(parallel=True, nogil=True)
def _encode_kernel(x, midpoints, tie_up, sorted_codes, sorted_values, starts, negative_zero,
                   out):  # pragma: no cover - compiled by numba
    """Codes of 1-D ``x`` into ``out``; returns the number of NaN inputs (their codes are 0)."""
    nans = 0
    for i in prange(x.shape[0]):
        xi = np.float64(x[i])
        if xi != xi:
            nans += 1
            out[i] = 0
            continue
        idx = round_index(xi, midpoints, tie_up, 1.0, starts[bucket_of(xi)])
        code = sorted_codes[idx]
        if negative_zero >= 0 and sorted_values[idx] == 0 and np.float64(xi).view(np.int64) < 0:
            code = negative_zero
        out[i] = code
    return nans
