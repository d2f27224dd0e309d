"""Quantization error metrics."""
from __future__ import annotations

import numpy as np


def error_metrics(w: np.ndarray, w_hat: np.ndarray, x: np.ndarray | None = None) -> dict:
    """Error of ``w_hat`` against ``w`` (both ``[N, K]``), in float64.

    Returns ``mse``, ``sqnr_db`` (10 log10 of signal over error energy; inf when exact),
    ``max_abs_error``, ``rel_error`` (Frobenius ``||W - Wq|| / ||W||``) and, when activations
    ``x [..., K]`` are given, ``output_rel_error`` = ``||x W^T - x Wq^T|| / ||x W^T||``. A
    relative error of an exact result is 0, even for an all-zero W; of a nonzero error against a
    zero reference, inf.
    """
    w = np.asarray(w, dtype=np.float64)
    w_hat = np.asarray(w_hat, dtype=np.float64)
    if w.shape != w_hat.shape:
        raise ValueError(f"shapes differ: W {w.shape} vs quantized {w_hat.shape}")
    err = w - w_hat
    signal, noise = float(np.sum(w * w)), float(np.sum(err * err))
    out = {
        "mse": noise / w.size,
        "sqnr_db": float("inf") if noise == 0 else (10 * np.log10(signal / noise) if signal else float("-inf")),
        "max_abs_error": float(np.abs(err).max()),
        "rel_error": _ratio(np.sqrt(noise), np.sqrt(signal)),
    }
    if x is not None:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 1 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"activations must have shape [..., K={w.shape[1]}], got {x.shape}")
        out["output_rel_error"] = _ratio(np.linalg.norm(x @ err.T), np.linalg.norm(x @ w.T))
    return out


def _ratio(error: float, reference: float) -> float:
    """``error / reference``; 0 when both are 0 (an exact result), inf when only the reference is."""
    if reference:
        return float(error / reference)
    return 0.0 if error == 0 else float("inf")
