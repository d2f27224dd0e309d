"""The hand-off every consumer reads: ``qt.unpacked()``, ``qt.layout`` and ``fmt.decomposition()``.

An *outside reader* written here from the documented layout alone (the descriptors stored in the
file's metadata, numpy bit unpacking, ml_dtypes for the minifloat scales) decodes every saved
tensor of every registered format (and of user-defined ones); the unpacked view must agree with
it bit for bit, and its one generic decode must equal ``dequantize()``.
"""
import json

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open

import hwlab
from hwlab.formats import (Decomposition, ElementFormat, Unpacked, define_lut, define_minifloat, define_mixture,
                           get_format, list_formats)
from hwlab.sample import sample_weights


def group_size_for(fmt) -> int:
    """128, or the format's own block where it fixes one (MX 32, NVFP4 16)."""
    try:
        fmt.check_group_size(128)
    except ValueError:
        return fmt.default_group_size
    return 128


# ---- an outside reader: layout descriptors from the file, nothing of hwlab's decoding --------

def read_bits(words: np.ndarray, layout: dict) -> np.ndarray:
    """Entries of a ``"bits"`` array: a little-endian bit stream of ``bits``-wide entries per row."""
    assert layout["packing"] == "bits" and words.dtype == np.uint32
    rows = words.shape[0]
    stream = np.unpackbits(words.astype("<u4").view(np.uint8).reshape(rows, -1), axis=1, bitorder="little")
    bits, n = layout["bits"], layout["entries"]
    fields = stream[:, :bits * n].reshape(rows, n, bits).astype(np.int64)
    return (fields << np.arange(bits)).sum(axis=2)


