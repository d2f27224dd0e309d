"""Element datatypes defined by their value table, and the one rounding engine they share.

Every scalar datatype in hwlab (integers, minifloats, lookup tables, BitMoD members, shift,
ternary) is an :class:`ElementFormat`: a table ``values`` with the decoded value of every code
(index = code), the set of codes the encoder may emit, and a rounding rule. Encoding is exact:
an input is compared against the midpoints between neighbouring representable values in
float64, so no rounding of ``x / scale`` can move a value across a midpoint.

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

import dataclasses
import hashlib
import json

import numpy as np

from .scaled import ScaledScheme, check_choice

ROUNDING_RULES = ("nearest_even", "nearest_down")
SCALINGS = ("absmax", "affine", "absmean")
MAX_TABLE_CODES = 256  # codes are stored in uint8


@dataclasses.dataclass(frozen=True)
class FormatInfo:
    """Numeric facts of an element format, in the format's own units (before any scale)."""

    max: float  # largest finite value
    min: float  # most negative finite value
    smallest_normal: float  # minifloats: 2**(1 - bias); other formats: smallest nonzero |v|
    smallest_subnormal: float | None  # minifloats with mantissa bits; None otherwise
    smallest_step: float  # least gap between two neighbouring finite values
    n_values: int  # distinct finite values the encoder can produce
    has_nan: bool
    has_inf: bool
    has_negative_zero: bool
    rounding: str


