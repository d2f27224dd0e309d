"""mixed_2_4: range-aware, memory-aligned mixed 2/4-bit groups with int8 x fp16 two-stage scales."""
import pathlib

import numpy as np
import pytest

import hwlab
from hwlab.formats import get_format, unpack_codes
from hwlab.formats import mixed
from hwlab.formats.mixed import bits_table

INT8_TOP = 255  # two-stage scale codes 1..255
FP16_LEAST = 2.0**-24  # least positive fp16 (subnormal): the floor of every stored scale


def reference(w, group_size, frac, ratios=(1.0,)):
    """Float64 definition of the whole scheme (module docstring of hwlab.formats.mixed).

    Returns a dict: ``wide`` [rows, G] bool, ``scales`` uint8 codes, ``row_scales`` fp16,
    ``zeros`` and ``codes`` per group ([rows, G] and [rows, G, group_size]), ``deq`` float32.
    """
    rows, cols = w.shape
    groups = cols // group_size
    x = w.astype(np.float64).reshape(rows, groups, group_size)
    n4 = round(frac * groups)
    spread = x.max(axis=2) - x.min(axis=2)
    wide = np.zeros((rows, groups), dtype=bool)
    for r in range(rows):
        ranked = sorted(range(groups), key=lambda g: (-spread[r, g], g))
        wide[r, ranked[:n4]] = True
    top = np.where(wide, 15, 3)
    hi, lo = np.maximum(x.max(axis=2), 0), np.minimum(x.min(axis=2), 0)
    ideal = np.stack([(hi - lo) * ratio / top for ratio in ratios])  # [C, rows, G]
    lows = np.stack([lo * ratio for ratio in ratios])
    ideal = np.maximum(ideal, FP16_LEAST)  # zero groups: the least scale, which never sets the row scale
    row = np.clip(ideal.max(axis=(0, 2)) / INT8_TOP, FP16_LEAST, 65504.0).astype(np.float16)
    codes8 = np.clip(np.rint(ideal / row.astype(np.float64)[None, :, None]), 1, INT8_TOP)
    s = codes8 * row.astype(np.float64)[None, :, None]
    z = np.clip(np.rint(-lows / s), 0, top)
    q = np.clip(np.rint(x[None] / s[..., None] + z[..., None]), 0, top[None, :, :, None])
    deq = (q - z[..., None]) * s[..., None]
    sse = ((x[None] - deq) ** 2).sum(axis=3)
    best = sse.argmin(axis=0)  # first minimum: the earlier ratio wins ties
    take = lambda a: np.take_along_axis(a, best[None, ..., None] if a.ndim == 4 else best[None], axis=0)[0]
    return {"wide": wide, "scales": take(codes8).astype(np.uint8), "row_scales": row.reshape(-1, 1),
            "zeros": take(z), "codes": take(q), "deq": take(deq).astype(np.float32).reshape(rows, cols)}


def group_codes(qt):
    """Codes [rows, G, gs] and zero points [rows, G] of a quantized tensor, reassembled in group order."""
    rows, cols, gs = qt.shape[0], qt.padded_cols, qt.group_size
    groups = cols // gs
    wide = unpack_codes(qt.arrays["group_bits"], 1, groups).astype(bool)
    codes, zeros = np.zeros((rows, groups, gs), np.uint8), np.zeros((rows, groups), np.uint8)
    for suffix, bits, mask in (("4", 4, wide), ("2", 2, ~wide)):
        n = int(mask[0].sum())
        codes[mask] = unpack_codes(qt.arrays["codes" + suffix], bits, n * gs).reshape(-1, gs)
        zeros[mask] = unpack_codes(qt.arrays["zeros" + suffix], bits, n).ravel()
    return wide, codes, zeros


