"""Scaled-group quantization: element codes times a per-group scale (and zero point).

This is the scheme of every element format and of per-group mixtures (BitMoD): the weight
matrix ``W [rows, cols]`` is cut into groups, each group gets a scale from its statistics
(absmax, affine min/max or absmean, optionally shrunk by an MSE clipping search), the scale is
rounded to the scale dtype, and the elements are rounded exactly to the member format under the
*stored* scale. A mixture tries each member and keeps the one with the least squared error.

Granularity (option ``granularity``): ``"group"`` (groups of ``group_size`` along K, the
default), ``"channel"`` (one group per row), ``"tensor"`` (one group for the whole matrix).

Stored arrays (all counted by ``bits_per_weight``): ``codes`` (``uint32`` words, layout in
:mod:`hwlab.formats.packing`; ``uint8`` 5-trit bytes with ``packing="trit5"``), ``scales``
``[scale_rows, groups_per_row]`` in the scale dtype, ``row_scales`` (``int8`` scales only),
``zeros`` (affine formats: zero points packed like codes, ``bits`` each) and ``type_ids``
(mixtures: member index per group, packed, ``ceil(log2 members)`` bits each).
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from .group_kernel import MemberTables, quantize_groups
from .packing import pack_codes, pack_trits, packed_words, unpack_codes, unpack_trits, TRITS_PER_BYTE
from .scales import StoredScales, get_scale_type

GRANULARITIES = ("group", "channel", "tensor")
SCALE_SEARCHES = ("absmax", "mse")
# Clipping ratios of the MSE scale search: 1.0 down to 0.5 in steps of 0.05 (1.0 first, so an
# absmax scale wins ties). ANT, OliVe and LLM-FP4 search their ranges in the same spirit.
DEFAULT_CLIP_RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))


class ScaledScheme:
    """Mixin giving a format the scaled-group scheme over ``self.members`` (element formats)."""

    members: tuple
    options = {"granularity": "group", "scale_dtype": "fp16", "scale_search": "absmax",
               "clip_ratios": DEFAULT_CLIP_RATIOS, "scale_clamp": None, "packing": "bits"}

    @property
    def type_id_bits(self) -> int:
        """Bits of the per-group member index (0 for a single format)."""
        return math.ceil(math.log2(len(self.members))) if len(self.members) > 1 else 0

    def check_options(self, opts: dict) -> None:
        """Raise ``ValueError`` for option values this scheme cannot honour."""
        check_choice("granularity", opts["granularity"], GRANULARITIES)
        check_choice("scale_search", opts["scale_search"], SCALE_SEARCHES)
        check_choice("packing", opts["packing"], ("bits", "trit5") if self.family == "ternary" else ("bits",))
        get_scale_type(opts["scale_dtype"])
        ratios = opts["clip_ratios"]
        if not (isinstance(ratios, (tuple, list)) and ratios
                and all(isinstance(r, numbers.Real) and 0 < r <= 1 for r in ratios)):
            raise ValueError(f"clip_ratios must be a non-empty sequence of numbers in (0, 1], got {ratios!r}")
        clamp = opts["scale_clamp"]
        if clamp is not None and not (isinstance(clamp, (tuple, list)) and len(clamp) == 2 and all(
                isinstance(c, numbers.Real) for c in clamp) and 0 < clamp[0] < clamp[1]):
            raise ValueError(f"scale_clamp must be None or (low, high) with 0 < low < high, got {clamp!r}")

    def layout(self, rows: int, cols: int, group_size: int, opts: dict) -> tuple[int, int, int]:
        """(scale rows, groups per scale row, elements per group) for a ``rows x cols`` matrix."""
        if opts["granularity"] == "tensor":
            return 1, 1, rows * cols
        if opts["granularity"] == "channel":
            return rows, 1, cols
        return rows, cols // group_size, group_size

    def array_specs(self, rows: int, cols: int, group_size: int, opts: dict) -> dict:
        """Name -> (dtype, shape) of every stored array."""
        scale_rows, groups, _ = self.layout(rows, cols, group_size, opts)
        scale = get_scale_type(opts["scale_dtype"])
        if opts["packing"] == "trit5":
            specs = {"codes": (np.uint8, (rows, -(-cols // TRITS_PER_BYTE)))}
        else:
            specs = {"codes": (np.uint32, (rows, packed_words(cols, self.bits)))}
        specs["scales"] = (scale.storage, (scale_rows, groups))
        if scale.name == "int8":
            specs["row_scales"] = (np.float16, (scale_rows, 1))
        if self.members[0].scaling == "affine":
            specs["zeros"] = (np.uint32, (scale_rows, packed_words(groups, self.bits)))
        if self.type_id_bits:
            specs["type_ids"] = (np.uint32, (scale_rows, packed_words(groups, self.type_id_bits)))
        return specs

    def quantize_arrays(self, w: np.ndarray, group_size: int, opts: dict) -> dict:
        """Stored arrays for ``w [rows, cols]`` (float32 or float64, finite)."""
        rows, cols = w.shape
        scale_rows, groups, length = self.layout(rows, cols, group_size, opts)
        x = w.reshape(scale_rows * groups, length)
        ratios = opts["clip_ratios"] if opts["scale_search"] == "mse" else (1.0,)
        member_of = np.repeat(np.arange(len(self.members)), len(ratios))
        stats = GroupStats(x)
        ideal, low = [], []
        for member in self.members:
            for ratio in ratios:
                s, lo = stats.ideal_scale(member, float(ratio))
                ideal.append(s)
                low.append(lo)
        scale_type = get_scale_type(opts["scale_dtype"])
        ideal = bounded_scales(np.stack(ideal), scale_type, opts["scale_clamp"]).reshape(
            len(member_of), scale_rows, groups)
        stored = scale_type.store(ideal)
        scales = scale_type.load(stored).reshape(len(member_of), -1)
        offsets = np.zeros_like(scales)
        if self.members[0].scaling == "affine":
            top = 2**self.bits - 1
            offsets = np.clip(np.rint(-np.stack(low) / scales), 0, top)
        codes, best = quantize_groups(x, MemberTables.of(self.members), member_of, scales, offsets)
        pick = (best, np.arange(best.size))
        codes = codes.reshape(rows, cols)
        arrays = {"codes": pack_trits(codes) if opts["packing"] == "trit5" else pack_codes(codes, self.bits)}
        arrays["scales"] = stored.values.reshape(len(member_of), -1)[pick].reshape(scale_rows, groups)
        if stored.row_scales is not None:
            arrays["row_scales"] = stored.row_scales
        if self.members[0].scaling == "affine":
            arrays["zeros"] = pack_codes(offsets[pick].reshape(scale_rows, groups).astype(np.uint8), self.bits)
        if self.type_id_bits:
            arrays["type_ids"] = pack_codes((member_of[best]).reshape(scale_rows, groups), self.type_id_bits)
        return arrays

    def dequantize_arrays(self, arrays: dict, rows: int, cols: int, group_size: int, opts: dict) -> np.ndarray:
        """Float32 ``[rows, cols]`` from the stored arrays (computed in float64, rounded once)."""
        scale_rows, groups, length = self.layout(rows, cols, group_size, opts)
        if opts["packing"] == "trit5":
            codes = unpack_trits(arrays["codes"], cols)
        else:
            codes = unpack_codes(arrays["codes"], self.bits, cols)
        codes = codes.reshape(scale_rows * groups, length)
        scale_type = get_scale_type(opts["scale_dtype"])
        scales = scale_type.load(StoredScales(arrays["scales"], arrays.get("row_scales"))).reshape(-1, 1)
        table = np.stack([m.values for m in self.members]).ravel()
        if self.type_id_bits:
            member = unpack_codes(arrays["type_ids"], self.type_id_bits, groups).reshape(-1, 1)
            if member.max(initial=0) >= len(self.members):
                raise ValueError(f"type id {member.max()} names no member of {self.name} "
                                 f"(it has {len(self.members)})")
            codes = (member.astype(np.uint16) << self.bits) | codes  # index into the flat [member, code] table
        values = table[codes]
        if self.members[0].scaling == "affine":
            values = values - unpack_codes(arrays["zeros"], self.bits, groups).reshape(-1, 1)
        return (values * scales).astype(np.float32).reshape(rows, cols)


class GroupStats:
    """Per-group statistics of ``x [groups, n]``, each computed once and shared by all candidates."""

    def __init__(self, x: np.ndarray):
        self.x = x

    @functools.cached_property
    def high(self) -> np.ndarray:
        return self.x.max(axis=1).astype(np.float64)

    @functools.cached_property
    def low(self) -> np.ndarray:
        return self.x.min(axis=1).astype(np.float64)

    @functools.cached_property
    def absmax(self) -> np.ndarray:
        return np.maximum(self.high, -self.low)

    @functools.cached_property
    def absmean(self) -> np.ndarray:
        return np.abs(self.x).mean(axis=1, dtype=np.float64)

    def ideal_scale(self, member, ratio: float) -> tuple[np.ndarray, np.ndarray | None]:
        """Unrounded scale of each group (and, for affine formats, the clipped group minimum)."""
        if member.scaling == "absmax":
            return self.absmax * ratio / member.max_abs, None
        if member.scaling == "absmean":
            return self.absmean * ratio, None
        hi, lo = np.maximum(self.high, 0) * ratio, np.minimum(self.low, 0) * ratio
        return (hi - lo) / (2**member.bits - 1), lo


def bounded_scales(ideal: np.ndarray, scale_type, scale_clamp=None) -> np.ndarray:
    """Ideal scales made storable in ``scale_type``: raised to its least positive value (so an
    all-zero group, which any positive scale encodes exactly, gets the least scale and never sets
    a row's int8 base scale), clamped by ``scale_clamp`` (``(low, high)`` or None), and refused
    where they overflow."""
    ideal = np.maximum(ideal, scale_type.smallest)
    if scale_clamp is not None:
        ideal = np.clip(ideal, *scale_clamp)
    if ideal.max() > scale_type.largest:
        raise ValueError(f"a group scale of {ideal.max():.6g} overflows scale_dtype={scale_type.name!r} "
                         f"(largest {scale_type.largest:.6g}); use scale_dtype='fp32' or rescale W")
    return ideal


def check_choice(option: str, value, choices) -> None:
    """Raise ``ValueError`` unless option ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{option} must be one of {tuple(choices)}, got {value!r}")
