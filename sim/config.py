"""Accelerator configurations: a frozen, validated :class:`HWConfig`, TOML files, and presets.

Every constant of a preset carries its source. The four accelerators are the ones the BitMoD
paper (Chen et al., HPCA 2025) compares, with the values of the authors' committed simulator
(abdelfattah-lab/BitMoD-HPCA-25 @ e445a5f, ``bitmod_sim/test_*.py``, ``accelerator.py``,
``pe_array.py``), which reproduces the paper's setup: PE arrays for generation (decode) and
prefill, MACs per PE, PE area and energy per cycle, 512 KiB weight and input SRAMs of 8 banks in
28 nm, a DRAM bus of 256 bits per cycle at 18.75 pJ per bit. The simulator there has no clock; its
PE RTL is synthesised at 1 GHz (``hardware/pe/run_dc.tcl``), the clock used here to turn cycles into
seconds.

A configuration is loaded from or saved to TOML (:func:`load_config`, :meth:`HWConfig.save`); an
unknown key, a value of the wrong type or out of range is a :class:`ConfigError` naming the field
and what it accepts.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from typing import Any

OVERLAPS = ("max", "double_buffer", "serial")  # how an op's compute and DRAM time combine (analytical.py)


class ConfigError(ValueError):
    """A configuration value that is missing, of the wrong type or outside its allowed range."""


# field -> (type, low, high): the allowed range of every numeric field (inclusive)
RANGES = {
    "rows_decode": (int, 1, 65536), "cols_decode": (int, 1, 65536),
    "rows_prefill": (int, 1, 65536), "cols_prefill": (int, 1, 65536),
    "macs_per_pe": (int, 1, 64),
    "pe_area_um2": (float, 0.0, 1e9), "pe_energy_pj": (float, 0.0, 1e6), "pe_energy_scale": (float, 0.0, 100.0),
    "weight_bits_decode": (float, 1.0, 32.0), "weight_bits_prefill": (float, 1.0, 32.0),
    "kv_bits": (float, 1.0, 32.0), "act_bits": (int, 1, 32),
    "scale_bits": (int, 0, 64), "group_size": (int, 1, 1 << 20),
    "weight_sram_kib": (int, 1, 1 << 30), "input_sram_kib": (int, 1, 1 << 30), "sram_banks": (int, 1, 4096),
    "dram_bits_per_cycle": (int, 1, 1 << 20), "dram_pj_per_bit": (float, 0.0, 1e6),
    "clock_ghz": (float, 1e-6, 1e3),
    "sram_read_pj": (float, 0.0, 1e9), "sram_write_pj": (float, 0.0, 1e9),
}


@dataclasses.dataclass(frozen=True)
class HWConfig:
    """A bit-serial or bit-parallel PE-array accelerator (the BitMoD paper's model).

    Arrays: ``rows x cols`` PEs; output channels map to rows, tokens to columns, and each PE
    takes ``macs_per_pe`` input channels per tile step (the ``dp`` of the authors' code).
    Bit-serial PEs take ``ceil(floor(bits) / 2)`` cycles per tile step (2 bits per cycle); the
    others one. Weights are stored in DRAM at their code bits plus ``scale_bits`` per
    ``group_size`` weights (BitMoD: an 8-bit scale per 128, so W3 is 3.0625 bits per weight; the
    ANT and OliVe presets give their authors' effective bits directly). Energies are per PE per cycle (times ``pe_energy_scale``, the authors' 1.5x for
    place and route) and per SRAM access (``None``: CACTI 7 by port width, :mod:`hwlab.sim.sram`).
    """

    name: str
    description: str
    rows_decode: int
    cols_decode: int
    rows_prefill: int
    cols_prefill: int
    macs_per_pe: int
    bit_serial: bool
    pe_area_um2: float
    pe_energy_pj: float
    weight_bits_decode: float
    weight_bits_prefill: float
    kv_bits: float
    scale_bits: int = 0
    group_size: int = 128
    act_bits: int = 16
    pe_energy_scale: float = 1.5
    weight_sram_kib: int = 512
    input_sram_kib: int = 512
    sram_banks: int = 8
    dram_bits_per_cycle: int = 256
    dram_pj_per_bit: float = 18.75
    clock_ghz: float = 1.0
    sram_read_pj: float | None = None
    sram_write_pj: float | None = None
    overlap: str = "max"

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in RANGES:
                if value is None and field.name in ("sram_read_pj", "sram_write_pj"):
                    continue
                object.__setattr__(self, field.name, _checked_number(field.name, value))
            elif field.name == "bit_serial":
                if not isinstance(value, bool):
                    raise ConfigError(f"bit_serial must be true or false, got {value!r}")
            elif field.name == "overlap":
                if value not in OVERLAPS:
                    raise ConfigError(f"overlap must be one of {OVERLAPS}, got {value!r}")
            elif not isinstance(value, str):
                raise ConfigError(f"{field.name} must be a string, got {value!r}")

    def array(self, phase: str) -> tuple[int, int]:
        """``(rows, cols)`` of the PE array used for ``phase`` ("decode" or "prefill")."""
        if phase == "decode":
            return self.rows_decode, self.cols_decode
        if phase == "prefill":
            return self.rows_prefill, self.cols_prefill
        raise ConfigError(f"phase must be 'decode' or 'prefill', got {phase!r}")

    def weight_bits(self, phase: str) -> float:
        """The code bits per weight this configuration runs ``phase`` at."""
        self.array(phase)
        return self.weight_bits_decode if phase == "decode" else self.weight_bits_prefill

    def stored_bits(self, code_bits: float) -> float:
        """Bits per weight in DRAM: the code bits plus the scale overhead (3 -> 3.0625 for BitMoD)."""
        return code_bits + self.scale_bits / self.group_size

    def pe_latency(self, bits: float) -> int:
        """Cycles per tile step at ``bits`` weight bits: ``ceil(floor(bits) / 2)`` if bit-serial, else 1."""
        return math.ceil(math.floor(bits) / 2) if self.bit_serial else 1

    def replace(self, **changes) -> "HWConfig":
        """A copy with ``changes`` (checked like any configuration)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown configuration field {unknown[0]!r}; fields: {field_names()}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path, *, overwrite: bool = False) -> None:
        """Write this configuration as TOML (``None`` fields are left out: they take their default)."""
        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        lines = [f"{k} = {toml_value(v)}" for k, v in self.to_dict().items() if v is not None]
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(HWConfig)]


