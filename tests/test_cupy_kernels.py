"""The CuPy (CUDA C++) kernels: kernels/cuda/*.cu and hwlab.kernels.cupy_kernels.

* Always (where nvcc exists): both sources compile for sm_90 with ``-std=c++17`` without local
  memory spills, and their SASS holds the instructions the design rests on (LDGSTS: cp.async;
  IDP.4A: dp4a).
* Always (torch on CPU): the argument checks raise before CuPy is imported; the launch plan's
  shared-memory layout and division constants.
* ``gpu``-marked (skipped with the reason without CUDA or CuPy): ``mixed_gemv_cupy`` against the
  float64 reference and the Triton kernel; ``trip_matmul_cupy`` bit-exact against
  :func:`hwlab.sim.trip.integer_matmul`.

Error bound of ``mixed_gemv_cupy`` (derived in kernels/cuda/mixed_gemv_async.cu's terms): every
product ``f * xh`` is exact (f has at most 9 significant bits, xh = x * 2**8 or x * 2**4 at most
11), so the only roundings are the float32 sums. A lane's four accumulators each add gs/4 terms
of magnitude at most (256 + 15)|x| (even elements) or (16 + 15)|x| (odd), so a group's partial
sums carry at most about (gs/4) * 2**-24 * 271 * sum|x| <= 2**-10 * sum_g |x| for gs <= 256 (offset
sums are rounded once from double): well inside ``FAST_DECODE_ERROR * |x| @ scale_bound``
(2**-11 * 15 * scale * sum|x|), the bound ``kernels.testing.matmul_tolerance`` gives the Triton
kernels, whose other terms cover the fp16 output rounding and the group and row sums.
"""
import importlib.resources
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import hwlab.formats as F  # noqa: E402
from hwlab.kernels import cupy_kernels as ck  # noqa: E402
from hwlab.kernels.testing import cupy_gpu_missing  # noqa: E402

NVCC = shutil.which("nvcc")
CUDA_FILES = [ck.MIXED_SOURCE, ck.TRIP_SOURCE]
SASS_NEEDS = {ck.MIXED_SOURCE: ("LDGSTS", "SHF.L.W"), ck.TRIP_SOURCE: ("IDP.4A",)}


def _cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        return str(bundled) if bundled.exists() else None
    except ImportError:
        return None


# ------------------------------------------------------------------------------------------------
# compile (CPU, nvcc)

