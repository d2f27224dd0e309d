"""The PTX of the fp16 pair GEMV (:func:`hwlab.kernels.half_pairs.half_word_ptx`), which only a GPU runs,
read on the CPU: a small emulator of the instructions it uses decodes every code of every position of a
word, and the pairs it multiplies must be the exact values (integers) or binary16 placements (minifloats)
that the Triton twin and :func:`hwlab.kernels.plan.minifloat_in_fp16` give. The emulator rounds each
f16x2 operation once to binary16 from float64 (exact here: the operands are small integers or powers of
two)."""
import re

import numpy as np
import pytest

import hwlab.formats as F
from hwlab.kernels.half_pairs import WORDS, half_word_ptx, lut_registers
from hwlab.kernels.plan import build_plan, minifloat_in_fp16

OPERAND = re.compile(r"^(\w+(?:\.\w+)*)\s+(.*);$")


def _halves(word: int) -> np.ndarray:
    return np.array([word & 0xFFFF, word >> 16], np.uint16).view(np.float16).astype(np.float64)


def _word(halves) -> int:
    lo, hi = np.asarray(halves, np.float64).astype(np.float16).view(np.uint16).astype(int)
    return int(lo) | (int(hi) << 16)


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    """PTX ``lop3.b32``: bit j of the result is bit ``(a_j << 2) | (b_j << 1) | c_j`` of ``lut``."""
    out = 0
    for j in range(32):
        index = (((a >> j) & 1) << 2) | (((b >> j) & 1) << 1) | ((c >> j) & 1)
        out |= ((lut >> index) & 1) << j
    return out


def _prmt(a: int, b: int, selector: int) -> int:
    """PTX ``prmt.b32`` (default mode): result byte i is byte ``n & 7`` of the eight bytes ``b:a`` for the
    selector's nibble i ``n``, or that byte's top bit replicated where ``n & 8``."""
    pool = (a | (b << 32)).to_bytes(8, "little")
    out = 0
    for i in range(4):
        n = (selector >> (4 * i)) & 0xF
        byte = pool[n & 7]
        out |= ((0xFF if byte & 0x80 else 0) if n & 8 else byte) << (8 * i)
    return out


def decoded_pairs(ptx: str, words: list[int]) -> list[np.ndarray]:
    """Run the PTX's integer and f16x2 steps on ``words``; the fp16 pair ``h`` each product multiplies, in order."""
    regs = {f"${1 + i}": w for i, w in enumerate(words)}
    value = lambda tok: int(tok, 0) if tok[0].isdigit() else regs[tok]  # noqa: E731
    pairs = []
    for line in ptx.splitlines():
        found = OPERAND.match(line.strip())
        if not found or found.group(1).startswith(".reg"):
            continue
        op, args = found.group(1), [a.strip() for a in found.group(2).split(",")]
        if op in ("mul.rn.f16x2", "fma.rn.f16x2") and args[0] == "s":
            pairs.append(_halves(regs["h"]))
        if op == "shl.b32":
            regs[args[0]] = (value(args[1]) << int(args[2])) & 0xFFFFFFFF
        elif op == "shr.u32":
            regs[args[0]] = value(args[1]) >> int(args[2])
        elif op == "and.b32":
            regs[args[0]] = value(args[1]) & value(args[2])
        elif op == "xor.b32":
            regs[args[0]] = value(args[1]) ^ value(args[2])
        elif op == "prmt.b32":
            regs[args[0]] = _prmt(*(value(a) for a in args[1:4]))
        elif op == "lop3.b32":
            regs[args[0]] = _lop3(*(value(a) for a in args[1:4]), int(args[4], 0))
        elif op == "mov.b32" and not args[0].startswith("{"):
            regs[args[0]] = value(args[1])
        elif op == "add.rn.f16x2":
            regs[args[0]] = _word(_halves(regs[args[1]]) + _halves(regs[args[2]]))
        elif op == "fma.rn.f16x2" and args[0] == "h":
            regs["h"] = _word(_halves(regs[args[1]]) * _halves(regs[args[2]]) + _halves(regs[args[3]]))
    return pairs


