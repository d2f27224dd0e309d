"""Nothing silent: a saved file loads exactly what was saved or raises; finite in, finite out; every
array a user can hand over is converted exactly or refused; degenerate datatypes are refused; the
command line never destroys data.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

import hwlab
from hwlab.cli import main
from hwlab.formats import StorageError, define_lut, define_minifloat, define_mixture, get_format, jit, storage

RNG = np.random.default_rng(7)
W = (RNG.standard_normal((8, 256)) * 0.02).astype(np.float32)
W[2, 5] = 0.4  # an outlier
FAMILIES = [("int4", {}), ("int3_asym", {}), ("fp8_e4m3", {}), ("nf4", {}), ("nf4", {"double_quant": True}),
            ("bitmod_fp4", {}), ("ternary", {"packing": "trit5"}), ("mxfp4", {}), ("nvfp4", {}), ("mixed_2_4", {}),
            ("olive4", {}), ("int8", {"scale_dtype": "int8"}), ("shift3", {"granularity": "channel"})]


def group_for(name):
    fmt = get_format(name)
    return fmt.default_group_size if name in ("mxfp4", "nvfp4") else 64


def same_tensor(a, b) -> bool:
    return (a.format.fingerprint() == b.format.fingerprint() and a.shape == b.shape and a.group_size == b.group_size
            and a.options == b.options and a.padded_cols == b.padded_cols and set(a.arrays) == set(b.arrays)
            and all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays))


def read(path):
    with safe_open(path, framework="numpy") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, json.loads(fh.metadata()["hwlab"])


def write(path, arrays, meta, reseal=True):
    """A file of ``arrays`` and ``meta``; ``reseal`` recomputes checksums and digest (a consistent edit)."""
    meta = dict(meta)
    if reseal:
        meta["checksums"] = {k: storage.checksum(v) for k, v in arrays.items()}
        meta["digest"] = storage.digest(meta)
    save_file(dict(arrays), str(path), metadata={"hwlab": json.dumps(meta)})
    return path


# ---- a saved file loads exactly what was saved, or raises ----------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One saved file per family: name -> (path, tensor)."""
    out = {}
    folder = tmp_path_factory.mktemp("saved")
    for i, (name, options) in enumerate(FAMILIES):
        qt = hwlab.quantize(W, name, group_for(name), **options)
        path = folder / f"{i}_{name}.safetensors"
        qt.save(path)
        out[f"{name}{options}"] = (path, qt)
    return out


def test_every_family_round_trips(saved):
    for path, qt in saved.values():
        assert same_tensor(hwlab.load(path), qt)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_byte_flips_truncations_and_metadata_edits(saved, tmp_path_factory, data):
    """Any damage to a saved file raises hwlab's StorageError or loads exactly the saved tensor;
    never a silent difference, never an internal error."""
    key = data.draw(st.sampled_from(sorted(saved)))
    path, qt = saved[key]
    blob = bytearray(path.read_bytes())
    kind = data.draw(st.sampled_from(["flip", "flips", "truncate", "extend", "metadata"]))
    if kind == "flip":
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "flips":
        for at in data.draw(st.lists(st.integers(0, len(blob) - 1), min_size=2, max_size=20)):
            blob[at] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "extend":
        blob += bytes(data.draw(st.binary(min_size=1, max_size=64)))
    else:  # a raw edit of one metadata field, the digest left as it was
        arrays, meta = read(path)
        field = data.draw(st.sampled_from(sorted(meta)))
        meta[field] = data.draw(st.recursive(
            st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                            max_size=3), max_leaves=8))
        target = tmp_path_factory.mktemp("edit") / "e.safetensors"
        write(target, arrays, meta, reseal=False)
        blob = bytearray(target.read_bytes())
    damaged = tmp_path_factory.mktemp("fuzz") / "d.safetensors"
    damaged.write_bytes(bytes(blob))
    try:
        loaded = hwlab.load(damaged)
    except StorageError:
        return
    assert same_tensor(loaded, qt), f"{key}: {kind} loaded a different tensor without an error"


