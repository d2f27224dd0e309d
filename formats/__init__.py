"""hwlab.formats: bit-level datatypes, the group quantizer, packing and storage.

Imports nothing of the rest of hwlab and needs only numpy (numba speeds up the quantizer,
safetensors is needed to save and load).

>>> from hwlab.formats import get_format
>>> f = get_format("fp4_e2m1")
>>> f.values[:8]
array([0. , 0.5, 1. , 1.5, 2. , 3. , 4. , 6. ])
"""
from .builtin import declare_builtins
from .define import define_lut, define_minifloat, define_mixture
from .element import ROUNDING_RULES, ElementFormat, Format, FormatInfo
from .metrics import error_metrics
from .mixture import MixtureFormat
from .packing import pack_codes, pack_trits, unpack_codes, unpack_trits
from .qtensor import QuantizedTensor, load, quantize
from .registry import get_format, is_builtin, list_formats, register_format
from .scales import SCALE_DTYPES

declare_builtins()

__all__ = [
    "ROUNDING_RULES", "SCALE_DTYPES", "ElementFormat", "Format", "FormatInfo", "MixtureFormat",
    "QuantizedTensor", "define_lut", "define_minifloat", "define_mixture", "error_metrics",
    "get_format", "is_builtin", "list_formats", "load", "pack_codes", "pack_trits", "quantize",
    "register_format", "unpack_codes", "unpack_trits",
]
