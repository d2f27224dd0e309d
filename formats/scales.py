"""Scale datatypes: how a per-group (or per-block) scale is rounded, stored and read back.

Every scale the quantizer uses is the *decoded stored* scale, so dequantization is exactly
``value(code) * scale`` with the stored bits. Storage dtypes (what ``bits_per_weight`` counts):

=========  =======================================================  ==========================
name       rounding of an ideal scale                              stored as
=========  =======================================================  ==========================
``fp16``   nearest even (IEEE binary16)                            ``float16``
``bf16``   nearest even to 8 significant bits                      ``uint16`` (raw bf16 bits)
``fp32``   nearest even (IEEE binary32)                            ``float32``
``e8m0``   up to the next power of two (never clips)               ``uint8`` biased exponent
``e4m3``   nearest even, saturating at 448 (OCP E4M3)              ``uint8`` E4M3 code
``int8``   8-bit code ``1..255`` times a per-row fp16 scale         ``uint8`` + ``float16`` row
=========  =======================================================  ==========================

E8M0 is the OCP MX v1.0 scale (section 5.4): exponent bias 127, code 255 is NaN.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .encodings import minifloat_values
from .rounding import RoundingTable

SCALE_DTYPES = ("fp16", "bf16", "fp32", "e8m0", "e4m3", "int8")
E8M0_BIAS = 127  # OCP MX v1.0, table 7
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127  # codes 0..254; 255 is NaN
FP16_SMALLEST, FP16_LARGEST = 2.0**-24, 65504.0  # IEEE binary16 least subnormal, largest finite
BF16_LARGEST = (2 - 2.0**-7) * 2.0**127  # bfloat16: 8 significant bits, float32's exponent range: 3.3895e38
INT8_SCALE_MAX_CODE = 255  # positive scales use the whole unsigned byte; code 0 is never used
# OCP E4M3 (OFP8 rev 1.0): the same definition as the element format fp8_e4m3 (code 0x7f is NaN).
E4M3_VALUES = minifloat_values(4, 3, semantics="fn")
E4M3_VALUES.setflags(write=False)
_E4M3_TABLE = RoundingTable.build(E4M3_VALUES, np.isfinite(E4M3_VALUES), "nearest_even", "e4m3 scale")


def round_to_significand(x: np.ndarray, significand_bits: int) -> np.ndarray:
    """Round positive float64 ``x`` to ``significand_bits`` bits (hidden bit included), ties to even."""
    mantissa, exponent = np.frexp(x)
    return np.ldexp(np.rint(np.ldexp(mantissa, significand_bits)), exponent - significand_bits)


@dataclasses.dataclass(frozen=True)
class StoredScales:
    """Scales as stored: ``values`` (the scale dtype's bits) and, for ``int8``, ``row_scales``."""

    values: np.ndarray
    row_scales: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ScaleType:
    """One scale datatype: its range and how to store and decode an array of positive scales."""

    name: str
    storage: type  # numpy dtype of the stored array
    smallest: float  # least positive scale it can hold
    largest: float  # greatest finite scale it can hold

    @property
    def bits(self) -> int:
        """Stored bits per scale (int8: the code; its row scale is counted apart)."""
        return 8 * np.dtype(self.storage).itemsize

    def store(self, ideal: np.ndarray) -> StoredScales:
        """Round positive float64 ``ideal`` scales ``[..., rows, groups]`` and store them.

        ``int8`` shares one fp16 scale per row across all leading axes (the candidates of a
        mixture or clipping search), so every candidate dequantizes with the same row scale.
        """
        if self.name == "fp16":
            return StoredScales(ideal.astype(np.float16))
        if self.name == "fp32":
            return StoredScales(ideal.astype(np.float32))
        if self.name == "bf16":
            rounded = round_to_significand(ideal, 8).astype(np.float32)
            return StoredScales((rounded.view(np.uint32) >> 16).astype(np.uint16))
        if self.name == "e8m0":
            mantissa, exponent = np.frexp(ideal)  # ideal = mantissa * 2**exponent, mantissa in [0.5, 1)
            exponent = exponent - (mantissa == 0.5)  # the least power of two >= ideal
            return StoredScales((np.clip(exponent, E8M0_MIN_EXP, E8M0_MAX_EXP) + E8M0_BIAS).astype(np.uint8))
        if self.name == "e4m3":
            return StoredScales(_E4M3_TABLE.encode(ideal))
        leading = tuple(range(ideal.ndim - 2)) + (ideal.ndim - 1,)
        row = np.max(ideal, axis=leading, keepdims=True) / INT8_SCALE_MAX_CODE
        # Kept inside fp16's range: a row whose scales are below 255 * 2**-24 gets the least
        # subnormal and small codes rather than underflowing to 0.
        row = np.clip(row, FP16_SMALLEST, FP16_LARGEST).astype(np.float16)
        codes = np.clip(np.rint(ideal / row.astype(np.float64)), 1, INT8_SCALE_MAX_CODE)
        return StoredScales(codes.astype(np.uint8), row.reshape(-1, 1))

    def load(self, stored: StoredScales) -> np.ndarray:
        """Decoded float64 scales from their stored form."""
        v = stored.values
        if self.name in ("fp16", "fp32"):
            return v.astype(np.float64)
        if self.name == "bf16":
            return (v.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        if self.name == "e8m0":
            return np.ldexp(1.0, v.astype(np.int64) - E8M0_BIAS)
        if self.name == "e4m3":
            return E4M3_VALUES[v]
        return v.astype(np.float64) * stored.row_scales.astype(np.float64).reshape(-1, 1)


SCALE_TYPES = {
    "fp16": ScaleType("fp16", np.float16, FP16_SMALLEST, FP16_LARGEST),
    "bf16": ScaleType("bf16", np.uint16, 2.0**-126, BF16_LARGEST),
    "fp32": ScaleType("fp32", np.float32, float(np.finfo(np.float32).smallest_subnormal), float(np.finfo(np.float32).max)),
    "e8m0": ScaleType("e8m0", np.uint8, 2.0**E8M0_MIN_EXP, 2.0**E8M0_MAX_EXP),
    "e4m3": ScaleType("e4m3", np.uint8, 2.0**-9, 448.0),
    "int8": ScaleType("int8", np.uint8, FP16_SMALLEST, FP16_LARGEST),
}


def get_scale_type(name: str) -> ScaleType:
    """The :class:`ScaleType` called ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return SCALE_TYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"scale_dtype must be one of {SCALE_DTYPES}, got {name!r}") from None
