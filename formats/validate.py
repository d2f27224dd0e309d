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

The code scan runs on the packed words (numba, one thread, a word-wide has-zero-field test for
each set of forbidden codes that agree on some bits, such as all of a minifloat's NaN codes, over
64-bit windows where codes span words: :func:`first_forbidden_row`), so it costs a fraction of
reading the file.
"""
from __future__ import annotations

import numpy as np

from . import jit
from .jit import njit
from .packing import TRITS_PER_BYTE, WORD_BITS, unpack_codes
from .scale_search import clamp_bounds
from .scales import SCALE_TYPES, StoredScales, get_scale_type

E8M0_NAN = 255  # OCP MX v1.0: the E8M0 code of NaN
VICTIM_PAIR = 0x88  # OliVe: both codes of a pair the victim code 8 (never emitted), one byte of the stream


def check_stored(qt) -> None:
    """Raise ``ValueError`` unless every array of ``qt`` holds only values its format can produce."""
    layout, arrays = qt.layout, qt.arrays
    for name, a in layout.items():
        if a.packing == "bits":
            check_padding_bits(arrays[name], a.entries, a.bits, name)
        elif a.packing == "trit5":
            check_trit_bytes(arrays[name], a.entries, name)
    fmt = qt.format
    legal = fmt.legal_codes()
    for name, a in layout.items():
        if a.role == "codes" and a.packing == "bits":
            member = a.member if a.member is not None else 0
            # a mixture's codes: legal in some member here, in their own member below
            check_packed_codes(arrays[name], a.bits, a.entries, legal[member] if legal.shape[0] == 1 or a.member is not None
                        else legal.any(axis=0), name, fmt.name)
    if legal.shape[0] > 1 and "type_ids" in layout and not (legal == legal[0]).all():
        u = qt.unpacked()  # members differ in what they emit: check each code against its own member
        bad = ~legal[u.element_members(), u.codes]
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"array 'codes': code {u.codes[row, col]} at [{row}, {col}] is never emitted by member "
                             f"{u.element_members()[row, col] if u.member is not None else 0} of {fmt.name}")
    for name, a in layout.items():
        if a.role in ("scales", "row_scales", "tensor_scale", "scale_absmax", "scale_offset"):
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


def check_padding_bits(words: np.ndarray, entries: int, bits: int, name: str) -> None:
    """The bits past ``entries * bits`` in the last word of every row are zero."""
    used = entries * bits % WORD_BITS
    if used and words.shape[1]:
        extra = words[:, -1] >> np.uint32(used)
        if extra.any():
            raise ValueError(f"array {name!r}: row {int(np.flatnonzero(extra)[0])} has nonzero padding bits past "
                             f"its {entries} entries")


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
    scale_type = get_scale_type(encoding)
    scales = scale_type.load(StoredScales(stored, row_scales))
    low, high, floor = clamp_bounds(scale_type, clamp, row_scales)
    bad = ~(((scales >= low) & (scales <= high)) | (scales == floor))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"array 'scales': the scale {scales[row, col]:.6g} at [{row}, {col}] lies outside "
                         f"scale_clamp={tuple(clamp)}, which the quantizer keeps every scale within "
                         f"({float(low.min()):.6g} .. {float(high.max()):.6g} as stored)")


def check_packed_codes(words: np.ndarray, bits: int, entries: int, legal: np.ndarray, name: str, fmt_name: str) -> None:
    """Every ``bits``-wide code of the packed rows is one ``legal`` (bool ``[2**bits]``) allows."""
    forbidden = np.flatnonzero(~legal[:2**bits])
    if forbidden.size == 0 or words.size == 0:
        return
    if jit.USE_NUMBA:
        row = first_forbidden_row(words, bits, entries, forbidden)
    else:
        bad = np.isin(unpack_codes(words, bits, entries), forbidden)
        row = int(np.flatnonzero(bad.any(axis=1))[0]) if bad.any() else -1
    if row >= 0:
        codes = unpack_codes(words[row:row + 1], bits, entries)[0]
        col = int(np.flatnonzero(np.isin(codes, forbidden))[0])
        raise ValueError(f"array {name!r}: code {codes[col]} at [{row}, {col}] is one {fmt_name} never emits "
                         f"(forbidden codes {forbidden.tolist()})")


# Stored bits of a positive finite scale lie in 1 .. limit - 1 (sign 0; zero, inf and NaN excluded).
POSITIVE_FINITE_BELOW = {"fp16": (np.uint16, 0x7C00), "bf16": (np.uint16, 0x7F80), "fp32": (np.uint32, 0x7F800000),
                         "e4m3": (np.uint8, 0x7F)}  # IEEE binary16/bfloat16/binary32 and OCP E4M3 (0x7F: NaN)


def check_scale_array(stored: np.ndarray, encoding: str, name: str, arrays: dict) -> None:
    """Stored scales of ``encoding`` decode to finite positive numbers (NF4 second level: finite),
    tested on the stored bits."""
    if name in ("scale_absmax", "scale_offset") or encoding == "dynamic8":
        if stored.dtype.kind == "f" and not np.isfinite(stored).all():
            raise ValueError(f"array {name!r} holds a non-finite value")
        if name in ("scale_absmax", "scale_offset") and np.signbit(stored).any():  # an absmax, a mean of absmaxes
            at = [int(i) for i in np.argwhere(np.signbit(stored))[0]]
            raise ValueError(f"array {name!r} holds the negative value {float(stored[tuple(at)]):.6g} at {at}; it is "
                             f"{'an absolute maximum' if name == 'scale_absmax' else 'a mean of absolute maxima'}, "
                             "never negative")
        return
    if encoding == "e8m0":
        bad = stored == E8M0_NAN
        why = "E8M0 code 255 (NaN)"
    elif encoding == "int8" and name == "scales":
        bad = stored == 0
        why = "int8 scale code 0 (codes are 1..255)"
    else:
        dtype, limit = POSITIVE_FINITE_BELOW[encoding]
        bits = stored.view(dtype)
        bad = (bits == 0) | (bits >= limit)
        why = "a scale that is not finite and positive"
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"array {name!r} holds {why} at {list(at)}: {stored[at]!r}")


def word_windows(bits: int):
    """How codes of ``bits`` bits lie in the words of one block of the packed stream (a block is one
    word when ``bits`` divides 32, else ``bits`` words of 32 codes): the codes in a block and, for
    each word of it, the shift to the first code that starts in it and the field patterns ``ones``
    (a 1 at the lowest bit of every code that starts in the word) and ``high`` (at its highest bit),
    over a 64-bit window of the word and the next one, so that a code spanning two words is whole."""
    block_words = 1 if WORD_BITS % bits == 0 else bits
    codes = block_words * WORD_BITS // bits
    shifts, ones, high = [], [], []
    for i in range(block_words):
        first = -(-i * WORD_BITS // bits)  # codes first .. last - 1 start in word i
        last = -(-(i + 1) * WORD_BITS // bits)
        pattern = sum(1 << (k * bits) for k in range(last - first))
        shifts.append(first * bits - i * WORD_BITS)
        ones.append(pattern)
        high.append(pattern << (bits - 1))
    as_u64 = lambda v: np.array(v, dtype=np.uint64)  # noqa: E731
    return codes, as_u64(shifts), as_u64(ones), as_u64(high)


def forbidden_cubes(forbidden: np.ndarray, bits: int) -> np.ndarray:
    """``(mask, value)`` pairs (uint64 ``[P, 2]``) whose codes ``c & mask == value`` are exactly the
    codes ``forbidden``: one pair when they are every code that agrees with ``value`` on ``mask`` (a
    minifloat's NaN and infinity codes, the one code of an integer's missing minimum), else a pair a
    code (mask all ones)."""
    codes = np.unique(np.asarray(forbidden, dtype=np.int64))
    full = (1 << bits) - 1
    low, high = int(np.bitwise_and.reduce(codes)), int(np.bitwise_or.reduce(codes))
    free = low ^ high  # the bits on which the codes differ
    if codes.size == 1 << bin(free).count("1"):  # every code agreeing on the other bits is forbidden
        return np.array([[full & ~free, low]], dtype=np.uint64)
    return np.array([[full, c] for c in codes.tolist()], dtype=np.uint64).reshape(-1, 2)


def first_forbidden_row(words: np.ndarray, bits: int, entries: int, forbidden: np.ndarray) -> int:
    """The first row of packed ``words`` holding one of the codes ``forbidden`` (-1: none)."""
    codes_per_block, shifts, ones, high = word_windows(bits)
    cubes = forbidden_cubes(forbidden, bits)
    is_forbidden = np.zeros(2**bits, dtype=np.bool_)
    is_forbidden[np.asarray(forbidden, dtype=np.int64)] = True
    if shifts.size == 1:  # bits divides 32: codes never span words
        masks, values = ((cubes[:, j] * ones[0]).astype(np.uint32) for j in (0, 1))
        return _first_forbidden_row_aligned(words, bits, entries, codes_per_block, masks, values, np.uint32(ones[0]),
                                            np.uint32(high[0]), is_forbidden)
    return _first_forbidden_row_spanning(words, bits, entries, codes_per_block, shifts, ones, high, cubes,
                                         is_forbidden)


# The scans run on one thread and stop at the first bad row: a row is a few kB (in L1), a pass runs
# at memory speed, and a parallel region's worker threads, left spinning after it, slowed everything
# after the scan (the next file's read included) on a machine of 2 cores. A code ``c`` is forbidden
# when ``c & mask == value`` for a pair of :func:`forbidden_cubes`: a zero field of
# ``(word & mask * ones) ^ value * ones``, the has-zero-field test ``(t - ones) & ~t & high`` (exact
# for whether any field is zero: a borrow only runs upwards from a zero field).

@njit(inline="always")
def _partial_block_hit(row, bits, start, entries, is_forbidden):  # pragma: no cover - numba
    """Whether a code ``start <= k < entries`` of ``row`` (the last, partial block) is forbidden."""
    mask = np.uint32((1 << bits) - 1)
    found = False
    for k in range(start, entries):
        bit = k * bits
        w, shift = bit // WORD_BITS, bit % WORD_BITS
        code = row[w] >> np.uint32(shift)
        if shift + bits > WORD_BITS:
            code |= row[w + 1] << np.uint32(WORD_BITS - shift)
        found |= is_forbidden[code & mask]
    return found


@njit()
def _first_forbidden_row_aligned(words, bits, entries, codes_per_word, masks, values, one, top,
                                 is_forbidden):  # pragma: no cover - numba
    """:func:`first_forbidden_row` when ``bits`` divides 32: one flat, vectorizable pass over the
    whole words of a row for each pair of :func:`forbidden_cubes`; the codes of the last, partial
    word one by one (its padding is not a code)."""
    full = entries // codes_per_word
    for r in range(words.shape[0]):
        row = words[r]
        acc = np.uint32(0)
        for p in range(masks.shape[0]):
            mask, value = masks[p], values[p]
            for w in range(full):
                t = (row[w] & mask) ^ value
                acc |= (t - one) & ~t & top
        if acc != 0 or _partial_block_hit(row, bits, full * codes_per_word, entries, is_forbidden):
            return r
    return -1


@njit()
def _first_forbidden_row_spanning(words, bits, entries, codes_per_block, shifts, ones, high, cubes,
                                  is_forbidden):  # pragma: no cover - numba
    """:func:`first_forbidden_row` when codes span words: word ``j`` of the whole blocks and word
    ``j + 1`` form a 64-bit window holding every code that starts in word ``j`` whole, tested with
    that word's field patterns (:func:`word_windows`, laid out along the row so that the pass is
    flat and vectorizes); the codes of the last, partial block one by one."""
    block_words = shifts.shape[0]
    full_blocks = entries // codes_per_block
    span = full_blocks * block_words
    pairs = cubes.shape[0]
    shift = np.empty(span, np.uint64)
    one = np.empty(span, np.uint64)
    top = np.empty(span, np.uint64)
    mask = np.empty((pairs, span), np.uint64)
    value = np.empty((pairs, span), np.uint64)
    for j in range(span):
        i = j % block_words
        shift[j], one[j], top[j] = shifts[i], ones[i], high[i]
        for p in range(pairs):
            mask[p, j] = cubes[p, 0] * ones[i]
            value[p, j] = cubes[p, 1] * ones[i]
    for r in range(words.shape[0]):
        row = words[r]
        acc = np.uint64(0)
        for p in range(pairs):
            m, v = mask[p], value[p]
            for j in range(span - 1):
                window = np.uint64(row[j]) | (np.uint64(row[j + 1]) << np.uint64(WORD_BITS))
                t = ((window >> shift[j]) & m[j]) ^ v[j]
                acc |= (t - one[j]) & ~t & top[j]
            if span:  # the last word of the whole blocks: no code of it spans into the next
                t = ((np.uint64(row[span - 1]) >> shift[span - 1]) & m[span - 1]) ^ v[span - 1]
                acc |= (t - one[span - 1]) & ~t & top[span - 1]
        if acc != 0 or _partial_block_hit(row, bits, full_blocks * codes_per_block, entries, is_forbidden):
            return r
    return -1
