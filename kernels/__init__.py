"""hwlab.kernels: GPU kernels (Triton) for every hwlab datatype.

``qt.to("cuda")`` moves a quantized tensor's stored arrays to the GPU once
(:class:`DeviceTensor`); :func:`matmul` multiplies by it with a kernel chosen from the tensor's
layout (:func:`explain` says which); :class:`QuantLinear` is a drop-in for ``torch.nn.Linear``
and :func:`quantize_linears` swaps every Linear of a model. Importing this package needs
neither a GPU nor Triton; torch is the ``gpu`` extra.
"""
from .device import DeviceTensor
from .dispatch import choose, dequantize, explain, matmul
from .plan import KernelPlan, PlanError, build_plan
from .reference import reference_matmul

__all__ = ["DeviceTensor", "KernelPlan", "PlanError", "QuantLinear", "build_plan", "choose", "dequantize", "explain",
           "matmul", "quantize_linears", "reference_matmul"]


def __getattr__(name):  # QuantLinear subclasses torch.nn.Module: torch is imported when it is asked for
    if name in ("QuantLinear", "quantize_linears"):
        from . import linear

        return getattr(linear, name)
    raise AttributeError(f"module 'hwlab.kernels' has no attribute {name!r}")
