"""``mixed_2_4``: range-aware, memory-aligned mixed 2/4-bit groups with two-stage scales.

Source: "Enabling fast 2-bit LLM on GPUs: memory alignment and asynchronous dequantization"
(REFERENCES.md): groups whose range is large are kept in 4 bits, the rest in 2 bits, laid out
so every GPU load is aligned; the group scales are themselves quantized (two-stage
dequantization). The paper has no public code; the rules below are hwlab's.

Scheme, per row of ``W [N, K]`` cut into ``G = K / group_size`` groups along K:

1. Range ``max - min`` of every group. The ``n4 = round(frac_4bit * G)`` groups with the widest
   range (Python ``round``: half to even; equal ranges: lower group index first) are affine
   INT4 (``int4_asym``), the other ``G - n4`` affine INT2 (``int2_asym``). Every row has the same
   ``n4``, so every row has the same byte stride.
2. Ideal scale of a group ``(max(hi, 0) - min(lo, 0)) / (2**b - 1)`` for its width ``b``, the
   affine rule of :mod:`hwlab.formats.scaled` (``scale_search='mse'`` also tries its clipping
   ratios, ``clip_ratios``, and keeps the least squared error). All-zero groups take the least
   scale (any positive scale encodes them exactly), as in every scaled format.
3. Two-stage scale (scale dtype ``int8``): a ``uint8`` code 1..255 per group times an fp16
   scale per row (the row's largest ideal scale / 255).
4. Zero point ``clip(rint(-lo / s), 0, 2**b - 1)`` under the stored scale ``s``; elements are
   rounded exactly to the nearest ``(code - zero) * s`` (:func:`quantize_groups`, ties to even).

``frac_4bit`` defaults to 0.425: 0.425 * 4 + 0.575 * 2 = 2.85 code bits per weight, the
average the paper reports (2.91 with its scales and zeros).

Stored arrays (all counted by ``bits_per_weight``; ``n2 = G - n4``):

==============  ==============================  ================================================
name            dtype [shape]                   content
==============  ==============================  ================================================
``codes4``      uint32 [N, n4 * gs / 8]         codes of the row's 4-bit groups in group order
``codes2``      uint32 [N, n2 * gs / 16]        codes of the row's 2-bit groups in group order
``group_bits``  uint32 [N, ceil(G / 32)]        bit ``g`` set when group ``g`` is 4-bit
``scales``      uint8 [N, G]                    scale codes 1..255, group order
``row_scales``  float16 [N, 1]                  second-stage scale of each row
``zeros4``      uint32 [N, ceil(n4 / 8)]        zero points of the 4-bit groups, 4 bits each
``zeros2``      uint32 [N, ceil(n2 / 16)]       zero points of the 2-bit groups, 2 bits each
==============  ==============================  ================================================

Codes and zero points use the :func:`pack_codes` layout. Alignment: ``group_size`` must be a
multiple of 64, so a 2-bit group is ``gs / 4`` bytes (a multiple of 16: whole aligned 16-byte
loads) and a 4-bit group ``gs / 2`` bytes (a multiple of 32); every group of ``codes4`` and
``codes2`` starts at a multiple of 16 bytes from its row, and so does every row.

Bits per weight for K = 4096 (:func:`bits_table`, computed from :meth:`MixedFormat.array_layout`;
columns are the option ``frac_4bit``, the share actually kept is ``round(frac_4bit * G) / G``)::

    group_size  frac=0  frac=0.25  frac=0.425  frac=0.5  frac=1
            64  2.1758     2.6836      3.0430    3.1914  4.2070
           128  2.0898     2.5977      2.9805    3.0977  4.1055
           256  2.0508     2.5586      2.9336    3.0586  4.0586

At ``group_size=128``, ``frac_4bit=0.425`` a row of 4096 has 14 of 32 groups in 4 bits: 2.875
code bits, plus 0.0625 (scale codes), 0.03125 (zero points, rows padded to whole words),
0.0078 (group bits) and 0.0039 (fp16 row scale) = 2.9805.
"""
from __future__ import annotations

import numpy as np

from .base import Format, Option
from .group_kernel import quantize_groups
from .integer import int_asym_format
from .jit import njit
from .layout import packed, plain
from .packing import pack_codes, unpack_codes
from .scale_search import GroupLimits, GroupStats, ScaleCandidates, search_ratios, zero_threshold
from .scaled import CLIP_RATIOS, SCALE_SEARCH, TWO_STAGE_DECODE
from .scales import StoredScales, get_scale_type
from .unpacked import Unpacked
from .validate import RowScan, scan_of

