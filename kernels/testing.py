"""Helpers for kernel tests and benchmarks: large tensors from small quantizations, weight copies, tolerances."""
from __future__ import annotations

import dataclasses

import numpy as np

from .device import DeviceTensor

UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
FAST_DECODE_ERROR = 2.0**-11  # gemv_words' float32 placement: a product may lose 2**-12 of |x| * scale
HALF_UNIT_ROUNDOFF = 2.0**-11  # IEEE binary16: the fp16 pair path's products and partial sums


def repeat_rows(qt, rows: int):
    """``qt`` with its rows repeated to ``rows`` (a multiple of its own): a benchmark-sized layer
    quantized for real, whose timing does not depend on the values. Per-row arrays repeat; the
    tensor-level ones (NVFP4's tensor scale) stay; NF4 double quantization's blocks repeat with them."""
    own = qt.shape[0]
    if rows % own:
        raise ValueError(f"rows={rows} is not a multiple of the tensor's {own} rows")
    arrays = {name: np.tile(a, (rows // own, 1)) if a.shape[0] == own or qt.layout[name].applies_to == "scale_block"
              else a for name, a in qt.arrays.items()}
    return dataclasses.replace(qt, shape=(rows, qt.shape[1]), arrays=arrays)


def clone(dev: DeviceTensor) -> DeviceTensor:
    """Another copy of the stored arrays on the same device (tables shared: they are not weights)."""
    return DeviceTensor(dev.source, dev.plan, {name: t.clone() for name, t in dev.arrays.items()}, dev.tables)


def matmul_tolerance(x, weights, scale_bound, reference, half_terms: int = 0):
    """Elementwise bound on ``|matmul(x, W) - reference|`` (torch float64 tensors on one device).

    One rounding of the output and of a table value to x's dtype, relative to ``|y| + |x| @ |W|^T``,
    plus the fast decode's placement error relative to ``|x| @ scale_bound^T`` (``scale_bound``:
    per-element scale times the largest table magnitude), plus, for the fp16 pair path, ``half_terms``
    fp16 roundings relative to ``|x| @ |W|^T`` (:func:`half_terms`: a product and the additions of a
    half register's partial sum each round once)."""
    u = UNIT_ROUNDOFF[str(x.dtype).removeprefix("torch.")]
    ax = x.double().abs()
    spread = ax @ weights.abs().T
    return ((2 * u + half_terms * HALF_UNIT_ROUNDOFF) * spread + 2 * u * reference.abs()
            + FAST_DECODE_ERROR * (ax @ scale_bound.T) + 1e-30)


def half_terms(plan, m: int) -> int:
    """fp16 roundings a product may meet on the fp16 pair path of ``gemv_words`` (M = 1; 0 off it):
    the products a half register sums (:data:`~hwlab.kernels.half_pairs.WORDS` words of 16 / bits
    codes each), one rounding each for the product and every addition."""
    from .dispatch import half_pairs_apply
    from .half_pairs import WORDS

    return WORDS * 16 // plan.bits if m == 1 and half_pairs_apply(plan, plan.decode) else 0


def scale_bound(qt) -> np.ndarray:
    """float64 ``[N, K]``: per-element |scale| times the largest table magnitude (at least 1), what the
    fast decode's placement error scales with (the ``scale_bound`` of :func:`matmul_tolerance`)."""
    u = qt.unpacked()
    largest = max(1.0, np.abs(u.values[np.isfinite(u.values)]).max())
    return np.abs(u.expand(u.scales))[:, :qt.shape[1]] * largest


def worst_error(got, x, qt) -> float:
    """The largest ``|got - reference| / tolerance`` of a kernel's output ``got`` for ``x @ W^T``
    (<= 1 passes; :func:`matmul_tolerance` against the float64 reference of the unpacked view)."""
    import torch

    from .plan import build_plan
    from .reference import reference_matmul, reference_weights

    ref = torch.from_numpy(reference_matmul(x, qt))
    rows = int(np.prod(x.shape[:-1]))
    tol = matmul_tolerance(x.detach().cpu(), torch.from_numpy(reference_weights(qt)),
                           torch.from_numpy(scale_bound(qt)), ref, half_terms(build_plan(qt), rows))
    return float(((got.detach().double().cpu() - ref).abs() / tol).max())


def cupy_gpu_missing() -> str | None:
    """Why the CuPy kernels cannot run here (no CUDA GPU, CuPy not installed), or None: a skip reason."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    try:
        import cupy  # noqa: F401
    except ImportError:
        from .cupy_kernels import INSTALL_HINT

        return f"CuPy is not installed ({INSTALL_HINT})"
    return None