@pytest.mark.parametrize("edit, match", [
    (lambda a, m: m.update(shape=[8, 200]), r"the zero padding past K=200 holds"),  # columns dropped
    (lambda a, m: a.update(scales=np.full_like(a["scales"], np.inf)), r"array 'scales' holds a scale that is not finite"),
    (lambda a, m: a.update(scales=np.full_like(a["scales"], np.nan)), r"array 'scales' holds a scale that is not finite"),
    (lambda a, m: a.update(scales=np.zeros_like(a["scales"])), r"array 'scales' holds a scale that is not finite and positive"),
    (lambda a, m: a.update(scales=-a["scales"]), r"array 'scales' holds a scale that is not finite and positive"),
    (lambda a, m: a.update(codes=a["codes"] | np.uint32(0x8)), r"array 'codes': code 8 at \[0, 0\] is one int4 never emits"),
    (lambda a, m: m.update(options={**m["options"], "scale_dtype": "bf16"}), r"array 'scales' is float16\[8, 4\], expected uint16"),
    (lambda a, m: m.update(format="fp4_e2m1", fingerprint=get_format("fp4_e2m1").fingerprint()),
     r"the stored definition does not match format 'fp4_e2m1'"),
    (lambda a, m: a.update(codes=np.concatenate([a["codes"][:, :-1], a["codes"][:, -1:] | np.uint32(1 << 31)], 1)),
     r"array 'codes': code 8 at \[0, 255\]"),
])
def test_consistent_edits_of_impossible_values_are_refused(edit, match, tmp_path):
    qt = hwlab.quantize(W[:, :200], "int4", 64, pad=True)
    if "K=200" in match:
        qt = hwlab.quantize(W, "int4", 64)
    path = tmp_path / "q.safetensors"
    qt.save(path)
    arrays, meta = read(path)
    edit(arrays, meta)
    with pytest.raises(StorageError, match=match):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta))


def test_an_option_edited_between_scale_types_of_one_width_is_caught_by_the_digest(tmp_path):
    path = tmp_path / "q.safetensors"
    hwlab.quantize(W, "int4", 64, scale_dtype="e8m0").save(path)
    arrays, meta = read(path)
    meta["options"]["scale_dtype"] = "e4m3"  # both stored as uint8: only the digest tells
    with pytest.raises(StorageError, match="does not match its digest"):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta, reseal=False))


@pytest.mark.parametrize("name, array, value, match", [
    ("mxfp4", "scales", 255, r"E8M0 code 255 \(NaN\)"),
    ("nvfp4", "scales", 0x7F, r"array 'scales' holds a scale that is not finite and positive"),
    ("nvfp4", "tensor_scale", np.float32(0), r"array 'tensor_scale' holds a scale that is not finite"),
    ("int8", "scales", 0, r"int8 scale code 0"),
    ("ternary", "codes", 2, r"code 2 at \[0, 0\] is one ternary never emits"),
    ("fp8_e4m3", "codes", 0x7F, r"code 127 at \[0, 0\] is one fp8_e4m3 never emits"),
    ("olive4", "codes", 0x88, r"a pair of two victim codes"),
    ("bitmod_fp4", "type_ids", 3, None),  # type id 3 names EA-: a legal member
])
def test_impossible_stored_values_of_each_family_are_refused(name, array, value, match, tmp_path):
    options = {"scale_dtype": "int8"} if name == "int8" else {}
    qt = hwlab.quantize(W, name, group_for(name), **options)
    qt.save(tmp_path / "q.safetensors")
    arrays, meta = read(tmp_path / "q.safetensors")
    a = arrays[array].copy()
    a.reshape(-1).view(np.uint8)[0] = value if array != "tensor_scale" else 0
    if array == "tensor_scale":
        a[...] = value
    arrays[array] = a
    path = write(tmp_path / "e.safetensors", arrays, meta)
    if match is None:
        hwlab.load(path)
        return
    with pytest.raises(StorageError, match=match):
        hwlab.load(path)


