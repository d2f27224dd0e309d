"""Minifloat element formats: sign, E exponent bits, M mantissa bits and an exponent bias.

The bit-level definition (code layout, subnormals, the ``finite``/``fn``/``ieee`` semantics of
the top exponent, with the OCP sources) is :func:`~hwlab.formats.encodings.minifloat_values`.
Rounding is round-to-nearest-even on the mantissa, saturating for the quantizer.
"""
from __future__ import annotations

from .element import ElementFormat
from .encodings import minifloat_values, standard_bias


def minifloat_format(name: str, exp_bits: int, man_bits: int, *, bias: int | None = None,
                     semantics: str = "finite", description: str | None = None) -> ElementFormat:
    """An :class:`ElementFormat` for sign + ``exp_bits`` + ``man_bits`` (see the module docstring)."""
    values = minifloat_values(exp_bits, man_bits, bias, semantics)
    bias = standard_bias(exp_bits) if bias is None else int(bias)
    return ElementFormat(
        name, 1 + exp_bits + man_bits, values, family="minifloat",
        description=description or f"minifloat E{exp_bits}M{man_bits}, bias {bias}, {semantics}",
        fields={"kind": "minifloat", "exp_bits": exp_bits, "man_bits": man_bits, "bias": bias,
                "semantics": semantics},
    )