ALIGN_ELEMENTS = 64  # 64 two-bit codes = 16 bytes, one aligned 16-byte (uint4 / LDG.128) load
FRAC_4BIT_DEFAULT = 0.425  # 0.425 * 4 + 0.575 * 2 = 2.85 bits, the paper's average code width
TWO_STAGE = {"scale_dtype": "int8", "scale_clamp": None}  # uint8 code x fp16 row scale (scales.py)
GROUP_ORDER = ("codes4 and zeros4 hold a row's 4-bit groups (group_bits set) in ascending group order, codes2 and "
               "zeros2 its 2-bit groups likewise; scales hold every group in group order")


def wide_count(groups: int, frac_4bit: float) -> int:
    """Number of 4-bit groups per row: ``round(frac_4bit * groups)`` (half to even)."""
    return round(frac_4bit * groups)


def select_wide(spread: np.ndarray, n4: int) -> np.ndarray:
    """Bool ``[rows, groups]``: the ``n4`` groups of each row with the widest ``spread`` (max - min).

    Equal spreads keep the lower group index first (stable sort).
    """
    order = np.argsort(-spread, axis=1, kind="stable")
    wide = np.zeros(spread.shape, dtype=bool)
    np.put_along_axis(wide, order[:, :n4], True, axis=1)
    return wide


def check_frac_4bit(frac) -> None:
    """``frac_4bit`` must be a number in [0, 1]."""
    if isinstance(frac, bool) or not isinstance(frac, (int, float)):
        raise TypeError(f"frac_4bit must be a number in [0, 1], got {frac!r}")
    if not 0 <= frac <= 1:
        raise ValueError(f"frac_4bit must be in [0, 1] (the share of 4-bit groups per row), got {frac!r}")


