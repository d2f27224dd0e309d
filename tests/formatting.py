"""Test helpers: code formatting for mismatch messages and an exact float64 nearest-value reference.

Nothing here calls hwlab's rounding engine; the reference below is written from the definition
("the nearest value, ties by the format's rule") so tests can check the library against it.

Code formatting follows microxcaling's mismatch messages: a minifloat code prints as its sign,
exponent and mantissa fields, ``0b1|0110|101``; a sign-magnitude code as ``0b1|011``; other
codes as plain binary of the format's width.
"""
from __future__ import annotations

import math

import numpy as np

SIGN_MAGNITUDE_FAMILIES = ("bitmod", "shift")  # codes are sign bit | magnitude index


def code_fields(fmt) -> tuple[int, ...]:
    """Widths of the bit fields of ``fmt``'s codes, most significant first."""
    if fmt.family == "minifloat":
        info = fmt.info  # man_bits from the ratio of smallest normal to smallest subnormal
        man = 0 if info.smallest_subnormal is None else round(math.log2(info.smallest_normal / info.smallest_subnormal))
        return (1, fmt.bits - 1 - man, man) if man else (1, fmt.bits - 1)
    if fmt.family in SIGN_MAGNITUDE_FAMILIES:
        return (1, fmt.bits - 1)
    return (fmt.bits,)


def format_code(code: int, fields: tuple[int, ...]) -> str:
    """``code`` split into ``fields`` bit groups, e.g. ``format_code(0xB5, (1, 4, 3)) == '0b1|0110|101'``."""
    text = format(int(code), f"0{sum(fields)}b")
    parts, start = [], 0
    for width in fields:
        parts.append(text[start:start + width])
        start += width
    return "0b" + "|".join(parts)


def describe_code(fmt, code: int) -> str:
    """``'0b1|0110|101 (0xb5 = -0.40625)'``: fields, hex and decoded value of one code."""
    return f"{format_code(code, code_fields(fmt))} (0x{int(code):02x} = {float(fmt.values[int(code)])!r})"


def mismatch_report(fmt, inputs, got, want, *, limit: int = 8) -> str:
    """One line per differing code (at most ``limit``), for an ``assert`` message."""
    inputs, got, want = (np.asarray(a).ravel() for a in (inputs, got, want))
    bad = np.flatnonzero(got != want)
    lines = [f"{fmt.name}: {bad.size} of {got.size} codes differ"]
    for i in bad[:limit]:
        lines.append(f"  x={float(inputs[i])!r}: got {describe_code(fmt, got[i])}, "
                     f"expected {describe_code(fmt, want[i])}")
    return "\n".join(lines)


def exact_distance(x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``|x - v|`` exactly, as an unevaluated float64 sum ``hi + lo`` (Knuth's TwoSum).

    ``hi`` is ``x - v`` rounded and ``lo`` the exact rounding error, so comparing ``(hi, lo)``
    lexicographically compares the true distances, even for a neighbour of a midpoint.
    """
    hi = x - v
    virtual = hi - x
    lo = (x - (hi - virtual)) + (-v - virtual)
    sign = np.where(hi < 0, -1.0, 1.0)
    return hi * sign, lo * sign


def reference_nearest(x, values, codes, rounding: str) -> np.ndarray:
    """Index into ``values`` of the nearest value to each ``x`` (float64), ties by ``rounding``.

    ``values`` are distinct finite float64 (any order), ``codes`` their codes. Ties:
    ``"nearest_down"`` takes the lower value; ``"nearest_even"`` the even code, and of two
    codes of equal parity the positive value. Brute force over all values: ``[n, len(values)]``.
    """
    x = np.asarray(x, dtype=np.float64).ravel()[:, None]
    values = np.asarray(values, dtype=np.float64)[None, :]
    codes = np.asarray(codes)[None, :]
    hi, lo = exact_distance(x, values)
    nearest = hi == hi.min(axis=1, keepdims=True)
    lo = np.where(nearest, lo, np.inf)
    nearest &= lo == lo.min(axis=1, keepdims=True)
    if rounding == "nearest_down":
        key = np.where(nearest, values, np.inf)  # least value among the tied
    elif rounding == "nearest_even":
        # prefer even codes, then positive values; at most two values tie
        key = np.where(nearest, (codes % 2) * 2.0 + (values < 0), np.inf)
    else:
        raise ValueError(f"unknown rounding rule {rounding!r}")
    assert (np.sum(nearest, axis=1) <= 2).all(), "more than two values at the least distance"
    return np.argmin(key, axis=1)


def element_reference_codes(fmt, x, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """The code ``fmt`` must give each ``x`` under one ``scale`` (and zero point ``offset``).

    The grid is ``(value - offset) * scale`` over the encodable codes (``fmt.encodable``: finite
    and not unused), exact in float64 for the scales used in the tests. A ``-0`` code is given
    only to inputs with the sign bit set that round to zero; out-of-range inputs (and +-inf)
    saturate to the end of the grid.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    codes = np.flatnonzero(fmt.encodable)
    values = fmt.values[codes]
    negative_zero = codes[(values == 0) & np.signbit(values)]
    keep = ~((values == 0) & np.signbit(values))
    codes, values = codes[keep], values[keep]
    grid = (values - offset) * scale
    assert np.array_equal(grid / scale + offset, values), "scaled grid is not exact in float64"
    clipped = np.clip(x, grid.min(), grid.max())  # +-inf saturate like any out-of-range input
    out = codes[reference_nearest(clipped, grid, codes, fmt.rounding)]
    if negative_zero.size:
        out = np.where((fmt.values[out] == 0) & np.signbit(x), negative_zero[0], out)
    return out.astype(np.uint8)
