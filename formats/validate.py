"""Every stored value of a quantized tensor is one its format can produce.

:func:`check_stored` is run on every loaded file (after the checksums, which catch corruption;
this catches arrays that a foreign writer or a hand edit made consistent but impossible) and
raises ``ValueError`` naming the array and the offending entry:

* element codes are codes the quantizer emits (no int4 code 8, no ternary code 2, no NaN code
  of ``fp8_e4m3``, no OliVe pair of two victims); type ids name a member; ``mixed_2_4`` marks the
  same number of 4-bit groups in every row;
* scales decode to finite positive numbers (E8M0 code 255 is NaN; int8 scale codes are 1..255;
  NVFP4's tensor scale and the row scales too); NF4 double quantization's second-level scales are
  finite;
* the zero bits that pad the last word of every packed row are zero (``trit5``: every byte a group
  of 5 trits, the padding trits zero), and the zero columns of a ``pad=True`` tensor decode to zero;
* NF4 double quantization's ``scale_absmax`` and ``scale_offset`` are not negative, and scales
  quantized under a ``scale_clamp`` lie within it.

The code scan runs on the packed words (numba, no copy: a word-wide has-zero-field test where codes
never span words, a test of every bit position against the forbidden code's bits where they do;
:class:`CodeScan`), and stored scales are tested in one pass over their bits (:func:`first_outside`,
:class:`ValueScan`). ``hwlab.load`` runs both, the test of the padding bits (:class:`PaddingScan`)
and the format's structure scans (:meth:`~hwlab.formats.Format.structure_scans`) on each block of
rows as it reads them, while the block is in cache, on whichever of its two reading threads read
the block (:func:`read_scans` says which scans :func:`check_stored` will ask for), and
:func:`check_stored` then uses those results instead of scanning again.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import numpy as np

from . import jit
from .jit import njit
from .packing import TRITS_PER_BYTE, WORD_BITS, packed_words, unpack_codes
from .scale_search import clamp_bounds
from .scales import SCALE_TYPES, StoredScales, get_scale_type

E8M0_NAN = 255  # OCP MX v1.0: the E8M0 code of NaN
ALL_ONES = 0xFFFFFFFF  # a 32-bit word of ones
SCALE_ROLES = ("scales", "row_scales", "tensor_scale", "scale_absmax", "scale_offset")  # checked by check_scale_array
# (id of the array, *scan.key) -> the CodeScan or ValueScan that the read already ran over all of it
_SCANNED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("hwlab_scanned", default=None)


def check_stored(qt, scanned: dict | None = None) -> None:
    """Raise ``ValueError`` unless every array of ``qt`` holds only values its format can produce.

    ``scanned``: array name -> the scans (:class:`RowScan` and :class:`ValueScan` objects) already
    run over all of its rows (what :func:`read_scans` gave, after the read ran them); a scan asked
    for again uses their result.
    """
    layout, arrays = qt.layout, qt.arrays
    results = {(id(arrays[name]), *scan.key): scan for name, scans in (scanned or {}).items() for scan in scans}
    with _scans_done(results):
        _check_stored(qt, layout, arrays)


@contextlib.contextmanager
def _scans_done(results: dict):
    """Within: :func:`check_packed_codes` and the tests of stored scales take what they look for from
    ``results`` where a scan there found it (:func:`scan_of`)."""
    token = _SCANNED.set(results)
    try:
        yield
    finally:
        _SCANNED.reset(token)


def _check_stored(qt, layout: dict, arrays) -> None:
    for name, a in layout.items():
        if a.packing == "bits":
            check_padding_bits(arrays[name], a.entries, a.bits, name)
        elif a.packing == "trit5":
            check_trit_bytes(arrays[name], a.entries, name)
    fmt = qt.format
    legal = legal_codes(fmt)
    for name, bits, entries, allowed in code_tests(layout, legal):
        check_packed_codes(arrays[name], bits, entries, allowed, name, fmt.name)
    if legal.shape[0] > 1 and "type_ids" in layout and not (legal == legal[0]).all():
        u = qt.unpacked()  # members differ in what they emit: check each code against its own member
        bad = ~legal[u.element_members(), u.codes]
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"array 'codes': code {u.codes[row, col]} at [{row}, {col}] is never emitted by member "
                             f"{u.element_members()[row, col] if u.member is not None else 0} of {fmt.name}")
    for name, a in layout.items():
        if a.role in SCALE_ROLES:
            check_scale_array(arrays[name], a.encoding, name, arrays)
    fmt.check_stored_structure(arrays, layout)
    clamp = qt.options.get("scale_clamp")
    if clamp is not None and layout["scales"].encoding in SCALE_TYPES:
        check_scales_within_clamp(arrays["scales"], arrays.get("row_scales"), layout["scales"].encoding, clamp)
    if qt.padded_cols > qt.shape[1]:
        padding = qt.unpacked().element_values()[:, qt.shape[1]:]
        if (padding != 0).any():
            row, col = np.argwhere(padding != 0)[0]
            raise ValueError(f"the zero padding past K={qt.shape[1]} holds {padding[row, col]} at row {row}, column "
                             f"{qt.shape[1] + col} (a shape edited to drop columns?)")


def code_tests(layout: dict, legal: np.ndarray):
    """``(array, bits, entries, allowed codes)`` of every packed code array of ``layout``; ``legal``
    is the format's :meth:`~hwlab.formats.Format.legal_codes` (a mixture's codes: allowed when some
    member emits them; :func:`check_stored` checks each against its own member after)."""
    for name, a in layout.items():
        if a.role == "codes" and a.packing == "bits":
            allowed = legal[a.member or 0] if legal.shape[0] == 1 or a.member is not None else legal.any(axis=0)
            yield name, a.bits, a.entries, allowed


@functools.lru_cache(maxsize=256)
def legal_codes(fmt) -> np.ndarray:
    """``fmt.legal_codes()``, worked out once per format (a format never changes), read-only."""
    legal = fmt.legal_codes()
    legal.setflags(write=False)
    return legal


def read_scans(fmt, layout: dict, options: dict) -> dict:
    """Array name -> the scans that :func:`check_stored` will ask for on it, for a reader to run on
    each block of rows as it reads it: :class:`CodeScan` objects (its code tests, and OliVe's
    structure check: no byte of the codes a pair of two victim codes), :class:`PaddingScan` objects
    (the padding bits of packed rows), the format's structure scans
    (:meth:`~hwlab.formats.Format.structure_scans`) and :class:`ValueScan` objects (the tests of
    the stored scales' bits: finite and positive, within ``options``' ``scale_clamp``); none without
    numba (the numpy references scan after the read)."""
    if not jit.USE_NUMBA:
        return {}
    scans = {}
    for name, bits, entries, forbidden in _scan_specs(fmt, tuple(layout.items())):
        scans.setdefault(name, []).append(CodeScan(bits, entries, forbidden))
    for name, a in layout.items():
        if a.packing == "bits" and a.entries * a.bits % WORD_BITS:
            scans.setdefault(name, []).append(PaddingScan(a.entries, a.bits))
    for name, structure in fmt.structure_scans(layout).items():
        scans.setdefault(name, []).extend(structure)
    for name, dtype, low, high in _value_specs(layout, options.get("scale_clamp")):
        scans.setdefault(name, []).append(ValueScan(dtype, low, high))
    return scans


def _value_specs(layout: dict, clamp):
    """``(array, dtype, low, high)`` of every test of stored scale bits that :func:`check_stored` makes
    (:func:`check_scale_array`, :func:`check_scales_within_clamp` under ``scale_clamp=clamp``)."""
    for name, a in layout.items():
        if a.role in SCALE_ROLES and (bounds := _scale_bounds(a.encoding, name)) is not None:
            yield name, *bounds[:3]
    if clamp is not None and (bounds := _clamp_bits(layout["scales"].encoding, tuple(clamp))) is not None:
        yield "scales", *bounds


@functools.lru_cache(maxsize=256)
def _scan_specs(fmt, layout: tuple) -> tuple:
    """``(array, bits, entries, forbidden codes)`` of every scan of :func:`read_scans`, worked out
    once per format and layout."""
    layout = dict(layout)
    tests = list(code_tests(layout, legal_codes(fmt)))
    fields = fmt.encoding_fields()
    if fields.get("kind") == "outlier_victim":  # hwlab.formats.olive: pair k of a row is byte k of the stream
        tests.append(("codes", 8, layout["codes"].entries // 2, np.arange(256) != fields["victim_code"] * 0x11))
    specs = []
    for name, bits, entries, allowed in tests:
        forbidden = tuple(np.flatnonzero(~allowed[:2**bits]).tolist())
        if forbidden and entries and layout[name].shape[0]:
            specs.append((name, bits, entries, forbidden))
    return tuple(specs)


def check_padding_bits(words: np.ndarray, entries: int, bits: int, name: str) -> None:
    """The bits past ``entries * bits`` in the last word of every row are zero (from the
    :class:`PaddingScan` the read ran where there is one)."""
    used = entries * bits % WORD_BITS
    if not used:
        return
    scan = scan_of(words, *PaddingScan.key_of(entries, bits))
    row = scan.row if scan is not None else _first_padded_row(words, used)
    if row >= 0:
        raise ValueError(f"array {name!r}: row {row} has nonzero padding bits past its {entries} entries")


def _first_padded_row(words: np.ndarray, used: int) -> int:
    """The first row of ``words`` whose last word has a bit from bit ``used`` on set (-1: none): the
    largest last word, shifted, first (one reduction: 3 us for 4096 rows, where shifting every last
    word took 7)."""
    if not words.size or not int(words[:, -1].max()) >> used:
        return -1
    return int(np.flatnonzero(words[:, -1] >> np.uint32(used))[0])


def check_trit_bytes(packed: np.ndarray, entries: int, name: str) -> None:
    """Every byte of a ``trit5`` row is a 5-trit group (below ``3**5``), and the trits past ``entries``
    in the last byte of every row (padding) are zero."""
    if packed.size and packed.max() >= 3**TRITS_PER_BYTE:
        row, col = (int(i) for i in np.argwhere(packed >= 3**TRITS_PER_BYTE)[0])
        raise ValueError(f"array {name!r}: byte {packed[row, col]} at [{row}, {col}] is not a group of 5 trits "
                         f"(expected < {3**TRITS_PER_BYTE})")
    used = entries % TRITS_PER_BYTE
    if used and packed.shape[1]:
        extra = packed[:, -1] // np.uint8(3**used)
        if extra.any():
            raise ValueError(f"array {name!r}: row {int(np.flatnonzero(extra)[0])} has nonzero padding trits past "
                             f"its {entries} entries")


def check_scales_within_clamp(stored: np.ndarray, row_scales, encoding: str, clamp) -> None:
    """Stored ``scales`` of scale dtype ``encoding`` decode to where a quantizer with
    ``scale_clamp=clamp`` puts them (:func:`~hwlab.formats.scale_search.clamp_bounds`; an all-zero
    group's least scale too)."""
    bounds = _clamp_bits(encoding, tuple(clamp))
    if bounds is not None and _first_outside_scanned(stored, *bounds) < 0:  # else the exact test below
        return
    scale_type = get_scale_type(encoding)
    low, high, floor = clamp_bounds(scale_type, clamp, row_scales)
    scales = scale_type.load(StoredScales(stored, row_scales))
    bad = ~(((scales >= low) & (scales <= high)) | (scales == floor))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"array 'scales': the scale {scales[row, col]:.6g} at [{row}, {col}] lies outside "
                         f"scale_clamp={tuple(clamp)}, which the quantizer keeps every scale within "
                         f"({float(low.min()):.6g} .. {float(high.max()):.6g} as stored)")


