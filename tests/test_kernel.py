"""The numba group kernel equals its numpy reference bit for bit, and both equal ``encode``.

The kernel is reached through ``quantize_groups`` with numba forced on, so whatever arguments
the dispatcher adds (the float32 fast path) are exercised with float32 and float64 inputs.

Inputs mix random weights with the hard cases: several members of different table widths,
MSE-search candidates (one member at several scales), affine offsets, ``-0`` and tiny negative
inputs (the ``-0`` code), inputs exactly on scaled midpoints (ties) and on scaled values, and
group lengths that are not a multiple of the kernel's 8 summation lanes.
"""
import numpy as np
import pytest

from hwlab.formats import get_format, group_kernel, jit
from hwlab.formats.group_kernel import MemberTables, quantize_groups, quantize_groups_reference, sum_squares

from formatting import element_reference_codes, mismatch_report

MEMBER_SETS = {
    "bitmod_fp4": ["fp4_er_pos", "fp4_er_neg", "fp4_ea_pos", "fp4_ea_neg"],
    "mixed_widths": ["fp4_e2m1", "nf4", "fp3_e2m0", "int8", "fp8_e4m3"],
    "affine": ["int4_asym", "int3_asym"],
    "zero_free": ["shift3", "flint4"],
}
CLIP_RATIOS = (1.0, 0.9, 0.75, 0.5)


@pytest.fixture
def numba_kernel(monkeypatch):
    """``quantize_groups`` that always runs the numba kernel (``group_kernel._kernel``)."""
    assert hasattr(group_kernel._kernel, "py_func"), "the kernel is not numba-compiled"
    monkeypatch.setattr(jit, "USE_NUMBA", True)
    return quantize_groups


def kernel_inputs(rng, names, groups, length, affine):
    """``(x, tables, member_of, scales, offsets)``: candidates are members x clip ratios."""
    members = [get_format(n) for n in names]
    tables = MemberTables.of(members)
    member_of = np.repeat(np.arange(len(members)), len(CLIP_RATIOS))
    ratio = np.tile(CLIP_RATIOS, len(members))
    base = np.ldexp(1.0, rng.integers(-12, 2, groups)) * rng.choice([1.0, 1.25, 1.375, 1.625], groups)
    scales = (base[None, :] * ratio[:, None]).astype(np.float16).astype(np.float64)
    offsets = np.zeros_like(scales)
    if affine:
        top = np.array([2 ** members[m].bits - 1 for m in member_of])
        offsets = np.floor(rng.random(scales.shape) * (top[:, None] + 1))
    spread = rng.choice([0.1, 1.0, 4.0], groups)  # narrow and wide groups favour different candidates
    x = rng.standard_normal((groups, length)) * (base * spread)[:, None]
    # exact ties and exact values of some candidate's grid, as the kernel computes them
    for g in range(groups):
        c = rng.integers(len(member_of))
        m = member_of[c]
        n = tables.n_midpoints[m]
        mids = (tables.midpoints[m, :n] - offsets[c, g]) * scales[c, g]
        vals = (tables.values[m, :n + 1] - offsets[c, g]) * scales[c, g]
        pick = rng.random(length)
        x[g] = np.where(pick < 0.3, rng.choice(mids, length), np.where(pick < 0.45, rng.choice(vals, length), x[g]))
    special = [-0.0, -1e-30, 0.0]  # -1e-30 rounds to zero: the -0 code where a member has one
    x[:, :3] = special[:length]
    return x, tables, member_of, scales, offsets


def reference(x, tables, member_of, scales, offsets):
    return quantize_groups_reference(x, tables.midpoints, tables.tie_up, tables.values, tables.codes,
                                     tables.n_midpoints, tables.negative_zero, member_of, scales, offsets)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("length", [1, 3, 8, 13, 128])
@pytest.mark.parametrize("case", list(MEMBER_SETS))
def test_kernel_equals_reference(case, length, dtype, rng, numba_kernel):
    x, *rest = kernel_inputs(rng, MEMBER_SETS[case], groups=64, length=length, affine=case == "affine")
    x = x.astype(dtype)
    codes, best = numba_kernel(x, *rest)
    ref_codes, ref_best = reference(x, *rest)
    assert codes.dtype == ref_codes.dtype == np.uint8 and best.dtype == ref_best.dtype == np.int64
    assert np.array_equal(best, ref_best), np.flatnonzero(best != ref_best)[:5]
    assert np.array_equal(codes, ref_codes), np.argwhere(codes != ref_codes)[:5]
    assert len(set(best.tolist())) > 1 or length < 8  # several candidates win somewhere


