"""The study on a GPU (``hwlab study --device cuda``): the quantized model through ``QuantLinear`` and
measured kernel times beside the GPU model's predictions.

For each variant (format and group size) measured on the CPU:

* **the quantized encoder on the GPU** (MiniLM only): every linear layer is a
  :class:`~hwlab.kernels.QuantLinear` of the variant (:func:`hwlab.kernels.matmul`: float16
  activations, float32 accumulation, the bias added in float16), the rest of the forward pass as on
  the CPU (:meth:`~hwlab.study.encoder.Encoder.embed`'s ``linears``). ``cosine_gpu_mean`` and
  ``cosine_gpu_min`` are its sentence embeddings' cosines to the float32 ones, beside the CPU
  model's (``cosine_mean``, dequantized float32 weights): the two differ by the float16 rounding
  of the activations only;
* **kernel times**: :func:`hwlab.kernels.matmul` on every distinct layer shape ``[N, K]`` (the
  variant's quantized weights of the first layer of that shape), at ``M`` = :data:`TIME_ROWS` rows
  (the prefill of :data:`~hwlab.study.hardware.SIM_TOKENS` tokens the simulators model), timed
  two ways (:mod:`hwlab.kernels.timing`): a call from Python (``do_bench`` median; small layers
  measure the host's time per call) and the device time of a call inside a CUDA graph; the
  layer's weights stay in L2 between calls, as they do from one forward pass to the next for a
  model of this size. Beside them: torch's float16 ``linear`` (cuBLAS) on the same shape, timed
  the same two ways, and the prediction of :func:`hwlab.sim.gpu.predict` for the launch
  :func:`hwlab.kernels.dispatch.choose` picks (``predicted_us`` for a call, ``predicted_graph_us``
  for the device time). Model totals weigh each shape by the layers that have it.

The embeddings run in the study's worker processes, in parallel, and compile every kernel the
timings need into Triton's on-disk cache; the timings run afterwards in the main process, one
variant after another, so no two timed kernels share the GPU.
"""
from __future__ import annotations

import collections

import numpy as np

from hwlab.formats import quantize
from hwlab.sim.gpu import preset_of

from .hardware import SIM_TOKENS

TIME_ROWS = SIM_TOKENS  # activation rows of each timed call


def check_device(device: str = "cuda"):
    """The torch device to run on, or a ``RuntimeError`` that says what is missing."""
    try:
        import torch
    except ImportError:
        raise RuntimeError("--device cuda needs torch with CUDA (the gpu extra: pip install -e \".[gpu]\"); "
                           "run the study on the CPU (no --device)") from None
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch finds no CUDA device here; run the study on the CPU (no --device)")
    try:
        import triton  # noqa: F401  (the kernels and the timer)
    except ImportError:
        raise RuntimeError("--device cuda needs triton (the gpu extra: pip install -e \".[gpu]\")") from None
    return torch.device(device)


def device_name(device) -> str:
    """The GPU's name, as the driver gives it."""
    import torch

    return torch.cuda.get_device_name(device)


def gpu_model(device) -> str | None:
    """The :mod:`hwlab.sim.gpu` preset of ``device`` (by its name), or ``None`` when hwlab has none."""
    return preset_of(device_name(device))


def shape_groups(layers: dict) -> dict:
    """``(N, K) -> [layer names]`` in first-seen order: the shapes to time and the layers that share each."""
    groups = collections.defaultdict(list)
    for name, w in layers.items():
        groups[tuple(w.shape)].append(name)
    return dict(groups)


GRAPH_CALLS = 20  # calls captured in one CUDA graph for the device time


def time_us(fn) -> tuple[float, float | None]:
    """``(call, graph)`` microseconds of ``fn()``: the ``do_bench`` median of a call from Python and
    the device time of one call in a CUDA graph (:mod:`hwlab.kernels.timing`; ``None`` where
    capture fails)."""
    from hwlab.kernels.timing import graph_us, median_ms

    return 1e3 * median_ms(fn), graph_us([fn] * GRAPH_CALLS)


def fp16_times(layers: dict, device) -> dict:
    """``(N, K) -> (call, graph)`` microseconds of torch's float16 ``linear`` (cuBLAS, no bias) at
    :data:`TIME_ROWS` rows (:func:`time_us`)."""
    import torch

    times = {}
    for (n, k), names in shape_groups(layers).items():
        w = torch.from_numpy(layers[names[0]]).to(device, torch.float16)
        x = torch.randn(TIME_ROWS, k, device=device, dtype=torch.float16)
        times[(n, k)] = time_us(lambda x=x, w=w: torch.nn.functional.linear(x, w))
    return times


