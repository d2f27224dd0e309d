"""Bad input across the public API raises ValueError/TypeError naming what was wrong.

Every case is one ``pytest.param(call, expected exception, message regex, id=...)``; file cases
build a damaged file under ``tmp_path`` first. Registrations happen in an isolated registry.
"""
import json
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from hwlab.formats import storage
from hwlab.formats.storage import FILE_VERSION, FormatRebuiltWarning

import hwlab
from hwlab.formats import (ElementFormat, define_lut, define_minifloat, define_mixture, error_metrics,
                           get_format, pack_codes, pack_trits, register_format, unpack_codes, unpack_trits)

W = np.linspace(-1, 1, 4 * 64, dtype=np.float32).reshape(4, 64)


def with_value(index, value, dtype=np.float32):
    w = W.astype(dtype)
    w[index] = value
    return w


def q(w=W, fmt="int4", group_size=32, **options):
    return lambda: hwlab.quantize(w, fmt, group_size, **options)


def call(f, *args, **kwargs):
    return lambda: f(*args, **kwargs)


INT4, BITMOD = get_format("int4"), get_format("bitmod_fp4")

QUANTIZE_CASES = [
    # the weight matrix
    pytest.param(q(with_value((1, 2), np.nan)), ValueError, r"W contains nan at index \(1, 2\); expected finite", id="W-nan"),
    pytest.param(q(with_value((0, 5), np.inf)), ValueError, r"W contains inf at index \(0, 5\)", id="W-inf"),
    pytest.param(q(with_value((3, 63), -np.inf, np.float64)), ValueError, r"W contains -inf", id="W-minus-inf-float64"),
    pytest.param(q(torch.from_numpy(with_value((2, 0), np.nan))), ValueError, r"W contains nan", id="W-torch-nan"),
    pytest.param(q(W.astype(np.int32)), TypeError, r"floating-point array .* got dtype int32", id="W-int"),
    pytest.param(q(W > 0), TypeError, r"floating-point array .* got dtype bool", id="W-bool"),
    pytest.param(q(W.astype(np.complex64)), TypeError, r"floating-point array .* got dtype complex64", id="W-complex"),
    pytest.param(q(torch.ones(4, 64, dtype=torch.int32)), TypeError, r"floating-point tensor, got torch.int32", id="W-torch-int"),
    pytest.param(q(W.tolist()), TypeError, r"numpy array or torch tensor, got list", id="W-list"),
    pytest.param(q(W.reshape(2, 2, 64)), ValueError, r"must be 2-D \[N, K\] .* got shape \(2, 2, 64\)", id="W-3d"),
    pytest.param(q(W.ravel()), ValueError, r"must be 2-D .* got shape \(256,\)", id="W-1d"),
    pytest.param(q(np.array(1.0, dtype=np.float32)), ValueError, r"must be 2-D .* got shape \(\)", id="W-0d"),
    pytest.param(q(W[:0]), ValueError, r"W is empty \(shape \(0, 64\)\)", id="W-no-rows"),
    pytest.param(q(W[:, :0]), ValueError, r"W is empty \(shape \(4, 0\)\)", id="W-no-cols"),
    # group size
    pytest.param(q(W[:, :50]), ValueError, r"group_size must divide K=50, got 32 \(pass pad=True", id="K-not-divisible"),
    pytest.param(q(group_size=0), ValueError, r"group_size must be a positive integer, got 0", id="group-size-zero"),
    pytest.param(q(group_size=-32), ValueError, r"group_size must be a positive integer, got -32", id="group-size-negative"),
    pytest.param(q(group_size=32.0), TypeError, r"group_size must be an int, got float", id="group-size-float"),
    pytest.param(q(group_size=True), TypeError, r"group_size must be an int, got bool", id="group-size-bool"),
    pytest.param(q(pad="yes"), TypeError, r"pad must be True or False, got 'yes'", id="pad-not-bool"),
    pytest.param(q(fmt="mxfp4", group_size=64), ValueError, r"mxfp4 uses blocks of 32 .* must be 32, got 64", id="mxfp4-group-64"),
    pytest.param(q(fmt="nvfp4", group_size=32), ValueError, r"nvfp4 uses blocks of 16 .* must be 16, got 32", id="nvfp4-group-32"),
    pytest.param(q(W[:, :63], fmt="olive4", group_size=63, granularity="channel"), ValueError,
                 r"group_size must be even for olive4", id="olive4-odd-group"),
    pytest.param(q(W[:, :48], fmt="nf4", group_size=48, double_quant=True), ValueError,
                 r"power of two in 32..4096", id="nf4-double-quant-block-48"),
    # options
    pytest.param(q(scale_dtyp="fp16"), ValueError, r"unknown option 'scale_dtyp' for format 'int4'; expected one of",
                 id="unknown-option"),
    pytest.param(q(fmt="mxfp4", scale_dtype="fp16"), ValueError, r"unknown option 'scale_dtype' for format 'mxfp4'",
                 id="option-of-another-format"),
    pytest.param(q(scale_dtype="fp8"), ValueError, r"scale_dtype must be one of \('fp16', .*\), got 'fp8'", id="scale-dtype"),
    pytest.param(q(scale_dtype=None), ValueError, r"scale_dtype must be one of .* got None", id="scale-dtype-none"),
    pytest.param(q(granularity="row"), ValueError, r"granularity must be one of \('group', 'channel', 'tensor'\), got 'row'",
                 id="granularity"),
    pytest.param(q(fmt="mxfp4", granularity="channel"), ValueError, r"granularity must be 'group', got 'channel'",
                 id="mxfp4-granularity"),
    pytest.param(q(scale_search="grid"), ValueError, r"scale_search must be one of \('absmax', 'mse'\), got 'grid'",
                 id="scale-search"),
    pytest.param(q(packing="trit5"), ValueError, r"packing must be one of \('bits',\), got 'trit5'", id="trit5-not-ternary"),
    pytest.param(q(clip_ratios=()), ValueError, r"clip_ratios must be a non-empty sequence of numbers in \(0, 1\]",
                 id="clip-ratios-empty"),
    pytest.param(q(clip_ratios=(1.0, 1.5)), ValueError, r"clip_ratios .* in \(0, 1\], got \(1.0, 1.5\)", id="clip-ratios-above-1"),
    pytest.param(q(clip_ratios=(0.0,)), ValueError, r"clip_ratios .* got \(0.0,\)", id="clip-ratios-zero"),
    pytest.param(q(clip_ratios=0.9), ValueError, r"clip_ratios must be a non-empty sequence .* got 0.9", id="clip-ratios-scalar"),
    pytest.param(q(clip_ratios=(1.0, "a")), ValueError, r"clip_ratios must be a non-empty sequence .* got \(1.0, 'a'\)",
                 id="clip-ratios-not-numbers"),
    pytest.param(q(scale_clamp=(1.0, 0.1)), ValueError, r"scale_clamp must be None or \(low, high\) with finite 0 < low < high",
                 id="scale-clamp-reversed"),
    pytest.param(q(scale_clamp=(0, 1)), ValueError, r"scale_clamp .* got \(0, 1\)", id="scale-clamp-zero-low"),
    pytest.param(q(scale_clamp=(1e-3,)), ValueError, r"scale_clamp .* got \(0.001,\)", id="scale-clamp-one-value"),
    pytest.param(q(scale_clamp=5), ValueError, r"scale_clamp must be None or \(low, high\) .* got 5", id="scale-clamp-scalar"),
    # formats
    pytest.param(q(fmt="int44"), ValueError, r"unknown format 'int44'; did you mean 'int4'", id="unknown-format-close"),
    pytest.param(q(fmt="zzzz"), ValueError, r"unknown format 'zzzz'; list_formats\(\) names them all", id="unknown-format"),
    pytest.param(q(fmt=4), TypeError, r"a format is named by a string, got int", id="format-not-string"),
    # scale range
    pytest.param(q(W * 1e9), ValueError, r"group scale of 1.42857e\+08 overflows scale_dtype='fp16' \(largest 65504\)",
                 id="scale-overflow-fp16"),
    pytest.param(q(W * 1e4, scale_dtype="e4m3"), ValueError, r"overflows scale_dtype='e4m3' \(largest 448\)",
                 id="scale-overflow-e4m3"),
]

