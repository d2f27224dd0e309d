"""Input checking for weight matrices: numpy or torch in, float32/float64 numpy out."""
from __future__ import annotations

import numpy as np


def is_torch_tensor(x) -> bool:
    """True for a ``torch.Tensor``, without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


FLOAT32_MAX = float(np.finfo(np.float32).max)  # dequantized weights are float32


def as_weight_matrix(w, *, name: str = "W") -> tuple[np.ndarray, str | None]:
    """``w`` as a finite float32/float64 numpy matrix, and the torch device it came from.

    Converted exactly: float16, bfloat16 and the other ml_dtypes floats are widened to float32, a non-native byte order is
    swapped, ``np.matrix`` and memory maps become plain arrays, long double becomes float64 when
    every value survives the conversion. Refused with what was expected: masked arrays (a mask
    cannot be honoured), integer, bool and complex inputs, wrong ranks, empty matrices, NaN or inf,
    float64 values beyond the float32 range (the weights come back as float32), and torch tensors
    that hold no plain data (meta device, sparse layouts, nested tensors); a torch negative view is
    resolved.
    """
    device = None
    if is_torch_tensor(w):
        w, device = _torch_to_numpy(w, name)
    elif not isinstance(w, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(w).__name__}")
    refuse_masked(w, name)
    w = np.asarray(w)  # np.matrix, memmap: plain ndarray views
    if is_ml_dtypes_float(w.dtype):  # bfloat16, float8_*, float6_*, float4_*: all within float32, exactly
        w = w.astype(np.float32)
    if w.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array (float16/32/64, or an ml_dtypes float), got dtype "
                        f"{w.dtype}")
    if not w.dtype.isnative:
        w = w.astype(w.dtype.newbyteorder("="))  # exact
    if w.dtype.itemsize > 8:  # long double
        w = exact_float64(w, name)
    if w.dtype.itemsize < 4:
        w = w.astype(np.float32)
    if w.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, K] (out_features, in_features), got shape {tuple(w.shape)}")
    if w.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(w.shape)}); expected at least one element")
    bad = ~np.isfinite(w)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} contains {w[where]} at index {where}; expected finite values")
    if w.dtype == np.float64:
        big = np.abs(w) > FLOAT32_MAX
        if big.any():
            where = tuple(int(i) for i in np.argwhere(big)[0])
            raise ValueError(f"{name} holds {float(w[where])!r} at index {where}, beyond the float32 range "
                             f"(+-{FLOAT32_MAX:.8g}) that dequantized weights come back in; rescale W")
    return w, device


def is_ml_dtypes_float(dtype: np.dtype) -> bool:
    """True for a floating-point type of ml_dtypes (numpy gives some kind 'f', others kind 'V')."""
    if dtype.type.__module__.split(".")[0] != "ml_dtypes":
        return False
    import ml_dtypes  # only for arrays that already hold one of its types

    try:
        ml_dtypes.finfo(dtype)
    except ValueError:  # int4, uint4, ...
        return False
    return True


def refuse_masked(x, what: str) -> None:
    """``TypeError`` for a masked array: a mask cannot be honoured (numpy drops it on conversion)."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{what} is a masked array; a quantizer cannot honour its mask (pass x.filled(value) or "
                        "the unmasked data)")


def exact_float64(a: np.ndarray, what: str) -> np.ndarray:
    """``a`` (a real numeric array) as float64, refused (``ValueError`` naming the first entry) where
    float64 cannot hold a value exactly: long double, or integers beyond 2**53."""
    narrowed = a.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # a value float64 rounded past the integer range
        back = narrowed.astype(a.dtype)
    same = (back == a) | (np.isnan(narrowed) & np.isnan(back) if a.dtype.kind == "f" else False)
    if not np.all(same):
        at = tuple(int(i) for i in np.argwhere(~same)[0])
        raise ValueError(f"{what} is {a.dtype} and holds {a[at]!r} at index {at}, which float64 cannot hold exactly; "
                         "convert it to float64 (or float32) yourself if that rounding is intended")
    return narrowed


def _torch_to_numpy(t, name: str) -> tuple[np.ndarray, str]:
    """A torch tensor's data as a numpy array (on the CPU), and its device."""
    if getattr(t, "is_nested", False):  # ragged rows: no dense data, and no shape to ask about
        raise TypeError(f"{name} is a nested tensor (rows of different lengths); pass a dense 2-D tensor, e.g. "
                        f"{name}.to_padded_tensor(0.0) if zero padding is intended")
    device = str(t.device)
    if t.device.type == "meta":
        raise TypeError(f"{name} is on the meta device: it has a shape but no data to quantize")
    if str(t.layout) != "torch.strided":  # sparse COO/CSR/..., whose .numpy() has no dense data
        raise TypeError(f"{name} is a sparse tensor ({t.layout}); pass {name}.to_dense()")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    t = t.detach().resolve_neg().resolve_conj().to("cpu")
    return (t.float() if t.dtype.itemsize < 4 else t).numpy(), device
