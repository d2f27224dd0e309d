"""Exact decomposition of code values into the fields a bit-serial PE or a SIMD lane works with.

Every finite value of a value table is written ``v = (-1)**sign * magnitude * 2**exponent`` with
an integer ``magnitude`` that is odd (or 0, with exponent 0). This is exact for any float64, so
the rule that decides whether a format *has* a hardware decomposition is about width: every
magnitude must fit in the code width, ``magnitude < 2**bits``. Integers (``|v| <= 2**(b-1)``),
minifloats (``1.m`` has ``man_bits + 1 <= b`` bits), BitMoD's special values (5 = 0b101 in a
4-bit code), shift (magnitude 1) and ternary pass; NF4's float32 constants need 24-bit
magnitudes and do not, so :func:`decompose` returns ``None`` for them: such a format needs a
lookup-table datapath, not shifts and adds.

Codes that decode to NaN or inf (unused codes, the IEEE specials of ``fp8_e5m2``) are marked
``defined = False`` with magnitude and exponent 0 (and the sign of an infinity); no quantizer
emits them, and :meth:`Decomposition.values` gives back their NaN or inf.
"""
from __future__ import annotations

import dataclasses

import numpy as np

FLOAT64_FRACTION_BITS = 53  # frexp's fraction in [0.5, 1) times 2**53 is an integer for any float64


@dataclasses.dataclass(frozen=True, eq=False)
class Decomposition:
    """Per-code ``sign`` (uint8, 1 = negative), odd ``magnitude`` and ``exponent`` (int64).

    Arrays are shaped like the value table they came from. ``fields`` names the code layout's
    family fields (``{"kind": "minifloat", "exp_bits": 2, "man_bits": 1, "bias": 1, ...}``,
    ``{"kind": "integer", "bits": 4, "signed": True}``, ``{"kind": "table"}``, ...).
    """

    sign: np.ndarray
    magnitude: np.ndarray
    exponent: np.ndarray
    defined: np.ndarray  # False where the code decodes to NaN or inf
    fields: dict
    special: np.ndarray  # the NaN or +-inf of each undefined code (0 where defined)

    @property
    def magnitude_bits(self) -> int:
        """Bits of the widest magnitude (what a multiplier of the magnitude must take)."""
        return int(self.magnitude.max()).bit_length()

    @property
    def exponent_range(self) -> tuple[int, int]:
        """Least and greatest exponent of a nonzero defined value (``(0, 0)`` when there is none)."""
        nonzero = self.defined & (self.magnitude > 0)
        if not nonzero.any():
            return 0, 0
        return int(self.exponent[nonzero].min()), int(self.exponent[nonzero].max())

    def values(self) -> np.ndarray:
        """The float64 values the fields encode (the NaN or inf where undefined): the source table."""
        v = np.ldexp(self.magnitude.astype(np.float64), self.exponent)
        v = np.where(self.sign == 1, -v, v)
        return np.where(self.defined, v, self.special)


def decompose(values, bits: int, fields: dict | None = None) -> Decomposition | None:
    """Decomposition of a value table (any shape), or ``None`` where a magnitude needs more than
    ``bits`` bits (see the module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    defined = np.isfinite(values)
    finite = np.where(defined, values, 0.0)
    fraction, exp2 = np.frexp(np.abs(finite))  # |v| = fraction * 2**exp2, fraction in [0.5, 1)
    mantissa = np.ldexp(fraction, FLOAT64_FRACTION_BITS).astype(np.int64)
    trailing = _trailing_zeros(mantissa)
    magnitude = mantissa >> trailing
    exponent = np.where(mantissa > 0, exp2 - FLOAT64_FRACTION_BITS + trailing, 0).astype(np.int64)
    if magnitude.max(initial=0) >= 2**bits:
        return None
    sign = (np.signbit(values) & ~np.isnan(values)).astype(np.uint8)
    special = np.where(defined, 0.0, values)
    for a in (sign, magnitude, exponent, defined, special):
        a.setflags(write=False)
    return Decomposition(sign, magnitude, exponent, defined, dict(fields or {"kind": "table"}), special)


def _trailing_zeros(m: np.ndarray) -> np.ndarray:
    """Trailing zero bits of each positive int64 (0 for 0)."""
    low = m & -m  # the lowest set bit
    return np.where(m > 0, np.log2(np.maximum(low, 1)).astype(np.int64), 0)
