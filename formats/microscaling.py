"""Microscaling formats: OCP MX v1.0 (``mxfp4``, ``mxfp6_*``, ``mxfp8_e4m3``, ``mxint8``) and NVFP4.

A weight row is cut along K into blocks; every block shares one scale and its elements are
stored in a narrow element format. Source: OCP Microscaling Formats (MX) Specification v1.0
(2023), sections 5-6; NVFP4: NVIDIA, "Introducing NVFP4 for efficient and accurate
low-precision inference" (2025), as implemented in torchao ``prototype/mx_formats``.

MX (block 32, scale E8M0, ``bits + 8/32`` bits per weight)
    shared exponent ``e = floor(log2(max|block|)) - emax_elem``, clamped below to the E8M0
    minimum -127; an all-zero block gets ``e = -127`` (any exponent encodes it exactly, this
    is the E8M0 code 0); inputs are within the float32 range (larger ones are refused), so
    ``e`` never passes the E8M0 maximum 127. Elements are ``x / 2**e`` rounded to nearest, ties
    to even, saturating at the element format's largest magnitude.
NVFP4 (block 16, scale E4M3, plus one float32 per tensor, ``4 + 8/16`` bits per weight)
    tensor scale ``g = absmax(W) / (6 * 448)`` in float32 (1.0 for an all-zero W); block
    scale ``s = E4M3(absmax(block) / 6 / g)``, rounded to nearest even and saturating at 448;
    a block scale that would round to 0 (an all-zero or negligible block) is raised to the
    least positive E4M3, 2**-9, so no scale is 0 (torchao clamps at 2**-6 instead). Elements
    are E2M1 of ``x / (s * g)``, nearest even, saturating at 6.

Element rounding is the library's exact engine (:func:`~hwlab.formats.group_kernel.quantize_groups`
under the stored per-block scale), so no division is rounded. Stored arrays: ``codes``
(``uint32`` words, layout of :mod:`hwlab.formats.packing`), ``scales`` ``uint8`` ``[N, K/block]``
(biased E8M0 exponents, bias 127, or E4M3 codes) and, for NVFP4, ``tensor_scale`` float32
``[1, 1]``.
"""
from __future__ import annotations

import numpy as np

from .base import Format, Option
from .element import ElementFormat
from .group_kernel import quantize_groups
from .integer import int_format
from .layout import packed, plain
from .packing import pack_codes, unpack_codes
from .registry import get_format
from .scale_search import check_blocks_kept, zero_threshold
from .scales import E8M0_BIAS, E8M0_MIN_EXP, StoredScales, get_scale_type
from .unpacked import Unpacked

MX_BLOCK = 32  # OCP MX v1.0, table 1: k = 32 for every concrete MX format
NVFP4_BLOCK = 16  # NVIDIA NVFP4: 16 elements per E4M3 block scale
E2M1_MAX, E4M3_MAX = 6.0, 448.0  # largest finite FP4 E2M1 and FP8 E4M3 values (OCP MX v1.0 / OFP8)
MXINT8_FRACTION_BITS = 6  # OCP MX v1.0 section 5.3.3: INT8 with an implicit scale of 2**-6
# (name, registered element format, emax_elem); emax_elem from OCP MX v1.0 table 1 (largest
# power of two of the element format).
MX_MINIFLOATS = (
    ("mxfp4", "fp4_e2m1", 2),
    ("mxfp6_e2m3", "fp6_e2m3", 2),
    ("mxfp6_e3m2", "fp6_e3m2", 4),
    ("mxfp8_e4m3", "fp8_e4m3", 8),
)
MXINT8_EMAX = 0  # OCP MX v1.0 table 1: emax_elem of INT8 (largest magnitude 127/64 < 2)


def mxint8_element() -> ElementFormat:
    """INT8 two's complement with implicit scale 2**-6, range +-127/64.

    The spec's code -128 (value -2) decodes but is never emitted: microxcaling clamps MXINT8
    elements symmetrically to +-127/64. Ties go to the even integer (even code).
    """
    int8 = int_format(8)
    return ElementFormat("int8_frac6", 8, int8.values / 2**MXINT8_FRACTION_BITS, family="integer",
                         description="INT8 with implicit scale 2**-6 (OCP MX v1.0 MXINT8 element), "
                                     "range +-127/64",
                         unused_codes=np.flatnonzero(~int8.encodable))


