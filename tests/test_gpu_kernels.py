"""Every kernel at the benchmark shapes on the GPU, against the float64 product of the dequantized weights.

Marked ``gpu``: skipped with the reason where no CUDA GPU is present (CI). The weights come from
``hwlab.kernels.dequantize`` on the device, which equals the unpacked view's decode bit for bit
(tests/test_kernels.py holds it to that); the product is computed in float64 on the GPU.
Run on the GPU machine: ``pytest -m gpu tests/test_gpu_kernels.py``.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
pytest.importorskip("triton", reason="triton is not installed")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]

import hwlab.formats as F  # noqa: E402
from hwlab import kernels  # noqa: E402
from hwlab.kernels.testing import half_terms, matmul_tolerance, repeat_rows  # noqa: E402

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 28672)]  # (K, N) of bench/gpu_kernels.py
FORMATS = ["int4", "int4_asym", "int2", "int3", "int8", "nf4", "fp4_e2m1", "fp4_e1m2", "fp4_e3m0", "flint4",
           "bitmod_fp4", "bitmod_fp3", "shift4", "ternary", "mxfp4", "nvfp4", "mixed_2_4", "olive4", "fp8_e4m3"]
ROWS = 256  # rows quantized for real, repeated to N


@pytest.fixture(scope="module")
def layers():
    rng = np.random.default_rng(5)
    cache = {}

    def get(fmt, k, n):
        if (fmt, k, n) not in cache:
            small = F.quantize((rng.standard_normal((ROWS, k)) * 0.02).astype(np.float32), fmt)
            qt = repeat_rows(small, n)
            dev = qt.to("cuda")
            u = small.unpacked()
            largest = max(1.0, np.abs(u.values[np.isfinite(u.values)]).max())
            small_bound = (np.abs(u.expand(u.scales))[:, :k] * largest).astype(np.float32)
            bound = torch.from_numpy(small_bound).cuda().repeat(n // ROWS, 1).double()
            cache.clear()  # one layer at a time: the big ones take gigabytes in float64
            cache[(fmt, k, n)] = (dev, kernels.dequantize(dev).double(), bound)
        return cache[(fmt, k, n)]
    return get


@pytest.mark.parametrize("k,n", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("fmt", FORMATS)
def test_kernel_at_benchmark_shape(fmt, k, n, layers):
    dev, w, bound = layers(fmt, k, n)
    for m in (1, 4, 16, 64):  # 4: int_mma of one batch tile (kernels.dispatch.CUPY_MMA_MIN_WEIGHTS)
        x = torch.randn(m, k, device="cuda").half()
        out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
        kernels.matmul(x, dev, out=out)
        ref = x.double() @ w.T
        tol = matmul_tolerance(x, w, bound, ref, half_terms(dev.plan, m))
        worst = float(((out.double() - ref).abs() / tol).max())
        assert worst <= 1.0, f"{fmt} M={m} K={k} N={n}: error {worst:.3g} x tolerance ({kernels.explain(dev, m)})"


def test_quant_linear_model_on_gpu():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.SiLU(), torch.nn.Linear(4096, 1024)).cuda()
    x = torch.randn(8, 1024, device="cuda")
    reference = []
    for lin in (model[0], model[2]):
        qt = F.quantize(lin.weight.detach().cpu().numpy(), "int4")
        reference.append(torch.nn.Linear(lin.in_features, lin.out_features).cuda())
        reference[-1].weight.data = torch.from_numpy(qt.dequantize()).cuda()
        reference[-1].bias.data = lin.bias.data.clone()
    kernels.quantize_linears(model, "int4")
    want = reference[1](torch.nn.functional.silu(reference[0](x)))
    got = model.half()(x.half()).float()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
