"""Scaled-group quantization: element codes times a per-group scale (and zero point).

This is the scheme of every element format and of per-group mixtures (BitMoD): the weight
matrix ``W [rows, cols]`` is cut into groups, each group gets a scale from its statistics
(absmax, affine min/max or absmean, optionally shrunk by an MSE clipping search), the scale is
rounded to the scale dtype, and the elements are rounded exactly to the member format under the
*stored* scale (:mod:`hwlab.formats.scale_search`). A mixture tries each member and keeps the one
with the least squared error.

Granularity (option ``granularity``): ``"group"`` (groups of ``group_size`` along K, the
default), ``"channel"`` (one group per row), ``"tensor"`` (one group for the whole matrix).

Stored arrays (all counted by ``bits_per_weight``; ``qt.layout`` describes each): ``codes``
(``uint32`` words, layout in :mod:`hwlab.formats.packing`; ``uint8`` 5-trit bytes with
``packing="trit5"``), ``scales`` ``[scale_rows, groups_per_row]`` in the scale dtype,
``row_scales`` (``int8`` scales only), ``zeros`` (affine formats: zero points packed like codes,
``bits`` each) and ``type_ids`` (mixtures: member index per group, packed, ``ceil(log2
members)`` bits each).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .base import Option
from .group_kernel import MemberTables, quantize_groups
from .layout import ArrayLayout, packed, plain
from .packing import TRITS_PER_BYTE, pack_codes, pack_trits, unpack_codes, unpack_trits
from .scale_search import (DEFAULT_CLIP_RATIOS, SCALE_SEARCHES, GroupLimits, GroupStats, ScaleCandidates,
                           check_clip_ratios, check_scale_clamp, search_ratios)
from .scales import SCALE_DTYPES, StoredScales, get_scale_type
from .unpacked import Unpacked

GRANULARITIES = ("group", "channel", "tensor")
TRIT_CODES = (0, 1, 3)  # the 2-bit codes of 0, +1 and -1 that trit5 packing stores (packing.py)
APPLIES_TO = {"group": "group", "channel": "row", "tensor": "tensor"}  # what one scale covers
TWO_STAGE_DECODE = "scales * row_scales"  # int8 scale codes times the fp16 scale of their row

GRANULARITY = Option("group", "one scale per group of group_size along K, per row, or per matrix",
                     choices=GRANULARITIES)
SCALE_DTYPE = Option("fp16", "how scales are rounded and stored (int8: 8-bit codes times an fp16 scale per row)",
                     choices=SCALE_DTYPES)
SCALE_SEARCH = Option("absmax", "mse also tries every clip ratio per group and keeps the least squared error",
                      choices=SCALE_SEARCHES)
CLIP_RATIOS = Option(DEFAULT_CLIP_RATIOS, "candidate clipping ratios of the mse search, in (0, 1]",
                     validate=check_clip_ratios)
SCALE_CLAMP = Option(None, "clamp ideal scales to (low, high) before rounding", validate=check_scale_clamp)


def scaled_options(packings=("bits",)) -> dict:
    """The options of the scaled-group scheme (``packings``: the code packings this format allows)."""
    return {"granularity": GRANULARITY, "scale_dtype": SCALE_DTYPE, "scale_search": SCALE_SEARCH,
            "clip_ratios": CLIP_RATIOS, "scale_clamp": SCALE_CLAMP,
            "packing": Option("bits", "code packing (trit5: five ternary codes per byte, 1.6 bits)",
                              choices=tuple(packings))}


class ScaledScheme:
    """Mixin giving a format the scaled-group scheme over ``self.members`` (element formats)."""

    members: tuple

    @property
    def type_id_bits(self) -> int:
        """Bits of the per-group member index (0 for a single format)."""
        return math.ceil(math.log2(len(self.members))) if len(self.members) > 1 else 0

    @functools.cached_property
    def rounding_tables(self) -> MemberTables:
        """The members' rounding tables, padded for the group kernel (built once)."""
        return MemberTables.of(self.members)

    def member_table(self) -> np.ndarray:
        """Decoded values ``[members, 2**bits]`` (row = type id)."""
        return np.stack([m.values for m in self.members])

    def legal_codes(self) -> np.ndarray:
        """The codes each member's encoder emits (``encodable``), ``[members, 2**bits]``."""
        return np.stack([m.encodable for m in self.members])

    def check_stored_structure(self, arrays: dict, layout: dict) -> None:
        if len(self.members) < 1 << self.type_id_bits:  # else every id of type_id_bits names a member
            ids = unpack_codes(arrays["type_ids"], self.type_id_bits, layout["type_ids"].entries)
            if ids.max(initial=0) >= len(self.members):
                row, col = np.argwhere(ids >= len(self.members))[0]
                raise ValueError(f"array 'type_ids': type id {ids[row, col]} at [{row}, {col}] names no member of "
                                 f"{self.name} (it has {len(self.members)})")

    def grouping(self, rows: int, cols: int, group_size: int, opts: dict) -> tuple[int, int, int]:
        """(scale rows, groups per scale row, elements per group) for a ``rows x cols`` matrix."""
        if opts["granularity"] == "tensor":
            return 1, 1, rows * cols
        if opts["granularity"] == "channel":
            return rows, 1, cols
        return rows, cols // group_size, group_size

    def array_layout(self, rows: int, cols: int, group_size: int, opts: dict) -> dict:
        scale_rows, groups, _ = self.grouping(rows, cols, group_size, opts)
        scale = get_scale_type(opts["scale_dtype"])
        per = {"applies_to": APPLIES_TO[opts["granularity"]],
               "group_size": group_size if opts["granularity"] == "group" else None}
        if opts["packing"] == "trit5":
            layout = {"codes": ArrayLayout("codes", "uint8", (rows, -(-cols // TRITS_PER_BYTE)), self.bits, "trit5",
                                           cols, "element", None, self.name)}
        else:
            layout = {"codes": packed("codes", np.uint32, rows, cols, self.bits, applies_to="element",
                                      encoding=self.name)}
        layout["scales"] = plain("scales", scale.storage, (scale_rows, groups), encoding=scale.name,
                                 bits=scale.bits, decode=TWO_STAGE_DECODE if scale.name == "int8" else None, **per)
        if scale.name == "int8":
            layout["row_scales"] = plain("row_scales", np.float16, (scale_rows, 1), encoding="fp16",
                                         applies_to="tensor" if opts["granularity"] == "tensor" else "row")
        if self.members[0].scaling == "affine":
            layout["zeros"] = packed("zeros", np.uint32, scale_rows, groups, self.bits, encoding="uint", **per)
        if self.type_id_bits:
            layout["type_ids"] = packed("type_ids", np.uint32, scale_rows, groups, self.type_id_bits,
                                        encoding="member", **per)
        return layout

    def quantize_arrays(self, w: np.ndarray, group_size: int, opts: dict) -> dict:
        """Stored arrays for ``w [rows, cols]`` (float32 or float64, finite)."""
        rows, cols = w.shape
        scale_rows, groups, length = self.grouping(rows, cols, group_size, opts)
        x = w.reshape(scale_rows * groups, length)
        ratios = search_ratios(opts)
        member_of = np.repeat(np.arange(len(self.members)), len(ratios))
        stats = GroupStats(x)
        ideal, low = zip(*(stats.ideal_scale(member, ratio) for member in self.members for ratio in ratios))
        limits = GroupLimits.of([self.members[m] for m in member_of], stats.absmax.reshape(scale_rows, groups))
        candidates = ScaleCandidates.of(np.stack(ideal).reshape(len(member_of), scale_rows, groups),
                                        get_scale_type(opts["scale_dtype"]), opts["scale_clamp"], limits=limits)
        scales = candidates.decoded
        affine = self.members[0].scaling == "affine"
        offsets = np.clip(np.rint(-np.stack(low) / scales), 0, 2**self.bits - 1) if affine else np.zeros_like(scales)
        codes, best = quantize_groups(x, self.rounding_tables, member_of, scales, offsets)
        codes = codes.reshape(rows, cols)
        stored = candidates.winners(best)
        arrays = {"codes": pack_trits(codes) if opts["packing"] == "trit5" else pack_codes(codes, self.bits),
                  "scales": stored.values}
        if stored.row_scales is not None:
            arrays["row_scales"] = stored.row_scales
        if affine:
            zeros = offsets[best, np.arange(best.size)].reshape(scale_rows, groups)
            arrays["zeros"] = pack_codes(zeros.astype(np.uint8), self.bits)
        if self.type_id_bits:
            arrays["type_ids"] = pack_codes(member_of[best].reshape(scale_rows, groups), self.type_id_bits)
        return arrays

    def unpack(self, arrays: dict, shape: tuple, cols: int, group_size: int, opts: dict) -> Unpacked:
        """The unpacked view of the stored arrays (``cols``: the padded K)."""
        rows = shape[0]
        scale_rows, groups, _ = self.grouping(rows, cols, group_size, opts)
        if opts["packing"] == "trit5":
            codes = unpack_trits(arrays["codes"], cols)
        else:
            codes = unpack_codes(arrays["codes"], self.bits, cols)
        scale_type = get_scale_type(opts["scale_dtype"])
        stored = StoredScales(arrays["scales"], arrays.get("row_scales"))
        member = None
        if self.type_id_bits:
            member = unpack_codes(arrays["type_ids"], self.type_id_bits, groups)
            if member.max(initial=0) >= len(self.members):
                raise ValueError(f"type id {member.max()} names no member of {self.name} "
                                 f"(it has {len(self.members)})")
        zeros = None
        if self.members[0].scaling == "affine":
            zeros = unpack_codes(arrays["zeros"], self.bits, groups).astype(np.int16)
        return Unpacked(self, tuple(shape), codes, self.member_table(), scale_type.load(stored).reshape(scale_rows, groups),
                        scale_type.name, stored.values, group_size, opts["granularity"],
                        member=member, member_scope="group" if member is not None else None, zeros=zeros,
                        row_scales=stored.row_scales)
