"""OliVe 4-bit outlier-victim pairs (``olive4``) against a float64 reference written from the paper
and the authors' code (clevercool/ANT-Quantization, olive_quantization/antquant/quant_modules.py)."""
import numpy as np
import pytest

import hwlab
from hwlab.formats import get_format, jit, list_formats, olive_kernel, unpack_codes
from hwlab.formats.group_kernel import MemberTables
from hwlab.formats.olive import OliveFormat

# --- independent reference (loops, float64) ---------------------------------------------------

# quant_modules.py outlier_value(exp_bit=2, exp_base=5): 2**i * (1 + j/2), skipping i=5, j=0, on a
# grid whose int step is 4 (int_value() multiplies by 32 / 2**3).
OUTLIERS = sorted(2.0**i * (1 + j / 2) / 4 for i in range(5, 9) for j in (0, 1) if (i, j) != (5, 0))
NORMALS = [float(v) for v in range(-7, 8)]
GRID = sorted(NORMALS + OUTLIERS + [-m for m in OUTLIERS])
VICTIM = 8


def ref_code(v):
    """4-bit code of a grid value: int4 two's complement, or sign bit | 1-based outlier index."""
    if abs(v) <= 7:
        return int(v) % 16
    return (8 if v < 0 else 0) | (OUTLIERS.index(abs(v)) + 1)


def ref_round(t):
    """Nearest grid value; a tie goes to the even code, else (7 | 12, both odd) to the outlier."""
    best = min(abs(t - g) for g in GRID)
    near = [g for g in GRID if abs(t - g) == best]
    if len(near) == 1:
        return near[0]
    even = [g for g in near if ref_code(g) % 2 == 0]
    return even[0] if len(even) == 1 else max(near, key=abs)


def ref_encode(ts):
    """Pair codes of a flat sequence of even length, in scale units."""
    out = []
    for a, b in zip(ts[0::2], ts[1::2]):
        a, b = ref_round(a), ref_round(b)
        if abs(a) > 7:  # even outlier: odd is the victim (also when both are outliers)
            out += [ref_code(a), VICTIM]
        elif abs(b) > 7:
            out += [VICTIM, ref_code(b)]
        else:
            out += [ref_code(a), ref_code(b)]
    return out


def ref_outlier(c):
    c = int(c)
    mag = 0.0 if c & 7 == 0 else OUTLIERS[(c & 7) - 1]
    return -mag if c & 8 else mag


def ref_normal(c):
    c = int(c)
    return 0.0 if c == VICTIM else float(c - 16 if c > 8 else c)


def ref_decode(codes):
    out = []
    for e, o in zip(codes[0::2], codes[1::2]):
        if o == VICTIM:
            out += [ref_outlier(e), 0.0]
        elif e == VICTIM:
            out += [0.0, ref_outlier(o)]
        else:
            out += [ref_normal(e), ref_normal(o)]
    return out


