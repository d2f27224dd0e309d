"""The float64 reference every kernel is checked against: ``x @ W^T`` with W decoded by the one door."""
from __future__ import annotations

import numpy as np


def reference_weights(qt) -> np.ndarray:
    """float64 ``[N, K]`` weights of a quantized tensor (numpy or device): the unpacked view's
    ``(values[member, code] - zero) * scale`` in float64, before any rounding."""
    source = getattr(qt, "source", qt)
    u = source.unpacked()
    return (u.element_values() * u.expand(u.scales))[:, :source.shape[1]]


def reference_matmul(x, qt) -> np.ndarray:
    """float64 ``x @ W^T`` for ``x`` ``[..., K]`` (numpy or torch, any float dtype, read exactly)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x @ reference_weights(qt).T
