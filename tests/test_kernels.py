"""Triton kernels against the float64 reference of the one door (``qt.unpacked()``).

On a machine without a GPU (CI) every kernel runs in Triton's interpreter on CPU tensors; on the
GPU machine the same tests run compiled on CUDA. Outputs are poisoned (NaN) before each run.
"""
import dataclasses
import math

import numpy as np
import pytest

import hwlab.formats as F
from hwlab.formats.packing import pack_codes

torch = pytest.importorskip("torch", reason="torch is not installed")
pytest.importorskip("triton", reason="triton is not installed")

from hwlab import kernels  # noqa: E402
from hwlab.kernels import dispatch  # noqa: E402
from hwlab.kernels.half_pairs import WORDS, half_word_ptx  # noqa: E402
from hwlab.kernels.plan import build_plan  # noqa: E402
from hwlab.kernels.reference import reference_matmul, reference_weights  # noqa: E402
from hwlab.kernels.testing import half_terms, matmul_tolerance, scale_bound, worst_error  # noqa: E402

ALL_FORMATS = F.list_formats()
def poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def check_matmul(x, qt, dev, launch=None):
    """Run matmul (or one launch) into a poisoned output; compare with the float64 reference of the
    unpacked view within :func:`hwlab.kernels.testing.matmul_tolerance` (through
    :func:`~hwlab.kernels.testing.worst_error`)."""
    n = qt.shape[0]
    out = poisoned(tuple(x.shape[:-1]) + (n,), x.dtype, dev.device)
    if launch is None:
        kernels.matmul(x, dev, out=out)
    else:
        dispatch.run(x.view(-1, x.shape[-1]), dev, out.view(-1, n), launch)
    got = out.double().cpu()
    assert torch.isfinite(got).all(), "a poisoned output was not overwritten"
    worst = worst_error(got, x, qt, launch)
    assert worst <= 1.0, f"{qt.format_name}: error {worst:.3g} x tolerance"
    return got


@pytest.fixture
def weights(rng):
    return (rng.standard_normal((40, 512)) * 0.02).astype(np.float32)


@pytest.fixture
def long_weights(rng):
    """K = 2048: gemv_words' steps of up to 1024 elements give split-K two programs."""
    return (rng.standard_normal((40, 2048)) * 0.02).astype(np.float32)


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_device_dequantize_is_bit_exact(name, rng, kernel_device):
    qt = F.quantize((rng.standard_normal((37, 256)) * 0.02).astype(np.float32), name)
    w = kernels.dequantize(qt.to(kernel_device)).cpu().numpy()
    np.testing.assert_array_equal(w, qt.dequantize())


@pytest.mark.parametrize("name", ["mxfp4", "mxint8"])
def test_e8m0_scales_are_decoded_as_exponents_over_their_whole_range(name, rng, kernel_device):
    """E8M0 group scales from 2**-127 to 2**126 (the subnormal code 0 included: the float32 table reads 2**-127 as
    a subnormal) are computed from the code, bit for bit as the table gives them; nvfp4's E4M3 keeps its table."""
    exponents = np.linspace(-125, 125, 64).round()
    w = rng.standard_normal((64, 128)) * np.exp2(exponents)[:, None]
    w[0] = 2.0**-125 * np.linspace(-1.0, 1.0, 128)  # a row whose scales reach code 0 (2**-127) or next to it
    qt = F.quantize(w.astype(np.float32), name)
    dev = qt.to(kernel_device)
    assert dispatch._scale_id(dev.plan) == dispatch.SCALE_IDS["exponent"]
    assert qt.unpacked().scales.min() <= 2.0**-126 and qt.unpacked().scales.max() >= 2.0**120
    np.testing.assert_array_equal(kernels.dequantize(dev).cpu().numpy(), qt.dequantize())
    nv = F.quantize((rng.standard_normal((8, 64)) * 0.02).astype(np.float32), "nvfp4").to(kernel_device)
    assert dispatch._scale_id(nv.plan) == dispatch.SCALE_IDS["table"]


@pytest.mark.parametrize("name, options, exponent_scales", [
    ("mxint8", {}, True), ("mxint8", {}, False), ("nvfp4", {}, True), ("mxfp8_e4m3", {}, True),
    ("int8", {"scale_dtype": "fp32"}, True)], ids=["mxint8", "mxint8-e8m0-table", "nvfp4", "mxfp8", "int8-fp32"])
def test_weights_near_the_float32_limit_stay_finite(name, options, exponent_scales, rng, kernel_device, monkeypatch):
    """Weights up to 3.3e38 (mxint8: codes times 2**-6 times E8M0 scales up to 2**127, as exponents and looked up;
    nvfp4: a value scale, tensor scale times 2**14, above 2**128; mxfp8 and int8 with fp32 scales as controls) are
    dequantized bit for bit and multiplied at M = 1 (gemv_words, its table decode, the tile kernel with split-K)
    and M = 16 (tile_dot with and without fp16 pairs): bf16 outputs, inside bf16's range, within the bound, fp16
    ones saturated with the reference's sign wherever the bound leaves it no doubt (the fp16 pair GEMV's partial
    sums may flip a row that nearly cancels), and none beyond 65504. (The kernels multiplied codes or partial sums by the scale before
    the plan's value scale, and code 127 times 2**127 overflows float32.)"""
    monkeypatch.setattr(dispatch, "EXPONENT_SCALES", exponent_scales)
    w = rng.uniform(-1.0, 1.0, (32, 256)) * 3.3e38
    w[::2] = np.abs(w[::2])  # rows of one sign: group sums of codes times x above 2, past 2**128 at 2**127
    qt = F.quantize(w.astype(np.float32), name, **options)
    dev = qt.to(kernel_device)
    assert np.abs(qt.dequantize()).max() > 2.0**127
    np.testing.assert_array_equal(kernels.dequantize(dev).cpu().numpy(), qt.dequantize())
    x = torch.from_numpy(rng.uniform(0.5, 1.0, (16, 256)) * 2.0**-9)  # |x @ W^T| < 256 * 2**-9 * 3.3e38 < 2**127
    plan = dev.plan
    ks = min(dispatch.KS_MAX, plan.elements_per_group & -plan.elements_per_group)
    tile = dispatch.Launch("tile", dispatch.TILE_BN, 1, ks, 2, plan.padded_cols // ks // 2, plan.decode)  # split-K
    gemv, dot = dispatch.choose(plan, 1), dispatch.choose(plan, 16)  # dot: split-K where K holds several groups
    assert gemv.kernel == "gemv_words" and dot.kernel == "tile_dot"
    for m, launches in ((1, [gemv, dataclasses.replace(gemv, decode="lut"), tile]),
                        (16, [dot, dataclasses.replace(dot, half_pairs=False, weights_first=False)])):
        for launch in launches:
            check_matmul(x[:m].bfloat16().to(kernel_device), qt, dev, launch)
            half = x[:m].half()
            out = poisoned((m, 32), torch.float16, dev.device)
            dispatch.run(half.to(kernel_device), dev, out, launch)
            ref = torch.from_numpy(reference_matmul(half, qt))
            tol = matmul_tolerance(half, torch.from_numpy(reference_weights(qt)), torch.from_numpy(scale_bound(qt)),
                                   ref, half_terms(plan, m) if launch.decode == plan.decode else 0)
            got, clear = out.double().cpu(), ref.abs() > tol  # the sign is known where |ref| exceeds the bound
            assert got.abs().le(65504.0).all(), launch.describe()
            np.testing.assert_array_equal(got[clear].numpy(), (ref.sign() * 65504.0)[clear].numpy(),
                                          err_msg=launch.describe())
            assert clear.double().mean() > 0.9, launch.describe()


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_matmul_every_format(name, weights, kernel_device):
    qt = F.quantize(weights, name)
    dev = qt.to(kernel_device)
    gen = torch.Generator().manual_seed(3)
    for m, dtype in ((1, torch.float16), (5, torch.bfloat16)):
        x = torch.randn(m, weights.shape[1], generator=gen).to(dtype).to(kernel_device)
        check_matmul(x, qt, dev)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["int4", "int3", "int2_asym", "nf4", "bitmod_fp4", "olive4", "mixed_2_4", "nvfp4",
                                  "fp8_e5m2", "ternary"])
