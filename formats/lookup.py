"""Lookup-table element formats: any list of up to 256 values, plus NF4 and FLINT4.

A table of ``n`` values takes ``ceil(log2 n)`` bits; codes past ``n`` decode to NaN and are
never emitted. Values keep their order as codes (code ``i`` decodes to ``values[i]``).
"""
from __future__ import annotations

import math

import numpy as np

from .double_quant import DoubleQuantFormat
from .arrays import exact_float64, refuse_masked
from .element import MAX_TABLE_CODES, ElementFormat, check_element_bits
from .encodings import sign_magnitude_table

# bitsandbytes `get_4bit_type("nf4")` (bitsandbytes/functional.py), float32 constants in code
# order; QLoRA (Dettmers et al., 2023), appendix E.
NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)

# ANT (Guo et al., MICRO 2022), signed 4-bit flint: {0, +-1/4, +-1/2, +-3/4, +-1, +-3/2, +-2, +-4}
# (clevercool/ANT-Quantization). Layout here: sign-magnitude, magnitude codes ascending; the -0
# code (0b1000) decodes to -0 and is never emitted.
FLINT4_MAGNITUDES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)


def lut_format(name: str, values, *, bits: int | None = None, rounding: str = "nearest_even",
               unused_codes=(), family: str = "lookup", description: str | None = None,
               defaults: dict | None = None, fields: dict | None = None) -> ElementFormat:
    """An :class:`ElementFormat` from a list of values (code ``i`` decodes to ``values[i]``).

    ``values``: a 1-D sequence of 2..256 distinct finite numbers, at least one of them nonzero (a
    ``-0`` beside ``+0`` is the code negative inputs that round to zero get, as in a minifloat).
    ``bits`` defaults to the fewest that hold the table; spare codes past it decode to NaN and
    are never emitted, and ``unused_codes`` keeps codes of the table from being emitted too.
    ``fields``: see :class:`ElementFormat`.
    """
    refuse_masked(values, f"lookup table {name!r}")
    table = np.asarray(values)
    if table.ndim != 1:
        raise ValueError(f"lookup table {name!r} must be a 1-D sequence of values, got shape {table.shape}")
    if table.dtype.kind not in "fiu":
        raise TypeError(f"lookup table {name!r} must hold real numbers, got dtype {table.dtype}")
    table = exact_float64(table, f"lookup table {name!r}")
    if not 2 <= table.size <= MAX_TABLE_CODES:
        raise ValueError(f"a lookup table needs 2..{MAX_TABLE_CODES} values, got {table.size}")
    if not np.isfinite(table).all():
        bad = table[~np.isfinite(table)][0]
        raise ValueError(f"lookup table {name!r} contains {bad}; expected finite values (to leave a code unused, "
                         "pass unused_codes=...)")
    if not (table != 0).any():
        raise ValueError(f"lookup table {name!r} has no nonzero value; a scale cannot map weights onto it")
    need = max(1, math.ceil(math.log2(table.size)))
    bits = need if bits is None else bits
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an integer, got {bits!r}")
    if bits < need:
        raise ValueError(f"lookup table {name!r} has {table.size} values, which need {need} bits, got bits={bits}")
    bits = check_element_bits(bits)  # before a table of 2**bits codes is made
    padded = np.full(2**bits, np.nan)
    padded[:table.size] = table
    negative_zero = (table == 0) & np.signbit(table)  # one -0 code may sit beside +0, as in a minifloat
    finite = np.sort(table[~negative_zero])
    repeated = finite[1:][np.diff(finite) == 0]
    if repeated.size or negative_zero.sum() > 1:
        raise ValueError(f"lookup table {name!r} repeats the value {repeated[0] if repeated.size else -0.0}; "
                         "values must be distinct (one -0 beside +0 is allowed)")
    return ElementFormat(name, bits, padded, family=family, rounding=rounding, unused_codes=unused_codes,
                         defaults=defaults, fields=fields, description=description or f"lookup table of {table.size} values")


def nf4_format() -> ElementFormat:
    """NF4 exactly as bitsandbytes; ties go to the lower value like its ``x > midpoint`` tree.

    Block (group) size 64 by default and option ``double_quant`` (QLoRA double quantization of
    the block absmax), as bitsandbytes ``quantize_4bit``; see :mod:`hwlab.formats.double_quant`.
    """
    fmt = DoubleQuantFormat("nf4", 4, NF4_VALUES, family="lookup", rounding="nearest_down",
                            description="NormalFloat4 (QLoRA), table of bitsandbytes get_4bit_type('nf4')")
    fmt.default_group_size = 64  # bitsandbytes quantize_4bit(blocksize=64)
    return fmt


def flint4_format() -> ElementFormat:
    """ANT's signed 4-bit flint."""
    return lut_format("flint4", sign_magnitude_table(FLINT4_MAGNITUDES), unused_codes=(8,),
                      description="ANT flint4: {0, +-1/4, +-1/2, +-3/4, +-1, +-3/2, +-2, +-4}")
