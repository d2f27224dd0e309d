"""hwlab.sim: cycle-approximate hardware simulation of low-bit LLM datatypes.

* :func:`simulate`: the analytical engine (cycles, traffic, energy of a whole model's layers on a
  PE-array accelerator, the BitMoD authors' model), for presets ``bitmod``, ``ant``, ``olive``,
  ``fp16`` or any :class:`HWConfig` (TOML: :func:`load_config`).
* :class:`Workload`: the layers of a model (six built-in LLMs, any Hugging Face config.json, any
  list of shapes) in decode or prefill.
* :func:`run_pe`: the functional engine (a quantized layer through the BitMoD PE's arithmetic, bit
  for bit, numba; :mod:`hwlab.sim.pe` states the arithmetic) with its cycles; :func:`prepare_pe` does
  the weights' part of it once per tensor (:class:`PEWeights`), for repeated calls.
* :class:`Report`: per-layer and total cycles, stalls, bytes and energy; CSV, JSON, plots.
* :mod:`hwlab.sim.gpu`: the GPU model (presets ``h200``, ``h100``) of hwlab's matmul kernels:
  predicted time from bytes, copy bandwidth, launches and decode instructions.
"""
from .analytical import simulate
from .config import PRESETS, ConfigError, HWConfig, get_preset, load_config
from .models import MODELS, ModelSpec, from_hf_config, get_model
from .pe import PEError, PEResult, PEWeights, prepare_pe, run_pe
from .report import Report
from .workload import Op, Workload

__all__ = ["MODELS", "PRESETS", "ConfigError", "HWConfig", "ModelSpec", "Op", "PEError", "PEResult", "PEWeights",
           "Report", "Workload", "from_hf_config", "get_model", "get_preset", "load_config", "prepare_pe", "run_pe",
           "simulate"]
