"""The scan of packed codes for codes a format never emits (hwlab.load's check) finds the first bad row."""
import numpy as np
import pytest

from hwlab.formats import get_format, list_formats
from hwlab.formats.packing import pack_codes
from hwlab.formats.validate import first_forbidden_row, forbidden_cubes


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
