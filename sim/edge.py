"""Edge SIMD cores: a frozen, validated :class:`EdgeCore`, TOML files, and presets with sources.

A core is a 128-bit AdvSIMD (NEON) unit with an issue width, a table of instruction latencies
and throughputs, a clock, and the DRAM bandwidth one core streams weights at. The instruction
figures are the measured ones of ``shared/REFERENCES.md`` (edge cores): the Cortex-A72 from
ocxtal/insn_bench_aarch64 on an NXP LX2160A (LLVM's Cortex-A57 model, used for the A72, where not
measured), the Cortex-A77 stood in by Neoverse N1 (the same microarchitecture family; LLVM
``AArch64SchedNeoverseN1.td`` and the same bench on AWS Graviton2).

Configurations load from and save to TOML like the PE array's (:func:`load_edge_config`, ``preset
= "a72"`` to start from a preset); an unknown key or a value out of range is a
:class:`~hwlab.sim.ConfigError` naming it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tomllib

from .config import ConfigError, toml_value

# instruction -> what it does, in the lanes the kernels use (hwlab.sim.simd)
INSTRUCTIONS = {
    "ld1": "load 16 bytes", "st1": "store 16 bytes",
    "mul": "MUL .8h (by element)", "mla": "MLA .8h/.4s (by element)",
    "smull": "SMULL/SMULL2 .8h from .8b (widening multiply)", "sadalp": "SADALP .4s from .8h (pairwise add long)",
    "uxtl": "UXTL/UXTL2 (USHLL #0): widen lanes", "add": "ADD/SUB/AND/ORR", "shift": "SHL/USHR/SSHR",
    "sdot": "SDOT .4s (by element): four int8 products per lane", "uaddw": "UADDW/SADDW: widening add",
    "fmla_h": "FMLA .8h (fp16)", "fmla_s": "FMLA .4s (fp32)", "fcvtl": "FCVTL/FCVTL2 fp16 -> fp32",
    "faddp": "FADDP/ADDV: horizontal reduction", "scvtf": "SCVTF .4s int32 -> fp32", "fmul": "FMUL .4s",
}
# field -> (type, low, high): numeric ranges (inclusive)
RANGES = {"clock_ghz": (float, 1e-3, 100.0), "issue_width": (int, 1, 16), "vector_bits": (int, 64, 2048),
          "dram_gbps": (float, 1e-3, 1e4), "accumulate_latency": (int, 1, 64), "accumulators": (int, 1, 32)}


@dataclasses.dataclass(frozen=True)
class EdgeCore:
    """One SIMD core (units in the names). ``latency``: cycles from issue to result;
    ``throughput``: instructions per cycle of each kind (both keyed by :data:`INSTRUCTIONS`; a kind
    the core lacks, such as the A72's SDOT and fp16 FMLA, is left out). ``accumulate_latency``:
    cycles between dependent multiply-accumulates (accumulator forwarding); ``accumulators``:
    independent accumulator registers a kernel keeps."""

    name: str
    description: str
    clock_ghz: float
    issue_width: int
    latency: dict
    throughput: dict
    dram_gbps: float
    accumulate_latency: int = 2
    accumulators: int = 8
    vector_bits: int = 128

    def __post_init__(self):
        for field, (kind, low, high) in RANGES.items():
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    (kind is int and not float(value).is_integer()) or not (math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"{field} must be {'an integer' if kind is int else 'a number'} in {low}..{high}, "
                                  f"got {value!r}")
            object.__setattr__(self, field, kind(value))
        for field in ("latency", "throughput"):
            table = getattr(self, field)
            if not isinstance(table, dict):
                raise ConfigError(f"{field} must be a table of instruction -> number, got {table!r}")
            for op, value in table.items():
                if op not in INSTRUCTIONS:
                    raise ConfigError(f"{field}: unknown instruction {op!r}; expected one of {sorted(INSTRUCTIONS)}")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value <= 1e3):
                    raise ConfigError(f"{field}.{op} must be a positive number, got {value!r}")
            object.__setattr__(self, field, {op: float(v) for op, v in table.items()})
        if set(self.latency) != set(self.throughput):
            raise ConfigError(f"latency and throughput must name the same instructions: "
                              f"{sorted(set(self.latency) ^ set(self.throughput))} differ")
        for name in ("name", "description"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string")

    def has(self, op: str) -> bool:
        """Whether the core has instruction ``op``."""
        return op in self.throughput

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram_gbps / self.clock_ghz

    def replace(self, **changes) -> "EdgeCore":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown edge core field {unknown[0]!r}; fields: {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)

    def save(self, path, *, overwrite: bool = False) -> None:
        """Write this core as TOML (tables ``[latency]`` and ``[throughput]``)."""
        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        scalars = {k: v for k, v in dataclasses.asdict(self).items() if not isinstance(v, dict)}
        lines = [f"{k} = {toml_value(v)}" for k, v in scalars.items()]
        for table in ("latency", "throughput"):
            lines += ["", f"[{table}]"] + [f"{op} = {v!r}" for op, v in getattr(self, table).items()]
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")


def _table(pairs: dict) -> tuple[dict, dict]:
    return {op: lt[0] for op, lt in pairs.items()}, {op: lt[1] for op, lt in pairs.items()}


# (latency cycles, instructions per cycle), REFERENCES.md "Edge cores" (measured first, LLVM where not)
_A72 = _table({
    "ld1": (4, 1), "st1": (1, 1), "mul": (4, 0.5), "mla": (4, 0.5), "smull": (4, 1), "sadalp": (4, 1),
    "uxtl": (3, 1), "uaddw": (3, 1.5), "add": (3, 1.5), "shift": (3, 1), "fcvtl": (7, 0.5), "fmla_s": (7, 1),
    "faddp": (3, 1.5), "scvtf": (7, 1), "fmul": (7, 1),  # SCVTF/FMUL .4s: LLVM's A57 model, FP pipe as FMLA
})
_A77 = _table({
    "ld1": (5, 2), "st1": (1, 1), "mul": (5, 0.5), "mla": (5, 0.5), "smull": (4, 1), "sadalp": (4, 1),
    "uxtl": (2, 1), "uaddw": (2, 2), "add": (2, 2), "shift": (2, 1), "sdot": (3, 2), "fmla_h": (4, 2),
    "fmla_s": (4, 2), "fcvtl": (3, 2), "faddp": (2, 2), "scvtf": (3, 2), "fmul": (3, 2),  # N1 model (LLVM)
})

PRESETS = {
    # Raspberry Pi 4B: BCM2711, Cortex-A72 at 1.5 GHz; 3-wide decode and dispatch, 2 ASIMD pipes (only F0
    # multiplies); DRAM: STREAM copy 5.5 GB/s (sci-pi.org.uk) -- all in shared/REFERENCES.md, edge cores.
    # Accumulator forwarding of MLA: 2 cycles (measured, same table).
    "a72": EdgeCore("a72", "Cortex-A72 of a Raspberry Pi 4B (BCM2711, 1.5 GHz, LPDDR4)", 1.5, 3, *_A72,
                    dram_gbps=5.5),
    # Snapdragon 870 prime core: Cortex-A77 at 3.2 GHz; decode width 4 as in Neoverse N1 (the stand-in of the
    # instruction table); LPDDR5 44 GB/s peak (AnandTech). No measured single-core bandwidth was found: the
    # preset assumes half of the peak, 22 GB/s, and says so.
    "a77": EdgeCore("a77", "Cortex-A77 prime core of a Snapdragon 870 (3.2 GHz, LPDDR5; DRAM 22 GB/s assumed)",
                    3.2, 4, *_A77, dram_gbps=22.0),
}
ALIASES = {"pi4": "a72", "raspberry-pi-4b": "a72", "snapdragon-870": "a77", "sd870": "a77"}


def get_edge_preset(name) -> EdgeCore:
    """A preset by name (``a72``, ``a77`` and their aliases) or an :class:`EdgeCore` as it is."""
    if isinstance(name, EdgeCore):
        return name
    key = ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in PRESETS:
        raise ConfigError(f"unknown edge preset {name!r}; expected one of {sorted(PRESETS)} "
                          f"(or aliases {sorted(ALIASES)}) or an edge core TOML file")
    return PRESETS[key]


def load_edge_config(path) -> EdgeCore:
    """An edge core from TOML: its fields, with ``[latency]`` and ``[throughput]`` tables; a
    ``preset = "a72"`` key starts from that preset (tables given replace entries of the preset's)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    fields = {f.name for f in dataclasses.fields(EdgeCore)}
    base = data.pop("preset", None)
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; expected {sorted(fields)} (or preset)")
    try:
        if base is None:
            return EdgeCore(**data)
        preset = get_edge_preset(base)
        for table in ("latency", "throughput"):
            if table in data:
                data[table] = {**getattr(preset, table), **data[table]}
        return preset.replace(**data)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