@functools.lru_cache(maxsize=256)
def _clamp_bits(encoding: str, clamp: tuple) -> tuple | None:
    """``(dtype, low, high)``: the stored scales of ``encoding`` lie within ``scale_clamp=clamp`` when
    their bits, read as unsigned ``dtype``, lie in ``low .. high - 1`` (:data:`ORDERED_BITS`; an
    all-zero group's least scale is tested apart); ``None`` where bits do not order as scales."""
    bits = ORDERED_BITS.get(encoding)
    if bits is None:
        return None
    scale_type = get_scale_type(encoding)
    low, high, _ = clamp_bounds(scale_type, clamp)
    bounds = scale_type.store(np.concatenate([low, high], axis=1)).values.view(bits).astype(np.int64)
    return bits, int(bounds[0, 0]), int(bounds[0, 1]) + 1


def check_packed_codes(words: np.ndarray, bits: int, entries: int, legal: np.ndarray, name: str, fmt_name: str) -> None:
    """Every ``bits``-wide code of the packed rows is one ``legal`` (bool ``[2**bits]``) allows."""
    forbidden = _forbidden(legal[:2**bits].tobytes())
    if not forbidden or words.size == 0:
        return
    scan = scan_of(words, bits, entries, forbidden)
    if scan is not None:
        row = scan.row
    else:  # not scanned while it was read
        row = first_forbidden_row(words, bits, entries, forbidden) if jit.USE_NUMBA else _first_row_numpy(
            words, bits, entries, forbidden)
    if row >= 0:
        codes = unpack_codes(words[row:row + 1], bits, entries)[0]
        col = int(np.flatnonzero(np.isin(codes, forbidden))[0])
        raise ValueError(f"array {name!r}: code {codes[col]} at [{row}, {col}] is one {fmt_name} never emits "
                         f"(forbidden codes {list(forbidden)})")


