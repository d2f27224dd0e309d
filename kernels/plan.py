"""How a GPU kernel reads one quantized tensor: a :class:`KernelPlan`, derived from the one door.

A plan is built from a tensor's layout descriptors (``qt.layout``) and its unpacked view
(``qt.unpacked()``) only, never from the format's name, so a user-defined lookup table or
minifloat gets a kernel with no code of its own. It says:

* how the codes are stored: ``words`` (a little-endian bit stream of ``bits``-bit codes in
  uint32 words, ``bits`` dividing 32), ``bits`` (the same stream with codes straddling words:
  3, 5, 6 or 7 bits), ``trit5`` (five ternary digits per byte) or ``mixed`` (``mixed_2_4``: a
  4-bit and a 2-bit stream, a flag per group);
* how a code becomes a value, chosen by checking candidate decodes against the value table of
  every code (exhaustively, so a plan that reads a code wrongly cannot be built):
  ``int``: ``((code ^ flip) - flip) * value_scale`` (integers, two's complement or unsigned),
  ``float``: a sign-magnitude minifloat whose bits, moved into an IEEE binary16, give the value
  times a power of two (``mbits`` mantissa bits, exponent width at most 5), and
  ``lut``: a table of every code of every member (always built; the fallback);
* which member (row of the table) a code reads: one, a per-group type id, OliVe's pair rule;
* zero points, and how the scales are stored: ``float`` (fp16 or fp32), ``bf16`` (raw bits),
  ``table`` (an 8-bit code looked up: E8M0, E4M3, int8 codes times a row scale, NF4 double
  quantization's dynamic map times a block absmax plus an offset), times ``value_scale``
  (NVFP4's tensor scale, the power of two of a normalised table).

The plan's own decode of the scales is compared with ``unpacked().scales`` when it is built.
Everything here is numpy; :mod:`hwlab.kernels.device` moves a tensor and its plan to torch.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from hwlab.formats.scales import StoredScales, get_scale_type
from hwlab.formats.scaled import TRIT_CODES

PACKINGS = ("words", "bits", "trit5", "mixed")
DECODES = ("int", "float", "lut")
MEMBER_RULES = ("none", "group", "pairs")
SCALE_KINDS = ("float", "bf16", "table")
FP16_MANTISSA_BITS, FP16_EXPONENT_BITS, FP16_BIAS = 10, 5, 15  # IEEE 754 binary16
DQ_RELATIVE_TOLERANCE = 2.0**-22  # NF4 double quantization: map * absmax + offset in float32 (2 roundings)


class PlanError(ValueError):
    """A quantized tensor whose stored layout no kernel plan can read (names what and why)."""


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    """What a kernel needs to read one quantized tensor (see the module docstring).

    ``arrays`` maps the kernel's operand names (``codes``, ``scales``, ``zeros``, ``members``,
    ``row_scales``, ``absmax``, and for ``mixed`` ``codes2``, ``zeros2``, ``group_bits``) to the
    names of the tensor's stored arrays. ``lut`` is float32 ``[members, table_size]`` (the
    value of every code divided by ``2**lut_exponent``; codes without a value read 0).
    ``scale_table`` is float32 ``[256]`` for ``scale_kind == "table"``.
    """

    format_name: str
    shape: tuple[int, int]
    padded_cols: int
    packing: str
    bits: int
    row_words: int  # stored words (bytes for trit5) per row of the codes array
    decode: str
    flip: int  # int decode: 2**(bits-1) for two's complement codes, 0 for unsigned
    mbits: int  # float decode: mantissa bits
    lut: np.ndarray
    member_rule: str
    member_bits: int  # bits of one packed type id (member_rule "group")
    victim_code: int  # member_rule "pairs"
    zero_bits: int  # bits of one packed zero point, 0 without zero points
    scale_kind: str
    scale_table: np.ndarray | None
    scale_rows: int  # 1 (one scale row for every row) or N
    groups: int  # scale entries per row
    elements_per_group: int
    has_row_scales: bool
    double_quant_block: int  # 0, or the groups per absmax block of NF4 double quantization
    double_quant_offset: float
    tensor_scale: float  # NVFP4's float32 tensor scale (1 elsewhere)
    decode_scale: float  # int and float decodes: value = decoded code * decode_scale (a power of two)
    lut_scale: float  # value = lut entry * lut_scale (a power of two)
    arrays: dict

    def value_scale(self, decode: str) -> float:
        """What a kernel reading codes with ``decode`` multiplies its sums by (exact powers of two);
        ``pairs`` (the table as 16-bit patterns, :func:`hwlab.kernels.device.pair_table`) reads :attr:`lut`."""
        return self.tensor_scale * (self.lut_scale if decode in ("lut", "pairs") else self.decode_scale)

    @functools.cached_property
    def half_exact(self) -> bool:
        """Whether every :attr:`lut` entry is a binary16 value (then 16-bit patterns give it exactly in float32)."""
        return bool(np.array_equal(self.lut.astype(np.float16).astype(np.float32), self.lut))

    @property
    def table_size(self) -> int:
        """Entries per member of :attr:`lut`."""
        return self.lut.shape[1]

    def describe(self) -> str:
        """One line: how the kernel reads this tensor."""
        parts = [f"{self.packing} {self.bits}-bit codes", f"{self.decode} decode"]
        if self.member_rule != "none":
            parts.append(f"members by {self.member_rule}")
        if self.zero_bits:
            parts.append(f"{self.zero_bits}-bit zero points")
        parts.append(f"{self.scale_kind} scales per {self.elements_per_group} elements")
        return f"{self.format_name}: " + ", ".join(parts)


def build_plan(qt) -> KernelPlan:
    """The :class:`KernelPlan` of quantized tensor ``qt`` (``PlanError`` if none can read it)."""
    layout, u = qt.layout, qt.unpacked()
    name = qt.format_name
    mixed = "group_bits" in layout
    codes_name = "codes4" if mixed else "codes"
    codes = _layout_of(layout, codes_name, name)
    bits = codes.bits
    if mixed:
        packing = "mixed"
    elif codes.packing == "trit5":
        packing = "trit5"
    elif codes.packing == "bits":
        packing = "words" if 32 % bits == 0 else "bits"
    else:
        raise PlanError(f"{name}: codes stored as {codes.packing!r}; kernels read 'bits' or 'trit5' packings")
    if bits > 8:
        raise PlanError(f"{name}: {bits}-bit codes; kernels read codes of at most 8 bits")
    values = np.asarray(u.values, dtype=np.float64)
    if packing == "trit5":  # the table is indexed by the stored digit, not the 2-bit code
        values = values[:, list(TRIT_CODES)]
    decode, flip, mbits, decode_scale = _choose_decode(values, bits, packing)
    lut, lut_exponent = _normalised_table(values)
    member_rule, member_bits, victim, arrays = "none", 0, 0, {"codes": codes_name}
    if u.member is not None and not mixed:
        if u.member_scope == "group":
            ids = _role(layout, "type_ids", name)
            member_rule, member_bits, arrays["members"] = "group", ids[1].bits, ids[0]
        else:
            definition = qt.format.definition()
            if "victim_code" not in definition or bits != 4:
                raise PlanError(f"{name}: members chosen per element by a rule kernels do not know "
                                "(they read per-group type ids and OliVe's 4-bit outlier-victim pairs)")
            member_rule, victim = "pairs", int(definition["victim_code"])
    zero_bits = 0
    if mixed:
        arrays.update(codes2="codes2", zeros="zeros4", zeros2="zeros2", group_bits="group_bits")
        zero_bits = layout["zeros4"].bits
    elif "zeros" in layout:
        zero_bits, arrays["zeros"] = layout["zeros"].bits, "zeros"
    scale = _scale_plan(u, layout, name)
    arrays.update(scale.pop("arrays"))
    plan = KernelPlan(name, tuple(qt.shape), u.padded_cols, packing, bits, codes.shape[1], decode, flip, mbits,
                      lut.astype(np.float32), member_rule, member_bits, victim, zero_bits,
                      tensor_scale=float(u.tensor_scale or 1.0), decode_scale=decode_scale,
                      lut_scale=2.0**lut_exponent, arrays=arrays, **scale)
    _check_scales(plan, qt, u)
    return plan


def _layout_of(layout: dict, name: str, fmt: str):
    if name not in layout:
        raise PlanError(f"{fmt}: no stored array {name!r} (it stores {sorted(layout)})")
    return layout[name]


def _role(layout: dict, role: str, fmt: str):
    found = [(n, a) for n, a in layout.items() if a.role == role]
    if len(found) != 1 or found[0][1].packing != "bits" or found[0][1].applies_to != "group":
        raise PlanError(f"{fmt}: expected one bit-packed per-group {role!r} array, found {[n for n, _ in found]}")
    return found[0]


def _choose_decode(values: np.ndarray, bits: int, packing: str) -> tuple[str, int, int, float]:
    """``(decode, flip, mbits, decode_scale)``: the cheapest decode that gives every valued code exactly."""
    known = np.isfinite(values)
    codes = np.arange(values.shape[1])
    if packing != "trit5":
        for flip in (0, 1 << (bits - 1)):
            ints = ((codes ^ flip) - flip).astype(np.float64)
            ratio = _power_of_two_ratio(values, ints, known)
            if ratio is not None:
                return "int", flip, 0, ratio
    if values.shape[0] == 1 and packing != "trit5":
        for mbits in range(min(bits - 1, FP16_MANTISSA_BITS) + 1):
            if bits - 1 - mbits > FP16_EXPONENT_BITS:
                continue
            ratio = _power_of_two_ratio(values, minifloat_in_fp16(codes, bits, mbits), known)
            if ratio is not None:
                return "float", 0, mbits, ratio
    return "lut", 0, 0, 1.0


def minifloat_in_fp16(codes: np.ndarray, bits: int, mbits: int) -> np.ndarray:
    """The binary16 value of sign-magnitude ``codes`` with their bits moved into binary16 fields.

    The sign (bit ``bits-1``) goes to bit 15 and the magnitude to bits ``10-mbits`` up, so the
    exponent field lands in binary16's low exponent bits and a subnormal stays subnormal: the value
    is the minifloat's times ``2**(15 - bias)``. The kernels compute the same bits."""
    codes = np.asarray(codes, dtype=np.uint32)
    sign = (codes >> (bits - 1)) & 1
    magnitude = codes & ((1 << (bits - 1)) - 1)
    half = (sign << 15) | (magnitude << (FP16_MANTISSA_BITS - mbits))
    return half.astype(np.uint16).view(np.float16).astype(np.float64)


