"""Layout descriptors: what each stored array of a quantized tensor is, bit for bit.

``qt.layout`` maps every stored array's name to an :class:`ArrayLayout`; the same descriptors are
written into a saved file's metadata and printed by ``hwlab info``, so a kernel or an outside
reader learns the layout from the file, not from reading code.

Packings:

``"bits"``   a little-endian bit stream of ``bits``-wide entries along ``axis`` 1, padded with zero
             bits to whole little-endian ``uint32`` words (:mod:`hwlab.formats.packing`): entry
             ``k`` of a row at bits ``[k*bits, (k+1)*bits)``.
``"trit5"``  five ternary digits per byte, ``byte = sum(t_i * 3**i)`` (ternary only).
``"plain"``  one entry per array element, in the array's dtype.

``applies_to`` says what one entry covers: an ``element`` of W, a ``group`` of ``group_size``
consecutive elements along K, a ``row`` (all of K), the whole ``tensor``, or a ``scale_block``
(NF4 double quantization: ``group_size`` = 256 consecutive group scales, row-major).

``decode``, where an entry needs other arrays to be read, is the formula (over the arrays' names)
that gives its value: ``"scales * row_scales"`` for two-stage int8 scales, ``"e4m3(scales) *
tensor_scale"`` for NVFP4, ``"dynamic8[scales] * scale_absmax + scale_offset"`` for NF4 double
quantization (the 256-value map is in the format's stored definition).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .packing import packed_words

PACKINGS = ("bits", "trit5", "plain")
APPLIES_TO = ("element", "group", "row", "tensor", "scale_block")


@dataclasses.dataclass(frozen=True)
class ArrayLayout:
    """One stored array: its role, storage and meaning (see the module docstring)."""

    role: str  # codes, scales, row_scales, zeros, type_ids, group_bits, tensor_scale, scale_absmax, scale_offset
    dtype: str  # numpy dtype name of the stored array
    shape: tuple[int, ...]
    bits: int  # bits per logical entry
    packing: str  # one of PACKINGS
    entries: int  # logical entries per row along the packed axis (per array element for "plain")
    applies_to: str  # one of APPLIES_TO
    group_size: int | None  # elements along K one entry applies to, for applies_to == "group"
    encoding: str  # how an entry reads: a format name, a scale dtype, "uint" (an unsigned integer), ...
    member: int | None = None  # the member (row of the unpacked value table) these codes belong to
    decode: str | None = None  # formula over other arrays, where an entry needs them (see the module)

    def __post_init__(self):
        if self.packing not in PACKINGS or self.applies_to not in APPLIES_TO:
            raise ValueError(f"bad layout: packing {self.packing!r}, applies_to {self.applies_to!r}")
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))

    @property
    def axis(self) -> int | None:
        """The packed axis (1: along K or along the groups of a row), None for plain arrays."""
        return None if self.packing == "plain" else 1

    def to_json(self) -> dict:
        """The descriptor as JSON-able values (``shape`` a list), as stored in file metadata."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["shape"] = list(self.shape)
        out["axis"] = self.axis
        return out

    @classmethod
    def from_json(cls, data: dict) -> "ArrayLayout":
        """The descriptor :meth:`to_json` wrote (``ValueError`` for anything else)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != fields | {"axis"}:
            raise ValueError(f"not a layout descriptor: {data!r:.200}")
        layout = cls(**{k: v for k, v in data.items() if k != "axis"})
        if layout.to_json() != data:
            raise ValueError(f"inconsistent layout descriptor: {data!r:.200}")
        return layout


def packed(role: str, dtype, rows: int, entries: int, bits: int, *, applies_to: str, encoding: str,
           group_size: int | None = None, member: int | None = None) -> ArrayLayout:
    """Layout of ``rows`` rows of ``entries`` entries of ``bits`` bits packed into uint32 words."""
    return ArrayLayout(role, np.dtype(dtype).name, (rows, packed_words(entries, bits)), bits, "bits", entries,
                       applies_to, group_size, encoding, member)


def plain(role: str, dtype, shape: tuple, *, applies_to: str, encoding: str, bits: int | None = None,
          group_size: int | None = None, decode: str | None = None) -> ArrayLayout:
    """Layout of an array stored as is (one entry per element of ``dtype``)."""
    dtype = np.dtype(dtype)
    entries = int(shape[-1]) if len(shape) else 1
    return ArrayLayout(role, dtype.name, tuple(shape), bits or 8 * dtype.itemsize, "plain", entries,
                       applies_to, group_size, encoding, decode=decode)
