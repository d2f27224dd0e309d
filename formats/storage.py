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
file and what is wrong: the file reads as safetensors (:class:`SavedFile`: the header is strict JSON,
its arrays' offsets are contiguous, in bounds and agree with their dtypes and shapes, and they end
where the file does); the metadata is a JSON object whose every field has the right type (strict
JSON: no NaN, infinities or repeated keys); the digest; every array's checksum; the format
(registered, or rebuilt from the stored definition); the options; that ``shape``, ``padded_cols``,
``group_size`` and the granularity agree with each other; every array's dtype and shape derived
from them; the stored layout; and every stored value (:mod:`hwlab.formats.validate`: codes the
quantizer can emit, finite positive scales, zero padding).

The checks that need the format are made before the arrays are read, so that the read can hash and
scan each piece of an array while it is in cache (:class:`_Reading`: one pass over the file, one
copy of its bytes, pieces of 1 MiB read, hashed and scanned by two threads at once, the hashes in
file order); what they find is raised only after every checksum matched, in the order above.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import threading
import typing
import warnings

import numpy as np
import xxhash

from .base import Format
from .define import format_from_definition
from .registry import get_format

FILE_VERSION = 3  # 3: checksums and digest; 2: layout descriptors; bump when the stored layout changes
METADATA_KEY = "hwlab"
MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses longer headers
# Bytes read, then hashed and scanned, at a time by one thread (:class:`_Reading`): inside the L2
# cache of a core (1 MiB on AMD Zen 4/5, 2 MiB on Intel Sapphire Rapids), so that the hash and the
# scan find the piece there, and large enough that the threads rarely wait for each other.
PIECE_BYTES = 1 << 20
# safetensors dtype names (github.com/huggingface/safetensors, the format's README) -> numpy
DTYPES = {"BOOL": "?", "U8": "u1", "I8": "i1", "U16": "<u2", "I16": "<i2", "F16": "<f2", "U32": "<u4", "I32": "<i4",
          "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8"}


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


@dataclasses.dataclass(frozen=True)
class Entry:
    """One array of a safetensors file: its dtype, shape and bytes ``[start, end)`` of the data
    (which follows the header)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@contextlib.contextmanager
def open_saved(path: str):
    """The :class:`SavedFile` of ``path``, open until the ``with`` block ends."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a saved tensor")
    if not os.path.isfile(path):
        raise StorageError(f"{path} is not a regular file")
    try:
        file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise StorageError(f"{path} cannot be read: {exc}") from None
    with file:
        yield SavedFile(path, file)