def weights(rng, rows, cols, group_size, zero_group=True):
    """Gaussian weights whose groups have widely different ranges, plus (optionally) an all-zero group."""
    w = rng.standard_normal((rows, cols // group_size, group_size)) * 0.02
    w *= rng.lognormal(0, 0.7, (rows, cols // group_size, 1))
    w += rng.normal(0, 0.01, (rows, cols // group_size, 1))  # affine: off-centre groups
    if zero_group:
        w[0, 1] = 0
    return w.reshape(rows, cols).astype(np.float32)


@pytest.mark.parametrize("group_size, frac, search", [
    (128, 0.425, "absmax"), (64, 0.3, "absmax"), (256, 0.5, "absmax"), (128, 0.425, "mse"), (64, 0.8, "mse"),
])
def test_matches_reference(rng, group_size, frac, search):
    w = weights(rng, 6, 1024, group_size)
    qt = hwlab.quantize(w, "mixed_2_4", group_size, frac_4bit=frac, scale_search=search)
    ratios = get_format("mixed_2_4").option_values({})["clip_ratios"] if search == "mse" else (1.0,)
    ref = reference(w, group_size, frac, ratios)
    wide, codes, zeros = group_codes(qt)
    np.testing.assert_array_equal(wide, ref["wide"])
    np.testing.assert_array_equal(qt.arrays["scales"], ref["scales"])
    np.testing.assert_array_equal(qt.arrays["row_scales"], ref["row_scales"])
    np.testing.assert_array_equal(zeros, ref["zeros"])
    np.testing.assert_array_equal(codes, ref["codes"])
    np.testing.assert_array_equal(qt.dequantize(), ref["deq"])


def test_selection_by_range_not_absmax():
    gs = 64
    base = np.linspace(-1, 1, gs)
    # group ranges 2, 0.5, 1.2 (absmax 1.2 but range 1.2), 3, 0.5, 1.0 (values 0..1: absmax 1, range 1)
    groups = [base, base / 4, base * 0.6 + 0.6, base * 1.5, base / 4, base / 2 + 0.5]
    w = np.concatenate(groups)[None].astype(np.float32)
    for frac, expected in [(2 / 6, [0, 3]), (3 / 6, [0, 2, 3]), (4 / 6, [0, 2, 3, 5])]:
        wide, _, _ = group_codes(hwlab.quantize(w, "mixed_2_4", gs, frac_4bit=frac))
        assert np.flatnonzero(wide[0]).tolist() == expected


def test_equal_ranges_take_the_lower_group_index(rng):
    w = np.tile(rng.standard_normal(64), 8)[None].astype(np.float32)  # 8 groups, identical ranges
    wide, _, _ = group_codes(hwlab.quantize(w, "mixed_2_4", 64, frac_4bit=0.425))  # round(3.4) = 3
    assert np.flatnonzero(wide[0]).tolist() == [0, 1, 2]


@pytest.mark.parametrize("group_size", [64, 128, 256])
def test_every_group_is_a_16_byte_aligned_load(rng, group_size):
    w = weights(rng, 3, 2048, group_size)
    qt = hwlab.quantize(w, "mixed_2_4", group_size)
    wide, codes, _ = group_codes(qt)
    for suffix, bits, mask in (("4", 4, wide), ("2", 2, ~wide)):
        packed = qt.arrays["codes" + suffix]
        flat = np.ascontiguousarray(packed).view(np.uint8).ravel()
        group_bytes = group_size * bits // 8
        assert group_bytes % 16 == 0
        for r in range(qt.shape[0]):
            for j, g in enumerate(np.flatnonzero(mask[r])):
                offset = r * packed.shape[1] * 4 + j * group_bytes
                assert offset % 16 == 0
                chunk = flat[offset:offset + group_bytes].view("<u4").astype(np.uint32)[None]
                np.testing.assert_array_equal(unpack_codes(chunk, bits, group_size)[0], codes[r, g])


@pytest.mark.parametrize("search", ["absmax", "mse"])
def test_frac_0_is_int2_asym_and_frac_1_is_int4_asym(rng, search):
    w = weights(rng, 4, 512, 128, zero_group=False)  # int*_asym give a zero group scale 1, which sets its row scale
    low = hwlab.quantize(w, "mixed_2_4", frac_4bit=0, scale_search=search)
    assert not unpack_codes(low.arrays["group_bits"], 1, 4).any() and low.arrays["codes4"].shape == (4, 0)
    int2 = hwlab.quantize(w, "int2_asym", scale_dtype="int8", scale_search=search)
    np.testing.assert_array_equal(low.dequantize(), int2.dequantize())
    high = hwlab.quantize(w, "mixed_2_4", frac_4bit=1.0, scale_search=search)
    assert unpack_codes(high.arrays["group_bits"], 1, 4).all() and high.arrays["codes2"].shape == (4, 0)
    int4 = hwlab.quantize(w, "int4_asym", scale_dtype="int8", scale_search=search)
    np.testing.assert_array_equal(high.dequantize(), int4.dequantize())
    error = lambda q: float(((q.dequantize() - w) ** 2).mean())
    mid = hwlab.quantize(w, "mixed_2_4", scale_search=search)
    assert error(high) < error(mid) < error(low)


def test_bits_table_matches_stored_bytes(rng):
    table = bits_table()
    assert table in mixed.__doc__.replace("\n    ", "\n")
    lines = table.splitlines()
    fracs = [float(h.split("=")[1]) for h in lines[0].split()[1:]]
    for line in lines[1:]:
        group_size, *cells = line.split()
        for frac, cell in zip(fracs, cells):
            qt = hwlab.quantize(weights(rng, 2, 4096, int(group_size)), "mixed_2_4", int(group_size), frac_4bit=frac)
            assert f"{qt.bits_per_weight:.4f}" == cell, (group_size, frac)
    assert "2.9805" in table  # group 128, frac 0.425: see the module docstring's breakdown


@pytest.mark.parametrize("frac", [0, 0.425])
def test_save_load_round_trip(rng, tmp_path, frac):
    qt = hwlab.quantize(weights(rng, 5, 1024, 128)[:, :1000], "mixed_2_4", pad=True, frac_4bit=frac)
    qt.save(tmp_path / "m.safetensors")
    back = hwlab.load(tmp_path / "m.safetensors")
    assert back.options == qt.options and back.shape == (5, 1000)
    for name, array in qt.arrays.items():
        assert back.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(back.arrays[name], array)
    np.testing.assert_array_equal(back.dequantize(), qt.dequantize())


@pytest.mark.parametrize("group_size", [32, 96, 100])
def test_group_size_must_be_a_multiple_of_64(rng, group_size):
    with pytest.raises(ValueError, match=f"multiple of 64 .*16-byte.*got {group_size}"):
        hwlab.quantize(weights(rng, 2, 9600, 64 * 3)[:, :group_size * 6], "mixed_2_4", group_size)


@pytest.mark.parametrize("options, error, match", [
    ({"frac_4bit": 1.5}, ValueError, r"frac_4bit must be in \[0, 1\].*got 1.5"),
    ({"frac_4bit": -0.1}, ValueError, r"frac_4bit must be in \[0, 1\]"),
    ({"frac_4bit": "0.5"}, TypeError, "frac_4bit must be a number"),
    ({"frac_4bit": True}, TypeError, "frac_4bit must be a number"),
    ({"scale_search": "grid"}, ValueError, "scale_search must be one of"),
    ({"clip_ratios": (1.2,)}, ValueError, "clip_ratios must be"),
    ({"scale_dtype": "fp16"}, ValueError, "unknown option 'scale_dtype'"),
])
def test_bad_options(rng, options, error, match):
    with pytest.raises(error, match=match):
        hwlab.quantize(weights(rng, 2, 256, 128), "mixed_2_4", **options)


def test_inconsistent_group_bits_are_refused(rng):
    qt = hwlab.quantize(weights(rng, 3, 512, 128), "mixed_2_4")
    arrays = dict(qt.arrays, group_bits=qt.arrays["group_bits"] ^ np.uint32(1))
    bad = type(qt)(qt.format, qt.shape, qt.group_size, qt.options, arrays, qt.padded_cols)
    with pytest.raises(ValueError, match="group_bits of row 0 mark .* groups as 4-bit, expected 2"):
        bad.dequantize()


def test_readme_shows_the_current_bits_table():
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    assert bits_table() in readme, "README's mixed_2_4 table is stale: paste bits_table() output again"


@pytest.mark.parametrize("entries", [1, 5, 31, 32, 33, 64, 86])
def test_group_flag_count_ignores_padding_bits(entries):
    """The load's count of 4-bit groups (one popcount a word) equals the unpacked bits, whatever the padding."""
    from hwlab.formats.mixed import _set_bits_per_row
    from hwlab.formats.packing import unpack_codes

    words = np.random.default_rng(entries).integers(0, 2**32, (6, -(-entries // 32)), dtype=np.uint64).astype(np.uint32)
    assert (_set_bits_per_row(words, entries) == unpack_codes(words, 1, entries).sum(axis=1)).all()


@pytest.mark.parametrize("entries", [1, 5, 31, 32, 33, 64, 86])
def test_the_read_s_flag_count_scan_finds_the_first_row_the_numpy_count_finds(entries):
    """FlagCountScan (compiled, run on blocks of rows in any order) names the row the numpy count names."""
    from hwlab.formats.mixed import FlagCountScan, _first_count_not, _set_bits_per_row

    words = np.random.default_rng(entries).integers(0, 2**32, (40, -(-entries // 32)), dtype=np.uint64)
    words = words.astype(np.uint32)
    for count in (int(_set_bits_per_row(words[:1], entries)[0]), -1):
        scan = FlagCountScan(entries, count)
        for first, end in ((24, 40), (0, 8), (8, 24)):  # blocks out of order
            scan.update(words[first:end], first)
        assert scan.row == _first_count_not(words, entries, count)
