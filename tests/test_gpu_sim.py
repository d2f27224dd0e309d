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