ELEMENT_CASES = [
    pytest.param(call(INT4.decode, [16]), ValueError, r"code 16 is out of range 0..15 for 4-bit codes", id="decode-16"),
    pytest.param(call(INT4.decode, np.array([-1, 3])), ValueError, r"code -1 is out of range 0..15", id="decode-negative"),
    pytest.param(call(INT4.decode, np.array([1.0])), TypeError, r"codes for int4 must be an integer array, got dtype float64",
                 id="decode-float"),
    pytest.param(call(INT4.decode, np.array([True])), TypeError, r"must be an integer array, got dtype bool", id="decode-bool"),
    pytest.param(call(get_format("fp8_e4m3").decode, np.array([256])), ValueError, r"code 256 is out of range 0..255",
                 id="decode-256"),
    pytest.param(call(INT4.encode, [0.5, np.nan]), ValueError, r"contains NaN at index \[1\]; NaN has no code", id="encode-nan"),
    pytest.param(call(INT4.encode, np.array([True])), TypeError, r"real numeric array, got dtype bool", id="encode-bool"),
    pytest.param(call(INT4.encode, np.array(["1"])), TypeError, r"real numeric array, got dtype <U1", id="encode-str"),
    pytest.param(call(INT4.encode, np.array([1j])), TypeError, r"real numeric array, got dtype complex128", id="encode-complex"),
    pytest.param(call(INT4.encode, [1.0], overflow="clip"), ValueError, r"overflow must be 'saturate' or 'nonfinite', got 'clip'",
                 id="encode-overflow-option"),
    pytest.param(call(BITMOD.encode, [1.0], 4), ValueError, r"type_id must be in 0..3 for bitmod_fp4, got 4", id="mixture-type-id"),
    pytest.param(call(BITMOD.decode, [1], -1), ValueError, r"type_id must be in 0..3 for bitmod_fp4, got -1",
                 id="mixture-type-id-negative"),
    pytest.param(call(BITMOD.decode, [16], 0), ValueError, r"code 16 is out of range 0..15", id="mixture-decode-code"),
    # packing
    pytest.param(call(pack_codes, np.array([[3, 16]]), 4), ValueError, r"code 16 does not fit in 4 bits", id="pack-code-too-large"),
    pytest.param(call(pack_codes, np.array([[-1, 0, 3]]), 4), ValueError, r"code -1 does not fit in 4 bits", id="pack-negative-code"),
    pytest.param(call(pack_codes, np.array([[1.5, 0.0]]), 4), TypeError, r"codes must be an integer array, got dtype float64",
                 id="pack-float-codes"),
    pytest.param(call(pack_codes, np.zeros((2, 3), np.uint8), 0), ValueError, r"bits must be in 1..8, got 0", id="pack-bits-0"),
    pytest.param(call(pack_codes, np.zeros((2, 3), np.uint8), 9), ValueError, r"bits must be in 1..8, got 9", id="pack-bits-9"),
    pytest.param(call(pack_codes, np.zeros(3, np.uint8), 4), ValueError, r"expects a 2-D array \[rows, K\], got shape \(3,\)",
                 id="pack-1d"),
    pytest.param(call(unpack_codes, np.zeros((1, 2), np.uint32), 4, 3), ValueError,
                 r"3 codes of 4 bits need 1 words per row, got 2", id="unpack-word-count"),
    pytest.param(call(unpack_codes, np.zeros((1, 1), np.int64), 4, 3), ValueError,
                 r"packed codes must be a 2-D uint32 array, got int64", id="unpack-dtype"),
    pytest.param(call(unpack_codes, np.zeros(1, np.uint32), 4, 3), ValueError, r"2-D uint32 array, got uint32 with shape \(1,\)",
                 id="unpack-1d"),
    pytest.param(call(unpack_codes, np.zeros((1, 1), np.uint32), 9, 3), ValueError, r"bits must be in 1..8, got 9",
                 id="unpack-bits-9"),
    pytest.param(call(pack_trits, np.array([[0, 2]])), ValueError, r"ternary codes must be 0 \(0\), 1 \(\+1\) or 3 \(-1\); got code 2",
                 id="trits-code-2"),
    pytest.param(call(pack_trits, np.array([[0, -1]])), ValueError, r"ternary codes must be .* got code -1", id="trits-negative"),
    pytest.param(call(unpack_trits, np.array([[243]], np.uint8), 5), ValueError, r"byte 243 is not a valid 5-trit group",
                 id="unpack-trits-byte"),
    pytest.param(call(unpack_trits, np.zeros((1, 1), np.uint8), 7), ValueError, r"7 trits need 2 bytes per row, got 1",
                 id="unpack-trits-length"),
    # error metrics
    pytest.param(call(error_metrics, np.ones((2, 2)), np.ones((2, 3))), ValueError, r"shapes differ: W \(2, 2\) vs quantized \(2, 3\)",
                 id="metrics-shapes"),
    pytest.param(call(error_metrics, np.ones((2, 2)), np.ones((2, 2)), np.ones((3, 3))), ValueError,
                 r"activations must have shape \[..., K=2\], got \(3, 3\)", id="metrics-activations"),
    pytest.param(lambda: hwlab.quantize(W, "int4", 32).error(W[:2]), ValueError,
                 r"W has shape \(2, 64\) but this tensor was quantized from \(4, 64\)", id="error-wrong-W"),
]