class SavedFile:
    """A file written by :func:`save`, open (:func:`open_saved`): its header read and checked
    (``entries``: name -> :class:`Entry`), its metadata parsed, every field of its type, and
    matching its digest (``meta``); :meth:`read_arrays` reads the arrays. ``StorageError`` naming
    the file for anything wrong."""

    def __init__(self, path: str, file):
        self.path, self._file = path, file
        raw, self.entries = self._header(os.fstat(file.fileno()).st_size)
        self.meta = _parse(path, raw)
        with naming(path):
            matches = digest(self.meta) == self.meta["digest"]
        if not matches:
            raise StorageError(f"{path}: the metadata does not match its digest (corrupted or edited)")

    def _unreadable(self, why: str) -> StorageError:
        return StorageError(f"{self.path} is not a readable safetensors file (truncated or corrupted?): {why}")

    def _header(self, size: int) -> tuple[str, dict]:
        """The hwlab metadata text and the entries of the safetensors header (8 bytes of header
        length, little-endian, then that many bytes of JSON), the file ``size`` bytes long."""
        if size < 8:
            raise self._unreadable(f"it is {size} bytes long, shorter than the 8 bytes of the header length")
        length = self._header_bytes = int.from_bytes(self._file.read(8), "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise self._unreadable(f"a header of {length} bytes does not fit in a file of {size} bytes")
        try:
            header = json.loads(self._file.read(length).decode("utf-8"), object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise self._unreadable(f"the header is not JSON ({type(exc).__name__}: {str(exc)[:120]})") from None
        if not isinstance(header, dict):
            raise self._unreadable(f"the header is a JSON {type(header).__name__}, not an object")
        extra = header.pop("__metadata__", {})
        if not (_str_dict(extra) and all(isinstance(v, str) for v in extra.values())):
            raise self._unreadable("its '__metadata__' is not an object of strings")
        entries = {name: self._entry(name, info) for name, info in sorted(header.items())}
        self._check_offsets(entries, size - 8 - length)
        if METADATA_KEY not in extra:
            raise StorageError(f"{self.path} has no {METADATA_KEY!r} metadata: it was not written by "
                               "QuantizedTensor.save")
        return extra[METADATA_KEY], entries

    def _entry(self, name: str, info) -> Entry:
        """The :class:`Entry` of header item ``name``: exactly ``dtype``, ``shape`` and
        ``data_offsets``, the offsets as many bytes apart as the dtype and shape take."""
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
            raise self._unreadable(f"the header entry of {name!r:.60} is not dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not (isinstance(dtype, str) and dtype in DTYPES):
            raise self._unreadable(f"array {name!r:.60} has dtype {dtype!r:.20}, expected one of {sorted(DTYPES)}")
        if not (isinstance(shape, list) and all(_count(n) for n in shape)):
            raise self._unreadable(f"array {name!r:.60} has shape {shape!r:.60}, not a list of counts")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_count, offsets))):
            raise self._unreadable(f"array {name!r:.60} has data_offsets {offsets!r:.60}, not two byte offsets")
        dtype, (start, end) = np.dtype(DTYPES[dtype]), offsets
        if end - start != dtype.itemsize * math.prod(shape):
            raise self._unreadable(f"array {name!r:.60} of {dtype}{shape} takes {dtype.itemsize * math.prod(shape)} "
                                   f"bytes, but its data_offsets [{start}, {end}] hold {end - start}")
        return Entry(dtype, tuple(shape), start, end)

    def _check_offsets(self, entries: dict, data_bytes: int) -> None:
        """The arrays' bytes follow each other from the start of the data, without a gap or an
        overlap, to the end of the file (``data_bytes`` after the header)."""
        at = 0
        for name, e in sorted(entries.items(), key=lambda item: (item[1].start, item[1].end)):
            if e.start != at:
                raise self._unreadable(f"array {name!r:.60} starts at byte {e.start} of the data, expected {at} "
                                       "(a gap or an overlap)")
            at = e.end
        if at != data_bytes:
            raise self._unreadable(f"its arrays end at byte {at} of the data, but the file holds {data_bytes}")

    def read_arrays(self, scans: dict) -> dict:
        """Name -> array, each read straight into its own memory and hashed (XXH3-64, streaming) and
        scanned (``scans``: name -> the scans of :func:`~hwlab.formats.validate.read_scans`, run on
        the rows of that array) piece by piece while the piece is in cache (:class:`_Reading`);
        ``StorageError`` if the file ends early or an array does not match its checksum (the first
        such array in file order)."""
        checksums = self.meta["checksums"]
        if set(checksums) != set(self.entries):
            raise StorageError(f"{self.path}: checksums name arrays {sorted(checksums)}, the file holds "
                               f"{sorted(self.entries)}")
        arrays, hashers, pieces = self._pieces(scans)
        reading = _Reading(self._file, pieces)
        if len(pieces) > 1:  # a second thread reads, hashes and scans pieces beside this one
            helper = _helper().submit(reading.run)
            try:
                reading.run()
            finally:
                concurrent.futures.wait([helper])
            helper.result()
        else:
            reading.run()
        if reading.error is not None:
            raise self._unreadable(reading.error)
        for name, hasher in hashers.items():  # in file order
            if hasher.hexdigest() != checksums[name]:
                raise StorageError(f"{self.path}: array {name!r} does not match its checksum (corrupted)")
        return dict(sorted(arrays.items()))

    def _pieces(self, scans: dict) -> tuple[dict, dict, list]:
        """Every array, empty, in file order; its hasher; and the :class:`_Piece` objects that fill
        them: whole rows of an array up to ``PIECE_BYTES`` (at least one row), consecutive arrays
        (or their ends) sharing a piece up to that size."""
        arrays, hashers, pieces, piece, size = {}, {}, [], [], 0
        base = 8 + self._header_bytes
        for name, e in sorted(self.entries.items(), key=lambda item: item[1].start):
            array = arrays[name] = np.empty(e.shape, e.dtype)
            hasher = hashers[name] = xxhash.xxh3_64()  # streaming: the same digest as all bytes at once
            rows = array.reshape(e.shape[0] if array.ndim and array.size else 1, -1)
            row_bytes = rows.shape[1] * e.dtype.itemsize
            data = memoryview(array.reshape(-1).view(np.uint8))
            step, array_scans = max(1, PIECE_BYTES // max(1, row_bytes)), tuple(scans.get(name, ()))
            for first in range(0, rows.shape[0] if array.size else 0, step):
                part = _Part(hasher, data[first * row_bytes:(first + step) * row_bytes], rows[first:first + step], first,
                             array_scans)
                if piece and size + len(part.data) > PIECE_BYTES:
                    pieces.append(_Piece.of(base, piece))
                    base, piece, size = base + size, [], 0
                piece.append(part)
                size += len(part.data)
        if piece:
            pieces.append(_Piece.of(base, piece))
        return arrays, hashers, pieces


class _Part(typing.NamedTuple):  # a named tuple: made a few dozen times a load, where a dataclass costs 2 us
    """Rows ``first ..`` of one array (``rows``), their bytes (``data``), the array's hasher and the
    scans of its rows."""

    hasher: object
    data: memoryview
    rows: np.ndarray
    first: int
    scans: tuple


class _Piece(typing.NamedTuple):
    """What one read fills: ``parts``, one after the other in the file from byte ``offset``, and what
    a reading thread does with them, worked out beforehand so that it runs little Python between the
    calls that release the GIL (taking the GIL back while the other thread holds it costs ~50 us
    where an idle core halts, on a virtual machine): their bytes (``views``, ``size`` in all), the
    ``update`` of each part's hasher with its bytes (``hashes``) and of each of its scans with its rows
    and their first row (``scans``)."""

    offset: int
    parts: tuple
    views: tuple
    size: int
    hashes: tuple
    scans: tuple

    @classmethod
    def of(cls, offset: int, parts: list) -> _Piece:
        """The piece of ``parts`` from byte ``offset``."""
        views = tuple(part.data for part in parts)
        return cls(offset, tuple(parts), views, sum(map(len, views)),
                   tuple((part.hasher.update, part.data) for part in parts),
                   tuple((scan.update, part.rows, part.first) for part in parts for scan in part.scans))


class _Reading:
    """The pieces of a file read by the threads that call :meth:`run` at once, each piece by one of
    them: it claims the next piece, reads it (``os.preadv``: no shared file position), hashes it
    in its turn (the pieces are hashed in file order, so each array's bytes in order), hands the
    turn on and scans it (first, if the turn has not come yet), all while the piece is in its
    core's cache. ``error``: why the file could not be read in full (it shrank, or the read
    failed), else ``None``."""

    TURN_POLL_S = 0.1  # how often a thread waiting for its turn looks whether the other one gave up

    def __init__(self, file, pieces: list):
        self._file, self._fd, self._pieces = file, file.fileno(), pieces
        self._seek = threading.Lock()  # where there is no os.preadv: one seek and read at a time
        self._claims = itertools.count()  # next() is atomic: each piece goes to one thread
        self._turns = [threading.Lock() for _ in range(len(pieces) + 1)]  # turn k: piece k may hash
        for turn in self._turns[1:]:
            turn.acquire()
        self._stopped = False  # a thread left run() on an exception (an interrupt): the other stops too
        self.error = None

    def run(self) -> None:
        """Read, hash and scan pieces until none is left."""
        pieces, turns = self._pieces, self._turns
        try:
            while not self._stopped and (k := next(self._claims)) < len(pieces):
                piece = pieces[k]
                whole = self._read(piece)
                turn = turns[k].acquire(blocking=False)
                if not turn:  # the piece before is still being hashed: scan this one meanwhile
                    self._scan(piece, whole)
                    if not self._wait_turn(k):
                        return
                if whole:
                    for update, data in piece.hashes:
                        update(data)  # xxhash releases the GIL, so do preadv and the scans
                turns[k + 1].release()
                if turn:
                    self._scan(piece, whole)
        except BaseException:
            self._stopped = True
            raise

    @staticmethod
    def _scan(piece: _Piece, whole: bool) -> None:
        """Run the scans of every part of ``piece`` on its rows, if it was read whole."""
        for update, rows, first in piece.scans if whole else ():
            update(rows, first)

    def _read(self, piece: _Piece) -> bool:
        """Fill ``piece`` from the file; ``False`` (and ``error`` set) if it could not be read whole."""
        try:
            got = self._read_at(piece.views, piece.offset)
        except OSError as exc:
            self.error = f"reading it failed ({exc})"
            return False
        if got != piece.size:
            self.error = "it ended before its last array did (it shrank while it was read?)"
            return False
        return True

    def _read_at(self, views: tuple, offset: int) -> int:
        """Bytes read into ``views``, one after the other, from byte ``offset`` of the file:
        ``os.preadv`` where there is one (Linux, the BSDs, macOS 11+), else a seek and reads under
        a lock (Windows: the threads still hash and scan at once)."""
        if hasattr(os, "preadv"):
            return os.preadv(self._fd, views, offset)
        with self._seek:
            self._file.seek(offset)
            return sum(self._file.readinto(view) or 0 for view in views)

    def _wait_turn(self, k: int) -> bool:
        """Wait until piece ``k`` may be hashed; ``False`` if the other thread gave up meanwhile."""
        while not self._turns[k].acquire(timeout=self.TURN_POLL_S):
            if self._stopped:
                return False
        return True


@functools.lru_cache(maxsize=1)
def _helper() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that reads beside the loading one (waiting on its queue when idle)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hwlab-load")


if hasattr(os, "register_at_fork"):  # a forked child has no helper thread: it starts its own
    os.register_at_fork(after_in_child=_helper.cache_clear)


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


def format_layout(fmt: Format, rows: int, cols: int, group_size: int, opts: dict) -> dict:
    """``fmt.array_layout(rows, cols, group_size, opts)``, worked out once per format, shape and
    options (a format never changes: a new definition is a new format)."""
    return dict(_layouts(fmt, rows, cols, group_size, opts)[0])


def _layouts(fmt: Format, rows: int, cols: int, group_size: int, opts: dict) -> tuple[dict, dict]:
    """The layout and its JSON (as stored in a file), from the cache where the options hash."""
    key = (rows, cols, group_size, tuple(sorted(opts.items())))
    try:
        hash(key)
    except TypeError:  # an option value that is not hashable: nothing to look it up by
        return _layout_and_json(fmt, *key)
    return _cached_layouts(fmt, *key)


def _layout_and_json(fmt: Format, rows: int, cols: int, group_size: int, options: tuple) -> tuple[dict, dict]:
    layout = fmt.array_layout(rows, cols, group_size, dict(options))
    return layout, {n: a.to_json() for n, a in layout.items()}


_cached_layouts = functools.lru_cache(maxsize=256)(_layout_and_json)


def expected_layout(path: str, meta: dict, entries: dict, fmt: Format, opts: dict) -> dict:
    """The layout of ``fmt`` for the file's ``shape``, ``padded_cols`` and ``group_size``, once the
    file's ``entries`` are exactly its arrays with their dtypes and shapes and the stored layout
    equals it."""
    (rows, _), group_size, padded_cols = meta["shape"], meta["group_size"], meta["padded_cols"]
    with naming(path):
        layout, expected = _layouts(fmt, rows, padded_cols, group_size, opts)
    check_arrays(entries, {n: (a.dtype, a.shape) for n, a in layout.items()}, where=path, error=StorageError)
    if meta["layout"] != expected:
        wrong = sorted(set(expected) ^ set(meta["layout"])) or [n for n in expected if meta["layout"][n] != expected[n]]
        raise StorageError(f"{path}: the stored layout does not match the format's layout of these arrays "
                           f"(differs for {wrong}); the metadata was corrupted or edited")
    return dict(layout)


@functools.lru_cache(maxsize=256)
def _definition(fmt: Format) -> dict:
    """``fmt.definition()``, worked out once per format (a format never changes; NF4's takes 0.15 ms,
    a tenth of reading a 4096 x 11008 tensor); only compared, never handed out."""
    return fmt.definition()


def file_format(path: str, name: str, fingerprint: str, definition: dict, description: str,
                use_file_format: bool) -> Format:
    """The registered format ``name`` if its fingerprint matches, else rebuilt from ``definition``."""
    try:
        fmt = get_format(name)
    except ValueError:
        pass
    else:
        if fmt.fingerprint() == fingerprint:
            if _definition(fmt) != definition:
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


# field -> (what it must be, check); checked in this order, each naming the field when it fails
def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


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
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys = [k for k, _ in pairs]
        raise _StrictJSONError(f"key {next(k for k in keys if keys.count(k) > 1)!r:.60} appears twice in one object")
    return obj


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
    """Raise ``error`` unless ``arrays`` (anything with a ``dtype`` and a ``shape``: arrays, the
    :class:`Entry` of a file) holds exactly the arrays of ``specs`` with their dtypes and shapes."""
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