def test_kernel_ties_and_negative_zero_on_a_single_member(numba_kernel):
    """One candidate at scale 1: the kernel's codes are exactly ``encode``'s (every midpoint)."""
    for name in ("fp4_e2m1", "fp8_e4m3", "int4", "nf4", "fp4_er_neg", "shift3"):
        fmt = get_format(name)
        tables = MemberTables.of([fmt])
        values = np.unique(fmt.values[fmt.encodable] + 0.0)
        mids = (values[:-1] + values[1:]) / 2
        one = np.ones((1, 1))
        for dtype in (np.float64, np.float32):
            x = np.concatenate([mids, -mids, values]).astype(dtype)
            x = np.concatenate([x, np.nextafter(x, dtype(0)), np.array([-0.0, -1e-30, 0.0], dtype)])[None, :]
            codes, best = numba_kernel(x, tables, np.zeros(1, dtype=np.int64), one, np.zeros((1, 1)))
            want = element_reference_codes(fmt, x)
            assert np.array_equal(codes[0], want), mismatch_report(fmt, x, codes[0], want)
            assert np.array_equal(codes[0], fmt.encode(x[0])) and best.tolist() == [0]


def test_ties_between_candidates_keep_the_earlier(rng, numba_kernel):
    """Identical candidates (same member, same scale) give equal SSE: the first one wins."""
    fmt = get_format("fp4_e2m1")
    x = rng.standard_normal((16, 32))
    member_of = np.zeros(3, dtype=np.int64)
    scales = np.ones((3, 16))
    _, best = numba_kernel(x, MemberTables.of([fmt]), member_of, scales, np.zeros((3, 16)))
    assert best.tolist() == [0] * 16
    scales[2] = 0.5  # a strictly better scale later on wins
    _, best = numba_kernel(x * 0.25, MemberTables.of([fmt]), member_of, scales, np.zeros((3, 16)))
    assert (best == 2).all()


@pytest.mark.parametrize("length", [1, 7, 8, 9, 64, 129])
def test_sum_squares_order(length, rng):
    """Lane k sums err[k::8] in turn, then ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))."""
    err = rng.standard_normal((5, length))
    for row, got in zip(err, sum_squares(err)):
        lanes = [0.0] * 8
        for i, e in enumerate(row):
            lanes[i % 8] += e * e
        want = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
        assert got == want


@pytest.mark.parametrize("name", ["int4", "bitmod_fp4", "fp8_e4m3", "int8", "olive4", "mixed_2_4", "nf4", "ternary"])
def test_quantization_does_not_depend_on_the_thread_count(name, rng):
    import numba

    import hwlab

    w = rng.standard_normal((300, 512)).astype(np.float32) * 0.02
    runs = {}
    for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        numba.set_num_threads(threads)
        try:
            runs[threads] = hwlab.quantize(w, name, 128).arrays
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    first, *others = runs.values()
    for arrays in others:
        for key in first:
            np.testing.assert_array_equal(arrays[key], first[key], err_msg=f"{name}: {key}")


ELEMENT_FORMATS = [n for n in ("int4", "int8", "int5_asym", "fp4_e2m1", "fp6_e3m2", "fp8_e4m3", "fp8_e5m2", "nf4",
                               "flint4", "fp4_ea_neg", "shift4", "ternary")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ELEMENT_FORMATS)
def test_compiled_encode_equals_the_reference(name, dtype, rng):
    fmt = get_format(name)
    table = fmt.rounding_table
    x = np.concatenate([rng.standard_normal(20000) * np.ldexp(1.0, rng.integers(-30, 30, 20000)),
                        table.midpoints, np.nextafter(table.midpoints, np.inf), np.nextafter(table.midpoints, -np.inf),
                        table.sorted_values, [0.0, -0.0, -1e-300, np.inf, -np.inf, 1e300, -1e300]])
    with np.errstate(over="ignore"):  # huge float64 inputs are +-inf in float32: saturated the same
        x = x.astype(dtype)
    assert jit.USE_NUMBA
    got = fmt.encode(x)
    want = table.encode_reference(x.astype(np.float64))
    assert np.array_equal(got, want), mismatch_report(fmt, x, got, want)


def test_every_compiled_encoder_is_exercised():
    widths = {name: get_format(name).rounding_table.bucket_width for name in ELEMENT_FORMATS}
    assert max(widths.values()) > 1 and min(widths.values()) <= 1, widths
    float32_keys = {name: get_format(name).rounding_table.float32_buckets is not None for name in ELEMENT_FORMATS}
    assert float32_keys["fp8_e4m3"] and not float32_keys["nf4"]  # nf4's midpoints are not float32 numbers
