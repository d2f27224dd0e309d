"""Bit-level encodings shared by several families: minifloat fields and sign-magnitude tables.

Pure numpy (it imports only :mod:`~hwlab.formats.base`), so the scale types and the element
constructors build from the same definitions without an import cycle: the E4M3 block scale of
NVFP4 and the ``fp8_e4m3`` element format are both :func:`minifloat_values` ``(4, 3, "fn")``.

Minifloats: sign, E exponent bits, M mantissa bits and an exponent bias.
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
"""
from __future__ import annotations

import numpy as np

from .base import check_choice

SEMANTICS = ("finite", "fn", "ieee")
MAX_BIAS = 4096  # float64 exponents span -1074..1023: any bias beyond this leaves the float64 range
# Keys of each kind of code layout (ElementFormat ``fields``); BitMoD's minifloats add the code and
# value of their repurposed -0 (``special_code``, ``special_value``).
FIELD_KEYS = {"table": {"kind"}, "minifloat": {"kind", "exp_bits", "man_bits", "bias", "semantics"},
              "integer": {"kind", "bits", "signed"}, "shift": {"kind", "sign_bit", "exponent_bits"}}
SPECIAL_KEYS = {"special_code", "special_value"}


def standard_bias(exp_bits: int) -> int:
    """The IEEE exponent bias ``2**(E-1) - 1``."""
    return 2 ** (exp_bits - 1) - 1