def ref_quantize(w, group_size):
    """(codes [N, K], fp16 scales [N, K/group_size]) by the authors' MSE search over alpha."""
    rows, cols = w.shape
    codes = np.zeros((rows, cols), dtype=np.uint8)
    scales = np.zeros((rows, cols // group_size), dtype=np.float16)
    for r in range(rows):
        for g in range(cols // group_size):
            x = w[r, g * group_size:(g + 1) * group_size].astype(np.float64)
            mean, std = x.mean(), x.std(ddof=1)
            x_max = max(abs(mean + 3 * std), abs(mean - 3 * std))
            best = np.inf
            for i in range(75, 250, 2):
                s16 = np.float16(x_max * (i * 0.01) / 7) if x_max > 0 else np.float16(1)
                s = float(s16)
                c = ref_encode(list(x / s))
                sse = float(np.sum((x - np.array(ref_decode(c)) * s) ** 2))
                if sse < best:
                    best, scales[r, g] = sse, s16
                    codes[r, g * group_size:(g + 1) * group_size] = c
    return codes, scales


@pytest.fixture
def olive():
    return get_format("olive4")


def stored_codes(qt):
    return unpack_codes(qt.arrays["codes"], 4, qt.padded_cols)


# --- tables -------------------------------------------------------------------------------------

def test_registered_tables_and_info(olive):
    assert "olive4" in list_formats("outlier_victim") and isinstance(olive, OliveFormat)
    assert OUTLIERS == [12, 16, 24, 32, 48, 64, 96]
    np.testing.assert_array_equal(olive.values, [ref_normal(c) for c in range(16)])
    np.testing.assert_array_equal(olive.outlier_values, [ref_outlier(c) for c in range(16)])
    assert not np.isnan(olive.values).any() and not olive.values.flags.writeable
    info = olive.info
    assert (info.max, info.min, info.n_values, info.smallest_step) == (96, -96, len(GRID), 1)
    assert info.rounding == "nearest_even" and not (info.has_nan or info.has_inf)


def test_decode_all_256_pair_codes(olive):
    pairs = np.array([[e, o] for e in range(16) for o in range(16)], dtype=np.uint8)
    got = olive.decode(pairs)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [ref_decode(list(p)) for p in pairs])
    np.testing.assert_array_equal(olive.decode(pairs.ravel()), got.ravel())  # 1-D stream


def test_encode_every_grid_pair(olive):
    pairs = np.array([[a, b] for a in GRID for b in GRID])
    codes = olive.encode(pairs)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, [ref_encode(list(p)) for p in pairs])


def test_encode_every_value_and_midpoint(olive):
    mids = [(a + b) / 2 for a, b in zip(GRID[:-1], GRID[1:])]
    points = GRID + mids + [np.nextafter(m, s) for m in mids for s in (-np.inf, np.inf)] + [-500.0, 500.0]
    for partner_first in (False, True):
        x = np.array([[0.0, t] if partner_first else [t, 0.0] for t in points])
        codes = olive.encode(x)
        np.testing.assert_array_equal(codes, [ref_encode(list(p)) for p in x])
        lone = olive.decode(codes)[:, 1 if partner_first else 0]  # a zero partner decodes 0 either way
        np.testing.assert_array_equal(lone, [ref_round(t) for t in points])


def test_tie_rule(olive):
    ties = [0.5, 1.5, -0.5, 9.5, -9.5, 14.0, 20.0, 88.0]
    x = np.stack([ties, np.zeros(len(ties))], axis=1)
    np.testing.assert_array_equal(olive.decode(olive.encode(x))[:, 0], [0, 2, 0, 12, -12, 16, 16, 96])


@pytest.mark.parametrize("pair, values, codes", [
    ([50.0, 3.0], [48, 0], [5, VICTIM]),  # even outlier: odd is the victim
    ([3.0, 50.0], [0, 48], [VICTIM, 5]),  # odd outlier: even is the victim
    ([50.0, -100.0], [48, 0], [5, VICTIM]),  # both: the even one keeps its value
    ([-100.0, 50.0], [-96, 0], [15, VICTIM]),
    ([9.4, 9.6], [0, 12], [VICTIM, 1]),  # 9.4 is normal (7), 9.6 an outlier (12)
    ([3.0, -4.0], [3, -4], [3, 12]),  # two normals: plain int4
])
def test_pair_rules(olive, pair, values, codes):
    np.testing.assert_array_equal(olive.encode(pair), codes)
    np.testing.assert_array_equal(olive.decode(codes), values)


# --- quantizer ----------------------------------------------------------------------------------

def heavy_tailed(rng, shape, df=2):
    return (rng.standard_t(df, shape) * 0.02).astype(np.float32)


@pytest.mark.parametrize("shape, group_size", [((3, 64), 32), ((2, 128), 64)])
def test_quantizer_matches_reference(rng, shape, group_size):
    w = heavy_tailed(rng, shape)
    w[0, :2] = [1.5, -2.0]  # a pair of two outliers
    qt = hwlab.quantize(w, "olive4", group_size=group_size)
    codes, scales = ref_quantize(w, group_size)
    np.testing.assert_array_equal(stored_codes(qt), codes)
    np.testing.assert_array_equal(qt.arrays["scales"], scales)
    deq = (np.array([ref_decode(list(r)) for r in codes]) *
           np.repeat(scales.astype(np.float64), group_size, axis=1)).astype(np.float32)
    np.testing.assert_array_equal(qt.dequantize(), deq)
    assert (codes == VICTIM).any()  # the victim rule was exercised


def test_channel_granularity_is_one_group_per_row(rng):
    w = heavy_tailed(rng, (2, 48))
    qt = hwlab.quantize(w, "olive4", granularity="channel")
    codes, scales = ref_quantize(w, 48)
    assert qt.arrays["scales"].shape == (2, 1)
    np.testing.assert_array_equal(stored_codes(qt), codes)
    np.testing.assert_array_equal(qt.arrays["scales"], scales)


@pytest.fixture
def both_paths(monkeypatch):
    """``run(fn)``: ``fn()`` with the numba kernel (:mod:`olive_kernel`) forced on, then with the
    numpy reference (also under ``HWLAB_DISABLE_NUMBA=1``: the kernel compiles either way)."""
    assert hasattr(olive_kernel._search, "py_func"), "the olive kernel is not numba-compiled"

    def run(fn):
        monkeypatch.setattr(jit, "USE_NUMBA", True)
        fast = fn()
        monkeypatch.setattr(jit, "USE_NUMBA", False)
        return fast, fn()
    return run


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [{}, {"granularity": "channel"}, {"scale_dtype": "int8"},
                                     {"scale_dtype": "e8m0"}, {"scale_dtype": "bf16", "group_size": 32}])
