"""Microscaling formats (OCP MX v1.0 and NVFP4) against float64 references written from the specs.

The references below share no code with hwlab: shared exponent ``floor(log2 absmax) - emax``,
element rounding from the minifloat formula (``np.rint`` is round-half-to-even), saturation by
clamping. ml_dtypes is a second, independent oracle for the OCP element types.
"""
import ml_dtypes
import numpy as np
import pytest

import hwlab
from hwlab.formats import get_format, list_formats
from hwlab.formats.microscaling import MicroscalingFormat, mxint8_element

MX = ("mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxint8")
ALL = MX + ("nvfp4",)
# OCP MX v1.0 table 1: element (exponent bits, mantissa bits, largest magnitude), emax_elem
MINIFLOAT_SPECS = {
    "mxfp4": ((2, 1, 6.0), 2),
    "mxfp6_e2m3": ((2, 3, 7.5), 2),
    "mxfp6_e3m2": ((3, 2, 28.0), 4),
    "mxfp8_e4m3": ((4, 3, 448.0), 8),
}
ML_DTYPES = {"mxfp4": ml_dtypes.float4_e2m1fn, "mxfp6_e2m3": ml_dtypes.float6_e2m3fn,
             "mxfp6_e3m2": ml_dtypes.float6_e3m2fn, "mxfp8_e4m3": ml_dtypes.float8_e4m3fn}


# ----------------------------------------------------------------------------- references

def ref_minifloat(y, exp_bits, man_bits, largest):
    """Round float64 ``y`` to sign+E+M (standard bias, subnormals), ties to even, saturating."""
    bias = 2 ** (exp_bits - 1) - 1
    mag = np.abs(y)
    exponent = np.maximum(np.floor(np.log2(np.where(mag > 0, mag, 1.0))), 1 - bias)
    quantum = 2.0 ** (exponent - man_bits)
    return np.sign(y) * np.minimum(np.rint(mag / quantum) * quantum, largest)


def ref_mxint8(y):
    """INT8 with implicit scale 2**-6, half to even, clamped to +-127 (as microxcaling)."""
    return np.clip(np.rint(y * 64), -127, 127) / 64


def ref_element(name):
    if name == "mxint8":
        return ref_mxint8, 0
    (e, m, largest), emax = MINIFLOAT_SPECS[name]
    return (lambda y: ref_minifloat(y, e, m, largest)), emax


def ref_mx(w, name):
    """Dequantized float32 W and E8M0 exponents [N, K/32] of the OCP MX v1.0 quantizer."""
    rounder, emax = ref_element(name)
    blocks = w.astype(np.float64).reshape(-1, 32)
    absmax = np.abs(blocks).max(axis=1)
    shared = np.where(absmax > 0, np.floor(np.log2(np.where(absmax > 0, absmax, 1.0))) - emax, -127)
    shared = np.clip(shared, -127, 127)
    scale = 2.0 ** shared[:, None]
    deq = rounder(blocks / scale) * scale
    return deq.astype(np.float32).reshape(w.shape), shared.reshape(w.shape[0], -1)


def ref_nvfp4(w):
    """Dequantized float32 W, decoded block scales and the float32 tensor scale of NVFP4."""
    blocks = w.astype(np.float64).reshape(-1, 16)
    amax = np.abs(blocks).max()
    g = np.float32(amax / (6 * 448)) if amax > 0 else np.float32(1)
    ideal = np.abs(blocks).max(axis=1) / 6 / np.float64(g)
    block_scale = ref_minifloat(np.maximum(ideal, 2.0**-9), 4, 3, 448.0)  # E4M3, least positive 2**-9
    total = block_scale[:, None] * np.float64(g)
    deq = ref_minifloat(blocks / total, 2, 1, 6.0) * total
    return deq.astype(np.float32).reshape(w.shape), block_scale.reshape(w.shape[0], -1), g