@functools.lru_cache(maxsize=256)
def _forbidden(allowed: bytes) -> tuple:
    """The codes (ascending) that ``allowed`` (the bytes of a bool array, one a code) does not allow,
    worked out once per set of codes."""
    return tuple(np.flatnonzero(~np.frombuffer(allowed, dtype=np.bool_)).tolist())


# Stored bits of a positive finite scale lie in 1 .. limit - 1 (sign 0; zero, inf and NaN excluded).
POSITIVE_FINITE_BELOW = {"fp16": (np.uint16, 0x7C00), "bf16": (np.uint16, 0x7F80), "fp32": (np.uint32, 0x7F800000),
                         "e4m3": (np.uint8, 0x7F)}  # IEEE binary16/bfloat16/binary32 and OCP E4M3 (0x7F: NaN)
# Scale dtypes whose stored bits, read as unsigned integers, order as the positive scales they hold
# (sign-magnitude floats, E8M0's bare exponent): a scale lies within bounds when its bits do.
ORDERED_BITS = {"fp16": np.uint16, "bf16": np.uint16, "fp32": np.uint32, "e4m3": np.uint8, "e8m0": np.uint8}


def scan_of(array: np.ndarray, *key):
    """The scan with ``key`` that the read ran over ``array`` (:func:`check_stored`), else ``None``."""
    return (_SCANNED.get() or {}).get((id(array), *key))


