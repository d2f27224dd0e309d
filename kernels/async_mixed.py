"""``mixed_2_4`` matmul with asynchronous dequantization, beside the synchronous two-stage kernels.

:func:`mixed_matmul` ``(x, dt, mode=...)`` multiplies by a ``mixed_2_4`` :class:`DeviceTensor`:

* ``mode="async"``: the kernels of :mod:`hwlab.kernels.mixed_async_kernels` (every loop loads its
  next group while it scales and decodes the current one, and decodes each code once);
* ``mode="cupy"``: the same asynchronous GEMV in CUDA C++ with ``cp.async`` double buffering
  (:func:`hwlab.kernels.cupy_kernels.mixed_gemv_cupy`, M = 1);
* ``mode="sync"``: :func:`hwlab.kernels.matmul`, the kernels issue's synchronous two-stage kernel.

The asynchronous kernels take the format's 4-bit and 2-bit streams (as the layout names them)
and power-of-two group sizes (the format allows any multiple of 64).
"""
from __future__ import annotations

import math

from .device import DeviceTensor

MODES = ("async", "sync", "cupy")
GEMV_BN, TILE_BN, TILE_BM = 128, 64, 16  # rows (and activation rows) per program
# rows per tile program where the layer has at least one row tile of them per SM (no split-K needed to fill
# the GPU): H200 run 9, K=8192 N=28672 M=16, 173.4 against 183.1 us in a graph for 64 rows (4096 x 4096: 64 rows
# 15.7, 128 rows 18.9 us)
TILE_BN_LARGE = 128
# the tile kernel's decoded weights as the MMA's first operand (WFIRST): H200 run 9, K=8192 N=28672 M=16,
# 183.1 against 313.8 us in a graph (64 rows)
TILE_WEIGHTS_FIRST = True
WAVES = 4  # programs per SM that split-K aims for (as hwlab.kernels.dispatch)
# ... for the M = 1 GEMV: more, shorter programs along K keep more loads in flight (its L1/TEX pipe is 85% busy
# at 20% occupancy, bench/results/ncu_mixed_async_m1_h200_run9.txt). H200 run 9, K=8192 N=28672, CUDA graph:
# 87.8 us at 16 against 95.1 at 4 and 91.7 at 8
GEMV_WAVES = 16
ASYNC_WARPS = 4
ASYNC_KERNELS = ("mixed_gemv_async", "mixed_tile_async")
STREAM_BITS = {"codes4": 4, "codes2": 2, "zeros4": 4, "zeros2": 2}  # what the kernels decode


def _torch():
    import torch

    return torch


def _check_mixed(dt, asynchronous: bool = True) -> DeviceTensor:
    from .dispatch import check_tensor

    dt = check_tensor(dt)
    if dt.plan.packing != "mixed":
        raise ValueError(f"mixed_matmul takes a mixed_2_4 tensor (mixed packing), got {dt.format_name!r} "
                         f"({dt.plan.packing} packing); use hwlab.kernels.matmul")
    g = dt.group_size
    if not asynchronous:
        return dt
    if g & (g - 1):
        raise ValueError(f"the asynchronous kernels take power-of-two group sizes, got {g}; "
                         "hwlab.kernels.matmul runs any (mode='sync')")
    names = stream_names(dt)
    bits = {role: dt.layout[names[role]].bits for role in STREAM_BITS}
    if bits != STREAM_BITS:
        raise ValueError(f"the asynchronous kernels decode 4-bit and 2-bit streams, the layout has {bits}")
    return dt


def stream_names(dt: DeviceTensor) -> dict:
    """Array names of the wide (member 0) and narrow (member 1) streams, from the layout."""
    by = {(lay.role, lay.member): name for name, lay in dt.layout.items()}
    return dict(codes4=by[("codes", 0)], codes2=by[("codes", 1)], zeros4=by[("zeros", 0)], zeros2=by[("zeros", 1)],
                flags=by[("group_bits", None)], scales=by[("scales", None)], rows=by[("row_scales", None)])


def kernel_pointer(t, fallback):
    """``t``, or ``fallback`` where ``t`` holds nothing (a kernel pointer is never to nothing)."""
    return t if t.numel() else fallback


def _operands(dt: DeviceTensor) -> tuple:
    names = stream_names(dt)
    a = {role: dt.arrays[name] for role, name in names.items()}
    fallback = a["flags"]  # int32 words, never empty
    ptrs = {role: kernel_pointer(t, fallback) for role, t in a.items()}
    widths = {role: a[role].shape[1] for role in ("codes4", "codes2", "zeros4", "zeros2", "flags")}
    return ptrs, widths


