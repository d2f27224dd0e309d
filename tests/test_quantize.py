"""The scaled-group quantizer against a float64 reference, and its features.

The reference below recomputes every group's scale from the documented rule, rounds it with
an independent decoder of each scale dtype (numpy float16/float32, ml_dtypes bfloat16 and
float8_e4m3fn, powers of two for E8M0, code x fp16 row scale for int8), and rounds every
element to the nearest value of the scaled grid (:func:`formatting.element_reference_codes`).
"""
import math
import os
import struct

import ml_dtypes
import numpy as np
import pytest
import torch

import hwlab
from hwlab.formats import error_metrics, get_format, list_formats, unpack_codes

from formatting import element_reference_codes, mismatch_report

INT8_SCALE_CODES = 255  # int8 scales: code 1..255 times one fp16 scale per row
E8M0_BIAS = 127  # OCP MX v1.0


# ----------------------------------------------------------------------------- reference

def decode_scales(arrays: dict, scale_dtype: str) -> np.ndarray:
    """float64 scales from the stored ``scales`` (and ``row_scales``), per the storage table."""
    raw = arrays["scales"]
    if scale_dtype in ("fp16", "fp32"):
        return raw.astype(np.float64)
    if scale_dtype == "bf16":
        return raw.view(ml_dtypes.bfloat16).astype(np.float64)
    if scale_dtype == "e8m0":
        return np.exp2(raw.astype(np.float64) - E8M0_BIAS)
    if scale_dtype == "e4m3":
        return raw.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    return raw.astype(np.float64) * arrays["row_scales"].astype(np.float64)


def round_scales(ideal: np.ndarray, scale_dtype: str) -> np.ndarray:
    """Ideal scales ``[scale_rows, groups]`` rounded as the scale dtype stores them."""
    if scale_dtype == "fp16":
        return ideal.astype(np.float16).astype(np.float64)
    if scale_dtype == "fp32":
        return ideal.astype(np.float32).astype(np.float64)
    if scale_dtype == "bf16":
        return ideal.astype(ml_dtypes.bfloat16).astype(np.float64)
    if scale_dtype == "e8m0":
        return np.exp2(np.ceil(np.log2(ideal)))  # the least power of two >= ideal
    if scale_dtype == "e4m3":
        return ideal.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    row = (ideal.max(axis=1, keepdims=True) / INT8_SCALE_CODES).astype(np.float16).astype(np.float64)
    return np.clip(np.rint(ideal / row), 1, INT8_SCALE_CODES) * row