DEFINITION_CASES = [
    pytest.param(call(define_lut, "lut_big", np.arange(257.0)), ValueError, r"a lookup table needs 2..256 values, got 257",
                 id="lut-too-many"),
    pytest.param(call(define_lut, "lut_one", [1.0]), ValueError, r"needs 2..256 values, got 1", id="lut-one-value"),
    pytest.param(call(define_lut, "lut_dup", [0, 0.5, 1, 0.5]), ValueError, r"'lut_dup' repeats the value 0.5", id="lut-duplicates"),
    pytest.param(call(define_lut, "lut_inf", [0, 1, np.inf]), ValueError, r"'lut_inf' contains inf; expected finite", id="lut-inf"),
    pytest.param(call(define_lut, "lut_bits", [0, 1, 2], bits=1), ValueError, r"has 3 values, which need 2 bits, got bits=1",
                 id="lut-bits-too-small"),
    pytest.param(call(define_lut, "lut_round", [0, 1], rounding="up"), ValueError, r"rounding must be one of .* got 'up'",
                 id="lut-rounding"),
    pytest.param(call(define_lut, "My-Fmt", [0, 1]), ValueError, r"lower-case identifiers .* got 'My-Fmt'", id="bad-name"),
    pytest.param(call(define_lut, "int4", [0, 1]), ValueError, r"'int4' is a built-in format and cannot be redefined",
                 id="builtin-name"),
    pytest.param(call(define_lut, "int4", [0, 1], overwrite=True), ValueError, r"'int4' is a built-in format", id="builtin-overwrite"),
    pytest.param(call(define_minifloat, "mf", 0, 3), ValueError, r"exp_bits >= 1, .* got E0M3", id="minifloat-E0"),
    pytest.param(call(define_minifloat, "mf", 5, 3), ValueError, r"1 \+ exp_bits \+ man_bits <= 8 bits, got E5M3", id="minifloat-9-bits"),
    pytest.param(call(define_minifloat, "mf", 2, -1), ValueError, r"man_bits >= 0 .* got E2M-1", id="minifloat-negative-M"),
    pytest.param(call(define_minifloat, "mf", 2, 1, semantics="nan"), ValueError, r"semantics must be one of .* got 'nan'",
                 id="minifloat-semantics"),
    pytest.param(call(define_minifloat, "mf", 4, 0, semantics="fn"), ValueError,
                 r"'fn' needs at least 2 exponent bits and 1 mantissa bit, got E4M0", id="minifloat-fn-M0"),
    pytest.param(call(define_minifloat, "mf", 1, 2, semantics="ieee"), ValueError, r"'ieee' needs at least 2 exponent bits, got E1M2",
                 id="minifloat-ieee-E1"),
    pytest.param(call(define_mixture, "mix", ["int4"]), ValueError, r"a mixture needs at least 2 members, got 1", id="mixture-one"),
    pytest.param(call(define_mixture, "mix", ["int4", "int3"]), ValueError, r"share one bit width, got \[3, 4\]", id="mixture-widths"),
    pytest.param(call(define_mixture, "mix", ["int4", "int4_asym"]), ValueError, r"share one scaling rule, got \['absmax', 'affine'\]",
                 id="mixture-scalings"),
    pytest.param(call(define_mixture, "mix", ["int4", "bitmod_fp4"]), TypeError, r"must be element formats .*MixtureFormat",
                 id="mixture-of-mixture"),
    pytest.param(call(define_mixture, "mix", ["int4", "fp4_e2m2"]), ValueError, r"unknown format 'fp4_e2m2'; did you mean",
                 id="mixture-unknown-member"),
    pytest.param(call(register_format, "int4"), TypeError, r"register_format expects a Format, got str", id="register-not-format"),
    pytest.param(call(ElementFormat, "ef", 9, range(512), family="lookup", description=""), ValueError,
                 r"bits must be an integer in 1..8 .* got 9", id="element-9-bits"),
    pytest.param(call(ElementFormat, "ef", 4, range(8), family="lookup", description=""), ValueError,
                 r"values must have 2\*\*bits = 16 entries .* got shape \(8,\)", id="element-value-count"),
    pytest.param(call(ElementFormat, "ef", 2, range(4), family="lookup", description="", unused_codes=(4,)), ValueError,
                 r"unused code 4 is not in 0..3", id="element-unused-code"),
    pytest.param(call(ElementFormat, "ef", 2, range(4), family="lookup", description="", scaling="minmax"), ValueError,
                 r"scaling must be one of .* got 'minmax'", id="element-scaling"),
    pytest.param(call(ElementFormat, "ef", 1, [np.nan, np.inf], family="lookup", description=""), ValueError,
                 r"'ef' has no finite encodable value", id="element-nothing-encodable"),
    pytest.param(call(ElementFormat, "ef", 2, [0, 1, 1, 2], family="lookup", description=""), ValueError,
                 r"value 1.0 appears at codes 1 and 2; mark one unused", id="element-duplicate-values"),
]