def async_launch(dt: DeviceTensor, m: int, sms: int = 1):
    """The :class:`~hwlab.kernels.dispatch.Launch` of the asynchronous kernel for ``m`` activation rows
    on ``sms`` multiprocessors: ``mixed_gemv_async`` (M = 1) or ``mixed_tile_async`` (``TILE_BN_LARGE`` rows
    where the layer has a row tile of them per SM, its weights first: ``TILE_WEIGHTS_FIRST``), split along K
    so that about ``GEMV_WAVES`` (M = 1) or ``WAVES`` programs run per SM."""
    from .dispatch import Launch

    n, groups = dt.shape[0], dt.plan.groups
    kernel, bn, bm = ("mixed_gemv_async", GEMV_BN, 1) if m == 1 else ("mixed_tile_async", TILE_BN, TILE_BM)
    if m > 1 and math.ceil(n / TILE_BN_LARGE) >= sms:
        bn = TILE_BN_LARGE
    tiles = math.ceil(n / bn) * math.ceil(m / bm)
    split = max(1, min(groups, ((GEMV_WAVES if m == 1 else WAVES) * sms) // tiles))
    steps = math.ceil(groups / split)  # groups a program
    return Launch(kernel, bn, bm, dt.group_size, math.ceil(groups / steps), steps, "int", ASYNC_WARPS,
                  weights_first=m > 1 and TILE_WEIGHTS_FIRST)


def mixed_matmul(x, dt, *, mode: str = "async", out=None):
    """``y = x @ W^T`` for a ``mixed_2_4`` device tensor: ``x`` fp16 or bf16 ``[..., K]`` on its device;
    ``y`` in x's dtype (saturated at its largest finite value; a NaN in x stays NaN), or written
    into ``out``.

    As :func:`hwlab.kernels.matmul` does, the first call for a shape, dtype and device of ``x``
    checks everything and prepares the launch (kept on ``dt``); later calls launch the compiled
    kernel directly, split-K included (one launch: the last program of a tile sums and stores)."""
    from .dispatch import Prepared, check_runnable, device_sms, matmul

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "sync":
        return matmul(x, _check_mixed(dt, asynchronous=False), out=out)
    dt = _check_mixed(dt)
    if mode == "cupy":
        from .cupy_kernels import mixed_gemv_cupy

        return mixed_gemv_cupy(x, dt, out=out)
    torch = _torch()
    n, k = dt.shape
    key = ("async", getattr(x, "shape", None), getattr(x, "dtype", None), getattr(x, "device", None))
    prepared = dt.prepared.get(key)
    if prepared is None:
        if not isinstance(x, torch.Tensor) or x.shape[-1:] != (k,) or x.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"x must be a float16 or bfloat16 torch tensor [..., {k}], got "
                             f"{getattr(x, 'dtype', type(x).__name__)} with shape {tuple(getattr(x, 'shape', ()))}")
        if x.device != dt.device:
            raise ValueError(f"x is on {x.device}, the weights on {dt.device}")
        check_runnable(x.device)
        m = math.prod(x.shape[:-1])
        launch = async_launch(dt, m, device_sms(x.device)) if m else None
        prepared = dt.prepared[key] = Prepared(dt, m, x.dtype, launch, (*x.shape[:-1], n))
    if out is not None and (out.shape != prepared.out_shape or out.dtype != x.dtype or out.device != x.device
                            or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous {x.dtype} tensor {prepared.out_shape} on {x.device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    y = out if out is not None else torch.empty(prepared.out_shape, dtype=x.dtype, device=x.device)
    if prepared.m:
        prepared(x.reshape(-1, k).contiguous(), y.view(prepared.m, n))
    return y


def launch_arguments(dt: DeviceTensor, m: int, x_dtype: str, launch) -> tuple:
    """``(kernel, grid, positional arguments, keyword arguments)`` of an asynchronous ``launch``, as
    :class:`hwlab.kernels.dispatch.Prepared` takes them (``x``, ``out``, workspace and counts None)."""
    from .dispatch import HALF_XCHUNK, OUT_MAX, interpreted
    from .half_pairs import half_top, half_word_ptx

    n, k = dt.shape
    ptrs, widths = _operands(dt)
    groups, g, bn, bm, split = dt.plan.groups, dt.group_size, launch.bn, launch.bm, launch.split
    kwargs = dict(G=g, BN=bn, ATOMIC=split > 1, OUT_MAX=OUT_MAX[x_dtype], num_warps=launch.warps)
    kern = _kernels_async()
    pointers = [None, ptrs["codes4"], ptrs["codes2"], ptrs["flags"], ptrs["zeros4"], ptrs["zeros2"], ptrs["scales"],
                ptrs["rows"], None, None, None]
    strides = [widths["codes4"], widths["codes2"], widths["flags"], widths["zeros4"], widths["zeros2"], launch.steps]
    if launch.kernel == "mixed_gemv_async":
        half = dict(HALF_TOP=half_top(4), HALF_PTX="" if interpreted() else half_word_ptx(4, 0),
                    HALF_XCHUNK=HALF_XCHUNK, HALF_XCHUNKS=math.ceil(groups * g / HALF_XCHUNK))
        return (kern.mixed_gemv_async_kernel, (math.ceil(n / bn), split, 1), pointers + [n, k, groups, *strides],
                dict(kwargs, EVEN=k == groups * g, **half))
    return (kern.mixed_tile_async_kernel, (math.ceil(n / bn), math.ceil(m / bm), split),
            pointers + [m, n, k, groups, *strides], dict(kwargs, BM=bm, EXACT_DOT=interpreted(),
                                                          WFIRST=launch.weights_first))


def _kernels_async():
    from . import mixed_async_kernels  # triton only when a kernel runs

    return mixed_async_kernels
