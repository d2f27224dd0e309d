"""OliVe's 4-bit outlier-victim pair format ``olive4`` (Guo et al., ISCA 2023).

Source: the paper and the authors' code, clevercool/ANT-Quantization,
``olive_quantization/antquant/quant_modules.py`` (``int_value``, ``outlier_value``,
``search_mse``, ``_forward``) and ``ant_quantization/quant/quant_kernel.cu`` (rounding scan).

Values, in units of the group scale ``s`` (one int4 step):

* normal elements: int4 ``{0, +-1, ..., +-7}``, stored as two's-complement codes ``0..7, 9..15``
  (the authors' grid ``{0, +-4, ..., +-28}`` is four times this);
* outliers: "abfloat" E2M1 with exponent base, ``+-2**(E+3) * (1 + M/2)`` for the 3-bit
  magnitude index ``(E << 1) | M`` in ``1..7``, i.e. ``+-{12, 16, 24, 32, 48, 64, 96}`` (the
  authors' ``2**i * (1 + j/2)``, ``i`` in 5..8, ``j`` in 0..1, skipping ``i=5, j=0``, over 4);
  stored sign-magnitude (bit 3 = sign). Index 0 is never emitted.

Every element is rounded to the nearest value of the *union* of both grids (29 values), so an
element is an outlier iff ``|x/s| > 9.5`` (the midpoint of 7 and 12). Pairs are adjacent
elements ``(2k, 2k+1)`` along K. If the even element is an outlier the odd one is its victim;
else if the odd one is an outlier the even one is the victim; the victim is stored as the
unused int4 code ``0b1000`` and reads as 0, and its partner's code is read as an outlier code.
Both outliers: the even one keeps its value, the odd one is the victim (the authors'
``victim_odd`` / ``victim_even`` masks). Decoding is pairwise; no legal pair is ``(8, 8)``
(it decodes to ``(0, 0)``: outlier index 0 reads as 0, so every code stream decodes finitely).

Rounding: nearest on the union grid by the library's exact engine (an :class:`ElementFormat`
of 5-bit union codes: 0..15 the int4 codes, 16 + c the outlier code c), ties to the even
4-bit code: round-half-to-even on the int4 values, even mantissa between outliers (14 -> 16),
and at the 7 | 12 boundary, where both codes are odd, to the outlier (+-9.5 -> +-12), which
is also what the authors' CUDA scan does there. Elsewhere their scan (``<=`` over the ascending
grid) sends ties upward, so it differs where the even code is the lower value (0.5 -> 1 there,
0 here; 20 -> 24 there, 16 here); exact ties have measure zero on real weights. Beyond +-96
values saturate.

Scale (the authors' ``search_mse`` and ``_forward``, per group of ``group_size`` along K or per
row with ``granularity="channel"``): ``x_max = max(|mean + 3 std|, |mean - 3 std|)`` of the
group (``std`` with Bessel's correction, as ``torch.std``); candidates
``alpha = x_max * (i * 0.01)`` for ``i`` in ``range(75, 250, 2)`` (their ``--w_low=75
--w_up=250``); ``s = alpha / 7``, since the authors divide by ``max(quant_grid)``, the largest
*normal* value (28 on their grid, 7 int steps), so outliers reach ``96/7 * alpha``. Each ``s``
is rounded to ``scale_dtype`` (fp16 default) and the candidate with the least squared error
after the victim rule is kept (strict ``<``: the earliest wins a tie; errors summed in float64 in
the order of :func:`~hwlab.formats.group_kernel.sum_squares`, by the numpy reference and the numba
kernel :mod:`~hwlab.formats.olive_kernel` alike). An all-zero group gets
the scale dtype's least positive value, like every scaled format.

Stored arrays: ``codes`` (4-bit pair codes, ``uint32`` words along K, layout of
:mod:`hwlab.formats.packing`), ``scales`` ``[N, groups]`` in the scale dtype and, for
``scale_dtype="int8"``, ``row_scales``; 4 + 16/group_size bits per weight with fp16 scales.
"""
from __future__ import annotations

import numpy as np