@pytest.mark.parametrize("m", [1, 2, 17, 33, 70])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matmul_batch_sizes(name, m, dtype, rng, kernel_device):
    qt = F.quantize((rng.standard_normal((45, 384)) * 0.02).astype(np.float32), name,
                    **({"group_size": 128} if name not in ("nf4", "nvfp4", "ternary") else {}))
    x = torch.from_numpy(rng.standard_normal((m, 384))).to(dtype).to(kernel_device)
    check_matmul(x, qt, qt.to(kernel_device))


@pytest.mark.parametrize("name", ["int4", "int8_asym", "nf4", "int3", "mixed_2_4", "bitmod_fp3"])
def test_split_k_partial_sums(name, long_weights, kernel_device):
    """Many programs along K add float32 partial sums (atomics into a zeroed buffer)."""
    weights = long_weights
    qt = F.quantize(weights, name)
    dev = qt.to(kernel_device)
    for m in (1, 20):
        launch = dispatch.choose(dev.plan, m, sms=64)
        assert launch.split > 1
        x = torch.randn(m, weights.shape[1]).half().to(kernel_device)
        check_matmul(x, qt, dev, launch)


@pytest.mark.parametrize("options", [
    dict(fmt="nf4", double_quant=True), dict(fmt="int4", scale_dtype="bf16"), dict(fmt="int4", scale_dtype="e8m0"),
    dict(fmt="int4", scale_dtype="e4m3"), dict(fmt="int4", scale_dtype="int8"), dict(fmt="int4", scale_dtype="fp32"),
    dict(fmt="int8", granularity="channel"), dict(fmt="fp4_e2m1", granularity="tensor"),
    dict(fmt="ternary", packing="trit5"), dict(fmt="int4", group_size=100), dict(fmt="int3", group_size=32),
    dict(fmt="nf4", group_size=32), dict(fmt="mixed_2_4", frac_4bit=0.0), dict(fmt="mixed_2_4", frac_4bit=1.0),
    dict(fmt="bitmod_fp4", group_size=64)], ids=lambda o: "-".join(f"{v}" for v in o.values()))
def test_matmul_options(options, rng, kernel_device):
    options = dict(options)
    qt = F.quantize((rng.standard_normal((24, 3200)) * 0.02).astype(np.float32), options.pop("fmt"), **options)
    dev = qt.to(kernel_device)
    for m in (1, 9):
        check_matmul(torch.from_numpy(rng.standard_normal((m, 3200))).half().to(kernel_device), qt, dev)
    np.testing.assert_allclose(kernels.dequantize(dev).cpu().numpy(), qt.dequantize(),
                               rtol=2.0**-22 if options.get("double_quant") else 0, atol=0)


def test_padded_k_and_odd_shapes(rng, kernel_device):
    qt = F.quantize((rng.standard_normal((7, 300)) * 0.02).astype(np.float32), "int4", pad=True)
    assert qt.padded_cols == 384
    check_matmul(torch.randn(3, 1, 300).half().to(kernel_device), qt, qt.to(kernel_device))


def test_odd_group_sizes_use_the_dequantize_path(rng, kernel_device):
    qt = F.quantize((rng.standard_normal((20, 300)) * 0.02).astype(np.float32), "int4", group_size=100)
    dev = qt.to(kernel_device)
    assert dispatch.choose(dev.plan, 8).kernel == "dequantize_then_torch"
    assert dispatch.choose(dev.plan, 1).kernel == "tile"
    assert "dequantize_then_torch" in kernels.explain(dev, 8)
    check_matmul(torch.randn(8, 300).half().to(kernel_device), qt, dev)


@pytest.mark.parametrize("name", ["fp4_e2m1", "fp8_e4m3", "int4", "int2_asym"])
def test_every_decode_of_the_fast_gemv(name, weights, kernel_device):
    """gemv_words reads int codes arithmetically, minifloats by binary16 placement, both through the table."""
    qt = F.quantize(weights, name)
    dev = qt.to(kernel_device)
    launch = dispatch.choose(dev.plan, 1)
    assert launch.kernel == "gemv_words"
    x = torch.randn(1, weights.shape[1]).half().to(kernel_device)
    decodes = {dev.plan.decode, "lut"} | ({"pairs"} if dev.plan.table_size <= 16 and dev.plan.half_exact else set())
    for decode in decodes:
        check_matmul(x, qt, dev, dataclasses.replace(launch, decode=decode))


HALF_PAIR_FORMATS = ["int4", "int4_asym", "int2", "int8", "ternary"]
HALF_PAIR_MINIFLOATS = ["fp4_e2m1", "fp4_e1m2", "fp4_e3m0", "fp8_e4m3", "mxfp4", "nvfp4"]


