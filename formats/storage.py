"""Saving and loading quantized tensors: a file loads exactly what was saved, or raises.

A saved file is one safetensors file: the stored arrays, and under the metadata key ``hwlab`` one
JSON object (strict JSON, no NaN or infinities) with

``version``, ``format``, ``fingerprint``, ``definition``, ``description``
    the format's name, the short hash of its definition, the definition itself (so a format that
    is not registered where the file is read is rebuilt from it) and its description;
``shape``, ``group_size``, ``padded_cols``, ``options``
    what was quantized and how;
``layout``
    the :class:`~hwlab.formats.layout.ArrayLayout` of every stored array;
``checksums``
    the xxHash XXH3-64 of every array's bytes (``xxhash``: 10+ GB/s, so checking costs a fraction
    of reading), so a flipped bit anywhere in the data is an error naming the array;
``digest``
    the XXH3-64 of all of the above (the options and the checksums included), so an edited or
    corrupted field is an error too.

:func:`~hwlab.formats.qtensor.load` checks, in this order, and raises :class:`StorageError` (a ``ValueError``) naming the
file and what is wrong: the file reads as safetensors; the metadata is a JSON object whose every
field has the right type (strict JSON: no NaN, infinities or repeated keys); the digest; every array's checksum; the format (registered, or rebuilt
from the stored definition); the options; that ``shape``, ``padded_cols``, ``group_size`` and
the granularity agree with each other; every array's dtype and shape derived from them; the
stored layout; and every stored value (:mod:`hwlab.formats.validate`: codes the quantizer can
emit, finite positive scales, zero padding).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import warnings

import numpy as np
import xxhash

from .base import Format
from .define import format_from_definition
from .registry import get_format
from .validate import check_stored

FILE_VERSION = 3  # 3: checksums and digest; 2: layout descriptors; bump when the stored layout changes
METADATA_KEY = "hwlab"


class StorageError(ValueError):
    """A file that cannot be loaded exactly as it was saved: unreadable, corrupted or inconsistent."""


class FormatRebuiltWarning(UserWarning):
    """A file's format was not registered here and was rebuilt from the definition stored in it."""


def checksum(array: np.ndarray) -> str:
    """XXH3-64 of an array's bytes (C order), as 16 hex digits."""
    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(array).view(np.uint8).ravel())


def digest(meta: dict) -> str:
    """XXH3-64 of the canonical JSON of ``meta`` without its ``digest`` field."""
    body = {k: v for k, v in meta.items() if k != "digest"}
    return xxhash.xxh3_64_hexdigest(json.dumps(body, sort_keys=True, allow_nan=False).encode())


def metadata(qt) -> dict:
    """Everything :func:`save` writes beside the arrays of ``qt`` (JSON-able), digest included."""
    fmt = qt.format
    meta = {"version": FILE_VERSION, "format": fmt.name, "fingerprint": fmt.fingerprint(),
            "definition": fmt.definition(), "description": getattr(fmt, "description", ""),
            "shape": list(qt.shape), "group_size": qt.group_size, "padded_cols": qt.padded_cols,
            "options": options_to_json(qt.options), "layout": {n: a.to_json() for n, a in qt.layout.items()},
            "checksums": {n: checksum(a) for n, a in qt.arrays.items()}}
    meta["digest"] = digest(meta)
    return meta


