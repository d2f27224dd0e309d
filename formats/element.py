"""Element datatypes defined by their value table, rounded by the one engine they share.

Every scalar datatype in hwlab (integers, minifloats, lookup tables, BitMoD members, shift,
ternary) is an :class:`ElementFormat`: a table ``values`` with the decoded value of every code
(index = code), the set of codes the encoder may emit, and a rounding rule. Encoding is exact:
an input is compared against the midpoints between neighbouring representable values in
float64 (:class:`~hwlab.formats.rounding.RoundingTable`), so no rounding of ``x / scale`` can
move a value across a midpoint. Element formats are quantized in scaled groups
(:mod:`hwlab.formats.scaled`).

Rounding rules (``ElementFormat.rounding``):

``"nearest_even"``
    Round to nearest; a tie goes to the even code. For sign-magnitude minifloats this is IEEE
    round-to-nearest-even on the mantissa (the exponent LSB for formats without mantissa
    bits); for integers it is round-half-to-even on the value. A tie between two codes of the
    same parity (only ``-v, +v`` around zero in zero-free formats) goes to the positive one.
``"nearest_down"``
    Round to nearest; a tie goes to the lower value (towards -inf). This is what an
    ``argmin(|x - grid|)`` over an ascending grid does: the BitMoD authors' quantizer, and
    bitsandbytes' NF4 decision tree (strict ``x > midpoint``).
"""
from __future__ import annotations

import ast

import numpy as np

from .base import Format, FormatInfo, check_choice, check_codes, check_description, check_format_name
from .encodings import check_fields
from .rounding import RoundingTable
from .scaled import TRIT_CODES, ScaledScheme, scaled_options

ROUNDING_RULES = ("nearest_even", "nearest_down")
SCALINGS = ("absmax", "affine", "absmean")
ELEMENT_FAMILIES = ("integer", "minifloat", "lookup", "bitmod", "shift", "ternary", "outlier_victim")
MAX_TABLE_CODES = 256  # codes are stored in uint8
_EXTENDED_BY: dict[str, type] = {}  # definition key -> the ElementFormat subclass that writes it (__init_subclass__)
FLOAT32_MAX = float(np.finfo(np.float32).max)  # weights are dequantized to float32
# No float32 weight (>= 2**-149) reaches a table whose largest magnitude is below this under a scale
# that a scale dtype holds (fp32, the widest, stops at FLOAT32_MAX).
LEAST_USABLE_MAX = float(np.finfo(np.float32).smallest_subnormal) / FLOAT32_MAX


