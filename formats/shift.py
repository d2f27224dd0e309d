"""Power-of-two and ternary element formats.

``shiftB`` (DenseShift, Li et al., ICCV 2023): ``w = s * 2**-p``, ``s`` in {+1, -1}, no zero,
``p`` in ``0 .. 2**(B-1) - 1``; code ``sign << (B-1) | p``. Rounding is to the nearest value in
the linear domain (ties to the even code; an input of exactly 0 goes to ``+2**-pmax``).

``ternary`` (BitNet b1.58, Ma et al., 2024): values {-1, 0, +1} in a 2-bit two's-complement code
(code 2 unused); scale = mean|w| (absmean), ``Wq = clamp(round(W / scale), -1, 1)`` with round
half to even as ``torch.round``.
"""
from __future__ import annotations

import numpy as np

from .element import ElementFormat
from .encodings import shift_values

# BitNet b1.58 reference code clamps mean|W| at 1e-5 before dividing, and scales per tensor.
TERNARY_SCALE_FLOOR = 1e-5
TERNARY_DEFAULTS = {"granularity": "tensor", "scale_clamp": (TERNARY_SCALE_FLOOR, 65504.0)}  # 65504: fp16 max


def shift_format(bits: int) -> ElementFormat:
    """DenseShift zero-free power-of-two format of ``bits`` bits."""
    if bits < 2:
        raise ValueError(f"a shift format needs at least 2 bits (sign + exponent), got {bits}")
    return ElementFormat(f"shift{bits}", bits, shift_values(bits), family="shift",
                         description=f"DenseShift: +-2^-p, p in 0..{2 ** (bits - 1) - 1}, no zero",
                         fields={"kind": "shift", "sign_bit": bits - 1, "exponent_bits": bits - 1})


def ternary_format() -> ElementFormat:
    """BitNet b1.58 ternary weights with an absmean scale."""
    return ElementFormat("ternary", 2, [0.0, 1.0, np.nan, -1.0], family="ternary",
                         description="BitNet b1.58 ternary {-1, 0, 1}, absmean scale",
                         scaling="absmean", defaults=TERNARY_DEFAULTS,
                         fields={"kind": "integer", "bits": 2, "signed": True})