class MicroscalingFormat(Format):
    """A block-scaled format: ``block_size`` elements along K share one narrow scale.

    ``scale_dtype="e8m0"`` is the OCP MX rule (shared exponent from ``emax_elem``);
    ``scale_dtype="e4m3"`` is the NVFP4 rule (E4M3 block scales under one float32 tensor
    scale). See the module docstring for the formulas. ``values``, ``encode``, ``decode`` and
    ``info`` are those of the element format (unscaled element codes).
    """

    family = "microscaling"

    def __init__(self, name: str, element: ElementFormat, *, block_size: int, scale_dtype: str,
                 emax_elem: int | None = None, description: str):
        if scale_dtype not in ("e8m0", "e4m3"):
            raise ValueError(f"scale_dtype of a microscaling format must be 'e8m0' (MX) or 'e4m3' "
                             f"(NVFP4), got {scale_dtype!r}")
        if (scale_dtype == "e8m0") != (emax_elem is not None):
            raise ValueError("emax_elem is required with scale_dtype='e8m0' and unused with 'e4m3', "
                             f"got {emax_elem!r} with {scale_dtype!r}")
        self.name, self.element, self.bits, self.description = name, element, element.bits, description
        self.block_size = self.default_group_size = block_size
        self.scale_dtype, self.emax_elem = scale_dtype, emax_elem
        self.defaults = {}
        self.options = {"granularity": Option("group", f"blocks of {block_size} along K are the format; "
                                                       "nothing else to choose", validate=self._check_granularity)}

    def _check_granularity(self, value) -> None:
        if value != "group":
            raise ValueError(f"{self.name} scales blocks of {self.block_size} along K only: granularity "
                             f"must be 'group', got {value!r}")

    @property
    def values(self) -> np.ndarray:
        """Decoded element value of every code (float64, index = code), before the block scale."""
        return self.element.values

    @property
    def info(self):
        """:class:`~hwlab.formats.FormatInfo` of the element format."""
        return self.element.info

    def encode(self, x, **kwargs) -> np.ndarray:
        """Element codes of already-scaled ``x`` (see :meth:`ElementFormat.encode`)."""
        return self.element.encode(x, **kwargs)

    def decode(self, codes) -> np.ndarray:
        """Element values of ``codes``, float32, before the block scale."""
        return self.element.decode(codes)

    def check_group_size(self, group_size: int) -> None:
        if group_size != self.block_size:
            raise ValueError(f"{self.name} uses blocks of {self.block_size} elements along K: group_size "
                             f"must be {self.block_size}, got {group_size}")

    def definition(self) -> dict:
        return {**super().definition(), "element": self.element.definition(), "block_size": self.block_size,
                "scale_dtype": self.scale_dtype, "emax_elem": self.emax_elem}

    def member_table(self) -> np.ndarray:
        return self.element.values[None]

    def legal_codes(self) -> np.ndarray:
        return self.element.encodable[None]

    def encoding_fields(self) -> dict:
        return self.element.encoding_fields()

    def array_layout(self, rows: int, cols: int, group_size: int, opts: dict) -> dict:
        layout = {"codes": packed("codes", np.uint32, rows, cols, self.bits, applies_to="element",
                                  encoding=self.element.name),
                  "scales": plain("scales", np.uint8, (rows, cols // self.block_size), applies_to="group",
                                  group_size=self.block_size, encoding=self.scale_dtype,
                                  decode="e4m3(scales) * tensor_scale" if self.scale_dtype == "e4m3" else None)}
        if self.scale_dtype == "e4m3":
            layout["tensor_scale"] = plain("tensor_scale", np.float32, (1, 1), applies_to="tensor", encoding="fp32")
        return layout

    def quantize_arrays(self, w: np.ndarray, group_size: int, opts: dict) -> dict:
        rows, cols = w.shape
        blocks = w.reshape(-1, self.block_size)  # float32 stays float32: the kernel is exact for both
        absmax = np.abs(blocks).max(axis=1).astype(np.float64)
        if self.scale_dtype == "e8m0":
            arrays = {"scales": self._shared_exponents(absmax)}
            remedy = (f"OCP MX flushes a block below the least E8M0 scale 2**{E8M0_MIN_EXP} to zero; rescale W "
                      "(multiply it by a power of two and fold the inverse into the layer)")
        else:
            arrays = _nvfp4_scales(absmax, float(absmax.max()))
            remedy = (f"its E4M3 block scale cannot go below 2**-9 of the tensor scale absmax(W) / {E2M1_MAX * E4M3_MAX:g}, "
                      "so a block about 5.5e6 times below the tensor's largest weight is lost; use a format with "
                      "E8M0 block scales (mxfp4) or quantize such rows apart")
        arrays["scales"] = arrays["scales"].reshape(rows, -1)
        scales = self._block_scales(arrays)
        check_blocks_kept(absmax, scales, zero_threshold(self.element), (rows, cols // self.block_size),
                          f"{self.name}: block", remedy)
        codes, _ = quantize_groups(blocks, self.element.rounding_tables, np.zeros(1, dtype=np.int64),
                                   scales[None, :], np.zeros((1, scales.size)))
        arrays["codes"] = pack_codes(codes.reshape(rows, cols), self.bits)
        return arrays

    def unpack(self, arrays: dict, shape: tuple, cols: int, group_size: int, opts: dict) -> Unpacked:
        rows = shape[0]
        tensor_scale = float(arrays["tensor_scale"][0, 0]) if self.scale_dtype == "e4m3" else None
        return Unpacked(self, tuple(shape), unpack_codes(arrays["codes"], self.bits, cols), self.member_table(),
                        self._block_scales(arrays).reshape(rows, -1), self.scale_dtype, arrays["scales"],
                        self.block_size, tensor_scale=tensor_scale)

    def _shared_exponents(self, absmax: np.ndarray) -> np.ndarray:
        """Biased E8M0 codes ``floor(log2 absmax) - emax_elem`` (zero blocks: -127)."""
        mantissa, exponent = np.frexp(absmax)  # absmax = mantissa * 2**exponent, mantissa in [0.5, 1)
        shared = np.where(absmax > 0, exponent - 1 - self.emax_elem, E8M0_MIN_EXP)  # <= 127: float32 input
        return (np.maximum(shared, E8M0_MIN_EXP) + E8M0_BIAS).astype(np.uint8)

    def _block_scales(self, arrays: dict) -> np.ndarray:
        """Decoded float64 scale of every block (row-major), including the NVFP4 tensor scale."""
        scales = get_scale_type(self.scale_dtype).load(StoredScales(arrays["scales"])).ravel()
        if self.scale_dtype == "e4m3":
            scales = scales * np.float64(arrays["tensor_scale"][0, 0])  # 4 x 24 significant bits: exact
        return scales


def _nvfp4_scales(absmax: np.ndarray, tensor_absmax: float) -> dict:
    """NVFP4 tensor scale (float32 ``[1, 1]``) and E4M3 block scale codes for block ``absmax``."""
    g = tensor_absmax / (E2M1_MAX * E4M3_MAX) if tensor_absmax > 0 else 1.0  # finite: float32 input
    g = max(np.float32(g), np.finfo(np.float32).smallest_subnormal)  # absmax(W) < ~4e-42 would round g to 0
    e4m3 = get_scale_type("e4m3")
    ideal = absmax / E2M1_MAX / np.float64(g)
    if ideal.max() > e4m3.largest * (1 + 1 / (2 * E2M1_MAX)):  # float32 rounded g down (a subnormal tensor scale)
        raise ValueError(f"nvfp4: the largest weight, {tensor_absmax:.6g}, is so small that the float32 tensor scale "
                         f"rounds to {float(g):.6g} and its block would clip past rounding; rescale W")
    ideal = np.clip(ideal, e4m3.smallest, e4m3.largest)
    return {"scales": e4m3.store(ideal).values, "tensor_scale": np.full((1, 1), g, dtype=np.float32)}


def microscaling_formats() -> list[MicroscalingFormat]:
    """The built-in microscaling formats: mxfp4, mxfp6_e2m3, mxfp6_e3m2, mxfp8_e4m3, mxint8, nvfp4.

    Their elements are the registered minifloats (declared first), so one definition serves both.
    """
    formats = [
        MicroscalingFormat(name, get_format(elem), block_size=MX_BLOCK, scale_dtype="e8m0", emax_elem=emax,
                           description=f"OCP MX v1.0 {name.upper()}: {elem} elements, block 32, E8M0 scale")
        for name, elem, emax in MX_MINIFLOATS
    ]
    formats.append(MicroscalingFormat("mxint8", mxint8_element(), block_size=MX_BLOCK, scale_dtype="e8m0",
                                      emax_elem=MXINT8_EMAX,
                                      description="OCP MX v1.0 MXINT8: INT8 (scale 2**-6) elements, block 32, "
                                                  "E8M0 scale"))
    formats.append(MicroscalingFormat("nvfp4", get_format("fp4_e2m1"), block_size=NVFP4_BLOCK,
                                      scale_dtype="e4m3",
                                      description="NVIDIA NVFP4: fp4_e2m1 elements, block 16, E4M3 scale, "
                                                  "float32 tensor scale"))
    return formats
