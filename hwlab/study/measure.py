"""What the study measures for one format at one group size: stored bits, weight error, the error
of each layer's output on real activations, and the embeddings of the quantized encoder.

Every number is computed from the quantized tensors through the hand-off (``qt.dequantize()``,
``qt.bits_per_weight``, :func:`hwlab.formats.error_metrics`); nothing here decodes a format.

Model-level aggregates over the layers (each layer weighs by its number of weights):
``bits_per_weight`` = stored bits / weights; ``mse`` = squared error / weights; ``sqnr_db`` =
10 log10(signal energy / error energy); ``output_error`` = the mean over layers of
``||X (W - Wq)^T|| / ||X W^T||`` (:func:`~hwlab.formats.error_metrics`' ``output_rel_error``)
and ``output_error_max`` its largest. Embeddings: ``cosine_mean`` and ``cosine_min`` over the
sentences of the quantized encoder's unit embeddings against the float32 ones.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from hwlab.formats import error_metrics, get_format, quantize

DEFAULT_GROUP_SIZES = (32, 64, 128)
ACTIVATION_ROWS = 256  # token rows (evenly spaced over all sentences) each layer's output error is measured on


@dataclasses.dataclass(frozen=True)
class Variant:
    """One format at one group size; ``note`` says why the group size is not one that was asked for."""

    format: str
    group_size: int
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.format} g{self.group_size}"


def plan(formats: list[str], group_sizes: list[int]) -> tuple[list[Variant], list[dict]]:
    """The variants to run and the (format, group size) pairs that are not applicable, with the reason.

    A format whose scale is per channel or per tensor runs once (its group size is unused); one
    with a fixed block size that refuses every asked group size (NVFP4: 16) runs at its own block.
    """
    for g in group_sizes:
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise ValueError(f"group sizes must be positive integers, got {g!r}")
    for what, values in (("format", formats), ("group size", group_sizes)):
        repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
        if repeated:  # a repeat would be measured twice and counted twice in every table
            raise ValueError(f"{what} {repeated[0]} is named more than once; name each {what} once")
    variants, skipped = [], []
    for name in formats:
        fmt = get_format(name)
        granularity = fmt.option_values({}).get("granularity", "group")
        if granularity != "group":
            variants.append(Variant(name, fmt.default_group_size, f"{granularity} scale: the group size is not used"))
            continue
        accepted = []
        for g in group_sizes:
            try:
                fmt.check_group_size(g)
                accepted.append(Variant(name, g))
            except ValueError as exc:
                skipped.append({"format": name, "group_size": g, "reason": str(exc)})
        if not accepted:
            accepted.append(Variant(name, fmt.default_group_size, f"the format's own block size "
                                                                   f"({fmt.default_group_size})"))
        variants.extend(accepted)
    return variants, skipped


def sample_rows(x: np.ndarray, rows: int = ACTIVATION_ROWS) -> np.ndarray:
    """``rows`` evenly spaced rows of ``x`` (all of them when it has fewer)."""
    if len(x) <= rows:
        return x
    return x[np.linspace(0, len(x) - 1, rows).round().astype(np.int64)]


class LayerInputs:
    """The inputs ``x [rows, K]`` of one linear layer ``W [N, K]``, for the layer-output error
    ``||x (W - Wq)^T|| / ||x W^T||`` (:func:`~hwlab.formats.error_metrics`' ``output_rel_error``).

    The reference norm ``||x W^T||`` is computed once, in float64; the error product, once per
    variant, in float32 (its relative rounding, ~1e-6 of the error itself, is far below any
    difference between datatypes), which keeps the whole study's output errors to a few seconds.
    """

    def __init__(self, x: np.ndarray, w: np.ndarray):
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.reference = float(np.linalg.norm(self.x.astype(np.float64) @ np.asarray(w, np.float64).T))

    def relative_error(self, w: np.ndarray, w_hat: np.ndarray) -> float:
        error = float(np.linalg.norm(self.x @ (np.asarray(w, np.float32) - w_hat).T))
        if self.reference:
            return error / self.reference
        return 0.0 if error == 0 else math.inf


@dataclasses.dataclass
class Measured:
    """One variant's numbers: the model-level ``summary``, one dict per layer, and its first layer's
    quantized tensor (what the simulators are asked about)."""

    summary: dict
    layers: list[dict]
    first: object


def measure(variant: Variant, weights: dict, activations: dict | None = None, embed=None) -> Measured:
    """Quantize every matrix of ``weights`` (name -> ``[N, K]``) with ``variant`` and measure it.

    ``activations`` (name -> :class:`LayerInputs`): inputs of each layer for its output error. ``embed``:
    a function of the dequantized weights (name -> float32 ``[N, K]``) returning the per-sentence
    cosine similarity to the float32 model. A layer the format cannot quantize (a K the group
    size does not divide) raises ``ValueError`` naming the layer.
    """
    layers, dequantized, first = [], {}, None
    stored = signal = noise = 0.0
    for name, w in weights.items():
        try:
            qt = quantize(w, variant.format, variant.group_size)
        except ValueError as exc:
            raise ValueError(f"layer {name} {tuple(w.shape)}: {exc}") from None
        if first is None:
            first = qt
        w_hat = qt.dequantize()
        m = error_metrics(w, w_hat)
        if activations is not None:
            m["output_rel_error"] = activations[name].relative_error(w, w_hat)
        energy = float(np.sum(np.square(w, dtype=np.float64)))
        stored += qt.bits_per_weight * w.size
        signal, noise = signal + energy, noise + m["mse"] * w.size
        layers.append({"layer": name, "shape": list(w.shape), "bits_per_weight": qt.bits_per_weight, **m})
        dequantized[name] = w_hat
    count = sum(w.size for w in weights.values())
    summary = {"format": variant.format, "group_size": variant.group_size, "note": variant.note,
               "code_bits": get_format(variant.format).bits, "bits_per_weight": stored / count, "mse": noise / count,
               "sqnr_db": math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal else -math.inf}
    if activations is not None:
        errors = [layer["output_rel_error"] for layer in layers]
        summary.update(output_error=float(np.mean(errors)), output_error_max=float(np.max(errors)))
    if embed is not None:
        cosine = embed(dequantized)
        summary.update(cosine_mean=float(np.mean(cosine)), cosine_min=float(np.min(cosine)))
    return Measured(summary, layers, first)