def test_kernel_equals_reference(rng, both_paths, options, dtype):
    w = heavy_tailed(rng, (6, 256)).astype(dtype)
    w[1] = 0  # a zero row: every candidate scores 0, the first wins
    w[2, :128] = 0  # a zero group
    w[3, :4] = [1.5, -2.0, 0.0, 3.0]  # a pair of outliers, an outlier with a zero partner
    fast, slow = both_paths(lambda: hwlab.quantize(w, "olive4", **options))
    assert sorted(fast.arrays) == sorted(slow.arrays)
    for name in slow.arrays:
        np.testing.assert_array_equal(fast.arrays[name], slow.arrays[name], err_msg=name)


def grid_groups(rng, olive, scales, length, dtype):
    """Groups ``[G, length]`` of heavy-tailed noise, half their elements replaced by one
    candidate's scaled union midpoints (exact ties), values, their float neighbours and points
    just inside and outside the kernel's ``GUARD`` band around the midpoints."""
    tables = MemberTables.of([olive.union])
    mids, vals = tables.midpoints[0], tables.values[0]
    near = np.concatenate([mids + d for d in (-2 * olive_kernel.GUARD, -olive_kernel.GUARD,
                                              olive_kernel.GUARD, 2 * olive_kernel.GUARD)])
    x = heavy_tailed(rng, (scales.shape[1], length)).astype(dtype) * dtype(8)
    for g in range(scales.shape[1]):
        s = scales[rng.integers(scales.shape[0]), g]
        on = np.concatenate([mids, vals]) * s  # exact in float32: <= 16 significant bits
        pick = rng.random(length)
        step = np.where(rng.random(length) < 0.5, -np.inf, np.inf)
        off = np.nextafter(rng.choice(on, length).astype(dtype), step.astype(dtype))
        banded = (rng.choice(near, length) * s).astype(dtype)
        x[g] = np.where(pick < 0.2, rng.choice(on, length).astype(dtype),
                        np.where(pick < 0.35, off, np.where(pick < 0.5, banded, x[g])))
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_equals_reference_on_ties(rng, olive, both_paths, dtype):
    groups, length = 40, 64
    scales = (np.abs(rng.standard_normal((12, groups))) * 0.01 + 1e-3).astype(np.float16).astype(np.float64)
    scales[5] = scales[4]  # duplicate candidates: equal sums, the earlier wins
    x = grid_groups(rng, olive, scales, length, dtype)
    x[0] = 0  # a zero group
    for c in [slice(None)] + [slice(c, c + 1) for c in range(len(scales))]:  # all, then each alone
        fast, slow = both_paths(lambda: olive._search(x, scales[c]))
        for name, f, r in zip(("codes", "candidate", "sum of squares"), fast, slow):
            np.testing.assert_array_equal(f, r, err_msg=f"{name}, candidates {c}")
        if c == slice(None):
            assert slow[1][0] == 0 and not (slow[1] == 5).any()
            assert (slow[0] == VICTIM).any() and len(np.unique(slow[1])) > 3  # victims, varied picks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_rounds_next_to_midpoints_exactly(olive, both_paths, dtype):
    """One element a float step off a scaled midpoint, the rest on the grid: the group's sum of
    squares is that element's alone, so rounding it the wrong way changes the sum's bits."""
    tables = MemberTables.of([olive.union])
    s = np.arange(0x1400, 0x2400, 7, dtype=np.uint16).view(np.float16).astype(np.float64)  # 2**-10..2**-6
    mids = tables.midpoints[0]
    on = (mids[:, None] * s[None, :]).astype(dtype).ravel()  # exact: <= 16 significant bits
    scales = np.tile(s, 2 * mids.size)[None, :]
    x = np.array([0, 1, -2, 3, 4, -5, 6, 7], dtype) * scales.T.astype(dtype)
    x[:, 0] = np.concatenate([np.nextafter(on, dtype(-np.inf)), np.nextafter(on, dtype(np.inf))])
    fast, slow = both_paths(lambda: olive._search(x, scales))
    for name, f, r in zip(("codes", "candidate", "sum of squares"), fast, slow):
        np.testing.assert_array_equal(f, r, err_msg=name)


