"""The base of every datatype: :class:`Format`, its declared options, and the shared input checks.

This module imports nothing of the package but the pure :mod:`~hwlab.formats.decomposition`, so every other module (the registry first) can
import it without a cycle.

A :class:`Format` declares its quantizer options once, as :class:`Option` objects (default,
allowed values or a validator, help text); :meth:`Format.option_values` is the one place that
merges them with the format's own defaults and the user's values and checks them. The command
line reads the same declarations, so it offers each format exactly the options it has.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable

import numpy as np

from .decomposition import decompose


def check_format_name(name) -> None:
    """Format names are lower-case identifiers (letters, digits, ``_``): they key files and the registry."""
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f"format names must be lower-case identifiers (letters, digits, _), got {name!r}")


def check_description(description) -> None:
    """A format's description is a string (it is saved in files and shown by the CLI)."""
    if not isinstance(description, str):
        raise TypeError(f"a format's description must be a string, got {description!r:.100}")


def canonical(value):
    """An option value in the one form it is compared, stored and saved in: numpy scalars as Python
    numbers, sequences (lists, tuples, arrays) as tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(canonical(v) for v in value)
    return value


def check_choice(option: str, value, choices) -> None:
    """Raise ``ValueError`` unless option ``value`` is one of ``choices``."""
    if not any(isinstance(value, type(c)) and value == c for c in choices):
        raise ValueError(f"{option} must be one of {tuple(choices)}, got {value!r}")


def boolean(option: str) -> Callable[[Any], None]:
    """A validator: ``option`` must be ``True`` or ``False`` (``TypeError`` otherwise)."""
    def check(value) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{option} must be True or False, got {value!r}")
    return check


@dataclasses.dataclass(frozen=True)
class Option:
    """One quantizer option: its default, what it accepts and what it means.

    ``choices`` lists the accepted values (checked by type and value, so ``True`` is not ``1``);
    otherwise ``validate(value)`` raises ``ValueError``/``TypeError`` for a value it refuses.
    """

    default: Any
    help: str
    choices: tuple | None = None
    validate: Callable[[Any], None] | None = None

    def check(self, name: str, value, fmt_name: str) -> None:
        """Raise a clear error naming ``name``, ``fmt_name`` and what is accepted if ``value`` is refused."""
        try:
            if self.choices is not None:
                check_choice(name, value, self.choices)
            if self.validate is not None:
                self.validate(value)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{fmt_name}: {exc}") from None

    def describe(self) -> str:
        """``help (choices; default)`` for listings."""
        allowed = ", ".join(map(repr, self.choices)) if self.choices is not None else None
        return f"{self.help} ({'one of ' + allowed + '; ' if allowed else ''}default {self.default!r})"


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
    """Base of every registered datatype: a name, a width, its options and its stored layout.

    Subclasses: :class:`~hwlab.formats.element.ElementFormat` (a scalar type with a value table,
    quantized in scaled groups) and the schemes that combine element formats with per-group
    metadata (:class:`~hwlab.formats.mixture.MixtureFormat`, microscaling, mixed 2/4-bit,
    OliVe). Every format answers the same questions: which options it takes
    (:attr:`options`), what it stores (:meth:`array_layout`), how to quantize a matrix
    (:meth:`quantize_arrays`) and how to read the stored arrays back as one
    :class:`~hwlab.formats.unpacked.Unpacked` view (:meth:`unpack`), whose one generic decode
    is every format's dequantization.
    """

    name: str
    bits: int
    family: str
    description: str
    default_group_size: int = 128
    options: dict[str, Option] = {}  # quantizer options this format accepts
    defaults: dict = {}  # this format's own defaults for some of those options

    def declare_options(self, options: dict) -> None:
        """Set :attr:`options` to ``options`` with this format's own :attr:`defaults` applied, so that
        each option's ``default`` is the value a quantization without it uses."""
        unknown = sorted(set(self.defaults) - set(options))
        if unknown:
            raise ValueError(f"format {self.name!r}: defaults for undeclared options {unknown}")
        self.options = {k: dataclasses.replace(o, default=canonical(self.defaults[k])) if k in self.defaults else o
                        for k, o in options.items()}

    def option_values(self, user: dict) -> dict:
        """Effective options: the declared defaults, then ``user`` (canonical), each checked."""
        unknown = sorted(set(user) - set(self.options))
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} for format {self.name!r}; "
                             f"expected one of {sorted(self.options)}")
        opts = {**{k: o.default for k, o in self.options.items()}, **{k: canonical(v) for k, v in user.items()}}
        for key, option in self.options.items():
            option.check(key, opts[key], self.name)
        self.check_options(opts)
        return opts

    def check_options(self, opts: dict) -> None:
        """Raise ``ValueError`` for combinations of option values this format cannot honour."""

    def check_group_size(self, group_size: int) -> None:
        """Raise ``ValueError`` if this format cannot use ``group_size`` (any positive size by default)."""
        if group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {group_size}")

    def definition(self) -> dict:
        """JSON-able facts that pin down this format's numerics (saved with quantized tensors)."""
        return {"name": self.name, "bits": self.bits, "family": self.family}

    def fingerprint(self) -> str:
        """Short hash of :meth:`definition`: a loaded file must match the registered format.

        Computed once: a format's definition never changes (a new definition is a new format)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            text = json.dumps(self.definition(), sort_keys=True)
            cached = self.__dict__["_fingerprint"] = hashlib.sha256(text.encode()).hexdigest()[:16]
        return cached

    def member_table(self) -> np.ndarray:
        """Decoded value of every code of every member, float64 ``[members, 2**bits]``."""
        raise NotImplementedError

    def decomposition(self):
        """Sign, odd integer magnitude and power-of-two exponent of every code's value, or ``None``.

        Shaped like :meth:`member_table`, or like ``values`` (one row) where the format has one
        member; see
        :mod:`hwlab.formats.decomposition` for the rule and the fields.
        """
        table = self.member_table()
        if table.shape[0] == 1:  # one member: shaped like ``values``
            table = table[0]
        return decompose(table, self.bits, self.encoding_fields())

    def legal_codes(self) -> np.ndarray:
        """Bool ``[members, 2**bits]``: the codes the quantizer can emit, per member (a loaded file's
        codes are checked against it)."""
        return np.isfinite(self.member_table())

    def check_stored_structure(self, arrays: dict, layout: dict) -> None:
        """Raise ``ValueError`` for stored arrays that are well-formed but impossible for this format
        (a type id naming no member, say); :mod:`hwlab.formats.validate` checks codes and scales."""

    def structure_scans(self, layout: dict) -> dict:
        """Array name -> the :class:`~hwlab.formats.validate.RowScan` objects whose results
        :meth:`check_stored_structure` takes (:func:`~hwlab.formats.validate.scan_of`) where
        ``hwlab.load`` ran them on each block of rows as it read them; none by default."""
        return {}

    def encoding_fields(self) -> dict:
        """Family fields of the code layout that hardware uses (e.g. exponent and mantissa bits)."""
        return {"kind": "table"}

    def array_layout(self, rows: int, cols: int, group_size: int, opts: dict) -> dict:
        """Name -> :class:`~hwlab.formats.layout.ArrayLayout` of every array a quantized
        ``rows x cols`` matrix stores."""
        raise NotImplementedError

    def array_specs(self, rows: int, cols: int, group_size: int, opts: dict) -> dict:
        """Name -> (numpy dtype, shape) of every stored array (from :meth:`array_layout`)."""
        return {name: (np.dtype(a.dtype), a.shape)
                for name, a in self.array_layout(rows, cols, group_size, opts).items()}

    def stored_bits_per_weight(self, rows: int, cols: int, group_size: int | None = None, **options) -> float:
        """Bits per weight that quantizing a ``rows x cols`` matrix would store, without quantizing.

        Equal to ``quantize(W, self, group_size, **options).bits_per_weight`` for such a W.
        """
        opts = self.option_values(options)
        group_size = self.default_group_size if group_size is None else group_size
        self.check_group_size(group_size)
        specs = self.array_specs(rows, cols, group_size, opts)
        nbytes = sum(dtype.itemsize * int(np.prod(shape)) for dtype, shape in specs.values())
        return 8 * nbytes / (rows * cols)

    def quantize_arrays(self, w: np.ndarray, group_size: int, opts: dict) -> dict:
        """The stored arrays of ``w [rows, cols]`` (finite float32/float64)."""
        raise NotImplementedError

    def unpack(self, arrays: dict, rows: int, cols: int, group_size: int, opts: dict):
        """The :class:`~hwlab.formats.unpacked.Unpacked` view of stored arrays (``cols``: padded K)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.bits}-bit {self.family}>"


def as_float64(x, *, what: str) -> np.ndarray:
    """``x`` as a float64 array; NaN raises, non-numeric and bool arrays are refused."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
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
