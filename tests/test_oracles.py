"""Element formats against independent oracles: ml_dtypes, published tables and the BitMoD rule.

- OCP minifloats against ml_dtypes (every code, and 10**6 random float32 inputs over many
  binades, with ties, subnormals and overflow);
- every minifloat against a bit-field decoder written here from the IEEE/OCP definition;
- NF4 against bitsandbytes' constants, BitMoD members against the authors' grids (divided by
  2, REFERENCES.md), flint4 against ANT, integer/shift/ternary tables from their definitions;
- the BitMoD mixture (``bitmod_fp3``, ``bitmod_fp4``) against a float64 reference of the
  authors' per-group search.
"""
import math

import ml_dtypes
import numpy as np
import pytest

import hwlab
from hwlab.formats import define_minifloat, get_format, list_formats, unpack_codes

from formatting import mismatch_report, reference_nearest

# ----------------------------------------------------------------------------- minifloats

# name -> (exponent bits, mantissa bits, top-exponent semantics), DESIGN.md format table
MINIFLOATS = {
    "fp3_e1m1": (1, 1, "finite"), "fp3_e2m0": (2, 0, "finite"), "fp4_e1m2": (1, 2, "finite"),
    "fp4_e2m1": (2, 1, "finite"), "fp4_e3m0": (3, 0, "finite"), "fp5_e2m2": (2, 2, "finite"),
    "fp5_e3m1": (3, 1, "finite"), "fp6_e2m3": (2, 3, "finite"), "fp6_e3m2": (3, 2, "finite"),
    "fp8_e4m3": (4, 3, "fn"), "fp8_e5m2": (5, 2, "ieee"),
}
# OCP name -> ml_dtypes type; largest finite value (OCP OFP8 rev 1.0 and MX v1.0 table 1)
ML_DTYPES = {
    "fp4_e2m1": (ml_dtypes.float4_e2m1fn, 6.0), "fp6_e2m3": (ml_dtypes.float6_e2m3fn, 7.5),
    "fp6_e3m2": (ml_dtypes.float6_e3m2fn, 28.0), "fp8_e4m3": (ml_dtypes.float8_e4m3fn, 448.0),
    "fp8_e5m2": (ml_dtypes.float8_e5m2, 57344.0),
}
RANDOM_INPUTS = 10**6


def decode_minifloat(code: int, exp_bits: int, man_bits: int, semantics: str, bias: int | None = None) -> float:
    """Value of one sign|exponent|mantissa code, straight from the IEEE 754 / OCP definition."""
    bias = 2 ** (exp_bits - 1) - 1 if bias is None else bias
    sign = -1.0 if code >> (exp_bits + man_bits) else 1.0
    exponent = (code >> man_bits) & (2**exp_bits - 1)
    mantissa = code & (2**man_bits - 1)
    top = exponent == 2**exp_bits - 1
    if semantics == "ieee" and top:
        return sign * math.inf if mantissa == 0 else math.nan
    if semantics == "fn" and top and mantissa == 2**man_bits - 1:
        return math.nan
    if exponent == 0:
        return math.copysign(2.0 ** (1 - bias) * mantissa / 2**man_bits, sign)
    return sign * 2.0 ** (exponent - bias) * (1 + mantissa / 2**man_bits)


def assert_same_values(got, want):
    np.testing.assert_array_equal(got, want)  # NaN positions must agree too
    assert np.array_equal(np.signbit(got[~np.isnan(got)]), np.signbit(want[~np.isnan(want)]))


@pytest.mark.parametrize("name", list(MINIFLOATS))
def test_minifloat_table_matches_bit_field_decoder(name):
    fmt = get_format(name)
    e, m, semantics = MINIFLOATS[name]
    assert fmt.bits == 1 + e + m
    assert_same_values(fmt.values, np.array([decode_minifloat(c, e, m, semantics) for c in range(2**fmt.bits)]))


def test_minifloat_with_custom_bias_matches_decoder():
    fmt = define_minifloat("fp4_e2m1_b2", 2, 1, bias=2, register=False)
    assert_same_values(fmt.values, np.array([decode_minifloat(c, 2, 1, "finite", bias=2) for c in range(16)]))


@pytest.mark.parametrize("name", list(ML_DTYPES))
def test_ocp_minifloat_codes_match_ml_dtypes(name):
    fmt = get_format(name)
    dtype, largest = ML_DTYPES[name]
    codes = np.arange(2**fmt.bits, dtype=np.uint8)
    assert_same_values(fmt.values, codes.view(dtype).astype(np.float64))
    assert fmt.info.max == largest == -fmt.info.min


