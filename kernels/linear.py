"""``QuantLinear``: a drop-in for ``torch.nn.Linear`` whose weight is a quantized tensor on the GPU.

``QuantLinear.from_linear(lin, "nf4")`` quantizes a float Linear's weight with any hwlab format and
keeps the stored arrays (not a float copy) on the Linear's device; ``forward`` is
:func:`hwlab.kernels.matmul` plus the bias. :func:`quantize_linears` swaps every Linear of a model.
Moving the module (``.to(device)``, ``.cuda()``) moves the stored arrays; a dtype cast
(``.half()``) leaves them as stored, so a cast never changes the weights.
"""
from __future__ import annotations

import fnmatch

import torch

from hwlab.formats import quantize

from .device import DeviceTensor
from .dispatch import matmul

STORED_PREFIX, TABLE_PREFIX = "stored_", "table_"


class QuantLinear(torch.nn.Module):
    """``y = x @ dequant(W)^T + bias`` with W a :class:`~hwlab.kernels.DeviceTensor`.

    The stored arrays and the plan's tables are buffers (they follow the module's device and
    appear in its ``state_dict``); the quantized tensor's metadata stays on the module.
    """

    def __init__(self, weight: DeviceTensor, bias: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(weight, DeviceTensor):
            raise TypeError(f"QuantLinear needs a DeviceTensor (qt.to(device)), got {type(weight).__name__}")
        self.out_features, self.in_features = weight.shape
        self._weight = weight
        for name, t in weight.arrays.items():
            self.register_buffer(STORED_PREFIX + name, t)
        for name, t in weight.tables.items():
            self.register_buffer(TABLE_PREFIX + name, t)
        if bias is not None:
            bias = torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
            if bias.shape != (self.out_features,):
                raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({self.out_features},)")
        self.bias = bias

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, fmt, group_size: int | None = None, **options) -> "QuantLinear":
        """Quantize ``linear.weight`` with ``fmt`` (a format or its name) and keep it on its device."""
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"from_linear needs a torch.nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach().to(torch.float32).cpu().numpy()
        qt = quantize(w, fmt, group_size, **options)
        return cls(qt.to(linear.weight.device), linear.bias)

    @property
    def weight_quantized(self) -> DeviceTensor:
        """The quantized weight, on the module's current device (its buffers, not a copy); the same
        object from call to call until the buffers move."""
        w = self._weight
        arrays = {name: getattr(self, STORED_PREFIX + name) for name in w.arrays}
        if any(arrays[name] is not t for name, t in w.arrays.items()):
            tables = {name: getattr(self, TABLE_PREFIX + name) for name in w.tables}
            w = self._weight = DeviceTensor(w.source, w.plan, arrays, tables)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = matmul(x, self.weight_quantized)
        if self.bias is not None:
            y += self.bias.to(y.dtype)
        return y

    def _apply(self, fn, recurse=True):
        """Device moves apply to the stored arrays; dtype casts do not (the weights stay as stored)."""
        kept = {}
        for name, buf in self._buffers.items():
            if buf is not None:
                kept[name] = buf
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def extra_repr(self) -> str:
        w = self._weight
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={w.format_name!r}, group_size={w.group_size}, bits_per_weight={w.bits_per_weight:.3f}")


def quantize_linears(model: torch.nn.Module, fmt, group_size: int | None = None, *, skip=(), **options) -> list[str]:
    """Replace every ``torch.nn.Linear`` of ``model`` (in place) by a :class:`QuantLinear` of ``fmt``.

    ``skip``: glob patterns of module names to leave as they are (``"lm_head"``, ``"*.gate"``).
    Returns the names of the replaced modules, in order."""
    if isinstance(skip, str):
        skip = (skip,)
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and not any(fnmatch.fnmatchcase(name, p) for p in skip)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QuantLinear.from_linear(module, fmt, group_size, **options))
    return [name for name, _ in targets]