def _power_of_two_ratio(values: np.ndarray, candidate: np.ndarray, known: np.ndarray) -> float | None:
    """``r``, a power of two, with ``values == r * candidate`` on every known entry of every member."""
    v, c = values[known], np.broadcast_to(candidate, values.shape)[known]
    if not np.isfinite(c).all():
        return None
    nonzero = np.flatnonzero(c)
    if nonzero.size == 0:
        return None
    ratio = v[nonzero[0]] / c[nonzero[0]]
    mantissa, _ = np.frexp(ratio)
    if ratio <= 0 or mantissa != 0.5 or not np.array_equal(v, c * ratio):
        return None
    return float(ratio)


def _normalised_table(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Values divided by ``2**e`` (exact) so the largest magnitude lies in [1, 2); unknown codes 0."""
    table = np.where(np.isfinite(values), values, 0.0)
    largest = np.abs(table).max()
    exponent = int(np.frexp(largest)[1]) - 1 if largest > 0 else 0
    return np.ldexp(table, -exponent), exponent


def _scale_plan(u, layout: dict, fmt: str) -> dict:
    scales = _layout_of(layout, "scales", fmt)
    rows, groups = u.scales.shape
    out = dict(scale_table=None, scale_rows=rows, groups=groups, elements_per_group=u.elements_per_group,
               has_row_scales=False, double_quant_block=0, double_quant_offset=0.0, arrays={"scales": "scales"})
    kind = u.scale_type
    if kind in ("fp16", "fp32"):
        out["scale_kind"] = "float"
    elif kind == "bf16":
        out["scale_kind"] = "bf16"
    elif kind in ("e8m0", "e4m3", "int8"):
        every_code = StoredScales(np.arange(256, dtype=np.uint8)[None, :], np.ones((1, 1), dtype=np.float16))
        table = get_scale_type(kind).load(every_code).ravel()
        out.update(scale_kind="table", scale_table=_finite_float32(table))
        if kind == "int8":
            out["has_row_scales"] = True
            out["arrays"]["row_scales"] = _layout_of(layout, "row_scales", fmt) and "row_scales"
    elif kind == "dynamic8" and u.second_level is not None:
        second = u.second_level
        out.update(scale_kind="table", scale_table=_finite_float32(second["map"]),
                   double_quant_block=int(second["block"]), double_quant_offset=float(second["offset"]))
        out["arrays"]["absmax"] = "scale_absmax"
    else:
        raise PlanError(f"{fmt}: scales stored as {kind!r} ({scales.encoding}); kernels read fp16, bf16, fp32, "
                        "e8m0, e4m3, int8 with row scales and NF4 double quantization")
    return out


def _finite_float32(table) -> np.ndarray:
    table = np.asarray(table, dtype=np.float64)
    return np.where(np.isfinite(table) & (np.abs(table) <= np.finfo(np.float32).max), table, 0.0).astype(np.float32)


def plan_scales(plan: KernelPlan, arrays: dict) -> np.ndarray:
    """The scales ``[scale_rows, groups]`` as the kernels compute them (float32 steps), in float64."""
    stored = np.asarray(arrays[plan.arrays["scales"]])
    if plan.scale_kind == "float":
        s = stored.astype(np.float32)
    elif plan.scale_kind == "bf16":
        s = (stored.astype(np.uint32) << 16).view(np.float32)
    else:
        s = plan.scale_table[stored.astype(np.intp)]
    if plan.double_quant_block:
        absmax = np.asarray(arrays[plan.arrays["absmax"]], dtype=np.float32).ravel()
        flat = np.arange(s.size).reshape(s.shape) // plan.double_quant_block
        s = s * absmax[flat] + np.float32(plan.double_quant_offset)
    if plan.has_row_scales:
        s = s * np.asarray(arrays[plan.arrays["row_scales"]], dtype=np.float32).reshape(-1, 1)
    return s.astype(np.float64)


def _check_scales(plan: KernelPlan, qt, u) -> None:
    """The plan's scales must be the unpacked view's (to float32 rounding of NF4's second level)."""
    mine = plan_scales(plan, qt.arrays) * plan.tensor_scale  # the unpacked scales have every stage applied
    tolerance = DQ_RELATIVE_TOLERANCE if plan.double_quant_block else 0.0
    if not np.allclose(mine, u.scales, rtol=tolerance, atol=0.0):
        bad = np.argwhere(~np.isclose(mine, u.scales, rtol=tolerance, atol=0.0))[0].tolist()
        raise PlanError(f"{plan.format_name}: the kernel plan reads scale {bad} as {mine[tuple(bad)]!r}, "
                        f"the unpacked view as {u.scales[tuple(bad)]!r}")
