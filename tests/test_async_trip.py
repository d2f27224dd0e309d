"""Asynchronous mixed_2_4 dequantization and TRIP matmul (Triton), against their references.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest); on the GPU machine
the same tests run compiled, and the gpu-marked ones add the benchmark shapes."""
import numpy as np
import pytest

import hwlab.formats as F
from hwlab.formats.packing import unpack_codes
from hwlab.sim.trip import integer_matmul, trip_quantize

torch = pytest.importorskip("torch", reason="torch is not installed")
pytest.importorskip("triton", reason="triton is not installed")

from hwlab.kernels.async_mixed import mixed_matmul  # noqa: E402
from hwlab.kernels.testing import worst_error  # noqa: E402
from hwlab.kernels.trip import TripWeights, pack_int4_words, trip_accumulate, trip_matmul  # noqa: E402


def mixed(rng, n, k, **options):
    return F.quantize((rng.standard_normal((n, k)) * 0.05).astype(np.float32), "mixed_2_4", **options)


@pytest.mark.parametrize("n, k, group_size, frac, m", [
    (70, 512, 128, 0.425, 1), (64, 384, 64, 0.0, 1), (33, 256, 128, 1.0, 1), (70, 512, 128, 0.425, 5),
    (40, 1024, 256, 0.5, 17), (17, 320, 64, 0.425, 2)])
def test_async_mixed_matches_the_reference(rng, kernel_device, n, k, group_size, frac, m):
    qt = mixed(rng, n, k, group_size=group_size, frac_4bit=frac)
    dev = qt.to(kernel_device)
    x = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float16)).to(kernel_device)
    out = torch.full((m, n), float("nan"), dtype=torch.float16, device=kernel_device)
    mixed_matmul(x, dev, out=out)
    assert torch.isfinite(out).all(), "the output was not written everywhere"
    assert worst_error(out, x, qt) <= 1.0
    assert worst_error(mixed_matmul(x, dev, mode="sync"), x, qt) <= 1.0


@pytest.mark.parametrize("m", [1, 20])
def test_async_split_k_is_one_launch_that_leaves_the_workspace_zeroed(rng, kernel_device, m):
    """Many programs along K: the last of a tile sums, saturates and stores (hwlab.kernels.dispatch's
    workspace and arrival counts, as the synchronous kernels use them), and re-zeroes both."""
    from hwlab.kernels import dispatch
    from hwlab.kernels.async_mixed import async_launch

    qt = mixed(rng, 70, 1024, group_size=64)
    dev = qt.to(kernel_device)
    launch = async_launch(dev, m, sms=64)
    assert launch.split > 1
    x = torch.from_numpy(rng.standard_normal((m, 1024)).astype(np.float16)).to(kernel_device)
    for _ in range(2):  # the second call finds the workspace as the first left it
        out = torch.full((m, 70), float("nan"), dtype=torch.float16, device=kernel_device)
        dispatch.run(x, dev, out, launch)
        assert torch.isfinite(out).all() and worst_error(out, x, qt) <= 1.0
    work, count = dispatch.split_workspace(x.device, m * 70, 1)
    assert not work.any() and not count.any()
    x[0, 5] = float("nan")
    dispatch.run(x, dev, out, launch)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1:]).all()


def test_async_prepared_launch_is_kept_and_checks_stay(rng, kernel_device):
    dev = mixed(rng, 48, 256, group_size=64).to(kernel_device)
    x = torch.from_numpy(rng.standard_normal((3, 256)).astype(np.float16)).to(kernel_device)
    first = mixed_matmul(x, dev)
    key = ("async", x.shape, x.dtype, x.device)
    prepared = dev.prepared[key]
    torch.testing.assert_close(mixed_matmul(x, dev), first, rtol=0, atol=0)
    assert dev.prepared[key] is prepared
    with pytest.raises(ValueError, match="out must be a contiguous"):
        mixed_matmul(x, dev, out=torch.empty(48, 3, dtype=torch.float16, device=kernel_device))
    assert mixed_matmul(x[:0], dev).shape == (0, 48)


def test_async_mixed_bf16_and_batched_shape(rng, kernel_device):
    qt = mixed(rng, 48, 256, group_size=64)
    dev = qt.to(kernel_device)
    x = torch.from_numpy(rng.standard_normal((2, 3, 256)).astype(np.float32)).to(torch.bfloat16).to(kernel_device)
    y = mixed_matmul(x, dev)
    assert y.shape == (2, 3, 48) and y.dtype == torch.bfloat16
    assert worst_error(y.reshape(6, 48), x.reshape(6, 256), qt) <= 1.0