def _scale_bounds(encoding: str, name: str) -> tuple | None:
    """``(dtype, low, high, what a value outside is)``: stored scales of ``encoding`` in array ``name``
    decode to finite positive numbers exactly when their bits, read as unsigned ``dtype``, lie in
    ``low .. high - 1``; ``None`` where the values are tested instead (NF4 double quantization's
    second level, ``dynamic8``)."""
    if name in ("scale_absmax", "scale_offset") or encoding == "dynamic8":
        return None
    if encoding == "e8m0":
        return np.uint8, 0, E8M0_NAN, "E8M0 code 255 (NaN)"
    if encoding == "int8" and name == "scales":
        return np.uint8, 1, 256, "int8 scale code 0 (codes are 1..255)"
    dtype, high = POSITIVE_FINITE_BELOW[encoding]
    return dtype, 1, high, "a scale that is not finite and positive"


def check_scale_array(stored: np.ndarray, encoding: str, name: str, arrays: dict) -> None:
    """Stored scales of ``encoding`` decode to finite positive numbers (NF4 second level: finite),
    tested on the stored bits."""
    bounds = _scale_bounds(encoding, name)
    if bounds is None:
        if stored.dtype.kind == "f" and not np.isfinite(stored).all():
            raise ValueError(f"array {name!r} holds a non-finite value")
        if name in ("scale_absmax", "scale_offset") and np.signbit(stored).any():  # an absmax, a mean of absmaxes
            at = [int(i) for i in np.argwhere(np.signbit(stored))[0]]
            raise ValueError(f"array {name!r} holds the negative value {float(stored[tuple(at)]):.6g} at {at}; it is "
                             f"{'an absolute maximum' if name == 'scale_absmax' else 'a mean of absolute maxima'}, "
                             "never negative")
        return
    *test, why = bounds
    first = _first_outside_scanned(stored, *test)
    if first >= 0:
        at = tuple(int(i) for i in np.unravel_index(first, stored.shape))
        raise ValueError(f"array {name!r} holds {why} at {list(at)}: {stored[at]!r}")