@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("name", CUDA_FILES)
def test_cuda_source_compiles_without_spills(name, tmp_path):
    cubin, source = tmp_path / (name + ".cubin"), tmp_path / name
    source.write_text(ck.kernel_source(name))  # the text NVRTC compiles (the prelude, then the file)
    done = subprocess.run([NVCC, "-arch=sm_90", "-std=c++17", "-cubin", "-Xptxas", "-v", "-o", str(cubin),
                           str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = done.stderr + done.stdout
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert spills and all(s == ("0", "0") for s in spills), report
    frames = re.findall(r"(\d+) bytes stack frame", report)
    assert frames and all(f == "0" for f in frames), report
    cuobjdump = _cuobjdump()
    if cuobjdump:
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True).stdout
        for op in SASS_NEEDS[name]:
            assert op in sass, f"{name}: no {op} in its SASS"
        assert "LDL" not in sass and "STL" not in sass, f"{name}: local memory in its SASS"


def test_sources_are_package_data():
    installed = importlib.resources.files("hwlab.kernels") / "cuda"  # what an installed package holds
    for name in CUDA_FILES + [ck.PRELUDE]:
        assert (installed / name).is_file(), f"{name} is not installed with hwlab.kernels (package data)"
    for name in CUDA_FILES:
        assert "#include" not in ck.kernel_source(name), f"{name} must compile under NVRTC without headers"
    for stages in ck.MIXED_STAGES:  # every name expression is instantiated in the source
        assert f"template __global__ void {ck.mixed_kernel_name(stages)}(" in ck.kernel_source(ck.MIXED_SOURCE)
    for mb in ck.TRIP_MB:
        assert f"template __global__ void {ck.trip_kernel_name(mb)}(" in ck.kernel_source(ck.TRIP_SOURCE)


def test_cupy_is_imported_lazily(tmp_path):
    code = "import hwlab.kernels.cupy_kernels, sys; assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)  # the installed hwlab, not a checkout


# ------------------------------------------------------------------------------------------------
# argument checks (CPU tensors: the errors come before CuPy is touched)

def _mixed_cpu(n=8, k=256, gs=64, frac=0.425):
    w = (np.random.default_rng(0).standard_normal((n, k)) * 0.02).astype(np.float32)
    return F.quantize(w, "mixed_2_4", group_size=gs, frac_4bit=frac, pad=k % gs != 0).to("cpu")


def test_mixed_argument_errors_on_cpu():
    dt = _mixed_cpu()
    x = torch.zeros(256, dtype=torch.float16)
    with pytest.raises(TypeError, match="DeviceTensor"):
        ck.mixed_gemv_cupy(x, dt.source)
    with pytest.raises(ValueError, match="mixed_2_4"):
        ck.mixed_gemv_cupy(x, F.quantize(np.ones((4, 256), np.float32), "int4").to("cpu"))
    with pytest.raises(ValueError, match="float16"):
        ck.mixed_gemv_cupy(x.float(), dt)
    with pytest.raises(ValueError, match=r"shape \[256\] or \[1, 256\]"):
        ck.mixed_gemv_cupy(torch.zeros(2, 256, dtype=torch.float16), dt)
    with pytest.raises(ValueError, match=r"shape \[256\] or \[1, 256\]"):
        ck.mixed_gemv_cupy(torch.zeros(255, dtype=torch.float16), dt)
    with pytest.raises(ValueError, match="out must be a float16"):
        ck.mixed_gemv_cupy(x, dt, out=torch.zeros(1, 8))
    with pytest.raises(ValueError, match="CUDA device"):
        ck.mixed_gemv_cupy(x, dt)
    with pytest.raises(ValueError, match="CUDA device"):
        ck.mixed_gemv_cupy(x[None], dt, out=torch.zeros(1, 8, dtype=torch.float16))


def test_trip_argument_errors_on_cpu():
    x = torch.zeros(3, 64, dtype=torch.int8)
    w = torch.zeros(5, 8, dtype=torch.int32)
    with pytest.raises(TypeError, match="torch tensor"):
        ck.trip_matmul_cupy(np.zeros((3, 64), np.int8), w)
    with pytest.raises(ValueError, match="x_codes must be a 2-D torch.int8"):
        ck.trip_matmul_cupy(x.to(torch.int16), w)
    with pytest.raises(ValueError, match="x_codes must be a 2-D torch.int8"):
        ck.trip_matmul_cupy(x[0], w)
    with pytest.raises(ValueError, match="w_words must be a 2-D torch.int32"):
        ck.trip_matmul_cupy(x, w.to(torch.int64))
    with pytest.raises(ValueError, match="1 to 64 rows"):
        ck.trip_matmul_cupy(torch.zeros(65, 64, dtype=torch.int8), w)
    with pytest.raises(ValueError, match="multiple of 32"):
        ck.trip_matmul_cupy(torch.zeros(3, 48, dtype=torch.int8), torch.zeros(5, 6, dtype=torch.int32))
    with pytest.raises(ValueError, match="words per row"):
        ck.trip_matmul_cupy(x, torch.zeros(5, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"out must be a torch.int32 tensor \[3, 5\]"):
        ck.trip_matmul_cupy(x, w, out=torch.zeros(3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="CUDA device"):
        ck.trip_matmul_cupy(x, w)


# ------------------------------------------------------------------------------------------------
# launch plan (pure Python)

@pytest.mark.parametrize("d", [1, 2, 3, 4, 6, 8, 12, 64])
def test_division_magic(d):
    i = np.arange(1 << 16, dtype=np.uint64)
    assert np.array_equal((i * np.uint64(ck.magic_divisor(d))) >> np.uint64(32), i // np.uint64(d))


@pytest.mark.parametrize("n,k,gs,frac", [(8, 256, 64, 0.425), (5, 300, 64, 0.0), (3, 512, 128, 1.0),
                                         (7, 384, 192, 0.5)])
def test_mixed_launch_plan(n, k, gs, frac):
    dt = _mixed_cpu(n, k, gs, frac)
    lp = ck.mixed_launch_plan(dt)
    groups = dt.plan.padded_cols // gs
    assert lp["groups"] == groups and lp["n4"] + lp["n2"] == groups
    assert lp["n4"] == round(frac * groups)
    assert lp["stage_bytes"] % 16 == 0 and lp["table_bytes"] % 16 == 0
    assert lp["stage_bytes"] >= dt.arrays["codes4"].shape[1] * 4 + dt.arrays["codes2"].shape[1] * 4
    assert lp["scw"] == (groups // 4 if groups % 4 == 0 else 0)
    assert lp["shared"] == lp["table_bytes"] + lp["warps"] * lp["stages"] * lp["stage_bytes"]
    assert lp["value_scale"] == 1.0


def test_mixed_launch_plan_refuses_huge_k():
    dt = _mixed_cpu(2, 64 * 1024, 64)
    with pytest.raises(ValueError, match="shared memory"):
        ck.mixed_launch_plan(dt)


# ------------------------------------------------------------------------------------------------
# GPU

MIXED_CASES = [(256, 1024, 64, 0.425), (259, 4096, 128, 0.425), (33, 4096, 128, 0.0), (33, 4096, 128, 1.0),
               (100, 2048, 256, 0.425), (17, 300, 64, 0.425), (64, 1000, 128, 0.425), (9, 1536, 192, 0.5),
               (1031, 11008, 128, 0.425), (1, 8192, 128, 0.425)]


def _mixed_gpu(n, k, gs, frac, rng):
    w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
    w[rng.integers(0, n, 4), rng.integers(0, k, 4)] *= 20
    qt = F.quantize(w, "mixed_2_4", group_size=gs, frac_4bit=frac, pad=k % gs != 0)
    return qt, qt.to("cuda")


def _bound(qt, x, ref):
    from hwlab.kernels.reference import reference_weights
    from hwlab.kernels.testing import matmul_tolerance

    u = qt.unpacked()
    w = torch.from_numpy(reference_weights(qt)).cuda()
    scale_bound = torch.from_numpy(np.abs(u.expand(u.scales))[:, :qt.shape[1]] * 15.0).cuda()
    return matmul_tolerance(x, w, scale_bound, ref)


@pytest.mark.gpu
@pytest.mark.skipif(cupy_gpu_missing() is not None, reason=str(cupy_gpu_missing()))
@pytest.mark.parametrize("stages", ck.MIXED_STAGES)
@pytest.mark.parametrize("n,k,gs,frac", MIXED_CASES, ids=lambda v: str(v))
def test_mixed_gemv_cupy_against_reference_and_triton(n, k, gs, frac, stages):
    from hwlab.kernels.reference import reference_matmul

    from hwlab import kernels

    rng = np.random.default_rng(n * 7 + k)
    qt, dt = _mixed_gpu(n, k, gs, frac, rng)
    x = torch.randn(1, k, device="cuda").half()
    out = torch.full((1, n), float("nan"), device="cuda", dtype=torch.float16)
    got = ck.mixed_gemv_cupy(x, dt, out=out, stages=stages)
    assert got is out
    torch.cuda.synchronize()
    ref = torch.from_numpy(reference_matmul(x, qt)).cuda()
    tol = _bound(qt, x, ref)
    worst = float(((got.double() - ref).abs() / tol).max())
    assert torch.isfinite(got).all()
    assert worst <= 1.0, f"N={n} K={k} gs={gs} frac={frac}: error {worst:.3g} x tolerance"
    same = ck.mixed_gemv_cupy(x[0], dt, stages=stages)  # [K] input, fresh output: the same bits
    assert same.shape == (1, n) and torch.equal(same, got)
    triton = kernels.matmul(x, dt)
    # both within the tolerance of the reference, so within twice of each other
    assert float(((got.double() - triton.double()).abs() / (2 * tol)).max()) <= 1.0


@pytest.mark.gpu
@pytest.mark.skipif(cupy_gpu_missing() is not None, reason=str(cupy_gpu_missing()))
def test_mixed_gemv_cupy_saturates_and_repeats():
    rng = np.random.default_rng(3)
    qt, dt = _mixed_gpu(64, 512, 64, 0.425, rng)
    x = torch.full((1, 512), 60000.0, device="cuda").half()
    y = ck.mixed_gemv_cupy(x, dt)
    assert torch.isfinite(y).all() and float(y.abs().max()) <= 65504
    x = torch.randn(1, 512, device="cuda").half()
    first = ck.mixed_gemv_cupy(x, dt)
    for _ in range(5):  # deterministic: a fixed reduction order, no atomics
        assert torch.equal(ck.mixed_gemv_cupy(x, dt), first)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        other = ck.mixed_gemv_cupy(x, dt)
    stream.synchronize()
    assert torch.equal(other, first)


def _pack_int4_words(codes: np.ndarray) -> np.ndarray:
    try:
        from hwlab.kernels.trip import pack_int4_words
    except ImportError:  # the canonical packing lives in hwlab.kernels.trip
        from hwlab.formats.packing import pack_codes

        def pack_int4_words(c):
            return pack_codes((np.asarray(c).astype(np.int64) & 0xF).astype(np.uint8), 4).view(np.int32)
    return pack_int4_words(codes)


def _trip_check(qa: np.ndarray, qw: np.ndarray):
    from hwlab.sim.trip import integer_matmul

    x = torch.from_numpy(np.ascontiguousarray(qa.astype(np.int8))).cuda()
    w = torch.from_numpy(_pack_int4_words(qw)).cuda()
    got = ck.trip_matmul_cupy(x, w)
    want = integer_matmul(qa, qw)
    assert got.dtype == torch.int32 and tuple(got.shape) == want.shape
    np.testing.assert_array_equal(got.cpu().numpy().astype(np.int64), want)


@pytest.mark.gpu
@pytest.mark.skipif(cupy_gpu_missing() is not None, reason=str(cupy_gpu_missing()))
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 16, 33, 64])
@pytest.mark.parametrize("n,k", [(1, 32), (37, 96), (300, 1024), (129, 4128)])
def test_trip_matmul_cupy_random_codes(m, n, k):
    rng = np.random.default_rng(m * 1000 + n)
    _trip_check(rng.integers(-127, 128, (m, k)), rng.integers(-8, 8, (n, k)))


@pytest.mark.gpu
@pytest.mark.skipif(cupy_gpu_missing() is not None, reason=str(cupy_gpu_missing()))
def test_trip_matmul_cupy_extremes_and_out():
    k = 4096
    qa = np.full((3, k), -127)
    qw = np.full((5, k), -8)
    _trip_check(qa, qw)  # the largest magnitude: 127 * 8 * K
    _trip_check(-qa, np.full((5, k), 7))
    x = torch.from_numpy(np.full((3, k), -127, np.int8)).cuda()
    w = torch.from_numpy(_pack_int4_words(qw)).cuda()
    out = torch.empty(3, 5, dtype=torch.int32, device="cuda")
    assert ck.trip_matmul_cupy(x, w, out=out) is out
    assert int(out[0, 0]) == 127 * 8 * k


@pytest.mark.gpu
@pytest.mark.skipif(cupy_gpu_missing() is not None, reason=str(cupy_gpu_missing()))
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("act_bits", [8, 4])
def test_trip_matmul_cupy_on_sample_weights(m, act_bits):
    from hwlab.sim.trip import trip_quantize

    from hwlab.sample import sample_weights

    rng = np.random.default_rng(m + act_bits)
    for name, w in sample_weights().items():
        w = w.astype(np.float64)
        calibration = rng.standard_normal((32, w.shape[1]))
        calibration[:, :3] *= 40  # outlier channels, folded into the weights
        layer = trip_quantize(w, calibration, act_bits=act_bits, weight_bits=4)
        qa = layer.quantize_activations(rng.standard_normal((m, w.shape[1])) * 2)
        _trip_check(qa, layer.weight_codes)


@pytest.mark.gpu
@pytest.mark.skipif(cupy_gpu_missing() is not None, reason=str(cupy_gpu_missing()))
def test_cupy_errors_on_gpu():
    dt = _mixed_cpu().to("cuda")
    x = torch.zeros(256, dtype=torch.float16)
    with pytest.raises(ValueError, match="CUDA device"):
        ck.mixed_gemv_cupy(x, dt)  # x on the CPU, weights on the GPU
    with pytest.raises(ValueError, match="x must be float16"):
        ck.mixed_gemv_cupy(x.cuda().bfloat16(), dt)
    xc = torch.zeros(2, 64, dtype=torch.int8, device="cuda")
    with pytest.raises(ValueError, match="CUDA device"):
        ck.trip_matmul_cupy(xc, torch.zeros(3, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="16-byte aligned"):
        unaligned = torch.zeros(2 * 96 + 4, dtype=torch.int8, device="cuda")[4:].view(2, 96)
        ck.trip_matmul_cupy(unaligned, torch.zeros(3, 12, dtype=torch.int32, device="cuda"))
    with pytest.raises(ValueError, match="stages"):
        ck.mixed_gemv_cupy(x.cuda(), dt, stages=5)
