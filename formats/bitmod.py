"""BitMoD (Chen et al., HPCA 2025): FP3/FP4 with the negative-zero code repurposed.

Each member is a sign-magnitude FP3 (E2M0) or FP4 (E2M1) whose ``-0`` code (``0b100`` /
``0b1000``) decodes to one extra value: ER ("extra resolution") adds +-3 / +-5 on the authors'
grid halved, EA ("extra asymmetry") adds +-3 / +-8. Values are in OCP E2M1 units, i.e. the
authors' "2 x E2M1" grids divided by 2 (abdelfattah-lab/BitMoD-HPCA-25,
``bitmod_quant/quant_utils/quant_weight.py``: ``FP4_ER_POS = [-12, ..., 8, 10, 12]`` etc.).

Rounding is the authors' midpoint binning, ties to the lower value; the scale of a group is
``absmax / max|grid|`` in fp16, clamped to [1e-5, 1e4]; the mixtures ``bitmod_fp3`` and
``bitmod_fp4`` try ER+, ER-, EA+, EA- in that order and keep the least MSE (strict ``<``).
"""
from __future__ import annotations

from .encodings import sign_magnitude_table
from .lookup import lut_format
from .mixture import MixtureFormat

# Magnitudes of sign-magnitude FP3 E2M0 and FP4 E2M1 in OCP E2M1 units (authors' grid / 2):
# the minifloats E2M0 with bias 2 and E2M1 with bias 1 (see encodings.minifloat_values).
FP3_MAGNITUDES = (0.0, 0.5, 1.0, 2.0)
FP4_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
MINIFLOAT_FIELDS = {3: {"exp_bits": 2, "man_bits": 0, "bias": 2}, 4: {"exp_bits": 2, "man_bits": 1, "bias": 1}}
# The value the -0 code decodes to, per member (authors' grid / 2).
SPECIAL_VALUES = {
    "fp3_er_pos": 1.5, "fp3_er_neg": -1.5, "fp3_ea_pos": 3.0, "fp3_ea_neg": -3.0,
    "fp4_er_pos": 5.0, "fp4_er_neg": -5.0, "fp4_ea_pos": 8.0, "fp4_ea_neg": -8.0,
}
MEMBER_ORDER = ("er_pos", "er_neg", "ea_pos", "ea_neg")  # the authors' search order
BITMOD_DEFAULTS = {"scale_clamp": (1e-5, 1e4)}  # scale_fp.clamp(min=1e-5, max=1e4) in the authors' code


def bitmod_member(name: str):
    """One BitMoD member, e.g. ``bitmod_member("fp4_ea_pos")``."""
    bits = 3 if name.startswith("fp3") else 4
    magnitudes = FP3_MAGNITUDES if bits == 3 else FP4_MAGNITUDES
    fields = {"kind": "minifloat", **MINIFLOAT_FIELDS[bits], "semantics": "finite",
              "special_code": len(magnitudes), "special_value": SPECIAL_VALUES[name]}  # the -0 code
    return lut_format(name, sign_magnitude_table(magnitudes, SPECIAL_VALUES[name]),
                      rounding="nearest_down", family="bitmod", defaults=BITMOD_DEFAULTS, fields=fields,
                      description=f"BitMoD {name[:3].upper()} with -0 repurposed as {SPECIAL_VALUES[name]:+g}")


def bitmod_mixture(bits: int, members) -> MixtureFormat:
    """``bitmod_fp3`` or ``bitmod_fp4`` over the four members in the authors' order."""
    return MixtureFormat(f"bitmod_fp{bits}", members, defaults=BITMOD_DEFAULTS,
                         description=f"BitMoD FP{bits}: per group the least-MSE of ER+, ER-, EA+, EA-; 2-bit type id")
