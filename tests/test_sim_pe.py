"""The functional PE engine: numba equals the numpy golden model bit for bit; the output is within the
stated error bound of float64 ``x @ W_hat.T``; cycles counted from the terms processed."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import hwlab
from hwlab.sample import sample_weights
from hwlab.sim import PEError, PEWeights, get_preset, prepare_pe, run_pe
from hwlab.sim import pe

FORMATS = ["int2", "int3", "int4", "int6", "int8", "fp4_e2m1", "fp3_e2m0", "fp4_e3m0", "fp6_e2m3", "fp8_e4m3",
           "fp8_e5m2", "flint4", "bitmod_fp3", "bitmod_fp4", "fp4_ea_pos", "fp4_er_neg", "shift3", "ternary", "olive4",
           "mxfp4", "mxint8", "nvfp4"]
SCALES = ["fp16", "bf16", "fp32", "e8m0", "e4m3", "int8"]


def activations(rng, m, k, kind):
    """FP16 activations with wide exponent ranges, zeros and subnormals."""
    x = rng.standard_normal((m, k)) * np.exp2(rng.integers(-20, 12, (m, k)) if kind == "wide" else 0)
    if kind != "plain":
        x[rng.random((m, k)) < 0.15] = 0.0
        tiny = rng.random((m, k)) < 0.1  # FP16 subnormals and the smallest normals
        x[tiny] = rng.choice([6e-8, -6e-8, 3e-6, -1e-5, 6e-5], int(tiny.sum()))
    return np.clip(x, -60000, 60000).astype(np.float16)


def same_bits(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_numba_engine_equals_the_golden_model(data):
    fmt = data.draw(st.sampled_from(FORMATS))
    f = hwlab.get_format(fmt)
    fixed = f.default_group_size if fmt in ("mxfp4", "mxint8", "nvfp4") else None
    group = fixed or data.draw(st.sampled_from([4, 8, 13, 16, 32, 64]))
    options = {}
    if fixed is None and fmt not in ("olive4",):
        options["scale_dtype"] = data.draw(st.sampled_from(SCALES))
        options["granularity"] = data.draw(st.sampled_from(["group", "group", "channel", "tensor"]))
    if fmt == "olive4" and group % 2:
        group += 1
    m = data.draw(st.integers(1, 3))
    n = data.draw(st.integers(1, 9))
    k = data.draw(st.integers(1, 4)) * group - data.draw(st.integers(0, group - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    w = rng.standard_normal((n, k)) * np.exp2(rng.integers(-12, 2))
    w[rng.random((n, k)) < 0.1] = 0
    try:
        qt = hwlab.quantize(w.astype(np.float32), fmt, group, pad=True, **options)
    except ValueError:  # an option this format refuses, or a scale the dtype cannot hold: not a case, so
        reject()        # the 1000 examples are 1000 compared cases (a plain return would count as one)
    x = activations(rng, m, k, data.draw(st.sampled_from(["plain", "wide", "sparse"])))
    ops = pe.operands(x, qt)
    golden = pe.golden(ops)
    assert same_bits(pe.engine(ops), golden)
    weights = prepare_pe(qt)  # the prepared path: cached term streams (run_pe's, without its report)
    assert same_bits(pe.engine((weights, weights.activations(x))), golden)


@pytest.mark.parametrize("fmt", FORMATS)
def test_engine_equals_golden_on_real_weights(fmt, rng):
    w = sample_weights()["encoder.layer.0.attention.self.query.weight"][:48]
    qt = hwlab.quantize(w, fmt, hwlab.get_format(fmt).default_group_size if fmt.startswith(("mx", "nv")) else 64)
    x = activations(rng, 2, 384, "wide")
    ops = pe.operands(x, qt)
    out = pe.engine(ops)
    assert same_bits(out, pe.golden(ops))
    result = run_pe(x, qt)
    assert same_bits(result.output, out)
    assert (np.abs(result.output - result.reference) <= result.bound).all()


@pytest.mark.parametrize("fmt", ["int4", "bitmod_fp4", "int8", "fp8_e4m3", "ternary", "olive4"])
def test_output_within_the_derived_bound_of_the_float64_result(fmt, rng):
    w = rng.standard_normal((40, 512)).astype(np.float32) * 0.02
    qt = hwlab.quantize(w, fmt, 128)
    x = activations(rng, 3, 512, "wide")
    r = run_pe(x, qt)
    assert (np.abs(r.output - r.reference) <= r.bound).all()
    assert r.rel_error < 0.01  # the 15-bit accumulator keeps about 3 decimal digits


def test_exact_where_nothing_is_truncated():
    """Powers of two, one per group: no alignment or accumulator truncation, the result is exact."""
    w = np.zeros((4, 128), np.float32)
    w[:, ::32] = [1.0, -2.0, 4.0, 0.5]
    qt = hwlab.quantize(w, "fp4_e2m1", 32)
    x = np.full((1, 128), 1.5, np.float16)
    r = run_pe(x, qt)
    assert np.array_equal(r.output.astype(np.float64), r.reference)


# ---- cycles ----------------------------------------------------------------------------------

def one_pe():
    return get_preset("bitmod").replace(rows_decode=1, cols_decode=1)


@pytest.mark.parametrize("fmt, per_tile", [("int4", 2), ("fp4_e2m1", 2), ("bitmod_fp4", 2), ("int3", 2),
                                           ("bitmod_fp3", 2), ("int6", 3), ("int8", 4), ("ternary", 1)])
def test_fixed_rule_cycles_of_one_group_on_one_pe(fmt, per_tile, rng):
    qt = hwlab.quantize(rng.standard_normal((1, 128)).astype(np.float32), fmt, 128)
    r = run_pe(np.ones((1, 128), np.float16), qt, one_pe())
    assert r.report.compute_cycles == 32 * per_tile  # int4 / fp4: a W4 group of 128 in 64 cycles


def test_term_skipping_never_takes_longer_and_skips_zeros(rng):
    w = rng.standard_normal((64, 512)).astype(np.float32)
    w[:, 256:] = 0  # half the weights have no terms at all
    qt = hwlab.quantize(w, "int8", 128)
    x = np.ones((1, 512), np.float16)
    fixed = run_pe(x, qt, one_pe()).report.compute_cycles
    skipping = run_pe(x, qt, one_pe(), term_skipping=True).report.compute_cycles
    assert skipping < fixed and skipping >= 64 * 128  # each of 64 rows x 128 steps takes at least a cycle
    assert same_bits(run_pe(x, qt, term_skipping=True).output, run_pe(x, qt).output)  # cycles only


def test_report_of_a_functional_run(rng):
    qt = hwlab.quantize(rng.standard_normal((128, 256)).astype(np.float32), "bitmod_fp4", 128)
    r = run_pe(np.ones((1, 256), np.float16), qt)
    assert r.report.macs == 128 * 256 and r.report.total_cycles >= r.report.compute_cycles
    assert r.report.compute_cycles == (256 // 4) * 2 * 2  # 64 steps x 2 cycles x 2 blocks of 64 rows


def test_invariants_of_functional_runs(rng):
    """MACs = M*N*K, cycles non-decreasing in K, stalls >= 0, the energy components sum to the total."""
    cycles = []
    for k in (16, 64, 100, 128, 512):
        qt = hwlab.quantize(rng.standard_normal((70, k)).astype(np.float32), "bitmod_fp4", 16, pad=True)
        report = run_pe(activations(rng, 3, k, "sparse"), qt).report
        assert report.macs == 3 * 70 * k and report.stall_cycles >= 0
        assert report.energy_pj == pytest.approx(sum(report.energy_components.values()), rel=1e-12)
        cycles.append(report.total_cycles)
    assert cycles == sorted(cycles)


# ---- refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, match", [
    ("nf4", r"nf4 has no exact sign/magnitude/exponent decomposition .* a lookup-table PE would"),
    ("int4_asym", r"int4_asym is affine \(zero points\): the BitMoD PE has no activation-sum path"),
    ("mixed_2_4", r"mixed_2_4 is affine"),
])
def test_formats_the_pe_cannot_run_are_refused(fmt, match, rng):
    qt = hwlab.quantize(rng.standard_normal((4, 128)).astype(np.float32), fmt, 64)
    with pytest.raises(PEError, match=match):
        run_pe(np.ones((1, 128), np.float16), qt)


@pytest.mark.parametrize("x, match", [
    (np.ones((1, 64), np.float16), r"activations must be \[M, K=128\], got shape \(1, 64\)"),
    (np.full((1, 128), np.inf, np.float32), r"activations must be finite"),
    (np.full((1, 128), 1e6, np.float32), r"within the FP16 range"),
    (np.ones((1, 128), np.int32), r"activations must be floating point"),
])
def test_bad_activations(x, match, rng):
    qt = hwlab.quantize(rng.standard_normal((4, 128)).astype(np.float32), "int4", 64)
    with pytest.raises(PEError, match=match):
        run_pe(x, qt)


def test_booth_terms():
    for width in (2, 3, 4, 6, 8):
        for v in range(-(2 ** (width - 1)), 2 ** (width - 1)):
            terms = pe.booth_terms(v, width)
            assert sum((-1) ** s * 2**sh for s, sh in terms) == v and len(terms) <= -(-width // 2)


# ---- prepared weights ---------------------------------------------------------------------------

def packed_reference(ops) -> np.ndarray:
    """The term streams in plain numpy: ``table[c, member << bits | code]``, K-major."""
    return pe.stream_table(ops.terms)[:, ops.entries()]


@pytest.mark.parametrize("fmt, n, k, group, options", [
    ("bitmod_fp4", 130, 200, 8, {}), ("bitmod_fp3", 64, 128, 128, {}), ("int8", 70, 96, 32, {"granularity": "tensor"}),
    ("olive4", 65, 130, 10, {}), ("int4", 3, 1000, 100, {"granularity": "channel"}), ("nvfp4", 129, 64, 16, {}),
])
def test_the_packer_writes_every_term_of_every_weight(fmt, n, k, group, options, rng):
    qt = hwlab.quantize(rng.standard_normal((n, k)).astype(np.float32), fmt, group, **options)
    ops = pe.operands(np.ones((1, k), np.float16), qt)
    packed = pe.pack_terms(ops)
    assert packed.dtype == np.int8 and np.array_equal(packed, packed_reference(ops))
    assert np.array_equal(prepare_pe(qt, cache=False).streams.packed, packed)


@pytest.mark.parametrize("fmt", ["bitmod_fp4", "int8", "olive4", "mxfp4", "ternary"])
def test_prepared_and_unprepared_calls_are_identical(fmt, rng):
    qt = hwlab.quantize(rng.standard_normal((70, 256)).astype(np.float32), fmt,
                        hwlab.get_format(fmt).default_group_size if fmt == "mxfp4" else 64)
    weights = prepare_pe(qt, cache=False)
    for m in (1, 3):
        x = activations(rng, m, 256, "wide")
        ops = pe.operands(x, qt)
        golden = pe.golden(ops)
        for skipping in (False, True):
            plain, prepared = run_pe(x, qt, term_skipping=skipping), run_pe(x, weights, term_skipping=skipping)
            assert same_bits(plain.output, golden) and same_bits(prepared.output, golden)
            assert plain.report.to_json() == prepared.report.to_json()
            assert np.array_equal(plain.reference, prepared.reference) and np.array_equal(plain.bound,
                                                                                          prepared.bound)
            assert np.array_equal(prepared.reference, ops.x_values @ qt.dequantize().astype(np.float64).T)
            assert np.array_equal(prepared.bound, pe.error_bound(ops, qt.dequantize()))
        for rows in (64, 5, 1):  # the cycles from the streams equal those from the codes
            assert pe.tile_step_cycles(weights, rows, True) == pe.tile_step_cycles(ops, rows, True)
            assert pe.tile_step_cycles(weights, rows, False) == pe.tile_step_cycles(ops, rows, False)


def test_prepared_weights_refuse_activations_of_another_shape(rng):
    weights = prepare_pe(hwlab.quantize(rng.standard_normal((4, 128)).astype(np.float32), "int4", 64))
    with pytest.raises(PEError, match=r"activations must be \[M, K=128\], got shape \(1, 64\) \(the weights were "
                                      r"prepared from PEWeights\('int4', shape=\(4, 128\), config='bitmod'\)\)"):
        run_pe(np.ones((1, 64), np.float16), weights)
    with pytest.raises(PEError, match=r"got shape \(128,\)"):
        run_pe(np.ones(128, np.float16), weights)


def test_prepared_weights_refuse_another_configuration(rng):
    qt = hwlab.quantize(rng.standard_normal((4, 128)).astype(np.float32), "int4", 64)
    x = np.ones((1, 128), np.float16)
    weights = prepare_pe(qt)  # for the default, "bitmod"
    assert run_pe(x, weights, "bitmod").report.to_json() == run_pe(x, weights).report.to_json()
    with pytest.raises(PEError, match=r"PEWeights\('int4', shape=\(4, 128\), config='bitmod'\) was prepared for "
                                      r"the configuration 'bitmod', but run_pe was given 'ant': pass "
                                      r"prepare_pe\(weights, config\)"):
        run_pe(x, weights, "ant")
    with pytest.raises(PEError, match=r"given 'bitmod' \(same name, other values\)"):
        run_pe(x, weights, one_pe())
    ant = prepare_pe(weights, "ant")  # the same streams, another configuration
    assert ant.streams is weights.streams and ant.config == get_preset("ant")
    assert run_pe(x, ant).report.to_json() == run_pe(x, qt, "ant").report.to_json()
    with pytest.raises(PEError, match=r"prepare_pe takes a QuantizedTensor \(hwlab.quantize\), got ndarray"):
        prepare_pe(np.ones((4, 128)))


def test_the_cache_is_the_tensors_own_and_never_stale(rng):
    import gc

    x = activations(rng, 1, 256, "wide")
    w = rng.standard_normal((40, 256)).astype(np.float32)
    qt = hwlab.quantize(w, "bitmod_fp4", 128)
    first = run_pe(x, qt).output
    streams = pe._STREAMS[qt]  # run_pe prepared it through the cache
    assert prepare_pe(qt).streams is streams and prepare_pe(qt, "ant").streams is streams
    assert prepare_pe(qt, cache=False).streams is not streams
    assert same_bits(run_pe(x, qt).output, first) and same_bits(first, pe.golden(pe.operands(x, qt)))
    with pytest.raises(ValueError, match="read-only"):
        streams.packed[0, 0, 0] = 1  # shared by every call: nobody writes into them
    gc.collect()  # entries of earlier tests' dead tensors go first, so that only this one's is counted
    before = len(pe._STREAMS)
    del qt, streams
    gc.collect()
    assert len(pe._STREAMS) == before - 1  # the entry goes with its tensor (the streams do not hold it)
    for scale in (2.0, -0.5):  # new tensors of the same shape, one of which may reuse the dead one's id()
        other = hwlab.quantize(w * scale, "bitmod_fp4", 128)
        assert same_bits(run_pe(x, other).output, pe.golden(pe.operands(x, other)))


def test_a_prepared_result_computes_its_reference_when_read(rng):
    qt = hwlab.quantize(rng.standard_normal((8, 128)).astype(np.float32), "int4", 64)
    r = run_pe(np.ones((1, 128), np.float16), prepare_pe(qt, cache=False))
    assert "reference" not in r.__dict__ and "w_hat" not in r.weights.streams.derived
    assert r.rel_error < 0.01 and "reference" in r.__dict__  # kept once read
    assert r.weights.w_hat() is r.weights.streams.derived["w_hat"]
    assert isinstance(r.weights, PEWeights) and r.weights.tensor is qt


def test_the_cuda_engine_equals_the_cpu_engine_in_numbas_simulator():
    """The numba.cuda kernel, run by numba's CUDA simulator (no GPU needed), on small layers."""
    import subprocess
    import sys

    code = '''
import numpy as np, hwlab
from hwlab.sim import pe, pe_cuda, prepare_pe, run_pe
from hwlab.sim.pe_cuda import engine_cuda
rng = np.random.default_rng(5)
for name, group, options in (("bitmod_fp4", 13, {}), ("int8", 8, {"granularity": "tensor"}), ("olive4", 8, {}),
                             ("nvfp4", 16, {}), ("fp8_e5m2", 16, {"scale_dtype": "e8m0"})):
    w = (rng.standard_normal((9, 40)) * 0.02).astype(np.float32)
    x = (rng.standard_normal((2, 40))).astype(np.float16)
    x[0, 3] = 0
    qt = hwlab.quantize(w, name, group, pad=True, **options)
    cpu, gpu = run_pe(x, qt).output, run_pe(x, qt, device="cuda").output
    assert np.array_equal(cpu.view(np.uint32), gpu.view(np.uint32)), name
    assert np.array_equal(gpu.view(np.uint32), engine_cuda(pe.operands(x, qt)).view(np.uint32)), name  # unprepared
# prepared weights: one token, the device copies made once and reused, tokens in chunks of the partials
w = (rng.standard_normal((70, 64)) * 0.02).astype(np.float32)
weights = prepare_pe(hwlab.quantize(w, "bitmod_fp3", 16), cache=False)
for m in (1, 3):
    x = rng.standard_normal((m, 64)).astype(np.float16)
    cpu = run_pe(x, weights).output
    for limit in (1 << 26, 70 * 4):  # 70 * 4: one token per launch pair
        pe_cuda.PARTIAL_LIMIT = limit
        assert np.array_equal(cpu.view(np.uint32), run_pe(x, weights, device="cuda").output.view(np.uint32)), m
kept = weights.streams.derived["cuda"]
assert len(kept) == 1 and pe_cuda.device_streams(weights) is next(iter(kept.values()))
print("ok")
'''
    env = {**__import__("os").environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
