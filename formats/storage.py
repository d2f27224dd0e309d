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

The checks that need the format are made while a helper thread reads the first pieces of the file
and before the rest is read, so that the read can hash and scan each piece of an array while it is
in cache (:class:`_Reading`: one pass over the file, one copy of its bytes, pieces of 2 MiB read,
hashed and scanned by two threads at once, the hashes in file order); what they find is raised
only after every checksum matched, in the order above.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import itertools
import json
import math
import os
import stat
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
# Bytes read, then hashed and scanned, at a time by one thread (:class:`_Reading`): about the L2
# cache of a core (1 MiB on AMD Zen 4/5, 2 MiB on Intel Sapphire Rapids), where the hash and the scan
# find most of the piece, and large enough that the Python around each piece stays small. On the
# 2-core guest of BENCHMARKS.md (1 MiB of L2 a core), 2 MiB pieces loaded 5-13% faster than 1 MiB
# ones (and 512 KiB ones 10-20% slower), the same in either regime of its memory allocator.
PIECE_BYTES = 2 << 20
# Bytes the helper thread reads first, in one call that releases the GIL, while the loading thread
# checks the metadata, the format and the layout (Python, which holds it: 0.3-0.45 ms on the 2-core
# guest of BENCHMARKS.md, where a plain read of another 17 MB has left its code out of cache): about
# as long as 6 MiB take to read there (2, 4 and 8 MiB loaded no faster).
READ_AHEAD_BYTES = 6 << 20
ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})  # the fields of an array in a safetensors header
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

    path = os.fsdecode(os.fspath(path))  # bytes paths too, as open() takes them
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


class Entry(typing.NamedTuple):  # a named tuple: made for every array of every load (a dataclass: 1 us more)
    """One array of a safetensors file: its dtype, shape and bytes ``[start, end)`` of the data
    (which follows the header)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@contextlib.contextmanager
def open_saved(path: str):
    """The :class:`SavedFile` of ``path``, open until the ``with`` block ends (a path that is not a
    regular file is refused before it is opened: opening a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # as os.path.exists
        raise FileNotFoundError(f"no such file: {path}") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path} is a directory, not a saved tensor")
    if not stat.S_ISREG(mode):
        raise StorageError(f"{path} is not a regular file")
    try:
        file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise StorageError(f"{path} cannot be read: {exc}") from None
    with file:
        yield SavedFile(path, file)


