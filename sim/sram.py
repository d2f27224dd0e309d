"""SRAM access energy by port width: CACTI 7 numbers for the BitMoD paper's 512 KiB, 8-bank SRAMs.

The authors' simulator runs CACTI 7 (HewlettPackard/cacti, 28 nm, itrs-hp, one bank of 64 KiB with
a 1R+1W port, ED^2 optimised, energies scaled by the 8 banks) for each SRAM; the energy depends only
on the port width, and these are its results for every width the four accelerators use
(reproduced here by building CACTI 7 and re-running the authors' configuration). For another
width, the energy is interpolated linearly between the neighbouring tabulated widths (and
extrapolated from the nearest two beyond them): an estimate, not a CACTI run. A configuration can
set ``sram_read_pj`` and ``sram_write_pj`` to measured numbers instead.
"""
from __future__ import annotations

import numpy as np

# port width (bits) -> (read pJ, write pJ) per full-width access, whole 8-bank SRAM
CACTI_28NM_512KIB = {
    128: (60.12992, 37.16792), 144: (61.54176, 38.45888), 192: (66.57808, 43.31840), 256: (70.09280, 51.71784),
    288: (72.59616, 54.11920), 384: (82.83040, 64.04792), 512: (92.79440, 83.35360), 576: (107.69600, 89.34320),
    1024: (138.44160, 156.09040),
}
_WIDTHS = np.array(sorted(CACTI_28NM_512KIB), dtype=np.float64)
_READ = np.array([CACTI_28NM_512KIB[int(w)][0] for w in _WIDTHS])
_WRITE = np.array([CACTI_28NM_512KIB[int(w)][1] for w in _WIDTHS])


def access_energy(port_bits: float) -> tuple[float, float]:
    """(read, write) pJ of one full-width access of a port of ``port_bits`` bits."""
    if port_bits in CACTI_28NM_512KIB:
        return CACTI_28NM_512KIB[port_bits]
    i = int(np.clip(np.searchsorted(_WIDTHS, port_bits) - 1, 0, _WIDTHS.size - 2))
    t = (port_bits - _WIDTHS[i]) / (_WIDTHS[i + 1] - _WIDTHS[i])
    read = _READ[i] + t * (_READ[i + 1] - _READ[i])
    write = _WRITE[i] + t * (_WRITE[i + 1] - _WRITE[i])
    return max(float(read), 0.0), max(float(write), 0.0)
