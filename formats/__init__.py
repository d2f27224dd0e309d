"""hwlab.formats: bit-level datatypes, the group quantizer, packing, storage and the hand-off.

Imports nothing of the rest of hwlab and needs only numpy (numba speeds up the quantizer,
safetensors is needed to save and load). Consumers read a quantized tensor through
``qt.unpacked()`` (:class:`Unpacked`), ``qt.layout`` (:class:`ArrayLayout`) and
``fmt.decomposition()`` (:class:`Decomposition`).

>>> from hwlab.formats import get_format
>>> f = get_format("fp4_e2m1")
>>> f.values[:8]
array([0. , 0.5, 1. , 1.5, 2. , 3. , 4. , 6. ])
"""
from .base import Format, FormatInfo, Option
from .builtin import declare_builtins
from .decomposition import Decomposition
from .define import define_lut, define_minifloat, define_mixture, format_from_definition
from .element import ROUNDING_RULES, ElementFormat
from .layout import ArrayLayout
from .metrics import error_metrics
from .mixture import MixtureFormat
from .packing import pack_codes, pack_trits, unpack_codes, unpack_trits
from .qtensor import QuantizedTensor, load, quantize
from .registry import get_format, list_formats, register_format
from .rounding import RoundingTable
from .scales import SCALE_DTYPES
from .storage import FormatRebuiltWarning, StorageError
from .unpacked import Unpacked

declare_builtins()

__all__ = [
    "ROUNDING_RULES", "SCALE_DTYPES", "ArrayLayout", "Decomposition", "ElementFormat", "Format", "FormatInfo",
    "FormatRebuiltWarning", "MixtureFormat", "Option", "QuantizedTensor", "RoundingTable", "StorageError", "Unpacked",
    "define_lut", "define_minifloat", "define_mixture", "error_metrics", "format_from_definition", "get_format",
    "list_formats", "load", "pack_codes", "pack_trits", "quantize", "register_format", "unpack_codes",
    "unpack_trits",
]