class SavedFile:
    """A file written by :func:`save`, open (:func:`open_saved`): its header read and checked
    (``entries``: name -> :class:`Entry`); its metadata parsed, every field of its type, and
    matching its digest (``meta``, worked out when first asked for, so that :meth:`reading` can
    set the arrays reading first); :meth:`reading` and :meth:`read_arrays` read the arrays.
    ``StorageError`` naming the file for anything wrong."""

    def __init__(self, path: str, file):
        self.path, self._file = path, file
        self._raw, self.entries = self._header(os.fstat(file.fileno()).st_size)

    @functools.cached_property
    def meta(self) -> dict:
        """The metadata object, every field checked for its type, matching its digest."""
        meta = _parse(self.path, self._raw)
        with naming(self.path):
            matches = digest(meta) == meta["digest"]
        if not matches:
            raise StorageError(f"{self.path}: the metadata does not match its digest (corrupted or edited)")
        return meta

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
        if not (isinstance(info, dict) and info.keys() == ENTRY_KEYS):
            raise self._unreadable(f"the header entry of {name!r:.60} is not dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not (isinstance(dtype, str) and dtype in DTYPES):
            raise self._unreadable(f"array {name!r:.60} has dtype {dtype!r:.20}, expected one of {sorted(DTYPES)}")
        if not (isinstance(shape, list) and all(map(_count, shape))):
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
        """:meth:`reading` and its ``finish(scans)`` at once."""
        with self.reading() as finish:
            return finish(scans)

    @contextlib.contextmanager
    def reading(self):
        """The arrays set reading (:class:`_Reading`): the helper thread reads the first pieces in
        one call, which releases the GIL, while this thread checks the metadata, the format and
        the layout (Python, which holds it). The block gets ``finish(scans)`` (:meth:`_finish`),
        which reads the rest and returns the arrays; a block left early stops the reading, and
        waits for the helper, before the file is closed."""
        arrays, hashers, pieces = self._pieces()
        reading = _Reading(self._file, pieces)
        try:
            reading.start()
            yield functools.partial(self._finish, reading, arrays, hashers)
        finally:
            reading.stop()

    def _finish(self, reading: _Reading, arrays: dict, hashers: dict, scans: dict) -> dict:
        """Name -> array, each read straight into its own memory and hashed (XXH3-64, streaming) and
        scanned (``scans``: name -> the scans of :func:`~hwlab.formats.validate.read_scans`, run on
        the rows of that array) piece by piece while the piece is in cache (:class:`_Reading`);
        ``StorageError`` if the file ends early or an array does not match its checksum (the first
        such array in file order)."""
        checksums = self.meta["checksums"]
        if set(checksums) != set(self.entries):
            raise StorageError(f"{self.path}: checksums name arrays {sorted(checksums)}, the file holds "
                               f"{sorted(self.entries)}")
        reading.finish(scans)
        if reading.error is not None:
            raise self._unreadable(reading.error)
        for name, hasher in hashers.items():  # in file order
            if hasher.hexdigest() != checksums[name]:
                raise StorageError(f"{self.path}: array {name!r} does not match its checksum (corrupted)")
        return dict(sorted(arrays.items()))

    def _pieces(self) -> tuple[dict, dict, list]:
        """Every array, empty, in file order; its hasher; and the :class:`_Piece` objects that fill
        them: whole rows of an array up to ``PIECE_BYTES`` (at least one row), consecutive arrays
        (or their ends) sharing a piece up to that size."""
        arrays, hashers, pieces, piece = {}, {}, [], _Piece(8 + self._header_bytes)
        for name, e in sorted(self.entries.items(), key=lambda item: item[1].start):
            array = arrays[name] = np.empty(e.shape, e.dtype)
            hasher = hashers[name] = xxhash.xxh3_64()  # streaming: the same digest as all bytes at once
            rows = array.reshape(e.shape[0] if array.ndim and array.size else 1, -1)
            row_bytes = rows.shape[1] * e.dtype.itemsize
            data = memoryview(array.reshape(-1).view(np.uint8))
            step = max(1, PIECE_BYTES // max(1, row_bytes))
            for first in range(0, rows.shape[0] if array.size else 0, step):
                part = _Part(name, hasher, data[first * row_bytes:(first + step) * row_bytes], rows[first:first + step],
                             first)
                if piece.parts and piece.size + len(part.data) > PIECE_BYTES:
                    pieces.append(piece)
                    piece = _Piece(piece.offset + piece.size)
                piece.add(part)
        if piece.parts:
            pieces.append(piece)
        return arrays, hashers, pieces


class _Part(typing.NamedTuple):  # a named tuple: made a few dozen times a load, where a dataclass costs 2 us
    """Rows ``first ..`` (``rows``) of the array ``name``, their bytes (``data``) and the array's hasher."""

    name: str
    hasher: object
    data: memoryview
    rows: np.ndarray
    first: int


class _Piece:
    """What one read fills: ``parts``, one after the other in the file from byte ``offset``, and what
    a reading thread does with them, worked out beforehand so that it runs little Python between the
    calls that release the GIL: their bytes (``views``, ``size`` in all), the ``update`` of each
    part's hasher with its bytes (``hashes``) and of each scan of its rows with them and their first
    row (``scans``: :meth:`attach`). Built a part at a time (:meth:`add`), which took 20 us less for
    a 17 MB file than building each piece's lists from its parts (a named tuple: 2.4 us a piece)."""

    __slots__ = ("offset", "parts", "views", "size", "hashes", "scans")

    def __init__(self, offset: int):
        self.offset, self.parts, self.views, self.size, self.hashes, self.scans = offset, [], [], 0, [], []

    def add(self, part: _Part) -> None:
        """Put ``part`` after the parts of this piece."""
        self.parts.append(part)
        self.views.append(part.data)
        self.hashes.append((part.hasher.update, part.data))
        self.size += len(part.data)

    def attach(self, scans: dict) -> None:
        """Scan the rows of every part with the scans of its array (``scans``: array name -> scans)."""
        self.scans.extend([(scan.update, part.rows, part.first) for part in self.parts
                           for scan in scans.get(part.name, ())])


class _Reading:
    """The pieces of a file read by two threads at once (:meth:`start`, :meth:`finish`), each piece
    by one of them: the helper thread first reads the first pieces in one call (:func:`read_ahead`),
    while the loading thread reads the last piece and checks the metadata; then each thread claims
    the next piece, reads it
    (``os.preadv``: no shared file position), hashes the pieces read so far (:meth:`_hash_ready`:
    in file order, so each array's bytes in order, by one thread at a time) and scans its piece
    (once its scans are known: :meth:`_scan_ready`). No thread waits for another: one that finds
    the hashing taken goes on, and the thread hashing takes the pieces read meanwhile too.
    (Waiting for a turn to hash, each piece's reader hashing it, woke a sleeping thread about once
    a piece, at 10-50 us a wake-up on a virtual machine, and put each hash after the one before.)
    ``error``: why the file could not be read in full (it shrank, or the read failed), else
    ``None``."""

    def __init__(self, file, pieces: list):
        self._file, self._fd, self._pieces = file, file.fileno(), pieces
        self._seek = threading.Lock()  # where there is no os.preadv: one seek and read at a time
        self._ahead = read_ahead(pieces)  # the helper's first read: pieces 0 .. _ahead - 1
        self._last = len(pieces) - 1 if self._ahead else len(pieces)  # the loading thread's first read, if any
        self._claims = itertools.count(self._ahead)  # pieces _ahead .. _last - 1; next() is atomic: each to one thread
        self._whole = [None] * len(pieces)  # piece k: None until it is read, then whether it was read whole
        self._hashing = threading.Lock()  # held by the one thread hashing pieces
        self._hashed = 0  # pieces hashed, in file order (changed under _hashing)
        self._unscanned = []  # pieces read whole, not scanned yet (list.append and list.pop are atomic)
        self._scans_known = False  # every piece's scans are attached (:meth:`finish`)
        self._helper = None  # the helper's future, once it reads
        self._begun = threading.Lock()  # released by the helper as it begins its first read
        self._begun.acquire()
        self._stopped = False  # stop claiming pieces (a thread left a run on an exception, or stop())
        self.error = None

    def start(self) -> None:
        """Set the helper thread reading, where there is more than one piece, and return once it has
        begun: it needs the GIL to begin, which this thread would hold until its next read, so this
        thread reads the last piece meanwhile (the wake-up of the helper takes 10-50 us on a virtual
        machine, the read of a piece about 100). The last piece is where the small arrays share one,
        and its scans (the most Python a byte: 0.1 ms for mixed_2_4's) then run while the helper
        reads, not after every other piece."""
        if self._ahead:
            try:
                self._helper = _helper().submit(self._help)
            except RuntimeError:  # the interpreter is shutting down (atexit): no new threads, this one reads all
                self._guarded(self._take, 0, self._ahead)
            self._guarded(self._take, self._last, self._last + 1)
            if self._helper is not None:
                self._begun.acquire()

    def finish(self, scans: dict) -> None:
        """Attach ``scans`` (array name -> the scans of its rows) to every piece, scan the pieces read
        so far, read, hash and scan the rest beside the helper, and wait for it (raising its error)."""
        for piece in self._pieces:
            piece.attach(scans)
        self._scans_known = True
        self._scan_ready()
        self._run()
        if self._helper is not None:
            concurrent.futures.wait([self._helper])
            self._helper.result()

    def stop(self) -> None:
        """Stop the helper claiming pieces, wait until it has stopped (its error dropped), and let go
        of the pieces: the helper's thread holds this object until it next takes the GIL, and the
        arrays the pieces view are the caller's to free (freed there instead, 17 MB of them slowed
        what the caller did next, a plain read of a file, by 0.6 ms)."""
        self._stopped = True
        if self._helper is not None:
            concurrent.futures.wait([self._helper])
        self._pieces = []

    def _help(self) -> None:
        """The helper's work: the first pieces in one read, then the others as they come."""
        self._begun.release()  # the loading thread takes the GIL back once preadv lets go of it
        self._guarded(self._take, 0, self._ahead)
        self._run()

    def _run(self) -> None:
        """Claim, read, hash and scan pieces until none is left."""
        while not self._stopped and (k := next(self._claims)) < self._last:
            self._guarded(self._take, k, k + 1)

    def _guarded(self, step, *args) -> None:
        """``step(*args)``; an exception (an interrupt) stops the other thread claiming pieces too."""
        try:
            step(*args)
        except BaseException:
            self._stopped = True
            raise

    def _take(self, first: int, end: int) -> None:
        """Read pieces ``first .. end - 1`` (one read), hash the pieces read so far and scan these."""
        pieces = self._pieces[first:end]
        whole = self._read(pieces)
        self._whole[first:end] = [whole] * len(pieces)
        self._hash_ready()
        if whole:
            self._unscanned.extend(pieces)
            if self._scans_known:
                self._scan_ready()

    def _hash_ready(self) -> None:
        """Hash the pieces read so far from the first one not hashed on, in file order, unless another
        thread is hashing (it then takes them: a thread marks its pieces read before it comes here,
        and the one hashing looks again after it lets go; a piece not read whole is not hashed)."""
        whole, count = self._whole, len(self._whole)
        while self._hashed < count and whole[self._hashed] is not None and self._hashing.acquire(blocking=False):
            try:
                while (k := self._hashed) < count and whole[k] is not None:
                    for update, data in self._pieces[k].hashes if whole[k] else ():
                        update(data)
                    self._hashed = k + 1
            finally:
                self._hashing.release()

    def _scan_ready(self) -> None:
        """Scan the pieces read whole and not scanned yet, each by the one thread that takes it (a
        thread puts its pieces there before it looks whether the scans are known, and
        :meth:`finish` looks after it makes them known)."""
        unscanned = self._unscanned
        while unscanned:
            try:
                piece = unscanned.pop()
            except IndexError:  # the other thread took the last one
                return
            for update, rows, first in piece.scans:
                update(rows, first)  # numba releases the GIL, as do preadv and xxhash

    def _read(self, pieces: list) -> bool:
        """Fill ``pieces`` (consecutive) from the file; ``False`` (and ``error`` set) if they could not
        be read whole."""
        try:
            got = self._read_at([view for piece in pieces for view in piece.views], pieces[0].offset)
        except OSError as exc:
            self.error = f"reading it failed ({exc})"
            return False
        if got != sum(piece.size for piece in pieces):
            self.error = "it ended before its last array did (it shrank while it was read?)"
            return False
        return True

    def _read_at(self, views: list, offset: int) -> int:
        """Bytes read into ``views``, one after the other, from byte ``offset`` of the file:
        ``os.preadv`` where there is one (Linux, the BSDs, macOS 11+), else a seek and reads under
        a lock (Windows: the threads still hash and scan at once)."""
        if hasattr(os, "preadv"):
            return os.preadv(self._fd, views, offset)
        with self._seek:
            self._file.seek(offset)
            return sum(self._file.readinto(view) or 0 for view in views)


@functools.lru_cache(maxsize=1)
def _helper() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that reads beside the loading one (waiting on its queue when idle)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hwlab-load")


if hasattr(os, "register_at_fork"):  # a forked child has no helper thread: it starts its own
    os.register_at_fork(after_in_child=_helper.cache_clear)


def read_ahead(pieces: list) -> int:
    """How many pieces the helper thread reads first, in one call: the first pieces within
    ``READ_AHEAD_BYTES`` (at least one), at most half of them (the loading thread gets some; none
    of one piece: the loading thread reads it alone)."""
    count, size = 0, 0
    while count < len(pieces) // 2 and (not count or size + pieces[count].size <= READ_AHEAD_BYTES):
        size += pieces[count].size
        count += 1
    return count


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