def _first_outside_scanned(stored: np.ndarray, dtype, low: int, high: int) -> int:
    """``first_outside(stored.view(dtype), low, high)``, from the :class:`ValueScan` the read ran where
    there is one."""
    scan = scan_of(stored, *ValueScan.key_of(dtype, low, high))
    return scan.first if scan is not None else first_outside(stored.view(dtype), low, high)


def first_outside(bits: np.ndarray, low: int, high: int) -> int:
    """The first flat index (C order) of ``bits`` (unsigned integers) holding a value outside
    ``low .. high - 1`` (-1: none; ``high`` at most one past the dtype's maximum); one vectorized
    pass where all are inside (numba)."""
    flat = bits.reshape(-1)
    if jit.USE_NUMBA and int(_largest_offset(flat, flat.dtype.type(low))) < high - low:
        return -1
    bad = (flat < low) | (flat >= high)
    return int(np.argmax(bad)) if bad.any() else -1


@njit(nogil=True)
def _largest_offset(flat, low):  # pragma: no cover - numba
    """The largest ``flat[i] - low`` in the unsigned arithmetic of ``flat``'s dtype (``2**w`` values),
    where a value below ``low`` wraps to ``2**w - (low - flat[i])``: below ``high - low`` exactly when
    every value lies in ``low .. high - 1`` (``high <= 2**w``)."""
    largest = flat.dtype.type(0)
    for i in range(flat.shape[0]):
        largest = max(largest, flat.dtype.type(flat[i] - low))
    return largest


class ValueScan:
    """A scan of rows of stored bits (an array viewed as unsigned ``dtype``) for values outside
    ``low .. high - 1`` (:func:`first_outside`), one block of rows at a time, in place.

    ``update(block, first_row)`` scans rows ``first_row ..`` of the array (``block``: ``[rows, cols]``
    of it), in any order and from any thread; ``first`` is the first flat index (C order) found
    outside (-1: none) and ``key`` is ``(dtype, low, high)`` (:meth:`key_of`).
    """

    def __init__(self, dtype, low: int, high: int):
        self.key = self.key_of(dtype, low, high)
        self._found = []  # the first flat index outside of each block that holds one (list.append is atomic)

    @staticmethod
    def key_of(dtype, low: int, high: int) -> tuple:
        """The ``key`` of the scan of ``dtype`` bits for values outside ``low .. high - 1``."""
        return np.dtype(dtype).str, low, high

    @property
    def first(self) -> int:
        """The first flat index outside among the rows scanned (-1: none)."""
        return min(self._found, default=-1)

    def update(self, block: np.ndarray, first_row: int) -> None:
        """Scan ``block`` (``[rows, cols]``), rows ``first_row ..`` of the array."""
        dtype, low, high = self.key
        at = first_outside(block.view(dtype), low, high)
        if at >= 0:
            self._found.append(first_row * block.shape[1] + at)


def forbidden_cubes(forbidden: np.ndarray, bits: int) -> np.ndarray:
    """``(mask, value)`` pairs (uint64 ``[P, 2]``) whose codes ``c & mask == value`` are exactly the
    codes ``forbidden``: one pair when they are every code that agrees with ``value`` on ``mask`` (a
    minifloat's NaN and infinity codes, the one code of an integer's missing minimum), else a pair a
    code (mask all ones)."""
    codes = np.unique(np.asarray(forbidden, dtype=np.int64))
    full = (1 << bits) - 1
    low, high = int(np.bitwise_and.reduce(codes)), int(np.bitwise_or.reduce(codes))
    free = low ^ high  # the bits on which the codes differ
    if codes.size == 1 << free.bit_count():  # every code agreeing on the other bits is forbidden
        return np.array([[full & ~free, low]], dtype=np.uint64)
    return np.array([[full, c] for c in codes.tolist()], dtype=np.uint64).reshape(-1, 2)