class Format:
    """Base of every registered datatype: a name, a width and what the quantizer needs.

    Subclasses: :class:`ElementFormat` (a scalar type with a value table) and the schemes in
    :mod:`hwlab.formats.schemes` (mixtures, microscaling, mixed 2/4-bit, OliVe) that combine
    element formats with per-group metadata.
    """

    name: str
    bits: int
    family: str
    description: str
    default_group_size: int = 128
    options: dict = {}  # quantizer options this format accepts, with their defaults
    defaults: dict = {}  # this format's own defaults for some of those options

    def option_values(self, user: dict) -> dict:
        """Effective options: scheme defaults, then this format's, then ``user`` (checked)."""
        unknown = sorted(set(user) - set(self.options))
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} for format {self.name!r}; "
                             f"expected one of {sorted(self.options)}")
        opts = {**self.options, **self.defaults, **user}
        self.check_options(opts)
        return opts

    def check_options(self, opts: dict) -> None:
        """Raise ``ValueError`` for option values this format cannot honour."""

    def check_group_size(self, group_size: int) -> None:
        """Raise ``ValueError`` if this format cannot use ``group_size`` (any positive size by default)."""
        if group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {group_size}")

    def definition(self) -> dict:
        """JSON-able facts that pin down this format's numerics (saved with quantized tensors)."""
        return {"name": self.name, "bits": self.bits, "family": self.family}

    def fingerprint(self) -> str:
        """Short hash of :meth:`definition`: a loaded file must match the registered format."""
        text = json.dumps(self.definition(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def array_specs(self, rows: int, cols: int, group_size: int, opts: dict) -> dict:
        """Name -> (numpy dtype, shape) of every array a quantized ``rows x cols`` matrix stores."""
        raise NotImplementedError

    def stored_bits_per_weight(self, rows: int, cols: int, group_size: int | None = None, **options) -> float:
        """Bits per weight that quantizing a ``rows x cols`` matrix would store, without quantizing.

        Equal to ``quantize(W, self, group_size, **options).bits_per_weight`` for such a W.
        """
        opts = self.option_values(options)
        group_size = self.default_group_size if group_size is None else group_size
        self.check_group_size(group_size)
        specs = self.array_specs(rows, cols, group_size, opts)
        nbytes = sum(np.dtype(dtype).itemsize * int(np.prod(shape)) for dtype, shape in specs.values())
        return 8 * nbytes / (rows * cols)

    def quantize_arrays(self, w: np.ndarray, group_size: int, opts: dict) -> dict:
        """The stored arrays of ``w [rows, cols]`` (finite float32/float64)."""
        raise NotImplementedError

    def dequantize_arrays(self, arrays: dict, rows: int, cols: int, group_size: int, opts: dict) -> np.ndarray:
        """Float32 ``[rows, cols]`` from stored arrays."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.bits}-bit {self.family}>"


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
    info_overrides:
        Family-specific facts for :class:`FormatInfo` (smallest normal and subnormal of a
        minifloat, for example).
    defaults:
        This format's defaults for quantizer options (e.g. ``{"granularity": "tensor"}``).
    """

    def __init__(self, name: str, bits: int, values, *, family: str, description: str,
                 rounding: str = "nearest_even", unused_codes=(), scaling: str = "absmax",
                 info_overrides: dict | None = None, defaults: dict | None = None):
        if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
            raise ValueError(f"bits must be an integer in 1..8 for an element format, got {bits!r}")
        values = np.array(values, dtype=np.float64)
        if values.shape != (2**bits,):
            raise ValueError(
                f"format {name!r}: values must have 2**bits = {2**bits} entries (one per code), "
                f"got shape {values.shape}")
        check_choice("rounding", rounding, ROUNDING_RULES)
        check_choice("scaling", scaling, SCALINGS)
        self.name, self.bits, self.family, self.description = name, int(bits), family, description
        self.rounding, self.scaling = rounding, scaling
        values.setflags(write=False)
        self.values = values
        emit = np.isfinite(values)
        for code in unused_codes:
            if not 0 <= code < 2**bits:
                raise ValueError(f"format {name!r}: unused code {code} is not in 0..{2**bits - 1}")
            emit[code] = False
        self._table = _RoundingTable.build(values, emit, rounding, name)
        self.encodable = emit
        self.info = self._make_info(info_overrides or {})
        self.members = (self,)
        self.defaults = dict(defaults or {})

    def definition(self) -> dict:
        return {**super().definition(), "values": [repr(float(v)) for v in self.values],
                "encodable": self.encodable.astype(int).tolist(), "rounding": self.rounding,
                "scaling": self.scaling, "defaults": {k: repr(v) for k, v in sorted(self.defaults.items())}}

    def _make_info(self, overrides: dict) -> FormatInfo:
        finite = self._table.sorted_values
        nonzero = np.abs(finite[finite != 0])
        facts = dict(
            max=float(finite[-1]), min=float(finite[0]),
            smallest_normal=float(nonzero.min()) if nonzero.size else 0.0,
            smallest_subnormal=None,
            smallest_step=float(np.diff(finite).min()) if finite.size > 1 else 0.0,
            n_values=int(finite.size),
            has_nan=bool(np.isnan(self.values).any()),
            has_inf=bool(np.isinf(self.values).any()),
            has_negative_zero=self._table.negative_zero_code >= 0,
            rounding=self.rounding,
        )
        facts.update(overrides)
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
        x = _as_float64(x, what=f"input to {self.name}.encode")
        if overflow not in ("saturate", "nonfinite"):
            raise ValueError(f"overflow must be 'saturate' or 'nonfinite', got {overflow!r}")
        codes = self._table.encode(x)
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
        table = self._table
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


@dataclasses.dataclass(frozen=True)
class _RoundingTable:
    """Sorted distinct encodable values, the midpoints between them and the tie direction.

    ``encode`` finds, for each input, how many midpoints lie strictly below it; an input equal
    to a midpoint moves up when ``tie_up`` says so. This is the single rounding engine of every
    element format, and the numba group quantizer runs the same table (scaled per group).
    """

    sorted_values: np.ndarray  # float64, ascending, distinct
    sorted_codes: np.ndarray  # uint8 code of each sorted value (+0 for zero)
    midpoints: np.ndarray  # float64, len = len(sorted_values) - 1
    tie_up: np.ndarray  # bool, a tie at midpoints[i] goes to sorted_values[i + 1]
    negative_zero_code: int  # -1 when the format has no -0 code

    @classmethod
    def build(cls, values: np.ndarray, emit: np.ndarray, rounding: str, name: str):
        codes = np.flatnonzero(emit)
        if codes.size == 0:
            raise ValueError(f"format {name!r} has no finite encodable value")
        vals = values[codes]
        negative_zero = codes[(vals == 0) & np.signbit(vals)]
        keep = ~((vals == 0) & np.signbit(vals))  # -0 merges into +0 for rounding
        codes, vals = codes[keep], vals[keep]
        order = np.argsort(vals, kind="stable")
        codes, vals = codes[order], vals[order]
        duplicates = np.flatnonzero(np.diff(vals) == 0)
        if duplicates.size:
            v = vals[duplicates[0]]
            raise ValueError(f"format {name!r}: value {v} appears at codes "
                             f"{codes[duplicates[0]]} and {codes[duplicates[0] + 1]}; mark one unused")
        if negative_zero.size and not (vals == 0).any():
            raise ValueError(f"format {name!r} has a -0 code but no +0 code")
        midpoints = (vals[:-1] + vals[1:]) / 2  # exact: float64 values of <= 53 bits
        if rounding == "nearest_down":
            tie_up = np.zeros(midpoints.size, dtype=bool)
        else:
            lo_even, hi_even = codes[:-1] % 2 == 0, codes[1:] % 2 == 0
            tie_up = np.where(lo_even == hi_even, vals[1:] > 0, hi_even)
        return cls(vals, codes.astype(np.uint8), midpoints, tie_up,
                   int(negative_zero[0]) if negative_zero.size else -1)

    def encode(self, x: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.midpoints, x, side="left")
        at = np.minimum(idx, self.midpoints.size - 1)
        tie = (idx < self.midpoints.size) & (x == self.midpoints[at]) & self.tie_up[at]
        codes = self.sorted_codes[idx + tie]
        if self.negative_zero_code >= 0:
            codes = np.where((self.sorted_values[idx + tie] == 0) & np.signbit(x),
                             np.uint8(self.negative_zero_code), codes)
        return codes


def _as_float64(x, *, what: str) -> np.ndarray:
    """``x`` as a float64 array; NaN raises, integer and bool arrays are refused."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
        raise TypeError(f"{what} must be a real numeric array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{what} contains NaN at index {np.argwhere(np.isnan(arr))[0].tolist()}; "
                         "NaN has no code (expected finite values)")
    return arr


def check_codes(codes, bits: int, *, what: str) -> np.ndarray:
    """``codes`` as an integer array whose entries all lie in ``0..2**bits-1``, else ``ValueError``."""
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be an integer array, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= 2**bits):
        bad = arr[(arr < 0) | (arr >= 2**bits)].ravel()[0]
        raise ValueError(f"{what}: code {bad} is out of range 0..{2**bits - 1} for {bits}-bit codes")
    return arr.astype(np.intp)