def test_async_mixed_refuses_what_it_cannot_run(rng, kernel_device):
    dev = mixed(rng, 8, 384, group_size=192).to(kernel_device)
    x = torch.zeros(1, 384, dtype=torch.float16, device=kernel_device)
    with pytest.raises(ValueError, match="power-of-two group sizes, got 192"):
        mixed_matmul(x, dev)
    assert torch.isfinite(mixed_matmul(x, dev, mode="sync")).all()  # the synchronous kernel runs any
    good = mixed(rng, 8, 256, group_size=64).to(kernel_device)
    with pytest.raises(ValueError, match="mode must be one of"):
        mixed_matmul(x[:, :256], good, mode="fast")
    with pytest.raises(ValueError, match=r"x must be a float16 or bfloat16 torch tensor \[\.\.\., 256\]"):
        mixed_matmul(x, good)
    with pytest.raises(ValueError, match="out must be a contiguous"):
        mixed_matmul(x[:, :256], good, out=torch.empty(1, 7, dtype=torch.float16, device=kernel_device))
    int4 = F.quantize(np.ones((8, 256), np.float32), "int4").to(kernel_device)
    with pytest.raises(ValueError, match="takes a mixed_2_4 tensor"):
        mixed_matmul(x[:, :256], int4)
    with pytest.raises(TypeError, match=r"qt\.to\('cuda'\)"):
        mixed_matmul(x[:, :256], mixed(rng, 8, 256, group_size=64))


def test_pack_int4_words_is_the_format_packing(rng):
    codes = rng.integers(-8, 8, (5, 64)).astype(np.int8)
    words = pack_int4_words(codes)
    assert words.dtype == np.int32 and words.shape == (5, 8)
    nibbles = unpack_codes(words.view(np.uint32), 4, 64).astype(np.int16)
    assert np.array_equal(np.where(nibbles > 7, nibbles - 16, nibbles), codes)
    with pytest.raises(ValueError, match=r"must lie in \[-8, 7\]"):
        pack_int4_words(codes.astype(np.int16) * 2)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        pack_int4_words(codes[:, :60])


def trip_layer(rng, n, k, act_bits):
    calibration = rng.standard_normal((8, k))
    calibration[:, rng.integers(0, k, 3)] *= 40  # outlier channels: alpha > 1
    return trip_quantize(rng.standard_normal((n, k)), calibration, act_bits=act_bits)


@pytest.mark.parametrize("m, n, k, act_bits", [(1, 70, 256, 8), (3, 64, 128, 4), (17, 130, 96, 8), (16, 40, 512, 4)])
def test_trip_triton_is_bit_exact(rng, kernel_device, m, n, k, act_bits):
    layer = trip_layer(rng, n, k, act_bits)
    w = TripWeights.from_layer(layer, kernel_device)
    qa = layer.quantize_activations(rng.standard_normal((m, k)) * 3)
    acc = trip_accumulate(torch.from_numpy(qa).to(kernel_device), w)
    assert acc.dtype == torch.int32
    assert np.array_equal(acc.cpu().numpy(), integer_matmul(qa, layer.weight_codes))
    y = trip_matmul(torch.from_numpy(qa).to(kernel_device), w).cpu().double().numpy()
    ref = layer.output(integer_matmul(qa, layer.weight_codes))
    assert np.allclose(y, ref, rtol=2**-22, atol=0)  # two float32 roundings of an exact product


@pytest.mark.parametrize("preset", ["a72", "a77"])
@pytest.mark.parametrize("act_bits", [8, 4])
def test_trip_gpu_equals_the_edge_simulator(rng, kernel_device, preset, act_bits):
    """The same TRIP inputs through the edge core's NEON kernels (sim.simd, lane for lane) and the GPU kernel."""
    from hwlab.sim.edge import get_edge_preset
    from hwlab.sim.simd import run_kernel

    layer = trip_layer(rng, 48, 256, act_bits)
    qa = layer.quantize_activations(rng.standard_normal((3, 256)) * 2)
    edge = run_kernel(f"w4a{act_bits}", get_edge_preset(preset), qa, layer.weight_codes)
    assert edge.overflows == 0
    gpu = trip_accumulate(torch.from_numpy(qa).to(kernel_device), TripWeights.from_layer(layer, kernel_device))
    assert np.array_equal(gpu.cpu().numpy(), edge.result)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cupy"])
