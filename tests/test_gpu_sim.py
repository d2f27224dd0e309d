"""The PE engine on a real GPU (numba.cuda): bit-identical to the CPU engine. Marked ``gpu``."""
import numpy as np
import pytest

import hwlab

cuda = pytest.importorskip("numba.cuda", reason="numba.cuda is not installed")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda.is_available(), reason="no CUDA GPU on this machine")]


@pytest.mark.parametrize("fmt", ["bitmod_fp4", "bitmod_fp3", "int4", "int8", "fp4_e2m1", "olive4", "mxfp4", "nvfp4"])
def test_cuda_engine_equals_cpu_engine(fmt):
    from hwlab.sim import run_pe

    rng = np.random.default_rng(11)
    w = (rng.standard_normal((1024, 2048)) * 0.02).astype(np.float32)
    qt = hwlab.quantize(w, fmt, hwlab.get_format(fmt).default_group_size if fmt in ("mxfp4", "nvfp4") else 128)
    x = (rng.standard_normal((3, 2048)) * np.exp2(rng.integers(-8, 4, (3, 2048)))).astype(np.float16)
    cpu, gpu = run_pe(x, qt).output, run_pe(x, qt, device="cuda").output
    assert np.array_equal(cpu.view(np.uint32), gpu.view(np.uint32))


@pytest.mark.parametrize("fmt, n, k, group", [("bitmod_fp3", 4096, 4096, 128), ("bitmod_fp4", 11008, 4096, 128),
                                              ("int8", 4096, 11008, 128), ("bitmod_fp4", 512, 2048, 2048)])
def test_prepared_cuda_engine_equals_cpu_engine_at_one_token(fmt, n, k, group):
    """Prepared weights at the decode step's shapes: device copies made once and reused; the split per
    group (and one group a row) bit-identical to the CPU engine."""
    from hwlab.sim import pe, pe_cuda, prepare_pe, run_pe

    rng = np.random.default_rng(12)
    weights = prepare_pe(hwlab.quantize((rng.standard_normal((n, k)) * 0.02).astype(np.float32), fmt, group))
    for _ in range(2):
        x = (rng.standard_normal((1, k)) * np.exp2(rng.integers(-8, 4, (1, k)))).astype(np.float16)
        x[0, ::7] = 0
        cpu, gpu = pe.engine((weights, weights.activations(x))), run_pe(x, weights, device="cuda").output
        assert np.array_equal(cpu.view(np.uint32), gpu.view(np.uint32))
    assert len(weights.streams.derived["cuda"]) == 1 and pe_cuda.device_streams(weights) is \
        next(iter(weights.streams.derived["cuda"].values()))


def test_cuda_engine_runs_many_tokens_in_chunks(monkeypatch):
    from hwlab.sim import pe, pe_cuda, prepare_pe

    rng = np.random.default_rng(13)
    weights = prepare_pe(hwlab.quantize((rng.standard_normal((300, 512)) * 0.02).astype(np.float32), "bitmod_fp4",
                                        64))
    x = rng.standard_normal((5, 512)).astype(np.float16)
    acts = weights.activations(x)
    cpu = pe.engine((weights, acts))
    monkeypatch.setattr(pe_cuda, "PARTIAL_LIMIT", 2 * 8 * 300)  # two tokens per launch pair
    assert np.array_equal(cpu.view(np.uint32), pe_cuda.engine_cuda(weights, acts).view(np.uint32))
