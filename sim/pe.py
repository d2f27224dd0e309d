"""The functional engine: a quantized layer run through the arithmetic of the BitMoD PE, bit for bit.

The BitMoD authors' RTL (yc2367/BitMoD ``hardware/pe/*.v``) gives the PE's blocks and widths but
has no top level and several inconsistencies (``/work`` notes: its FP4 term path, accumulator
alignment and dequantizer reset do not compute what the paper describes), so this module defines
the PE as the paper and the RTL's widths intend, and says so where it chooses:

**Weight terms** (from the format's per-code :class:`~hwlab.formats.decomposition.Decomposition`;
never a second decode of the format). A weight is a short list of signed power-of-two terms
``+-2**shift``, most significant first, one per cycle:

* integers (``fields["kind"] == "integer"``: INTb, ternary, the INT4 normals of OliVe, MXINT8):
  the nonzero digits of radix-4 Booth recoding of the two's-complement value, ``ceil(b / 2)``
  digits of ``{-2, -1, 1, 2} * 4**i``;
* every other format with a decomposition (the FP3/FP4 minifloats and BitMoD's special values,
  flint, shift, OliVe's outliers, FP8, ...): one term per set bit of the odd magnitude of
  ``(-1)**s * m * 2**e`` (FP4's values have at most two: the leading-one terms of the paper).

Formats without a decomposition (NF4's float32 table) and affine formats (zero points need an
activation-sum datapath the PE does not have) are refused with the reason.

**One cycle of one PE** (4 lanes, one weight per lane, the lane's next term):

1. FP16 activation ``(-1)**sa * ma * 2**(ea - 25)``: ``ma`` the 11-bit significand with the hidden
   bit, ``ea`` the biased exponent (a subnormal reads exponent 1 without hidden bit, as IEEE
   defines it; the RTL ignores subnormals). NaN and infinite activations are refused.
2. Exponent match: the product exponent ``pe = ea + shift`` of every lane that has a term and a
   nonzero activation; ``E`` their maximum.
3. Alignment: ``aligned = floor(ma * 2**3 / 2**(E - pe))``, 14 bits (11 + 3 guard bits); bits
   shifted out are **truncated** (no rounding, no sticky bit), a shift past 14 bits gives 0.
4. Sign ``sa xor sign(term)``; a 4-input adder tree sums the lanes exactly into a 17-bit signed
   ``P``: the cycle's partial sum is ``P * 2**(E - 28)``.

**Group accumulator** (block floating point, the RTL's 15-bit signed mantissa and exponent): ``(A,
X)`` means ``A * 2**(X - 28)``. Adding ``(P, E)``: both are aligned to ``max(X, E)`` by arithmetic
right shifts (truncation towards minus infinity; the RTL aligns only the accumulator, a bug), added
exactly, and the sum is shifted right (again truncating) until it fits 15 signed bits, raising the
exponent. A group is the quantizer's group of ``group_size`` weights along K.

**Bit-serial dequantizer**: the group's ``A`` times the stored scale's significand, one scale bit
per cycle (an exact integer product: the register is as wide as the significand needs, where the
RTL's 21 bits fit only 6-bit scales), at exponent ``X - 28`` plus the scale's. Group results are
accumulated into the output in **float32** (round to nearest even), in group order.

**Error bound** (what the truncations above allow; :func:`error_bound`): per output,
``|y - y_exact| <= (2**-11 + adds * 2**-13 + groups * 2**-24) * sum_k |x_k w_k|`` with ``adds``
the accumulator adds of a group (tiles times terms) and ``groups`` the groups of a row: each cycle
truncates at most one unit of ``2**(E - 28)`` per lane, four units against a largest lane of at
least ``2**10`` units (``2**-11`` of its magnitude); each accumulator add at most two units of a
mantissa of at least ``2**13`` units; each float32 add half an ulp of the running sum.

**Cycles**: output channels on the array's rows, tokens on its columns, 4 input channels per tile
step, lock-step (a step lasts as long as its slowest PE). The authors' fixed rule counts
``ceil(bits / 2)`` cycles per step (or the format's most terms, where that is more);
``term_skipping=True`` counts, per step, the most terms any weight of the step's rows needs (at
least one cycle: a what-if the authors could not measure).

:func:`golden` is the plain numpy definition of all of this (vectorised over outputs, one array
step at a time); :func:`run_pe` runs the numba engine, equal to it bit for bit, and returns the
output, the float64 reference ``x @ W_hat.T``, the error and a :class:`~hwlab.sim.report.Report`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import weakref

import numpy as np

from hwlab.formats.arrays import is_torch_tensor
from hwlab.formats.decomposition import decompose
from hwlab.formats.jit import njit, prange
from hwlab.formats.qtensor import QuantizedTensor

from .analytical import simulate
from .config import HWConfig, get_preset
from .workload import Op, Workload

LANES = 4  # weights per PE per cycle (the BitMoD PE's VEC_LENGTH, pe_dp_size 4)
GUARD_BITS = 3  # alignment keeps the 11-bit significand and 3 guard bits: 14 bits (bs_mul.v)
ACC_LIMIT = 1 << 14  # the accumulator mantissa is 15-bit signed: -2**14 .. 2**14 - 1 (grp_accum.v)
FP16_BIAS, FP16_FRACTION_BITS = 15, 10
POINT = FP16_BIAS + FP16_FRACTION_BITS + GUARD_BITS  # P, A are in units of 2**(E - 28)
EMPTY = -(1 << 20)  # the exponent of an empty accumulator or a cycle without terms
MAX_SHIFT = 31  # right shifts are clamped here (the value is 0 or -1 by then either way)


class PEError(ValueError):
    """A tensor or input the PE cannot run, with the reason."""


# ---- weight terms ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TermTable:
    """Signed power-of-two terms of every code of every member, indexed ``member << bits | code``."""

    count: np.ndarray  # int8 [entries]: terms of each entry
    shift: np.ndarray  # int16 [entries, T]: term c is (-1)**sign * 2**shift, most significant first
    sign: np.ndarray  # int8 [entries, T]
    bits: int  # code bits (the index is member << bits | code)
    fixed_cycles: int  # cycles per tile step under the authors' rule: max(ceil(bits / 2), T)


def booth_terms(value: int, width: int) -> list[tuple[int, int]]:
    """(sign, shift) of the nonzero radix-4 Booth digits of a ``width``-bit two's-complement integer,
    most significant first."""
    u = value & ((1 << width) - 1)
    bit = lambda i: (u >> i) & 1 if 0 <= i < width else ((u >> (width - 1)) & 1 if i >= width else 0)  # noqa: E731
    terms = []
    for i in range(math.ceil(width / 2)):
        digit = -2 * bit(2 * i + 1) + bit(2 * i) + bit(2 * i - 1)
        if digit:
            terms.append((int(digit < 0), 2 * i + (abs(digit) == 2)))
    return terms[::-1]


def term_table(fmt, values: np.ndarray) -> TermTable:
    """The :class:`TermTable` of a format's unpacked value table ``[members, 2**bits]``."""
    bits = fmt.bits
    d = decompose(values, bits, fmt.encoding_fields())
    if d is None:
        raise PEError(f"{fmt.name} has no exact sign/magnitude/exponent decomposition (its values need magnitudes "
                      f"wider than {bits} bits): the shift-and-add PE cannot run it; a lookup-table PE would")
    fields = fmt.encoding_fields()
    member_fields = fields.get("members", [fields] * values.shape[0])
    terms = []
    for m in range(values.shape[0]):
        f = member_fields[m] if m < len(member_fields) else fields
        for c in range(values.shape[1]):
            if not d.defined[m, c] or d.magnitude[m, c] == 0:
                terms.append([])
            elif f.get("kind") == "integer":
                frac = f.get("fraction_bits", 0)
                v = int(d.magnitude[m, c]) << int(d.exponent[m, c] + frac)
                terms.append([(s, sh - frac) for s, sh in booth_terms(-v if d.sign[m, c] else v, f["bits"])])
            else:
                mag, e, s = int(d.magnitude[m, c]), int(d.exponent[m, c]), int(d.sign[m, c])
                terms.append([(s, e + p) for p in reversed(range(mag.bit_length())) if mag >> p & 1])
    width = max(1, max(len(t) for t in terms))
    count = np.array([len(t) for t in terms], dtype=np.int8)
    shift = np.zeros((len(terms), width), dtype=np.int16)
    sign = np.zeros((len(terms), width), dtype=np.int8)
    for i, t in enumerate(terms):
        for c, (s, sh) in enumerate(t):
            sign[i, c], shift[i, c] = s, sh
    return TermTable(count, shift, sign, bits, max(math.ceil(bits / 2), width))