def test_both_gpu_backends_equal_the_edge_simulator(backend):
    """TRIP on the GPU, both backends, at a layer shape, held to the edge core's lane-for-lane kernels."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    if backend == "cupy":
        pytest.importorskip("cupy", reason="cupy is not installed (the gpu extra)")
    from hwlab.sim.edge import get_edge_preset
    from hwlab.sim.simd import run_kernel

    rng = np.random.default_rng(7)
    for act_bits in (8, 4):
        layer = trip_layer(rng, 512, 2048, act_bits)
        qa = layer.quantize_activations(rng.standard_normal((4, 2048)) * 2)
        edge = run_kernel(f"w4a{act_bits}", get_edge_preset("a77"), qa, layer.weight_codes)
        got = trip_accumulate(torch.from_numpy(qa).cuda(), TripWeights.from_layer(layer, "cuda"), backend=backend)
        assert edge.overflows == 0 and np.array_equal(got.cpu().numpy(), edge.result)


def test_trip_extreme_codes_do_not_overflow(kernel_device):
    k = 1024
    layer = trip_quantize(np.full((4, k), -1.0), np.ones((2, k)), act_bits=8)
    w = TripWeights.from_layer(layer, kernel_device)
    qa = np.full((2, k), 127, np.int8)
    acc = trip_accumulate(torch.from_numpy(qa).to(kernel_device), w)
    assert np.array_equal(acc.cpu().numpy(), integer_matmul(qa, layer.weight_codes))


def test_trip_on_the_sample_weights(kernel_device):
    from safetensors.numpy import load_file

    from hwlab.sample import sample_path

    weight = load_file(sample_path())["encoder.layer.0.attention.self.query.weight"].astype(np.float64)
    rng = np.random.default_rng(3)
    layer = trip_quantize(weight, rng.standard_normal((16, weight.shape[1])), act_bits=8)
    w = TripWeights.from_layer(layer, kernel_device)
    qa = layer.quantize_activations(rng.standard_normal((4, weight.shape[1])))
    acc = trip_accumulate(torch.from_numpy(qa).to(kernel_device), w)
    assert np.array_equal(acc.cpu().numpy(), integer_matmul(qa, layer.weight_codes))


def test_trip_refuses_bad_inputs(rng, kernel_device):
    layer = trip_layer(rng, 8, 64, 8)
    w = TripWeights.from_layer(layer, kernel_device)
    good = torch.zeros(2, 64, dtype=torch.int8, device=kernel_device)
    with pytest.raises(ValueError, match="must be a 2-D torch.int8 tensor"):
        trip_accumulate(good.float(), w)
    with pytest.raises(ValueError, match="x_codes has K=32, the layer takes K=64"):
        trip_accumulate(good[:, :32], w)
    with pytest.raises(ValueError, match="no rows"):
        trip_accumulate(good[:0], w)
    with pytest.raises(ValueError, match="backend must be"):
        trip_accumulate(good, w, backend="cuda")
    with pytest.raises(TypeError, match="expected TripWeights"):
        trip_accumulate(good, layer)
    with pytest.raises(ValueError, match="multiple of 32, got K=48"):
        TripWeights.from_layer(trip_layer(rng, 8, 48, 8), kernel_device)
    eight = trip_quantize(rng.standard_normal((8, 64)), rng.standard_normal((4, 64)), weight_bits=8)
    with pytest.raises(ValueError, match="4-bit weights, the layer has 8-bit"):
        TripWeights.from_layer(eight, kernel_device)


def test_trip_device_quantizer_matches_the_reference(rng, kernel_device):
    layer = trip_layer(rng, 8, 128, 8)
    w = TripWeights.from_layer(layer, kernel_device)
    x = rng.standard_normal((5, 128)).astype(np.float32)
    got = w.quantize_activations(torch.from_numpy(x).to(kernel_device)).cpu().numpy()
    assert np.array_equal(got, layer.quantize_activations(x))



def test_trip_device_quantizer_refuses_non_finite_activations_like_the_reference(rng, kernel_device):
    layer = trip_layer(rng, 8, 64, 8)
    w = TripWeights.from_layer(layer, kernel_device)
    for bad in (float("nan"), float("inf")):
        x = torch.zeros(2, 64, device=kernel_device)
        x[1, 3] = bad  # NaN used to come out as code 0, silently
        with pytest.raises(ValueError, match="non-finite values"):
            w.quantize_activations(x)


def test_trip_from_layer_names_what_it_takes(kernel_device):
    with pytest.raises(TypeError, match="from_layer takes a TripLayer"):
        TripWeights.from_layer(np.ones((8, 32)), kernel_device)  # was AttributeError: no weight_bits

@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16])
def test_benchmark_shapes_on_the_gpu(m):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    from hwlab.kernels.testing import repeat_rows

    rng = np.random.default_rng(0)
    k, n = 8192, 28672
    small = mixed(rng, 256, k)
    dev = repeat_rows(small, n).to("cuda")
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    y = mixed_matmul(x, dev)
    assert torch.equal(y[:, :256], y[:, -256:])  # every repeat of the rows gives the same outputs
    assert worst_error(y[:, :256], x, small) <= 1.0
    layer = trip_layer(rng, 1024, k, 8)
    w = TripWeights.from_layer(layer, "cuda")
    qa = layer.quantize_activations(rng.standard_normal((m, k)))
    acc = trip_accumulate(torch.from_numpy(qa).cuda(), w)
    assert np.array_equal(acc.cpu().numpy(), integer_matmul(qa, layer.weight_codes))
