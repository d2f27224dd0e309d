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

import numpy as np

from .group_kernel import group_stats
from .scales import INT8_SCALE_MAX_CODE, StoredScales

SCALE_SEARCHES = ("absmax", "mse")
WIDEST_SCALE_DTYPES = ("fp32", "bf16", "e8m0")  # nothing wider to suggest when these overflow
# Clipping ratios of the MSE scale search: 1.0 down to 0.5 in steps of 0.05 (1.0 first, so an
# absmax scale wins ties).
DEFAULT_CLIP_RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))


def is_number(value) -> bool:
    """A plain real number an option may hold: ``int`` or ``float`` (not bool; options are saved as
    JSON, so ``Fraction``, ``Decimal`` and the like are refused)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    """:func:`is_number` and finite as a float (an int too large for a float is not)."""
    try:
        return is_number(value) and math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def check_clip_ratios(ratios) -> None:
    """``clip_ratios`` must be a non-empty sequence of numbers in (0, 1]."""
    if not (isinstance(ratios, (tuple, list)) and ratios and all(is_finite_number(r) and 0 < r <= 1 for r in ratios)):
        raise ValueError(f"clip_ratios must be a non-empty sequence of numbers in (0, 1], got {ratios!r:.200} "
                         "(int or float)")


def check_scale_clamp(clamp) -> None:
    """``scale_clamp`` must be None or ``(low, high)`` with ``0 < low < high``."""
    if clamp is not None and not (isinstance(clamp, (tuple, list)) and len(clamp) == 2
                                  and all(map(is_finite_number, clamp)) and 0 < clamp[0] < clamp[1]):
        raise ValueError(f"scale_clamp must be None or (low, high) with finite 0 < low < high (int or float), "
                         f"got {clamp!r:.200}")


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


def zero_threshold(member) -> float:
    """Half the least nonzero magnitude of ``member``'s values: under a scale ``s`` a group whose
    largest ``|w|`` is below ``zero_threshold * s`` quantizes to all zeros (for every scaling rule:
    an affine group's values are its integer codes minus the zero point, step 1)."""
    values = np.abs(member.rounding_table.sorted_values)
    return 0.5 * float(values[values > 0].min())


def clip_headroom(member) -> float:
    """``(max|value| + half the step below it) / max|value|`` of ``member``: a group whose scale is
    clamped below ``ideal / clip_headroom`` has its largest weights clipped by more than rounding
    (absmax and affine groups reach ``max|value|`` under their ideal scale). An absmean scale is the
    weights' own unit, the clipping point of every weight past 1.5 of it: any cut clips weights the
    ideal scale keeps (headroom 1)."""
    if member.scaling == "absmean":
        return 1.0
    values = member.rounding_table.sorted_values
    top = max(abs(values[0]), abs(values[-1]))
    steps = [values[-1] - values[-2]] if abs(values[-1]) == top else []
    steps += [values[1] - values[0]] if abs(values[0]) == top else []
    return (top + min(steps) / 2) / top


@dataclasses.dataclass(frozen=True)
class GroupLimits:
    """What the scale of each candidate of each group must allow (arrays broadcast like the ideal
    scales ``[C, rows, groups]``): ``absmax``, the group's largest ``|w|`` (0: an all-zero group,
    which every scale encodes); ``zero_below``, the candidate member's :func:`zero_threshold`;
    ``headroom``, its :func:`clip_headroom`."""

    absmax: np.ndarray
    zero_below: np.ndarray | float
    headroom: np.ndarray | float = 1.0

    @classmethod
    def of(cls, members, absmax: np.ndarray) -> "GroupLimits":
        """Limits of candidates quantized with ``members`` (one element format per candidate) over
        groups whose largest ``|w|`` is ``absmax [rows, groups]``."""
        per_candidate = lambda f: np.array([f(m) for m in members])[:, None, None]  # noqa: E731
        return cls(absmax[None], per_candidate(zero_threshold), per_candidate(clip_headroom))

    def lost(self, scales: np.ndarray) -> np.ndarray:
        """True where a group holding weights quantizes to all zeros under ``scales`` (a scale of 0 too)."""
        return (self.absmax > 0) & ((scales == 0) | (self.absmax < self.zero_below * scales))

    def largest(self, shape: tuple, at: tuple) -> float:
        """The largest ``|w|`` of group ``at`` (an index into ``shape[1:]``)."""
        return float(np.broadcast_to(self.absmax, shape)[(0,) + at])


def bounded_scales(ideal: np.ndarray, scale_type, scale_clamp=None, remedy: str | None = None,
                   limits: GroupLimits | None = None) -> np.ndarray:
    """Ideal scales ``[candidates, ...]`` made storable in ``scale_type``: clamped by
    ``scale_clamp`` (``(low, high)`` or None), raised to the dtype's least positive value (so an
    all-zero group, which any positive scale encodes exactly, gets the least scale and never sets
    a row's int8 base scale), and refused where they overflow, or where the clamp cuts every
    candidate of a group holding weights to below ``ideal / limits.headroom`` (its largest
    weights would be clipped by more than rounding); the errors suggest ``remedy``, or a wider
    scale dtype, or ``scale_clamp=None``. Groups the stored scales would zero are refused by
    :func:`check_kept`."""
    clamped = ideal if scale_clamp is None else np.where(ideal > 0, np.clip(ideal, *scale_clamp), 0.0)
    if scale_clamp is not None and limits is not None:
        clipped = ((ideal > limits.headroom * scale_clamp[1]) & (limits.absmax > 0)).all(axis=0)
        if clipped.any():
            at = tuple(int(i) for i in np.argwhere(clipped)[0])
            need = float(ideal.min(axis=0)[at])
            raise ValueError(f"group {list(at)} (largest |w| {limits.largest(ideal.shape, at):.6g}) needs a scale of "
                             f"{need:.6g}, above the upper bound of scale_clamp={tuple(scale_clamp)}: its largest "
                             f"weights would be clipped by more than rounding; pass scale_clamp=None (or an upper "
                             f"bound of at least {need:.3g}), or rescale W")
    bounded = np.maximum(clamped, scale_type.smallest)
    if bounded.max() > scale_type.largest:
        if remedy is None:
            remedy = "rescale W" if scale_type.name in WIDEST_SCALE_DTYPES else "use a wider scale_dtype or rescale W"
        raise ValueError(f"a group scale of {bounded.max():.6g} overflows scale_dtype={scale_type.name!r} "
                         f"(largest {scale_type.largest:.6g}); {remedy}")
    return bounded


def check_kept(ideal: np.ndarray, decoded: np.ndarray, limits: GroupLimits, scale_type, scale_clamp=None,
               remedy: str | None = None) -> None:
    """Refuse (``ValueError``) a group holding weights that quantizes to all zeros under every one of its
    candidates' decoded scales ``decoded`` (shaped like ``ideal``), naming what raised its scale: the
    lower bound of ``scale_clamp``, the least scale the dtype holds, or (int8) the least code of its row."""
    lost = limits.lost(decoded).all(axis=0)
    if not lost.any():
        return
    at = tuple(int(i) for i in np.argwhere(lost)[0])
    need = ideal.max(axis=0)
    group = f"group {list(at)} (largest |w| {limits.largest(ideal.shape, at):.6g}) needs a scale of {need[at]:.6g}"
    if scale_clamp is not None and (need[at] < scale_clamp[0]) and scale_clamp[0] >= scale_type.smallest:
        raise ValueError(f"{group}, so far below the lower bound of scale_clamp={tuple(scale_clamp)} that all its "
                         f"weights would quantize to zero; pass scale_clamp=None (or a lower bound of at most "
                         f"{need[at]:.3g}), or rescale W")
    if (need < scale_type.smallest)[lost].any():
        raise ValueError(f"a group needs a scale of {need[lost].max():.6g}, so far below the least "
                         f"scale_dtype={scale_type.name!r} holds ({scale_type.smallest:.6g}) that all its weights "
                         f"would quantize to zero; {remedy or 'use a wider scale_dtype (bf16, fp32) or rescale W'}")
    raise ValueError(f"{group}, but scale_dtype={scale_type.name!r} stores it as "
                     f"{float(decoded[(slice(None),) + at].min()):.6g} (int8: code 1 of 255 times its row's fp16 "
                     f"scale, which the row's largest group sets), so all its weights would quantize to zero; "
                     f"{remedy or 'use another scale_dtype (fp16, bf16, fp32) or rescale W'}")


def check_blocks_kept(absmax: np.ndarray, scales: np.ndarray, threshold: float, shape: tuple, what: str,
                      remedy: str) -> None:
    """Refuse (``ValueError``) a block holding weights (``absmax [blocks] > 0``) that quantizes to all
    zeros under its decoded scale (``|scale| * threshold`` above its ``absmax``, or a scale of 0):
    for formats that fix their block scales without a search (microscaling, double quantization).
    ``shape``: the ``[rows, blocks per row]`` the flat block index is reported in."""
    s = np.abs(scales)
    lost = GroupLimits(absmax, threshold).lost(s)
    if lost.any():
        i = int(np.flatnonzero(lost)[0])
        at = [int(k) for k in np.unravel_index(i, shape)]
        raise ValueError(f"{what} {at} (largest |w| {absmax[i]:.6g}) would quantize to all zeros under its scale "
                         f"{s[i]:.6g}; {remedy}")


def clamp_bounds(scale_type, clamp, row_scales=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The least and greatest decoded scale a quantizer with ``scale_clamp=clamp`` stores, and the scale
    of an all-zero group (the dtype's least), each ``[rows or 1, 1]`` (int8: per row, under the stored
    fp16 ``row_scales``): the rounding of every scale dtype is monotonic, so the stored scales of the
    clamped ideal scales lie between these."""
    ideal = np.array([max(clamp[0], scale_type.smallest), max(clamp[1], scale_type.smallest), scale_type.smallest])
    if scale_type.name == "int8":
        rows = row_scales.astype(np.float64).reshape(-1, 1)
        decoded = np.clip(np.rint(ideal[None] / rows), 1, INT8_SCALE_MAX_CODE) * rows
    else:
        decoded = scale_type.load(scale_type.store(ideal.reshape(1, 3)))
    return decoded[:, 0:1], decoded[:, 1:2], decoded[:, 2:3]


@dataclasses.dataclass(frozen=True, eq=False)
class ScaleCandidates:
    """Candidate scales ``[C, rows, groups]`` as stored (``stored``) and decoded (``decoded``,
    float64 ``[C, rows * groups]``): what the rounding search of every candidate runs under."""

    stored: StoredScales
    decoded: np.ndarray

    @classmethod
    def of(cls, ideal: np.ndarray, scale_type, scale_clamp=None, remedy: str | None = None,
           limits: GroupLimits | None = None) -> "ScaleCandidates":
        """Bound, store and decode ideal scales ``[C, rows, groups]`` (int8: one row scale for all C);
        with ``limits``, a group clipped by the clamp (:func:`bounded_scales`) or zeroed by its stored
        scales (:func:`check_kept`) is refused."""
        stored = scale_type.store(bounded_scales(ideal, scale_type, scale_clamp, remedy, limits))
        decoded = scale_type.load(stored).reshape(ideal.shape)
        if limits is not None:
            check_kept(ideal, decoded, limits, scale_type, scale_clamp, remedy)
        return cls(stored, decoded.reshape(ideal.shape[0], -1))

    def winners(self, best: np.ndarray) -> StoredScales:
        """Stored scales ``[rows, groups]`` of candidate ``best[g]`` of every group ``g``."""
        values = self.stored.values
        picked = values.reshape(values.shape[0], -1)[best, np.arange(best.size)]
        return StoredScales(picked.reshape(values.shape[1:]), self.stored.row_scales)