def _first_row_numpy(words: np.ndarray, bits: int, entries: int, forbidden: np.ndarray) -> int:
    """:func:`first_forbidden_row` on the unpacked codes (the reference, without numba)."""
    bad = np.isin(unpack_codes(words, bits, entries), forbidden).any(axis=1)
    return int(np.flatnonzero(bad)[0]) if bad.any() else -1


def first_forbidden_row(words: np.ndarray, bits: int, entries: int, forbidden: np.ndarray) -> int:
    """The first row of packed ``words`` holding one of the codes ``forbidden`` (-1: none)."""
    scan = CodeScan(bits, entries, forbidden)
    scan.update(words, 0)
    return scan.row


class RowScan:
    """A scan of the rows of an array for the first row that fails a test (:meth:`first_in`, of a
    subclass), one block of rows at a time, in place: ``update(block, first_row)`` scans rows
    ``first_row ..`` of the array (``block``: ``[rows, cols]`` of it), in any order and from any
    thread; ``row`` is the first row found failing (-1: none) and ``key`` names the test (what
    :func:`scan_of` looks it up by)."""

    def __init__(self, key: tuple):
        self.key = key
        self._found = []  # the first failing row of each block that holds one (list.append is atomic)

    @property
    def row(self) -> int:
        """The first failing row among the rows scanned (-1: none)."""
        return min(self._found, default=-1)

    def update(self, block: np.ndarray, first_row: int) -> None:
        """Scan ``block``, rows ``first_row ..`` of the array."""
        row = self.first_in(block)
        if row >= 0:
            self._found.append(first_row + row)

    def first_in(self, block: np.ndarray) -> int:
        """The first row of ``block`` that fails the test (-1: none)."""
        raise NotImplementedError


class CodeScan(RowScan):
    """A :class:`RowScan` of packed rows of ``entries`` codes of ``bits`` bits
    (:mod:`hwlab.formats.packing`) for the codes ``forbidden`` (numba, no copy); ``key`` is
    ``(bits, entries, forbidden)``. Each pair ``(mask, value)`` of :func:`forbidden_cubes` is one
    test: where ``bits`` divides 32 (codes never span words) the has-zero-field test of
    ``(word & mask) ^ value`` over the fields of a word, else a test of every bit position of a
    word, continued into the next word, against the pair's bits, kept where a code starts.
    """

    def __init__(self, bits: int, entries: int, forbidden):
        super().__init__((bits, entries, tuple(np.unique(np.asarray(forbidden, dtype=np.int64)).tolist())))
        self._tests = _scan_tests(*self.key)

    def first_in(self, block: np.ndarray) -> int:
        """The first row of ``block`` (uint32 ``[rows, words]``) holding a forbidden code (-1: none)."""
        found = -1
        for kernel, operands in self._tests:
            row = kernel(block, *operands)
            if row >= 0 and not 0 <= found <= row:
                found = row
        return found


class PaddingScan(RowScan):
    """A :class:`RowScan` of packed rows of ``entries`` codes of ``bits`` bits for padding bits set
    in the last word of a row (:func:`check_padding_bits`); ``key`` is :meth:`key_of`."""

    def __init__(self, entries: int, bits: int):
        super().__init__(self.key_of(entries, bits))
        self._used = entries * bits % WORD_BITS

    @staticmethod
    def key_of(entries: int, bits: int) -> tuple:
        """The ``key`` of the scan of rows of ``entries`` codes of ``bits`` bits for padding bits set."""
        return "padding", entries, bits

    def first_in(self, block: np.ndarray) -> int:
        """The first row of ``block`` with a padding bit set (-1: none): :func:`_first_padded_row`,
        compiled (one call, where numpy's reduction and shift took 10-40 us of a load each, as
        their code was out of cache after the read)."""
        return int(_first_padded_row_compiled(block, self._used))


