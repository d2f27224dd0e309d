"""A quantized tensor on a torch device: :class:`DeviceTensor` (``qt.to("cuda")``).

The stored arrays are copied to the device once, bit for bit (``uint32`` words travel as
``int32``, raw ``bfloat16`` bits as ``int16``: torch has no arithmetic for the unsigned types),
beside the small tables the kernel plan adds (the value table in float32 and rounded to each
activation dtype, the same as 16-bit patterns in pairs, the binary16 table as the byte-permute registers of
the fp16 pair decode, the 256-entry scale table). A tensor stays where it is put: no kernel moves
it, and :meth:`DeviceTensor.to` is the only call that copies it.
"""
from __future__ import annotations

import numpy as np

from hwlab.formats.scales import round_to_significand

from .half_pairs import LUT_ENTRIES, lut_registers
from .plan import KernelPlan, build_plan

TORCH_STORAGE = {"uint32": "int32", "uint16": "int16"}  # same bits, a dtype torch computes with
BF16_SIGNIFICAND_BITS = 8  # bfloat16: 7 stored mantissa bits and the hidden bit


def _torch():
    import torch  # the kernels' extra; hwlab.formats never needs it

    return torch


def rounded_table(table: np.ndarray, dtype: str) -> np.ndarray:
    """``table`` (float32) rounded to nearest even in ``dtype`` (float16, bfloat16 or float32), as float32."""
    if dtype == "float16":
        return table.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return round_to_significand(table.astype(np.float64), BF16_SIGNIFICAND_BITS).astype(np.float32)
    return table.astype(np.float32)


PAIR_TABLE_MAX = 16  # entries a member can have for the pair-table decode (eight int32 words a member)


def pair_table(table: np.ndarray, dtype: str) -> np.ndarray:
    """int32 ``[members, 8]``: ``table`` (float32, at most 16 entries a member) rounded to ``dtype``
    (float16 or bfloat16) as 16-bit patterns, codes ``2j`` and ``2j + 1`` in the low and the high
    half of word ``j`` (missing codes 0). The kernels' ``_pair_select`` reads it."""
    rounded = rounded_table(table, dtype)
    if dtype == "float16":
        bits = rounded.astype(np.float16).view(np.uint16).astype(np.uint32)
    else:
        bits = rounded.view(np.uint32) >> 16
    padded = np.zeros((table.shape[0], PAIR_TABLE_MAX), np.uint32)
    padded[:, :min(table.shape[1], PAIR_TABLE_MAX)] = bits[:, :PAIR_TABLE_MAX]
    return (padded[:, 0::2] | (padded[:, 1::2] << 16)).view(np.int32)


def register_table(table: np.ndarray) -> np.ndarray:
    """int32 ``[members, 8]``: each member's row of ``table`` (float32) rounded to binary16 (nearest even) as the
    eight registers of the fp16 pair table decode (:func:`~hwlab.kernels.half_pairs.lut_registers`); zeros for
    tables of more than :data:`~hwlab.kernels.half_pairs.LUT_ENTRIES` entries, which it never reads."""
    if table.shape[1] > LUT_ENTRIES:
        return np.zeros((table.shape[0], 8), np.int32)
    patterns = table.astype(np.float16).view(np.uint16)
    return np.array([lut_registers(row) for row in patterns], np.uint32).view(np.int32)


class DeviceTensor:
    """The stored arrays of a :class:`~hwlab.formats.QuantizedTensor` as torch tensors on ``device``.

    Attributes: ``format``, ``shape`` ``(N, K)``, ``group_size``, ``options``, ``layout`` (the
    descriptors of the source tensor), ``plan`` (:class:`~hwlab.kernels.plan.KernelPlan`),
    ``arrays`` (name -> torch tensor) and ``tables`` (``lut_float32``, ``lut_float16``,
    ``lut_bfloat16``, ``pairs_float16``, ``pairs_bfloat16`` (:func:`pair_table`), ``registers``
    (:func:`register_table`), ``scale_table``). Build one with ``qt.to(device)``.
    """

    def __init__(self, source, plan: KernelPlan, arrays: dict, tables: dict):
        self.source = source  # the QuantizedTensor (numpy) this came from: its metadata, never re-read
        self.plan = plan
        self.arrays = arrays
        self.tables = tables
        self.device = next(iter(arrays.values())).device  # where the arrays are (cuda:0 for "cuda")
        self.launch_cache = {}  # hwlab.kernels.dispatch: kernel operands, built once per decode
        self.prepared = {}  # hwlab.kernels.dispatch.matmul: (x shape, dtype, device) -> checked, prepared launch

    @classmethod
    def from_quantized(cls, qt, device) -> "DeviceTensor":
        """Copy ``qt``'s stored arrays and its plan's tables to ``device`` (once)."""
        torch = _torch()
        device = torch.device(device)
        plan = build_plan(qt)
        arrays = {}
        for name, a in qt.arrays.items():
            a = np.ascontiguousarray(a)
            view = a.view(TORCH_STORAGE.get(a.dtype.name, a.dtype.name))
            arrays[name] = torch.from_numpy(view.copy()).to(device)
        tables = {f"lut_{dtype}": torch.from_numpy(rounded_table(plan.lut, dtype)).to(device)
                  for dtype in ("float32", "float16", "bfloat16")}
        tables.update({f"pairs_{dtype}": torch.from_numpy(pair_table(plan.lut, dtype)).to(device)
                       for dtype in ("float16", "bfloat16")})
        tables["registers"] = torch.from_numpy(register_table(plan.lut)).to(device)
        scale_table = plan.scale_table if plan.scale_table is not None else np.zeros(1, np.float32)
        tables["scale_table"] = torch.from_numpy(scale_table.copy()).to(device)
        return cls(qt, plan, arrays, tables)

    # the source tensor's metadata
    format = property(lambda self: self.source.format)
    format_name = property(lambda self: self.source.format_name)
    shape = property(lambda self: self.source.shape)
    group_size = property(lambda self: self.source.group_size)
    options = property(lambda self: self.source.options)
    layout = property(lambda self: self.source.layout)
    bits_per_weight = property(lambda self: self.source.bits_per_weight)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays on the device (what a kernel streams; tables not counted)."""
        return int(sum(t.numel() * t.element_size() for t in self.arrays.values()))

    def to(self, device) -> "DeviceTensor":
        """This tensor on ``device`` (itself when it is there already)."""
        device = _torch().device(device)
        if _same_device(device, self.device):
            return self
        return DeviceTensor(self.source, self.plan, {n: t.to(device) for n, t in self.arrays.items()},
                            {n: t.to(device) for n, t in self.tables.items()})

    def dequantize(self):
        """float32 ``[N, K]`` weights on this device, decoded by :func:`hwlab.kernels.dequantize`."""
        from .dispatch import dequantize

        return dequantize(self)

    def __repr__(self) -> str:
        n, k = self.shape
        return f"DeviceTensor({self.format_name!r}, shape=({n}, {k}), device={str(self.device)!r}, {self.plan.decode} decode)"


def _same_device(a, b) -> bool:
    """Whether torch devices ``a`` and ``b`` are one (``cuda`` without an index: the current one)."""
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    current = _torch().cuda.current_device
    return (current() if a.index is None else a.index) == (current() if b.index is None else b.index)
