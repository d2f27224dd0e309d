"""Bit packing of codes into 32-bit words, and base-3 packing of ternary codes.

Layout (what GPU kernels read): each row of ``K`` codes of ``b`` bits is a little-endian bit
stream, code ``k`` at bits ``[k*b, (k+1)*b)`` of the row, and the row is padded with zero bits to
a whole number of 32-bit words. So for ``b`` in {1, 2, 4, 8} code ``k`` sits in word
``k // (32 // b)`` at shift ``(k % (32 // b)) * b`` and never straddles a word; for other widths
every 32 codes fill exactly ``b`` words, so a 16-byte load of 4 words always starts a code block
when ``b`` divides 4 or ``K`` is a multiple of 128. Words are ``uint32``, little-endian.

Ternary ``trit5`` packing: 5 trits per byte, ``byte = sum(t_i * 3**i)`` with ``t_i`` in {0, 1, 2}
for {0, +1, -1} (the 2-bit codes 0, 1, 3); 1.6 bits per weight; rows padded to whole bytes.
"""
from __future__ import annotations

import numpy as np

from . import jit
from .jit import njit, prange

WORD_BITS = 32
CODES_PER_CHUNK = 8  # 8 codes of b bits are exactly b bytes, whatever b
TRITS_PER_BYTE = 5  # 3**5 = 243 <= 256
_TRIT_OF_CODE = np.array([0, 1, 255, 2], dtype=np.uint8)  # ternary 2-bit code -> trit (code 2 unused)
_CODE_OF_TRIT = np.array([0, 1, 3], dtype=np.uint8)