@njit(nogil=True)
def _first_padded_row_compiled(words, used):  # pragma: no cover - numba
    """:func:`_first_padded_row` (numba)."""
    last = words.shape[1] - 1
    for r in range(words.shape[0]):
        if words[r, last] >> used:
            return r
    return -1


@functools.lru_cache(maxsize=256)
def _scan_tests(bits: int, entries: int, forbidden: tuple) -> tuple:
    """``(kernel, operands)`` of each test of a :class:`CodeScan`, worked out once per width, row
    length and set of codes."""
    cubes = forbidden_cubes(np.array(forbidden), bits).astype(np.int64)
    width = packed_words(entries, bits)
    if WORD_BITS % bits == 0:
        return ((_first_hit_row_aligned, _aligned_operands(cubes, bits, entries, width)),)
    starts = code_starts(bits, entries, width)
    starts.setflags(write=False)
    return tuple(_spanning_test(bits, int(mask), int(value), starts) for mask, value in cubes)


def _spanning_test(bits: int, mask: int, value: int, starts: np.ndarray) -> tuple:
    """``(kernel, operands)`` of the test of one pair where codes span words: the symmetric integers'
    most negative code (``100..0``, which their quantizer never emits: the one forbidden code of the
    built-in formats of 3, 5, 6 and 7 bits) with its kernel (:func:`_missing_minimum_kernel`), any
    other pair passed to :func:`_first_hit_row_spanning`."""
    if mask == (1 << bits) - 1 and value == 1 << (bits - 1):
        return _missing_minimum_kernel(bits), (starts,)
    return _first_hit_row_spanning, (*_bit_terms(mask, value, bits), starts)


def _aligned_operands(cubes: np.ndarray, bits: int, entries: int, width: int) -> tuple:
    """The pairs replicated over the fields of a word (``masks``, ``values``), the fields' lowest
    (``one``) and highest bits (``top``), and ``top`` for the last word (its fields past ``entries``,
    the padding, left out)."""
    one = sum(1 << k for k in range(0, WORD_BITS, bits))
    top = one << (bits - 1)
    used = entries * bits - (width - 1) * WORD_BITS  # bits of the last word that hold codes, 1 .. 32
    masks, values = ((cubes[:, j] * one).astype(np.uint32) for j in (0, 1))
    return masks, values, np.uint32(one), np.uint32(top), np.uint32(top & ((1 << used) - 1))


def _bit_terms(mask: int, value: int, bits: int) -> tuple:
    """One pair as a test of each bit ``0 .. bits - 1`` of a code: ``inverts``, a word for each bit
    (ones where the pair wants the bit 0), and ``skips`` (ones where the mask leaves the bit free)."""
    def word(flag: bool) -> np.uint32:
        return np.uint32(ALL_ONES if flag else 0)

    return tuple(word(not value >> i & 1) for i in range(bits)), tuple(word(not mask >> i & 1) for i in range(bits))


def code_starts(bits: int, entries: int, width: int) -> np.ndarray:
    """``uint32 [width]``: bit ``p`` of word ``j`` is set where code ``k < entries`` starts
    (``k * bits == 32 * j + p``)."""
    starts = np.zeros(width * WORD_BITS, dtype=np.bool_)
    starts[np.arange(entries) * bits] = True
    return np.packbits(starts, bitorder="little").view("<u4").astype(np.uint32)


# The scans run on one thread and stop at the first bad row: a row is a few kB (in L1), a pass runs
# at the speed of the cache, and a parallel region's worker threads, left spinning after it, slowed
# everything after the scan on a machine of 2 cores. Every value is cast back to uint32: numba
# computes on uint32 in 64 bits, and only the casts (and shift counts known to be below 32) let
# LLVM vectorize in 32-bit lanes, twice as many per register.