@pytest.mark.parametrize("field, value, match", [
    ("options", [1, 2], r"metadata field 'options' must be an object, got \[1, 2\]"),
    ("group_size", 0, r"metadata field 'group_size' must be a positive integer, got 0"),
    ("group_size", 128.7, r"metadata field 'group_size' must be a positive integer, got 128.7"),
    ("shape", [8.0, 256.0], r"metadata field 'shape' must be two positive integers"),
    ("shape", [8, True], r"metadata field 'shape' must be two positive integers"),
    ("padded_cols", 512, r"field 'padded_cols' is 512, but K=256 with group size 64 \(group scales\) pads to 256"),
    ("group_size", 63, r"field 'padded_cols' is 256, but K=256 with group size 63 \(group scales\) pads to 315"),
    ("group_size", 32, r"array 'scales' is float16\[8, 4\], expected float16\[8, 8\]"),
    ("layout", {"codes": {}}, r"stored layout does not match"),
    ("definition", "int4", r"metadata field 'definition' must be an object"),
    ("version", "2", r"has file version '2'"),
])
def test_metadata_of_the_wrong_type_names_the_file_and_the_field(field, value, match, tmp_path):
    path = tmp_path / "q.safetensors"
    hwlab.quantize(W, "int4", 64).save(path)
    arrays, meta = read(path)
    meta[field] = value
    with pytest.raises(StorageError, match=match) as err:
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta))
    assert str(tmp_path) in str(err.value)


def test_deeply_nested_metadata_is_a_clear_error(tmp_path):
    path = tmp_path / "q.safetensors"
    hwlab.quantize(W, "int4", 64).save(path)
    arrays, meta = read(path)
    save_file(arrays, str(path), metadata={"hwlab": "[" * 100000 + "]" * 100000})
    with pytest.raises(StorageError, match="is not valid JSON"):
        hwlab.load(path)


# ---- finite in, finite out ---------------------------------------------------------------------

F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("use_numba", [True, False])
@pytest.mark.parametrize("name, options", [("int4_asym", {"scale_dtype": "fp32"}), ("int4", {"scale_dtype": "bf16"}),
                                           ("int8_asym", {"scale_dtype": "fp32"}), ("fp8_e4m3", {"scale_dtype": "fp32"}),
                                           ("olive4", {"scale_dtype": "fp32"}), ("mxfp4", {}), ("nvfp4", {}),
                                           ("int4", {"scale_dtype": "e8m0"})])
def test_the_float32_range_stays_finite(name, options, use_numba, monkeypatch):
    monkeypatch.setattr(jit, "USE_NUMBA", use_numba)
    w = np.zeros((4, 64), np.float64)
    w[:, 0], w[:, 1], w[0, 2:] = F32_MAX, -F32_MAX, np.linspace(-3e38, 3e38, 62)
    qt = hwlab.quantize(w, name, group_for(name) if name in ("mxfp4", "nvfp4") else 32, **options)
    out = qt.dequantize()
    assert np.isfinite(out).all() and np.abs(out).max() <= F32_MAX


def test_double_quantization_refuses_scales_it_cannot_decode():
    w = np.zeros((4, 64), np.float32)
    w[:, 0] = [np.finfo(np.float32).max, 1e38, 3e38, 2e38]  # the offset (their mean) plus the largest: past max
    with pytest.raises(ValueError, match=r"double_quant: a block absmax of 3.40282e\+38 decodes past the float32"):
        hwlab.quantize(w, "nf4", 64, double_quant=True)


def test_both_paths_agree_at_the_edge_of_the_range(monkeypatch):
    w = np.array([[F32_MAX, -F32_MAX] + [1e38] * 30], np.float32)
    runs = []
    for flag in (True, False):
        monkeypatch.setattr(jit, "USE_NUMBA", flag)
        runs.append(hwlab.quantize(w, "int4_asym", 32, scale_dtype="fp32"))
    assert same_tensor(*runs)