def embedding_fields(variant, layers: dict, biases: dict, device, embed) -> dict:
    """``cosine_gpu_mean`` and ``cosine_gpu_min`` of the encoder with every linear layer a
    :class:`~hwlab.kernels.QuantLinear` of ``variant`` (module docstring); ``embed(linears=...)``
    returns each sentence's cosine to the float32 embedding. Every layer shape is also run once at
    :data:`TIME_ROWS` rows, so the kernels :func:`timing_rows` times are compiled (in the worker
    processes, in parallel)."""
    import torch

    from hwlab.kernels import QuantLinear

    modules = {name: QuantLinear(quantize(w, variant.format, variant.group_size).to(device),
                                 torch.from_numpy(biases[name]).to(device, torch.float16))
               for name, w in layers.items()}
    cosine = embed(linears={name: _on_gpu(module, device) for name, module in modules.items()})
    for (_, k), names in shape_groups(layers).items():
        modules[names[0]](torch.zeros(TIME_ROWS, k, device=device, dtype=torch.float16))
    torch.cuda.synchronize(device)
    return {"cosine_gpu_mean": float(np.mean(cosine)), "cosine_gpu_min": float(np.min(cosine))}


def _on_gpu(module, device):
    """``x [tokens, in]`` float32 numpy -> ``module(x)`` float32 numpy, through float16 on ``device``."""
    import torch

    def layer(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = module(torch.from_numpy(np.ascontiguousarray(x)).to(device, torch.float16))
        return y.float().cpu().numpy()

    return layer


def timing_rows(variant, layers: dict, device, fp16_us: dict, model: str | None) -> list[dict]:
    """One row per layer shape of ``variant``: :func:`hwlab.kernels.matmul` measured at
    :data:`TIME_ROWS` rows, cuBLAS float16 (``fp16_us``, from :func:`fp16_times`) and the GPU
    model's prediction (``model``: a :mod:`hwlab.sim.gpu` preset, or ``None``)."""
    import torch

    from hwlab.kernels import matmul
    from hwlab.kernels.dispatch import launch_for

    rows = []
    for (n, k), names in shape_groups(layers).items():
        weight = quantize(layers[names[0]], variant.format, variant.group_size).to(device)
        x = torch.randn(TIME_ROWS, k, device=device, dtype=torch.float16)
        measured, graph = time_us(lambda x=x, weight=weight: matmul(x, weight))
        launch = launch_for(weight, TIME_ROWS, "float16")
        fp16, fp16_graph = fp16_us[(n, k)]
        row = {"format": variant.format, "group_size": variant.group_size, "shape": [n, k], "layers": len(names),
               "m": TIME_ROWS, "kernel": launch.kernel, "split": launch.split, "measured_us": measured,
               "measured_graph_us": graph, "fp16_us": fp16, "fp16_graph_us": fp16_graph,
               "speedup_over_fp16": fp16 / measured, "gpu_model": model,
               **_prediction(model, variant.format, weight, launch, device)}
        rows.append(row)
    return rows


def totals(rows: list[dict]) -> dict:
    """Model totals of one variant's :func:`timing_rows` (each shape times the layers that have it), microseconds."""
    pairs = {"gpu_us": "measured_us", "gpu_graph_us": "measured_graph_us", "gpu_fp16_us": "fp16_us",
             "gpu_fp16_graph_us": "fp16_graph_us", "gpu_predicted_us": "predicted_us",
             "gpu_predicted_graph_us": "predicted_graph_us"}
    return {total: sum(r[key] * r["layers"] for r in rows) for total, key in pairs.items()
            if rows and all(r[key] is not None for r in rows)}


def _prediction(model: str | None, fmt: str, weight, launch, device) -> dict:
    """``predicted_us``, ``predicted_graph_us``, ``predicted_bound`` of :func:`hwlab.sim.gpu.predict`,
    or ``None`` in each and ``predicted_error`` saying why there is no prediction."""
    from hwlab.sim.gpu import predict

    none = {"predicted_us": None, "predicted_graph_us": None, "predicted_bound": None, "predicted_error": None}
    if model is None:
        return {**none, "predicted_error": f"hwlab.sim.gpu has no model of {device_name(device)}"}
    n, k = weight.shape
    try:
        p = predict(model, fmt, TIME_ROWS, k, n, bits_per_weight=weight.bits_per_weight, launch=launch)
    except ValueError as exc:
        return {**none, "predicted_error": str(exc)}
    return {**none, "predicted_us": p.us, "predicted_graph_us": p.graph_us, "predicted_bound": p.bound}