@njit(inline="always")
def _zero_fields(word, mask, value, one, top):  # pragma: no cover - numba
    """Nonzero when a field of ``(word & mask) ^ value`` is zero, ``(t - one) & ~t & top`` (exact for
    whether any is: a borrow only runs upwards from a zero field)."""
    t = np.uint32(np.uint32(word & mask) ^ value)
    return np.uint32(np.uint32(np.uint32(t - one) & ~t) & top)


@njit(nogil=True)
def _first_hit_row_aligned(words, masks, values, one, top, last_top):  # pragma: no cover - numba
    """:class:`CodeScan` where ``bits`` divides 32: one flat, vectorized pass over the words of a row
    for each pair; in the last word only the fields that hold codes (``last_top``), as the padding
    fields lie above them and a borrow never runs downwards."""
    last = words.shape[1] - 1
    for r in range(words.shape[0]):
        row = words[r]
        acc = np.uint32(0)
        for p in range(masks.shape[0]):
            mask, value = masks[p], values[p]
            for j in range(last):
                acc = np.uint32(acc | _zero_fields(row[j], mask, value, one, top))
            acc = np.uint32(acc | _zero_fields(row[last], mask, value, one, last_top))
        if acc:
            return r
    return -1


@njit(inline="always")
def _matching_bits(x, y, inverts, skips):  # pragma: no cover - numba
    """Bit ``p`` set where the ``bits`` bits from bit ``p`` of word ``x`` on (continued in the next
    word ``y``) agree with the pair on every bit of its mask. ``bits`` is the length of the tuples
    (:func:`_bit_terms`), part of the compiled signature: the loop unrolls and every shift is a
    constant, one funnel shift (``vpshldd`` where AVX-512 VBMI2 has it) a window."""
    f = np.uint32(np.uint32(x ^ inverts[0]) | skips[0])
    for s in range(1, len(inverts)):
        window = np.uint32(np.uint32(x >> s) | np.uint32(y << (WORD_BITS - s)))
        f = np.uint32(f & np.uint32(np.uint32(window ^ inverts[s]) | skips[s]))
    return f


@njit(inline="always")
def _spanning_rows(words, starts, inverts, skips):  # pragma: no cover - numba
    """The first row of ``words`` holding a code that matches the pair (``inverts``, ``skips``: see
    :func:`_bit_terms`) and starts where ``starts`` has a bit (:func:`code_starts`), -1 for none:
    every bit position of every word tested at once (:func:`_matching_bits`, the last word continued
    by zeros); one flat, vectorized pass over a row."""
    last = words.shape[1] - 1
    for r in range(words.shape[0]):
        row = words[r]
        acc = np.uint32(0)
        for j in range(last):
            acc = np.uint32(acc | np.uint32(_matching_bits(row[j], row[j + 1], inverts, skips) & starts[j]))
        acc = np.uint32(acc | np.uint32(_matching_bits(row[last], np.uint32(0), inverts, skips) & starts[last]))
        if acc:
            return r
    return -1


@njit(nogil=True)
def _first_hit_row_spanning(words, inverts, skips, starts):  # pragma: no cover - numba
    """:class:`CodeScan` where codes span words, of any pair (:func:`_spanning_rows`)."""
    return _spanning_rows(words, starts, inverts, skips)


@functools.cache
def _missing_minimum_kernel(bits: int):
    """:class:`CodeScan`'s kernel ``(words, starts) -> first row`` for the code ``100..0`` of ``bits``
    bits where codes span words (:func:`_spanning_rows`), with the pair compiled in, so that its tests
    fold into constants (int3: ``~x & ~w1 & w2``; for 8 words, 2 funnel shifts and 3 logic operations,
    against 5 where the pair is passed in: 24 against 29 us a MiB of codes in cache, on one core). One
    kernel a width (at most 4), each cached on disk under its own name (numba rewrites the index of a
    function's compiled versions without a lock, so processes compiling different ones at once could
    swap them)."""
    inverts, skips = _bit_terms((1 << bits) - 1, 1 << (bits - 1), bits)

    def first_hit_row(words, starts):  # pragma: no cover - numba
        return _spanning_rows(words, starts, inverts, skips)

    first_hit_row.__qualname__ = f"missing_minimum_kernel_{bits}"
    return njit(nogil=True)(first_hit_row)