def test_bf16_scales_are_bounded_by_the_bf16_maximum():
    bf16 = storage_scale("bf16")
    assert bf16.largest == (2 - 2**-7) * 2.0**127
    with pytest.raises(ValueError, match=r"overflows scale_dtype='bf16' \(largest 3.38953e\+38\); rescale W"):
        hwlab.quantize(np.array([[F32_MAX] * 32], np.float32), "nf4", 32, scale_dtype="bf16")  # scale = max / 1


def storage_scale(name):
    from hwlab.formats.scales import get_scale_type

    return get_scale_type(name)


def test_float64_beyond_the_float32_range_is_refused():
    w = np.ones((2, 32))
    w[1, 3] = 1e39
    with pytest.raises(ValueError, match=r"W holds 1e\+39 at index \(1, 3\), beyond the float32 range"):
        hwlab.quantize(w, "int4", 32)


@pytest.mark.parametrize("name, options, weights, match", [
    ("int4", {}, 1e-8, r"needs a scale of 1.42857e-09, so far below the least scale_dtype='fp16' holds"),
    ("int4", {"scale_clamp": (1e-320, 1e-310)}, 0.02, r"below the least scale_dtype='fp16'"),
    ("mixed_2_4", {}, 1e-9, r"rescale W \(mixed_2_4's scales are 8-bit codes times an fp16 row scale\)"),
    ("olive4", {}, 1e-9, r"below the least scale_dtype='fp16'"),
])
def test_scales_that_underflow_are_reported(name, options, weights, match):
    w = np.full((2, 128), weights, np.float32)
    w[:, ::2] *= -1
    with pytest.raises(ValueError, match=match):
        hwlab.quantize(w, name, 64, **options)


def test_small_weights_that_survive_are_not_reported():
    w = np.full((1, 32), 4e-7, np.float32)  # int4 under the least fp16 scale 2**-24: 4e-7 / 6e-8 = 6.7, kept
    assert np.abs(hwlab.quantize(w, "int4", 32).dequantize()).min() > 0
    assert hwlab.quantize(np.full((1, 32), 1e-8, np.float32), "bitmod_fp4", 32).bits_per_weight  # the authors' clamp


# ---- every array a user can hand over -----------------------------------------------------------

CONVERSIONS = {
    "big-endian": lambda w: w.astype(">f4"),
    "long double": lambda w: w.astype(np.longdouble),
    "matrix": lambda w: np.asmatrix(w),
    "fortran order": lambda w: np.asfortranarray(w),
    "reversed view": lambda w: w[::-1, ::-1].copy()[::-1, ::-1],
    "big-endian float64": lambda w: w.astype(">f8"),
}


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("kind", sorted(CONVERSIONS))
def test_odd_numpy_arrays_give_the_float32_result(kind):
    want = hwlab.quantize(W, "bitmod_fp4", 64)
    assert same_tensor(hwlab.quantize(CONVERSIONS[kind](W), "bitmod_fp4", 64), want)


def test_a_memory_map_gives_the_float32_result(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, W)
    mapped = np.load(path, mmap_mode="r")
    assert same_tensor(hwlab.quantize(mapped, "int4", 64), hwlab.quantize(W, "int4", 64))


def test_long_double_that_float64_cannot_hold_is_refused():
    w = W.astype(np.longdouble)
    if np.finfo(np.longdouble).nmant <= np.finfo(np.float64).nmant:
        pytest.skip("long double is float64 on this platform: nothing can be lost")
    w[0, 0] = np.longdouble(1) + np.finfo(np.longdouble).eps
    with pytest.raises(ValueError, match=r"holds .* which float64 cannot hold exactly"):
        hwlab.quantize(w, "int4", 64)


