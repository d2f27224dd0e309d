"""hwlab.load reads a file in pieces on two threads (hashing and scanning each piece as it is read):
the same tensor as the file holds, and the same errors, in the same order, as one pass would give."""
import multiprocessing
import os
import threading

import numpy as np
import pytest
from hwlab.formats import StorageError, storage
from hwlab.formats.packing import pack_codes, unpack_codes
from saved_files import read, write

import hwlab

RNG = np.random.default_rng(11)
W = (RNG.standard_normal((64, 512)) * 0.02).astype(np.float32)
PIECE = 4096  # bytes: the codes of int4 (64 rows of 256 bytes) take 4 pieces, the scales a fifth


@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(storage, "PIECE_BYTES", PIECE)


@pytest.fixture
def both_threads(small_pieces, monkeypatch):
    """In every load, the loading thread's first read waits until the helper thread has begun one, and
    the helper's second until the loading thread has begun one, so that both read, hash and scan
    pieces (and hash each other's) whichever claims first; the threads seen."""
    read_at, seen = storage._Reading._read_at, set()

    def interleaved(self, views, offset):
        seen.add(threading.current_thread().name)
        state = vars(self)
        main_read = state.setdefault("main_read", threading.Event())  # setdefault: atomic
        helper_read = state.setdefault("helper_read", threading.Event())
        if threading.current_thread() is threading.main_thread():
            if not main_read.is_set():
                main_read.set()
                assert helper_read.wait(timeout=30)
        else:
            if helper_read.is_set():
                assert main_read.wait(timeout=30)
            helper_read.set()
        return read_at(self, views, offset)

    monkeypatch.setattr(storage._Reading, "_read_at", interleaved)
    yield seen
    assert len(seen) == 2, seen


def same(a, b) -> bool:
    return set(a.arrays) == set(b.arrays) and all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)


def pieces_of(path):
    with storage.open_saved(str(path)) as saved:
        return saved._pieces()[2]


@pytest.mark.parametrize("name, options", [("int4", {}), ("int3", {}), ("fp8_e4m3", {}), ("nf4", {"double_quant": True}),
                                           ("mixed_2_4", {}), ("olive4", {}), ("bitmod_fp4", {}), ("nvfp4", {})])
def test_a_file_read_in_many_pieces_loads_exactly(both_threads, tmp_path, name, options):
    qt = hwlab.quantize(W, name, 16 if name == "nvfp4" else 64, **options)
    path = tmp_path / "q.safetensors"
    qt.save(path)
    pieces = pieces_of(path)
    assert len(pieces) > 2
    assert all(sum(len(p.data) for p in piece.parts) <= PIECE for piece in pieces)
    assert sum(len(p.data) for piece in pieces for p in piece.parts) == qt.nbytes
    assert same(hwlab.load(path), qt)


def test_small_arrays_share_a_piece_and_large_ones_split_at_rows(small_pieces, tmp_path):
    qt = hwlab.quantize(W, "int4", 64)  # codes 64 x 64 words (16 KiB), scales 64 x 8 fp16 (1 KiB)
    path = tmp_path / "q.safetensors"
    qt.save(path)
    pieces = pieces_of(path)
    assert [[(p.first, p.rows.shape[0]) for p in piece.parts] for piece in pieces] == [
        [(0, 16)], [(16, 16)], [(32, 16)], [(48, 16)], [(0, 64)]]
    assert [piece.offset for piece in pieces] == [pieces[0].offset + k * PIECE for k in range(5)]


@pytest.mark.parametrize("array, where", [("codes", -1), ("codes", 5000), ("scales", 3)])
def test_a_flipped_bit_in_any_piece_names_its_array(both_threads, tmp_path, array, where):
    qt = hwlab.quantize(W, "int4", 64)
    path = tmp_path / "q.safetensors"
    qt.save(path)
    arrays, meta = read(path)
    damaged = arrays[array].copy()
    damaged.reshape(-1).view(np.uint8)[where] ^= 0x10  # the last piece of the codes, a middle one, the scales
    arrays[array] = damaged
    with pytest.raises(StorageError, match=rf"array '{array}' does not match its checksum"):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta, checksums=False))


