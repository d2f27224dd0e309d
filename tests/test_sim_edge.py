"""The edge SIMD core: kernels bit-exact against the plain integer reference, counts, overflow, TRIP, timing."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwlab.sim import ConfigError, Workload
from hwlab.sim.edge import PRESETS, EdgeCore, get_edge_preset, load_edge_config
from hwlab.sim.edge_engine import compute_cycles, kernel_for, paper_table, simulate_edge
from hwlab.sim.simd import EdgeError, default_flush, fp16_reference, instruction_counts, run_kernel
from hwlab.sim.trip import TripError, integer_matmul, outlier_factors, trip_quantize

INTEGER_KERNELS = {"w4a4": (4, 4), "w4a8": (4, 8), "w8a8": (8, 8)}  # kernel -> (weight bits, activation bits)


def random_codes(rng, shape, bits, extreme=False):
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if extreme:  # the largest products: every lane at its limit
        return rng.choice([low, high], size=shape)
    return rng.integers(low, high + 1, size=shape)


@settings(max_examples=1000, deadline=None)
@given(kernel=st.sampled_from(sorted(INTEGER_KERNELS)), core=st.sampled_from(sorted(PRESETS)),
       m=st.integers(1, 4), n=st.integers(1, 40), k=st.integers(1, 300), seed=st.integers(0, 2**32 - 1),
       extreme=st.booleans())
def test_integer_kernels_are_bit_exact(kernel, core, m, n, k, seed, extreme):
    rng = np.random.default_rng(seed)
    wbits, abits = INTEGER_KERNELS[kernel]
    x = random_codes(rng, (m, k), abits, extreme)
    if abits == 8:
        x = np.maximum(x, -127)  # TRIP's 8-bit activations are symmetric
    w = random_codes(rng, (n, k), wbits, extreme)
    run = run_kernel(kernel, get_edge_preset(core), x, w)
    assert np.array_equal(run.result, integer_matmul(x, w))
    assert run.overflows == 0
    expected = {op: v for op, v in instruction_counts(kernel, get_edge_preset(core), m, n, k).items() if v}
    assert run.instructions == expected


@pytest.mark.parametrize("core", sorted(PRESETS))
def test_fp16_kernel_is_its_arithmetic(core, rng):
    c = get_edge_preset(core)
    for m, n, k in ((1, 8, 64), (3, 13, 31)):
        x, w = rng.standard_normal((m, k)), rng.standard_normal((n, k))
        run = run_kernel("fp16", c, x, w)
        np.testing.assert_array_equal(run.result, fp16_reference(x, w, c.has("fmla_h")))
        assert run.instructions == {op: v for op, v in instruction_counts("fp16", c, m, n, k).items() if v}


@pytest.mark.parametrize("kernel,core", [("w4a4", "a72"), ("w4a4", "a77"), ("w4a8", "a72"), ("w8a8", "a72")])
def test_overflow_is_detected_and_the_default_never_overflows(kernel, core, rng):
    c = get_edge_preset(core)
    wbits, abits = INTEGER_KERNELS[kernel]
    k = 4096
    x = np.full((1, k), 7 if kernel == "w4a4" else 127)
    w = np.full((16, k), 2 ** (wbits - 1) - 1 if kernel != "w4a4" else 7)
    if kernel == "w4a4":
        x[:], w[:] = 7, 7  # (7+8) * (7+8) = 225: the largest product of the packed lanes
    safe = run_kernel(kernel, c, x, w)
    assert safe.overflows == 0 and np.array_equal(safe.result, integer_matmul(x, w))
    over = run_kernel(kernel, c, x, w, flush=8 * default_flush(kernel, c))
    assert over.overflows > 0 and not np.array_equal(over.result, integer_matmul(x, w))


def test_kernel_inputs_are_checked():
    c = get_edge_preset("a72")
    with pytest.raises(EdgeError, match=r"activation codes must lie in -127..127"):
        run_kernel("w4a8", c, np.full((1, 4), -128), np.zeros((2, 4), int))
    with pytest.raises(EdgeError, match=r"activation codes must lie in -8..7"):
        run_kernel("w4a4", c, np.full((1, 4), 9), np.zeros((2, 4), int))
    with pytest.raises(EdgeError, match="same K"):
        run_kernel("w4a8", c, np.zeros((1, 4), int), np.zeros((2, 5), int))
    with pytest.raises(EdgeError, match="unknown kernel"):
        run_kernel("w2a2", c, np.zeros((1, 4), int), np.zeros((2, 4), int))
    with pytest.raises(EdgeError, match="flush must be a positive"):
        run_kernel("w4a4", c, np.zeros((1, 4), int), np.zeros((2, 4), int), flush=0)
    with pytest.raises(EdgeError, match="no sdot"):
        compute_cycles(c, {"sdot": 4})


def test_trip_folds_outliers_exactly(rng):
    w = rng.standard_normal((64, 256)) * 0.02
    calib = rng.standard_normal((32, 256))
    calib[:, [3, 100]] *= 60  # two outlier channels
    layer = trip_quantize(w, calib, act_bits=8)
    assert set(np.flatnonzero(layer.alpha > 1)) == {3, 100}
    assert np.all(np.log2(layer.alpha) == np.round(np.log2(layer.alpha)))  # powers of two: exact division
    x = calib[:4]
    got = layer(x)
    ref = x @ w.T
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99
    no_fold = trip_quantize(w, calib, act_bits=8, ratio=1e9)
    assert np.all(no_fold.alpha == 1)
    assert np.abs(layer(x) - ref).mean() < np.abs(no_fold(x) - ref).mean()  # the folding helps
    codes = layer.quantize_activations(x)
    assert codes.dtype == np.int8 and np.abs(codes).max() <= 127
    assert np.abs(trip_quantize(w, calib, act_bits=4).quantize_activations(x)).max() <= 7


def test_trip_layer_runs_on_the_simd_kernels(rng):
    w = rng.standard_normal((48, 128)) * 0.02
    calib = rng.standard_normal((16, 128))
    for act_bits in (8, 4):
        layer = trip_quantize(w, calib, act_bits=act_bits)
        qa = layer.quantize_activations(calib[:2])
        for core in PRESETS:
            run = run_kernel(kernel_for(act_bits), get_edge_preset(core), qa, layer.weight_codes)
            np.testing.assert_array_equal(run.result, integer_matmul(qa, layer.weight_codes))
            np.testing.assert_allclose(layer.output(run.result), layer(calib[:2]))


def test_trip_errors():
    with pytest.raises(TripError, match="act_bits"):
        trip_quantize(np.ones((2, 4)), np.ones((2, 4)), act_bits=3)
    with pytest.raises(TripError, match="channels"):
        trip_quantize(np.ones((2, 4)), np.ones((2, 5)))
    with pytest.raises(TripError, match="non-finite"):
        trip_quantize(np.full((2, 4), np.nan), np.ones((2, 4)))
    assert np.all(outlier_factors(np.zeros((3, 4))) == 1)


def test_timing_of_a_model_and_its_report():
    workload = Workload.for_model("opt-1.3b", phase="decode")
    base = simulate_edge("a72", workload, 16)
    quant = simulate_edge("a72", workload, 4)
    assert quant.speedup_over(base) > 1
    assert set(quant.rows["kernel"]) == {"w4a4", "fp16"}  # attention stays fp16
    assert quant.total("weight_bytes") < base.total("weight_bytes") / 3.5
    assert "instructions_mul" in quant.rows and quant.summary()["kernel"] == "w4a4"
    assert np.all(quant.rows["cycles"] >= quant.rows["compute_cycles"])


def test_paper_table_names_each_bound():
    rows = paper_table()
    assert len(rows) == 8 and {r["device"] for r in rows} == {"Raspberry Pi 4B", "Snapdragon 870"}
    pi = next(r for r in rows if r["core"] == "a72" and r["model"] == "opt-1.3b" and r["act_bits"] == 4)
    assert pi["paper_low"] == pytest.approx(754.25 / 296.50)
    assert all(r["bound"] in ("pipes", "load_store", "issue", "chain", "memory") for r in rows)


def test_edge_config_toml(tmp_path):
    path = tmp_path / "pi.toml"
    PRESETS["a72"].save(path)
    assert load_edge_config(path) == PRESETS["a72"]
    with pytest.raises(FileExistsError):
        PRESETS["a72"].save(path)
    (tmp_path / "fast.toml").write_text('preset = "a72"\nclock_ghz = 1.8\n[throughput]\nmul = 1.0\n')
    fast = load_edge_config(tmp_path / "fast.toml")
    assert fast.clock_ghz == 1.8 and fast.throughput["mul"] == 1.0 and fast.latency == PRESETS["a72"].latency
    (tmp_path / "bad.toml").write_text('preset = "a72"\nwarp_size = 32\n')
    with pytest.raises(ConfigError, match="unknown key 'warp_size'"):
        load_edge_config(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text('preset = "a72"\n[throughput]\nfrobnicate = 1\n')
    with pytest.raises(ConfigError, match="unknown instruction 'frobnicate'"):
        load_edge_config(tmp_path / "bad2.toml")
    with pytest.raises(ConfigError, match="clock_ghz must be"):
        dataclasses.replace(PRESETS["a77"], clock_ghz=-1)
    with pytest.raises(ConfigError, match="unknown edge preset"):
        get_edge_preset("m1")
    assert isinstance(get_edge_preset("pi4"), EdgeCore)
