"""Quantized tensors: ``quantize`` a weight matrix, read it through one door, save and load it.

A :class:`QuantizedTensor` keeps the :class:`~hwlab.formats.Format` object it was quantized with
(so an unregistered format, or one redefined later, still decodes with its own definition), its
stored arrays and what is needed to read them. Consumers read it through
:meth:`QuantizedTensor.unpacked` (one code per element, value tables, decoded scales),
:attr:`QuantizedTensor.layout` (what each stored array is, bit for bit) and the format's
:meth:`~hwlab.formats.Format.decomposition`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import types

import numpy as np

from . import storage
from .arrays import as_weight_matrix, is_torch_tensor
from .base import Format
from .metrics import error_metrics
from .registry import get_format
from .storage import StorageError, check_arrays
from .unpacked import Unpacked
from .validate import check_stored, read_scans

GRANULARITY_OPTION = "granularity"


@dataclasses.dataclass(frozen=True, eq=False)  # arrays compare element-wise: identity, not ==
class QuantizedTensor:
    """A quantized ``[N, K]`` weight matrix: its format, stored arrays and how to read them.

    ``arrays`` holds everything stored (packed codes, scales, zero points, type ids,
    second-level scales); ``bits_per_weight`` counts all of it. ``padded_cols`` is the K that
    was quantized (greater than ``shape[1]`` only when ``pad=True`` padded K with zeros).
    """

    format: Format
    shape: tuple[int, int]
    group_size: int
    options: dict
    arrays: dict
    padded_cols: int
    device: str | None = None  # torch device of the input, where dequantize() returns to

    def __post_init__(self):
        """The stored arrays are the tensor's own: read-only, in a read-only mapping."""
        frozen = {}
        for name, a in self.arrays.items():
            a = a.view()
            a.setflags(write=False)
            frozen[name] = a
        object.__setattr__(self, "arrays", types.MappingProxyType(frozen))

    @property
    def format_name(self) -> str:
        """Name of this tensor's format."""
        return self.format.name

    @property
    def codes(self) -> np.ndarray:
        """Packed codes: ``uint32`` words along K (layout in :mod:`hwlab.formats.packing`).

        Formats that store their codes otherwise (``mixed_2_4``'s two widths, ternary's
        ``trit5`` bytes) raise ``ValueError`` naming their arrays; :meth:`unpacked` gives one
        code per element for every format.
        """
        layout = self.layout.get("codes")
        if layout is None or layout.packing != "bits":
            raise ValueError(f"{self.format_name} does not store one packed 'codes' array of uint32 words: it stores "
                             + ", ".join(f"{n!r} ({a.packing}, {a.dtype})" for n, a in self.layout.items())
                             + "; use qt.arrays[name], or qt.unpacked().codes for one code per element")
        return self.arrays["codes"]

    @functools.cached_property
    def layout(self) -> dict:
        """Name -> :class:`~hwlab.formats.layout.ArrayLayout` of every stored array."""
        return storage.format_layout(self.format, self.shape[0], self.padded_cols, self.group_size, self.options)

    @property
    def nbytes(self) -> int:
        """Bytes of every stored array."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def bits_per_weight(self) -> float:
        """Stored bits (codes, scales, zeros, type ids, everything) per weight of ``shape``."""
        return 8 * self.nbytes / (self.shape[0] * self.shape[1])

    def unpacked(self) -> Unpacked:
        """The self-describing unpacked view (:class:`~hwlab.formats.unpacked.Unpacked`)."""
        return self.format.unpack(self.arrays, self.shape, self.padded_cols, self.group_size, self.options)

    def dequantize(self, device=None):
        """Float32 ``[N, K]``: a numpy array, or a torch tensor on ``device`` (default: the input's)."""
        w = self.unpacked().dequantize()
        device = device if device is not None else self.device
        if device is None:
            return w
        import torch  # only when asked for a torch tensor

        try:
            target = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(f"device {device!r} is not a torch device (expected e.g. 'cpu' or 'cuda'): {exc}") from None
        if target.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch finds no CUDA device here (use 'cpu')")
        try:
            return torch.from_numpy(np.ascontiguousarray(w)).to(target)
        except (RuntimeError, AssertionError) as exc:  # e.g. a device index this machine lacks
            raise ValueError(f"cannot move the weights to device {device!r}: {exc}") from None

    def to(self, device):
        """The stored arrays copied once to torch ``device`` (``"cuda"``): a
        :class:`hwlab.kernels.DeviceTensor`, what :func:`hwlab.kernels.matmul` multiplies by.

        Needs torch (the ``gpu`` extra); hwlab.kernels is imported here, when it is asked for,
        never when hwlab.formats is."""
        import importlib

        return importlib.import_module("hwlab.kernels.device").DeviceTensor.from_quantized(self, device)

    def error(self, w, x=None) -> dict:
        """Error metrics of this tensor against the original ``w`` (see :func:`error_metrics`)."""
        w, _ = as_weight_matrix(w)
        if w.shape != self.shape:
            raise ValueError(f"W has shape {w.shape} but this tensor was quantized from {self.shape}")
        if is_torch_tensor(x):
            x = x.detach().float().cpu().numpy()
        return error_metrics(w, self.unpacked().dequantize(), x)

    def metadata(self) -> dict:
        """What :meth:`save` writes beside the arrays (JSON-able; see :mod:`hwlab.formats.storage`)."""
        return storage.metadata(self)

    def save(self, path) -> None:
        """Write a safetensors file (arrays + JSON metadata); :func:`load` restores it bit-exactly."""
        storage.save(self, path)

    def __repr__(self) -> str:
        return (f"QuantizedTensor({self.format_name!r}, shape={self.shape}, group_size={self.group_size}, "
                f"bits_per_weight={self.bits_per_weight:.4f})")


def quantize(w, fmt, group_size: int | None = None, *, pad: bool = False, **options) -> QuantizedTensor:
    """Quantize a weight matrix ``w [N, K]`` (numpy or torch) to format ``fmt``.

    Parameters
    ----------
    w:
        ``[N, K]`` = (out_features, in_features), float16/bfloat16/float32/float64, finite.
    fmt:
        A registered format name (``list_formats()``) or a ``Format`` (registered or not).
    group_size:
        Elements per scale group along K; default the format's own (128 for most; fixed for
        microscaling formats). Must divide K unless ``pad=True``.
    pad:
        Pad K with zeros up to a multiple of ``group_size`` (the padding is stored and counted
        in ``bits_per_weight``; ``dequantize`` returns the original shape).
    **options:
        Format options, e.g. ``scale_dtype`` ('fp16', 'bf16', 'fp32', 'e8m0', 'e4m3', 'int8'),
        ``granularity`` ('group', 'channel', 'tensor'), ``scale_search`` ('absmax', 'mse'),
        ``clip_ratios``. ``get_format(name).options`` lists what a format accepts.
    """
    fmt = get_format(fmt)
    matrix, device = as_weight_matrix(w)
    opts = fmt.option_values(options)
    group_size = fmt.default_group_size if group_size is None else group_size
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    group_size = int(group_size)
    fmt.check_group_size(group_size)
    if not isinstance(pad, bool):
        raise TypeError(f"pad must be True or False, got {pad!r}")
    rows, cols = matrix.shape
    padded_cols = cols
    if opts.get(GRANULARITY_OPTION, "group") == "group" and cols % group_size:
        if not pad:
            raise ValueError(f"group_size must divide K={cols}, got {group_size} "
                             "(pass pad=True to pad K with zeros)")
        padded_cols = -(-cols // group_size) * group_size
        if padded_cols - cols >= cols:
            raise ValueError(f"pad=True would add {padded_cols - cols} zero columns to K={cols} (more than K itself) "
                             f"for group_size={group_size}; choose a group size below K, or granularity='channel'")
        matrix = np.concatenate([matrix, np.zeros((rows, padded_cols - cols), matrix.dtype)], axis=1)
    arrays = fmt.quantize_arrays(matrix, group_size, opts)
    check_arrays(arrays, fmt.array_specs(rows, padded_cols, group_size, opts), where=f"quantizer of {fmt.name}")
    return QuantizedTensor(fmt, (rows, cols), group_size, opts, arrays, padded_cols, device)


def load(path, *, use_file_format: bool = False) -> QuantizedTensor:
    """Read a file written by :meth:`QuantizedTensor.save`: exactly what was saved, or a
    :class:`~hwlab.formats.storage.StorageError` naming the file and what is wrong (every check
    is listed in :mod:`hwlab.formats.storage`).

    A format that is not registered here (a colleague's ``define_lut``, ``define_minifloat`` or
    ``define_mixture``) is rebuilt from the definition stored in the file, with a
    :class:`FormatRebuiltWarning`; a registered format whose definition differs raises, unless
    ``use_file_format=True`` asks for the file's own definition (element formats and mixtures).
    """
    path = os.fsdecode(os.fspath(path))  # bytes paths too, as open() takes them
    with storage.open_saved(path) as saved, saved.reading() as finish:  # the helper thread reads meanwhile
        meta = saved.meta
        try:  # checked before the rest is read, as the codes are scanned while read; raised after the checksums
            fmt, opts = storage.resolve(path, meta, use_file_format)
            scans = read_scans(fmt, storage.expected_layout(path, meta, saved.entries, fmt, opts), opts)
            found = None
        except StorageError as exc:
            scans, found = {}, exc
        arrays = finish(scans)
    if found is not None:
        raise found
    (rows, cols), group_size, padded_cols = meta["shape"], meta["group_size"], meta["padded_cols"]
    qt = QuantizedTensor(fmt, (rows, cols), group_size, opts, arrays, padded_cols)
    with storage.naming(path):  # a StorageError naming the file
        check_stored(qt, scans)
    return qt
