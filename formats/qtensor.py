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
import json
import os
import types
import warnings

import numpy as np

from .arrays import as_weight_matrix, is_torch_tensor
from .base import Format
from .define import format_from_definition
from .metrics import error_metrics
from .registry import get_format
from .unpacked import Unpacked

FILE_VERSION = 2  # 2: the layout descriptors are stored; bump when the stored layout changes
GRANULARITY_OPTION = "granularity"


class FormatRebuiltWarning(UserWarning):
    """A file's format was not registered here and was rebuilt from the definition stored in it."""


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

    @property
    def layout(self) -> dict:
        """Name -> :class:`~hwlab.formats.layout.ArrayLayout` of every stored array."""
        return self.format.array_layout(self.shape[0], self.padded_cols, self.group_size, self.options)

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

        return torch.from_numpy(np.ascontiguousarray(w)).to(device)

    def error(self, w, x=None) -> dict:
        """Error metrics of this tensor against the original ``w`` (see :func:`error_metrics`)."""
        w, _ = as_weight_matrix(w)
        if w.shape != self.shape:
            raise ValueError(f"W has shape {w.shape} but this tensor was quantized from {self.shape}")
        if is_torch_tensor(x):
            x = x.detach().float().cpu().numpy()
        return error_metrics(w, self.unpacked().dequantize(), x)

    def metadata(self) -> dict:
        """What :meth:`save` writes beside the arrays (JSON-able)."""
        fmt = self.format
        return {"version": FILE_VERSION, "format": fmt.name, "fingerprint": fmt.fingerprint(),
                "definition": fmt.definition(), "description": getattr(fmt, "description", ""),
                "shape": list(self.shape), "group_size": self.group_size, "padded_cols": self.padded_cols,
                "options": _jsonable(self.options), "layout": {name: a.to_json() for name, a in self.layout.items()}}

    def save(self, path) -> None:
        """Write a safetensors file (arrays + JSON metadata); :func:`load` restores it bit-exactly."""
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in self.arrays.items()}, os.fspath(path),
                  metadata={"hwlab": json.dumps(self.metadata(), allow_nan=False)})

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
        matrix = np.concatenate([matrix, np.zeros((rows, padded_cols - cols), matrix.dtype)], axis=1)
    arrays = fmt.quantize_arrays(matrix, group_size, opts)
    _check_arrays(arrays, fmt.array_specs(rows, padded_cols, group_size, opts), where=f"quantizer of {fmt.name}")
    return QuantizedTensor(fmt, (rows, cols), group_size, opts, arrays, padded_cols, device)


def load(path, *, use_file_format: bool = False) -> QuantizedTensor:
    """Read a file written by :meth:`QuantizedTensor.save`, checking it is whole and consistent.

    A format that is not registered here (a colleague's ``define_lut``, ``define_minifloat`` or
    ``define_mixture``) is rebuilt from the definition stored in the file, with a
    :class:`FormatRebuiltWarning`; a registered format whose definition differs raises, unless
    ``use_file_format=True`` asks for the file's own definition (element formats and mixtures).
    """
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
        saved_options, fingerprint, definition = meta["options"], meta["fingerprint"], meta["definition"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed hwlab metadata ({exc!r})") from None
    if version != FILE_VERSION:
        raise ValueError(f"{path} has file version {version}; this hwlab reads version {FILE_VERSION}")
    fmt = _file_format(path, name, fingerprint, definition, meta.get("description", ""), use_file_format)
    opts = fmt.option_values(_from_json(saved_options))
    _check_arrays(arrays, fmt.array_specs(rows, padded_cols, group_size, opts), where=path)
    qt = QuantizedTensor(fmt, (rows, cols), group_size, opts, arrays, padded_cols)
    expected = {n: a.to_json() for n, a in qt.layout.items()}
    stored = meta.get("layout")
    if stored != expected:
        wrong = sorted(set(expected) ^ set(stored)) if isinstance(stored, dict) else "all"
        if isinstance(stored, dict) and not wrong:
            wrong = [n for n in expected if stored[n] != expected[n]]
        raise ValueError(f"{path}: the stored layout does not match the format's layout of these arrays "
                         f"(differs for {wrong}); the metadata was corrupted or edited")
    return qt


def _file_format(path: str, name: str, fingerprint: str, definition: dict, description: str,
                 use_file_format: bool) -> Format:
    """The registered format ``name`` if its fingerprint matches, else rebuilt from ``definition``."""
    try:
        fmt = get_format(name)
    except ValueError:
        pass
    else:
        if fmt.fingerprint() == fingerprint:
            return fmt
        if not use_file_format:
            raise ValueError(f"{path}: format {name!r} registered here differs from the one the file was "
                             "saved with (it was redefined, or the file's was made with register=False under "
                             "this name); load(path, use_file_format=True) decodes with the file's definition")
    if not isinstance(definition, dict) or definition.get("name") != name:
        stored = definition.get("name") if isinstance(definition, dict) else definition
        raise ValueError(f"{path}: metadata names format {name!r} but its stored definition is of {stored!r} "
                         "(corrupted or edited)")
    fmt = format_from_definition(definition, description if isinstance(description, str) else "")
    if fmt.fingerprint() != fingerprint:
        raise ValueError(f"{path}: the stored definition of format {name!r} does not match its fingerprint "
                         "(corrupted or edited)")
    warnings.warn(f"{path}: format {name!r} {'differs from the registered one' if use_file_format else 'is not registered here'}; "
                  "rebuilt it from the definition stored in the file", FormatRebuiltWarning, stacklevel=3)
    return fmt


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
