"""The one rounding engine: sorted values, the midpoints between them, and which way ties go.

Every element format rounds through a :class:`RoundingTable`: an input ``x`` gets the sorted
value whose index is the number of midpoints lying below ``x`` (a midpoint equal to ``x`` counts
when its tie goes up). The midpoints are exactly the comparator thresholds a hardware encoder
needs, and the group quantizer uses the same table scaled by each group's stored scale.

:meth:`RoundingTable.encode` is compiled (numba) where numba is present: each input is placed in
one of up to ``2**17`` buckets of the float64 order (sign, exponent and the top fraction bits;
the fewest bits that leave one midpoint per bucket), whose first midpoint index is precomputed,
and only the midpoints inside its bucket are compared, exactly, in float64. The numpy path (``searchsorted``) gives the same codes.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from . import jit
from .jit import MAX_BUCKET_BITS, bucket_of, bucket_of32, njit, prange, round_index


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
    def bucket_bits(self) -> int:
        """The fewest bucket bits (12..17) that leave at most one midpoint in any bucket, else 17."""
        for bits in range(MIN_BUCKET_BITS, MAX_BUCKET_BITS):
            if bucket_width(bucket_starts(self.midpoints, bits), self.midpoints.size) <= 1:
                return bits
        return MAX_BUCKET_BITS

    @functools.cached_property
    def bucket_starts(self) -> np.ndarray:
        """``[2**bucket_bits]``: midpoints strictly below the least float64 of each bucket."""
        return bucket_starts(self.midpoints, self.bucket_bits)

    @functools.cached_property
    def float32_buckets(self) -> tuple[int, np.ndarray] | None:
        """Bucket bits and starts over float32 keys with one midpoint per bucket at most, for float32
        inputs; ``None`` where a midpoint is not a float32 (compares would round) or no width fits."""
        if not np.array_equal(self.midpoints.astype(np.float32).astype(np.float64), self.midpoints):
            return None
        for bits in range(MIN_BUCKET_BITS32, MAX_BUCKET_BITS + 1):
            starts = bucket_starts(self.midpoints, bits, word_bits=32)
            if bucket_width(starts, self.midpoints.size) <= 1:
                return bits, starts
        return None

    @functools.cached_property
    def signed_codes(self) -> np.ndarray:
        """uint8 ``[2, n]``: the code of each sorted value for a non-negative input (row 0) and for
        a negative one (row 1: the ``-0`` code in place of zero's, where the format has one)."""
        negative = self.sorted_codes.copy()
        if self.negative_zero_code >= 0:
            negative[self.sorted_values == 0] = self.negative_zero_code
        return np.stack([self.sorted_codes, negative])

    @property
    def bucket_width(self) -> int:
        """The most midpoints any bucket holds."""
        return bucket_width(self.bucket_starts, self.midpoints.size)

    def encode(self, x: np.ndarray, *, what: str = "input to encode") -> np.ndarray:
        """Codes (``uint8``, shaped like ``x``) of float32 or float64 ``x``; NaN raises ``ValueError``."""
        x = np.asarray(x)
        if jit.USE_NUMBA and x.dtype in (np.float32, np.float64):
            flat = np.ascontiguousarray(x).ravel()
            out = np.empty(flat.shape, dtype=np.uint8)
            starts = self.bucket_starts
            if x.dtype == np.float32 and self.float32_buckets is not None:  # float32 keys and compares, exact
                bits, starts32 = self.float32_buckets
                nans = _encode_one_kernel32(flat, flat.view(np.int32), np.append(self.midpoints, np.inf).astype(np.float32),
                                            np.append(self.tie_up, False), self.signed_codes, starts32, bits, out)
            elif self.bucket_width <= 1:  # at most one midpoint per bucket: one compare, no loop
                nans = _encode_one_kernel(flat, np.append(self.midpoints, np.inf), np.append(self.tie_up, False),
                                          self.signed_codes, starts, self.bucket_bits, out)
            else:
                nans = _encode_kernel(flat, self.midpoints, self.tie_up, self.sorted_codes, self.sorted_values,
                                      starts, self.bucket_bits, self.negative_zero_code, out)
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


MIN_BUCKET_BITS = 12  # sign, 11 exponent bits: one binade per bucket
MIN_BUCKET_BITS32 = 9  # sign, 8 exponent bits of a float32


def bucket_starts(midpoints: np.ndarray, bucket_bits: int = MAX_BUCKET_BITS, word_bits: int = 64) -> np.ndarray:
    """For every bucket of :func:`~hwlab.formats.jit.bucket_of` (``word_bits=64``, float64 keys) or
    :func:`~hwlab.formats.jit.bucket_of32` (32, float32 keys), the number of midpoints strictly
    below the least float in it (buckets of NaN bit patterns: below or above everything).

    ``uint8`` where that fits (every table of at most 256 values; the table stays in L1), else int32.
    """
    half = 1 << (bucket_bits - 1)
    keys = (np.arange(1 << bucket_bits, dtype=np.int64) - half) << (word_bits - bucket_bits)
    bits = np.where(keys >= 0, keys, (-keys - 1) | np.int64(-2 ** (word_bits - 1)))
    if word_bits == 32:
        with np.errstate(invalid="ignore"):  # NaN bit patterns among the keys: replaced below
            low = (bits & 0xFFFFFFFF).astype(np.uint32).view(np.float32).astype(np.float64)
    else:
        low = bits.view(np.float64)
    low = np.where(np.isnan(low), np.where(keys >= 0, np.inf, -np.inf), low)
    starts = np.searchsorted(midpoints, low, side="left")
    return starts.astype(np.uint8 if midpoints.size < 256 else np.int32)


def bucket_width(starts: np.ndarray, n_midpoints: int) -> int:
    """The most midpoints in any one bucket of ``starts``."""
    return int(np.diff(np.append(starts.astype(np.int64), n_midpoints)).max())


ENCODE_CHUNK = 1 << 16  # elements one thread encodes at a time


@njit(parallel=True, nogil=True)
def _encode_kernel(x, midpoints, tie_up, sorted_codes, sorted_values, starts, bucket_bits, negative_zero,
                   out):  # pragma: no cover - compiled by numba
    """Codes of 1-D ``x`` into ``out``; returns the number of NaN inputs (their codes are 0)."""
    chunks = (x.shape[0] + ENCODE_CHUNK - 1) // ENCODE_CHUNK
    nans = np.zeros(chunks, dtype=np.int64)
    for c in prange(chunks):
        for i in range(c * ENCODE_CHUNK, min(x.shape[0], (c + 1) * ENCODE_CHUNK)):
            xi = np.float64(x[i])
            if xi != xi:
                nans[c] += 1
                out[i] = 0
                continue
            idx = round_index(xi, midpoints, tie_up, 1.0, np.int64(starts[bucket_of(xi, bucket_bits)]))
            code = sorted_codes[idx]
            if negative_zero >= 0 and sorted_values[idx] == 0 and np.float64(xi).view(np.int64) < 0:
                code = negative_zero
            out[i] = code
    return nans.sum()


@njit(parallel=True, nogil=True)
def _encode_one_kernel(x, midpoints, tie_up, signed_codes, starts, bucket_bits, out):  # pragma: no cover
    """:func:`_encode_kernel` for tables with at most one midpoint per bucket (``midpoints`` padded
    with ``+inf``): the midpoint at the bucket start decides. ``signed_codes [2, n]``: the code of
    each sorted value for a non-negative input (row 0) and a negative one (row 1: ``-0`` for zero)."""
    chunks = (x.shape[0] + ENCODE_CHUNK - 1) // ENCODE_CHUNK
    nans = np.zeros(chunks, dtype=np.int64)
    for c in prange(chunks):
        found = 0
        for i in range(c * ENCODE_CHUNK, min(x.shape[0], (c + 1) * ENCODE_CHUNK)):
            xi = np.float64(x[i])
            found += xi != xi
            idx = np.int64(starts[bucket_of(xi, bucket_bits)])
            m = midpoints[idx]
            if m == xi:
                idx += tie_up[idx]
            else:
                idx += m < xi
            out[i] = signed_codes[np.int64(np.float64(xi).view(np.int64) < 0), idx]
        nans[c] = found
    return nans.sum()


@njit(parallel=True, nogil=True)
def _encode_one_kernel32(x, bits, midpoints, tie_up, signed_codes, starts, bucket_bits, out):  # pragma: no cover
    """:func:`_encode_one_kernel` for float32 ``x`` (``bits``: its int32 view) against float32 midpoints
    (each exactly a float32, padded with ``+inf``): no float64 conversion, keys from the float32 bits."""
    chunks = (x.shape[0] + ENCODE_CHUNK - 1) // ENCODE_CHUNK
    nans = np.zeros(chunks, dtype=np.int64)
    for c in prange(chunks):
        found = 0
        for i in range(c * ENCODE_CHUNK, min(x.shape[0], (c + 1) * ENCODE_CHUNK)):
            xi = x[i]
            found += xi != xi
            idx = np.int64(starts[bucket_of32(bits[i], bucket_bits)])
            m = midpoints[idx]
            if m == xi:
                idx += tie_up[idx]
            else:
                idx += m < xi
            out[i] = signed_codes[np.int64(bits[i] < 0), idx]
        nans[c] = found
    return nans.sum()