# ---- operands ------------------------------------------------------------------------------------

def fp16_fields(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sign (int8), effective biased exponent (int32; subnormals 1) and significand (int32, hidden bit
    included) of float16 ``x``."""
    bits = x.astype(np.float16).view(np.uint16).astype(np.int32)
    sign = (bits >> 15).astype(np.int8)
    exp = (bits >> 10) & 0x1F
    frac = bits & 0x3FF
    if (exp == 0x1F).any():
        raise PEError("activations must be finite (an FP16 inf or NaN has no significand to align)")
    man = np.where(exp > 0, frac | 0x400, frac)
    return sign, np.maximum(exp, 1).astype(np.int32), man.astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class Activations:
    """The activation side of the operands, made for every call: FP16 fields ``[M, Kp]`` (zero past
    K) and the activations as float64 ``[M, K]`` (after the FP16 conversion)."""

    a_sign: np.ndarray  # int8
    a_exp: np.ndarray  # int32
    a_man: np.ndarray  # int32
    x_values: np.ndarray


def activations(x, k: int, kp: int, where: str = "") -> Activations:
    """The :class:`Activations` of ``x`` ``[M, k]`` padded to ``kp`` input channels; ``where`` is added
    to the error messages (which weights they were checked against)."""
    if is_torch_tensor(x):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != k:
        raise PEError(f"activations must be [M, K={k}], got shape {x.shape}{where}")
    if x.dtype.kind != "f":
        raise PEError(f"activations must be floating point (they are run as FP16), got {x.dtype}")
    if not np.isfinite(x).all() or (np.abs(x) > np.finfo(np.float16).max).any():
        raise PEError("activations must be finite and within the FP16 range (the PE's activations are FP16)")
    x16 = np.zeros((x.shape[0], kp), dtype=np.float16)
    x16[:, :k] = x.astype(np.float16)
    a_sign, a_exp, a_man = fp16_fields(x16)
    return Activations(a_sign, a_exp, a_man, x16[:, :k].astype(np.float64))


@dataclasses.dataclass(frozen=True)
class Operands:
    """Everything both engines read: activation fields ``[M, Kp]``, the weights' codes ``[N, Kp]`` and
    members (``member_scope`` "group": ``[N, G]``, "element": ``[N, Kp]``, None: one member), the term
    table and the decoded scales as ``(sign, significand, exponent)`` ``[S, G]``."""

    a_sign: np.ndarray
    a_exp: np.ndarray
    a_man: np.ndarray
    codes: np.ndarray
    member: np.ndarray
    member_scope: str | None
    terms: TermTable
    s_sign: np.ndarray
    s_sig: np.ndarray
    s_exp: np.ndarray
    group_len: int
    x_values: np.ndarray  # the activations as float64 [M, K] (after the FP16 conversion)

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, Kp)`` of the weights."""
        return self.codes.shape

    def entries(self) -> np.ndarray:
        """K-major ``[Kp, N]`` table indices ``member << bits | code`` of every weight."""
        member = self.member if self.member_scope == "element" else \
            np.repeat(self.member, self.codes.shape[1] // self.member.shape[1], axis=1)
        return np.ascontiguousarray(((member.astype(np.uint16) << self.terms.bits) | self.codes).T)


def _weight_operands(qt) -> dict:
    """The weight side of :class:`Operands`, read through ``qt.unpacked()`` (the one door)."""
    u = qt.unpacked()
    if u.zeros is not None:
        raise PEError(f"{qt.format_name} is affine (zero points): the BitMoD PE has no activation-sum path for "
                      "them; use a symmetric format")
    terms = term_table(qt.format, u.values)
    rows = u.codes.shape[0]
    member = np.zeros((rows, 1), np.uint8) if u.member is None else u.member
    member = np.ascontiguousarray(np.broadcast_to(member, (rows, member.shape[1])))  # per-tensor: one row for all
    sd = decompose(u.scales, 53)  # exact: sign, odd significand, exponent of every float64 scale
    return {"codes": np.ascontiguousarray(u.codes), "member": member, "member_scope": u.member_scope or "group",
            "terms": terms, "s_sign": np.ascontiguousarray(sd.sign, dtype=np.int8),
            "s_sig": np.ascontiguousarray(sd.magnitude, dtype=np.int64),
            "s_exp": np.ascontiguousarray(sd.exponent, dtype=np.int32), "group_len": u.elements_per_group}


def operands(x, qt) -> Operands:
    """The operands of ``x @ dequant(qt)^T`` for the PE, read through ``qt.unpacked()`` (what
    :func:`golden` and :func:`engine` take; :func:`run_pe` runs :func:`prepare_pe`'s weights instead)."""
    w = _weight_operands(qt)
    a = activations(x, qt.shape[1], w["codes"].shape[1])
    return Operands(a.a_sign, a.a_exp, a.a_man, **w, x_values=a.x_values)


# ---- the golden model ------------------------------------------------------------------------------

def golden(ops: Operands, rows: int | None = None) -> np.ndarray:
    """Plain numpy definition of the PE arithmetic (module docstring): float32 ``[M, N]``, one array
    step (a tile of 4 input channels, one term of each lane) at a time over all outputs at once.
    ``rows``: only the first ``rows`` output channels (to time it on part of a large layer)."""
    entries = ops.entries()
    kp, n = entries.shape
    n = n if rows is None else min(rows, n)
    m = ops.a_man.shape[0]
    t = ops.terms
    out = np.zeros((m, n), dtype=np.float32)
    for g in range(kp // ops.group_len):
        acc, acc_exp = np.zeros((m, n), np.int64), np.full((m, n), EMPTY, np.int64)
        end = (g + 1) * ops.group_len
        for tile in range(g * ops.group_len, end, LANES):
            lane = np.arange(tile, min(tile + LANES, end))
            entry = entries[lane, :n].astype(np.int64)  # [lanes, n]
            for c in range(int(t.count[entry].max(initial=0))):
                has = (t.count[entry] > c)[None] & (ops.a_man[:, lane] != 0)[:, :, None]  # [m, lanes, n]
                pe = ops.a_exp[:, lane][:, :, None] + t.shift[entry, c][None]
                pe = np.where(has, pe, EMPTY)
                top = pe.max(axis=1)  # [m, n]
                d = np.minimum(top[:, None, :] - pe, MAX_SHIFT)
                aligned = (ops.a_man[:, lane][:, :, None].astype(np.int64) << GUARD_BITS) >> d
                negative = (ops.a_sign[:, lane][:, :, None] ^ t.sign[entry, c][None]) == 1
                part = np.where(has, np.where(negative, -aligned, aligned), 0).sum(axis=1)
                acc, acc_exp = _accumulate(acc, acc_exp, part, np.where(has.any(axis=1), top, EMPTY))
        s = (slice(None), g) if ops.s_sig.shape[0] == 1 else (slice(0, n), g)
        sig, sexp, sneg = ops.s_sig[s], ops.s_exp[s], ops.s_sign[s] == 1
        value = np.ldexp((acc * np.where(sneg, -sig, sig)).astype(np.float64), acc_exp - POINT + sexp)
        out = out + np.where(acc_exp == EMPTY, 0, value).astype(np.float32)
    return out


def _accumulate(acc, acc_exp, part, part_exp):
    """The block-floating accumulator: align both to the larger exponent, add, renormalise."""
    top = np.maximum(acc_exp, part_exp)
    total = (acc >> np.minimum(top - acc_exp, MAX_SHIFT)) + (part >> np.minimum(top - part_exp, MAX_SHIFT))
    k = (((total >= ACC_LIMIT) | (total < -ACC_LIMIT)).astype(np.int64) + ((total >= 2 * ACC_LIMIT)
         | (total < -2 * ACC_LIMIT)) + ((total >= 4 * ACC_LIMIT) | (total < -4 * ACC_LIMIT)))
    return total >> k, np.where(top == EMPTY, EMPTY, top + k)


# ---- term streams ---------------------------------------------------------------------------------

NO_TERM = -128  # packed term of a weight that has no term in that cycle (shifts never reach -64)
PACK_TILE = 64  # the packer's tiles: 64 input channels x 64 output channels (4 KiB of codes, in L1)


def stream_table(terms: TermTable) -> np.ndarray:
    """int8 ``[T, entries]``: term ``c`` of every table entry as ``2 * shift + sign``, or :data:`NO_TERM`."""
    has = terms.count[:, None] > np.arange(terms.shift.shape[1])[None, :]
    return np.ascontiguousarray(np.where(has, 2 * terms.shift + terms.sign, NO_TERM).T.astype(np.int8))


@njit(parallel=True)
def _pack_streams(codes, member, group_of, bits, table, out):  # pragma: no cover - compiled by numba
    """``out[c, k, n] = table[c, member[n, group_of[k]] << bits | codes[n, k]]`` straight from the
    N-major codes ``[N, Kp]`` and members ``[N, G]`` (per element: ``G = Kp``): term ``c`` of every
    weight, one contiguous int8 row per (term, input channel), what the engines stream.

    One thread takes a block of 64 input channels and walks it in 64 x 64 tiles: it reads the tile's
    codes row by row (64 bytes of each of 64 rows) into a small K-major buffer of table indices
    (8 KiB, in L1), then writes the tile's terms as contiguous runs of 64 bytes: every code read
    once and every term written once, with no transposed copy of the codes in memory. (Writing the
    terms straight down a column instead is 4x slower: a row stride of N bytes maps the column's
    cache lines onto a few L1 sets.)"""
    n, kp = codes.shape
    terms = out.shape[0]
    for kb in prange((kp + PACK_TILE - 1) // PACK_TILE):
        k0 = kb * PACK_TILE
        k1 = min(kp, k0 + PACK_TILE)
        width = k1 - k0
        buf = np.empty((PACK_TILE, PACK_TILE), np.uint16)  # [k - k0, i - n0]: table index
        entry = np.empty(PACK_TILE, np.uint16)
        for n0 in range(0, n, PACK_TILE):
            n1 = min(n, n0 + PACK_TILE)
            for i in range(n0, n1):
                crow, mrow = codes[i, k0:k1], member[i]
                for k in range(width):  # contiguous (it vectorises), then one strided column store
                    entry[k] = (np.uint16(mrow[group_of[k0 + k]]) << bits) | np.uint16(crow[k])
                col = i - n0
                for k in range(width):
                    buf[k, col] = entry[k]
            for c in range(terms):
                row = table[c]
                for k in range(width):
                    dst, src = out[c, k0 + k, n0:n1], buf[k]
                    for i in range(n1 - n0):
                        dst[i] = row[src[i]]


def pack_streams(codes: np.ndarray, member: np.ndarray, terms: TermTable) -> np.ndarray:
    """int8 ``[T, Kp, N]`` term streams of codes ``[N, Kp]`` with members ``[N, G]`` (see
    :func:`_pack_streams`; :data:`NO_TERM` where a weight has no ``c``-th term)."""
    n, kp = codes.shape
    group_of = (np.arange(kp, dtype=np.int32) // np.int32(kp // member.shape[1])).astype(np.int32)
    out = np.empty((terms.shift.shape[1], kp, n), dtype=np.int8)
    _pack_streams(np.ascontiguousarray(codes), np.ascontiguousarray(member), group_of, np.uint16(terms.bits),
                  stream_table(terms), out)
    return out


def pack_terms(ops: Operands) -> np.ndarray:
    """int8 ``[T, Kp, N]``: term ``c`` of every weight of ``ops`` as ``2 * shift + sign`` (see :data:`NO_TERM`)."""
    return pack_streams(ops.codes, ops.member, ops.terms)


# ---- the numba engine ---------------------------------------------------------------------------------

@njit(parallel=True)
def _engine(a_sign, a_exp, a_man, packed, s_sign, s_sig, s_exp, group_len, out):  # pragma: no cover - numba
    """The numba twin of :func:`golden`: output channels in blocks across threads; per array step one
    branch-free pass over the block's outputs does the 4 lanes, the adder tree and the accumulator
    (it vectorises: every operand is a contiguous row of ``packed``)."""
    terms, kp, n = packed.shape
    m_tokens = a_man.shape[0]
    blocks = (n + BLOCK - 1) // BLOCK
    for b in prange(blocks):
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        width = hi - lo
        acc = np.empty(width, np.int32)
        acc_exp = np.empty(width, np.int32)
        for m in range(m_tokens):
            for g in range(kp // group_len):
                acc[:] = 0
                acc_exp[:] = EMPTY
                end = (g + 1) * group_len
                for tile in range(g * group_len, end, LANES):
                    # the 4 lanes' activations; a lane past the group's end reads lane 0, dead
                    k0, k1 = tile, min(tile + 1, end - 1)
                    k2, k3 = min(tile + 2, end - 1), min(tile + 3, end - 1)
                    l0 = a_man[m, k0] != 0
                    l1 = (a_man[m, k1] != 0) & (tile + 1 < end)
                    l2 = (a_man[m, k2] != 0) & (tile + 2 < end)
                    l3 = (a_man[m, k3] != 0) & (tile + 3 < end)
                    e0, e1, e2, e3 = np.int32(a_exp[m, k0]), np.int32(a_exp[m, k1]), np.int32(a_exp[m, k2]), np.int32(a_exp[m, k3])
                    m0, m1 = np.int32(a_man[m, k0]) << GUARD_BITS, np.int32(a_man[m, k1]) << GUARD_BITS
                    m2, m3 = np.int32(a_man[m, k2]) << GUARD_BITS, np.int32(a_man[m, k3]) << GUARD_BITS
                    s0, s1, s2, s3 = np.int32(a_sign[m, k0]), np.int32(a_sign[m, k1]), np.int32(a_sign[m, k2]), np.int32(a_sign[m, k3])
                    for c in range(terms):
                        r0, r1, r2, r3 = packed[c, k0, lo:hi], packed[c, k1, lo:hi], packed[c, k2, lo:hi], packed[c, k3, lo:hi]
                        for i in range(width):
                            t0, t1, t2, t3 = np.int32(r0[i]), np.int32(r1[i]), np.int32(r2[i]), np.int32(r3[i])
                            h0 = (t0 != NO_TERM) & l0
                            h1 = (t1 != NO_TERM) & l1
                            h2 = (t2 != NO_TERM) & l2
                            h3 = (t3 != NO_TERM) & l3
                            v0 = e0 + (t0 >> 1) if h0 else np.int32(EMPTY)
                            v1 = e1 + (t1 >> 1) if h1 else np.int32(EMPTY)
                            v2 = e2 + (t2 >> 1) if h2 else np.int32(EMPTY)
                            v3 = e3 + (t3 >> 1) if h3 else np.int32(EMPTY)
                            top = max(max(v0, v1), max(v2, v3))
                            n0 = -((t0 & 1) ^ s0)
                            n1 = -((t1 & 1) ^ s1)
                            n2 = -((t2 & 1) ^ s2)
                            n3 = -((t3 & 1) ^ s3)
                            a0 = m0 >> min(top - v0, MAX_SHIFT) if h0 else np.int32(0)
                            a1 = m1 >> min(top - v1, MAX_SHIFT) if h1 else np.int32(0)
                            a2 = m2 >> min(top - v2, MAX_SHIFT) if h2 else np.int32(0)
                            a3 = m3 >> min(top - v3, MAX_SHIFT) if h3 else np.int32(0)
                            part = ((a0 ^ n0) - n0) + ((a1 ^ n1) - n1) + ((a2 ^ n2) - n2) + ((a3 ^ n3) - n3)
                            x = acc_exp[i]
                            t = max(x, top)
                            total = (acc[i] >> min(t - x, MAX_SHIFT)) + (part >> min(t - top, MAX_SHIFT))
                            k = np.int32((total >= ACC_LIMIT) | (total < -ACC_LIMIT)) + np.int32(
                                (total >= 2 * ACC_LIMIT) | (total < -2 * ACC_LIMIT)) + np.int32(
                                (total >= 4 * ACC_LIMIT) | (total < -4 * ACC_LIMIT))
                            acc[i] = total >> k
                            acc_exp[i] = t + k if t != EMPTY else np.int32(EMPTY)
                for i in range(width):
                    if acc_exp[i] != EMPTY:
                        r = 0 if s_sig.shape[0] == 1 else lo + i
                        sig = -s_sig[r, g] if s_sign[r, g] == 1 else s_sig[r, g]
                        value = math.ldexp(float(np.int64(acc[i]) * sig), int(acc_exp[i] - POINT + s_exp[r, g]))
                        out[m, lo + i] += np.float32(value)


BLOCK = 512  # output channels one thread takes at a time


def _run_engine(a: Activations | Operands, packed, s_sign, s_sig, s_exp, group_len) -> np.ndarray:
    out = np.zeros((a.a_man.shape[0], packed.shape[2]), dtype=np.float32)
    _engine(a.a_sign, a.a_exp, a.a_man, packed, s_sign, s_sig, s_exp, group_len, out)
    return out


def engine(ops) -> np.ndarray:
    """The numba engine's output, float32 ``[M, N]`` (equal to :func:`golden`), of :class:`Operands`
    (packing their terms first) or of ``(weights, acts)``: :func:`prepare_pe`'s :class:`PEWeights`
    and :func:`activations` (the streams already packed)."""
    if isinstance(ops, Operands):
        return _run_engine(ops, pack_terms(ops), ops.s_sign, ops.s_sig, ops.s_exp, ops.group_len)
    weights, acts = ops
    s = weights.streams
    return _run_engine(acts, s.packed, s.s_sign, s.s_sig, s.s_exp, s.group_len)


# ---- prepared weights ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class TermStreams:
    """What the PE reads of a tensor's weights, independent of the activations and the accelerator:
    the term table, the K-major int8 term streams ``packed [T, Kp, N]`` (:func:`pack_streams`; 1 byte
    a weight and cycle: 2 bytes a weight for FP3/FP4, 4 for INT8), the scales' fields ``[S, G]`` and
    the group length. ``derived`` holds what is computed from them on demand and kept: the
    dequantized weights (float32 ``[N, K]``, for :attr:`PEResult.reference` and ``.bound``), the
    per-tile-step term counts of term skipping, and device copies (:mod:`hwlab.sim.pe_cuda`)."""

    shape: tuple[int, int]  # (N, K) of the tensor
    format_name: str
    terms: TermTable
    packed: np.ndarray
    s_sign: np.ndarray
    s_sig: np.ndarray
    s_exp: np.ndarray
    group_len: int
    derived: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def padded_cols(self) -> int:
        """``Kp``: K with the quantizer's zero padding."""
        return self.packed.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of the term streams and scale fields (not counting ``derived``)."""
        return int(self.packed.nbytes + self.s_sign.nbytes + self.s_sig.nbytes + self.s_exp.nbytes)


def term_streams(qt) -> TermStreams:
    """The :class:`TermStreams` of a tensor, built now (read through ``qt.unpacked()``; no cache)."""
    w = _weight_operands(qt)
    packed = pack_streams(w["codes"], w["member"], w["terms"])
    arrays = (packed, w["s_sign"], w["s_sig"], w["s_exp"])
    for a in arrays:
        a.setflags(write=False)  # shared by every call and every PEWeights of the tensor
    return TermStreams(tuple(qt.shape), qt.format_name, w["terms"], *arrays, w["group_len"])


# QuantizedTensor -> TermStreams. A QuantizedTensor is frozen, hashed by identity, and its stored
# arrays are read-only views in a read-only mapping, so an entry cannot go stale; it lives exactly as
# long as its tensor (the streams hold no reference back to it), and a new tensor that happens to
# reuse a dead one's id() is a new key.
_STREAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True, eq=False)
class PEWeights:
    """A quantized tensor prepared for :func:`run_pe` on one accelerator configuration: the tensor,
    the configuration (its arrays give the cycles; the arithmetic is the BitMoD PE's for every
    configuration) and the tensor's :class:`TermStreams`. Made by :func:`prepare_pe`."""

    tensor: object  # the QuantizedTensor
    config: HWConfig
    streams: TermStreams

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)`` of the weights."""
        return self.streams.shape

    def w_hat(self) -> np.ndarray:
        """The dequantized weights, float32 ``[N, K]`` (``qt.unpacked().dequantize()``), kept once asked."""
        d = self.streams.derived
        if "w_hat" not in d:
            w = self.tensor.unpacked().dequantize()
            w.setflags(write=False)
            d["w_hat"] = w
        return d["w_hat"]

    def activations(self, x) -> Activations:
        """:func:`activations` of ``x`` checked against these weights."""
        return activations(x, self.shape[1], self.streams.padded_cols, f" (the weights were prepared from {self!r})")

    def __repr__(self) -> str:
        n, k = self.shape
        return f"PEWeights({self.streams.format_name!r}, shape=({n}, {k}), config={self.config.name!r})"


def _config(preset_or_config) -> HWConfig:
    return preset_or_config if isinstance(preset_or_config, HWConfig) else get_preset(preset_or_config)


def prepare_pe(qt, preset_or_config="bitmod", *, cache: bool = True) -> PEWeights:
    """``qt`` prepared for :func:`run_pe`: everything that depends only on the weights, done once.

    That is the hand-off (``qt.unpacked()``, the term table, the scales' fields) and the term packing
    (:func:`pack_streams`); a call of ``run_pe`` on the result makes only the activations' FP16
    fields and runs the arithmetic. ``cache=True`` keeps the :class:`TermStreams` for as long as
    ``qt`` lives (``run_pe(x, qt)`` itself prepares through this cache), so preparing the same tensor
    again, for this or another configuration, costs nothing; the outputs and reports are identical
    either way. ``cache=False`` builds fresh streams and keeps nothing. The streams take ``T`` bytes a
    weight (``T`` the format's most terms: 2 for FP3/FP4), beside the tensor's own arrays.
    """
    if isinstance(qt, PEWeights):
        return PEWeights(qt.tensor, _config(preset_or_config), qt.streams)
    if not isinstance(qt, QuantizedTensor):
        raise PEError(f"prepare_pe takes a QuantizedTensor (hwlab.quantize), got {type(qt).__name__}")
    cfg = _config(preset_or_config)
    streams = _STREAMS.get(qt) if cache else None
    if streams is None:
        streams = term_streams(qt)
        if cache:
            _STREAMS[qt] = streams
    return PEWeights(qt, cfg, streams)


# ---- cycles, the bound, the entry point ----------------------------------------------------------

def tile_starts(kp: int, group_len: int) -> np.ndarray:
    """First input channel of every tile step (4 lanes; a group's last step may have fewer)."""
    return np.concatenate([np.arange(g, g + group_len, LANES) for g in range(0, kp, group_len)])


@njit(parallel=True)
def _step_terms(packed, starts, group_len, out):  # pragma: no cover - compiled by numba
    """``out[s, n]``: the most terms any lane of tile step ``s`` of output ``n`` needs (from the streams:
    a weight's terms are its first non-:data:`NO_TERM` entries)."""
    terms, _, n = packed.shape
    for s in prange(starts.shape[0]):
        k0 = starts[s]
        k1 = min(k0 + LANES, (k0 // group_len + 1) * group_len)
        row = out[s]
        row[:] = 0
        for c in range(terms):
            for k in range(k0, k1):
                p = packed[c, k]
                for i in range(n):
                    if p[i] != NO_TERM:
                        row[i] = c + 1


def _lock_step_cycles(needed: np.ndarray, rows: int) -> int:
    """Cycles of tile steps ``needed [steps, N]`` on an array of ``rows`` rows in lock step."""
    steps, n = needed.shape
    blocks = -(-n // rows)
    padded = np.zeros((steps, blocks * rows), dtype=np.int8)
    padded[:, :n] = needed
    per_step = padded.reshape(steps, blocks, rows).max(axis=2)  # a step lasts as long as its slowest row
    return int(np.maximum(per_step, 1).sum())


def tile_step_cycles(ops, rows: int, term_skipping: bool) -> int:
    """Compute cycles of the layer on a lock-step array of ``rows`` output rows (per column block),
    of :class:`Operands` or :class:`PEWeights` (equal for the same tensor)."""
    if isinstance(ops, PEWeights):
        s = ops.streams
        n, kp = s.shape[0], s.padded_cols
        starts, terms, group_len = tile_starts(kp, s.group_len), s.terms, s.group_len
    else:
        n, kp = ops.shape
        starts, terms, group_len = tile_starts(kp, ops.group_len), ops.terms, ops.group_len
    if not term_skipping:
        return starts.size * -(-n // rows) * terms.fixed_cycles
    if isinstance(ops, PEWeights):
        if "step_terms" not in s.derived:
            needed = np.empty((starts.size, n), dtype=np.int8)
            _step_terms(s.packed, starts.astype(np.int64), np.int64(group_len), needed)
            s.derived["step_terms"] = needed
        needed = s.derived["step_terms"]
    else:
        needed = np.maximum.reduceat(terms.count[ops.entries()], starts, axis=0)  # [tiles, N]: slowest lane
    return _lock_step_cycles(needed, rows)


def _bound(x_values, w_hat, group_len: int, terms: TermTable, kp: int) -> np.ndarray:
    adds = -(-group_len // LANES) * int(terms.count.max())
    magnitude = np.abs(x_values) @ np.abs(w_hat.astype(np.float64)).T
    return (2.0**-11 + adds * 2.0**-13 + (kp // group_len) * 2.0**-24) * magnitude


def error_bound(ops: Operands, w_hat: np.ndarray) -> np.ndarray:
    """Per-output bound ``[M, N]`` on ``|y - x @ W_hat.T|`` from the stated truncations (docstring):
    ``(2**-11 + adds * 2**-13 + groups * 2**-24) * sum_k |x_k w_k|``."""
    return _bound(ops.x_values, w_hat, ops.group_len, ops.terms, ops.shape[1])


@dataclasses.dataclass(frozen=True, eq=False)
class PEResult:
    """What :func:`run_pe` returns. ``reference`` and ``bound`` are computed when first read (they need
    the dequantized weights and a float64 matmul, more work than the engine's) and then kept."""

    output: np.ndarray  # float32 [M, N]: the PE array's result
    report: object  # Report of the layer on the configured array
    weights: PEWeights  # what ran
    x_values: np.ndarray  # float64 [M, K]: the activations after the FP16 conversion

    @functools.cached_property
    def reference(self) -> np.ndarray:
        """float64 ``[M, N]``: x (as FP16) @ W_hat.T."""
        return self.x_values @ self.weights.w_hat().astype(np.float64).T

    @functools.cached_property
    def bound(self) -> np.ndarray:
        """float64 ``[M, N]``: the error bound of the stated truncations (:func:`error_bound`)."""
        s = self.weights.streams
        return _bound(self.x_values, self.weights.w_hat(), s.group_len, s.terms, s.padded_cols)

    @property
    def rel_error(self) -> float:
        """``||output - reference|| / ||reference||`` (Frobenius; 0 when both are 0)."""
        ref = np.linalg.norm(self.reference)
        err = np.linalg.norm(self.output - self.reference)
        return float(err / ref) if ref else float(err > 0) * float("inf")


def run_pe(x, qt, preset_or_config=None, *, term_skipping: bool = False, phase: str | None = None,
           device: str = "cpu") -> PEResult:
    """Run ``y = x @ dequant(qt)^T`` through the PE arithmetic (module docstring).

    ``x``: activations ``[M, K]`` (float16, or float32/64 rounded to FP16 first; numpy or torch).
    ``qt``: a :class:`~hwlab.formats.QuantizedTensor` ``[N, K]`` of a symmetric format with a
    decomposition, or the :class:`PEWeights` that :func:`prepare_pe` made of one (the same output
    and report; a plain tensor is prepared through the same cache, so a second call with new
    activations runs at the arithmetic's speed either way). ``preset_or_config``: the accelerator
    (default ``"bitmod"``, or the one the weights were prepared for; prepared weights refuse another).
    ``phase``: which of the configuration's arrays runs it (default decode for one token, prefill for
    more). Returns a :class:`PEResult` with the output, the float64 reference, the error bound and
    the cycle :class:`~hwlab.sim.report.Report` (memory and energy from the analytical model of the
    same op, compute cycles counted here). ``device="cuda"`` runs the same arithmetic on a GPU
    through numba.cuda (:mod:`hwlab.sim.pe_cuda`; the streams are copied there once per tensor),
    bit-identical.
    """
    if device not in ("cpu", "cuda"):
        raise PEError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if isinstance(qt, PEWeights):
        weights = qt
        if preset_or_config is not None and _config(preset_or_config) != weights.config:
            asked = _config(preset_or_config)
            raise PEError(f"{weights!r} was prepared for the configuration {weights.config.name!r}, but run_pe was "
                          f"given {asked.name!r}" + (" (same name, other values)" if asked.name == weights.config.name
                                                      else "") + ": pass prepare_pe(weights, config) instead "
                          "(the term streams are shared)")
    else:
        weights = prepare_pe(qt, "bitmod" if preset_or_config is None else preset_or_config)
    cfg, qt = weights.config, weights.tensor
    acts = weights.activations(x)
    if device == "cuda":
        from .pe_cuda import engine_cuda  # imports numba.cuda: only when asked for

        output = engine_cuda(weights, acts)
    else:
        output = engine((weights, acts))
    m, n = output.shape
    phase = phase or ("decode" if m == 1 else "prefill")
    rows, cols = cfg.array(phase)
    compute = tile_step_cycles(weights, rows, term_skipping) * -(-m // cols)
    op = Op(f"{qt.format_name} {n}x{qt.shape[1]}", "linear", 1, n, qt.shape[1], 1, m)
    report = simulate(Workload((op,), phase, 1, m, "layer"), cfg, wbits=float(qt.format.bits),
                      stored_bits=qt.bits_per_weight, compute_cycles=np.array([compute]))
    return PEResult(output, report, weights, acts.x_values)