def _checked_number(name: str, value):
    kind, low, high = RANGES[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a number'} in {low}..{high}, got {value!r}")
    value = kind(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{name} must be in {low}..{high}, got {value!r}")
    return value


def toml_value(v: Any) -> str:
    """``v`` written as a TOML value (booleans, strings escaped, numbers by repr)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def load_config(path) -> HWConfig:
    """A configuration from a TOML file: every field of :class:`HWConfig` (those with defaults may
    be left out); an unknown key, a wrong type or a value out of range is a :class:`ConfigError`.
    A ``preset = "name"`` key starts from that preset and overrides the fields given."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    base = data.pop("preset", None)
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; expected {field_names()} (or preset)")
    try:
        if base is not None:
            return get_preset(base).replace(**data)
        missing = [f.name for f in dataclasses.fields(HWConfig)
                   if f.default is dataclasses.MISSING and f.name not in data]
        if missing:
            raise ConfigError(f"missing key {missing[0]!r} (or start from a preset with preset = \"bitmod\")")
        return HWConfig(**data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


PRESETS = {
    # bitmod_sim/test_bitmod.py: pe_array_dim [64, 16] (generation) / [32, 32] (prefill), pe_dp_size 4,
    # bit-serial, pe_energy 0.56, pe_area 1507.7; w_prec 3.0625 (generation) / 4.0625 (prefill): 3 or 4 code
    # bits plus an 8-bit scale per 128 (scale_bits=8, group_size=128); kv_prec 8.
    "bitmod": HWConfig("bitmod", "BitMoD: bit-serial PEs of 4 MACs (HPCA 2025)", 64, 16, 32, 32, 4, True,
                       1507.7, 0.56, 3.0, 4.0, 8, scale_bits=8),
    # bitmod_sim/test_ant.py: [64, 16] / [32, 32], 1 MAC per PE, pe_energy 0.56, pe_area 1318.6; w_prec per
    # model (5 for Llama-2-7B, see paper.py), kv_prec 16.
    "ant": HWConfig("ant", "ANT: flint 4/5-bit PEs (MICRO 2022), as the BitMoD paper models it", 64, 16, 32, 32, 1,
                    False, 1318.6, 0.56, 5.0, 5.0, 16),
    # bitmod_sim/test_olive.py: [72, 16] / [36, 32] (OliVe's PEs are smaller: more fit), 1 MAC, 0.613, 1318.6;
    # w_prec 4 (4.5 for Llama-3-8B), kv_prec 16.
    "olive": HWConfig("olive", "OliVe: outlier-victim pair PEs (ISCA 2023), as the BitMoD paper models it", 72, 16,
                      36, 32, 1, False, 1318.6, 0.613, 4.0, 4.0, 16),
    # bitmod_sim/test_baseline.py: [64, 12] / [32, 24] (same area budget, larger PEs), 1 MAC, FP16 multiplier and
    # adder 0.77 pJ / 1968.7 um^2 (hardware/PE_Area_Power.xlsx), 16-bit weights and KV.
    "fp16": HWConfig("fp16", "FP16 baseline: FP16 multiply-add PEs", 64, 12, 32, 24, 1, False, 1968.7, 0.77,
                     16.0, 16.0, 16),
}


def get_preset(name) -> HWConfig:
    """The preset called ``name`` (an :class:`HWConfig` passes through)."""
    if isinstance(name, HWConfig):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}") from None
