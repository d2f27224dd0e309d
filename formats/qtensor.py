"""Quantized tensors: ``quantize`` a weight matrix, dequantize it, save and load it bit-exactly."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from .arrays import as_weight_matrix, is_torch_tensor
from .metrics import error_metrics
from .registry import get_format

FILE_VERSION = 1  # bump when the stored layout changes
GRANULARITY_OPTION = "granularity"


@dataclasses.dataclass(frozen=True, eq=False)  # arrays compare element-wise: identity, not ==
class QuantizedTensor:
    """A quantized ``[N, K]`` weight matrix: stored arrays plus what is needed to read them.

    ``arrays`` holds everything stored (packed ``codes``, ``scales``, zero points, type ids,
    second-level scales); ``bits_per_weight`` counts all of it. ``padded_cols`` is the K that
    was quantized (greater than ``shape[1]`` only when ``pad=True`` padded K with zeros).
    """

    format_name: str
    shape: tuple[int, int]
    group_size: int
    options: dict
    arrays: dict
    padded_cols: int
    device: str | None = None  # torch device of the input, where dequantize() returns to

    @property
    def format(self):
        """The :class:`~hwlab.formats.Format` of this tensor."""
        return get_format(self.format_name)

    @property
    def codes(self) -> np.ndarray:
        """Packed codes (``uint32`` words along K; layout in :mod:`hwlab.formats.packing`)."""
        return self.arrays["codes"]

    @property
    def nbytes(self) -> int:
        """Bytes of every stored array."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def bits_per_weight(self) -> float:
        """Stored bits (codes, scales, zeros, type ids, everything) per weight of ``shape``."""
        return 8 * self.nbytes / (self.shape[0] * self.shape[1])

    def dequantize(self, device=None):
        """Float32 ``[N, K]``: a numpy array, or a torch tensor on ``device`` (default: the input's)."""
        w = self._dequantize_numpy()
        device = device if device is not None else self.device
        if device is None:
            return w
        import torch  # only when asked for a torch tensor

        return torch.from_numpy(np.ascontiguousarray(w)).to(device)

    def error(self, w, x=None) -> dict:
        """Error metrics of this tensor against the original ``w`` (see :func:`error_metrics`)."""
        w, _ = as_weight_matrix(w)
        if w.shape != self.shape:
            raise ValueError(f"W has shape {w.shape} but this tensor was quantized from {self.shape}")
        if is_torch_tensor(x):
            x = x.detach().float().cpu().numpy()
        return error_metrics(w, self._dequantize_numpy(), x)

    def _dequantize_numpy(self) -> np.ndarray:
        """Float32 numpy ``[N, K]`` (padding removed)."""
        rows, cols = self.shape
        w = self.format.dequantize_arrays(self.arrays, rows, self.padded_cols, self.group_size, self.options)
        return w[:, :cols]

    def save(self, path) -> None:
        """Write a safetensors file (arrays + JSON metadata); :func:`load` restores it bit-exactly."""
        from safetensors.numpy import save_file

        fmt = self.format
        meta = {"version": FILE_VERSION, "format": fmt.name, "fingerprint": fmt.fingerprint(),
                "definition": fmt.definition(), "shape": list(self.shape), "group_size": self.group_size,
                "padded_cols": self.padded_cols, "options": _jsonable(self.options)}
        save_file({k: np.ascontiguousarray(v) for k, v in self.arrays.items()}, os.fspath(path),
                  metadata={"hwlab": json.dumps(meta)})

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
        A registered format name (``list_formats()``) or a ``Format``.
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
        matrix = np.concatenate([matrix, np.zeros((rows, padded_cols - cols), matrix.dtype)], axis=1)
    arrays = fmt.quantize_arrays(matrix, group_size, opts)
    _check_arrays(arrays, fmt.array_specs(rows, padded_cols, group_size, opts), where=f"quantizer of {fmt.name}")
    return QuantizedTensor(fmt.name, (rows, cols), group_size, opts, arrays, padded_cols, device)


def load(path) -> QuantizedTensor:
    """Read a file written by :meth:`QuantizedTensor.save`, checking it is whole and consistent."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(path, framework="numpy") as fh:
            raw = (fh.metadata() or {}).get("hwlab")
            arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupted?): {exc}") from None
    if raw is None:
        raise ValueError(f"{path} has no 'hwlab' metadata: it was not written by QuantizedTensor.save")
    try:
        meta = json.loads(raw)
        version, name = meta["version"], meta["format"]
        rows, cols = (int(v) for v in meta["shape"])
        group_size, padded_cols = int(meta["group_size"]), int(meta["padded_cols"])
        saved_options, fingerprint = meta["options"], meta["fingerprint"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed hwlab metadata ({exc!r})") from None
    if version != FILE_VERSION:
        raise ValueError(f"{path} has file version {version}; this hwlab reads version {FILE_VERSION}")
    try:
        fmt = get_format(name)
    except ValueError:
        raise ValueError(f"{path} was saved with format {name!r}, which is not registered here; "
                         "define (register) it before loading") from None
    if fmt.fingerprint() != fingerprint:
        raise ValueError(f"{path}: format {name!r} registered here differs from the one the file was "
                         "saved with (its definition changed)")
    opts = fmt.option_values(_from_json(saved_options))
    _check_arrays(arrays, fmt.array_specs(rows, padded_cols, group_size, opts), where=path)
    return QuantizedTensor(name, (rows, cols), group_size, opts, arrays, padded_cols)


def _check_arrays(arrays: dict, specs: dict, *, where: str) -> None:
    missing, extra = sorted(set(specs) - set(arrays)), sorted(set(arrays) - set(specs))
    if missing or extra:
        raise ValueError(f"{where}: stored arrays {sorted(arrays)} do not match the expected {sorted(specs)}")
    for name, (dtype, shape) in specs.items():
        a = arrays[name]
        if a.dtype != np.dtype(dtype) or a.shape != tuple(shape):
            raise ValueError(f"{where}: array {name!r} is {a.dtype}{list(a.shape)}, "
                             f"expected {np.dtype(dtype)}{list(shape)}")


def _jsonable(options: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _from_json(options: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