def wide_weights(rng, rows, cols, block, low=-135, high=120):
    """Gaussian float32 weights whose blocks span magnitudes 2**low .. 2**high (E8M0 clamps included
    from low = -127 down; blocks so small that they would quantize to all zeros are refused)."""
    w = rng.standard_normal((rows, cols))
    w *= np.repeat(2.0 ** rng.integers(low, high, (rows, cols // block)), block, axis=1)
    w[0, :block] = 0  # one all-zero block
    return w.astype(np.float32)


# ----------------------------------------------------------------------------- element formats

@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_every_element_code_decodes_as_ml_dtypes(name):
    fmt = get_format(name)
    codes = np.arange(2**fmt.bits, dtype=np.uint8)
    expected = codes.view(ML_DTYPES[name]).astype(np.float64)
    np.testing.assert_array_equal(fmt.values, expected)
    np.testing.assert_array_equal(fmt.decode(codes), expected.astype(np.float32))


def test_every_mxint8_code_decodes_as_twos_complement_over_64():
    fmt = get_format("mxint8")
    codes = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(fmt.decode(codes), codes.view(np.int8) / np.float32(64))
    assert fmt.info.max == 127 / 64 and fmt.info.min == -127 / 64  # code 0x80 (-2) never emitted


@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_element_encode_of_every_value_and_midpoint_matches_ml_dtypes(name):
    fmt = get_format(name)
    finite = np.unique(fmt.values[np.isfinite(fmt.values)])
    x = np.concatenate([finite, (finite[:-1] + finite[1:]) / 2])
    np.testing.assert_array_equal(fmt.encode(x), x.astype(ML_DTYPES[name]).view(np.uint8))


def test_mxint8_element_encode_rounds_half_to_even_and_clamps():
    x = np.array([0.5, 1.5, 2.5, -2.5, 126.5, 127.5, 300, -300]) / 64
    np.testing.assert_array_equal(get_format("mxint8").encode(x).view(np.int8), [0, 2, 2, -2, 126, 127, 127, -127])


@pytest.mark.parametrize("name", MX)
def test_emax_elem_is_the_largest_power_of_two_of_the_element(name):
    fmt = get_format(name)
    assert fmt.emax_elem == np.floor(np.log2(fmt.info.max)) == ref_element(name)[1]


def test_format_facts_delegate_to_the_element():
    fmt = get_format("mxfp4")
    assert (fmt.name, fmt.bits, fmt.family, fmt.default_group_size) == ("mxfp4", 4, "microscaling", 32)
    assert get_format("nvfp4").default_group_size == 16
    assert fmt.values is fmt.element.values and fmt.info.max == 6.0
    np.testing.assert_array_equal(fmt.encode([5.0, -0.1]), [6, 8])  # 5 ties to 4 (even), -0.1 -> -0
    assert set(MX + ("nvfp4",)) <= set(list_formats("microscaling"))


# ----------------------------------------------------------------------------- quantizers

@pytest.mark.parametrize("name", MX)
def test_mx_matches_float64_reference(name, rng):
    w = wide_weights(rng, 16, 256, 32, low=-127)  # down to the E8M0 floor 2**-127, not below (that is refused)
    qt = hwlab.quantize(w, name)
    deq, shared = ref_mx(w, name)
    np.testing.assert_array_equal(qt.arrays["scales"], (shared + 127).astype(np.uint8))
    np.testing.assert_array_equal(qt.dequantize(), deq)
    assert qt.arrays["scales"][0, 0] == 0 and not qt.dequantize()[0, :32].any()  # zero block: e = -127


@pytest.mark.parametrize("name", MX)
def test_mx_ties_round_to_even_and_overflow_saturates(name, rng):
    """Blocks of exact midpoints (and values past the element max) under random shared exponents."""
    fmt = get_format(name)
    finite = np.unique(fmt.values[np.isfinite(fmt.values)])
    pool = np.concatenate([(finite[:-1] + finite[1:]) / 2, [fmt.info.max * 1.2, -fmt.info.max * 1.2]])
    pool = pool[np.abs(pool) < 2.0 ** (fmt.emax_elem + 1)]  # keep the block's shared exponent
    x = rng.choice(pool, (8, 64))
    x[:, ::32] = 2.0 ** fmt.emax_elem  # sets floor(log2 absmax) = emax_elem in every block
    w = (x * np.repeat(2.0 ** rng.integers(-20, 20, (8, 2)), 32, axis=1)).astype(np.float32)
    np.testing.assert_array_equal(hwlab.quantize(w, name).dequantize(), ref_mx(w, name)[0])


@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_mx_elements_match_ml_dtypes(name, rng):
    w = wide_weights(rng, 8, 512, 32, low=-60, high=60)
    qt = hwlab.quantize(w, name)
    scale = np.repeat(2.0 ** (qt.arrays["scales"].astype(np.float64) - 127), 32, axis=1)
    largest = float(ml_dtypes.finfo(ML_DTYPES[name]).max)
    y = np.clip(w / scale, -largest, largest)  # saturation (float8_e4m3fn would overflow to NaN)
    expected = y.astype(ML_DTYPES[name]).astype(np.float64) * scale
    np.testing.assert_array_equal(qt.dequantize(), expected.astype(np.float32))


def test_nvfp4_matches_float64_reference(rng):
    w = wide_weights(rng, 16, 256, 16, low=-11, high=8)  # wider spans lose whole blocks: refused
    qt = hwlab.quantize(w, "nvfp4")
    deq, block_scale, g = ref_nvfp4(w)
    assert (qt.arrays["scales"] == 1).any()  # some block scales raised to the least E4M3, 2**-9
    assert qt.arrays["tensor_scale"].dtype == np.float32 and qt.arrays["tensor_scale"][0, 0] == g
    np.testing.assert_array_equal(qt.arrays["scales"].view(ml_dtypes.float8_e4m3fn).astype(np.float64), block_scale)
    np.testing.assert_array_equal(qt.dequantize(), deq)


def test_nvfp4_all_zero_tensor():
    qt = hwlab.quantize(np.zeros((2, 32), np.float32), "nvfp4")
    assert qt.arrays["tensor_scale"][0, 0] == 1.0
    np.testing.assert_array_equal(qt.arrays["scales"], 1)  # E4M3 code 1 = 2**-9, never a zero scale
    assert not qt.dequantize().any()


@pytest.mark.parametrize("name, bits", [("mxfp4", 4.25), ("mxfp6_e2m3", 6.25), ("mxfp6_e3m2", 6.25),
                                        ("mxfp8_e4m3", 8.25), ("mxint8", 8.25), ("nvfp4", 4.5 + 32 / (4 * 256))])
def test_bits_per_weight(name, bits, rng):
    assert hwlab.quantize(rng.standard_normal((4, 256)), name).bits_per_weight == bits


@pytest.mark.parametrize("name", ALL)
def test_save_load_round_trip_is_bit_exact(name, rng, tmp_path):
    low, high = (-10, 10) if name == "nvfp4" else (-20, 20)  # nvfp4's block scales span 2**-9 .. 448 of one tensor scale
    qt = hwlab.quantize(wide_weights(rng, 8, 128, 32, low=low, high=high), name)
    qt.save(tmp_path / "w.safetensors")
    back = hwlab.load(tmp_path / "w.safetensors")
    assert back.arrays.keys() == qt.arrays.keys()
    for key, array in qt.arrays.items():
        assert back.arrays[key].dtype == array.dtype
        np.testing.assert_array_equal(back.arrays[key], array)
    np.testing.assert_array_equal(back.dequantize(), qt.dequantize())


def test_padding_k_to_a_whole_block(rng):
    w = rng.standard_normal((3, 40)).astype(np.float32)
    qt = hwlab.quantize(w, "mxfp4", pad=True)
    padded = np.concatenate([w, np.zeros((3, 24), np.float32)], axis=1)
    np.testing.assert_array_equal(qt.dequantize(), ref_mx(padded, "mxfp4")[0][:, :40])


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("name, size, block", [("mxfp4", 64, 32), ("mxint8", 16, 32), ("nvfp4", 32, 16)])
def test_wrong_group_size_names_the_block(name, size, block, rng):
    with pytest.raises(ValueError, match=f"{name} uses blocks of {block} .* group_size must be {block}, got {size}"):
        hwlab.quantize(rng.standard_normal((2, 128)), name, group_size=size)


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_only_group_granularity(granularity, rng):
    with pytest.raises(ValueError, match=f"granularity must be 'group', got '{granularity}'"):
        hwlab.quantize(rng.standard_normal((2, 64)), "mxfp6_e3m2", granularity=granularity)


def test_other_options_and_ragged_k_are_refused(rng):
    with pytest.raises(ValueError, match="unknown option 'scale_dtype'"):
        hwlab.quantize(rng.standard_normal((2, 64)), "mxfp4", scale_dtype="fp16")
    with pytest.raises(ValueError, match="group_size must divide K=40, got 32"):
        hwlab.quantize(rng.standard_normal((2, 40)), "mxfp4")


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "mxint8"])
def test_overflowing_inputs_raise(name):
    huge = np.full((1, 32), 1e300)
    with pytest.raises(ValueError, match=r"W holds 1e\+300 at index \(0, 0\), beyond the float32 range"):
        hwlab.quantize(huge, name)
    top = np.full((1, 32), np.finfo(np.float32).max, np.float32)
    assert np.isfinite(hwlab.quantize(top, name).dequantize()).all()  # the largest float32 still works


def test_constructor_checks_the_scale_rule():
    with pytest.raises(ValueError, match="must be 'e8m0' .* or 'e4m3'"):
        MicroscalingFormat("mx_bad", mxint8_element(), block_size=32, scale_dtype="fp16", description="")
    with pytest.raises(ValueError, match="emax_elem is required with scale_dtype='e8m0'"):
        MicroscalingFormat("mx_bad", mxint8_element(), block_size=32, scale_dtype="e8m0", description="")
