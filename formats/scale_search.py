"""The scale search pipeline every scaled scheme shares: candidates, storable scales, winners.

A scheme proposes candidate *ideal* scales for every group (one per member and clipping ratio
for the scaled formats and ``mixed_2_4``, one per searched ``alpha`` for ``olive4``);
:class:`ScaleCandidates` makes them storable (:func:`bounded_scales`), rounds them to the scale
dtype and decodes them, so every candidate is judged under the scale it would really store; the
scheme's rounding search picks one candidate per group, and :meth:`ScaleCandidates.winners`
returns the stored scales of the winners.

``scale_search="absmax"`` proposes the absmax (or affine min/max, or absmean) scale;
``"mse"`` also the same scale shrunk by each of ``clip_ratios`` and keeps the least squared
error (ANT, OliVe and LLM-FP4 search their ranges in the same spirit).
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from .group_kernel import group_stats
from .scales import StoredScales

SCALE_SEARCHES = ("absmax", "mse")
WIDEST_SCALE_DTYPES = ("fp32", "bf16", "e8m0")  # nothing wider to suggest when these overflow
# Clipping ratios of the MSE scale search: 1.0 down to 0.5 in steps of 0.05 (1.0 first, so an
# absmax scale wins ties).
DEFAULT_CLIP_RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))


def check_clip_ratios(ratios) -> None:
    """``clip_ratios`` must be a non-empty sequence of numbers in (0, 1]."""
    if not (isinstance(ratios, (tuple, list)) and ratios
            and all(isinstance(r, numbers.Real) and not isinstance(r, bool) and 0 < r <= 1 for r in ratios)):
        raise ValueError(f"clip_ratios must be a non-empty sequence of numbers in (0, 1], got {ratios!r}")


def check_scale_clamp(clamp) -> None:
    """``scale_clamp`` must be None or ``(low, high)`` with ``0 < low < high``."""
    if clamp is not None and not (isinstance(clamp, (tuple, list)) and len(clamp) == 2 and all(
            isinstance(c, numbers.Real) and not isinstance(c, bool) and math.isfinite(c) for c in clamp)
            and 0 < clamp[0] < clamp[1]):
        raise ValueError(f"scale_clamp must be None or (low, high) with finite 0 < low < high, got {clamp!r}")


def search_ratios(opts: dict) -> tuple:
    """The clipping ratios a search tries: ``clip_ratios`` for ``scale_search="mse"``, else ``(1.0,)``."""
    return tuple(float(r) for r in opts["clip_ratios"]) if opts["scale_search"] == "mse" else (1.0,)


class GroupStats:
    """Per-group statistics of ``x [groups, n]`` (float64, one pass, shared by all candidates)."""

    def __init__(self, x: np.ndarray):
        self.high, self.low, abs_sum = group_stats(x)
        self.absmax = np.maximum(self.high, -self.low)
        self.absmean = abs_sum / x.shape[1]

    def ideal_scale(self, member, ratio: float) -> tuple[np.ndarray, np.ndarray | None]:
        """Unrounded scale of each group (and, for affine formats, the clipped group minimum)."""
        if member.scaling == "absmax":
            return self.absmax * ratio / member.max_abs, None
        if member.scaling == "absmean":
            return self.absmean * ratio, None
        hi, lo = np.maximum(self.high, 0) * ratio, np.minimum(self.low, 0) * ratio
        return (hi - lo) / (2**member.bits - 1), lo


def loss_factor(member) -> float:
    """A group of ``member`` whose ideal scale is below ``loss_factor * s`` loses every weight under a
    stored scale ``s``: even its largest weight rounds to zero. Half the least nonzero magnitude
    over the largest (absmax scaling; the affine step is ``1 / (2**bits - 1)`` of the span, the
    absmean scale about the weights themselves)."""
    if member.scaling == "affine":
        return 0.5 / (2**member.bits - 1)
    if member.scaling == "absmean":
        return 0.5
    values = np.abs(member.rounding_table.sorted_values)
    return 0.5 * values[values > 0].min() / member.max_abs


def bounded_scales(ideal: np.ndarray, scale_type, scale_clamp=None, remedy: str | None = None,
                   loss=0.0) -> np.ndarray:
    """Ideal scales ``[candidates, ...]`` made storable in ``scale_type``: clamped by
    ``scale_clamp`` (``(low, high)`` or None), raised to the dtype's least positive value (so an
    all-zero group, which any positive scale encodes exactly, gets the least scale and never sets
    a row's int8 base scale), and refused where they overflow, or where even the least shrunk
    candidate of a group holding weights is below ``loss`` (:func:`loss_factor`, broadcast like
    ``ideal``) times the least scale the dtype holds, so that every weight of the group would
    quantize to zero; the errors suggest ``remedy``, or a wider scale dtype."""
    if scale_clamp is not None:
        ideal = np.where(ideal > 0, np.clip(ideal, *scale_clamp), 0.0)
    lost = ((ideal > 0) & (ideal < np.asarray(loss) * scale_type.smallest)).all(axis=0) & (ideal.max(axis=0) > 0)
    if lost.any():
        raise ValueError(f"a group needs a scale of {ideal.max(axis=0)[lost].max():.6g}, so far below the least "
                         f"scale_dtype={scale_type.name!r} holds ({scale_type.smallest:.6g}) that all its weights "
                         f"would quantize to zero; {remedy or 'use a wider scale_dtype (bf16, fp32) or rescale W'}")
    ideal = np.maximum(ideal, scale_type.smallest)
    if ideal.max() > scale_type.largest:
        if remedy is None:
            remedy = "rescale W" if scale_type.name in WIDEST_SCALE_DTYPES else "use a wider scale_dtype or rescale W"
        raise ValueError(f"a group scale of {ideal.max():.6g} overflows scale_dtype={scale_type.name!r} "
                         f"(largest {scale_type.largest:.6g}); {remedy}")
    return ideal


@dataclasses.dataclass(frozen=True, eq=False)
class ScaleCandidates:
    """Candidate scales ``[C, rows, groups]`` as stored (``stored``) and decoded (``decoded``,
    float64 ``[C, rows * groups]``): what the rounding search of every candidate runs under."""

    stored: StoredScales
    decoded: np.ndarray

    @classmethod
    def of(cls, ideal: np.ndarray, scale_type, scale_clamp=None, remedy: str | None = None,
           loss=0.0) -> "ScaleCandidates":
        """Bound, store and decode ideal scales ``[C, rows, groups]`` (int8: one row scale for all C);
        ``loss``: see :func:`bounded_scales`."""
        stored = scale_type.store(bounded_scales(ideal, scale_type, scale_clamp, remedy, loss))
        return cls(stored, scale_type.load(stored).reshape(ideal.shape[0], -1))

    def winners(self, best: np.ndarray) -> StoredScales:
        """Stored scales ``[rows, groups]`` of candidate ``best[g]`` of every group ``g``."""
        values = self.stored.values
        picked = values.reshape(values.shape[0], -1)[best, np.arange(best.size)]
        return StoredScales(picked.reshape(values.shape[1:]), self.stored.row_scales)