def group_view(w: np.ndarray, group_size: int, granularity: str) -> np.ndarray:
    """``w`` as ``[scale_rows, groups, elements]``."""
    rows, cols = w.shape
    shape = {"group": (rows, cols // group_size, group_size), "channel": (rows, 1, cols),
             "tensor": (1, 1, rows * cols)}[granularity]
    return w.astype(np.float64).reshape(shape)


def reference_quantize(w, name, group_size, granularity="group", scale_dtype="fp16", ratio=1.0, clamp="default"):
    """Codes, decoded scales, zero points and dequantized values of an element format
    (absmax, affine or absmean scaling); ``clamp`` defaults to the format's ``scale_clamp``."""
    fmt = get_format(name)
    x = group_view(w, group_size, granularity)
    if fmt.scaling == "absmax":
        ideal = np.abs(x).max(axis=2) * ratio / max(abs(fmt.info.max), abs(fmt.info.min))
    elif fmt.scaling == "absmean":
        ideal = np.abs(x).mean(axis=2) * ratio
    else:
        hi, lo = np.maximum(x.max(axis=2), 0) * ratio, np.minimum(x.min(axis=2), 0) * ratio
        ideal = (hi - lo) / (2**fmt.bits - 1)
    clamp = fmt.option_values({})["scale_clamp"] if clamp == "default" else clamp
    ideal = np.clip(ideal, *clamp) if clamp else ideal
    scales = round_scales(ideal, scale_dtype)
    offsets = np.zeros_like(scales)
    if fmt.scaling == "affine":
        offsets = np.clip(np.rint(-lo / scales), 0, 2**fmt.bits - 1)
    codes = np.zeros(x.shape, dtype=np.uint8)
    for r, g in np.ndindex(scales.shape):
        codes[r, g] = element_reference_codes(fmt, x[r, g], scales[r, g], offsets[r, g])
    deq = (fmt.values[codes] - offsets[..., None]) * scales[..., None]
    return codes.reshape(w.shape), scales, offsets, deq.reshape(w.shape).astype(np.float32)


def llm_like(rng, rows=8, cols=256, std=0.02):
    w = rng.standard_normal((rows, cols)) * std
    w[rng.integers(0, rows, 6), rng.integers(0, cols, 6)] *= 10
    return w.astype(np.float32)


REFERENCE_FORMATS = ("int4", "int8", "fp3_e2m0", "fp4_e2m1", "fp8_e4m3", "fp8_e5m2", "nf4", "flint4",
                     "fp4_er_pos", "fp3_ea_neg", "shift3", "int4_asym", "int8_asym", "ternary")
SCALE_DTYPES = ("fp16", "bf16", "fp32", "e8m0", "e4m3", "int8")


@pytest.mark.parametrize("granularity", ["group", "channel", "tensor"])
@pytest.mark.parametrize("scale_dtype", SCALE_DTYPES)
@pytest.mark.parametrize("name", REFERENCE_FORMATS)
def test_quantizer_matches_reference(name, scale_dtype, granularity, rng):
    fmt = get_format(name)
    # e4m3 scales and int8 fp16 row scales: keep them normal (not subnormal, not underflowing)
    w = llm_like(rng) * (5 * fmt.max_abs if scale_dtype in ("e4m3", "int8") else 1)
    qt = hwlab.quantize(w, name, 32, scale_dtype=scale_dtype, granularity=granularity)
    codes, scales, offsets, deq = reference_quantize(w, name, 32, granularity, scale_dtype)
    got = unpack_codes(qt.codes, fmt.bits, w.shape[1])
    assert np.array_equal(got, codes), mismatch_report(fmt, w, got, codes)
    assert np.array_equal(decode_scales(qt.arrays, scale_dtype), scales)
    if fmt.scaling == "affine":
        zeros = unpack_codes(qt.arrays["zeros"], fmt.bits, scales.shape[1])
        assert np.array_equal(zeros, offsets)
    assert np.array_equal(qt.dequantize(), deq)  # dequantize uses the decoded stored scale


@pytest.mark.parametrize("granularity, scale_shape", [("group", (6, 8)), ("channel", (6, 1)), ("tensor", (1, 1))])
def test_granularity_sets_scale_shape(granularity, scale_shape, rng):
    w = llm_like(rng, 6, 256)
    qt = hwlab.quantize(w, "int4", 32, granularity=granularity)
    assert qt.arrays["scales"].shape == scale_shape
    if granularity != "group":  # one group per row or per tensor: K need not divide
        odd = hwlab.quantize(w[:, :250], "int4", 32, granularity=granularity)
        assert odd.dequantize().shape == (6, 250) and odd.padded_cols == 250


def test_e8m0_scale_never_clips(rng):
    w = llm_like(rng, 16, 512) * np.exp2(rng.integers(-20, 20, (16, 1)))
    for name in ("fp4_e2m1", "int4", "fp8_e4m3", "nf4"):
        fmt = get_format(name)
        qt = hwlab.quantize(w, name, 32, scale_dtype="e8m0")
        scales = decode_scales(qt.arrays, "e8m0")
        absmax = np.abs(group_view(w, 32, "group")).max(axis=2)
        assert (absmax <= scales * fmt.max_abs).all()  # no element beyond the grid: nothing clipped
        assert (absmax > scales / 2 * fmt.max_abs).all()  # and the least such power of two
        assert np.abs(qt.dequantize()).max() <= np.abs(w).max()


def test_int8_scales_are_two_level(rng):
    w = llm_like(rng, 8, 512) * np.exp2(rng.integers(4, 10, (8, 1)))  # row scales are normal fp16
    qt = hwlab.quantize(w, "int4", 32, scale_dtype="int8")
    codes, rows = qt.arrays["scales"], qt.arrays["row_scales"]
    assert codes.dtype == np.uint8 and rows.dtype == np.float16 and rows.shape == (8, 1)
    assert (codes.max(axis=1) == INT8_SCALE_CODES).all() and codes.min() >= 1
    assert qt.bits_per_weight == 4 + 8 / 32 + 16 / 512


def test_int8_scales_ignore_all_zero_groups(rng):
    """BUG: an all-zero group gets the placeholder scale 1.0 (ZERO_GROUP_SCALE) before the int8
    row scale is taken as the row's largest scale / 255, so one zero group makes the row scale
    1/255 and every real group of the row a code of a few units."""
    w = (rng.standard_normal((4, 256)) * 0.02).astype(np.float32)
    w[:, :32] = 0  # the first group of every row is all zeros
    qt = hwlab.quantize(w, "int4", 32, scale_dtype="int8")
    ideal = np.abs(group_view(w, 32, "group")).max(axis=2)[:, 1:] / 7
    error = np.abs(decode_scales(qt.arrays, "int8")[:, 1:] / ideal - 1).max()
    assert error <= 1 / 32, f"int8 group scales are off by up to {error:.0%} (the zero group set the row scale)"


@pytest.mark.parametrize("name", ["int4", "fp4_e2m1", "nf4", "fp3_e2m0", "int4_asym", "bitmod_fp4", "bitmod_fp3"])
def test_mse_scale_search_never_worse_than_absmax(name, rng):
    w = llm_like(rng, 16, 512)
    def group_sse(qt):
        err = qt.dequantize().astype(np.float64) - w
        return (err.reshape(16, -1, 128) ** 2).sum(axis=2)
    plain = group_sse(hwlab.quantize(w, name, 128))
    searched = group_sse(hwlab.quantize(w, name, 128, scale_search="mse"))
    assert (searched <= plain * (1 + 1e-9)).all()
    assert (searched < plain).any(), "the search never found a better clipping ratio"


def test_mse_scale_search_matches_reference(rng):
    """Every clip ratio is a candidate scale; the least SSE wins, the first on ties."""
    w = llm_like(rng, 4, 128)
    ratios = (1.0, 0.9, 0.8, 0.7)
    qt = hwlab.quantize(w, "int4", 32, scale_search="mse", clip_ratios=ratios)
    candidates = [reference_quantize(w, "int4", 32, ratio=r) for r in ratios]
    err = np.stack([(c[3].astype(np.float64) - w).reshape(4, 4, 32) for c in candidates])
    sse = np.array([[[math.fsum(e * e) for e in row] for row in cand] for cand in err])
    best = np.argmin(sse, axis=0)  # argmin keeps the first of equal values
    want_deq = np.stack([c[3].reshape(4, 4, 32) for c in candidates])[best, np.arange(4)[:, None], np.arange(4)]
    assert np.array_equal(qt.dequantize(), want_deq.reshape(4, 128))
    assert len(set(best.ravel())) > 1


def test_scale_clamp_bounds_stored_scales(rng):
    # Rows whose scales the clamp raises (their largest weights survive: a group the clamp would zero, or
    # clip by more than rounding, is refused), and one row whose groups it lowers by 3% (saturating the
    # largest weight of each, within rounding).
    w = llm_like(rng) * np.exp2(rng.integers(-6, 0, (8, 1)))
    groups = w[7].reshape(-1, 32)
    w[7] = (groups / np.abs(groups).max(axis=1, keepdims=True) * 7 * 0.103).ravel()
    qt = hwlab.quantize(w, "int4", 32, scale_clamp=(1e-3, 0.1))
    scales = decode_scales(qt.arrays, "fp16")
    assert scales.min() >= np.float16(1e-3) and scales.max() <= np.float16(0.1)
    assert (scales == np.float16(1e-3)).any() and (scales == np.float16(0.1)).any()
    assert np.array_equal(qt.dequantize(), reference_quantize(w, "int4", 32, clamp=(1e-3, 0.1))[3])


def test_ternary_matches_bitnet_formula(rng):
    w = llm_like(rng)
    qt = hwlab.quantize(w, "ternary")
    scale = np.float16(np.abs(w.astype(np.float64)).mean())
    bitnet = np.clip(np.round(w / np.float64(scale)), -1, 1) * np.float64(scale)  # np.round: half to even
    assert np.array_equal(qt.dequantize(), bitnet.astype(np.float32))


# ----------------------------------------------------------------------------- pad, torch

def test_pad_pads_k_with_zeros(rng):
    w = llm_like(rng, 4, 200)
    qt = hwlab.quantize(w, "int4", 64, pad=True)
    assert qt.shape == (4, 200) and qt.padded_cols == 256
    padded = hwlab.quantize(np.pad(w, ((0, 0), (0, 56))), "int4", 64)
    assert np.array_equal(qt.dequantize(), padded.dequantize()[:, :200])
    assert qt.bits_per_weight == 8 * qt.nbytes / (4 * 200)
    assert hwlab.quantize(w, "int4", 40, pad=True).padded_cols == 200  # already a multiple


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_torch_in_torch_out(dtype, rng):
    w = torch.from_numpy(llm_like(rng)).to(dtype)
    qt = hwlab.quantize(w, "fp4_e2m1", 64)
    out = qt.dequantize()
    assert isinstance(out, torch.Tensor) and out.device == w.device and out.dtype == torch.float32
    want = hwlab.quantize(w.double().numpy() if dtype == torch.float64 else w.float().numpy(), "fp4_e2m1", 64)
    assert np.array_equal(out.numpy(), want.dequantize())
    assert isinstance(qt.dequantize(device=None), torch.Tensor)
    assert isinstance(want.dequantize(), np.ndarray) and isinstance(want.dequantize(device="cpu"), torch.Tensor)
    metrics = qt.error(w, torch.ones(3, 256, dtype=dtype))
    assert metrics == want.error(w.double().numpy(), np.ones((3, 256)))


# ----------------------------------------------------------------------------- save / load

def small_matrix_for(name, rng):
    fmt = get_format(name)
    group = fmt.default_group_size
    cols = -(-max(256, 2 * group) // group) * group
    return llm_like(rng, 8, cols)


@pytest.mark.parametrize("name", list_formats())
def test_save_load_bit_exact_for_every_format(name, tmp_path, rng):
    w = small_matrix_for(name, rng)
    qt = hwlab.quantize(w, name)
    path = tmp_path / f"{name}.safetensors"
    qt.save(path)
    back = hwlab.load(path)
    assert (back.format_name, back.shape, back.group_size, back.padded_cols) == \
        (qt.format_name, qt.shape, qt.group_size, qt.padded_cols)
    assert back.options == qt.options
    assert sorted(back.arrays) == sorted(qt.arrays)
    for key, a in qt.arrays.items():
        b = back.arrays[key]
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), key
    assert qt.dequantize().tobytes() == back.dequantize().tobytes()
    assert back.bits_per_weight == qt.bits_per_weight
    with open(path, "rb") as fh:  # the file holds exactly the counted bytes plus its header
        (header,) = struct.unpack("<Q", fh.read(8))
    assert os.path.getsize(path) - 8 - header == qt.nbytes


@pytest.mark.parametrize("name, options", [
    ("int4", {"scale_dtype": "int8"}), ("bitmod_fp4", {"scale_dtype": "e8m0", "scale_search": "mse"}),
    ("ternary", {"packing": "trit5"}), ("int4_asym", {"scale_dtype": "bf16", "granularity": "channel"}),
    ("fp4_e2m1", {"granularity": "tensor", "clip_ratios": (1.0, 0.75), "scale_search": "mse"}),
    ("nf4", {"scale_clamp": (1e-4, 100.0), "scale_dtype": "e4m3"}),  # (1e-4, 1.0) clipped these weights: refused
], ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_save_load_with_options(name, options, tmp_path, rng):
    w = llm_like(rng, 8, 200) * 30
    qt = hwlab.quantize(w, name, 64, pad=True, **options)
    qt.save(tmp_path / "q.safetensors")
    back = hwlab.load(tmp_path / "q.safetensors")
    assert back.options == qt.options and back.padded_cols == qt.padded_cols == \
        (256 if qt.options["granularity"] == "group" else 200)
    assert qt.dequantize().tobytes() == back.dequantize().tobytes()


# ----------------------------------------------------------------------------- error metrics

def test_error_metrics_match_numpy(rng):
    w = llm_like(rng, 16, 256)
    x = rng.standard_normal((5, 256))
    qt = hwlab.quantize(w, "int3", 64)
    got = qt.error(w, x)
    wq = qt.dequantize().astype(np.float64)
    err = w.astype(np.float64) - wq
    assert got["mse"] == pytest.approx(np.mean(err**2), rel=1e-12)
    assert got["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(w.astype(np.float64) ** 2) / np.sum(err**2)), rel=1e-12)
    assert got["max_abs_error"] == np.abs(err).max()
    assert got["rel_error"] == pytest.approx(np.linalg.norm(err) / np.linalg.norm(w.astype(np.float64)), rel=1e-12)
    ref = x @ w.astype(np.float64).T
    assert got["output_rel_error"] == pytest.approx(np.linalg.norm(ref - x @ wq.T) / np.linalg.norm(ref), rel=1e-12)


def test_error_metrics_of_exact_and_zero():
    w = np.array([[1.0, -0.5, 0.25, 0.0]])
    exact = error_metrics(w, w, np.ones((2, 4)))
    assert exact["mse"] == 0 and exact["sqnr_db"] == math.inf and exact["max_abs_error"] == 0
    assert exact["output_rel_error"] == 0
    assert "output_rel_error" not in error_metrics(w, w)


def test_quantized_tensors_compare_by_identity():
    w = np.ones((2, 128), np.float32)
    a, b = hwlab.quantize(w, "int4"), hwlab.quantize(w, "int4")
    assert a == a and a != b  # no element-wise array comparison (which would raise)
    assert len({a, b}) == 2
