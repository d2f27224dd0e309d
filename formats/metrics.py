"""Quantization error metrics."""
from __future__ import annotations

import numpy as np


def error_metrics(w: np.ndarray, w_hat: np.ndarray, x: np.ndarray | None = None) -> dict:
    """Error of ``w_hat`` against ``w`` (both ``[N, K]``), in float64.

    Returns ``mse``, ``sqnr_db`` (10 log10 of signal over error energy; inf when exact),
    ``max_abs_error``, ``rel_error`` (Frobenius ``||W - Wq|| / ||W||``) and, when activations
    ``x [..., K]`` are given, ``output_rel_error`` = ``||x W^T - x Wq^T|| / ||x W^T||``.
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
        "rel_error": float(np.sqrt(noise / signal)) if signal else float(noise > 0) * float("inf"),
    }
    if x is not None:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 1 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"activations must have shape [..., K={w.shape[1]}], got {x.shape}")
        ref = x @ w.T
        ref_norm = np.linalg.norm(ref)
        out["output_rel_error"] = float(np.linalg.norm(x @ err.T) / ref_norm) if ref_norm else float("nan")
    return out