def save(qt, path) -> None:
    """Write ``qt`` to ``path`` (safetensors); :func:`load` restores it bit-exactly."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path}: it is a directory (name a file, e.g. q.safetensors)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {path}: directory {folder} does not exist")
    text = json.dumps(metadata(qt), allow_nan=False)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in qt.arrays.items()}, path, metadata={METADATA_KEY: text})
    except SafetensorError as exc:  # names a temporary file of its own, not the path asked for
        raise OSError(f"cannot save to {path}: {str(exc).split(' at path ')[0]}") from None


def read(path) -> tuple[dict, dict]:
    """The checked metadata and the arrays of a saved file: readable, every metadata field of its
    type, the digest and every checksum right (``StorageError`` otherwise)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a saved tensor")
    if not os.path.isfile(path):
        raise StorageError(f"{path} is not a regular file")
    raw, arrays = _read(path)
    meta = _parse(path, raw)
    with naming(path):
        matches = digest(meta) == meta["digest"]
    if not matches:
        raise StorageError(f"{path}: the metadata does not match its digest (corrupted or edited)")
    if set(meta["checksums"]) != set(arrays):
        raise StorageError(f"{path}: checksums name arrays {sorted(meta['checksums'])}, the file holds {sorted(arrays)}")
    for name, a in arrays.items():
        if checksum(a) != meta["checksums"][name]:
            raise StorageError(f"{path}: array {name!r} does not match its checksum (corrupted)")
    return meta, arrays