@pytest.mark.parametrize("name", HALF_PAIR_FORMATS + HALF_PAIR_MINIFLOATS)
def test_half_pair_path_over_the_whole_fp16_range(name, rng, kernel_device):
    """The fp16 pair path of gemv_words (integer codes of 2, 4, 8 bits, minifloats of 4 and 8 bits placed in
    binary16, their subnormals included): activations from fp16 subnormals to 65504 in one row, one row of
    zeros, a lone huge value among tiny ones, and bf16 beyond the fp16 range; every output finite and within
    the bound, on every split-K."""
    w = (rng.standard_normal((48, 1024)) * 0.02).astype(np.float32)
    w[7] = np.linspace(-0.06, 0.06, 1024)  # a row whose groups use every code (as small as the rest: no overflow)
    qt = F.quantize(w, name)
    dev = qt.to(kernel_device)
    launch = dispatch.choose(dev.plan, 1)
    assert launch.kernel == "gemv_words" and dispatch.half_pairs_apply(dev.plan, launch.decode)
    # whole steps of HALF_TILE's words, halved where they would hold more than MAX_GROUPS_PER_STEP groups (mx, nv)
    assert launch.bn == dispatch.HALF_TILE[0] and launch.ks in (dispatch.HALF_TILE[1] * 32 // dev.plan.bits >> h
                                                                 for h in range(4))
    for x in whole_range_activations(rng, 1024, kernel_device):
        for sms in (1, 64):  # one program along K, then split-K
            check_matmul(x, qt, dev, dispatch.choose(dev.plan, 1, sms=sms))


