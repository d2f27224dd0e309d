"""Declaration of every built-in format, through the same constructors users call."""
from __future__ import annotations

from .bitmod import MEMBER_ORDER, bitmod_member, bitmod_mixture
from .integer import int_asym_format, int_format
from .lookup import flint4_format, nf4_format
from .microscaling import microscaling_formats
from .minifloat import minifloat_format
from .mixed import MixedFormat
from .olive import OliveFormat
from .registry import register_builtin
from .shift import shift_format, ternary_format

# (name, exponent bits, mantissa bits, semantics); OCP semantics where OCP defines the type
# (OFP8 rev 1.0 for E4M3/E5M2; MX v1.0 section 5.3 for FP6 E2M3/E3M2 and FP4 E2M1).
MINIFLOATS = (
    ("fp3_e1m1", 1, 1, "finite"), ("fp3_e2m0", 2, 0, "finite"),
    ("fp4_e1m2", 1, 2, "finite"), ("fp4_e2m1", 2, 1, "finite"), ("fp4_e3m0", 3, 0, "finite"),
    ("fp5_e2m2", 2, 2, "finite"), ("fp5_e3m1", 3, 1, "finite"),
    ("fp6_e2m3", 2, 3, "finite"), ("fp6_e3m2", 3, 2, "finite"),
    ("fp8_e4m3", 4, 3, "fn"), ("fp8_e5m2", 5, 2, "ieee"),
)


def declare_builtins() -> None:
    """Register every built-in format (called once when :mod:`hwlab.formats` is imported)."""
    for bits in range(2, 9):
        register_builtin(int_format(bits))
    for bits in range(2, 9):
        register_builtin(int_asym_format(bits))
    for name, e, m, semantics in MINIFLOATS:
        register_builtin(minifloat_format(name, e, m, semantics=semantics))
    register_builtin(nf4_format())
    register_builtin(flint4_format())
    register_builtin(OliveFormat())
    for bits in (3, 4):
        members = [register_builtin(bitmod_member(f"fp{bits}_{kind}")) for kind in MEMBER_ORDER]
        register_builtin(bitmod_mixture(bits, members))
    for bits in (2, 3, 4):
        register_builtin(shift_format(bits))
    register_builtin(ternary_format())
    register_builtin(MixedFormat())
    for fmt in microscaling_formats():
        register_builtin(fmt)