def test_masked_arrays_are_refused():
    with pytest.raises(TypeError, match="masked array; a quantizer cannot honour its mask"):
        hwlab.quantize(np.ma.masked_greater(W, 0.01), "int4", 64)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("make, error, match", [
    (lambda: torch.empty(8, 256, device="meta"), TypeError, "on the meta device"),
    (lambda: torch.from_numpy(W).to_sparse(), TypeError, r"sparse tensor \(torch.sparse_coo\); pass W.to_dense\(\)"),
    (lambda: torch.from_numpy(W).to_sparse_csr(), TypeError, r"sparse tensor \(torch.sparse_csr\)"),
    (lambda: torch.ones(8, 256, dtype=torch.int32), TypeError, "floating-point tensor"),
    (lambda: torch.ones(8, 256, dtype=torch.complex64), TypeError, "floating-point tensor"),
])
def test_torch_tensors_without_plain_data_get_a_clear_error(make, error, match):
    with pytest.raises(error, match=match):
        hwlab.quantize(make(), "int4", 64)


def test_torch_negative_and_transposed_views_are_read_correctly():
    t = torch.from_numpy(-W.copy())
    neg = torch._neg_view(t)  # a lazy negation: the numpy view would ignore it
    assert neg.is_neg()
    assert same_tensor(hwlab.quantize(neg, "int4", 64), hwlab.quantize(W, "int4", 64))
    tt = torch.from_numpy(np.ascontiguousarray(W.T)).T
    assert same_tensor(hwlab.quantize(tt, "int4", 64), hwlab.quantize(W, "int4", 64))


# ---- degenerate datatype definitions ------------------------------------------------------------

@pytest.mark.parametrize("define, error, match", [
    (lambda: define_lut("x", [0, 1, np.nan, 2]), ValueError, r"contains nan; expected finite values .*unused_codes"),
    (lambda: define_lut("x", [0, 1, np.inf, 2]), ValueError, r"contains inf"),
    (lambda: define_lut("x", [0, 1, 1, 2]), ValueError, r"repeats the value 1.0"),
    (lambda: define_lut("x", [0.0, -0.0]), ValueError, r"no nonzero value"),
    (lambda: define_lut("x", [[0, 1], [2, 3]]), ValueError, r"must be a 1-D sequence of values, got shape \(2, 2\)"),
    (lambda: define_lut("x", ["a", "b"]), TypeError, r"must hold real numbers"),
    (lambda: define_minifloat("x", 2, 1, bias=1.5), TypeError, r"bias must be an integer, got 1.5"),
    (lambda: define_minifloat("x", 2, 1, bias=-2000), ValueError, r"bias -2000 puts the values of E2M1 outside float64"),
    (lambda: define_minifloat("x", 2, 1, bias=2000), ValueError, r"bias 2000 puts the values"),
    (lambda: define_minifloat("x", True, 1), TypeError, r"exp_bits must be an integer, got True"),
    (lambda: define_minifloat("x", 2.0, 1), TypeError, r"exp_bits must be an integer, got 2.0"),
    (lambda: define_mixture("x", ["fp4_e2m1", "fp4_e2m1"]), ValueError, r"repeats a member \(\['fp4_e2m1'\]\)"),
    (lambda: define_mixture("x", ["fp4_e2m1", define_lut("e2m1_copy", get_format("fp4_e2m1").values,
                                                            register=False)]), ValueError, r"same values"),
    (lambda: define_mixture("x", [define_lut(f"m{i}", [0, i + 1], register=False) for i in range(300)]),
     ValueError, r"at most 256 members"),
])
def test_degenerate_definitions_are_refused_at_definition_time(define, error, match, isolated_registry):
    with pytest.raises(error, match=match):
        define()


def test_unused_codes_are_declared_not_written_as_nan(isolated_registry, rng):
    fmt = define_lut("gappy", [0, 1, 2, 3, -0.0, -1, -2, -3], unused_codes=(4,))
    assert not fmt.encodable[4] and fmt.encode([-0.1])[0] == 0


# ---- the command line never destroys data -------------------------------------------------------

def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def npy(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, W)
    return path


def test_out_refuses_an_existing_file_unless_forced(capsys, npy, tmp_path):
    out = tmp_path / "q.safetensors"
    out.write_bytes(b"precious")
    status, _, err = run(capsys, "quantize", npy, "--format", "int4", "--out", out)
    assert status == 2 and "exists; pass --force to replace it" in err and out.read_bytes() == b"precious"
    status, _, err = run(capsys, "quantize", npy, "--format", "int4", "--out", out, "--force")
    assert status == 0 and same_tensor(hwlab.load(out), hwlab.quantize(W, "int4"))


