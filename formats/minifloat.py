"""Minifloats: sign, E exponent bits, M mantissa bits and an exponent bias.

Code layout (sign-magnitude, as IEEE 754 and OCP): ``code = sign << (E + M) | exponent << M |
mantissa``. Exponent field 0 is subnormal: ``(-1)**s * 2**(1 - bias) * mantissa / 2**M``;
otherwise ``(-1)**s * 2**(exponent - bias) * (1 + mantissa / 2**M)``. The default bias is the
standard ``2**(E-1) - 1``; LLM-FP4 searches it, so any integer is accepted.

Semantics of the top exponent field (source: OCP 8-bit Floating Point Specification (OFP8)
rev. 1.0, 2023, and OCP Microscaling Formats (MX) v1.0, 2023, section 5.3):

``"finite"``  every code is a number (OCP FP6 E2M3/E3M2 and FP4 E2M1; also used for the
              non-OCP splits E1M1, E2M0, E1M2, E3M0, E2M2, E3M1).
``"fn"``      finite plus NaN at S.1111.111 only (OCP E4M3, ml_dtypes ``float8_e4m3fn``).
``"ieee"``    top exponent is inf (mantissa 0) or NaN (OCP E5M2, ml_dtypes ``float8_e5m2``).

Rounding is round-to-nearest-even on the mantissa, saturating for the quantizer.
"""
from __future__ import annotations

import numpy as np

from .element import ElementFormat
from .scaled import check_choice

SEMANTICS = ("finite", "fn", "ieee")


def minifloat_values(exp_bits: int, man_bits: int, bias: int | None = None,
                     semantics: str = "finite") -> np.ndarray:
    """Decoded float64 value of every code of a minifloat (index = code)."""
    if exp_bits < 1 or man_bits < 0 or 1 + exp_bits + man_bits > 8:
        raise ValueError("a minifloat needs exp_bits >= 1, man_bits >= 0 and "
                         f"1 + exp_bits + man_bits <= 8 bits, got E{exp_bits}M{man_bits}")
    check_choice("semantics", semantics, SEMANTICS)
    if semantics != "finite" and (exp_bits < 2 or (semantics == "fn" and man_bits < 1)):
        raise ValueError(f"semantics {semantics!r} needs at least 2 exponent bits"
                         f"{' and 1 mantissa bit' if semantics == 'fn' else ''}, got E{exp_bits}M{man_bits}")
    bias = 2 ** (exp_bits - 1) - 1 if bias is None else int(bias)
    codes = np.arange(2 ** (1 + exp_bits + man_bits))
    sign = np.where(codes >> (exp_bits + man_bits), -1.0, 1.0)
    exponent = (codes >> man_bits) & (2**exp_bits - 1)
    mantissa = (codes & (2**man_bits - 1)).astype(np.float64)
    subnormal = exponent == 0
    magnitude = np.where(
        subnormal,
        np.ldexp(mantissa / 2**man_bits, 1 - bias),
        np.ldexp(1 + mantissa / 2**man_bits, exponent - bias),
    )
    values = sign * magnitude
    top = exponent == 2**exp_bits - 1
    if semantics == "fn":
        values[top & (mantissa == 2**man_bits - 1)] = np.nan
    elif semantics == "ieee":
        values[top] = np.where(mantissa[top] == 0, sign[top] * np.inf, np.nan)
    return values


def minifloat_format(name: str, exp_bits: int, man_bits: int, *, bias: int | None = None,
                     semantics: str = "finite", description: str | None = None) -> ElementFormat:
    """An :class:`ElementFormat` for sign + ``exp_bits`` + ``man_bits`` (see module docstring)."""
    values = minifloat_values(exp_bits, man_bits, bias, semantics)
    bias = 2 ** (exp_bits - 1) - 1 if bias is None else int(bias)
    return ElementFormat(
        name, 1 + exp_bits + man_bits, values, family="minifloat",
        description=description or f"minifloat E{exp_bits}M{man_bits}, bias {bias}, {semantics}",
        info_overrides=dict(
            smallest_normal=2.0 ** (1 - bias),
            smallest_subnormal=2.0 ** (1 - bias - man_bits) if man_bits else None,
        ),
    )