from . import jit, olive_kernel
from .base import Format, Option, check_codes
from .element import ElementFormat
from .encodings import sign_magnitude_table
from .group_kernel import MemberTables, group_moments, quantize_groups, sum_squares
from .integer import int_format
from .layout import packed, plain
from .packing import pack_codes, unpack_codes
from .scale_search import GroupLimits, ScaleCandidates, zero_threshold
from .scaled import SCALE_DTYPE, TWO_STAGE_DECODE
from .scales import StoredScales, get_scale_type
from .unpacked import Unpacked
from .validate import check_packed_codes

VICTIM_CODE = 0b1000  # the int4 code of -8, never a normal value: marks the victim (OliVe, sec. 4)
# Outlier magnitudes by 3-bit index (E << 1) | M: 2**(E+3) * (1 + M/2); index 0 unused.
# quant_modules.py outlier_value(exp_bit=2, exp_base=5) over the int step 4 of int_value().
OUTLIER_MAGNITUDES = (0.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 96.0)
NORMAL_MAX = 7.0  # largest int4 value: the authors' scale is alpha / max(quant_grid) (= 28 / 4)
X_MAX_STDS = 3.0  # search_mse: x_max = max(|mean +- 3 std|)
ALPHA_PERCENTS = tuple(range(75, 250, 2))  # search_mse loop, --w_low=75 --w_up=250 (clm_run.sh)
PAIR_GRANULARITIES = ("group", "channel")
PAIR_RULE = ("elements (2k, 2k+1) along K pair up; an element whose partner holds victim_code reads "
             "outlier_values[code] (both victim_code: the odd one is the victim), every other one values[code]")


def _normal_values() -> np.ndarray:
    values = int_format(4).values.copy()
    values[VICTIM_CODE] = 0.0  # the victim reads as 0
    return values