def packed_words(length: int, bits: int) -> int:
    """Number of 32-bit words that hold ``length`` codes of ``bits`` bits."""
    return -(-length * bits // WORD_BITS)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``codes`` [rows, K] (each < 2**bits) along K into ``uint32`` [rows, words]."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"pack_codes expects a 2-D array [rows, K], got shape {codes.shape}")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if codes.dtype.kind not in "iu":
        raise TypeError(f"codes must be an integer array, got dtype {codes.dtype}")
    rows, length = codes.shape
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise ValueError(f"code {int(codes.min() if codes.min() < 0 else codes.max())} does not fit in {bits} bits")
    words = packed_words(length, bits)
    if jit.USE_NUMBA and codes.dtype == np.uint8:
        out = np.empty((rows, words), dtype=np.uint32)
        _pack_kernel(np.ascontiguousarray(codes), bits, out)
        return out
    if 8 % bits == 0:  # whole codes per byte: shift them into byte lanes
        per_byte = 8 // bits
        padded = np.zeros((rows, words * 4 * per_byte), dtype=np.uint8)
        padded[:, :length] = codes
        lanes = padded.reshape(rows, -1, per_byte)
        packed = lanes[:, :, 0].copy()
        for lane in range(1, per_byte):
            packed |= lanes[:, :, lane] << np.uint8(lane * bits)
        return packed.view("<u4").astype(np.uint32)
    # Any 8 codes of b bits fill exactly b bytes: assemble them in a little-endian uint64.
    octets = -(-length // CODES_PER_CHUNK)
    padded = np.zeros((rows, octets * CODES_PER_CHUNK), dtype=np.uint8)
    padded[:, :length] = codes
    chunks = padded.reshape(rows, octets, CODES_PER_CHUNK)
    stream = chunks[:, :, 0].astype(np.uint64)
    for i in range(1, CODES_PER_CHUNK):
        stream |= chunks[:, :, i].astype(np.uint64) << np.uint64(i * bits)
    stream_bytes = stream.astype("<u8").view(np.uint8).reshape(rows, octets, 8)[:, :, :bits]
    out = np.zeros((rows, words * 4), dtype=np.uint8)
    used = min(octets * bits, words * 4)
    out[:, :used] = stream_bytes.reshape(rows, -1)[:, :used]
    return out.view("<u4").astype(np.uint32)


def unpack_codes(words: np.ndarray, bits: int, length: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``uint32`` [rows, words] -> ``uint8`` codes [rows, length]."""
    words = np.asarray(words)
    if words.dtype != np.uint32 or words.ndim != 2:
        raise ValueError(f"packed codes must be a 2-D uint32 array, got {words.dtype} with shape {words.shape}")
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if words.shape[1] != packed_words(length, bits):
        raise ValueError(f"{length} codes of {bits} bits need {packed_words(length, bits)} words per row, "
                         f"got {words.shape[1]}")
    rows = words.shape[0]
    if 8 % bits == 0:
        as_bytes = np.ascontiguousarray(words.astype("<u4")).view(np.uint8)
        per_byte, mask = 8 // bits, np.uint8(2**bits - 1)
        lanes = np.empty(as_bytes.shape + (per_byte,), dtype=np.uint8)
        for lane in range(per_byte):
            lanes[:, :, lane] = (as_bytes >> np.uint8(lane * bits)) & mask
        return lanes.reshape(rows, -1)[:, :length]
    octets = -(-length // CODES_PER_CHUNK)
    as_bytes = np.zeros((rows, octets * bits), dtype=np.uint8)
    available = min(octets * bits, words.shape[1] * 4)
    as_bytes[:, :available] = np.ascontiguousarray(words.astype("<u4")).view(np.uint8)[:, :available]
    chunk_bytes = np.zeros((rows, octets, 8), dtype=np.uint8)
    chunk_bytes[:, :, :bits] = as_bytes.reshape(rows, octets, bits)
    stream = chunk_bytes.view("<u8")[:, :, 0]
    mask = np.uint64(2**bits - 1)
    codes = np.empty((rows, octets, CODES_PER_CHUNK), dtype=np.uint8)
    for i in range(CODES_PER_CHUNK):
        codes[:, :, i] = (stream >> np.uint64(i * bits)) & mask
    return codes.reshape(rows, -1)[:, :length]


def pack_trits(codes: np.ndarray) -> np.ndarray:
    """Pack ternary 2-bit codes [rows, K] five to a byte: ``uint8`` [rows, ceil(K / 5)]."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"pack_trits expects a 2-D array [rows, K], got shape {codes.shape}")
    if codes.size and (codes.max() > 3 or codes.min() < 0 or (codes == 2).any()):
        raise ValueError("ternary codes must be 0 (0), 1 (+1) or 3 (-1); got code "
                         f"{int(codes[(codes > 3) | (codes < 0) | (codes == 2)].ravel()[0])}")
    rows, length = codes.shape
    nbytes = -(-length // TRITS_PER_BYTE)
    trits = np.zeros((rows, nbytes * TRITS_PER_BYTE), dtype=np.uint8)
    trits[:, :length] = _TRIT_OF_CODE[codes.astype(np.intp)]
    weights = 3 ** np.arange(TRITS_PER_BYTE, dtype=np.uint16)
    return (trits.reshape(rows, nbytes, TRITS_PER_BYTE) @ weights).astype(np.uint8)


def unpack_trits(packed: np.ndarray, length: int) -> np.ndarray:
    """Inverse of :func:`pack_trits`: ``uint8`` [rows, ceil(K/5)] -> 2-bit codes [rows, length]."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f"packed trits must be a 2-D uint8 array, got {packed.dtype} with shape {packed.shape}")
    if packed.shape[1] != -(-length // TRITS_PER_BYTE):
        raise ValueError(f"{length} trits need {-(-length // TRITS_PER_BYTE)} bytes per row, got {packed.shape[1]}")
    if packed.size and packed.max() >= 3**TRITS_PER_BYTE:
        raise ValueError(f"byte {int(packed.max())} is not a valid 5-trit group (expected < 243)")
    digits = (packed[:, :, None] // (3 ** np.arange(TRITS_PER_BYTE, dtype=np.uint8))) % 3
    return _CODE_OF_TRIT[digits.reshape(packed.shape[0], -1)[:, :length]]


@njit(parallel=True)
def _pack_kernel(codes, bits, out):  # pragma: no cover - compiled by numba
    """The bit stream of each row of ``codes`` (uint8) into ``out`` (uint32 words); as :func:`pack_codes`."""
    rows, length = codes.shape
    words = out.shape[1]
    for r in prange(rows):
        acc = np.uint64(0)
        fill = 0
        w = 0
        for k in range(length):
            acc |= np.uint64(codes[r, k]) << np.uint64(fill)
            fill += bits
            if fill >= 32:
                out[r, w] = np.uint32(acc & np.uint64(0xFFFFFFFF))
                acc >>= np.uint64(32)
                fill -= 32
                w += 1
        if w < words:
            out[r, w] = np.uint32(acc & np.uint64(0xFFFFFFFF))
