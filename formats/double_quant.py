"""Double quantization of block scales, as QLoRA / bitsandbytes ``compress_statistics=True``.

An element format built by :class:`DoubleQuantFormat` (``nf4`` is one) accepts the option
``double_quant`` (default ``False``). With it on, the per-block absmax scales are themselves
quantized to 8 bits, exactly as bitsandbytes ``quantize_4bit(..., compress_statistics=True)``
stores them (bitsandbytes/functional.py; QLoRA, Dettmers et al. 2023, section 3):

1. ``a[b]`` = max|w| of every block of ``group_size`` weights along K, rounded to float32.
2. ``offset`` = mean of all ``a`` (float32); ``c = a - offset`` (float32 subtraction).
3. ``c``, flattened row-major over ``[rows, blocks]``, is cut into blocks of 256 (the last may
   be shorter); each gets its float32 absmax ``m``, and each ``c`` the nearest code of ``c / m``
   in the signed 8-bit dynamic map (:func:`dynamic_map`), rounded exactly by the group
   quantizer (ties, which need ``c / m`` exactly on a float32 midpoint, go to the lower value).
4. Decoded scale ``s = float32(float32(map[code] * m) + offset)`` (``dequantize_blockwise`` then
   ``+ offset``, two float32 operations).
5. Elements are rounded by the exact engine to the nearest ``value * s`` under that decoded
   scale (a block whose ``s`` came out negative is rounded to the nearest ``value * s`` all the
   same; ``s == 0`` stores the code of 0). Dequantization is ``float32(value * s)``.

Stored arrays: ``codes`` (as without the option), ``scales`` ``uint8 [rows, blocks]`` (dynamic
map codes), ``scale_absmax`` ``float32 [ceil(rows * blocks / 256), 1]``, ``scale_offset``
``float32 [1, 1]``. Bits per weight at block size ``B``: ``bits + 8 / B + 32 / (256 B)``
plus 32 bits per matrix: 4.127 for NF4 at ``B = 64`` (fp16 absmax without the option: 4.25).

Block sizes with the option: powers of two in 32..4096 (bitsandbytes ``quantize_4bit``).
The option fixes ``granularity='group'``, ``scale_search='absmax'``, ``scale_clamp=None`` and
``scale_dtype='fp32'`` (the first-level absmax, before compression).

Where hwlab differs from bitsandbytes, and why:

- ``offset``: bitsandbytes takes torch's float32 ``mean()``, whose summation order depends on
  the device and build; hwlab defines it as the float64 mean rounded once to float32.
- Element codes: bitsandbytes picks the NF4 codes under the float32 absmax and compresses the
  absmax afterwards; hwlab rounds under the decoded scale that dequantization uses (the
  project's rule, see :mod:`hwlab.formats.scaled`). The stored layout and the dequantization
  formula are the same, so a bitsandbytes ``QuantState`` and these arrays map one to one; codes
  differ only for elements that lie between the midpoints under the two scales.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .base import Option, boolean
from .element import ElementFormat
from .group_kernel import MemberTables, quantize_groups
from .layout import plain
from .packing import pack_codes
from .scale_search import check_blocks_kept, zero_threshold
from .unpacked import Unpacked

ANY_POSITIVE_SCALE = 1.0  # all-zero blocks encode exactly under any positive scale (kernel input only)
SECOND_LEVEL_BLOCK = 256  # quantize_4bit(compress_statistics=True): quantize_blockwise(absmax, blocksize=256)
BLOCK_SIZES = tuple(2**k for k in range(5, 13))  # 32..4096: the block sizes bitsandbytes' 4-bit quantizer takes
FIRST_LEVEL_DTYPE = "fp32"  # bitsandbytes keeps the per-block absmax in float32
# create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), bitsandbytes/functional.py
DYNAMIC_EXPONENT_BITS, DYNAMIC_TOTAL_BITS = 7, 8
DOUBLE_QUANT_FIXED = {"granularity": "group", "scale_search": "absmax", "scale_clamp": None}
SECOND_LEVEL_ENCODING = "dynamic8"  # scale codes of the signed 8-bit dynamic map (dynamic_map)


def _linspace_float32(start: float, stop: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, stop, steps)`` in float32 as torch computes it on the CPU.

    ``step = float32((stop - start) / (steps - 1))``; the first half is ``start + step * i``,
    the second ``stop - step * (steps - 1 - i)``, each rounded once to float32 (torch's
    vectorized kernel fuses the multiply-add). Both products and sums are exact in float64.
    """
    start32, stop32 = np.float32(start), np.float32(stop)
    step = float(np.float32((stop32 - start32) / np.float32(steps - 1)))
    i = np.arange(steps)
    first, second = float(start32) + step * i, float(stop32) - step * (steps - 1 - i)
    return np.where(i < steps // 2, first, second).astype(np.float32)


@functools.lru_cache(maxsize=None)
def dynamic_map() -> np.ndarray:
    """bitsandbytes' signed 8-bit dynamic quantization map: 256 ascending float32 values.

    Port of ``create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)``: for decade
    ``i`` in 0..6, the midpoints of ``linspace(0.1, 1, 2**i + 1)`` (float32) times
    ``10**(i - 6)`` (float32 product) and their negatives, plus 0 and 1.0. Codes 0..126 are
    negative (down to -0.99296875), code 127 is 0, code 255 is 1.0.
    """
    values = [np.float32(0.0), np.float32(1.0)]
    non_sign_bits = DYNAMIC_TOTAL_BITS - 1
    for i in range(DYNAMIC_EXPONENT_BITS):
        bounds = _linspace_float32(0.1, 1.0, 2 ** (i + non_sign_bits - DYNAMIC_EXPONENT_BITS) + 1)
        means = (bounds[:-1] + bounds[1:]) / np.float32(2)
        scaled = means * np.float32(10.0 ** (i - (DYNAMIC_EXPONENT_BITS - 1)))
        values.extend(scaled)
        values.extend(-scaled)
    table = np.sort(np.array(values, dtype=np.float32))
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=None)
def _dynamic_tables() -> MemberTables:
    fmt = ElementFormat("dynamic8", DYNAMIC_TOTAL_BITS, dynamic_map(), family="lookup", rounding="nearest_down",
                        description="bitsandbytes signed 8-bit dynamic map (create_dynamic_map)")
    return MemberTables.of((fmt,))


