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
from safetensors.numpy import save_file
from saved_files import read, write

import hwlab
from hwlab.cli import main
from hwlab.formats import StorageError, define_lut, define_minifloat, define_mixture, get_format, jit
from hwlab.formats.packing import pack_codes, unpack_codes

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
        write(target, arrays, meta, checksums=False, digest=False)
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
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta, checksums=False, digest=False))


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


def test_a_type_id_that_names_no_member_is_refused(tmp_path):
    """Three members take 2-bit type ids, and id 3 names none (of BitMoD's four, every id names one)."""
    fmt = define_mixture("three_of_bitmod", ["fp4_er_pos", "fp4_er_neg", "fp4_ea_pos"], register=False)  # emit alike
    hwlab.quantize(W, fmt, 64).save(tmp_path / "q.safetensors")
    arrays, meta = read(tmp_path / "q.safetensors")
    ids = unpack_codes(arrays["type_ids"], 2, 4)
    ids[5, 2] = 3
    arrays["type_ids"] = pack_codes(ids, 2)
    match = r"array 'type_ids': type id 3 at \[5, 2\] names no member of three_of_bitmod \(it has 3\)"
    with pytest.warns(hwlab.formats.FormatRebuiltWarning), pytest.raises(StorageError, match=match):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta))


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
    # a clamp below every weight's scale clips them all (it was reported as an fp16 underflow before)
    ("int4", {"scale_clamp": (1e-320, 1e-310)}, 0.02, r"above the upper bound of scale_clamp=\(1e-320, 1e-310\)"),
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
    w = np.full((1, 32), 1e-5, np.float32)  # bitmod_fp4 with the authors' clamp (1e-5, 1e4): the scale 1e-5 keeps 1e-5
    assert np.abs(hwlab.quantize(w, "bitmod_fp4", 32).dequantize()).min() > 0


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


# ---- second hostile pass (notes/hostile_reliability.md: D1-D20, S1-S5, E1-E3) ---------------------

def reseal_definition(meta):
    """Recompute the fingerprint of an edited stored definition (a consistent edit of a rebuilt format)."""
    import hashlib

    meta["fingerprint"] = hashlib.sha256(json.dumps(meta["definition"], sort_keys=True).encode()).hexdigest()[:16]
    return meta


def saved_and_read(tmp_path, *args, **kwargs):
    qt = hwlab.quantize(*args, **kwargs)
    qt.save(tmp_path / "q.safetensors")
    return (qt, *read(tmp_path / "q.safetensors"))


@pytest.mark.filterwarnings("ignore::hwlab.formats.FormatRebuiltWarning")
def test_d1_a_mixture_holding_nf4_loads_bit_exactly_where_it_is_not_registered(tmp_path):
    mix = define_mixture("my_mix_nf4", ["fp4_e2m1", "nf4"], register=False)
    qt, arrays, meta = saved_and_read(tmp_path, W, mix, 64)
    back = hwlab.load(tmp_path / "q.safetensors")
    assert same_tensor(back, qt) and back.format.definition() == mix.definition()
    assert "double_quant" in back.format.members[1].options  # rebuilt as nf4's own class
    meta["definition"]["members"][1]["double_quant"]["map"][0] = "-0.5"  # an edited second-level map
    with pytest.raises(StorageError, match="does not rebuild to itself"):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, reseal_definition(meta)))


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.__setitem__((0, 0), 250), r"array 'codes': byte 250 at \[0, 0\] is not a group of 5 trits"),  # D2
    (lambda c: c.__setitem__((0, -1), c[0, -1] + 81), r"row 0 has nonzero padding trits past its 254 entries"),  # D3
])
def test_d2_d3_trit5_bytes_are_checked_on_load(edit, match, tmp_path):
    _, arrays, meta = saved_and_read(tmp_path, W[:, :254], "ternary", 254, packing="trit5", granularity="channel")
    arrays["codes"] = arrays["codes"].copy()
    arrays["codes"][0, -1] %= 81  # the last byte's trit 4 lies past K = 254: zero, so the edit below sets it
    edit(arrays["codes"])
    with pytest.raises(StorageError, match=match):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta))


@pytest.mark.parametrize("array", ["scale_absmax", "scale_offset"])
def test_d4_negative_double_quant_statistics_are_refused(array, tmp_path):
    _, arrays, meta = saved_and_read(tmp_path, W, "nf4", 64, double_quant=True)
    arrays[array] = -arrays[array]
    with pytest.raises(StorageError, match=rf"array '{array}' holds the negative value .* never negative"):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta))