def every_code_words(bits: int, rng) -> list[int]:
    """Words holding every code in every position (a code repeated over the word), then random words."""
    per = 32 // bits
    same = [sum(c << (bits * j) for j in range(per)) for c in range(1 << bits)]
    return same + [int(w) for w in rng.integers(0, 2**32, 64, dtype=np.uint64)]


def expected_pairs(word: int, bits: int, decode) -> list[np.ndarray]:
    """Codes ``i`` and ``i + E/2`` of ``word`` decoded, for each pair index ``i``."""
    per = 32 // bits
    codes = [(word >> (bits * j)) & ((1 << bits) - 1) for j in range(per)]
    return [decode(np.array([codes[i], codes[i + per // 2]])) for i in range(per // 2)]


@pytest.mark.parametrize("bits, signed", [(2, False), (2, True), (4, False), (4, True), (8, False), (8, True)])
def test_integer_ptx_decodes_every_code(bits, signed, rng):
    flip = 1 << (bits - 1) if signed else 0
    ptx = half_word_ptx(bits, flip)
    words = every_code_words(bits, rng)
    for a, b in zip(words[::2], words[1::2]):
        got = decoded_pairs(ptx, [a, b])
        want = [p for w in (a, b) for p in expected_pairs(w, bits, lambda c: ((c ^ flip) - flip).astype(float))]
        assert len(got) == WORDS * 16 // bits
        np.testing.assert_array_equal(np.array(got), np.array(want))


@pytest.mark.parametrize("name", ["fp4_e2m1", "fp4_e1m2", "fp4_e3m0", "fp8_e4m3", "mxfp4", "nvfp4"])
def test_minifloat_ptx_places_every_code_in_binary16(name, rng):
    """Every code of the format, in every position of both words: the pair the PTX multiplies is the code's
    binary16 placement, which times the plan's power of two is the format's value (where the code has one)."""
    w = (rng.standard_normal((4, 256)) * 0.05).astype(np.float32)
    plan = build_plan(F.quantize(w, name))
    assert plan.decode == "float"
    bits, mbits = plan.bits, plan.mbits
    ptx = half_word_ptx(bits, 0, mbits)
    words = every_code_words(bits, rng)
    for a, b in zip(words[::2], words[1::2]):
        got = decoded_pairs(ptx, [a, b])
        want = [p for x in (a, b) for p in expected_pairs(x, bits, lambda c: minifloat_in_fp16(c, bits, mbits))]
        np.testing.assert_array_equal(np.array(got), np.array(want))
    placed = minifloat_in_fp16(np.arange(1 << bits), bits, mbits) * plan.decode_scale
    valued = plan.lut[0] != 0
    np.testing.assert_array_equal(placed[valued], plan.lut[0][valued] * plan.lut_scale)


@pytest.mark.parametrize("name", ["nf4", "flint4", "fp4_ea_pos", "shift4", "random"])
def test_table_ptx_reads_every_code_from_its_binary16_table(name, rng):
    """The byte-permute table decode: every code in every position of both words gives its table entry as
    binary16 (the fp16 rounding of the plan's normalised table), whatever the bytes (a random table of
    16-bit patterns too, NaN patterns included)."""
    if name == "random":
        table = rng.integers(0, 2**16, 16).astype(np.uint16)
    else:
        plan = build_plan(F.quantize((rng.standard_normal((4, 256)) * 0.05).astype(np.float32), name))
        assert plan.decode == "lut" and plan.lut.shape[1] <= 16
        table = plan.lut[0].astype(np.float16).view(np.uint16)
    ptx = half_word_ptx(4, 0, table=True)
    padded = np.zeros(16, np.uint16)
    padded[:len(table)] = table
    words = every_code_words(4, rng)
    x_pairs = [0] * (WORDS * 4)  # the activation operands, not read by the decode
    for a, b in zip(words[::2], words[1::2]):
        got = decoded_pairs(ptx, [a, b, *x_pairs, *lut_registers(table)])
        entry = lambda c: padded[c].view(np.float16).astype(np.float64)  # noqa: E731
        want = [p for x in (a, b) for p in expected_pairs(x, 4, entry)]
        np.testing.assert_array_equal(np.array(got).view(np.uint64), np.array(want).view(np.uint64))


def test_table_ptx_reads_only_4_bit_codes():
    with pytest.raises(ValueError, match="4-bit codes, not 2-bit"):
        half_word_ptx(2, 0, table=True)
