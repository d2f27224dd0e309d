"""TRIP matmul on the GPU (Agile-Quant): integer activations times int4 per-channel weights, exact.

A :class:`~hwlab.sim.trip.TripLayer` (built by :func:`hwlab.sim.trip.trip_quantize`: per-tensor
activation scale, outlier factors folded into the weights, ``int4`` weights per output channel)
goes to the device once as :class:`TripWeights`: its integer weight codes packed as int4 two's
complement nibbles, eight to an ``int32`` word (element ``k`` of a row at bits ``4 * (k % 8)`` of
word ``k // 8``), and its scales. :func:`trip_accumulate` computes the integer accumulators
``acc[m, n] = sum_k qa[m, k] * qw[n, k]`` exactly in int32 with Triton (``tl.dot`` on int8: the int8
tensor cores) or with CuPy (``__dp4a``, :mod:`hwlab.kernels.cupy_kernels`); both equal
:func:`hwlab.sim.trip.integer_matmul`, the edge simulator's reference, bit for bit.
:func:`trip_matmul` adds the output scale, ``acc * act_scale * weight_scale``, in float32.

int4 activations (``act_bits=4``) travel as int8 values in [-7, 7]: Hopper has no int4 tensor-core
instruction (sm_90 ``wgmma`` takes 8-bit integers; PTX ISA 8.x), so they run the int8 kernel.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from hwlab.formats.packing import pack_codes

NIBBLES = 8  # int4 codes in one int32 word
K_MULTIPLE = 32  # K must be a multiple of this: whole words, and int8 MMA's K step (32 bytes)
ACC_LIMIT = 2**31 - 1  # int32 accumulators: K * max|qa| * max|qw| must stay below this
TRIP_BN, TRIP_BM, TRIP_KS = 128, 16, 256  # rows, batch rows and K elements per program step
TRIP_WARPS = 4  # warps of a program: one warpgroup, the unit of sm_90's wgmma
TRIP_STAGES = 1  # software pipeline depth of the K loop (tl.range num_stages)
# backend="auto" takes the CuPy dp4a kernel up to this many activation rows, Triton's tensor cores above:
# on the H200 (K=8192, N=28672, CUDA graph; bench/results/gpu_kernels_h200_run8.json) dp4a took 42.2 / 89.8 /
# 290.5 us at M = 1 / 4 / 16, the weights-first Triton kernel 56.6 / 60.1 / 62.7 us
CUPY_MAX_M = 1
BACKENDS = ("auto", "triton", "cupy")
WAVES = 2  # programs per SM that split-K aims for at small N


def pack_int4_words(codes: np.ndarray) -> np.ndarray:
    """int32 ``[N, K / 8]`` words of int8 codes ``[N, K]`` in [-8, 7], two's complement nibbles
    (the little-endian field order of :func:`hwlab.formats.packing.pack_codes`)."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.dtype.kind not in "iu":
        raise ValueError(f"codes must be a 2-D integer array, got {codes.dtype} of shape {codes.shape}")
    if codes.size and (codes.min() < -8 or codes.max() > 7):
        raise ValueError(f"int4 codes must lie in [-8, 7], got [{codes.min()}, {codes.max()}]")
    if codes.shape[1] % NIBBLES:
        raise ValueError(f"K={codes.shape[1]} is not a multiple of {NIBBLES}")
    nibbles = (codes.astype(np.int64) & 0xF).astype(np.uint8)
    return pack_codes(nibbles, 4).view(np.int32)


@dataclasses.dataclass(frozen=True)
class TripWeights:
    """A TRIP layer on a torch device: ``words`` int32 ``[N, K / 8]``, ``scales`` float32 ``[N]``
    (per output channel), ``alpha`` float32 ``[K]`` (outlier factors, powers of two),
    ``act_scale`` (per tensor), ``act_max`` (the largest activation code: 127 or 7) and ``shape``
    ``(N, K)``."""

    words: object
    scales: object
    alpha: object
    act_scale: float
    act_max: int
    shape: tuple

    @classmethod
    def from_layer(cls, layer, device) -> "TripWeights":
        """Pack ``layer`` (4-bit weights, K a multiple of 32) and copy it to ``device`` once."""
        import torch

        from hwlab.sim.trip import TripLayer

        if not isinstance(layer, TripLayer):
            raise TypeError(f"from_layer takes a TripLayer (hwlab.sim.trip.trip_quantize(w, calibration)), "
                            f"got {type(layer).__name__}")
        n, k = layer.shape
        if layer.weight_bits != 4:
            raise ValueError(f"the GPU TRIP kernels take 4-bit weights, the layer has {layer.weight_bits}-bit weights")
        if k % K_MULTIPLE:
            raise ValueError(f"the GPU TRIP kernels need K to be a multiple of {K_MULTIPLE}, got K={k}")
        if k * layer.act_max * 8 > ACC_LIMIT:
            raise ValueError(f"K={k} could overflow the int32 accumulators ({k} * {layer.act_max} * 8 > 2**31 - 1)")
        device = torch.device(device)
        words = torch.from_numpy(pack_int4_words(layer.weight_codes)).to(device)
        scales = torch.from_numpy(layer.weight_scales.astype(np.float32)).to(device)
        alpha = torch.from_numpy(layer.alpha.astype(np.float32)).to(device)
        return cls(words, scales, alpha, float(layer.act_scale), int(layer.act_max), (n, k))

    @property
    def nbytes(self) -> int:
        """Bytes a matmul streams for the weights: packed words and scales."""
        return int(self.words.numel() * 4 + self.scales.numel() * 4)

    def quantize_activations(self, x):
        """int8 codes of float activations ``x [M, K]`` on the device: ``rint(x / alpha / act_scale)``
        saturated at ``act_max`` (float32 arithmetic; :meth:`TripLayer.quantize_activations` is the
        float64 reference, equal except where a quotient lies within float32 rounding of a tie)."""
        import torch

        q = torch.round(x.float() / self.alpha / self.act_scale)
        if not bool(torch.isfinite(x).all()):  # NaN cast to int8 is no code (it came out as 0)
            raise ValueError("x contains non-finite values (NaN or infinity); TRIP quantizes finite activations")
        return q.clamp_(-self.act_max, self.act_max).to(torch.int8)


