"""NF4 double quantization (QLoRA / bitsandbytes ``compress_statistics``) against a float64 reference."""
import hashlib

import numpy as np
import pytest

import hwlab
from hwlab.formats import get_format, unpack_codes
from hwlab.formats.double_quant import SECOND_LEVEL_BLOCK, compress_absmax, decompress_absmax, dynamic_map

NF4_ZERO_CODE = 7  # NF4_VALUES[7] == 0.0


def f32(x):
    """Round float64 to float32 and back: one IEEE float32 operation when ``x`` is its exact result."""
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


def reference(w, block):
    """Float64 definition of nf4 double_quant=True (module docstring of hwlab.formats.double_quant).

    Returns NF4 codes [rows, cols], dynamic-map codes [rows, cols/block], second-level absmax,
    offset, decoded scales and the dequantized matrix. Float32 roundings happen exactly where
    bitsandbytes computes in float32 (products and sums of float32 values are exact in float64).
    """
    rows, cols = w.shape
    x = w.astype(np.float64).reshape(-1, block)
    absmax = f32(np.abs(x).max(axis=1))
    offset = f32(absmax.mean())
    centered = f32(absmax - offset)
    dmap = dynamic_map().astype(np.float64)
    n = centered.size
    second = np.empty(-(-n // SECOND_LEVEL_BLOCK))
    qcodes = np.empty(n, dtype=np.int64)
    for b in range(second.size):
        part = slice(b * SECOND_LEVEL_BLOCK, (b + 1) * SECOND_LEVEL_BLOCK)
        second[b] = np.abs(centered[part]).max()
        ratio = centered[part] / (second[b] if second[b] > 0 else 1.0)
        qcodes[part] = np.abs(ratio[:, None] - dmap).argmin(axis=1)  # first minimum: ties to the lower value
    s = f32(f32(dmap[qcodes] * np.repeat(second, SECOND_LEVEL_BLOCK)[:n]) + offset)
    table = get_format("nf4").values
    codes = np.abs(x[:, :, None] - table * s[:, None, None]).argmin(axis=2)
    codes[s == 0] = NF4_ZERO_CODE
    deq = f32(table[codes] * s[:, None]).reshape(rows, cols)
    return codes.reshape(rows, cols), qcodes.reshape(rows, -1), second, offset, s, deq


def weights(rng, rows, cols):
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.02
    w[rng.integers(0, rows, 6), rng.integers(0, cols, 6)] *= 15
    return w


def test_dynamic_map_is_bitsandbytes():
    table = dynamic_map()
    # sha256 of bitsandbytes 0.50.2 create_dynamic_map().numpy() (float32 bytes), CPU torch
    assert hashlib.sha256(table.tobytes()).hexdigest()[:16] == "e732639a65f497b4"
    assert table.dtype == np.float32 and table.shape == (256,)
    assert np.all(np.diff(table) > 0)
    assert table[127] == 0 and table[255] == 1 and table[0] == np.float32(-0.99296875)
    assert table[128] == 5.500000384017767e-07  # float32(float32(0.55) * float32(1e-6)), as bitsandbytes
    assert (table < 0).sum() == 127


def test_dynamic_map_midpoints_are_exact_under_float32_scales():
    values = dynamic_map().astype(np.float64)
    mids = (values[:-1] + values[1:]) / 2
    mantissa, _ = np.frexp(np.abs(mids[mids != 0]))
    bits = max(next(k for k in range(54) if np.ldexp(m, k) == np.rint(np.ldexp(m, k))) for m in mantissa)
    assert bits + 24 <= 53  # midpoint times a float32 scale is exact in float64


@pytest.mark.parametrize("block, shape", [(64, (24, 512)), (32, (7, 320)), (256, (9, 1024)), (4096, (3, 4096))])
def test_double_quant_matches_reference(rng, block, shape):
    w = weights(rng, *shape)
    qt = hwlab.quantize(w, "nf4", block, double_quant=True)
    codes, qcodes, second, offset, s, deq = reference(w, block)
    np.testing.assert_array_equal(unpack_codes(qt.arrays["codes"], 4, shape[1]), codes)
    np.testing.assert_array_equal(qt.arrays["scales"], qcodes)
    np.testing.assert_array_equal(qt.arrays["scale_absmax"].ravel(), second)
    assert qt.arrays["scale_offset"][0, 0] == offset
    np.testing.assert_array_equal(decompress_absmax(qt.arrays).ravel(), s)
    np.testing.assert_array_equal(qt.dequantize(), deq)


def test_second_level_matches_bitsandbytes():
    """bitsandbytes 0.50.2 quantize_4bit(W, blocksize=64, compress_statistics=True, 'nf4') on the CPU."""
    rng = np.random.default_rng(7)
    w = (np.rint(rng.standard_normal((20, 1024)) * 0.02 * 4096) / 4096).astype(np.float32)  # exact mean
    arrays = compress_absmax(np.abs(w.reshape(20, -1, 64)).max(axis=2))
    assert arrays["scales"].shape == (20, 16)  # 320 scales: a full block of 256 and a partial one
    assert hashlib.sha256(arrays["scales"].tobytes()).hexdigest()[:16] == "f4cdd34adbfd711b"
    assert arrays["scales"].ravel()[:8].tolist() == [85, 55, 32, 216, 164, 56, 91, 195]
    assert arrays["scale_absmax"].ravel().view(np.uint32).tolist() == [0x3CF47B34, 0x3C8B84CC]
    assert arrays["scale_offset"].view(np.uint32)[0, 0] == 0x3D52C266
    decoded = decompress_absmax(arrays)
    assert decoded.dtype == np.float32
    assert hashlib.sha256(decoded.tobytes()).hexdigest()[:16] == "f956adabb5436124"


def test_negative_decoded_scale_rounds_to_nearest(rng):
    absmax = np.ones(64, dtype=np.float32)
    absmax[0], absmax[1] = 2.125, 0.001  # block 1 decodes to a small negative scale
    w = rng.uniform(-1, 1, (64, 64)).astype(np.float32) * absmax[:, None]
    w[np.arange(64), rng.integers(0, 64, 64)] = absmax
    w = w.reshape(4, 1024)
    qt = hwlab.quantize(w, "nf4", double_quant=True)
    codes, *_, s, deq = reference(w, 64)
    assert s[1] < 0
    np.testing.assert_array_equal(unpack_codes(qt.arrays["codes"], 4, 1024), codes)
    np.testing.assert_array_equal(qt.dequantize(), deq)


def test_zero_matrix_and_zero_blocks(rng):
    w = weights(rng, 4, 256)
    w[1] = 0
    qt = hwlab.quantize(w, "nf4", double_quant=True)
    codes, *_, deq = reference(w, 64)
    np.testing.assert_array_equal(qt.dequantize(), deq)
    zero = hwlab.quantize(np.zeros((2, 128), np.float32), "nf4", double_quant=True)
    np.testing.assert_array_equal(zero.dequantize(), 0)


def test_bits_per_weight_at_block_64(rng):
    rows, cols = 64, 4096
    qt = hwlab.quantize(weights(rng, rows, cols), "nf4", double_quant=True)
    blocks = rows * cols // 64
    expected = 4 + 8 / 64 + 32 * (blocks // 256) / (rows * cols) + 32 / (rows * cols)
    assert qt.bits_per_weight == pytest.approx(expected, abs=1e-12)
    assert qt.bits_per_weight == pytest.approx(4.127, abs=1e-3)


def test_defaults_are_bitsandbytes_block_64_without_double_quant(rng):
    w = weights(rng, 8, 256)
    qt = hwlab.quantize(w, "nf4")
    assert get_format("nf4").default_group_size == 64 and qt.group_size == 64
    assert qt.options["double_quant"] is False and qt.options["scale_dtype"] == "fp16"
    assert sorted(qt.arrays) == ["codes", "scales"]
    assert qt.bits_per_weight == 4 + 16 / 64
    assert hwlab.quantize(w, "nf4", double_quant=True).options["scale_dtype"] == "fp32"
    assert hwlab.quantize(w, "nf4", double_quant=True, scale_dtype="fp32").options["scale_dtype"] == "fp32"


def test_save_load_round_trip(rng, tmp_path):
    qt = hwlab.quantize(weights(rng, 6, 640), "nf4", 128, double_quant=True)
    qt.save(tmp_path / "w.safetensors")
    back = hwlab.load(tmp_path / "w.safetensors")
    assert back.options == qt.options
    for name, array in qt.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], array)
        assert back.arrays[name].dtype == array.dtype
    np.testing.assert_array_equal(back.dequantize(), qt.dequantize())


@pytest.mark.parametrize("group_size", [48, 16, 8192, 96])
def test_block_size_must_be_power_of_two_32_to_4096(rng, group_size):
    w = weights(rng, 2, 3 * 8192)
    with pytest.raises(ValueError, match=r"power of two in 32\.\.4096 .*got " + str(group_size)):
        hwlab.quantize(w, "nf4", group_size, double_quant=True)
    hwlab.quantize(w[:, :96 * 64], "nf4", 96)  # without double_quant any group size goes


@pytest.mark.parametrize("options, error, match", [
    ({"double_quant": "yes"}, TypeError, "double_quant must be True or False, got 'yes'"),
    ({"double_quant": True, "scale_dtype": "fp16"}, ValueError, "leave scale_dtype out, got 'fp16'"),
    ({"double_quant": True, "scale_search": "mse"}, ValueError, "needs scale_search='absmax'.*got 'mse'"),
    ({"double_quant": True, "granularity": "channel"}, ValueError, "needs granularity='group'"),
    ({"double_quant": True, "scale_clamp": (1e-5, 1.0)}, ValueError, "needs scale_clamp=None"),
])
def test_bad_options(rng, options, error, match):
    with pytest.raises(error, match=match):
        hwlab.quantize(weights(rng, 2, 128), "nf4", **options)
