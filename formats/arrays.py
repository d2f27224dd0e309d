"""Input checking for weight matrices: numpy or torch in, float32/float64 numpy out."""
from __future__ import annotations

import numpy as np


def is_torch_tensor(x) -> bool:
    """True for a ``torch.Tensor``, without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def as_weight_matrix(w, *, name: str = "W") -> tuple[np.ndarray, str | None]:
    """``w`` as a finite float32/float64 numpy matrix, and the torch device it came from.

    float16 and bfloat16 are widened to float32 (exact); float64 stays float64. Integer and
    bool inputs, wrong ranks, empty matrices and NaN/inf raise with what was expected.
    """
    device = None
    if is_torch_tensor(w):
        device = str(w.device)
        w = w.detach().to("cpu")
        if not w.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {w.dtype}")
        w = (w.float() if w.dtype.itemsize < 4 else w).numpy()
    elif not isinstance(w, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(w).__name__}")
    if w.dtype.kind != "f" and w.dtype.name != "bfloat16":
        raise TypeError(f"{name} must be a floating-point array (float16/32/64), got dtype {w.dtype}")
    if w.dtype.itemsize < 4 or w.dtype.name == "bfloat16":
        w = w.astype(np.float32)
    if w.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, K] (out_features, in_features), got shape {tuple(w.shape)}")
    if w.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(w.shape)}); expected at least one element")
    bad = ~np.isfinite(w)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} contains {w[where]} at index {where}; expected finite values")
    return w, device