def binade_inputs(rng, n, fmt, man_bits):
    """``n`` float32 inputs: random sign x 2**k x mantissa, k from below half the smallest
    subnormal to past the largest value; half the mantissas have only ``man_bits + 2`` bits,
    so exact values and exact ties (midpoints) are frequent."""
    lo = math.floor(math.log2(fmt.info.smallest_subnormal or fmt.info.smallest_normal)) - 3
    hi = math.floor(math.log2(fmt.info.max)) + 3
    full = rng.uniform(1, 2, n)
    short = 1 + rng.integers(0, 2 ** (man_bits + 2), n) / 2 ** (man_bits + 2)
    mantissa = np.where(rng.random(n) < 0.5, full, short)
    x = rng.choice([-1.0, 1.0], n) * np.ldexp(mantissa, rng.integers(lo, hi + 1, n))
    x[:8] = [0.0, -0.0, np.inf, -np.inf, fmt.info.max, -fmt.info.max, 1e30, -1e30]
    return x.astype(np.float32)


def assert_inputs_cover(fmt, x):
    """The random inputs include subnormal results, exact midpoints and overflow."""
    values = np.unique(fmt.values[np.isfinite(fmt.values)] + 0.0)
    mids = (values[:-1] + values[1:]) / 2
    assert np.isin(x, mids).sum() > 1000, "too few exact ties"
    assert (np.abs(x) > fmt.info.max).sum() > 1000, "too few out-of-range inputs"
    if fmt.info.smallest_subnormal:
        assert ((np.abs(x) > 0) & (np.abs(x) < fmt.info.smallest_normal)).sum() > 1000, "too few subnormals"


@pytest.mark.parametrize("name", ["fp4_e2m1", "fp6_e2m3", "fp6_e3m2"])
def test_saturating_ocp_minifloats_round_like_ml_dtypes(name, rng):
    fmt = get_format(name)
    dtype, _ = ML_DTYPES[name]
    x = binade_inputs(rng, RANDOM_INPUTS, fmt, MINIFLOATS[name][1])
    assert_inputs_cover(fmt, x)
    want = x.astype(dtype).view(np.uint8)  # ml_dtypes saturates these types
    got = fmt.encode(x)
    assert np.array_equal(got, want), mismatch_report(fmt, x, got, want)
    assert np.array_equal(fmt.encode(x, overflow="nonfinite"), got)  # no inf/NaN to overflow to


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_rounds_like_ml_dtypes_and_saturates_by_default(name, rng):
    fmt = get_format(name)
    dtype, largest = ML_DTYPES[name]
    x = binade_inputs(rng, RANDOM_INPUTS, fmt, MINIFLOATS[name][1])
    assert_inputs_cover(fmt, x)
    want = x.astype(dtype).view(np.uint8)
    want_values = want.view(dtype).astype(np.float64)
    finite = np.isfinite(want_values)
    got = fmt.encode(x, overflow="nonfinite")
    assert np.array_equal(got[finite], want[finite]), mismatch_report(fmt, x[finite], got[finite], want[finite])
    got_values = fmt.values[got[~finite]]
    assert np.array_equal(np.isnan(got_values), np.isnan(want_values[~finite]))
    assert np.array_equal(np.isinf(got_values), np.isinf(want_values[~finite]))
    assert np.array_equal(got[~finite] >> 7, want[~finite] >> 7), "sign of inf/NaN differs"
    assert (~finite).sum() > 1000
    saturated = fmt.encode(x)
    assert np.array_equal(saturated[finite], want[finite])
    np.testing.assert_array_equal(fmt.values[saturated[~finite]], np.sign(x[~finite]) * largest)


# ----------------------------------------------------------------------------- tables

# bitsandbytes get_4bit_type("nf4") (REFERENCES.md), float32 constants in code order
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
# ANT flint4 (REFERENCES.md): {0, +-1/4, +-1/2, +-3/4, +-1, +-3/2, +-2, +-4}; the BitMoD
# authors' FLINT4 grid is the same times 4
FLINT4_ANT = [0, 0.25, 0.5, 0.75, 1, 1.5, 2, 4]
FLINT4_AUTHORS = [-16, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 16]
# BitMoD authors' grids (quant_weight.py, "2 x E2M1" units; REFERENCES.md)
FP3 = [-4, -2, -1, 0, 1, 2, 4]
FP4 = [-12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12]
BITMOD_GRIDS = {
    "fp3_er_pos": [-4, -2, -1, 0, 1, 2, 3, 4], "fp3_er_neg": [-4, -3, -2, -1, 0, 1, 2, 4],
    "fp3_ea_pos": [-4, -2, -1, 0, 1, 2, 4, 6], "fp3_ea_neg": [-6, -4, -2, -1, 0, 1, 2, 4],
    "fp4_er_pos": [-12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 10, 12],
    "fp4_er_neg": [-12, -10, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12],
    "fp4_ea_pos": [-12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12, 16],
    "fp4_ea_neg": [-16, -12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12],
}
BITMOD_ORDER = ("er_pos", "er_neg", "ea_pos", "ea_neg")  # the authors' search order


