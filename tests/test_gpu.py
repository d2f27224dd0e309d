"""CUDA tensors in, CUDA tensors out: ``dequantize`` returns to the input's device.

Marked ``gpu``: skipped (with the reason) where torch or a CUDA device is missing, as in CI.
"""
import numpy as np
import pytest

import hwlab

torch = pytest.importorskip("torch", reason="torch is not installed")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("fmt", ["int4", "bitmod_fp4", "nf4", "mxfp4", "mixed_2_4"])
def test_cuda_weights_dequantize_on_cuda_bit_identical_to_numpy(fmt, dtype):
    gen = torch.Generator(device="cuda").manual_seed(7)
    w = (torch.randn(64, 512, device="cuda", generator=gen) * 0.02).to(getattr(torch, dtype))
    qt = hwlab.quantize(w, fmt)
    out = qt.dequantize()
    assert isinstance(out, torch.Tensor) and out.device == w.device and out.dtype == torch.float32
    reference = hwlab.quantize(w.float().cpu().numpy(), fmt).dequantize()
    np.testing.assert_array_equal(out.cpu().numpy(), reference)
    assert qt.error(w)["sqnr_db"] > 8  # a sanity floor: mixed_2_4 (2.85 code bits) gives about 9.4 dB


def test_dequantize_to_another_device():
    w = torch.randn(8, 256, device="cuda") * 0.02
    qt = hwlab.quantize(w, "int4")
    assert qt.dequantize(device="cpu").device.type == "cpu"
    assert hwlab.quantize(w.cpu().numpy(), "int4").dequantize(device="cuda").device.type == "cuda"
