"""TRIP (Agile-Quant, AAAI 2024): integer activations per tensor, outlier channels folded into the weights.

Activations get one scale per tensor; the channels whose calibration magnitude stands far above
the others get a factor ``alpha_c`` (a power of two, so that dividing by it is exact) that is
folded into the weights: ``x @ W^T == (x / alpha) @ (W * alpha)^T``. The engine then needs only
per-tensor activation and per-channel weight quantization (Agile-Quant, sec. 3.2, "two-refine
improved by pruning": here the refinement is the outlier factor; the pruning of the paper's
search is not needed because every candidate factor is a power of two chosen in closed form).

:func:`trip_quantize` builds a :class:`TripLayer` from float weights and calibration activations;
the weights go through hwlab's own ``int4`` (or ``int8``) format at channel granularity, read back
through the unpacked view. :func:`integer_matmul` is the plain integer reference every SIMD and
GPU kernel is held to: ``acc[m, n] = sum_k qa[m, k] * qw[n, k]`` in int64.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from hwlab.formats import quantize

ACT_BITS = (4, 8)
WEIGHT_FORMATS = {4: "int4", 8: "int8"}
OUTLIER_RATIO = 8.0  # a channel is an outlier when its calibration absmax exceeds this times the median


class TripError(ValueError):
    """Inputs TRIP cannot quantize (shapes, bit widths, non-finite values)."""


@dataclasses.dataclass(frozen=True)
class TripLayer:
    """A linear layer quantized for TRIP.

    ``weight_codes``: int8 ``[N, K]`` signed integers of the folded weights; ``weight_scales``:
    float64 ``[N]`` per output channel; ``alpha``: float64 ``[K]`` per input channel (powers of
    two, 1 for ordinary channels); ``act_scale``: the per-tensor activation scale (of ``x / alpha``);
    ``act_bits`` (4 or 8) and ``weight_bits`` (4 or 8).
    """

    weight_codes: np.ndarray
    weight_scales: np.ndarray
    alpha: np.ndarray
    act_scale: float
    act_bits: int
    weight_bits: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight_codes.shape

    @property
    def act_max(self) -> int:
        """The largest activation code magnitude (symmetric: 7 or 127)."""
        return 2 ** (self.act_bits - 1) - 1

    def quantize_activations(self, x) -> np.ndarray:
        """int8 codes ``[M, K]`` of ``x / alpha`` at the per-tensor scale (round half to even, saturating)."""
        x = _matrix(x, "x")
        if x.shape[1] != self.shape[1]:
            raise TripError(f"x has {x.shape[1]} columns, the layer takes K={self.shape[1]}")
        q = np.rint(x / self.alpha / self.act_scale)
        return np.clip(q, -self.act_max, self.act_max).astype(np.int8)

    def output(self, acc: np.ndarray) -> np.ndarray:
        """float64 outputs from integer accumulators ``[M, N]``: ``acc * act_scale * weight_scale``."""
        return np.asarray(acc, dtype=np.float64) * self.act_scale * self.weight_scales[None, :]

    def __call__(self, x) -> np.ndarray:
        """The layer's float64 output for float activations ``x``, through the integer reference."""
        return self.output(integer_matmul(self.quantize_activations(x), self.weight_codes))


def _matrix(a, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or 0 in a.shape:
        raise TripError(f"{what} must be a non-empty 2-D array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise TripError(f"{what} contains non-finite values")
    return a


def outlier_factors(calibration: np.ndarray, ratio: float = OUTLIER_RATIO) -> np.ndarray:
    """Per-channel powers of two ``alpha`` that bring every channel's calibration absmax down to at
    most ``ratio`` times the median channel's (1 for the channels already there)."""
    absmax = np.abs(calibration).max(axis=0)
    reference = np.median(absmax)
    if reference <= 0:
        return np.ones_like(absmax)
    excess = absmax / (ratio * reference)
    return np.where(excess > 1, np.exp2(np.ceil(np.log2(np.maximum(excess, 1)))), 1.0)


def trip_quantize(w, calibration, act_bits: int = 8, weight_bits: int = 4, *, ratio: float = OUTLIER_RATIO) -> TripLayer:
    """Quantize a float ``[N, K]`` weight for TRIP with calibration activations ``[M, K]``.

    The activation scale is the absmax of ``calibration / alpha`` over ``2**(act_bits-1) - 1``; the
    weights ``W * alpha`` are quantized with hwlab's ``int4``/``int8`` at channel granularity."""
    if act_bits not in ACT_BITS or weight_bits not in WEIGHT_FORMATS:
        raise TripError(f"act_bits must be one of {ACT_BITS} and weight_bits one of {tuple(WEIGHT_FORMATS)}, "
                        f"got {act_bits} and {weight_bits}")
    w, calibration = _matrix(w, "w"), _matrix(calibration, "calibration")
    if calibration.shape[1] != w.shape[1]:
        raise TripError(f"calibration has {calibration.shape[1]} channels, the weights K={w.shape[1]}")
    if not ratio > 1:
        raise TripError(f"ratio must be > 1, got {ratio}")
    alpha = outlier_factors(calibration, ratio)
    folded = calibration / alpha
    peak = np.abs(folded).max()
    act_scale = float(peak / (2 ** (act_bits - 1) - 1)) if peak > 0 else 1.0
    qt = quantize((w * alpha).astype(np.float32), WEIGHT_FORMATS[weight_bits], granularity="channel")
    u = qt.unpacked()
    codes = u.values[0][u.codes][:, :w.shape[1]]  # the integer value of every code
    return TripLayer(codes.astype(np.int8), u.scales[:, 0].copy(), alpha, act_scale, act_bits, weight_bits)


def integer_matmul(qa: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """``acc[m, n] = sum_k qa[m, k] * qw[n, k]`` exactly, int64 (the reference of every kernel)."""
    qa, qw = np.asarray(qa), np.asarray(qw)
    if qa.dtype.kind not in "iu" or qw.dtype.kind not in "iu" or qa.ndim != 2 or qw.ndim != 2:
        raise TripError("integer_matmul takes 2-D integer arrays")
    if qa.shape[1] != qw.shape[1]:
        raise TripError(f"activations have K={qa.shape[1]}, weights K={qw.shape[1]}")
    return qa.astype(np.int64) @ qw.astype(np.int64).T