def whole_range_activations(rng, k, device):
    """Rows [1, k] of activations: fp16 from subnormals to 65504 in one row, zeros, a lone -65504 among 1e-6, and
    bf16 rows beyond fp16's range above and below."""
    wide = np.exp2(rng.uniform(-24, 15.9, k)) * rng.choice([-1, 1], k)
    lone = np.full(k, 1e-6)
    lone[k // 2 + 5] = -65504.0
    for values, dtype in ((wide, torch.float16), (np.zeros(k), torch.float16), (lone, torch.float16),
                          (wide * 2.0**100, torch.bfloat16), (wide * 2.0**-100, torch.bfloat16)):
        yield torch.from_numpy(values).to(dtype).reshape(1, -1).to(device)


SUBNORMAL_FORMATS = ["int4", "int2", "int8", "int4_asym", "ternary", "mxint8"]


@pytest.mark.parametrize("name", SUBNORMAL_FORMATS + [pytest.param(name, marks=pytest.mark.slow)
                                                      for name in ("int2_asym", "int8_asym")])
def test_subnormal_decode_over_the_whole_fp16_range(name, rng, kernel_device, monkeypatch):
    """GEMV_SUBNORMAL: gemv_words' integer codes as fp16 subnormals (one LOP3 a pair, x' scaled per pair) stay
    within the bound (:func:`~hwlab.kernels.testing.subnormal_bounds`) on the activations of the whole fp16 range
    and beyond it in bf16, on one program along K and on split-K; with activations of one scale, their outputs
    stay as close to the default decode's as both are to the reference."""
    w = (rng.standard_normal((48, 1024)) * 0.02).astype(np.float32)
    w[7] = np.linspace(-0.06, 0.06, 1024)  # a row whose groups use every code
    qt = F.quantize(w, name)
    dev = qt.to(kernel_device)
    plain = dispatch.choose(dev.plan, 1)
    monkeypatch.setattr(dispatch, "GEMV_SUBNORMAL", True)
    launch = dispatch.choose(dev.plan, 1)
    assert launch == dataclasses.replace(plain, subnormal=True) and "fp16 subnormals" in launch.describe()
    for x in whole_range_activations(rng, 1024, kernel_device):
        for sms in (1, 64):
            check_matmul(x, qt, dev, dispatch.choose(dev.plan, 1, sms=sms))
    x = torch.randn(1, 1024).half().to(kernel_device)
    got, want = check_matmul(x, qt, dev, launch), check_matmul(x, qt, dev, plain)
    assert (got - want).abs().max() <= 2 ** -8 * (x.double().cpu().abs() @ torch.from_numpy(
        np.abs(reference_weights(qt))).T).max()


def test_subnormal_decode_takes_integer_codes_only(rng, kernel_device, monkeypatch):
    """Minifloats, tables and the tensor-core tiles keep their decodes under GEMV_SUBNORMAL; a Launch that asks
    for it elsewhere is refused, naming what was asked; its PTX is one LOP3 a pair and no HFMA2 but the products."""
    monkeypatch.setattr(dispatch, "GEMV_SUBNORMAL", True)
    w = (rng.standard_normal((40, 512)) * 0.02).astype(np.float32)
    for name in ("nf4", "fp4_e2m1", "bitmod_fp4", "int3"):
        assert not dispatch.choose(build_plan(F.quantize(w, name)), 1).subnormal, name
    assert not dispatch.choose(build_plan(F.quantize(w, "int4")), 16).subnormal
    with pytest.raises(ValueError, match="subnormal decode is a launch of gemv_words with the int decode, got tile"):
        dispatch.Launch("tile", 64, 1, 128, 1, 1, "int", subnormal=True)
    with pytest.raises(ValueError, match="with decode 'lut'"):
        dispatch.Launch("gemv_words", 32, 1, 256, 1, 1, "lut", subnormal=True)
    int3 = F.quantize(w, "int3").to(kernel_device)
    with pytest.raises(ValueError, match="int3 with decode 'int' does not take"):
        dispatch.run(torch.randn(1, 512).half().to(kernel_device), int3, torch.empty(1, 40).half().to(kernel_device),
                     dispatch.Launch("gemv_words", 32, 1, 320, 1, 2, "int", subnormal=True))
    for bits, flip in ((2, 2), (4, 8), (4, 0), (8, 128)):
        ptx = half_word_ptx(bits, flip, subnormal=True)
        pairs = WORDS * 16 // bits
        assert ptx.count("lop3.b32") == pairs and ptx.count("f16x2") == pairs and "add.rn.f16x2" not in ptx


@pytest.mark.parametrize("name", ["int4", "int4_asym"])
def test_subnormal_decode_with_an_infinite_activation(name, rng, kernel_device, monkeypatch):
    """An inf in x makes the subnormal decode's row NaN (``sum (q + flip) x' - flip sum x'`` is inf - inf, as with
    zero points), never a finite number."""
    monkeypatch.setattr(dispatch, "GEMV_SUBNORMAL", True)
    qt = F.quantize((rng.standard_normal((48, 512)) * 0.02).astype(np.float32), name)
    x = torch.randn(1, 512).half()
    x[0, 100] = float("inf")
    assert torch.isnan(kernels.matmul(x.to(kernel_device), qt.to(kernel_device))).all()


@pytest.mark.parametrize("name", ["int4", "int8", "int4_asym", "fp4_e2m1", "fp8_e4m3"])
def test_half_pair_path_with_an_infinite_activation(name, rng, kernel_device):
    """An inf in x gives what torch's linear gives, saturated: +-largest where the weight of its column
    is nonzero, NaN where it is zero (inf * 0); it does not poison the activation scale. With zero
    points the row is NaN, as on the float32 path: ``sum q x - z sum x`` is inf - inf."""
    w = (rng.standard_normal((48, 512)) * 0.02).astype(np.float32)
    w[:5, 100] = 0.0
    qt = F.quantize(w, name)
    dev = qt.to(kernel_device)
    x = torch.randn(1, 512).half()
    x[0, 100] = float("inf")
    got = kernels.matmul(x.to(kernel_device), dev).double().cpu()
    if dev.plan.zero_bits:
        assert torch.isnan(got).all()
        return
    want = torch.from_numpy(reference_matmul(x, qt)).clamp(-65504.0, 65504.0)
    assert (torch.isnan(got) == torch.isnan(want)).all() and torch.isnan(want).any()
    assert (got[~torch.isnan(want)] == want[~torch.isnan(want)]).all()


def test_minifloats_the_pairs_cannot_hold_gather_from_a_table(rng, kernel_device, monkeypatch):
    """fp8_e5m2's binary16 placements are its values (up to 57344): x' would need a range below 1, so its
    GEMV stays on the table; without HALF_GEMV_FLOAT_BITS the 4-bit minifloats read theirs as fp16 pairs, and
    gather from registers without HALF_GEMV_TABLES too."""
    w = (rng.standard_normal((32, 512)) * 0.02).astype(np.float32)
    e5m2 = F.quantize(w, "fp8_e5m2").to(kernel_device)
    assert dispatch.half_pair_top(e5m2.plan, "float") < 1 and not dispatch.half_pairs_apply(e5m2.plan, "float")
    x = torch.randn(1, 512).half().to(kernel_device)
    check_matmul(x, F.quantize(w, "fp8_e5m2"), e5m2)
    monkeypatch.setattr(dispatch, "HALF_GEMV_FLOAT_BITS", ())
    qt = F.quantize(w, "fp4_e2m1")
    dev = qt.to(kernel_device)
    launch = dispatch.choose(dev.plan, 1)  # its table as fp16 pairs, on the pair path's tile
    assert launch.kernel == "gemv_words" and launch.decode == "lut" and dispatch.half_pairs_apply(dev.plan, "lut")
    assert (launch.bn, launch.ks // 8, launch.stages) == dispatch.HALF_TILE  # 8 codes a word
    check_matmul(x, qt, dev, launch)
    monkeypatch.setattr(dispatch, "HALF_GEMV_TABLES", False)
    launch = dispatch.choose(dev.plan, 1)  # and gathered from registers, as before H200 run 10
    assert launch.decode == "lut" and not dispatch.half_pairs_apply(dev.plan, "lut")
    assert (launch.bn, launch.ks // 8, launch.stages) == dispatch.OTHER_TILE
    check_matmul(x, qt, dev, launch)


def test_half_pair_path_is_not_taken_where_two_words_span_two_groups(rng, kernel_device):
    """int4 in groups of 8 (one word): the float32 placement, not the fp16 pairs."""
    qt = F.quantize((rng.standard_normal((8, 256)) * 0.02).astype(np.float32), "int4", group_size=8)
    dev = qt.to(kernel_device)
    launch = dispatch.choose(dev.plan, 1)
    assert launch.kernel == "gemv_words" and not dispatch.half_pairs_apply(dev.plan, launch.decode)
    check_matmul(torch.randn(1, 256).half().to(kernel_device), qt, dev)


@pytest.mark.parametrize("group_size", [128, 48])
def test_type_ids_pick_each_group_s_pair_table(group_size, rng, kernel_device):
    """bitmod_fp4's M = 1 GEMV reads its four 16-entry tables as fp16 pairs: member 0's registers for the whole
    program, and the one register the members differ in (entry 8's high byte: +-0.625 or +-1) per row's and
    group's type id, a step holding eight groups of 128 (groups of 48: an id per pair of words). Every legal code
    under every type id, the ids changing from group to group, on one program along K and on split-K, in both
    activation dtypes."""
    w = (rng.standard_normal((24, 1152)) * 0.02).astype(np.float32)
    qt = F.quantize(w, "bitmod_fp4", group_size=group_size)
    legal = F.get_format("bitmod_fp4").legal_codes()
    ids = rng.integers(0, legal.shape[0], (24, qt.layout["type_ids"].entries))
    codes = np.stack([rng.choice(np.flatnonzero(legal[i]), group_size) for i in ids.ravel()]).reshape(24, -1)
    codes[:4] = np.arange(codes.shape[1]) % 16  # rows whose every group runs through all 16 codes
    qt = dataclasses.replace(qt, arrays=dict(qt.arrays, codes=pack_codes(codes, 4),
                                             type_ids=pack_codes(ids, qt.layout["type_ids"].bits)))
    dev = qt.to(kernel_device)
    launch = dispatch.choose(dev.plan, 1)
    assert launch.kernel == "gemv_words" and launch.decode == "lut" and launch.bn == dispatch.HALF_TILE[0]
    assert (launch.ks % group_size == 0) == (group_size == 128)  # whole groups a step, or an id per two words
    registers = dev.tables["registers"].cpu().numpy()
    assert dispatch.half_pairs_apply(dev.plan, "lut") and dispatch.varying_registers(registers) == 1 << 6
    gen = torch.Generator().manual_seed(3)
    for dtype, sms in ((torch.float16, 1), (torch.bfloat16, 64)):
        x = torch.randn(1, 1152, generator=gen).to(dtype).to(kernel_device)
        check_matmul(x, qt, dev, dispatch.choose(dev.plan, 1, sms=sms))


def test_a_user_mixture_of_unlike_tables_reads_every_register_per_type_id(rng, kernel_device):
    """A user's mixture of nf4, fp4_e2m1 and flint4 (three tables with nothing in common) takes the same path with
    all eight registers read per type id, and no kernel code of its own."""
    mix = F.define_mixture("three_tables", ["nf4", "fp4_e2m1", "flint4"], register=False)
    qt = F.quantize((rng.standard_normal((40, 2048)) * 0.02).astype(np.float32), mix)
    dev = qt.to(kernel_device)
    assert dispatch.half_pairs_apply(dev.plan, "lut") and dispatch.choose(dev.plan, 1).kernel == "gemv_words"
    assert dispatch.varying_registers(dev.tables["registers"].cpu().numpy()) == 0xFF
    assert set(np.unique(qt.unpacked().member)) == {0, 1, 2}  # every member chosen somewhere
    check_matmul(torch.randn(1, 2048).half().to(kernel_device), qt, dev)


@pytest.mark.parametrize("name", HALF_PAIR_FORMATS + ["int8_asym", "int2_asym", "mxint8", "fp4_e2m1", "fp4_e1m2",
                                                     "fp4_e3m0", "fp8_e4m3", "fp8_e5m2", "mxfp8_e4m3"])
def test_half_pair_tile_dot_and_the_float32_decode(name, rng, kernel_device):
    """tensor-core tiles of integer and minifloat codes in words take the fp16 pairs (``half_tile``, x's
    columns in the pairs' order), with the weights as the MMA's first operand or its second; all three and
    the float32 decode agree with the float64 reference on
    odd M and N, both activation dtypes, with split-K and without, and with a row that uses every code."""
    w = (rng.standard_normal((45, 1024)) * 0.02).astype(np.float32)
    w[3] = np.linspace(-1.0, 1.0, 1024)  # a row whose groups use every code
    qt = F.quantize(w, name)
    dev = qt.to(kernel_device)
    gen = torch.Generator().manual_seed(9)
    for m, dtype, sms in ((5, torch.float16, 1), (16, torch.bfloat16, 64), (33, torch.float16, 64),
                          (64, torch.bfloat16, 1)):
        launch = dispatch.choose(dev.plan, m, sms=sms)
        assert launch.kernel == "tile_dot" and launch.half_pairs, launch.describe()
        x = torch.randn(m, 1024, generator=gen).to(dtype).to(kernel_device)
        check_matmul(x, qt, dev, launch)
        check_matmul(x, qt, dev, dataclasses.replace(launch, weights_first=not launch.weights_first))
        check_matmul(x, qt, dev, dataclasses.replace(launch, half_pairs=False, weights_first=False))


def test_half_pair_tile_dot_is_not_taken_where_a_step_is_too_short(rng, kernel_device):
    """int4 in groups of 16 (a step of two words: 4 codes of each pair index, below tl.dot's 16) and
    codes of 3 bits (a bit stream) keep the float32 decode; a launch cannot claim pairs for them."""
    w = (rng.standard_normal((24, 256)) * 0.02).astype(np.float32)
    for qt in (F.quantize(w, "int4", group_size=16), F.quantize(w, "int3")):
        dev = qt.to(kernel_device)
        launch = dispatch.choose(dev.plan, 16)
        assert launch.kernel == "tile_dot" and not launch.half_pairs and not launch.weights_first
        check_matmul(torch.randn(16, 256).half().to(kernel_device), qt, dev, launch)
        with pytest.raises(ValueError, match="weights_first is a launch of the fp16-pair tile_dot, trip_int8 or mixed_tile_async"):
            dataclasses.replace(launch, weights_first=True)
    with pytest.raises(ValueError, match="tile_dot of integer or minifloat codes or int_mma_cupy, got tile_dot with decode 'pairs'"):
        dataclasses.replace(dispatch.choose(F.quantize(w, "int4").to(kernel_device).plan, 16), decode="pairs")


SMALL_TABLES = [n for n in ALL_FORMATS if F.quantize(np.ones((1, 128), np.float32), n).to("cpu").plan.table_size <= 16]


@pytest.mark.parametrize("name", SMALL_TABLES)
def test_pair_table_decode_every_path(name, weights, kernel_device):
    """The pair-table decode (16-bit patterns selected in registers) on every path that can take it:
    tensor-core tiles in both activation dtypes, CUDA-core tiles and gemv_words where the float32
    table is exact in binary16."""
    qt = F.quantize(weights, name)
    dev = qt.to(kernel_device)
    gen = torch.Generator().manual_seed(5)
    for m, dtype in ((1, torch.float16), (16, torch.float16), (16, torch.bfloat16)):
        launch = dispatch.choose(dev.plan, m)
        float32_math = launch.kernel in ("tile", "gemv_words")  # needs the float32 table exact in binary16
        if launch.kernel not in ("tile", "tile_dot", "gemv_words") or float32_math and not dev.plan.half_exact:
            continue
        x = torch.randn(m, weights.shape[1], generator=gen).to(dtype).to(kernel_device)
        check_matmul(x, qt, dev, dataclasses.replace(launch, decode="pairs", half_pairs=False,
                                                     weights_first=False))


def test_pair_table_holds_the_rounded_table():
    from hwlab.kernels.device import pair_table, rounded_table

    table = np.array([[0.0, 0.1, -1.5, 3.0, 2.0**-20, 7.75, -0.0, 1.0 / 3.0]], np.float32)
    for dtype in ("float16", "bfloat16"):
        words = pair_table(table, dtype).view(np.uint32)
        halves = np.stack([words & 0xFFFF, words >> 16], -1).reshape(1, -1)[:, :table.shape[1]]
        values = (halves.astype(np.uint16).view(np.float16).astype(np.float32) if dtype == "float16"
                  else (halves << 16).astype(np.uint32).view(np.float32))
        np.testing.assert_array_equal(values, rounded_table(table, dtype))


@pytest.mark.parametrize("name, rows", [("int4", 40), ("int2", 64), ("nf4", 40), ("bitmod_fp4", 40)] + [
    pytest.param(name, rows, marks=pytest.mark.slow)
    for name, rows in (("int4", 64), ("int8_asym", 40), ("fp4_e2m1", 64), ("mxfp4", 40), ("nf4", 64))])
def test_gemv_programs_of_several_steps(name, rows, rng, kernel_device, monkeypatch):
    """gemv_words programs of several steps, a last program shorter than the others and an empty one (past the
    last step) all give the reference, ragged and whole tiles; one program a row block and one split the same way
    twice give the same bits."""
    for tile in ("HALF_TILE", "OTHER_TILE", "MEMBER_TILE"):  # 16 words a step: K = 2048 is several steps a row
        monkeypatch.setattr(dispatch, tile, (32, 16, 1))
    qt = F.quantize((rng.standard_normal((rows, 2048)) * 0.02).astype(np.float32), name)
    dev = qt.to(kernel_device)
    launch = dispatch.choose(dev.plan, 1, sms=1)
    total = math.ceil(dev.plan.padded_cols / launch.ks)  # the steps of a row
    assert launch.kernel == "gemv_words" and total >= 8
    x = torch.randn(1, 2048).half().to(kernel_device)
    whole = check_matmul(x, qt, dev, dataclasses.replace(launch, split=1, steps=total))
    assert torch.equal(check_matmul(x, qt, dev, dataclasses.replace(launch, split=1, steps=total)), whole)
    for split, steps in ((3, math.ceil(total / 3)), (4, math.ceil(total / 3))):  # the fourth program is empty
        check_matmul(x, qt, dev, dataclasses.replace(launch, split=split, steps=steps))


@pytest.mark.parametrize("name", ["int2", "ternary", "int2_asym"])
def test_register_cap_changes_no_output(name, long_weights, kernel_device):
    """2-bit codes run gemv_words under GEMV_MAX_REGISTERS' cap; the outputs are bit for bit those of the uncapped
    launch (on a GPU: the same code, its registers spilled or reordered, never its arithmetic); on split-K (whose
    float32 atomics add in arrival order) both stay within the bound."""
    qt = F.quantize(long_weights, name)
    dev = qt.to(kernel_device)
    x = torch.randn(1, long_weights.shape[1]).half().to(kernel_device)
    for sms in (1, 64):
        launch = dispatch.choose(dev.plan, 1, sms=sms)
        assert launch.registers == dispatch.GEMV_MAX_REGISTERS[2] and "at most 128 registers" in launch.describe()
        capped = check_matmul(x, qt, dev, launch)
        plain = check_matmul(x, qt, dev, dataclasses.replace(launch, registers=0))
        if launch.split == 1:
            torch.testing.assert_close(capped, plain, rtol=0, atol=0)


@pytest.mark.parametrize("registers, match", [
    (8, "registers must be 0 .* from 16 to 255, got 8"), (256, "got 256"), (True, "got True"), (128.0, "got 128.0")])
def test_register_cap_is_checked(registers, match):
    with pytest.raises(ValueError, match=match):
        dispatch.Launch("gemv_words", 32, 1, 512, 1, 1, "int", registers=registers)


def test_register_cap_and_subnormal_flag_values(monkeypatch):
    """A numpy integer is a register count (kept as a Python int); a subnormal flag is a bool; a bad
    GEMV_MAX_REGISTERS entry is named when choose reads it."""
    assert dispatch.Launch("gemv_words", 32, 1, 512, 1, 1, "int", registers=np.int64(128)).registers == 128
    assert type(dispatch.Launch("gemv_words", 32, 1, 512, 1, 1, "int", registers=np.int32(0)).registers) is int
    with pytest.raises(ValueError, match="subnormal must be True or False, got 'yes'"):
        dispatch.Launch("gemv_words", 32, 1, 512, 1, 1, "int", subnormal="yes")
    plan = build_plan(F.quantize(np.ones((40, 512), np.float32), "int2"))
    for bad, match in (({2: 8}, r"GEMV_MAX_REGISTERS\[2\] must be 0 or a whole number from 16 to 255, got 8"),
                       ({2: "x"}, r"GEMV_MAX_REGISTERS\[2\] .* got 'x'"), (None, "must be a dict .* got None")):
        monkeypatch.setattr(dispatch, "GEMV_MAX_REGISTERS", bad)
        with pytest.raises(ValueError, match=match):
            dispatch.choose(plan, 1)
    tile = build_plan(F.quantize(np.ones((40, 512), np.float32), "int5"))
    for bad, match in (({5: 300}, r"TILE_MAX_REGISTERS\[5\] must be 0 or a whole number from 16 to 255, got 300"),
                       ([168], r"dispatch.TILE_MAX_REGISTERS must be a dict .* got \[168\]")):
        monkeypatch.setattr(dispatch, "TILE_MAX_REGISTERS", bad)
        with pytest.raises(ValueError, match=match):
            dispatch.choose(tile, 1)


@pytest.mark.parametrize("name", ["int5", "int3"])
def test_one_row_tile_under_a_register_cap(name, weights, kernel_device, monkeypatch):
    """TILE_MAX_REGISTERS caps the one-row tile by code width (none shipped); the outputs are bit for bit the
    uncapped launch's, and the other widths and the batch tiles keep the compiler's choice."""
    qt = F.quantize(weights, name)
    dev = qt.to(kernel_device)
    assert dispatch.choose(dev.plan, 1).registers == 0
    monkeypatch.setattr(dispatch, "TILE_MAX_REGISTERS", {qt.format.bits: 168, 7: 96})
    launch = dispatch.choose(dev.plan, 1, sms=1)
    assert launch.kernel == "tile" and launch.registers == 168 and "at most 168 registers" in launch.describe()
    assert dispatch.choose(dev.plan, 16).registers == 0
    x = torch.randn(1, weights.shape[1]).half().to(kernel_device)
    torch.testing.assert_close(check_matmul(x, qt, dev, launch),
                               check_matmul(x, qt, dev, dataclasses.replace(launch, registers=0)), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["int8", "int4", "fp4_e2m1", "fp4_e1m2", "fp4_e3m0", "mxfp4", "nvfp4"])
def test_outputs_on_the_fp16_subnormal_grid(name, rng, kernel_device):
    """Activations of fp16's smallest subnormal give outputs near 1e-8, on fp16's subnormal grid: within the bound
    (matmul_tolerance's OUTPUT_FLOOR); so do rows of random tiny activations. The 4-bit minifloats' binary16
    placements lie below 2**-8, so such rows are scaled twice (up to 2**30, ``half_pairs.wide_activations``): in one
    fp16 multiply, fp4_e1m2's products were subnormal and an output was off by 1.3 times the bound."""
    qt = F.quantize((rng.standard_normal((48, 1024)) * 0.02).astype(np.float32), name)
    dev = qt.to(kernel_device)
    check_matmul(torch.full((1, 1024), 2.0**-24).half().to(kernel_device), qt, dev)
    for exponent in (-16, -20, -22, -23):
        x = torch.from_numpy(rng.standard_normal((1, 1024)) * 2.0**exponent).half()
        check_matmul(x.to(kernel_device), qt, dev)


@pytest.mark.parametrize("name", ["fp4_e1m2", "nvfp4"])
def test_the_two_step_scale_changes_no_row_of_ordinary_activations(name, rng, kernel_device, monkeypatch):
    """For a row whose largest |x| is at least 0.5 (HALF_TOP 15: one multiply of at most 2**15 reaches the top of the
    range), the two-step scale's second factor is 1: the outputs are bit for bit those of one multiply
    (``dispatch.WIDE_ACTIVATIONS`` off)."""
    qt = F.quantize((rng.standard_normal((48, 1024)) * 0.02).astype(np.float32), name)
    row = rng.standard_normal(1024)
    rows = [torch.from_numpy(r[None, :]).half().to(kernel_device) for r in (row, row * 0.5 / np.abs(row).max())]
    two_steps = [check_matmul(x, qt, qt.to(kernel_device)) for x in rows]
    monkeypatch.setattr(dispatch, "WIDE_ACTIVATIONS", False)
    for x, got in zip(rows, two_steps):
        assert torch.equal(check_matmul(x, qt, qt.to(kernel_device)), got)


def test_activations_scaled_twice_for_the_small_values_of_the_minifloat_pairs():
    """The two-step scale of fp16 activations (``HALF_WIDE_X``) is taken where the pair decode's largest value is
    below 2**-5: by the 4-bit minifloats (placements of at most 2**-8), not by integer codes, fp8 or NF4's table."""
    from hwlab.kernels.half_pairs import WIDE_BELOW, wide_activations

    assert WIDE_BELOW == 2.0**-5 and wide_activations(2.0**-5 * 0.99) and not wide_activations(2.0**-5)
    wide = {}
    for name in ("int4", "int2", "int8", "nf4", "fp8_e4m3", "fp4_e2m1", "fp4_e1m2", "fp4_e3m0", "mxfp4", "nvfp4"):
        plan = build_plan(F.quantize(np.ones((40, 512), np.float32), name))
        wide[name] = dispatch._half_flags(plan, dispatch.choose(plan, 1))["HALF_WIDE_X"]
    assert [name for name, flag in wide.items() if flag] == ["fp4_e2m1", "fp4_e1m2", "fp4_e3m0", "mxfp4", "nvfp4"]


def test_worst_error_of_no_rows(weights):
    qt = F.quantize(weights, "int2")
    assert worst_error(torch.empty(0, 40), torch.empty(0, 512).half(), qt) == 0.0


def test_register_cap_is_a_launch_of_the_triton_kernels():
    with pytest.raises(ValueError, match="register cap is a launch of gemv_words, tile, tile_dot, got gemv_mixed"):
        dispatch.Launch("gemv_mixed", 128, 1, 128, 1, 1, "int", registers=128)
    assert dispatch.choose(build_plan(F.quantize(np.ones((40, 512), np.float32), "int4")), 1).registers == 0


def test_split_k_workspace_stays_zero(weights, kernel_device):
    """Split-K's float32 workspace and arrival counts are left zeroed: the next call finds them so."""
    qt = F.quantize(weights, "int4")
    dev = qt.to(kernel_device)
    x = torch.randn(3, weights.shape[1]).half().to(kernel_device)
    launch = dispatch.choose(dev.plan, 3, sms=64)
    assert launch.split > 1
    first = check_matmul(x, qt, dev, launch)
    assert torch.equal(check_matmul(x, qt, dev, launch), first)
    for work, count in dispatch._WORKSPACES.values():
        assert not work.any() and not count.any()


def test_prepared_launch_is_kept_and_checks_stay(weights, kernel_device):
    """The first call prepares the launch (kept on the tensor); later calls reuse it and still refuse
    a strided x of the same shape or a wrong ``out``."""
    qt = F.quantize(weights, "nf4")
    dev = qt.to(kernel_device)
    x = torch.randn(40, 512).half().to(kernel_device)
    check_matmul(x, qt, dev)
    prepared = dev.prepared[(x.shape, x.dtype, x.device)]
    assert len(prepared.flat) == len(prepared.fn.arg_names)  # every parameter, in order, for Triton's launcher
    check_matmul(x, qt, dev)
    assert dev.prepared[(x.shape, x.dtype, x.device)] is prepared
    with pytest.raises(ValueError, match="contiguous"):
        kernels.matmul(torch.randn(512, 40).half().to(kernel_device).T, dev)
    with pytest.raises(ValueError, match="out must be"):
        kernels.matmul(x, dev, out=torch.empty(40, 41, dtype=torch.float16, device=kernel_device))


def exhaustive_tensor(name):
    """A tensor whose codes run through every legal code of every member (type ids set per row)."""
    fmt = F.get_format(name)
    legal = fmt.legal_codes()
    rows_per_member = 2
    qt = F.quantize(np.linspace(-1, 1, legal.shape[0] * rows_per_member * 512, dtype=np.float32).reshape(-1, 512), name)
    codes = np.zeros((qt.shape[0], qt.padded_cols), np.int64)
    for row in range(qt.shape[0]):
        choices = np.flatnonzero(legal[row // rows_per_member])
        codes[row] = np.resize(np.roll(choices, row), qt.padded_cols)
    arrays = dict(qt.arrays, codes=pack_codes(codes, fmt.bits))
    if "type_ids" in arrays:
        ids = np.repeat(np.arange(legal.shape[0]), rows_per_member)[:, None]
        ids = ids * np.ones((1, qt.layout["type_ids"].entries), np.int64)
        arrays["type_ids"] = pack_codes(ids, qt.layout["type_ids"].bits)
    return dataclasses.replace(qt, arrays=arrays)


EXHAUSTIVE = [n for n in ALL_FORMATS if F.get_format(n).bits <= 8 and n not in ("olive4", "mixed_2_4", "nvfp4")
              and "codes" in F.quantize(np.ones((1, 128), np.float32), n).layout
              and F.quantize(np.ones((1, 128), np.float32), n).layout["codes"].packing == "bits"]


@pytest.mark.parametrize("name", EXHAUSTIVE)
def test_every_code_of_every_member(name, kernel_device):
    qt = exhaustive_tensor(name)
    dev = qt.to(kernel_device)
    np.testing.assert_array_equal(kernels.dequantize(dev).cpu().numpy(), qt.dequantize())
    check_matmul(torch.randn(1, qt.shape[1]).half().to(kernel_device), qt, dev)
    check_matmul(torch.randn(16, qt.shape[1]).bfloat16().to(kernel_device), qt, dev)


def test_olive_every_pair(kernel_device):
    qt = F.quantize(np.ones((2, 512), np.float32), "olive4")
    pairs = [(a, b) for a in range(16) for b in range(16) if (a, b) != (8, 8)]
    codes = np.array([c for pair in pairs for c in pair] + [0, 0], np.int64)
    codes = np.stack([codes, np.roll(codes, 2)])
    qt = dataclasses.replace(qt, arrays=dict(qt.arrays, codes=pack_codes(codes, 4)))
    dev = qt.to(kernel_device)
    np.testing.assert_array_equal(kernels.dequantize(dev).cpu().numpy(), qt.dequantize())
    for m in (1, 16):
        check_matmul(torch.randn(m, 512).half().to(kernel_device), qt, dev)


def test_user_defined_formats_need_no_kernel_code(isolated_registry, rng, kernel_device):
    lut = F.define_lut("my_lut4", [-3.5, -2, -1.25, -0.5, -0.125, 0, 0.25, 0.75, 1, 1.5, 2.25, 3, 4, 5, 6, 8])
    mini = F.define_minifloat("my_e3m2", 3, 2, bias=2)
    w = (rng.standard_normal((16, 256)) * 0.02).astype(np.float32)
    for fmt in (lut, mini):
        qt = F.quantize(w, fmt)
        dev = qt.to(kernel_device)
        assert dev.plan.decode == ("lut" if fmt is lut else "float")
        np.testing.assert_array_equal(kernels.dequantize(dev).cpu().numpy(), qt.dequantize())
        for m in (1, 4):
            check_matmul(torch.randn(m, 256).half().to(kernel_device), qt, dev)


def test_device_tensor_holds_the_stored_bits(weights, kernel_device):
    qt = F.quantize(weights, "bitmod_fp4")
    dev = qt.to(kernel_device)
    for name, a in qt.arrays.items():
        np.testing.assert_array_equal(dev.arrays[name].cpu().numpy().view(a.dtype), a)
    assert dev.to(kernel_device) is dev
    assert dev.nbytes == qt.nbytes and dev.shape == qt.shape and "bitmod_fp4" in repr(dev)


def test_bad_inputs_are_refused(weights, kernel_device):
    qt = F.quantize(weights, "int4")
    dev = qt.to(kernel_device)
    x = torch.randn(2, 512).half().to(kernel_device)
    with pytest.raises(TypeError, match=r"qt.to\('cuda'\)"):
        kernels.matmul(x, qt)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        kernels.matmul(x.float(), dev)
    with pytest.raises(ValueError, match="K=512"):
        kernels.matmul(x[:, :256].contiguous(), dev)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.matmul(torch.randn(512, 2).half().to(kernel_device).T, dev)
    with pytest.raises(ValueError, match="out must be"):
        kernels.matmul(x, dev, out=torch.empty(2, 41, dtype=torch.float16, device=kernel_device))
    with pytest.raises(TypeError, match="torch.Tensor"):
        kernels.matmul(np.zeros((2, 512)), dev)
    with pytest.raises(TypeError, match="DeviceTensor"):
        kernels.QuantLinear(qt)
    assert kernels.matmul(torch.empty(0, 512).half().to(kernel_device), dev).shape == (0, 40)


def test_outputs_saturate(kernel_device):
    qt = F.quantize(np.full((4, 256), 60000.0, np.float32), "int8")
    y = kernels.matmul(torch.full((1, 256), 60000.0).half().to(kernel_device), qt.to(kernel_device))
    assert torch.isfinite(y).all() and float(y.max()) == 65504.0


@pytest.mark.parametrize("name", ["int4", "nf4", "mixed_2_4", "int3"])
@pytest.mark.parametrize("m, split", [(1, False), (1, True), (3, False), (20, True)])
def test_a_nan_in_x_reaches_its_row_and_only_its_row(name, m, split, long_weights, kernel_device):
    """Saturation keeps NaN, as torch's linear does: every kernel, with and without split-K."""
    weights = long_weights
    qt = F.quantize(weights, name)
    dev = qt.to(kernel_device)
    x = torch.randn(m, weights.shape[1]).half()
    x[0, 7] = float("nan")
    x = x.to(kernel_device)
    out = poisoned((m, qt.shape[0]), x.dtype, dev.device)
    launch = dispatch.choose(dev.plan, m, sms=64)
    assert launch.split > 1
    if not split:
        launch = dataclasses.replace(launch, split=1, steps=launch.split * launch.steps)
    dispatch.run(x, dev, out, launch)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1:]).all()


def test_quant_linear_is_the_dequantized_linear(rng, kernel_device):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.GELU(), torch.nn.Linear(128, 64, bias=False))
    reference = [F.quantize(m.weight.detach().numpy(), "nf4") for m in (model[0], model[2])]
    replaced = kernels.quantize_linears(model, "nf4")
    assert replaced == ["0", "2"] and isinstance(model[0], kernels.QuantLinear)
    model = model.to(kernel_device).half()  # the cast leaves the stored arrays as they are
    assert model[0].weight_quantized.arrays["scales"].dtype == torch.float16
    assert model[0].stored_codes.dtype == torch.int32
    x = torch.randn(3, 256).half().to(kernel_device)
    got = model(x).double().cpu().numpy()
    h = reference_matmul(x, reference[0]) + model[0].bias.double().cpu().numpy()
    h = torch.nn.functional.gelu(torch.from_numpy(h).half().double()).numpy()
    want = reference_matmul(torch.from_numpy(h).half(), reference[1])
    np.testing.assert_allclose(got, want, rtol=0.02, atol=2e-3 * np.abs(want).max())
    assert "format='nf4'" in repr(model[0]) and "0.stored_codes" in model.state_dict()


def test_quantize_linears_skips_by_name():
    model = torch.nn.ModuleDict({"body": torch.nn.Linear(128, 32), "lm_head": torch.nn.Linear(32, 16)})
    assert kernels.quantize_linears(model, "int4", skip="lm_head") == ["body"]
    assert isinstance(model["lm_head"], torch.nn.Linear)


def test_tile_rows_follow_what_was_timed(rng):
    """M = 16: the fp16 pair tile_dot takes its tile (rows, warps, stages, weights first) from HALF_DOT_TILE, int8 from
    its own entry; bit streams and tables keep DOT_BN's 128 rows; M = 1: the fp16 pair tile for int4."""
    w = (rng.standard_normal((256, 1024)) * 0.02).astype(np.float32)
    tiles = {name: (launch.bn, launch.warps, launch.stages, launch.weights_first, launch.half_pairs)
             for name in ("int4", "int8", "ternary", "int4_asym", "int3", "nf4")
             for launch in [dispatch.choose(F.quantize(w, name).to("cpu").plan, 16)]}
    half, eight = dispatch.HALF_DOT_TILE[16], dispatch.HALF_DOT_TILES[(16, 8, False)]
    assert tiles == {"int4": (*half, True), "int8": (*eight, True), "ternary": (*half, True),
                     "int4_asym": (*half, True), "int3": (128, 4, 3, False, False), "nf4": (128, 4, 3, False, False)}
    launch = dispatch.choose(F.quantize(w, "int4").to("cpu").plan, 1)
    assert (launch.bn, launch.ks, launch.stages) == (32, 1024, 1)