@pytest.mark.parametrize("path, value, match", [
    (("family",), [1, 2], r"family must be one of \('integer', 'minifloat'"),
    (("fields", "exp_bits"), 512, r"a minifloat needs exp_bits >= 1"),
    (("fields", "bias"), -7, r"the values do not follow fields .*code 1 decodes to 0.25, the fields give 128.0"),
    (("fields", "kind"), "shift", r"fields of kind 'shift' are"),
    (("fields", "exp_bits"), "2", r"field 'exp_bits' must be an integer"),
])
def test_d5_a_rebuilt_formats_family_and_fields_are_checked(path, value, match, tmp_path):
    fmt = define_minifloat("my_e2m1_b2", 2, 1, bias=2, register=False)
    _, arrays, meta = saved_and_read(tmp_path, W, fmt, 64)
    target = meta["definition"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(StorageError, match=match):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, reseal_definition(meta)))


def test_d5_families_and_fields_are_checked_when_a_format_is_made():
    from hwlab.formats import ElementFormat

    with pytest.raises(ValueError, match=r"family must be one of"):
        ElementFormat("x", 2, [0, 1, 2, 3], family="apot", description="")
    with pytest.raises(ValueError, match=r"format 'x': the values do not follow fields"):
        ElementFormat("x", 2, [0, 1, 2, 3], family="minifloat", description="",
                      fields={"kind": "minifloat", "exp_bits": 1, "man_bits": 0, "bias": 0, "semantics": "finite"})


def test_d6_stored_scales_outside_the_stored_scale_clamp_are_refused(tmp_path):
    _, arrays, meta = saved_and_read(tmp_path, W, "int4", 64)
    meta["options"]["scale_clamp"] = [8, 256]
    with pytest.raises(StorageError, match=r"array 'scales': the scale .* lies outside scale_clamp=\(8, 256\)"):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta))
    qt, arrays, meta = saved_and_read(tmp_path, W, "int4", 64, scale_clamp=(1e-3, 1.0), scale_dtype="int8")
    assert same_tensor(hwlab.load(tmp_path / "q.safetensors"), qt)  # int8: bounds per row scale
    meta["options"]["scale_clamp"] = [1e-3, 3e-3]
    with pytest.raises(StorageError, match=r"lies outside scale_clamp=\(0.001, 0.003\)"):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta))


@pytest.mark.parametrize("text, match", [
    (lambda j: j[:-1] + ', "x": Infinity}', r"not valid JSON \(Infinity is not a JSON number"),
    (lambda j: j[:-1] + ', "x": NaN}', r"not valid JSON \(NaN is not a JSON number"),
    (lambda j: j[:-1] + ', "x": 1e999}', r"not valid JSON \(the number 1e999 overflows a float"),
    (lambda j: j[:-1] + ', "version": 3}', r"not valid JSON \(key 'version' appears twice in one object"),
])
def test_d7_metadata_is_strict_json(text, match, tmp_path):
    _, arrays, meta = saved_and_read(tmp_path, W, "int4", 64)
    save_file(arrays, str(tmp_path / "e.safetensors"), metadata={"hwlab": text(json.dumps(meta))})
    with pytest.raises(StorageError, match=match) as err:
        hwlab.load(tmp_path / "e.safetensors")
    assert str(tmp_path) in str(err.value)


def test_d8_every_load_error_is_a_storage_error_naming_the_file(tmp_path):
    _, arrays, meta = saved_and_read(tmp_path, W, "nf4", 64, double_quant=True)
    meta["group_size"] = 16
    with pytest.raises(StorageError, match=r"e.safetensors: double_quant=True needs a block \(group\) size"):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta))


@pytest.mark.parametrize("options, match", [
    ({"scale_clamp": (1e-5, 10**400)}, r"scale_clamp must be None or \(low, high\) with finite"),  # D9
    ({"scale_clamp": (__import__("fractions").Fraction(1, 10**5), 1.0)}, r"scale_clamp .*\(int or float\)"),  # D10
    ({"scale_search": "mse", "clip_ratios": (__import__("fractions").Fraction(9, 10), 1.0)},
     r"clip_ratios must be a non-empty sequence .*\(int or float\)"),
])
def test_d9_d10_options_that_cannot_be_saved_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        hwlab.quantize(W, "int4", 64, **options)


