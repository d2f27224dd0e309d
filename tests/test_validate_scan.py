"""The scan of packed codes for codes a format never emits (hwlab.load's check) finds the first bad row;
the one-pass tests of stored scales agree with the plain ones."""
import numpy as np
import pytest
from hwlab.formats import get_format, jit, list_formats
from hwlab.formats.packing import pack_codes
from hwlab.formats.scale_search import clamp_bounds
from hwlab.formats.scales import StoredScales, get_scale_type
from hwlab.formats.validate import (
    CodeScan,
    PaddingScan,
    ValueScan,
    check_scales_within_clamp,
    first_forbidden_row,
    first_outside,
    forbidden_cubes,
)


def random_forbidden(rng, bits):
    """A few codes, or every code agreeing with a value on a random mask (as a minifloat's NaNs)."""
    if rng.random() < 0.5:
        return np.sort(rng.choice(2**bits, int(rng.integers(1, min(4, 2**bits - 1) + 1)), replace=False))
    mask = int(rng.integers(1, 2**bits))
    value = int(rng.integers(0, 2**bits)) & mask
    return np.flatnonzero((np.arange(2**bits) & mask) == value)


@pytest.mark.parametrize("bits", range(1, 9))
def test_first_forbidden_row_equals_a_plain_scan_of_the_codes(bits):
    rng = np.random.default_rng(bits)
    for _ in range(60):
        rows, entries = int(rng.integers(1, 6)), int(rng.integers(1, 400))  # whole blocks, partial ones, both
        forbidden = random_forbidden(rng, bits)
        allowed = np.setdiff1d(np.arange(2**bits), forbidden)
        if allowed.size == 0:
            continue
        codes = rng.choice(allowed, (rows, entries)).astype(np.uint8)
        if rng.random() < 0.7:  # one bad code anywhere: inside a word, spanning two, in the partial block
            codes[rng.integers(rows), rng.integers(entries)] = rng.choice(forbidden)
        bad = np.isin(codes, forbidden).any(axis=1)
        expected = int(np.flatnonzero(bad)[0]) if bad.any() else -1
        assert first_forbidden_row(pack_codes(codes, bits), bits, entries, forbidden) == expected


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
def test_a_forbidden_code_spanning_two_words_is_found_at_every_position(bits):
    entries = 96  # three whole blocks of 32 codes
    forbidden = np.array([2 ** (bits - 1)])
    for k in range(entries):
        codes = np.zeros((2, entries), np.uint8)
        codes[1, k] = forbidden[0]
        assert first_forbidden_row(pack_codes(codes, bits), bits, entries, forbidden) == 1, k


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
def test_the_missing_minimum_of_a_symmetric_integer_is_found_alone_and_among_other_codes(bits):
    """Code ``100..0`` alone is scanned with the code compiled in, in a cube with ``100..01`` with
    the pair passed in: both find the first row holding it, whatever the row lengths."""
    rng = np.random.default_rng(10 + bits)
    top = 2 ** (bits - 1)
    for _ in range(60):
        rows, entries = int(rng.integers(1, 6)), int(rng.integers(1, 400))
        codes = rng.choice(np.setdiff1d(np.arange(2**bits), [top, top + 1]), (rows, entries)).astype(np.uint8)
        if rng.random() < 0.7:
            codes[rng.integers(rows), rng.integers(entries)] = top
        bad = (codes == top).any(axis=1)
        expected = int(np.flatnonzero(bad)[0]) if bad.any() else -1
        words = pack_codes(codes, bits)
        assert first_forbidden_row(words, bits, entries, np.array([top])) == expected
        assert first_forbidden_row(words, bits, entries, np.array([top, top + 1])) == expected


def test_forbidden_cubes_cover_exactly_the_forbidden_codes():
    for name in list_formats():
        fmt = get_format(name)
        legal = fmt.legal_codes().any(axis=0)[:2**fmt.bits]
        forbidden = np.flatnonzero(~legal)
        if forbidden.size:
            cubes = forbidden_cubes(forbidden, fmt.bits)
            covered = np.zeros(2**fmt.bits, bool)
            for mask, value in cubes.astype(np.int64):
                covered |= (np.arange(2**fmt.bits) & mask) == value
            assert np.array_equal(covered, ~legal), name
            assert len(cubes) == 1, name  # every built-in's forbidden codes take one pass
    assert len(forbidden_cubes(np.array([1, 2]), 4)) == 2