def minifloat_values(exp_bits: int, man_bits: int, bias: int | None = None,
                     semantics: str = "finite") -> np.ndarray:
    """Decoded float64 value of every code of a minifloat (index = code).

    ``exp_bits``, ``man_bits`` and ``bias`` are integers; a bias so large or small that values
    overflow float64, or underflow into one another, is refused.
    """
    for label, v in (("exp_bits", exp_bits), ("man_bits", man_bits), ("bias", bias)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise TypeError(f"{label} must be an integer, got {v!r}")
    if exp_bits < 1 or man_bits < 0 or 1 + exp_bits + man_bits > 8:
        raise ValueError("a minifloat needs exp_bits >= 1, man_bits >= 0 and "
                         f"1 + exp_bits + man_bits <= 8 bits, got E{exp_bits}M{man_bits}")
    check_choice("semantics", semantics, SEMANTICS)
    if semantics != "finite" and (exp_bits < 2 or (semantics == "fn" and man_bits < 1)):
        raise ValueError(f"semantics {semantics!r} needs at least 2 exponent bits"
                         f"{' and 1 mantissa bit' if semantics == 'fn' else ''}, got E{exp_bits}M{man_bits}")
    bias = standard_bias(exp_bits) if bias is None else int(bias)
    if abs(bias) > MAX_BIAS:  # far outside float64 (and too large for ldexp's C long)
        raise ValueError(f"bias {bias:.6g} puts the values of E{exp_bits}M{man_bits} outside float64 (they overflow, "
                         "or underflow into one another); choose a bias of smaller magnitude")
    codes = np.arange(2 ** (1 + exp_bits + man_bits))
    sign = np.where(codes >> (exp_bits + man_bits), -1.0, 1.0)
    exponent = (codes >> man_bits) & (2**exp_bits - 1)
    mantissa = (codes & (2**man_bits - 1)).astype(np.float64)
    subnormal = exponent == 0
    with np.errstate(over="ignore", under="ignore"):  # a bias that overflows or underflows is refused below
        magnitude = np.where(
            subnormal,
            np.ldexp(mantissa / 2**man_bits, 1 - bias),
            np.ldexp(1 + mantissa / 2**man_bits, exponent - bias),
        )
    positive = magnitude[:2 ** (exp_bits + man_bits)]
    if not (np.isfinite(positive).all() and (np.diff(positive) > 0).all()):
        raise ValueError(f"bias {bias} puts the values of E{exp_bits}M{man_bits} outside float64 (they overflow, "
                         "or underflow into one another); choose a bias of smaller magnitude")
    values = sign * magnitude
    top = exponent == 2**exp_bits - 1
    if semantics == "fn":
        values[top & (mantissa == 2**man_bits - 1)] = np.nan
    elif semantics == "ieee":
        values[top] = np.where(mantissa[top] == 0, sign[top] * np.inf, np.nan)
    return values


def twos_complement_values(bits: int) -> np.ndarray:
    """Value of every code of a ``bits``-bit two's-complement integer (index = code), float64."""
    codes = np.arange(2**bits)
    return np.where(codes >= 2 ** (bits - 1), codes - 2**bits, codes).astype(np.float64)


def shift_values(bits: int) -> np.ndarray:
    """DenseShift ``+-2**-p``: sign in the top bit, ``p`` in the ``bits - 1`` below (index = code)."""
    codes = np.arange(2**bits)
    p = codes & (2 ** (bits - 1) - 1)
    return np.where(codes >> (bits - 1), -1.0, 1.0) * np.ldexp(1.0, -p)


def check_fields(fields, bits: int, values: np.ndarray) -> None:
    """``ValueError``/``TypeError`` unless ``fields`` is a code layout (:data:`FIELD_KEYS`) whose values
    are ``values`` (the table of a ``bits``-bit format): a minifloat's exponent, mantissa, bias and
    semantics give exactly its values (BitMoD's ``special_code`` decodes to ``special_value``), an
    integer's codes decode to their integer (or to NaN: a code with no value), a shift format's to
    ``+-2**-p``; ``{"kind": "table"}`` asks nothing."""
    kind = fields.get("kind") if isinstance(fields, dict) else None
    if kind not in FIELD_KEYS:
        raise ValueError(f"fields must be a code layout of kind {sorted(FIELD_KEYS)}, got {fields!r:.200}")
    allowed = FIELD_KEYS[kind] | (SPECIAL_KEYS if kind == "minifloat" and "special_code" in fields else set())
    if set(fields) != allowed:
        raise ValueError(f"fields of kind {kind!r} are {sorted(allowed)}, got {sorted(fields)}")
    for key in allowed - {"kind", "semantics", "signed", "special_value"}:
        if isinstance(fields[key], bool) or not isinstance(fields[key], int):
            raise TypeError(f"field {key!r} must be an integer, got {fields[key]!r:.50}")
    if kind == "table":
        return
    if kind == "minifloat":
        want = minifloat_values(fields["exp_bits"], fields["man_bits"], fields["bias"], fields["semantics"])
        if "special_code" in fields:
            code, value = fields["special_code"], fields["special_value"]
            if not (0 <= code < want.size and want[code] == 0 and np.signbit(want[code])):
                raise ValueError(f"field 'special_code' must be the -0 code of the minifloat, got {code}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise TypeError(f"field 'special_value' must be a finite number, got {value!r:.50}")
            want[code] = value
    elif kind == "integer":
        if not isinstance(fields["signed"], bool) or fields["bits"] != bits:
            raise ValueError(f"integer fields need 'bits' = {bits} and 'signed' True or False, got {fields}")
        want = twos_complement_values(bits) if fields["signed"] else np.arange(2.0**bits)
        want = np.where(np.isnan(values), np.nan, want)  # a code with no value
    else:
        if fields["sign_bit"] != bits - 1 or fields["exponent_bits"] != bits - 1:
            raise ValueError(f"shift fields need 'sign_bit' and 'exponent_bits' = {bits - 1}, got {fields}")
        want = shift_values(bits)
    if want.shape != values.shape or not np.array_equal(want, values, equal_nan=True):
        code = int(np.flatnonzero(~((want == values) | (np.isnan(want) & np.isnan(values))))[0]) \
            if want.shape == values.shape else None
        raise ValueError(f"the values do not follow fields {fields}: " + (
            f"code {code} decodes to {float(values[code])!r}, the fields give {float(want[code])!r}" if code is not None else
            f"the fields describe {want.size} codes, the table has {values.size}"))


def sign_magnitude_table(magnitudes, negative_zero=-0.0) -> np.ndarray:
    """Values of a sign-magnitude code: ``magnitudes`` for sign 0, their negatives for sign 1.

    The code of ``-0`` (sign 1, magnitude 0) decodes to ``negative_zero``: -0 by default, or a
    repurposed special value (BitMoD).
    """
    mags = np.asarray(magnitudes, dtype=np.float64)
    values = np.concatenate([mags, -mags])
    values[mags.size] = negative_zero
    return values