def test_kernel_table_check(olive):
    tables = MemberTables.of([olive.union])
    with pytest.raises(ValueError, match="normal values to be the integers -k..k"):
        olive_kernel.search(np.zeros((1, 2), np.float32), tables.midpoints[0], tables.tie_up[0],
                            tables.values[0] * 2, tables.codes[0], np.ones((1, 1)), 8)


def test_beats_int4_on_heavy_tails(rng):
    w = heavy_tailed(rng, (64, 512), df=3)
    qt = hwlab.quantize(w, "olive4")
    assert qt.bits_per_weight == 4 + 16 / 128

    def mse(name, **options):
        return np.mean((hwlab.quantize(w, name, **options).dequantize() - w) ** 2)

    int4 = min(mse("int4"), mse("int4", scale_search="mse"))
    assert mse("olive4") < 0.6 * int4, (mse("olive4"), int4)


def test_zero_rows_and_groups(rng):
    w = heavy_tailed(rng, (3, 256))
    w[1] = 0
    qt = hwlab.quantize(w, "olive4")
    np.testing.assert_array_equal(qt.dequantize()[1], 0)
    np.testing.assert_array_equal(qt.arrays["scales"][1], np.float16(2.0**-24))  # fp16's least scale


@pytest.mark.parametrize("options", [{}, {"scale_dtype": "int8"}, {"scale_dtype": "e8m0"},
                                     {"granularity": "channel", "scale_dtype": "bf16"}])
def test_save_load_round_trip(rng, tmp_path, options):
    w = heavy_tailed(rng, (4, 256))
    qt = hwlab.quantize(w, "olive4", group_size=64, **options)
    path = tmp_path / "olive.safetensors"
    qt.save(path)
    back = hwlab.load(path)
    assert sorted(back.arrays) == sorted(qt.arrays) and back.options == qt.options
    for name in qt.arrays:
        np.testing.assert_array_equal(back.arrays[name], qt.arrays[name])
    np.testing.assert_array_equal(back.dequantize(), qt.dequantize())
    assert back.bits_per_weight == qt.bits_per_weight


def test_pad_keeps_pairs(rng):
    w = heavy_tailed(rng, (2, 200))
    qt = hwlab.quantize(w, "olive4", pad=True)
    assert qt.padded_cols == 256 and qt.dequantize().shape == (2, 200)


# --- errors -------------------------------------------------------------------------------------

def test_quantize_errors(rng):
    w = heavy_tailed(rng, (2, 126))
    with pytest.raises(ValueError, match="group_size must be even"):
        hwlab.quantize(w, "olive4", group_size=63)
    with pytest.raises(ValueError, match="K must be even, got K=125"):
        hwlab.quantize(w[:, :125], "olive4", granularity="channel")
    with pytest.raises(ValueError, match="granularity must be one of"):
        hwlab.quantize(w, "olive4", group_size=42, granularity="tensor")
    with pytest.raises(ValueError, match="scale_dtype must be one of"):
        hwlab.quantize(w, "olive4", group_size=42, scale_dtype="fp8")
    with pytest.raises(ValueError, match="unknown option 'scale_search'"):
        hwlab.quantize(w, "olive4", group_size=42, scale_search="mse")
    w[1, 3] = np.nan
    with pytest.raises(ValueError, match="contains nan at index"):
        hwlab.quantize(w, "olive4", group_size=42)
    with pytest.raises(ValueError, match="overflows scale_dtype='fp16'"):
        hwlab.quantize(np.full((1, 4), 1e6) * [1, -1, 1, -1], "olive4", group_size=4)


def test_encode_decode_errors(olive):
    with pytest.raises(ValueError, match="even length"):
        olive.encode([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="1-D or 2-D"):
        olive.encode(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        olive.encode([1.0, np.nan])
    with pytest.raises(TypeError, match="real numeric"):
        olive.encode(np.array(["a", "b"]))
    with pytest.raises(ValueError, match="code 16 is out of range 0..15"):
        olive.decode([1, 16])
    with pytest.raises(TypeError, match="integer array"):
        olive.decode([1.0, 2.0])
    with pytest.raises(ValueError, match="even length"):
        olive.decode(np.zeros((2, 3), dtype=np.uint8))