def test_code_scans_of_blocks_in_any_order_give_the_first_bad_row():
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 8, (40, 100)).astype(np.uint8)
    codes[[7, 23, 31], [99, 0, 50]] = 8 + 7  # int4 code 15 stands in for a forbidden one
    words = pack_codes(codes, 4)
    scan = CodeScan(4, 100, [15])
    for first in (30, 10, 20, 0):  # blocks of 10 rows, as two reading threads may hand them over
        scan.update(words[first:first + 10], first)
    assert scan.row == 7
    assert CodeScan(4, 100, [15]).row == -1


def test_value_scans_of_blocks_in_any_order_give_the_first_flat_index():
    stored = np.full((40, 9), 0x3C00, np.uint16)  # fp16 1.0
    stored[[7, 23, 31], [8, 0, 4]] = [0x7C00, 0, 0xFC00]  # inf, zero, -inf
    scan = ValueScan(np.uint16, 1, 0x7C00)
    for first in (30, 10, 20, 0):  # blocks of 10 rows, as two reading threads may hand them over
        scan.update(stored[first:first + 10].view(np.float16), first)
    assert scan.first == 7 * 9 + 8
    assert ValueScan(np.uint16, 1, 0x7C00).first == -1


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("dtype, low, high", [(np.uint8, 0, 255), (np.uint8, 1, 256), (np.uint8, 1, 0x7F),
                                              (np.uint16, 1, 0x7C00), (np.uint16, 1, 0x7F80),
                                              (np.uint32, 1, 0x7F800000)])
def test_first_outside_equals_a_plain_comparison(numba, dtype, low, high, monkeypatch):
    monkeypatch.setattr(jit, "USE_NUMBA", numba and jit.USE_NUMBA)
    rng = np.random.default_rng(high)
    for _ in range(100):
        values = rng.integers(0, np.iinfo(dtype).max, int(rng.integers(0, 5000)), dtype=dtype, endpoint=True)
        if rng.random() < 0.5:  # mostly inside, one value at an edge or past it
            values = np.clip(values, low, high - 1).astype(dtype)
            if values.size:
                values[rng.integers(values.size)] = rng.choice([0, low, high - 1, min(high, np.iinfo(dtype).max)])
        bad = (values < low) | (values >= high)
        shaped = values.reshape(-1, 1) if values.size % 2 else values
        assert first_outside(shaped, low, high) == (int(np.argmax(bad)) if bad.any() else -1)


@pytest.mark.parametrize("encoding", ["fp16", "bf16", "fp32", "e8m0", "e4m3"])
def test_the_clamp_test_on_stored_bits_agrees_with_the_test_on_decoded_scales(encoding):
    scale_type, rng = get_scale_type(encoding), np.random.default_rng(3)
    outcomes = set()
    for _ in range(150):
        clamp = tuple(sorted(10.0 ** rng.uniform(-6, 4, 2)))
        ideal = 10.0 ** rng.uniform(-7, 5, (4, 9))
        if rng.random() < 0.6:
            ideal = np.clip(ideal, *clamp)
        if rng.random() < 0.3:
            ideal[0, 0] = scale_type.smallest  # an all-zero group's scale
        with np.errstate(over="ignore"):
            stored = scale_type.store(np.clip(ideal, None, scale_type.largest)).values
        scales = scale_type.load(StoredScales(stored))
        low, high, floor = clamp_bounds(scale_type, clamp)
        inside = bool((((scales >= low) & (scales <= high)) | (scales == floor)).all())
        try:
            check_scales_within_clamp(stored, None, encoding, clamp)
            passed = True
        except ValueError:
            passed = False
        assert passed == inside, clamp
        outcomes.add(passed)
    assert outcomes == {True, False}


@pytest.mark.parametrize("entries, bits", [(1, 1), (22, 1), (37, 4), (49, 2), (11, 3)])
def test_padding_scans_of_blocks_in_any_order_give_the_first_row_with_padding_bits(entries, bits):
    """PaddingScan (compiled) names the first row whose last word has a bit past the codes set."""
    used = entries * bits % 32
    words = np.random.default_rng(entries).integers(0, 2**32, (48, -(-entries * bits // 32)), dtype=np.uint64)
    words = words.astype(np.uint32)
    words[:, -1] &= np.uint32((1 << used) - 1)
    for rows in ([], [40], [9, 30]):
        damaged = words.copy()
        damaged[rows, -1] |= np.uint32(1 << 31)
        scan = PaddingScan(entries, bits)
        for first in (32, 0, 16):  # blocks out of order
            scan.update(damaged[first:first + 16], first)
        assert scan.row == (min(rows) if rows else -1)