def check_element_bits(bits) -> int:
    """``bits`` as an int in 1..8 (an element code is stored in a byte), else ``ValueError``."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8 for an element format, got {bits!r}")
    return int(bits)


def _unused_code_list(name: str, unused_codes, bits: int) -> list[int]:
    """``unused_codes`` as a list of codes in ``0..2**bits-1`` (``TypeError``/``ValueError`` otherwise)."""
    try:
        codes = list(unused_codes)
    except TypeError:
        raise TypeError(f"format {name!r}: unused_codes must be a sequence of integer codes, got {unused_codes!r:.100}") \
            from None
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, (int, np.integer)):
            raise TypeError(f"format {name!r}: unused code {code!r:.50} is not an integer code")
        if not 0 <= code < 2**bits:
            raise ValueError(f"format {name!r}: unused code {code} is not in 0..{2**bits - 1}")
    return [int(c) for c in codes]


def _check_usable(name: str, values: np.ndarray, emit: np.ndarray) -> None:
    """Refuse a table that no scale can map float32 weights onto: values beyond the float32 range
    (they decode to inf), no nonzero encodable value, or a largest magnitude so small that every
    scale would overflow (:data:`LEAST_USABLE_MAX`)."""
    finite = values[np.isfinite(values)]
    if (np.abs(finite) > FLOAT32_MAX).any():
        raise ValueError(f"format {name!r}: value {finite[np.abs(finite) > FLOAT32_MAX][0]:.6g} is beyond the float32 "
                         f"range (+-{FLOAT32_MAX:.6g}) that weights are decoded in; scale the table down (a minifloat: "
                         "a larger bias)")
    usable = np.abs(values[emit])
    if usable.size and not (usable > 0).any():  # no encodable value at all: the rounding table says so
        raise ValueError(f"format {name!r} can emit only zero (its encodable values are {sorted(set(values[emit].tolist()))}); "
                         "a scale cannot map weights onto it: leave a nonzero code out of unused_codes")
    if usable.size and usable.max() < LEAST_USABLE_MAX:
        raise ValueError(f"format {name!r}: its largest magnitude, {usable.max():.6g}, is so small that no float32 weight "
                         f"can be mapped onto it (the scale would pass {FLOAT32_MAX:.6g}, the largest any scale dtype "
                         "holds); scale the table up (a minifloat: a smaller bias)")


class ElementFormat(ScaledScheme, Format):
    """A scalar datatype defined by the decoded value of each of its ``2**bits`` codes.

    Parameters
    ----------
    name, family, description:
        Registry name, family label and a one-line description with the source.
    bits:
        Code width, 1..8.
    values:
        Decoded value of every code (length ``2**bits``; NaN and +-inf allowed for codes that
        the encoder never emits).
    rounding:
        One of :data:`ROUNDING_RULES`.
    unused_codes:
        Codes that decode to a value but are never produced by :meth:`encode` (e.g. -8 of a
        symmetric INT4, whose range is +-7). NaN and inf codes are never produced anyway.
    scaling:
        How the group quantizer derives a scale: ``"absmax"`` (scale = max|w| / max|values|),
        ``"affine"`` (scale and integer zero point from min and max, codes are the values),
        ``"absmean"`` (scale = mean|w|, BitNet b1.58).
    defaults:
        This format's defaults for quantizer options (e.g. ``{"granularity": "tensor"}``).
    fields:
        The code layout's family fields, for hardware and for rebuilding the format from a
        saved file: ``{"kind": "minifloat", "exp_bits", "man_bits", "bias", "semantics"}``,
        ``{"kind": "integer", "bits", "signed"}``, or ``{"kind": "table"}`` (the default).
    """

    def __init__(self, name: str, bits: int, values, *, family: str, description: str,
                 rounding: str = "nearest_even", unused_codes=(), scaling: str = "absmax",
                 defaults: dict | None = None, fields: dict | None = None):
        bits = check_element_bits(bits)
        values = np.array(values, dtype=np.float64)
        if values.shape != (2**bits,):
            raise ValueError(
                f"format {name!r}: values must have 2**bits = {2**bits} entries (one per code), "
                f"got shape {values.shape}")
        check_format_name(name)
        check_description(description)
        check_choice("family", family, ELEMENT_FAMILIES)
        check_choice("rounding", rounding, ROUNDING_RULES)
        check_choice("scaling", scaling, SCALINGS)
        self.name, self.bits, self.family, self.description = name, bits, family, description
        self.rounding, self.scaling = rounding, scaling
        values.setflags(write=False)
        self.values = values
        emit = np.isfinite(values)
        emit[_unused_code_list(name, unused_codes, bits)] = False
        emit.setflags(write=False)
        _check_usable(name, values, emit)
        self.rounding_table = RoundingTable.build(values, emit, rounding, name)
        self.encodable = emit
        fields = {"kind": "table"} if fields is None or fields == {} else fields
        if isinstance(fields, dict):  # numpy scalars (np.int64 widths) as the Python numbers files store
            fields = {k: v.item() if isinstance(v, np.generic) else v for k, v in fields.items()}
        self.fields = fields
        try:
            check_fields(self.fields, bits, values)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"format {name!r}: {exc}") from None
        self.info = self._make_info()
        self.members = (self,)
        self.defaults = dict(defaults or {})
        trits = bits == 2 and set(np.flatnonzero(emit)) <= set(TRIT_CODES)
        self.declare_options(scaled_options(("bits", "trit5") if trits else ("bits",)))

    def __init_subclass__(cls, extends_definition: str | None = None, **kwargs):
        """A subclass whose :meth:`definition` adds the key ``extends_definition`` is the class that
        :meth:`from_definition` rebuilds a definition holding that key with."""
        super().__init_subclass__(**kwargs)
        if extends_definition is not None:
            _EXTENDED_BY[extends_definition] = cls

    def definition(self) -> dict:
        return {**super().definition(), "values": [repr(float(v)) for v in self.values],
                "encodable": self.encodable.astype(int).tolist(), "rounding": self.rounding,
                "scaling": self.scaling, "defaults": {k: repr(v) for k, v in sorted(self.defaults.items())},
                "fields": self.fields}

    @classmethod
    def from_definition(cls, definition: dict, description: str) -> "ElementFormat":
        """The element format a :meth:`definition` describes (as saved in a file)."""
        if not all(isinstance(v, str) for v in definition["values"]):
            raise ValueError("'values' must be a list of number strings")
        values = np.array([float(v) for v in definition["values"]])
        encodable = np.asarray(definition["encodable"], dtype=bool)
        if encodable.shape != values.shape:
            raise ValueError("definition: 'encodable' and 'values' differ in length")
        cls = next((sub for key, sub in _EXTENDED_BY.items() if key in definition), cls)  # nf4: double_quant
        return cls(definition["name"], definition["bits"], values, family=definition["family"],
                   description=description, rounding=definition["rounding"],
                   unused_codes=np.flatnonzero(np.isfinite(values) & ~encodable), scaling=definition["scaling"],
                   defaults={k: ast.literal_eval(v) for k, v in definition["defaults"].items()},
                   fields=definition["fields"])

    def encoding_fields(self) -> dict:
        return dict(self.fields)

    def _make_info(self) -> FormatInfo:
        finite = self.rounding_table.sorted_values
        nonzero = np.abs(finite[finite != 0])
        facts = dict(
            max=float(finite[-1]), min=float(finite[0]),
            smallest_normal=float(nonzero.min()) if nonzero.size else 0.0,
            smallest_subnormal=None,
            smallest_step=float(np.diff(finite).min()) if finite.size > 1 else 0.0,
            n_values=int(finite.size),
            has_nan=bool(np.isnan(self.values).any()),
            has_inf=bool(np.isinf(self.values).any()),
            has_negative_zero=self.rounding_table.negative_zero_code >= 0,
            rounding=self.rounding,
        )
        if self.fields["kind"] == "minifloat":  # IEEE facts from the fields
            bias, man_bits = self.fields["bias"], self.fields["man_bits"]
            facts["smallest_normal"] = 2.0 ** (1 - bias)
            facts["smallest_subnormal"] = 2.0 ** (1 - bias - man_bits) if man_bits else None
        return FormatInfo(**facts)

    @property
    def max_abs(self) -> float:
        """Largest finite magnitude: the divisor of an absmax scale."""
        return max(abs(self.info.max), abs(self.info.min))

    def encode(self, x, *, overflow: str = "saturate") -> np.ndarray:
        """Nearest code of every element of ``x`` (any real dtype), as ``uint8``.

        ``overflow="saturate"`` (default, what a quantizer wants) clamps out-of-range inputs
        (and +-inf) to the largest finite value of the same sign. ``overflow="nonfinite"``
        follows the IEEE/OCP cast for types with inf or NaN (what ml_dtypes does): an input
        that rounds past the largest finite value becomes inf (e5m2) or NaN (e4m3fn); types
        with neither still saturate. NaN inputs raise ``ValueError``. Negative inputs that
        round to zero give the ``-0`` code where the format has one.
        """
        if overflow not in ("saturate", "nonfinite"):
            raise ValueError(f"overflow must be 'saturate' or 'nonfinite', got {overflow!r}")
        x = np.asarray(x)
        if x.dtype.kind not in "fiu":
            raise TypeError(f"input to {self.name}.encode must be a real numeric array, got dtype {x.dtype}")
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float64)  # exact for every integer and narrower float
        codes = self.rounding_table.encode(x, what=f"input to {self.name}.encode")
        if overflow == "nonfinite":
            codes = self._apply_nonfinite_overflow(x, codes)
        return codes

    def decode(self, codes) -> np.ndarray:
        """Decoded value of every code, as float32. Codes outside ``0..2**bits-1`` raise."""
        codes = check_codes(codes, self.bits, what=f"codes for {self.name}")
        return self.values.astype(np.float32)[codes]

    def _apply_nonfinite_overflow(self, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
        if not (self.info.has_inf or self.info.has_nan):
            return codes
        table = self.rounding_table
        top, top_code = table.sorted_values[-1], int(table.sorted_codes[-1])
        # The IEEE cast rounds towards the next value past max (as if the exponent range went
        # on: max plus the step of the top binade), which is inf or NaN; exactly at the
        # midpoint, round-to-nearest-even keeps max only if its code (mantissa) is even.
        midpoint = top + (top - table.sorted_values[-2]) / 2
        over = (np.abs(x) > midpoint) | ((np.abs(x) == midpoint) & (top_code % 2 == 1))
        special = np.flatnonzero(np.isinf(self.values) if self.info.has_inf else np.isnan(self.values))
        sign_bit = special >> (self.bits - 1)  # sign-magnitude layout: the top bit is the sign
        codes = codes.copy()
        codes[over & (x > 0)] = special[sign_bit == 0][0]
        codes[over & (x < 0)] = special[sign_bit == 1][0]
        return codes