class MixedFormat(Format):
    """Memory-aligned mixed 2/4-bit groups chosen by range (see the module docstring).

    Members (rows of the unpacked value table): 0 the INT4 groups, 1 the INT2 groups.
    """

    family = "mixed"
    options = {"frac_4bit": Option(FRAC_4BIT_DEFAULT, "share of each row's groups, the widest-ranged, kept in "
                                                      "4 bits (the rest in 2)", validate=check_frac_4bit),
               "scale_search": SCALE_SEARCH, "clip_ratios": CLIP_RATIOS}

    def __init__(self):
        self.name = "mixed_2_4"
        self.wide, self.narrow = int_asym_format(4), int_asym_format(2)
        self.members = (self.wide, self.narrow)
        self.bits = self.wide.bits  # widest code; the average depends on frac_4bit (bits_table)
        self.description = ("range-aware mixed INT4/INT2 affine groups, 16-byte aligned, int8 x fp16 "
                            "two-stage scales (fast 2-bit LLM on GPUs)")
        self.defaults = {}

    def definition(self) -> dict:
        return {**super().definition(), "members": [m.definition() for m in self.members],
                "selection": "widest max-min range, ties to the lower group index", "scales": TWO_STAGE,
                "order": GROUP_ORDER}

    def member_table(self) -> np.ndarray:
        table = np.full((2, 2**self.bits), np.nan)
        for i, member in enumerate(self.members):
            table[i, :member.values.size] = member.values
        return table

    def encoding_fields(self) -> dict:
        return {"kind": "mixture", "members": [m.encoding_fields() for m in self.members]}

    def check_stored_structure(self, arrays: dict, layout: dict) -> None:
        """Every row marks the layout's number of 4-bit groups (from the :class:`FlagCountScan` the
        read ran where there is one)."""
        words, (groups, n4) = arrays["group_bits"], _flag_count(layout)
        scan = scan_of(words, *FlagCountScan.key_of(groups, n4))
        row = scan.row if scan is not None else _first_count_not(words, groups, n4)
        if row >= 0:
            count = int(_set_bits_per_row(words[row:row + 1], groups)[0])
            raise ValueError(f"array 'group_bits': row {row} marks {count} groups as 4-bit, expected {n4}")

    def structure_scans(self, layout: dict) -> dict:
        """The count of 4-bit groups of every row, tested as the rows are read."""
        return {"group_bits": [FlagCountScan(*_flag_count(layout))]}

    def check_group_size(self, group_size: int) -> None:
        super().check_group_size(group_size)
        if group_size % ALIGN_ELEMENTS:
            raise ValueError(f"{self.name} needs group_size a multiple of {ALIGN_ELEMENTS} (every 2-bit group "
                             f"one or more aligned 16-byte loads, every 4-bit group 32 bytes), got {group_size}")

    def _parts(self, groups: int, n4: int):
        """(array suffix, member index, element format, groups per row) of the 4-bit part, then the 2-bit."""
        return (("4", 0, self.wide, n4), ("2", 1, self.narrow, groups - n4))

    def array_layout(self, rows: int, cols: int, group_size: int, opts: dict) -> dict:
        groups = cols // group_size
        per_group = {"applies_to": "group", "group_size": group_size}
        layout = {"group_bits": packed("group_bits", np.uint32, rows, groups, 1, encoding="flag: 1 = member 0 (4-bit)",
                                       **per_group),
                  "scales": plain("scales", np.uint8, (rows, groups), encoding="int8", decode=TWO_STAGE_DECODE,
                                  **per_group),
                  "row_scales": plain("row_scales", np.float16, (rows, 1), applies_to="row", encoding="fp16")}
        for suffix, index, member, count in self._parts(groups, wide_count(groups, opts["frac_4bit"])):
            layout["codes" + suffix] = packed("codes", np.uint32, rows, count * group_size, member.bits,
                                              applies_to="element", encoding=member.name, member=index)
            layout["zeros" + suffix] = packed("zeros", np.uint32, rows, count, member.bits,
                                              encoding="uint", member=index, **per_group)
        return layout

    def quantize_arrays(self, w: np.ndarray, group_size: int, opts: dict) -> dict:
        rows, cols = w.shape
        groups = cols // group_size
        n4 = wide_count(groups, opts["frac_4bit"])
        x = w.reshape(rows * groups, group_size)
        stats = GroupStats(x)
        wide = select_wide((stats.high - stats.low).reshape(rows, groups), n4)
        is_wide = wide.ravel()
        ratios = search_ratios(opts)
        ideal, low = np.empty((2, len(ratios), rows * groups))
        for c, ratio in enumerate(ratios):
            (s4, lo4), (s2, lo2) = (stats.ideal_scale(member, ratio) for member in self.members)
            ideal[c], low[c] = np.where(is_wide, s4, s2), np.where(is_wide, lo4, lo2)
        scale_type = get_scale_type(TWO_STAGE["scale_dtype"])
        limits = GroupLimits(stats.absmax.reshape(1, rows, groups),
                             np.where(wide, zero_threshold(self.wide), zero_threshold(self.narrow))[None])
        candidates = ScaleCandidates.of(ideal.reshape(len(ratios), rows, groups), scale_type, TWO_STAGE["scale_clamp"],
                                        remedy=f"rescale W ({self.name}'s scales are 8-bit codes times an fp16 row scale)",
                                        limits=limits)
        best = np.zeros(rows * groups, dtype=np.int64)
        zeros = np.zeros(rows * groups, dtype=np.uint8)
        arrays = {"group_bits": pack_codes(wide.astype(np.uint8), 1)}
        for (suffix, _, member, count), mask in zip(self._parts(groups, n4), (is_wide, ~is_wide)):
            if count == 0:  # frac_4bit 0 or 1: nothing stored in this width
                arrays["codes" + suffix] = arrays["zeros" + suffix] = np.zeros((rows, 0), dtype=np.uint32)
                continue
            s = candidates.decoded[:, mask]
            offsets = np.clip(np.rint(-low[:, mask] / s), 0, 2**member.bits - 1)
            codes, best[mask] = quantize_groups(x[mask], member.rounding_tables, np.zeros(len(ratios), dtype=np.int64),
                                                s, offsets)
            zeros[mask] = offsets[best[mask], np.arange(count * rows)]
            arrays["codes" + suffix] = pack_codes(codes.reshape(rows, count * group_size), member.bits)
            arrays["zeros" + suffix] = pack_codes(zeros[mask].reshape(rows, count), member.bits)
        stored = candidates.winners(best)
        arrays["scales"], arrays["row_scales"] = stored.values, stored.row_scales
        return arrays

    def unpack(self, arrays: dict, shape: tuple, cols: int, group_size: int, opts: dict) -> Unpacked:
        rows = shape[0]
        groups = cols // group_size
        n4 = wide_count(groups, opts["frac_4bit"])
        wide = unpack_codes(arrays["group_bits"], 1, groups).astype(bool)
        counts = wide.sum(axis=1)
        if (counts != n4).any():
            row = int(np.flatnonzero(counts != n4)[0])
            raise ValueError(f"group_bits of row {row} mark {counts[row]} groups as 4-bit, expected {n4} "
                             f"(frac_4bit={opts['frac_4bit']} of {groups} groups)")
        codes = np.empty((rows, groups, group_size), dtype=np.uint8)
        zeros = np.empty((rows, groups), dtype=np.int16)
        for (suffix, _, member, count), mask in zip(self._parts(groups, n4), (wide, ~wide)):
            codes[mask] = unpack_codes(arrays["codes" + suffix], member.bits, count * group_size).reshape(-1, group_size)
            zeros[mask] = unpack_codes(arrays["zeros" + suffix], member.bits, count).ravel()
        scale_type = get_scale_type(TWO_STAGE["scale_dtype"])
        stored = StoredScales(arrays["scales"], arrays["row_scales"])
        return Unpacked(self, tuple(shape), codes.reshape(rows, cols), self.member_table(), scale_type.load(stored),
                        scale_type.name, stored.values, group_size, member=(~wide).astype(np.uint8),
                        member_scope="group", zeros=zeros, row_scales=stored.row_scales)