def test_d9_a_huge_scale_clamp_on_the_command_line_is_one_line(capsys, npy):
    status, _, err = run(capsys, "quantize", npy, "--format", "int4", "--option", f"scale_clamp=(1e-5,{10**400})")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "scale_clamp must be None" in err


@pytest.mark.filterwarnings("ignore::hwlab.formats.FormatRebuiltWarning")
def test_d11_numpy_integer_widths_save_and_load(tmp_path):
    fmt = define_minifloat("my_np_widths", np.int64(2), np.int64(1), register=False)
    assert type(fmt.fields["exp_bits"]) is int
    qt = hwlab.quantize(W, fmt, 64)
    qt.save(tmp_path / "q.safetensors")
    assert same_tensor(hwlab.load(tmp_path / "q.safetensors"), qt)


@pytest.mark.parametrize("define, error, match", [
    (lambda: define_lut("x", [0, 1, -1], description=5), TypeError, r"description must be a string, got 5"),  # D12
    (lambda: define_mixture("x", ["fp4_e2m1", "nf4"], description=5), TypeError, r"description must be a string"),
    (lambda: define_lut("x", [0, 1], unused_codes=(1,)), ValueError, r"'x' can emit only zero"),  # D13
    (lambda: define_lut("x", [0, 1, -1], unused_codes=(1, 2)), ValueError, r"can emit only zero"),
    (lambda: define_lut("x", [0, 1, 2, 3], unused_codes=(1.5,)), TypeError, r"unused code 1.5 is not an integer"),  # D14
    (lambda: define_lut("x", [0, 1, 2, 3], unused_codes=None), TypeError, r"unused_codes must be a sequence"),
    (lambda: define_lut("x", [0, 1], bits=40), ValueError, r"bits must be an integer in 1..8 .* got 40"),  # D15
    (lambda: define_lut("x", [0, 1], bits=2**62), ValueError, r"bits must be an integer in 1..8"),
    (lambda: define_minifloat("x", 2, 1, bias=10**30), ValueError, r"bias 1e\+30 puts the values of E2M1 outside"),  # D16
    (lambda: define_minifloat("x", 2, 1, bias=1000), ValueError, r"so small that no float32 weight"),  # D17
    (lambda: define_minifloat("x", 2, 1, bias=-1000), ValueError, r"beyond the float32 range"),
    (lambda: define_minifloat("x", 4, 3, bias=-120, semantics="fn"), ValueError, r"beyond the float32 range"),
    (lambda: define_lut("x", [0, 1e300]), ValueError, r"beyond the float32 range"),
    (lambda: define_lut("x", [0, 1e39]), ValueError, r"beyond the float32 range"),
    (lambda: define_lut("x", [0, 5e-324, 1e-323]), ValueError, r"so small that no float32 weight"),
    (lambda: define_lut("x", np.ma.masked_array([0.0, 1.0, 2.0], mask=[0, 1, 0])), TypeError,  # D18
     r"lookup table 'x' is a masked array"),
    (lambda: define_lut("x", np.array([0, 2**53 + 1], np.int64)), ValueError, r"which float64 cannot hold exactly"),
    (lambda: define_mixture("x", None), TypeError, r"members must be an ordered sequence"),
    (lambda: define_mixture("x", "fp4_e2m1"), TypeError, r"members must be an ordered sequence"),
    (lambda: define_mixture("x", {"fp4_e2m1", "nf4"}), TypeError, r"members must be an ordered sequence"),
])
def test_d12_to_d18_unusable_definitions_are_refused_when_made(define, error, match, isolated_registry):
    with pytest.raises(error, match=match):
        define()


def test_d17_tables_usable_with_a_wider_scale_dtype_are_kept_and_say_so():
    fmt = define_minifloat("my_e4m3_b130", 4, 3, bias=130, semantics="fn", register=False)  # values near 1e-35
    with pytest.raises(ValueError, match=r"overflows scale_dtype='fp16' .* use a wider scale_dtype"):
        hwlab.quantize(W, fmt, 64)
    assert np.isfinite(hwlab.quantize(W, fmt, 64, scale_dtype="fp32").dequantize()).all()


def test_d19_a_long_double_table_float64_cannot_hold_is_refused():
    if np.finfo(np.longdouble).nmant <= np.finfo(np.float64).nmant:
        pytest.skip("long double is float64 on this platform: nothing can be lost")
    with pytest.raises(ValueError, match=r"lookup table 'x' is float128 and holds .* which float64 cannot hold"):
        define_lut("x", np.array([0, np.longdouble(1) + np.finfo(np.longdouble).eps]), register=False)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")
