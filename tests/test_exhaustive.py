"""Every code, every value and every midpoint of every element format of 8 bits or fewer.

The formats come from ``list_formats()`` (so formats registered later are covered too). The
expected codes come from :func:`formatting.element_reference_codes`, an exact brute-force
nearest-value search over ``fmt.values`` that shares nothing with hwlab's rounding engine.
"""
import numpy as np
import pytest

from hwlab.formats import ElementFormat, get_format, list_formats

from formatting import element_reference_codes, format_code, mismatch_report

ELEMENT_FORMATS = [n for n in list_formats()
                   if isinstance(get_format(n), ElementFormat) and get_format(n).bits <= 8]


def sorted_encodable(fmt) -> np.ndarray:
    """Distinct encodable values, ascending (-0 and +0 are one value)."""
    return np.unique(fmt.values[fmt.encodable] + 0.0)  # + 0.0 turns -0 into +0


def midpoint_probes(fmt) -> np.ndarray:
    """Every midpoint between neighbouring values, its two float64 neighbours, the values'
    own neighbours, and inputs past both ends of the range (including +-inf)."""
    v = sorted_encodable(fmt)
    mids = (v[:-1] + v[1:]) / 2
    assert np.array_equal(mids * 2 - v[:-1], v[1:]), "midpoints are not exact in float64"
    top = np.abs(v).max()
    beyond = np.array([top * 1.5, top * 4, 1e300, np.inf])
    points = [mids, np.nextafter(mids, -np.inf), np.nextafter(mids, np.inf),
              np.nextafter(v, -np.inf), np.nextafter(v, np.inf), beyond, -beyond, [0.0, -0.0, 5e-324, -5e-324]]
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in points])


def test_formatter_splits_fields():
    fmt = get_format("fp8_e4m3")
    assert format_code(0b10110101, (1, 4, 3)) == "0b1|0110|101"
    assert "0b1|0110|101" in mismatch_report(fmt, [1.0], [0b10110101], [0b00111000])


@pytest.mark.parametrize("name", ELEMENT_FORMATS)
def test_every_code_decodes_to_its_table_value(name):
    fmt = get_format(name)
    codes = np.arange(2**fmt.bits)
    for dtype in (np.uint8, np.int64):
        got = fmt.decode(codes.astype(dtype))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, fmt.values.astype(np.float32))
        assert np.array_equal(np.signbit(got), np.signbit(fmt.values))  # -0 stays -0


@pytest.mark.parametrize("name", ELEMENT_FORMATS)
def test_every_encodable_value_encodes_to_its_code(name):
    fmt = get_format(name)
    codes = np.flatnonzero(fmt.encodable)
    got = fmt.encode(fmt.values[codes])
    assert np.array_equal(got, codes), mismatch_report(fmt, fmt.values[codes], got, codes)
    unused = np.flatnonzero(~fmt.encodable)
    assert not np.isin(fmt.encode(midpoint_probes(fmt)), unused).any(), "an unused or NaN code was emitted"


@pytest.mark.parametrize("name", ELEMENT_FORMATS)
def test_midpoints_and_neighbours_round_by_the_rule(name):
    fmt = get_format(name)
    x = midpoint_probes(fmt)
    want = element_reference_codes(fmt, x)
    got = fmt.encode(x)
    assert np.array_equal(got, want), mismatch_report(fmt, x, got, want)
    exact = np.abs(x) <= np.finfo(np.float32).max
    exact[exact] = x[exact].astype(np.float32) == x[exact]
    got32 = fmt.encode(x[exact].astype(np.float32))  # float32 input (where exact) rounds the same
    assert np.array_equal(got32, want[exact]), mismatch_report(fmt, x[exact], got32, want[exact])


@pytest.mark.parametrize("name", ELEMENT_FORMATS)
def test_encode_keeps_shape_and_saturates(name):
    fmt = get_format(name)
    x = np.linspace(-3, 3, 24).reshape(2, 3, 4) * fmt.max_abs
    got = fmt.encode(x)
    assert got.shape == x.shape and got.dtype == np.uint8
    assert np.array_equal(got, element_reference_codes(fmt, x).reshape(x.shape))
    assert fmt.values[fmt.encode(np.inf)] == fmt.info.max
    assert fmt.values[fmt.encode(-np.inf)] == fmt.info.min