def resolve(path: str, meta: dict, use_file_format: bool):
    """The format and effective options of a file (registered, or rebuilt from its definition)."""
    with naming(path):
        fmt = file_format(path, meta["format"], meta["fingerprint"], meta["definition"], meta["description"],
                          use_file_format)
        opts = fmt.option_values(options_from_json(meta["options"]))
    (_, cols), group_size, padded_cols = meta["shape"], meta["group_size"], meta["padded_cols"]
    with naming(path + ": field 'group_size'"):
        fmt.check_group_size(group_size)
    grouped = opts.get("granularity", "group") == "group"
    expected_cols = -(-cols // group_size) * group_size if grouped else cols
    if padded_cols != expected_cols:
        raise StorageError(f"{path}: field 'padded_cols' is {padded_cols}, but K={cols} with group size {group_size} "
                           f"({opts.get('granularity', 'group')} scales) pads to {expected_cols}")
    return fmt, opts


def check_loaded(path: str, meta: dict, qt) -> None:
    """The stored layout equals the format's, and every stored value is one the format can produce."""
    expected = {n: a.to_json() for n, a in qt.layout.items()}
    if meta["layout"] != expected:
        wrong = sorted(set(expected) ^ set(meta["layout"])) or [n for n in expected if meta["layout"][n] != expected[n]]
        raise StorageError(f"{path}: the stored layout does not match the format's layout of these arrays "
                           f"(differs for {wrong}); the metadata was corrupted or edited")
    with naming(path):
        check_stored(qt)


def file_format(path: str, name: str, fingerprint: str, definition: dict, description: str,
                use_file_format: bool) -> Format:
    """The registered format ``name`` if its fingerprint matches, else rebuilt from ``definition``."""
    try:
        fmt = get_format(name)
    except ValueError:
        pass
    else:
        if fmt.fingerprint() == fingerprint:
            if fmt.definition() != definition:
                raise ValueError(f"{path}: the stored definition does not match format {name!r}, whose fingerprint "
                                 "the file names (corrupted or edited)")
            return fmt
        if not use_file_format:
            raise ValueError(f"{path}: format {name!r} registered here differs from the one the file was "
                             "saved with (it was redefined, or the file's was made with register=False under "
                             "this name); load(path, use_file_format=True) decodes with the file's definition")
    if definition.get("name") != name:
        raise ValueError(f"{path}: metadata names format {name!r} but its stored definition is of "
                         f"{definition.get('name')!r} (corrupted or edited)")
    fmt = format_from_definition(definition, description)
    if fmt.fingerprint() != fingerprint:
        raise ValueError(f"{path}: the stored definition of format {name!r} does not match its fingerprint "
                         "(corrupted or edited)")
    why = "differs from the registered one" if use_file_format else "is not registered here"
    warnings.warn(f"{path}: format {name!r} {why}; rebuilt it from the definition stored in the file",
                  FormatRebuiltWarning, stacklevel=4)
    return fmt


def _read(path: str) -> tuple[str, dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as fh:
            raw = (fh.metadata() or {}).get(METADATA_KEY)
            arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, ValueError, OSError, MemoryError) as exc:
        raise StorageError(f"{path} is not a readable safetensors file (truncated or corrupted?): "
                           f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if raw is None:
        raise StorageError(f"{path} has no {METADATA_KEY!r} metadata: it was not written by QuantizedTensor.save")
    return raw, arrays


# field -> (what it must be, check); checked in this order, each naming the field when it fails
def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _str_dict(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


FIELDS = {
    "version": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "format": ("a string", lambda v: isinstance(v, str)),
    "fingerprint": ("a string", lambda v: isinstance(v, str)),
    "definition": ("an object", _str_dict),
    "description": ("a string", lambda v: isinstance(v, str)),
    "shape": ("two positive integers", lambda v: isinstance(v, list) and len(v) == 2 and all(map(_positive_int, v))),
    "group_size": ("a positive integer", _positive_int),
    "padded_cols": ("a positive integer", _positive_int),
    "options": ("an object", _str_dict),
    "layout": ("an object", _str_dict),
    "checksums": ("an object of strings", lambda v: _str_dict(v) and all(isinstance(c, str) for c in v.values())),
    "digest": ("a string", lambda v: isinstance(v, str)),
}


def _parse(path: str, raw: str) -> dict:
    """The metadata object, every field checked for its type (``StorageError`` naming the field)."""
    try:
        meta = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        why = str(exc) if isinstance(exc, _StrictJSONError) else type(exc).__name__
        raise StorageError(f"{path}: the {METADATA_KEY!r} metadata is not valid JSON ({why})") from None
    if not isinstance(meta, dict):
        raise StorageError(f"{path}: the {METADATA_KEY!r} metadata must be a JSON object, got {type(meta).__name__}")
    if "version" in meta and meta["version"] != FILE_VERSION:
        raise StorageError(f"{path} has file version {meta['version']!r}; this hwlab reads version {FILE_VERSION}")
    for field, (what, ok) in FIELDS.items():
        if field not in meta:
            raise StorageError(f"{path}: metadata field {field!r} is missing")
        if not ok(meta[field]):
            raise StorageError(f"{path}: metadata field {field!r} must be {what}, got {meta[field]!r:.100}")
    return meta


class _StrictJSONError(ValueError):
    """What strict JSON refuses that Python's json module accepts."""


def _refuse_constant(name: str):
    raise _StrictJSONError(f"{name} is not a JSON number; the metadata is strict JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _StrictJSONError(f"the number {text[:40]} overflows a float")
    return value


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _StrictJSONError(f"key {next(k for k in keys if keys.count(k) > 1)!r:.60} appears twice in one object")
    return dict(pairs)


@contextlib.contextmanager
def naming(path: str):
    """Turn any error a check of ``path`` raises into a :class:`StorageError` naming the file."""
    try:
        yield
    except StorageError:
        raise
    except (ValueError, TypeError, ArithmeticError, LookupError, RecursionError) as exc:
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        raise StorageError(text if text.startswith(path) else f"{path}: {text}") from None


def check_arrays(arrays: dict, specs: dict, *, where: str, error=ValueError) -> None:
    """Raise ``error`` unless ``arrays`` holds exactly the arrays of ``specs`` with their dtypes and shapes."""
    missing, extra = sorted(set(specs) - set(arrays)), sorted(set(arrays) - set(specs))
    if missing or extra:
        raise error(f"{where}: stored arrays {sorted(arrays)} do not match the expected {sorted(specs)}")
    for name, (dtype, shape) in specs.items():
        a = arrays[name]
        if a.dtype != np.dtype(dtype) or a.shape != tuple(shape):
            raise error(f"{where}: array {name!r} is {a.dtype}{list(a.shape)}, expected {np.dtype(dtype)}{list(shape)}")


def options_to_json(options: dict) -> dict:
    """Options as JSON values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def options_from_json(options: dict) -> dict:
    """Options from JSON (lists as tuples, the canonical form)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