class OliveFormat(Format):
    """OliVe 4-bit outlier-victim pairs: int4 normal values, abfloat outliers, searched scale.

    ``values`` (16, float64): the value of each code read as a normal element; code 8 (the
    victim) reads 0. ``outlier_values`` (16): the value of each code read as an outlier
    (sign-magnitude index into ``OUTLIER_MAGNITUDES``; codes 0 and 8 are never emitted and
    read 0). :meth:`member_table` stacks the two; :func:`pair_members` says which one each
    element of a pair reads. ``encode``/``decode`` work on pairs in units of the scale (see the
    module docstring). ``info`` describes the 29 values of the union grid. Options:
    ``granularity`` ('group' or 'channel') and ``scale_dtype``.
    """

    family = "outlier_victim"
    options = {"granularity": Option("group", "one searched scale per group of group_size along K, or per row",
                                     choices=PAIR_GRANULARITIES),
               "scale_dtype": SCALE_DTYPE}

    def __init__(self, name: str = "olive4"):
        self.name, self.bits = name, 4
        self.description = ("OliVe outlier-victim pairs (ISCA 2023): int4 normals, abfloat E2M1 "
                            "outliers +-{12..96}, neighbour of an outlier stored as victim 0b1000")
        self.defaults = {}
        self.values = _normal_values()
        self.outlier_values = sign_magnitude_table(OUTLIER_MAGNITUDES, negative_zero=0.0)
        for table in (self.values, self.outlier_values):
            table.setflags(write=False)
        # codes 16 and 24 are outlier index 0 (unused); code 8 is the victim
        self.union = ElementFormat(f"{name}_union", 5, np.concatenate([self.values, self.outlier_values]),
                                   family=self.family, description="OliVe normal and outlier values, "
                                   "5-bit union code: int4 code, or 16 + outlier code",
                                   unused_codes=(VICTIM_CODE, 16, 16 + VICTIM_CODE))
        self.info = self.union.info

    def definition(self) -> dict:
        return {**super().definition(), "values": [repr(float(v)) for v in self.values],
                "outlier_values": [repr(float(v)) for v in self.outlier_values],
                "pairs": PAIR_RULE, "victim_code": VICTIM_CODE,
                "rounding": self.union.rounding, "alpha_percents": list(ALPHA_PERCENTS),
                "x_max_stds": X_MAX_STDS, "normal_max": NORMAL_MAX}

    def member_table(self) -> np.ndarray:
        """Values of every code read as a normal element (member 0) and as an outlier (member 1)."""
        return np.stack([self.values, self.outlier_values])

    def check_stored_structure(self, arrays: dict, layout: dict) -> None:
        """No pair holds the victim code twice (the quantizer never writes one): read as a stream of
        8-bit entries, byte k of a row is pair k (codes 2k, 2k+1), and none may be 0x88."""
        check_packed_codes(arrays["codes"], 8, layout["codes"].entries // 2, np.arange(256) != VICTIM_CODE * 0x11,
                    "codes", f"{self.name} (a pair of two victim codes)")

    def encoding_fields(self) -> dict:
        return {"kind": "outlier_victim", "victim_code": VICTIM_CODE,
                "members": [{"kind": "integer", "bits": 4, "signed": True},
                            {"kind": "abfloat", "exp_bits": 2, "man_bits": 1, "exponent_base": 3}]}

    def check_group_size(self, group_size: int) -> None:
        """Groups hold whole pairs: ``group_size`` must be positive and even."""
        super().check_group_size(group_size)
        if group_size % 2:
            raise ValueError(f"group_size must be even for {self.name} (it pairs adjacent elements), "
                             f"got {group_size}")

    # --- element codes, in units of the scale -------------------------------------------------

    def encode(self, x) -> np.ndarray:
        """Pair codes (``uint8``, 0..15) of ``x`` (1-D or 2-D, even last axis), in scale units."""
        x = np.asarray(x)
        self._check_pairs(x.shape, "encode input")
        return pair_codes(self.union.encode(x))

    def decode(self, codes) -> np.ndarray:
        """Float32 values of pair codes (1-D or 2-D, even last axis), in scale units."""
        codes = check_codes(codes, self.bits, what=f"codes for {self.name}")
        self._check_pairs(codes.shape, "decode codes")
        return self._decode(codes).astype(np.float32)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        """Float64 values of integer pair codes ``[..., 2m]``: ``member_table()[pair_members, code]``."""
        return self.member_table()[pair_members(codes), codes]

    def _check_pairs(self, shape: tuple, what: str) -> None:
        if len(shape) not in (1, 2) or shape[-1] % 2:
            raise ValueError(f"{self.name}.{what}: expected a 1-D or 2-D array whose last axis has even "
                             f"length (adjacent elements form pairs), got shape {shape}")

    # --- quantizer scheme ---------------------------------------------------------------------

    def grouping(self, rows: int, cols: int, group_size: int, opts: dict) -> tuple[int, int]:
        """(groups per row, elements per group) for a ``rows x cols`` matrix."""
        return (1, cols) if opts["granularity"] == "channel" else (cols // group_size, group_size)

    def array_layout(self, rows: int, cols: int, group_size: int, opts: dict) -> dict:
        groups, _ = self.grouping(rows, cols, group_size, opts)
        scale = get_scale_type(opts["scale_dtype"])
        per = {"applies_to": "row", "group_size": None} if opts["granularity"] == "channel" else \
            {"applies_to": "group", "group_size": group_size}
        layout = {"codes": packed("codes", np.uint32, rows, cols, self.bits, applies_to="element", encoding=self.name),
                  "scales": plain("scales", scale.storage, (rows, groups), encoding=scale.name, bits=scale.bits,
                                  decode=TWO_STAGE_DECODE if scale.name == "int8" else None, **per)}
        if scale.name == "int8":
            layout["row_scales"] = plain("row_scales", np.float16, (rows, 1), applies_to="row", encoding="fp16")
        return layout

    def quantize_arrays(self, w: np.ndarray, group_size: int, opts: dict) -> dict:
        """Stored arrays of ``w [rows, cols]``: searched scale per group, then pair codes."""
        rows, cols = w.shape
        if cols % 2:
            raise ValueError(f"{self.name} pairs adjacent elements along K; K must be even, got K={cols}")
        groups, length = self.grouping(rows, cols, group_size, opts)
        x = w.reshape(rows * groups, length)
        mean, std = group_moments(x)
        x_max = np.maximum(np.abs(mean + X_MAX_STDS * std), np.abs(mean - X_MAX_STDS * std))
        ratios = np.array(ALPHA_PERCENTS, dtype=np.float64)[:, None] * 0.01
        ideal = (x_max * ratios / NORMAL_MAX).reshape(len(ALPHA_PERCENTS), rows, groups)
        absmax = np.abs(x).max(axis=1).astype(np.float64).reshape(1, rows, groups)
        limits = GroupLimits(absmax, zero_threshold(self.union))
        candidates = ScaleCandidates.of(ideal, get_scale_type(opts["scale_dtype"]), limits=limits)
        best_codes, best, _ = self._search(x, candidates.decoded)
        stored = candidates.winners(best)
        arrays = {"codes": pack_codes(best_codes.reshape(rows, cols), self.bits), "scales": stored.values}
        if stored.row_scales is not None:
            arrays["row_scales"] = stored.row_scales
        return arrays

    def _search(self, x: np.ndarray, scales: np.ndarray):
        """Pair codes ``uint8 [G, n]``, winning candidate ``[G]`` and its squared error (float64
        ``[G]``) of groups ``x`` under candidate scales ``scales``
        float64 ``[C, G]``: the least squared error after the pair rule, summed by
        :func:`sum_squares` (strict ``<``: the earliest wins a tie).
        The numba kernel (:mod:`~hwlab.formats.olive_kernel`) when enabled, else the reference."""
        tables = self.union.rounding_tables
        if not jit.USE_NUMBA:
            return self._search_reference(x, tables, scales)
        # union code of each sorted value (16 + c: outlier code c)
        return olive_kernel.search(x, tables.midpoints[0], tables.tie_up[0], tables.values[0], tables.codes[0],
                                   scales, VICTIM_CODE)

    def _search_reference(self, x: np.ndarray, tables: MemberTables, scales: np.ndarray):
        """Numpy float64 definition of :meth:`_search`, one candidate at a time over all groups."""
        x64 = x.astype(np.float64)
        member_of, no_offset = np.zeros(1, np.int64), np.zeros((1, x.shape[0]))
        best_sse = np.full(x.shape[0], np.inf)
        best = np.zeros(x.shape[0], dtype=np.intp)
        best_codes = np.zeros(x.shape, dtype=np.uint8)
        for c in range(scales.shape[0]):  # candidate scales, each rounded exactly
            union_codes, _ = quantize_groups(x, tables, member_of, scales[c:c + 1], no_offset)
            codes = pair_codes(union_codes)
            err = self._decode(codes)
            err *= scales[c][:, None]
            err -= x64
            sse = sum_squares(err)
            better = sse < best_sse
            best_sse[better], best[better] = sse[better], c
            np.copyto(best_codes, codes, where=better[:, None])
        return best_codes, best, best_sse

    def unpack(self, arrays: dict, shape: tuple, cols: int, group_size: int, opts: dict) -> Unpacked:
        rows = shape[0]
        groups, _ = self.grouping(rows, cols, group_size, opts)
        codes = unpack_codes(arrays["codes"], self.bits, cols)
        scale_type = get_scale_type(opts["scale_dtype"])
        stored = StoredScales(arrays["scales"], arrays.get("row_scales"))
        return Unpacked(self, tuple(shape), codes, self.member_table(), scale_type.load(stored).reshape(rows, groups),
                        scale_type.name, stored.values, group_size, opts["granularity"],
                        member=pair_members(codes), member_scope="element", row_scales=stored.row_scales)


def pair_members(codes: np.ndarray) -> np.ndarray:
    """Member of every element of pair codes ``[..., 2m]``: 1 where it reads as an outlier, else 0.

    An element is an outlier when its partner holds the victim code; with both codes the victim
    code, the even one is the "outlier" (index 0, which reads 0) and the odd one the victim.
    """
    codes = np.asarray(codes)
    even, odd = codes[..., 0::2], codes[..., 1::2]
    members = np.empty(codes.shape, dtype=np.uint8)
    members[..., 0::2] = odd == VICTIM_CODE
    members[..., 1::2] = (even == VICTIM_CODE) & (odd != VICTIM_CODE)
    return members


def pair_codes(union_codes: np.ndarray) -> np.ndarray:
    """4-bit pair codes from 5-bit union codes ``[..., 2m]`` (``< 16`` normal, ``16 + c`` outlier c)."""
    union_codes = np.asarray(union_codes, dtype=np.uint8)
    outlier = union_codes >= 16
    even_outlier, odd_outlier = outlier[..., 0::2], outlier[..., 1::2]
    codes = union_codes & np.uint8(15)
    codes[..., 0::2][odd_outlier & ~even_outlier] = VICTIM_CODE
    codes[..., 1::2][even_outlier] = VICTIM_CODE
    return codes
