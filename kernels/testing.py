"""Helpers for kernel tests and benchmarks: large tensors from small quantizations, weight copies, tolerances."""
from __future__ import annotations

import dataclasses

import numpy as np

from .device import DeviceTensor

UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}
FAST_DECODE_ERROR = 2.0**-11  # gemv_words' float32 placement: a product may lose 2**-12 of |x| * scale
HALF_UNIT_ROUNDOFF = 2.0**-11  # IEEE binary16: the fp16 pair path's products and partial sums
OUTPUT_FLOOR = {"float16": 2.0**-25, "bfloat16": 2.0**-134}  # half the smallest subnormal (IEEE binary16; bfloat16)


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


def matmul_tolerance(x, weights, scale_bound, reference, half_terms: int = 0, subnormal=None):
    """Elementwise bound on ``|matmul(x, W) - reference|`` (torch float64 tensors on one device).

    One rounding of the output and of a table value to x's dtype, relative to ``|y| + |x| @ |W|^T`` (an output
    below the dtype's smallest normal rounds to its subnormal grid: :data:`OUTPUT_FLOOR` more),
    plus the fast decode's placement error relative to ``|x| @ scale_bound^T`` (``scale_bound``:
    per-element scale times the largest table magnitude), plus, for the fp16 pair path, ``half_terms``
    fp16 roundings relative to ``|x| @ |W|^T`` (:func:`half_terms`: a product and the additions of a
    half register's partial sum each round once). ``subnormal``: the subnormal decode's ``(spread, floor)``
    (:func:`subnormal_bounds`), whose roundings are relative to ``spread`` instead, plus ``floor``."""
    dtype = str(x.dtype).removeprefix("torch.")
    u = UNIT_ROUNDOFF[dtype]
    ax = x.double().abs()
    spread = ax @ weights.abs().T
    half_spread, floor = (spread, 0.0) if subnormal is None else subnormal
    return (2 * u * spread + half_terms * HALF_UNIT_ROUNDOFF * half_spread + 2 * u * reference.abs()
            + FAST_DECODE_ERROR * (ax @ scale_bound.T) + floor + OUTPUT_FLOOR[dtype] + 1e-30)


def subnormal_bounds(x, qt, plan, weights):
    """``(spread, floor)`` of the subnormal decode (:func:`~hwlab.kernels.half_pairs.subnormal_pair_constants`;
    torch float64, ``[M, N]``; ``plan`` the tensor's kernel plan, ``weights`` its float64 reference weights).
    Its fp16 products are of the unsigned codes ``q + flip`` (with zero points: the codes, at most
    ``2**bits - 1``), so they round relative to ``spread = |x| @ (|W| + c * unit)^T`` (``unit``: each element's
    scale times the plan's decode scale; ``c``: ``flip``, or ``2**bits - 1`` with zero points). Products below
    fp16's smallest normal round to its subnormal grid: at most half of ``2**-24`` each, ``1 / (2 xs)`` in x's
    units, and as much again for x' rounded to fp16 (``xs``: the power of two of ``half_scale``,
    ``SUBNORMAL_TOP``), so ``floor = sum_k unit / xs`` per row."""
    import torch

    from .half_pairs import SUBNORMAL_TOP

    unit = torch.from_numpy(element_scales(qt) * plan.decode_scale * abs(plan.tensor_scale))
    c = (1 << plan.bits) - 1 if plan.zero_bits else plan.flip
    ax = x.double().abs()
    spread = ax @ (weights.abs() + c * unit).T
    finite = torch.where(torch.isfinite(ax), ax, 0.0).amax(dim=-1, keepdim=True).float()
    biased = (finite.view(torch.int32) >> 23) & 0xFF  # as half_scale reads it: x's largest finite |x| in float32
    k = torch.clamp(126 + SUBNORMAL_TOP - biased, max=126).double()
    return spread, torch.exp2(-k) * unit.sum(dim=1)


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
    return element_scales(qt) * largest


def element_scales(qt) -> np.ndarray:
    """float64 ``[N, K]``: each element's |scale| (its group's, through the unpacked view)."""
    u = qt.unpacked()
    return np.abs(u.expand(u.scales))[:, :qt.shape[1]]


def worst_error(got, x, qt, launch=None) -> float:
    """The largest ``|got - reference| / tolerance`` of a kernel's output ``got`` for ``x @ W^T``
    (<= 1 passes; :func:`matmul_tolerance` against the float64 reference of the unpacked view; 0 for no rows) made
    by ``launch``: by default the one :func:`~hwlab.kernels.dispatch.choose` takes now (pass the launch that ran
    where a dispatch flag changed after the tensor's first call with this x shape)."""
    import torch

    from .dispatch import choose
    from .plan import build_plan
    from .reference import reference_matmul, reference_weights

    ref = torch.from_numpy(reference_matmul(x, qt))
    rows = int(np.prod(x.shape[:-1]))
    if rows == 0:
        return 0.0
    plan = build_plan(qt)
    launch = choose(plan, rows) if launch is None else launch
    weights = torch.from_numpy(reference_weights(qt))
    x = x.detach().cpu()
    subnormal = subnormal_bounds(x, qt, plan, weights) if launch.subnormal else None
    tol = matmul_tolerance(x, weights, torch.from_numpy(scale_bound(qt)), ref, half_terms(plan, rows), subnormal)
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
