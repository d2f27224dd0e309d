"""Simulation reports: per-layer and total cycles, stalls, bytes and energy by component.

A :class:`Report` is what every engine returns (the PE array's analytical and functional engines,
the edge SIMD core): one row per op and the totals, exportable as CSV and JSON, and plotted as a
matplotlib Figure. Cycles are of the simulated machine's clock; energies in picojoules.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math

import numpy as np

ROW_FIELDS = ("name", "kind", "macs", "compute_cycles", "memory_cycles", "cycles", "stall_cycles", "weight_bytes",
              "input_bytes", "output_bytes")
ENERGY_PREFIX = "energy_"  # per-row energy columns: energy_<component>_pj


@dataclasses.dataclass(frozen=True, eq=False)
class Report:
    """Per-op rows (``rows``: name -> column array) and what produced them.

    Columns: ``name``, ``kind``, ``macs``, ``compute_cycles`` (the compute engine busy),
    ``memory_cycles`` (DRAM transfers), ``cycles`` (the op's latency), ``stall_cycles`` (``cycles
    - compute_cycles``: waiting on memory), byte counts, one ``energy_<component>_pj`` column per
    component (``pe``, ``sram``, ``dram`` for the PE array; ``core``, ``memory`` for the edge
    core) and any extra columns an engine adds (``instructions_<kind>``, ...).
    """

    machine: str
    workload: str
    rows: dict
    clock_ghz: float
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        lengths = {len(v) for v in self.rows.values()}
        if len(lengths) != 1:
            raise ValueError(f"report columns differ in length: {sorted(lengths)}")
        if (np.asarray(self.rows["stall_cycles"]) < 0).any():
            raise ValueError("negative stall cycles")

    # ---- totals -------------------------------------------------------------------------------

    def total(self, column: str) -> float:
        return float(np.sum(self.rows[column]))

    @property
    def total_cycles(self) -> int:
        return int(self.total("cycles"))

    @property
    def compute_cycles(self) -> int:
        return int(self.total("compute_cycles"))

    @property
    def stall_cycles(self) -> int:
        return int(self.total("stall_cycles"))

    @property
    def macs(self) -> int:
        return int(self.total("macs"))

    @property
    def seconds(self) -> float:
        return self.total_cycles / (self.clock_ghz * 1e9)

    @property
    def energy_components(self) -> dict:
        """Component -> total energy in pJ."""
        return {k[len(ENERGY_PREFIX):-3]: self.total(k) for k in self.rows if k.startswith(ENERGY_PREFIX)}

    @property
    def energy_pj(self) -> float:
        return float(sum(self.energy_components.values()))

    def speedup_over(self, baseline: "Report") -> float:
        """How many times fewer cycles than ``baseline`` (same workload on another machine)."""
        return baseline.total_cycles / self.total_cycles

    def __add__(self, other: "Report") -> "Report":
        """Two runs one after the other (a prefill and its decode steps): rows concatenated."""
        if set(self.rows) != set(other.rows):
            raise ValueError("reports with different columns cannot be added")
        rows = {k: np.concatenate([np.asarray(self.rows[k]), np.asarray(other.rows[k])]) for k in self.rows}
        return Report(self.machine, f"{self.workload} + {other.workload}", rows, self.clock_ghz,
                      {**self.meta, **other.meta})

    def repeated(self, times: int) -> "Report":
        """This run ``times`` times over (``times`` decode steps)."""
        rows = {k: np.tile(np.asarray(v), times) for k, v in self.rows.items()}
        return Report(self.machine, f"{times} x {self.workload}", rows, self.clock_ghz, dict(self.meta))

    def summary(self) -> dict:
        out = {"machine": self.machine, "workload": self.workload, "total_cycles": self.total_cycles,
               "compute_cycles": self.compute_cycles, "stall_cycles": self.stall_cycles, "macs": self.macs,
               "seconds": self.seconds, "energy_pj": self.energy_pj, "energy_by_component_pj": self.energy_components,
               "bytes": {k: int(self.total(k)) for k in ("weight_bytes", "input_bytes", "output_bytes")}}
        return {**out, **self.meta}

    # ---- export -------------------------------------------------------------------------------

    def to_csv(self, path=None) -> str:
        """The per-op rows as CSV (written to ``path`` when given); returns the text."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(list(self.rows))
        for i in range(len(self.rows["name"])):
            writer.writerow([_plain(self.rows[k][i]) for k in self.rows])
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", newline="") as fh:
                fh.write(text)
        return text

    def to_json(self, path=None, *, rows: bool = True) -> str:
        """The summary (``total_cycles``, energy, ...) and, with ``rows``, the per-op rows as JSON."""
        data = self.summary()
        if rows:
            data["layers"] = [{k: _plain(self.rows[k][i]) for k in self.rows} for i in range(len(self.rows["name"]))]
        text = json.dumps(data, indent=1, allow_nan=False)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    def plot(self, top: int = 12):
        """A matplotlib Figure: cycles per op kind (compute and stall) and energy by component."""
        import matplotlib.pyplot as plt  # the user's backend (Agg where there is no display)

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        kinds = {}
        for name, kind, compute, stall in zip(self.rows["name"], self.rows["kind"], self.rows["compute_cycles"],
                                              self.rows["stall_cycles"]):
            label = _group(name, kind)
            c, s = kinds.get(label, (0, 0))
            kinds[label] = (c + compute, s + stall)
        labels = sorted(kinds, key=lambda k: -sum(kinds[k]))[:top]
        compute = [kinds[k][0] for k in labels]
        stall = [kinds[k][1] for k in labels]
        ax1.barh(labels, compute, label="compute")
        ax1.barh(labels, stall, left=compute, label="memory stall")
        ax1.set_xlabel("cycles")
        ax1.set_title(f"{self.machine}: {self.total_cycles:,} cycles")
        ax1.legend()
        energy = self.energy_components
        ax2.bar(list(energy), [v / 1e6 for v in energy.values()])
        ax2.set_ylabel("energy (uJ)")
        ax2.set_title(f"energy: {self.energy_pj / 1e6:,.1f} uJ")
        fig.tight_layout()
        return fig


def _group(name: str, kind: str) -> str:
    """``layers.3.mlp.up_proj`` -> ``up_proj``: rows of the same layer type plotted together."""
    return kind if kind != "linear" else str(name).rsplit(".", 1)[-1]


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