def test_a_forbidden_code_in_later_pieces_is_reported_at_its_first_row(both_threads, tmp_path):
    qt = hwlab.quantize(W, "int4", 64)
    path = tmp_path / "q.safetensors"
    qt.save(path)
    arrays, meta = read(path)
    codes = arrays["codes"].copy()
    codes[63, 10] = (codes[63, 10] & ~np.uint32(0xF)) | np.uint32(8)  # the last piece
    codes[37, 2] = (codes[37, 2] & ~np.uint32(0xF0)) | np.uint32(0x80)  # the third piece, scanned by either thread
    arrays["codes"] = codes
    with pytest.raises(StorageError, match=r"array 'codes': code 8 at \[37, 17\] is one int4 never emits"):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta))


@pytest.mark.parametrize("row, col", [(20, 511), (21, 0), (21, 10), (63, 511)])
def test_an_impossible_int3_code_at_a_piece_boundary_or_at_the_last_code_names_its_array(both_threads, tmp_path,
                                                                                         row, col):
    """int3's codes span words (the scan of its missing code 4, 100, has the code compiled in): the
    last code of a piece, the first of the next, one spanning two words, the last code of all."""
    qt = hwlab.quantize(W, "int3", 64)  # rows of 512 codes in 48 words (192 bytes): 21 rows a piece
    path = tmp_path / "q.safetensors"
    qt.save(path)
    assert [part.rows.shape[0] for piece in pieces_of(path)[:2] for part in piece.parts] == [21, 21]
    arrays, meta = read(path)
    codes = unpack_codes(arrays["codes"], 3, 512)
    codes[row, col] = 4
    arrays["codes"] = pack_codes(codes, 3)
    with pytest.raises(StorageError, match=rf"array 'codes': code 4 at \[{row}, {col}\] is one int3 never emits"):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta))


@pytest.mark.parametrize("value, options, match", [
    (np.inf, {}, r"array 'scales' holds a scale that is not finite and positive at \[700, 5\]"),
    (0.0, {}, r"array 'scales' holds a scale that is not finite and positive at \[700, 5\]"),
    (2.0, {"scale_clamp": (1e-4, 1.0)}, r"array 'scales': the scale 2 at \[700, 5\] lies outside scale_clamp"),
])
def test_an_impossible_scale_in_a_later_piece_is_reported_where_it_is(both_threads, tmp_path, value, options, match):
    """The scales' tests run on each piece of them too (16 rows of 8 fp16 scales: 256 rows a piece)."""
    w = (RNG.standard_normal((1024, 256)) * 0.02).astype(np.float32)
    qt = hwlab.quantize(w, "int4", 32, **options)
    path = tmp_path / "q.safetensors"
    qt.save(path)
    assert [part.first for piece in pieces_of(path) for part in piece.parts if part.rows.dtype == np.float16] == [
        0, 256, 512, 768]
    arrays, meta = read(path)
    scales = arrays["scales"].copy()
    scales[700, 5] = value
    arrays["scales"] = scales
    with pytest.raises(StorageError, match=match):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta))


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("array, row, edit, match", [
    ("zeros4", 50, lambda words: words | np.uint32(1 << 31),
     r"array 'zeros4': row 50 has nonzero padding bits past its 3 entries"),
    ("group_bits", 61, lambda words: words ^ np.uint32(1),
     r"array 'group_bits': row 61 marks [24] groups as 4-bit, expected 3"),
])
def test_padding_bits_and_group_flags_are_checked_where_they_are(both_threads, tmp_path, monkeypatch, numba, array,
                                                                 row, edit, match):
    """mixed_2_4's padding bits and its count of 4-bit groups, tested on each piece as it is read
    (the read's scans, with numba) or after the read: the same row and the same error."""
    from hwlab.formats import jit

    monkeypatch.setattr(jit, "USE_NUMBA", numba and jit.USE_NUMBA)
    qt = hwlab.quantize(W, "mixed_2_4", 64)  # 8 groups a row, 3 of them 4-bit
    path = tmp_path / "q.safetensors"
    qt.save(path)
    arrays, meta = read(path)
    words = arrays[array].copy()
    words[row] = edit(words[row])
    arrays[array] = words
    with pytest.raises(StorageError, match=match):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta))