@pytest.mark.parametrize("layout", [torch.strided, torch.jagged])
def test_d20_a_nested_torch_tensor_is_a_type_error(layout):
    with pytest.raises(TypeError, match=r"W is a nested tensor .* pass a dense 2-D tensor"):
        hwlab.quantize(torch.nested.nested_tensor([torch.ones(4), torch.ones(5)], layout=layout), "int4")


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2", "bfloat16", "float8_e4m3fnuz"])
def test_every_ml_dtypes_float_is_read_exactly(dtype):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    w = W.astype(getattr(ml_dtypes, dtype))
    assert same_tensor(hwlab.quantize(w, "int4", 64), hwlab.quantize(w.astype(np.float32), "int4", 64))


# ---- S1-S5: no group silently clipped or zeroed ----------------------------------------------

@pytest.mark.parametrize("name", ["bitmod_fp4", "bitmod_fp3", "fp4_er_pos", "fp3_ea_neg", "ternary"])
def test_s1_a_default_scale_clamp_that_would_clip_is_reported(name):
    w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32) * 1e5
    with pytest.raises(ValueError, match=r"group \[0, 0\] .* above the upper bound of scale_clamp=.*"
                                         r"clipped by more than rounding; pass scale_clamp=None"):
        hwlab.quantize(w, name, 64)
    unclamped = hwlab.quantize(w, name, 64, scale_clamp=None, scale_dtype="fp32").dequantize()
    assert np.abs(unclamped).max() > 0.25 * np.abs(w).max()  # clamped, the largest came back as at most 8e4


@pytest.mark.parametrize("name, weights", [("bitmod_fp4", 1e-7), ("bitmod_fp3", 1e-7), ("fp4_ea_pos", 1e-7),
                                           ("ternary", 1e-6)])
def test_s2_a_default_scale_clamp_that_would_zero_a_group_is_reported(name, weights):
    w = (np.random.default_rng(3).standard_normal((4, 64)) * weights).astype(np.float32)
    with pytest.raises(ValueError, match=r"so far below the lower bound of scale_clamp=\(1e-05, .* that all its "
                                         r"weights would quantize to zero; pass scale_clamp=None"):
        hwlab.quantize(w, name, 32)
    assert np.abs(hwlab.quantize(w, name, 32, scale_clamp=None, scale_dtype="fp32").dequantize()).max() > 0


@pytest.mark.parametrize("name", ["int2_asym", "int4_asym", "int8_asym", "olive4"])
def test_s3_affine_and_olive_underflow_is_reported(name):
    w = (np.random.default_rng(3).standard_normal((4, 64)) * 1e-8).astype(np.float32)
    with pytest.raises(ValueError, match=r"so far below the least scale_dtype='fp16' holds .* quantize to zero"):
        hwlab.quantize(w, name, 32)
    d = hwlab.quantize(w, name, 32, scale_dtype="fp32").dequantize().reshape(4, 2, 32)
    assert (d != 0).any(axis=2).all()  # every group keeps a weight


def test_s3_an_int8_scale_too_coarse_for_a_small_group_is_reported():
    w = np.full((1, 64), 1e-5, np.float32)
    w[0, :32] = 1.0  # the row's int8 scales are codes times (1/7)/255: the second group's 1e-5 rounds to zero
    with pytest.raises(ValueError, match=r"group \[0, 1\] .* scale_dtype='int8' stores it as .* code 1 of 255"):
        hwlab.quantize(w, "int4", 32, scale_dtype="int8")


def test_s4_nvfp4_and_double_quant_blocks_that_would_vanish_are_reported():
    x = np.full((4, 64), 1e-30, np.float32)
    x[:, 0] = 1.0
    with pytest.raises(ValueError, match=r"nvfp4: block \[0, 1\] \(largest \|w\| 1e-30\) would quantize to all zeros"):
        hwlab.quantize(x, "nvfp4", 16)
    hwlab.quantize(x, "nf4", 64, double_quant=True)  # one block per row: small weights beside 1.0 round to 0, as in int4
    y = np.full((4, 64), 1e-30, np.float32)
    y[:, 0] = np.finfo(np.float32).max  # block [r, 1] is 1e-30 beside float32-max blocks: its compressed absmax is coarse
    with pytest.raises(ValueError, match=r"double_quant: block \[0, 1\] .* would quantize to all zeros .* leave "
                                         r"double_quant off"):
        hwlab.quantize(y, "nf4", 32, double_quant=True)
    assert (hwlab.quantize(y, "nf4", 32, scale_dtype="fp32").dequantize()[:, 32:] != 0).all()


