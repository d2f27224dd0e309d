"""hwlab: a lab for low-bit LLM datatype co-design.

>>> import hwlab, numpy as np
>>> W = np.random.default_rng(0).standard_normal((256, 4096)).astype(np.float32)
>>> qt = hwlab.quantize(W, "bitmod_fp4", group_size=128)
>>> round(qt.bits_per_weight, 4)
4.1406
"""
from hwlab.formats import (QuantizedTensor, StorageError, define_lut, define_minifloat, define_mixture,
                           error_metrics, get_format, list_formats, load, quantize, register_format)

__version__ = "0.1.0"
__all__ = ["QuantizedTensor", "StorageError", "define_lut", "define_minifloat", "define_mixture", "error_metrics",
           "get_format", "list_formats", "load", "quantize", "register_format", "__version__"]