def encodable_values(fmt) -> np.ndarray:
    return np.sort(fmt.values[fmt.encodable])


def bitmod_codes(name: str) -> dict:
    """Value -> code of a BitMoD member in the sign-magnitude layout: magnitudes of FP3 (E2M0)
    or FP4 (E2M1) ascending at codes 0.., their negatives at ``sign | index``, and the
    special value (the grid's extra point) at the -0 code ``sign | 0``."""
    grid = BITMOD_GRIDS[name]
    base = FP3 if name.startswith("fp3") else FP4
    magnitudes = sorted(v for v in base if v >= 0)
    sign = len(magnitudes)
    (special,) = set(grid) - set(base)
    table = {m / 2: i for i, m in enumerate(magnitudes)}
    table.update({-m / 2: sign + i for i, m in enumerate(magnitudes) if m})
    table[special / 2] = sign
    assert sorted(table) == sorted(v / 2 for v in grid)
    return table


def test_nf4_equals_bitsandbytes_constants():
    fmt = get_format("nf4")
    assert np.array_equal(fmt.values, np.array(NF4, dtype=np.float32).astype(np.float64))
    assert fmt.encodable.all() and fmt.rounding == "nearest_down"
    tie = (fmt.values[7] + fmt.values[8]) / 2  # bitsandbytes sends x == midpoint down (x > mid goes up)
    assert fmt.encode(tie) == 7 and fmt.encode(np.nextafter(tie, 1)) == 8


def test_flint4_equals_ant():
    fmt = get_format("flint4")
    ant = sorted({s * v for v in FLINT4_ANT for s in (1, -1)})
    assert encodable_values(fmt).tolist() == ant == [v / 4 for v in FLINT4_AUTHORS]
    assert fmt.values[8] == 0 and np.signbit(fmt.values[8]) and not fmt.encodable[8]  # the -0 code: never emitted


@pytest.mark.parametrize("name", list(BITMOD_GRIDS))
def test_bitmod_member_equals_authors_grid_halved(name):
    fmt = get_format(name)
    assert encodable_values(fmt).tolist() == [v / 2 for v in BITMOD_GRIDS[name]]
    assert fmt.encodable.all() and fmt.rounding == "nearest_down"
    for value, code in bitmod_codes(name).items():
        assert fmt.values[code] == value, f"code {code:0{fmt.bits}b} decodes to {fmt.values[code]}, expected {value}"


@pytest.mark.parametrize("bits", range(2, 9))
def test_integer_tables(bits):
    codes = np.arange(2**bits)
    sym, asym = get_format(f"int{bits}"), get_format(f"int{bits}_asym")
    assert np.array_equal(sym.values, np.where(codes < 2 ** (bits - 1), codes, codes - 2**bits))
    assert np.flatnonzero(~sym.encodable).tolist() == [2 ** (bits - 1)]  # -2**(b-1) is never emitted
    assert sym.max_abs == 2 ** (bits - 1) - 1
    assert np.array_equal(asym.values, codes) and asym.encodable.all() and asym.scaling == "affine"


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_shift_tables(bits):
    fmt = get_format(f"shift{bits}")
    want = [(-1.0 if c >> (bits - 1) else 1.0) * 2.0 ** -(c & (2 ** (bits - 1) - 1)) for c in range(2**bits)]
    assert fmt.values.tolist() == want and fmt.encodable.all()


def test_ternary_table():
    fmt = get_format("ternary")
    assert_same_values(fmt.values, np.array([0.0, 1.0, np.nan, -1.0]))
    assert fmt.scaling == "absmean" and not fmt.encodable[2]


# ----------------------------------------------------------------------------- BitMoD mixture

BITMOD_GROUP = 128
BITMOD_CLAMP = (1e-5, 1e4)  # scale_fp.clamp(min=1e-5, max=1e4) in the authors' code