@pytest.mark.parametrize("name", ["mxfp4", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxint8"])
def test_s5_mx_blocks_below_the_least_e8m0_scale_are_reported(name):
    w = (np.random.default_rng(3).standard_normal((4, 64)) * 1e-44).astype(np.float32)
    with pytest.raises(ValueError, match=rf"{name}: block \[0, 0\] .* OCP MX flushes a block below the least E8M0"):
        hwlab.quantize(w, name, 32)


# ---- the command line: E1-E3 and the misleading messages ----------------------------------------

def one_line(capsys, *argv):
    status, out, err = run(capsys, *argv)
    assert status == 2 and len(err.strip().splitlines()) == 1 and err.startswith("hwlab: error:"), (status, err)
    return err


@pytest.mark.parametrize("argv, match", [
    (["--model", "llama2-7b", "--batch", "10000000000000"], r"batch = 10000000000000 is past what the simulator models"),
    (["--model", "llama2-7b", "--context", "99999999999999999999"], r"context = 99999999999999999999 is past"),
    (["--model", "llama3-8b", "--phase", "prefill", "--context", "4000000"], r"multiply-accumulates, more than the 2\*\*60"),
    (["--model", "llama2-13b", "--batch", "1048576", "--context", "16000"], r"refetched traffic passes"),
    (["--model", "llama2-7b", "--csv", ""], r"--csv is empty"),  # E3
    (["--config", "w.npy", "--model", "llama2-7b"], r"--config w.npy: expected an accelerator configuration file \*.toml"),
])
def test_e1_e3_sim_refuses_absurd_and_empty_arguments(argv, match, capsys):
    assert re.search(match, one_line(capsys, "sim", *argv))


def test_e1_absurd_model_configs_are_refused_before_allocating(capsys, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    assert "nested too deeply" in one_line(capsys, "sim", "--model", deep)
    huge = tmp_path / "big" / "config.json"
    huge.parent.mkdir()
    huge.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
                                "num_hidden_layers": 10**11, "intermediate_size": 11008, "vocab_size": 32000}))
    assert "layers = 100000000000 is past any transformer" in one_line(capsys, "sim", "--model", huge)


def test_e3_an_empty_out_is_refused(capsys, npy, tmp_path):
    assert "--out is empty" in one_line(capsys, "quantize", npy, "--format", "int4", "--out", "")


def test_misleading_input_file_messages(capsys, tmp_path):
    text = tmp_path / "wtext.npy"
    text.write_text("1 2 3")
    assert "does not begin with the .npy magic string" in one_line(capsys, "quantize", text, "--format", "int4")
    np.savez(tmp_path / "w.npz", a=W)
    os.replace(tmp_path / "w.npz", tmp_path / "wzip.npy")
    assert "is a zip archive (an .npz?" in one_line(capsys, "quantize", tmp_path / "wzip.npy", "--format", "int4")
    assert "/dev/null is not a regular file" in one_line(capsys, "quantize", "/dev/null", "--format", "int4")
    assert "FILE is empty" in one_line(capsys, "quantize", "", "--format", "int4")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    np.save(tmp_path / "bf.npy", W.astype(ml_dtypes.bfloat16))
    assert "raw 2-byte values" in one_line(capsys, "quantize", tmp_path / "bf.npy", "--format", "int4")


def test_an_unwritable_out_names_out_not_a_temporary_file(capsys, npy, monkeypatch):
    def refuse(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "/somewhere/.q.safetensors.x.part")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    err = one_line(capsys, "quantize", npy, "--format", "int4", "--out", "/proc/q.safetensors")
    assert "--out /proc/q.safetensors: cannot write" in err and ".part" not in err


def test_save_to_a_directory_or_a_missing_one_is_an_os_error(tmp_path):
    qt = hwlab.quantize(W, "int4", 64)
    with pytest.raises(IsADirectoryError, match=r"cannot save to .*: it is a directory"):
        qt.save(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"directory .*nowhere does not exist"):
        qt.save(tmp_path / "nowhere" / "q.safetensors")


def test_dequantize_to_a_bad_device_is_a_value_error():
    qt = hwlab.quantize(W, "int4", 64)
    with pytest.raises(ValueError, match=r"device 'bogus' is not a torch device"):
        qt.dequantize(device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"torch finds no CUDA device"):
            qt.dequantize(device="cuda")