def bits_table(group_sizes=(64, 128, 256), fracs=(0, 0.25, 0.425, 0.5, 1.0), cols: int = 4096) -> str:
    """Text table of stored bits per weight of ``mixed_2_4``: a row per group size, a column per ``frac_4bit``.

    Computed from :meth:`MixedFormat.array_layout` through :meth:`Format.stored_bits_per_weight`
    (codes, group bits, scales, row scale and zero points of one row of ``cols`` weights; every
    row stores the same); ``print(bits_table())`` shows it.
    """
    fmt = MixedFormat()
    heads = [f"frac={frac:g}" for frac in fracs]
    lines = ["group_size  " + "  ".join(heads)]
    for group_size in group_sizes:
        cells = [f"{fmt.stored_bits_per_weight(1, cols, group_size, frac_4bit=frac):.4f}" for frac in fracs]
        lines.append(f"{group_size:>10}  " + "  ".join(c.rjust(len(h)) for c, h in zip(cells, heads)))
    return "\n".join(lines)


def _flag_count(layout: dict) -> tuple[int, int]:
    """``(groups, n4)``: the group flags of a row of ``layout`` and how many of them are set."""
    groups = layout["group_bits"].entries
    return groups, layout["codes4"].entries // layout["scales"].group_size if groups else 0


class FlagCountScan(RowScan):
    """A :class:`~hwlab.formats.validate.RowScan` of rows of group flags (``group_bits``) for a row
    whose first ``groups`` flags do not have exactly ``n4`` set; ``key`` is :meth:`key_of`."""

    def __init__(self, groups: int, n4: int):
        super().__init__(self.key_of(groups, n4))
        self._groups, self._n4 = groups, n4

    @staticmethod
    def key_of(groups: int, n4: int) -> tuple:
        """The ``key`` of the scan of rows of ``groups`` flags for a count other than ``n4``."""
        return "flag count", groups, n4

    def first_in(self, block: np.ndarray) -> int:
        """The first row of ``block`` (uint32 ``[rows, words]``) whose count is not ``n4`` (-1: none):
        :func:`_first_count_not`, compiled (one call, where numpy's popcount of each column of words
        took 0.1 ms of a load, its code out of cache after the read)."""
        return int(_first_count_not_compiled(block, self._groups, self._n4))


@njit(nogil=True)
def _first_count_not_compiled(words, entries, count):  # pragma: no cover - numba
    """:func:`_first_count_not` (numba; the set bits of a word counted in its halves, quarters, ...)."""
    full, tail = divmod(entries, 32)
    for r in range(words.shape[0]):
        n = 0
        for j in range(full + (tail > 0)):
            x = words[r, j] & np.uint32((1 << tail) - 1 if j == full else 0xFFFFFFFF)
            x = x - ((x >> 1) & np.uint32(0x55555555))
            x = (x & np.uint32(0x33333333)) + ((x >> 2) & np.uint32(0x33333333))
            x = (x + (x >> 4)) & np.uint32(0x0F0F0F0F)
            n += (x * np.uint32(0x01010101)) >> 24 & 0xFF
        if n != count:
            return r
    return -1


def _first_count_not(words: np.ndarray, entries: int, count: int) -> int:
    """The first row of ``words`` whose first ``entries`` bits do not have ``count`` set (-1: none)."""
    wrong = _set_bits_per_row(words, entries) != count
    return int(np.flatnonzero(wrong)[0]) if wrong.any() else -1


def _set_bits_per_row(words: np.ndarray, entries: int) -> np.ndarray:
    """How many of the first ``entries`` bits of every row of ``words`` (uint32 [rows, ceil(entries / 32)],
    bit ``g`` of a row in word ``g // 32``, bit ``g % 32``) are set; bits past ``entries`` are not counted.
    One ``np.bitwise_count`` per word where numpy has it (numpy >= 2), else the unpacked bits. The counts
    of a column of words are added column by column: a sum along rows of a few words each (numpy's
    reduction over a short inner axis, its counts cast to int64) took 0.12 ms for 4096 x 3 words, the
    columns 0.02 ms."""
    if not entries:
        return np.zeros(words.shape[0], np.int64)
    if not hasattr(np, "bitwise_count"):
        return unpack_codes(words, 1, entries).sum(axis=1)
    tail = entries % 32
    counts = np.bitwise_count(words[:, -1] & np.uint32((1 << tail) - 1) if tail else words[:, -1]).astype(np.int64)
    for word in range(words.shape[1] - 1):  # ceil(groups / 32) words a row: a few
        counts += np.bitwise_count(words[:, word])
    return counts