@pytest.mark.parametrize("edit, match", [
    (None, r"array 'codes': code 8 at \[50, 0\]"),  # resealed: the code scan reports it
    ({"group_size": 32}, r"array 'codes' does not match its checksum"),  # not resealed, and a shape error
    ({"format": "int3"}, r"array 'codes' does not match its checksum"),  # not resealed, and a format error
])
def test_a_checksum_error_is_reported_before_the_checks_of_the_format(both_threads, tmp_path, edit, match):
    qt = hwlab.quantize(W, "int4", 64)
    path = tmp_path / "q.safetensors"
    qt.save(path)
    arrays, meta = read(path)
    codes = arrays["codes"].copy()
    codes[50, 0] = (codes[50, 0] & ~np.uint32(0xF)) | np.uint32(8)  # a forbidden code, in a later piece
    arrays["codes"] = codes
    meta.update(edit or {})  # the digest is recomputed either way
    with pytest.raises(StorageError, match=match):
        hwlab.load(write(tmp_path / "e.safetensors", arrays, meta, checksums=edit is None))


def test_a_file_that_shrinks_while_it_is_read_is_an_error(small_pieces, tmp_path):
    path = tmp_path / "q.safetensors"
    hwlab.quantize(W, "int4", 64).save(path)
    with storage.open_saved(str(path)) as saved:  # the header was checked against the whole file
        os.truncate(path, os.path.getsize(path) - 100)
        with pytest.raises(StorageError, match="it ended before its last array did"):
            saved.read_arrays({})


def test_without_preadv_the_pieces_are_read_one_at_a_time(small_pieces, tmp_path, monkeypatch):
    qt = hwlab.quantize(W, "int3", 64)
    path = tmp_path / "q.safetensors"
    qt.save(path)
    monkeypatch.delattr(os, "preadv")
    assert same(hwlab.load(path), qt)


def test_an_error_on_either_thread_stops_both_and_the_next_load_works(small_pieces, tmp_path, monkeypatch):
    qt = hwlab.quantize(W, "int4", 64)
    path = tmp_path / "q.safetensors"
    qt.save(path)
    read_at = storage._Reading._read_at

    def failing(self, views, offset):
        if offset >= pieces_of(path)[2].offset:  # the third piece on: whichever thread claims it
            raise RuntimeError("interrupted")
        return read_at(self, views, offset)

    monkeypatch.setattr(storage._Reading, "_read_at", failing)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="interrupted"):
            hwlab.load(path)
    monkeypatch.setattr(storage._Reading, "_read_at", read_at)
    assert same(hwlab.load(path), qt)


def _load_in_child(path, queue):
    queue.put(same(hwlab.load(path), hwlab.load(path)))


def test_a_forked_child_loads_with_its_own_helper_thread(small_pieces, tmp_path):
    path = tmp_path / "q.safetensors"
    hwlab.quantize(W, "int4", 64).save(path)
    hwlab.load(path)  # the helper thread runs in this process now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_load_in_child, args=(str(path), queue))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0 and queue.get(timeout=5)


def test_a_load_at_interpreter_shutdown_reads_on_its_own_thread(small_pieces, tmp_path):
    """In an atexit handler no new thread can start (the helper's pool refuses work): the loading thread reads
    every piece itself, and the file loads exactly (and a bytes path works as a str one)."""
    import subprocess
    import sys

    path = tmp_path / "q.safetensors"
    hwlab.quantize(W, "int4", 64).save(path)
    script = ("import atexit, sys, numpy as np, hwlab\n"
              "from hwlab.formats import storage\n"
              f"storage.PIECE_BYTES = {PIECE}\n"
              f"want = hwlab.load({str(path)!r})\n"
              "def at_exit():\n"
              f"    got = hwlab.load({os.fsencode(path)!r})\n"
              "    ok = all(np.array_equal(got.arrays[k], want.arrays[k]) for k in want.arrays)\n"
              "    print('exact' if ok else 'DIFFERENT', flush=True)\n"
              "atexit.register(at_exit)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "exact", done.stderr
