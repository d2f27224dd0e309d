"""Integer element formats.

Symmetric ``intB``: two's complement codes, range +-(2**(B-1) - 1) so that zero is exact and the
grid is symmetric (the most negative code, -2**(B-1), decodes but is never emitted); absmax
scale. Affine ``intB_asym``: codes 0..2**B-1 are the values; the quantizer adds a per-group
scale and integer zero point. Both round half to even.
"""
from __future__ import annotations

import numpy as np

from .element import ElementFormat
from .encodings import twos_complement_values


def int_format(bits: int) -> ElementFormat:
    """Symmetric two's-complement integer of ``bits`` bits, range +-(2**(bits-1) - 1)."""
    return ElementFormat(f"int{bits}", bits, twos_complement_values(bits), family="integer",
                         description=f"symmetric INT{bits}, two's complement, range +-{2 ** (bits - 1) - 1}",
                         unused_codes=(2 ** (bits - 1),), fields={"kind": "integer", "bits": bits, "signed": True})


def int_asym_format(bits: int) -> ElementFormat:
    """Unsigned integer codes 0..2**bits-1 for affine (scale + zero point) quantization."""
    return ElementFormat(f"int{bits}_asym", bits, np.arange(2**bits), family="integer",
                         description=f"affine INT{bits}: codes 0..{2**bits - 1}, per-group scale and zero point",
                         scaling="affine", fields={"kind": "integer", "bits": bits, "signed": False})
