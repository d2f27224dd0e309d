"""The one hand-off from a quantized tensor to every consumer: :class:`Unpacked`.

``qt.unpacked()`` reads any format's stored arrays into the same self-describing view: one
``uint8`` code per element, the value table of every member, which member each group (or
element) uses, the decoded scales and how they were stored, zero points, second-level and
tensor scales. The simulators and kernels read tensors only through it (and through
``qt.layout`` for the packed bits), and every format's ``dequantize`` is its one generic decode:

    ``w[n, k] = (values[member, code] - zero) * scale``

with ``member``, ``zero`` and ``scale`` those of the group holding ``(n, k)`` (``member`` per
element where the format decides per element), computed in float64 (exact for every built-in
format) and rounded once to float32, saturating at the float32 range.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .decomposition import Decomposition, decompose

MEMBER_SCOPES = ("group", "element")
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True, eq=False)
class Unpacked:
    """Self-describing unpacked view of a quantized ``[N, K]`` matrix.

    Attributes
    ----------
    format:
        The :class:`~hwlab.formats.Format` the tensor was quantized with.
    shape:
        ``(N, K)`` of the original matrix; ``codes`` has ``Kp >= K`` columns (zero padding).
    codes:
        ``uint8 [N, Kp]``: one element code per weight.
    values:
        ``float64 [members, 2**bits]``: the value of every code of every member (NaN: a code with
        no value; some codes no quantizer emits have one, as int4's -8). One member for plain
        formats; a mixture's members by type id;
        ``mixed_2_4``: INT4 then INT2 (padded with NaN); ``olive4``: normal then outlier values.
    member, member_scope:
        Which row of ``values`` each group (``member_scope="group"``, shaped like ``scales``)
        or element (``"element"``, shaped like ``codes``) reads; ``None`` for one member.
    scales:
        ``float64 [S, G]``: the decoded scale of every group, exactly as stored, with every
        stage applied (int8 code times row scale, NVFP4 block times tensor scale, NF4 double
        quantization). ``S`` is N (per group or channel) or 1 (per tensor); each of the ``G``
        groups of a row covers ``Kp / G`` consecutive elements along K.
    scale_type, scale_codes:
        How the scales are stored: a scale dtype name (``fp16``, ``bf16``, ``fp32``, ``e8m0``,
        ``e4m3``, ``int8``: codes 1..255 times ``row_scales``; ``dynamic8``: NF4 double
        quantization) and the stored array itself.
    row_scales, tensor_scale, second_level:
        The further stages where the format has them: ``float16 [N, 1]`` second-stage row
        scales, the NVFP4 float32 tensor scale, and NF4 double quantization's
        ``{"absmax": float32 [B, 1], "offset": float32, "block": 256, "map": float32 [256]}``.
    zeros:
        ``int16`` zero points shaped like ``scales`` (affine formats), else ``None``.
    group_size, granularity:
        The quantizer's group size and granularity (``group``, ``channel`` or ``tensor``).
    """

    format: object
    shape: tuple[int, int]
    codes: np.ndarray
    values: np.ndarray
    scales: np.ndarray
    scale_type: str
    scale_codes: np.ndarray
    group_size: int
    granularity: str = "group"
    member: np.ndarray | None = None
    member_scope: str | None = None
    zeros: np.ndarray | None = None
    row_scales: np.ndarray | None = None
    tensor_scale: float | None = None
    second_level: dict | None = None

    def __post_init__(self):
        for field in ("codes", "values", "scales", "scale_codes", "member", "zeros", "row_scales"):
            a = getattr(self, field)
            if a is not None:  # a read-only view: the view is frozen, and so are the tensor's arrays
                a = a.view()
                a.setflags(write=False)
                object.__setattr__(self, field, a)
        rows, cols = self.codes.shape
        if self.codes.dtype != np.uint8 or self.values.ndim != 2 or self.scales.ndim != 2:
            raise ValueError("Unpacked: codes must be uint8 [N, Kp], values and scales 2-D")
        if self.scales.shape[0] not in (1, rows) or cols % self.scales.shape[1]:
            raise ValueError(f"Unpacked: scales {self.scales.shape} do not tile codes {self.codes.shape}")
        if (self.member is None) != (self.member_scope is None) or self.member_scope not in (None,) + MEMBER_SCOPES:
            raise ValueError(f"Unpacked: member_scope must be one of {MEMBER_SCOPES} exactly when member is given")
        expected = {"group": self.scales.shape, "element": self.codes.shape}.get(self.member_scope)
        if self.member is not None and self.member.shape != expected:
            raise ValueError(f"Unpacked: member is {self.member.shape}, expected {expected}")
        if self.zeros is not None and self.zeros.shape != self.scales.shape:
            raise ValueError(f"Unpacked: zeros are {self.zeros.shape}, expected {self.scales.shape}")

    @property
    def padded_cols(self) -> int:
        """``Kp``: columns of ``codes`` (K plus any zero padding)."""
        return self.codes.shape[1]

    @property
    def elements_per_group(self) -> int:
        """Consecutive elements along K that one entry of ``scales`` covers."""
        return self.padded_cols // self.scales.shape[1]

    @property
    def decomposition(self) -> Decomposition | None:
        """Sign, magnitude and exponent of every entry of ``values`` (``None``: no exact form)."""
        return decompose(self.values, self.format.bits, self.format.encoding_fields())

    def expand(self, per_group: np.ndarray) -> np.ndarray:
        """A per-group array (shaped like ``scales``) repeated to one entry per element ``[N, Kp]``."""
        full = np.repeat(per_group, self.elements_per_group, axis=1)
        return np.broadcast_to(full, self.codes.shape)

    def element_members(self) -> np.ndarray | int:
        """The member index of every element ``[N, Kp]`` (0 when there is one member)."""
        if self.member is None:
            return 0
        return self.member if self.member_scope == "element" else self.expand(self.member)

    def element_values(self) -> np.ndarray:
        """``values[member, code] - zero`` of every element, float64 ``[N, Kp]`` (before the scale)."""
        v = self.values[self.element_members(), self.codes]
        if self.zeros is not None:
            v = v - self.expand(self.zeros)
        return v

    def dequantize(self) -> np.ndarray:
        """The weights, float32 ``[N, K]``: the generic decode of the module docstring.

        A value past the float32 range (only a group at the very edge of it, such as an affine
        group spanning -max..max) saturates to +-float32 max: finite in, finite out."""
        w = self.element_values() * self.expand(self.scales)
        np.clip(w, -FLOAT32_MAX, FLOAT32_MAX, out=w)
        return w[:, :self.shape[1]].astype(np.float32)