@pytest.mark.parametrize("make_call, error, match", QUANTIZE_CASES + ELEMENT_CASES + DEFINITION_CASES)
def test_bad_input_raises(make_call, error, match, isolated_registry):
    with pytest.raises(error, match=match):
        make_call()


def test_register_duplicate_needs_overwrite(isolated_registry):
    define_lut("my_lut", [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"format 'my_lut' is already registered; pass overwrite=True"):
        define_lut("my_lut", [0, 1, 2, 4])
    assert define_lut("my_lut", [0, 1, 2, 4], overwrite=True).values[3] == 4


# ----------------------------------------------------------------------------- files

def saved_file(tmp_path, name="int4"):
    path = tmp_path / "good.safetensors"
    hwlab.quantize(W, name, 32).save(path)
    return path


def rewrite(tmp_path, arrays=None, meta=None, drop_meta=False, reseal=True):
    """A copy of a good file with its arrays and/or metadata changed; ``reseal`` recomputes the
    checksums and the digest (a consistent edit, which only the later checks can catch)."""
    good = saved_file(tmp_path)
    with safe_open(good, framework="numpy") as fh:
        stored = {k: fh.get_tensor(k) for k in fh.keys()}
        metadata = json.loads(fh.metadata()["hwlab"])
    stored.update(arrays or {})
    stored = {k: v for k, v in stored.items() if v is not None}
    metadata.update(meta or {})
    if reseal:
        metadata["checksums"] = {k: storage.checksum(v) for k, v in stored.items()}
        metadata["digest"] = storage.digest(metadata)
    path = tmp_path / "bad.safetensors"
    save_file(stored, path, metadata=None if drop_meta else {"hwlab": json.dumps(metadata)})
    return path


def damaged_bytes(tmp_path, cut):
    data = saved_file(tmp_path).read_bytes()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(cut(data))
    return path


FILE_CASES = [
    pytest.param(lambda p: p / "missing.safetensors", FileNotFoundError, r"no such file: .*missing.safetensors", id="missing"),
    pytest.param(lambda p: p, IsADirectoryError, r"is a directory, not a saved tensor", id="directory"),
    pytest.param(lambda p: damaged_bytes(p, lambda d: b""), ValueError, r"not a readable safetensors file", id="empty"),
    pytest.param(lambda p: damaged_bytes(p, lambda d: d[: len(d) // 2]), ValueError,
                 r"not a readable safetensors file \(truncated or corrupted\?\)", id="truncated"),
    pytest.param(lambda p: damaged_bytes(p, lambda d: d[:8] + b"#" * 16 + d[24:]), ValueError,
                 r"not a readable safetensors file", id="corrupted-header"),
    pytest.param(lambda p: damaged_bytes(p, lambda d: b"\xff" * len(d)), ValueError, r"not a readable safetensors file",
                 id="garbage"),
    pytest.param(lambda p: rewrite(p, drop_meta=True), ValueError, r"has no 'hwlab' metadata: it was not written by",
                 id="no-metadata"),
    pytest.param(lambda p: rewrite(p, meta={"shape": "wide"}), ValueError,
                 r"metadata field 'shape' must be two positive integers, got 'wide'", id="malformed-metadata"),
    pytest.param(lambda p: rewrite(p, meta={"group_size": 16}, reseal=False), ValueError,
                 r"the metadata does not match its digest \(corrupted or edited\)", id="edited-metadata"),
    pytest.param(lambda p: rewrite(p, arrays={"codes": np.full((4, 8), 7, np.uint32)}, reseal=False), ValueError,
                 r"array 'codes' does not match its checksum", id="edited-array"),
    pytest.param(lambda p: rewrite(p, meta={"version": 99}), ValueError, rf"has file version 99; this hwlab reads version {FILE_VERSION}",
                 id="future-version"),
    pytest.param(lambda p: rewrite(p, meta={"format": "int44"}), ValueError,
                 r"metadata names format 'int44' but its stored definition is of 'int4'", id="unregistered-format"),
    pytest.param(lambda p: rewrite(p, meta={"format": "int3"}), ValueError,
                 r"format 'int3' registered here differs from the one the file was saved with", id="fingerprint-other-format"),
    pytest.param(lambda p: rewrite(p, arrays={"scales": np.zeros((4, 2), np.float32)}), ValueError,
                 r"array 'scales' is float32\[4, 2\], expected float16\[4, 2\]", id="array-dtype"),
    pytest.param(lambda p: rewrite(p, arrays={"codes": np.zeros((4, 9), np.uint32)}), ValueError,
                 r"array 'codes' is uint32\[4, 9\], expected uint32\[4, 8\]", id="array-shape"),
    pytest.param(lambda p: rewrite(p, arrays={"scales": None}), ValueError,
                 r"stored arrays \['codes'\] do not match the expected \['codes', 'scales'\]", id="array-missing"),
    pytest.param(lambda p: rewrite(p, meta={"options": {"scale_dtype": "fp8"}}), ValueError,
                 r"scale_dtype must be one of", id="bad-saved-option"),
]


@pytest.mark.parametrize("make_path, error, match", FILE_CASES)
def test_bad_file_raises(make_path, error, match, tmp_path):
    with pytest.raises(error, match=match):
        hwlab.load(make_path(tmp_path))


def test_user_format_redefined_after_save_refuses_to_load(tmp_path, isolated_registry):
    define_lut("my_apot4", [0, 0.25, 0.5, 1, 1.5, 2, 3, 4, -0.25, -0.5, -1, -1.5, -2, -3, -4])
    path = tmp_path / "user.safetensors"
    hwlab.quantize(W, "my_apot4", 32).save(path)
    assert np.array_equal(hwlab.load(path).dequantize(), hwlab.quantize(W, "my_apot4", 32).dequantize())
    define_lut("my_apot4", [0, 0.25, 0.5, 1, 1.5, 2, 3, 6, -0.25, -0.5, -1, -1.5, -2, -3, -6], overwrite=True)
    with pytest.raises(ValueError, match=re.escape("format 'my_apot4' registered here differs from the one")):
        hwlab.load(path)
    isolated_registry._REGISTRY.pop("my_apot4")
    with pytest.warns(FormatRebuiltWarning, match="format 'my_apot4' is not registered here; rebuilt it"):
        rebuilt = hwlab.load(path)
    assert np.array_equal(rebuilt.dequantize(), hwlab.quantize(W, rebuilt.format, 32).dequantize())