def _check(x_codes, w: TripWeights):
    import torch

    if not isinstance(w, TripWeights):
        raise TypeError(f"expected TripWeights (TripWeights.from_layer), got {type(w).__name__}")
    if not isinstance(x_codes, torch.Tensor) or x_codes.dtype != torch.int8 or x_codes.dim() != 2:
        raise ValueError(f"x_codes must be a 2-D torch.int8 tensor of activation codes, got "
                         f"{getattr(x_codes, 'dtype', type(x_codes).__name__)} with shape {tuple(getattr(x_codes, 'shape', ()))}")
    if x_codes.shape[1] != w.shape[1]:
        raise ValueError(f"x_codes has K={x_codes.shape[1]}, the layer takes K={w.shape[1]}")
    if x_codes.device != w.words.device:
        raise ValueError(f"x_codes is on {x_codes.device}, the weights on {w.words.device}")
    if x_codes.shape[0] == 0:
        raise ValueError("x_codes has no rows")
    return x_codes.contiguous()


def trip_launch(m: int, n: int, k: int, sms: int = 1):
    """The :class:`~hwlab.kernels.dispatch.Launch` of the Triton TRIP kernel (``trip_int8``) for
    ``[m, k] x [n, k]^T`` on ``sms`` multiprocessors: split along K so that about ``WAVES``
    programs run per SM."""
    from .dispatch import Launch

    steps = math.ceil(k / TRIP_KS)
    tiles = math.ceil(n / TRIP_BN) * math.ceil(m / TRIP_BM)
    split = max(1, min(steps, (WAVES * sms) // tiles))
    per = math.ceil(steps / split)
    return Launch("trip_int8", TRIP_BN, TRIP_BM, TRIP_KS, math.ceil(steps / per), per, "int", TRIP_WARPS, TRIP_STAGES,
                  weights_first=True)


def cupy_available(device) -> bool:
    """Whether the CuPy kernels can run on torch ``device`` (a CUDA device and an importable CuPy)."""
    if device.type != "cuda":
        return False
    try:
        import cupy  # noqa: F401  (the gpu extra)
    except ImportError:
        return False
    return True


def trip_accumulate(x_codes, w: TripWeights, *, backend: str = "auto"):
    """Exact int32 accumulators ``[M, N]`` of int8 activation codes ``x_codes [M, K]`` times the layer's
    int4 weights, by the ``triton`` kernel (int8 tensor cores) or the ``cupy`` one (``__dp4a``);
    ``auto``: CuPy up to :data:`CUPY_MAX_M` rows where it can run, else Triton."""
    import torch

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    x_codes = _check(x_codes, w)
    if backend == "auto":
        backend = "cupy" if x_codes.shape[0] <= CUPY_MAX_M and cupy_available(x_codes.device) else "triton"
    if backend == "cupy":
        from .cupy_kernels import trip_matmul_cupy

        return trip_matmul_cupy(x_codes, w.words)
    from .dispatch import check_runnable, device_sms, interpreted

    check_runnable(x_codes.device)
    m, k = x_codes.shape
    n = w.shape[0]
    launch = trip_launch(m, n, k, device_sms(x_codes.device))
    split, steps = launch.split, launch.steps
    acc = (torch.zeros if split > 1 else torch.empty)((m, n), dtype=torch.int32, device=x_codes.device)
    grid = (math.ceil(n / TRIP_BN), math.ceil(m / TRIP_BM), split)
    from . import trip_kernels

    trip_kernels.trip_int8_kernel[grid](x_codes, w.words.view(torch.int8), acc, m, n, k, steps, BM=TRIP_BM, BN=TRIP_BN,
                                        KS=TRIP_KS, ATOMIC=split > 1, PTX=not interpreted(), STAGES=TRIP_STAGES,
                                        num_warps=TRIP_WARPS)
    return acc


def trip_matmul(x_codes, w: TripWeights, *, backend: str = "auto"):
    """float32 ``[M, N]`` outputs ``acc * act_scale * weight_scale`` of :func:`trip_accumulate`."""
    acc = trip_accumulate(x_codes, w, backend=backend)
    return acc.float() * w.act_scale * w.scales[None, :]