def bitmod_reference(w: np.ndarray, bits: int):
    """Codes, type ids, fp16 scales and dequantized values of the BitMoD mixture, in float64.

    Per group of 128 along K, for each member in the authors' order: scale = absmax / max|grid|
    clamped to [1e-5, 1e4] and rounded to fp16; each weight to the nearest scaled grid value,
    ties to the lower value; the member with the least SSE wins (strict <, earlier wins).
    """
    rows, cols = w.shape
    groups = w.reshape(-1, BITMOD_GROUP).astype(np.float64)
    codes = np.zeros(groups.shape, dtype=np.uint8)
    type_ids = np.zeros(len(groups), dtype=np.int64)
    scales = np.zeros(len(groups))
    deq = np.zeros(groups.shape)
    members = [f"fp{bits}_{kind}" for kind in BITMOD_ORDER]
    for g, x in enumerate(groups):
        best = math.inf
        for type_id, member in enumerate(members):
            table = bitmod_codes(member)
            grid = np.array(sorted(table))
            scale = float(np.float16(np.clip(np.abs(x).max() / np.abs(grid).max(), *BITMOD_CLAMP)))
            pick = reference_nearest(x, grid * scale, [table[v] for v in grid], "nearest_down")
            q = grid[pick] * scale
            sse = math.fsum((x - q) ** 2)
            if sse < best:
                best, type_ids[g], scales[g], deq[g] = sse, type_id, scale, q
                codes[g] = [table[v] for v in grid[pick]]
    return (codes.reshape(rows, cols), type_ids.reshape(rows, -1), scales.reshape(rows, -1),
            deq.reshape(rows, cols))


def bitmod_test_matrix(rng, bits):
    """Weights like an LLM layer plus groups that exercise clamping, saturation and exact ties."""
    w = rng.standard_normal((12, 4 * BITMOD_GROUP)) * 0.02
    w[rng.integers(0, 12, 10), rng.integers(0, w.shape[1], 10)] *= 15  # outliers
    # absmax / max|grid| below 1e-5: the scale clamps up (a group whose weights would all round to zero
    # under the clamped scale is refused, so these keep their largest weights)
    w[1] = rng.standard_normal(w.shape[1]) * 5e-6
    # just above 1e4 for the ER members (max|grid| 6 or 2): the scale clamps down and the largest weights
    # saturate, by less than rounding (more is refused); the EA members need no clamp
    groups = w[2].reshape(-1, BITMOD_GROUP)
    w[2] = (groups / np.abs(groups).max(axis=1, keepdims=True) * 1.05e4 * (6 if bits == 4 else 2)).ravel()
    w[3, :BITMOD_GROUP] = 0  # an all-zero group
    s0 = 11 / 1024  # exact in fp16
    for row, member in ((4, f"fp{bits}_er_pos"), (5, f"fp{bits}_ea_pos"), (6, f"fp{bits}_ea_neg")):
        grid = np.array(sorted(bitmod_codes(member)))
        mids = (grid[:-1] + grid[1:]) / 2  # exact ties for this member's scale s0
        ties = np.concatenate([mids, grid])
        w[row] = rng.choice(ties, w.shape[1]) * s0
        w[row, ::BITMOD_GROUP] = grid[np.argmax(np.abs(grid))] * s0  # absmax sets scale s0
    return w.astype(np.float32)


@pytest.mark.parametrize("bits", [3, 4])
def test_bitmod_mixture_matches_reference(bits, rng):
    w = bitmod_test_matrix(rng, bits)
    qt = hwlab.quantize(w, f"bitmod_fp{bits}", group_size=BITMOD_GROUP)
    codes, type_ids, scales, deq = bitmod_reference(w, bits)
    rows, cols = w.shape
    got_codes = unpack_codes(qt.codes, bits, cols)
    assert np.array_equal(got_codes, codes), f"{np.argwhere(got_codes != codes)[:5]}"
    assert np.array_equal(unpack_codes(qt.arrays["type_ids"], 2, cols // BITMOD_GROUP), type_ids)
    nonzero = np.abs(w.reshape(rows, -1, BITMOD_GROUP)).max(axis=2) > 0  # zero groups: any scale
    assert qt.arrays["scales"].dtype == np.float16
    assert np.array_equal(qt.arrays["scales"].astype(np.float64)[nonzero], scales[nonzero])
    assert np.array_equal(qt.dequantize(), deq.astype(np.float32))
    assert len(set(type_ids.ravel())) == 4, "every member should win some group"
    type_id_words = -(-2 * cols // BITMOD_GROUP // 32)  # 2-bit ids of a row, whole uint32 words
    assert qt.bits_per_weight == bits + 16 / BITMOD_GROUP + 32 * type_id_words / cols


def test_bitmod_members_registered_in_search_order():
    for bits in (3, 4):
        mixture = get_format(f"bitmod_fp{bits}")
        assert [m.name for m in mixture.members] == [f"fp{bits}_{k}" for k in BITMOD_ORDER]
        assert f"bitmod_fp{bits}" in list_formats()