def read_trits(packed: np.ndarray, n: int) -> np.ndarray:
    """2-bit ternary codes (0, 1, 3 for 0, +1, -1) of 5-trit bytes, ``byte = sum(t_i * 3**i)``."""
    digits = (packed[:, :, None].astype(np.int64) // 3 ** np.arange(5)) % 3
    return np.array([0, 1, 3])[digits.reshape(packed.shape[0], -1)[:, :n]]


def read_scales(array: np.ndarray, encoding: str, arrays: dict, definition: dict) -> np.ndarray:
    """Decoded float64 scales of a stored scale array, by the encoding its descriptor names."""
    if encoding in ("fp16", "fp32"):
        return array.astype(np.float64)
    if encoding == "bf16":
        return (array.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if encoding == "e8m0":
        assert (array != 255).all()
        return np.ldexp(1.0, array.astype(np.int64) - 127)
    if encoding == "e4m3":
        return array.view(ml_dtypes.float8_e4m3fn).astype(np.float64)
    if encoding == "int8":
        return array * arrays["row_scales"].astype(np.float64)
    if encoding == "dynamic8":  # bitsandbytes: map[code] * block absmax + offset, in float32
        table = np.array([float(v) for v in definition["double_quant"]["map"]], dtype=np.float32)
        block = definition["double_quant"]["block"]
        absmax = np.repeat(arrays["scale_absmax"].ravel(), block)[:array.size].reshape(array.shape)
        return (table[array] * absmax + arrays["scale_offset"][0, 0]).astype(np.float64)
    raise AssertionError(f"unknown scale encoding {encoding}")


def value_table(definition: dict) -> np.ndarray:
    """``[members, 2**bits]`` values from a stored definition: its members', its own, or OliVe's two."""
    def floats(values):
        return np.array([float(v) for v in values])

    width = 2 ** definition["bits"]
    if "outlier_values" in definition:
        rows = [floats(definition["values"]), floats(definition["outlier_values"])]
    elif "members" in definition:
        rows = [floats(m["values"]) for m in definition["members"]]
    elif "element" in definition:  # microscaling: the element format's table
        rows = [floats(definition["element"]["values"])]
    else:
        rows = [floats(definition["values"])]
    return np.stack([np.concatenate([r, np.full(width - r.size, np.nan)]) for r in rows])


def per_element(a: np.ndarray, layout: dict, rows: int, cols: int) -> np.ndarray:
    """A per-group (or per-row, per-tensor) array as one entry per element ``[rows, cols]``."""
    if layout["applies_to"] == "tensor":
        return np.broadcast_to(a.reshape(1, 1), (rows, cols))
    return np.repeat(a, cols // a.shape[1], axis=1)


def outside_decode(path) -> np.ndarray:
    """Float32 weights of a saved tensor, from its arrays and the layout stored in its metadata."""
    with safe_open(path, framework="numpy") as fh:
        meta = json.loads(fh.metadata()["hwlab"])
        arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    layout, (rows, cols), kp, definition = meta["layout"], meta["shape"], meta["padded_cols"], meta["definition"]
    table = value_table(definition)
    if "codes" in layout:
        c = layout["codes"]
        codes = read_trits(arrays["codes"], c["entries"]) if c["packing"] == "trit5" else read_bits(arrays["codes"], c)
        if "victim_code" in definition:  # OliVe's pair rule: the partner of a victim code is an outlier
            victim = definition["victim_code"]
            even, odd = codes[:, 0::2], codes[:, 1::2]
            member = np.empty(codes.shape, dtype=np.int64)
            member[:, 0::2] = odd == victim
            member[:, 1::2] = (even == victim) & (odd != victim)
        elif "type_ids" in layout:
            member = per_element(read_bits(arrays["type_ids"], layout["type_ids"]), layout["type_ids"], rows, kp)
        else:
            member = np.zeros_like(codes)
        value = table[member, codes]
        if "zeros" in layout:
            value = value - per_element(read_bits(arrays["zeros"], layout["zeros"]), layout["zeros"], rows, kp)
    else:  # mixed_2_4: group_bits say which groups are 4-bit; codes4 / codes2 hold them in group order
        wide = read_bits(arrays["group_bits"], layout["group_bits"]).astype(bool)
        gs = layout["scales"]["group_size"]
        value = np.empty((rows, kp // gs, gs))
        for name, flag in (("4", True), ("2", False)):
            c, z = layout["codes" + name], layout["zeros" + name]
            codes = read_bits(arrays["codes" + name], c).reshape(rows, -1, gs)
            zeros = read_bits(arrays["zeros" + name], z)[:, :, None]
            value[wide == flag] = (table[c["member"], codes] - zeros).reshape(-1, gs)
        value = value.reshape(rows, kp)
    s = layout["scales"]
    scales = read_scales(arrays["scales"], s["encoding"], arrays, definition)
    if "tensor_scale" in layout:
        scales = scales * arrays["tensor_scale"].astype(np.float64)[0, 0]
    return (value * per_element(scales, s, rows, kp)).astype(np.float32)[:, :cols]


# ---- every format, random and real weights --------------------------------------------------

@pytest.fixture
def user_formats(isolated_registry):
    """A user LUT, minifloat and mixture, registered for the test."""
    return [define_lut("my_apot4", [0, 0.25, 0.5, 1, 1.5, 2, 3, 4, -0.25, -0.5, -1, -1.5, -2, -3, -4]),
            define_minifloat("my_e3m2_b5", exp_bits=3, man_bits=2, bias=5),
            define_mixture("my_mix", ["fp4_e2m1", "my_apot4", "flint4"])]


def weights_cases(rng):
    w = rng.standard_normal((24, 512)).astype(np.float32) * 0.02
    w[rng.integers(0, 24, 12), rng.integers(0, 512, 12)] *= 15  # outliers
    w[3] = 0  # an all-zero row
    real = sample_weights()["encoder.layer.0.attention.self.query.weight"][:48]
    return {"random": w, "minilm": real}


def check_unpacked(qt, tmp_path):
    u = qt.unpacked()
    assert isinstance(u, Unpacked) and u.format is qt.format and u.shape == qt.shape
    assert u.codes.dtype == np.uint8 and u.codes.shape == (qt.shape[0], qt.padded_cols)
    assert u.values.dtype == np.float64 and u.values.shape == (u.values.shape[0], 2 ** qt.format.bits)
    assert u.scales.dtype == np.float64 and np.isfinite(u.scales).all()
    w = qt.dequantize()
    assert np.array_equal(u.dequantize(), w)
    path = tmp_path / f"{qt.format_name}.safetensors"
    qt.save(path)
    np.testing.assert_array_equal(outside_decode(path), w, err_msg=f"{qt.format_name}: outside reader")


@pytest.mark.parametrize("name", list_formats())
def test_unpacked_view_agrees_with_an_outside_reader_of_the_file(name, rng, tmp_path):
    fmt = get_format(name)
    for label, w in weights_cases(rng).items():
        check_unpacked(hwlab.quantize(w, fmt, group_size_for(fmt)), tmp_path)


@pytest.mark.parametrize("options", [{"scale_dtype": "bf16"}, {"scale_dtype": "e8m0"}, {"scale_dtype": "e4m3"},
                                     {"scale_dtype": "int8"}, {"scale_dtype": "fp32", "granularity": "channel"},
                                     {"granularity": "tensor"}, {"scale_search": "mse"}])
@pytest.mark.parametrize("name", ["int4", "int3_asym", "bitmod_fp4", "nf4", "fp6_e2m3"])
def test_unpacked_view_for_every_scale_dtype_and_granularity(name, options, rng, tmp_path):
    check_unpacked(hwlab.quantize(weights_cases(rng)["random"], name, 64, **options), tmp_path)


@pytest.mark.parametrize("name, options", [("nf4", {"double_quant": True}), ("ternary", {"packing": "trit5"}),
                                           ("olive4", {"granularity": "channel", "scale_dtype": "int8"}),
                                           ("mixed_2_4", {"frac_4bit": 0.0}), ("mixed_2_4", {"frac_4bit": 1.0}),
                                           ("int2", {"packing": "trit5"})])
def test_unpacked_view_of_special_layouts(name, options, rng, tmp_path):
    check_unpacked(hwlab.quantize(weights_cases(rng)["random"], name, 64, **options), tmp_path)


def test_unpacked_view_of_user_formats(user_formats, rng, tmp_path):
    for fmt in user_formats:
        for w in weights_cases(rng).values():
            check_unpacked(hwlab.quantize(w, fmt, 64), tmp_path)


def test_padded_tensor_unpacks_with_its_padding(rng):
    qt = hwlab.quantize(rng.standard_normal((5, 100)).astype(np.float32), "int4", 64, pad=True)
    u = qt.unpacked()
    assert u.codes.shape == (5, 128) and u.shape == (5, 100) and u.dequantize().shape == (5, 100)
    assert (u.element_values()[:, 100:] == 0).all()


def test_member_per_group_and_per_element(rng):
    w = weights_cases(rng)["random"]
    mix = hwlab.quantize(w, "bitmod_fp4").unpacked()
    assert mix.member_scope == "group" and mix.member.shape == mix.scales.shape and mix.values.shape == (4, 16)
    olive = hwlab.quantize(w, "olive4").unpacked()
    assert olive.member_scope == "element" and olive.member.shape == olive.codes.shape
    assert olive.member.any()  # the outliers
    mixed = hwlab.quantize(w, "mixed_2_4").unpacked()
    assert mixed.member_scope == "group" and mixed.zeros is not None and mixed.row_scales is not None
    assert np.isnan(mixed.values[1, 4:]).all()  # INT2 has 4 codes
    plain = hwlab.quantize(w, "int4").unpacked()
    assert plain.member is None and plain.values.shape == (1, 16) and plain.scale_type == "fp16"
    nv = hwlab.quantize(w, "nvfp4").unpacked()
    assert nv.tensor_scale is not None and nv.scale_type == "e4m3" and nv.scale_codes.dtype == np.uint8
    dq = hwlab.quantize(w, "nf4", double_quant=True).unpacked()
    assert dq.scale_type == "dynamic8" and set(dq.second_level) == {"absmax", "offset", "block", "map"}


def test_unpacked_view_refuses_inconsistent_arrays(rng):
    u = hwlab.quantize(rng.standard_normal((4, 128)).astype(np.float32), "int4", 64).unpacked()
    with pytest.raises(ValueError, match="scales .* do not tile codes"):
        Unpacked(u.format, u.shape, u.codes, u.values, u.scales[:, :1].repeat(3, axis=1), "fp16", u.scale_codes, 64)
    with pytest.raises(ValueError, match="member_scope must be one of"):
        Unpacked(u.format, u.shape, u.codes, u.values, u.scales, "fp16", u.scale_codes, 64, member=u.codes)


# ---- the decomposition ----------------------------------------------------------------------

DECOMPOSED = [n for n in list_formats() if get_format(n).decomposition() is not None]


def check_decomposition(fmt):
    d = fmt.decomposition()
    assert isinstance(d, Decomposition)
    table = fmt.member_table()
    table = table[0] if table.shape[0] == 1 else table
    assert d.sign.shape == d.magnitude.shape == d.exponent.shape == table.shape
    assert np.array_equal(d.defined, np.isfinite(table))
    back = d.values()
    assert np.array_equal(back, table, equal_nan=True), fmt.name  # the NaN and inf codes too
    assert np.array_equal(np.signbit(back), np.signbit(table)), f"{fmt.name}: signs of zeros and infinities"
    odd_or_zero = (d.magnitude % 2 == 1) | ((d.magnitude == 0) & (d.exponent == 0))
    assert odd_or_zero.all() and (d.magnitude < 2 ** fmt.bits).all()
    return d


@pytest.mark.parametrize("name", DECOMPOSED)
def test_decomposition_reproduces_every_code_exactly(name):
    check_decomposition(get_format(name))


def test_which_formats_have_a_decomposition():
    assert get_format("nf4").decomposition() is None  # float32 constants: 24-bit magnitudes
    expected = {"int2", "int4", "int8", "int4_asym", "fp4_e2m1", "fp8_e4m3", "fp8_e5m2", "flint4", "bitmod_fp3",
                "bitmod_fp4", "fp4_ea_pos", "shift4", "ternary", "olive4", "mixed_2_4", "mxfp4", "mxint8", "nvfp4"}
    assert expected <= set(DECOMPOSED)
    assert set(list_formats()) - set(DECOMPOSED) == {"nf4"}


def test_decomposition_fields_a_pe_uses():
    e2m1 = check_decomposition(get_format("fp4_e2m1"))
    assert e2m1.fields == {"kind": "minifloat", "exp_bits": 2, "man_bits": 1, "bias": 1, "semantics": "finite"}
    assert e2m1.magnitude_bits == 2 and e2m1.exponent_range == (-1, 2)  # 6 = 3 * 2**1, 4 = 1 * 2**2, 0.5 = 2**-1
    assert get_format("int8").decomposition().fields == {"kind": "integer", "bits": 8, "signed": True}
    ea = check_decomposition(get_format("fp4_ea_pos"))
    assert ea.fields["special_code"] == 8 and ea.fields["special_value"] == 8.0
    assert (ea.magnitude[8], ea.exponent[8]) == (1, 3)  # the EA+ special value 8 = 1 * 2**3
    er = get_format("fp4_er_neg").decomposition()
    assert (er.sign[8], er.magnitude[8], er.exponent[8]) == (1, 5, 0)  # -5: a 3-bit magnitude
    shift = get_format("shift3").decomposition()
    assert (shift.magnitude == 1).all()  # one term each
    assert get_format("mxint8").decomposition().magnitude_bits == 7
    olive = get_format("olive4").decomposition()
    assert olive.sign.shape == (2, 16) and olive.magnitude[1].max() == 3  # 96 = 3 * 2**5


def test_decomposition_of_user_formats(user_formats):
    for fmt in user_formats:
        check_decomposition(fmt)
    assert define_lut("thirds", [0, 1 / 3, 2 / 3, 1], register=False).decomposition() is None


# ---- the layout descriptor ------------------------------------------------------------------

@pytest.mark.parametrize("name", list_formats())
def test_layout_describes_every_stored_array_and_travels_with_the_file(name, rng, tmp_path):
    fmt = get_format(name)
    qt = hwlab.quantize(weights_cases(rng)["random"], fmt, group_size_for(fmt))
    layout = qt.layout
    assert set(layout) == set(qt.arrays)
    for array_name, a in layout.items():
        stored = qt.arrays[array_name]
        assert (np.dtype(a.dtype), a.shape) == (stored.dtype, stored.shape), array_name
        if a.packing == "bits":
            assert a.shape[1] == -(-a.entries * a.bits // 32) and a.axis == 1
        assert a.applies_to in ("element", "group", "row", "tensor", "scale_block")
        assert (a.group_size is not None) == (a.applies_to == "group")
    path = tmp_path / "t.safetensors"
    qt.save(path)
    with safe_open(path, framework="numpy") as fh:
        stored_layout = json.loads(fh.metadata()["hwlab"])["layout"]
    assert stored_layout == {n: a.to_json() for n, a in layout.items()}
    assert hwlab.load(path).layout == layout


# ---- a tensor keeps the format it was quantized with ----------------------------------------

def test_unregistered_format_works_end_to_end(rng, tmp_path):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    fmt = define_lut("never_registered", [0, 1, 2, 3, -1, -2, -3, 4], register=False)
    qt = hwlab.quantize(w, fmt, 32)
    assert qt.format is fmt and qt.unpacked().values[0, 7] == 4
    path = tmp_path / "q.safetensors"
    qt.save(path)
    assert np.array_equal(qt.dequantize(), outside_decode(path))
    with pytest.warns(hwlab.formats.FormatRebuiltWarning):
        assert np.array_equal(hwlab.load(path).dequantize(), qt.dequantize())


def test_unregistered_format_with_a_registered_name_keeps_its_own_table(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    impostor = define_lut("int4", np.arange(16) - 8.0, register=False)  # not the registered int4
    qt = hwlab.quantize(w, impostor, 32)
    assert qt.format is impostor and np.array_equal(qt.unpacked().values[0], impostor.values)
    assert not np.array_equal(qt.dequantize(), hwlab.quantize(w, "int4", 32).dequantize())


def test_redefining_a_format_does_not_change_tensors_quantized_before(isolated_registry, rng, tmp_path):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    old = define_lut("my_lut", [0, 1, 2, 3, -1, -2, -3, -4])
    qt = hwlab.quantize(w, "my_lut", 32)
    before = qt.dequantize()
    define_lut("my_lut", [0, 1, 2, 5, -1, -2, -3, -5], overwrite=True)
    assert qt.format is old and np.array_equal(qt.dequantize(), before)
    path = tmp_path / "old.safetensors"
    qt.save(path)  # the old definition's fingerprint, beside the old codes
    with safe_open(path, framework="numpy") as fh:
        assert json.loads(fh.metadata()["hwlab"])["fingerprint"] == old.fingerprint()
    with pytest.raises(ValueError, match="registered here differs from the one the file was saved with"):
        hwlab.load(path)


@pytest.mark.parametrize("name, options, names", [("mixed_2_4", {}, "'codes4'"),
                                                  ("ternary", {"packing": "trit5"}, "'codes' \\(trit5, uint8\\)")])
def test_codes_property_names_the_arrays_where_there_is_no_single_word_array(name, options, names, rng):
    qt = hwlab.quantize(rng.standard_normal((4, 128)).astype(np.float32), name, 64, **options)
    with pytest.raises(ValueError, match=f"does not store one packed 'codes' array.*{names}.*qt.unpacked"):
        qt.codes
    assert hwlab.quantize(rng.standard_normal((4, 128)).astype(np.float32), "int4", 64).codes.dtype == np.uint32


# ---- files that describe themselves ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["lut", "minifloat", "mixture"])
def test_a_colleagues_format_is_rebuilt_from_the_file(kind, isolated_registry, rng, tmp_path):
    w = rng.standard_normal((8, 128)).astype(np.float32)
    fmt = {"lut": lambda: define_lut("colleague", [0, 0.5, 1, 3, -0.5, -1, -3, -6]),
           "minifloat": lambda: define_minifloat("colleague", 3, 2, bias=2),
           "mixture": lambda: define_mixture("colleague", ["fp4_e2m1", "flint4"])}[kind]()
    qt = hwlab.quantize(w, fmt, 64, scale_dtype="bf16")
    path = tmp_path / "c.safetensors"
    qt.save(path)
    isolated_registry._REGISTRY.pop("colleague")
    with pytest.warns(hwlab.formats.FormatRebuiltWarning, match="'colleague' is not registered here; rebuilt it"):
        loaded = hwlab.load(path)
    assert loaded.format.fingerprint() == fmt.fingerprint() and loaded.format.info == fmt.info
    assert np.array_equal(loaded.dequantize(), qt.dequantize())
    assert np.array_equal(hwlab.quantize(w, loaded.format, 64, scale_dtype="bf16").dequantize(), qt.dequantize())


def test_a_corrupted_definition_is_not_rebuilt(isolated_registry, rng, tmp_path):

    qt = hwlab.quantize(rng.standard_normal((4, 64)).astype(np.float32),
                        define_lut("colleague", [0, 1, 2, 3, -1, -2, -3, -4]), 32)
    path = tmp_path / "c.safetensors"
    qt.save(path)
    isolated_registry._REGISTRY.pop("colleague")
    meta = qt.metadata()
    meta["definition"]["values"][3] = repr(7.0)  # the fingerprint no longer matches
    resave(path, qt.arrays, meta)
    with pytest.raises(ValueError, match="stored definition of format 'colleague' does not match its fingerprint"):
        hwlab.load(path)
    meta["definition"] = {"name": "colleague", "family": "outlier_victim"}
    resave(path, qt.arrays, meta)
    with pytest.raises(ValueError, match="cannot rebuild format 'colleague'"):
        hwlab.load(path)


def resave(path, arrays: dict, meta: dict) -> None:
    """Write ``arrays`` with ``meta`` as a consistent file: checksums and digest recomputed."""
    from safetensors.numpy import save_file

    from hwlab.formats import storage

    meta = dict(meta, checksums={k: storage.checksum(v) for k, v in arrays.items()})
    meta["digest"] = storage.digest(meta)
    save_file(dict(arrays), str(path), metadata={"hwlab": json.dumps(meta)})


# ---- small contracts --------------------------------------------------------------------------

def test_element_formats_declare_their_packings():
    assert get_format("ternary").options["packing"].choices == ("bits", "trit5")
    assert get_format("int2").options["packing"].choices == ("bits", "trit5")  # its codes are ternary too
    assert get_format("int4").options["packing"].choices == ("bits",)
    assert all(isinstance(get_format(n), ElementFormat) for n in ("ternary", "int2"))


def test_error_metrics_of_two_zero_matrices_are_exact():
    z = np.zeros((3, 4), np.float32)
    m = hwlab.error_metrics(z, z)
    assert m["rel_error"] == 0.0 and m["mse"] == 0.0 and m["sqnr_db"] == float("inf")


def test_ieee_specials_survive_the_decomposition():
    d = get_format("fp8_e5m2").decomposition()
    assert d.values()[124] == np.inf and d.values()[252] == -np.inf and d.sign[252] == 1
    assert not d.defined[[124, 125, 252]].any()


# ---- hostile-trial findings ---------------------------------------------------------------------

def test_declared_defaults_are_the_effective_ones():
    ternary = get_format("ternary")
    assert ternary.options["granularity"].default == "tensor" == ternary.option_values({})["granularity"]
    assert ternary.options["scale_clamp"].default == (1e-5, 65504.0)
    for name in ("fp4_ea_pos", "bitmod_fp4", "bitmod_fp3"):
        assert get_format(name).options["scale_clamp"].default == (1e-5, 1e4)
    for name in list_formats():
        fmt = get_format(name)
        assert fmt.option_values({}) == {k: o.default for k, o in fmt.options.items()} or name == "nf4"


def test_options_are_canonical_and_save_as_strict_json(rng, tmp_path):
    w = rng.standard_normal((4, 128)).astype(np.float32)
    qt = hwlab.quantize(w, "int4", 64, scale_search="mse", clip_ratios=[np.float32(0.75), 1.0],
                        scale_clamp=(np.float64(1e-6), np.int64(100)))
    assert qt.options["clip_ratios"] == (0.75, 1.0) and type(qt.options["scale_clamp"][1]) is int
    qt.save(tmp_path / "t.safetensors")
    assert hwlab.load(tmp_path / "t.safetensors").options == qt.options
    with pytest.raises(ValueError, match=r"scale_clamp must be None or \(low, high\) with finite"):
        hwlab.quantize(w, "int4", 64, scale_clamp=(1e-5, float("inf")))


def test_stored_arrays_and_the_unpacked_view_are_read_only(rng):
    qt = hwlab.quantize(rng.standard_normal((4, 128)).astype(np.float32), "int4", 64, scale_dtype="int8")
    with pytest.raises(ValueError, match="read-only"):
        qt.arrays["codes"][0, 0] = 1
    with pytest.raises(TypeError):
        qt.arrays["codes"] = np.zeros(1)
    u = qt.unpacked()
    for name in ("codes", "values", "scales", "scale_codes", "row_scales"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(u, name)[...] = 0
    with pytest.raises(ValueError, match="read-only"):
        qt.codes[0, 0] = 1


def test_row_scales_of_a_per_tensor_int8_scale_cover_the_tensor(rng):
    qt = hwlab.quantize(rng.standard_normal((4, 128)).astype(np.float32), "int4", granularity="tensor",
                        scale_dtype="int8")
    assert qt.layout["row_scales"].applies_to == "tensor" and qt.layout["scales"].decode == "scales * row_scales"


def test_a_stored_layout_that_does_not_match_is_refused(rng, tmp_path):

    qt = hwlab.quantize(rng.standard_normal((4, 128)).astype(np.float32), "int4", 64)
    path = tmp_path / "t.safetensors"
    for edit, match in ((lambda m: m.pop("layout"), "metadata field 'layout' is missing"),
                        (lambda m: m.update(layout=None), "metadata field 'layout' must be an object"),
                        (lambda m: m["layout"]["codes"].update(bits=3), "stored layout does not match"),
                        (lambda m: m["layout"].pop("scales"), "stored layout does not match")):
        meta = qt.metadata()
        edit(meta)
        resave(path, qt.arrays, meta)
        with pytest.raises(ValueError, match=match):
            hwlab.load(path)


def test_crafted_definitions_give_clear_errors(isolated_registry, rng, tmp_path):

    qt = hwlab.quantize(rng.standard_normal((4, 64)).astype(np.float32),
                        define_lut("colleague", [0, 1, 2, 3, -1, -2, -3, -4]), 32)
    isolated_registry._REGISTRY.pop("colleague")
    path = tmp_path / "c.safetensors"
    for key, value in (("defaults", []), ("defaults", {"scale_clamp": "-" * 20000 + "1"}), ("values", [1, 2]),
                       ("fields", "x"), ("encodable", "x")):
        meta = qt.metadata()
        meta["definition"][key] = value
        resave(path, qt.arrays, meta)
        with pytest.raises(ValueError, match="cannot rebuild format 'colleague'"):
            hwlab.load(path)


def test_format_names_are_checked_when_a_format_is_made():
    for bad in (5, "Bad Name!", "", "x-y"):
        with pytest.raises((ValueError, TypeError), match="lower-case identifiers"):
            define_lut(bad, [0, 1, -1, 2], register=False)
    with pytest.raises(ValueError, match="lower-case identifiers"):
        define_mixture("Mix", ["fp4_e2m1", "flint4"], register=False)


def test_a_file_made_under_a_registered_name_opens_with_its_own_definition(rng, tmp_path):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    impostor = define_lut("int4", np.arange(16) - 8.0, register=False)
    qt = hwlab.quantize(w, impostor, 32)
    path = tmp_path / "i.safetensors"
    qt.save(path)
    with pytest.raises(ValueError, match=r"load\(path, use_file_format=True\) decodes with the file.s definition"):
        hwlab.load(path)
    with pytest.warns(hwlab.formats.FormatRebuiltWarning, match="differs from the registered one"):
        loaded = hwlab.load(path, use_file_format=True)
    assert np.array_equal(loaded.dequantize(), qt.dequantize()) and get_format("int4") is not loaded.format


def test_a_rebuilt_format_keeps_its_description(isolated_registry, rng, tmp_path):
    fmt = define_lut("colleague", [0, 1, 2, 3, -1, -2, -3, -4], description="APoT-ish, from Alice")
    hwlab.quantize(rng.standard_normal((4, 64)).astype(np.float32), fmt, 32).save(tmp_path / "c.safetensors")
    isolated_registry._REGISTRY.pop("colleague")
    with pytest.warns(hwlab.formats.FormatRebuiltWarning):
        assert hwlab.load(tmp_path / "c.safetensors").format.description.startswith("APoT-ish, from Alice")


def test_a_lookup_table_may_hold_minus_zero_beside_zero(rng):
    e2m1 = get_format("fp4_e2m1")
    lut = define_lut("e2m1_as_table", e2m1.values, register=False)
    x = rng.standard_normal(4000) * 3
    assert np.array_equal(lut.encode(x), e2m1.encode(x)) and lut.encode([-0.1])[0] == 8
    with pytest.raises(ValueError, match="repeats the value -0.0"):
        define_lut("two_minus_zeros", [0.0, -0.0, -0.0, 1.0], register=False)