def test_out_never_overwrites_an_input(capsys, tmp_path):
    weights = tmp_path / "w.safetensors"
    save_file({"w": W}, str(weights))
    before = weights.read_bytes()
    status, _, err = run(capsys, "quantize", weights, "--format", "int4", "--out", weights, "--force")
    assert status == 2 and "is an input of this command; it is never overwritten" in err
    assert weights.read_bytes() == before
    like = tmp_path / "like.safetensors"
    hwlab.quantize(W, "int4", 64).save(like)
    status, _, err = run(capsys, "quantize", weights, "--format", like, "--out", like, "--force")
    assert status == 2 and "never overwritten" in err


def test_out_must_be_named_safetensors(capsys, npy, tmp_path):
    status, _, err = run(capsys, "quantize", npy, "--format", "int4", "--out", tmp_path / "q.npy")
    assert status == 2 and "name the file *.safetensors" in err and not (tmp_path / "q.npy").exists()


def test_an_interrupted_write_leaves_nothing_behind(capsys, npy, tmp_path, monkeypatch):
    out = tmp_path / "q.safetensors"

    def crash(self, path):
        with open(path, "wb") as fh:
            fh.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(hwlab.QuantizedTensor, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        main(["quantize", str(npy), "--format", "int4", "--out", str(out)])
    assert os.listdir(tmp_path) == ["w.npy"]


def bytes_file(name, content):
    def make(folder):
        (folder / name).write_bytes(content)
        return folder / name
    return make


def object_npy(folder):
    np.save(folder / "o.npy", np.array([{"a": 1}], dtype=object))
    return folder / "o.npy"


@pytest.mark.parametrize("make, match", [
    (bytes_file("e.npy", b""), r"is not a readable .npy array"),
    (bytes_file("t.npy", np.lib.format.magic(1, 0) + b"\x00"), r"is not a readable .npy array"),
    (lambda p: p, r"is a directory; expected a .npy or .safetensors file"),
    (object_npy, r"is not a readable .npy array"),
])
def test_unreadable_inputs_are_one_line(capsys, tmp_path, make, match):
    status, _, err = run(capsys, "quantize", make(tmp_path), "--format", "int4")
    assert status == 2 and len(err.strip().splitlines()) == 1 and err.startswith("hwlab: error:")
    assert re.search(match, err), err


def test_a_file_without_read_permission_is_one_line(capsys, npy, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(npy))  # what open() raises for a mode-000 file

    monkeypatch.setattr(np, "load", refuse)
    status, _, err = run(capsys, "quantize", npy, "--format", "int4")
    assert status == 2 and err.strip() == f"hwlab: error: [Errno 13] Permission denied: '{npy}'"


@pytest.mark.parametrize("key, flag", [("group_size", "--group-size"), ("pad", "--pad")])
def test_quantize_arguments_are_not_options(capsys, npy, key, flag):
    status, _, err = run(capsys, "quantize", npy, "--format", "int4", "--option", f"{key}=64")
    assert status == 2 and f"{key} is not a format option; use {flag}" in err


def test_an_absurd_padding_is_refused(capsys, npy):
    status, _, err = run(capsys, "quantize", npy, "--format", "int4", "--group-size", "4000000000", "--pad")
    assert status == 2 and "pad=True would add 3999999744 zero columns to K=256" in err


def test_hwlab_works_where_numba_cannot_cache():
    """A read-only install without a writable home: numba finds no cache locator at all."""
    code = ("import numba.core.caching as c\n"
            "c.CacheImpl._locator_classes = []\n"
            "import numpy as np, hwlab\n"
            "w = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)\n"
            "print(hwlab.quantize(w, 'bitmod_fp4').bits_per_weight, hwlab.get_format('fp8_e4m3').encode([1.0])[0])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4.25", "56"]