def compress_absmax(absmax: np.ndarray) -> dict:
    """Second-level arrays of float32 block absmax values ``[rows, blocks]`` (steps 2-3 above)."""
    a = np.asarray(absmax, dtype=np.float32)
    offset = np.float32(a.mean(dtype=np.float64))
    centered = (a.ravel() - offset).astype(np.float32)
    n_blocks = -(-centered.size // SECOND_LEVEL_BLOCK)
    padded = np.zeros(n_blocks * SECOND_LEVEL_BLOCK, dtype=np.float32)  # zeros change no block's absmax
    padded[:centered.size] = centered
    padded = padded.reshape(n_blocks, SECOND_LEVEL_BLOCK)
    m = np.abs(padded).max(axis=1)
    scale = np.where(m > 0, m, ANY_POSITIVE_SCALE).astype(np.float64)[None]  # an all-zero block: any scale
    codes, _ = quantize_groups(padded, _dynamic_tables(), np.zeros(1, dtype=np.int64), scale, np.zeros_like(scale))
    return {"scales": codes.ravel()[:centered.size].reshape(a.shape), "scale_absmax": m.reshape(-1, 1),
            "scale_offset": np.full((1, 1), offset, dtype=np.float32)}


def decompress_absmax(arrays: dict) -> np.ndarray:
    """Decoded float32 block scales ``[rows, blocks]`` from the arrays of :func:`compress_absmax`."""
    codes = arrays["scales"]
    m = np.repeat(arrays["scale_absmax"].ravel(), SECOND_LEVEL_BLOCK)[:codes.size].reshape(codes.shape)
    return dynamic_map()[codes] * m + arrays["scale_offset"][0, 0]  # float32 multiply, then float32 add


def check_block_size(group_size: int) -> None:
    """Raise ``ValueError`` unless ``group_size`` is a bitsandbytes 4-bit block size."""
    if group_size not in BLOCK_SIZES:
        raise ValueError(f"double_quant=True needs a block (group) size that is a power of two in "
                         f"{BLOCK_SIZES[0]}..{BLOCK_SIZES[-1]} (bitsandbytes), got {group_size}")


class DoubleQuantFormat(ElementFormat, extends_definition="double_quant"):
    """An absmax-scaled element format with bitsandbytes' ``double_quant`` option (see module)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.declare_options({**self.options, "double_quant": Option(
            False, "QLoRA double quantization: block absmax scales as 8-bit codes in blocks of 256",
            validate=boolean("double_quant"))})

    def definition(self) -> dict:
        return {**super().definition(), "double_quant": {
            "map": [repr(float(v)) for v in dynamic_map()], "block": SECOND_LEVEL_BLOCK,
            "decode": "float32(float32(map[code] * absmax of the code's block of 256) + offset)"}}

    def option_values(self, user: dict) -> dict:
        """Effective options; ``double_quant=True`` sets ``scale_dtype='fp32'`` (any other refused)."""
        opts = super().option_values(user)
        if opts["double_quant"]:
            if user.get("scale_dtype", FIRST_LEVEL_DTYPE) != FIRST_LEVEL_DTYPE:
                raise ValueError(f"double_quant=True keeps the first-level absmax in {FIRST_LEVEL_DTYPE!r} before "
                                 f"compressing it (bitsandbytes); leave scale_dtype out, got {user['scale_dtype']!r}")
            opts["scale_dtype"] = FIRST_LEVEL_DTYPE
        return opts

    def check_options(self, opts: dict) -> None:
        super().check_options(opts)
        if opts["double_quant"]:
            for option, value in DOUBLE_QUANT_FIXED.items():
                if opts[option] != value:
                    raise ValueError(f"double_quant=True needs {option}={value!r} (bitsandbytes blockwise "
                                     f"absmax), got {opts[option]!r}")

    def array_layout(self, rows: int, cols: int, group_size: int, opts: dict) -> dict:
        layout = super().array_layout(rows, cols, group_size, opts)
        if opts["double_quant"]:
            check_block_size(group_size)
            blocks = rows * (cols // group_size)
            layout["scales"] = plain("scales", np.uint8, layout["scales"].shape, applies_to="group",
                                     group_size=group_size, encoding=SECOND_LEVEL_ENCODING,
                                     decode="dynamic8[scales] * scale_absmax + scale_offset")
            layout["scale_absmax"] = plain("scale_absmax", np.float32, (-(-blocks // SECOND_LEVEL_BLOCK), 1),
                                           applies_to="scale_block", group_size=SECOND_LEVEL_BLOCK, encoding="fp32")
            layout["scale_offset"] = plain("scale_offset", np.float32, (1, 1), applies_to="tensor", encoding="fp32")
        return layout

    def quantize_arrays(self, w: np.ndarray, group_size: int, opts: dict) -> dict:
        if not opts["double_quant"]:
            return super().quantize_arrays(w, group_size, opts)
        check_block_size(group_size)
        rows, cols = w.shape
        x = w.reshape(-1, group_size)
        block_absmax = np.abs(x).max(axis=1).astype(np.float64)
        absmax = block_absmax.astype(np.float32)  # finite: inputs are within the float32 range
        arrays = compress_absmax(absmax.reshape(rows, -1))
        with np.errstate(over="ignore"):
            s = decompress_absmax(arrays).ravel().astype(np.float64)
        if not np.isfinite(s).all():
            raise ValueError(f"double_quant: a block absmax of {absmax.max():.6g} decodes past the float32 range "
                             "(map * absmax + offset, in float32, as bitsandbytes); rescale W or leave double_quant off")
        check_blocks_kept(block_absmax, s, zero_threshold(self), (rows, cols // group_size), "double_quant: block",
                          "double quantization keeps its absmax as float32 compressed to 8 bits beside the other "
                          f"blocks' (offset {float(arrays['scale_offset'][0, 0]):.6g}), too coarse for it; leave "
                          "double_quant off, or rescale W (or the blocks that differ this much)")
        # value * s nearest to x  <=>  value * |s| nearest to sign(s) * x; s == 0 stores the code of 0
        scale = np.where(s == 0, ANY_POSITIVE_SCALE, np.abs(s))[None]
        signed = (x * np.sign(s)[:, None]).astype(x.dtype)  # exact: a factor of -1, 0 or 1
        codes, _ = quantize_groups(signed, self.rounding_tables, np.zeros(1, dtype=np.int64), scale,
                                   np.zeros_like(scale))
        return {"codes": pack_codes(codes.reshape(rows, cols), self.bits), **arrays}

    def unpack(self, arrays: dict, shape: tuple, cols: int, group_size: int, opts: dict) -> Unpacked:
        if not opts["double_quant"]:
            return super().unpack(arrays, shape, cols, group_size, opts)
        first_level = {"codes": arrays["codes"], "scales": decompress_absmax(arrays)}  # float32 decoded scales
        view = super().unpack(first_level, shape, cols, group_size, opts)
        return dataclasses.replace(view, scale_type=SECOND_LEVEL_ENCODING, scale_codes=arrays["scales"],
                                   second_level={"absmax": arrays["scale_absmax"],
                                                 "offset": float(arrays["scale_offset"][0, 0]),
                                                 "block": SECOND_LEVEL_BLOCK, "map": dynamic_map()})
