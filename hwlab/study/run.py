"""The study: every format at every group size on one model's linear layers, measured and simulated.

:func:`run_study` with no weights studies all-MiniLM-L6-v2 (:mod:`hwlab.study.minilm`): its 36
encoder linear layers (the pooler is not on the sentence-embedding path and is left out), the
layer-output error on the inputs those layers see when the float32 model embeds hwlab's
sentences, and the cosine similarity of the quantized encoder's sentence embeddings to the
float32 ones. With ``weights`` (a ``.safetensors``, ``.npz`` or ``.npy`` file) it studies every 2-D
floating-point tensor of the file as a linear layer ``[out, in]``: stored bits, weight error and
the simulators (there are no activations or sentences for an arbitrary file).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import multiprocessing
import os
import pathlib
import time
import zipfile

import numpy as np

from hwlab.formats import get_format, list_formats

from . import gpu, hardware, minilm
from .measure import DEFAULT_GROUP_SIZES, LayerInputs, measure, plan, sample_rows


@dataclasses.dataclass
class StudyResult:
    """Everything a study measured (JSON-able lists of dicts; ``report.md`` is written from it)."""

    source: str
    layers: dict  # name -> [out, in]
    variants: list  # one summary dict per format and group size
    layer_rows: list  # one dict per variant and layer
    not_applicable: list  # {format, group_size, reason}
    hardware: list  # {format, group_size, machine, kernel, cycles, energy...}
    gpu: list  # {format, group_size, shape, kernel, measured_us, fp16_us, predicted_us...} (device cuda)
    hardware_skipped: list  # {format, machine, reason} (one per format)
    baselines: list  # the fp16 runs
    meta: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_weights(path) -> dict:
    """The 2-D floating-point tensors of a ``.safetensors``, ``.npz`` or ``.npy`` file, by name."""
    from hwlab.cli import read_weights  # the command line's reader of .npy and .safetensors files

    path = pathlib.Path(path)
    if path.suffix not in (".safetensors", ".npz", ".npy"):  # the command line's reader names only two
        raise ValueError(f"expected a .safetensors, .npz or .npy file, got {os.fspath(path)!r}")
    weights = read_weights(path) if path.suffix != ".npz" else _read_npz(path)
    for name, w in weights.items():
        if w.ndim != 2 or w.dtype.kind != "f" or not w.size:
            raise ValueError(f"{path}: {name} has shape {list(w.shape)} and dtype {w.dtype}; a linear layer's "
                             "weight is a non-empty 2-D floating-point [out, in] matrix")
        if not np.isfinite(w).all():
            raise ValueError(f"{path}: {name} holds NaN or infinite values")
    return weights


def _read_npz(path: pathlib.Path) -> dict:
    """The non-empty 2-D floating-point arrays of an ``.npz`` archive."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}" if not path.exists() else f"{path} is not a regular file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a readable .npz archive: {exc}") from None
    weights = {n: a for n, a in arrays.items() if a.ndim == 2 and a.dtype.kind == "f" and min(a.shape) > 0}
    if not weights:
        raise ValueError(f"{path} has no non-empty 2-D floating-point array (it holds {sorted(arrays)})")
    return weights


def run_study(weights=None, formats=None, group_sizes=DEFAULT_GROUP_SIZES, progress: bool = True,
              workers: int = 1, device: str = "cpu") -> StudyResult:
    """Run the study (module docstring); ``formats`` default: every registered format.

    ``device="cuda"`` adds the GPU stage (:mod:`hwlab.study.gpu`): the quantized encoder through
    ``QuantLinear`` (MiniLM) and measured kernel times beside the GPU model's predictions.

    ``workers``: 1 (default) measures the variants in this process, with the threads the
    environment gives BLAS and numba; more start that many processes (``spawn``: a script that
    calls this needs the ``if __name__ == "__main__":`` guard), each with one thread of each. On
    two cores the default study takes well under half the CPU time that way (``hwlab study`` uses
    one process per core): the products here are small, and two threads of each library spend
    much of their time synchronising. ``progress`` shows a tqdm bar on stderr (where stderr is a
    terminal).
    """
    from tqdm import tqdm

    started = time.perf_counter()
    formats = list_formats() if formats is None else list(formats)
    if not formats:
        raise ValueError("no format to study")
    for name in formats:
        get_format(name)  # an unknown name raises before any work
    variants, not_applicable = plan(formats, list(group_sizes))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive number of processes, got {workers!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        gpu.check_device()
    context = Context.build(weights, device)
    result = StudyResult(context.source, context.shapes, [], [], not_applicable, [], [], [],
                         hardware.baselines(context.work), {"group_sizes": list(group_sizes), "formats": formats,
                                                            "sim_tokens": hardware.SIM_TOKENS, "workers": workers,
                                                            "device": device})
    bar = functools.partial(tqdm, total=len(variants), desc="hwlab study", unit="variant",
                            disable=None if progress else True)
    if workers == 1 or len(variants) == 1:
        outcomes = bar(context.evaluate(v) for v in variants)
        _collect(result, variants, outcomes)
    else:
        with _single_threaded_children():
            pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(variants)), initializer=_start_worker,
                                                          initargs=(weights, device),
                                                          mp_context=multiprocessing.get_context("spawn"))
            futures = [pool.submit(_evaluate_in_worker, v) for v in variants]  # spawns every worker
        try:
            _collect(result, variants, bar(f.result() for f in futures))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if device == "cuda":
        _time_on_gpu(result, context, variants, progress)
    result.meta["seconds"] = time.perf_counter() - started
    return result


def _collect(result: StudyResult, variants: list, outcomes) -> None:
    """Add each variant's outcome (:meth:`Context.evaluate`) to ``result``, in ``variants`` order."""
    seen_formats = set()
    for variant, outcome in zip(variants, outcomes):
        key = {"format": variant.format, "group_size": variant.group_size}
        if "not_applicable" in outcome:
            result.not_applicable.append({**key, "reason": outcome["not_applicable"]})
            continue
        result.variants.append(outcome["summary"])
        result.layer_rows += [{**key, **row} for row in outcome["layers"]]
        result.hardware += [{**key, **row} for row in outcome["hardware"]]
        if variant.format not in seen_formats:
            result.hardware_skipped += [{"format": variant.format, **s} for s in outcome["skipped"]]
            seen_formats.add(variant.format)


@dataclasses.dataclass
class Context:
    """What every variant is measured against: the weights (name -> ``[N, K]``), the layers' inputs
    and the embedding check (MiniLM only), the simulated workload and a description."""

    layers: dict
    activations: dict | None
    embed: object
    source: str
    work: object
    biases: dict | None = None  # name -> float32 [out] (MiniLM): the QuantLinear layers' biases
    device: str = "cpu"

    @property
    def shapes(self) -> dict:
        return {name: list(w.shape) for name, w in self.layers.items()}

    @classmethod
    def build(cls, weights=None, device: str = "cpu") -> "Context":
        """MiniLM's (``weights`` None) or a file's; ``device`` where :meth:`evaluate` runs the GPU stage's embeddings."""
        if weights is not None:
            layers = load_weights(weights)
            return cls(layers, None, None, os.fspath(weights), hardware.workload(_shapes(layers)), device=device)
        layers, activations, embed, source, heads, biases = _minilm()
        return cls(layers, activations, embed, source, hardware.workload(_shapes(layers), heads), biases, device)

    def evaluate(self, variant) -> dict:
        """``{summary, layers, hardware, skipped}`` of one variant, or ``{not_applicable: reason}``."""
        try:
            m = measure(variant, self.layers, self.activations, self.embed)
        except ValueError as exc:
            return {"not_applicable": str(exc)}
        rows, skipped = hardware.simulate_variant(self.work, m.first, m.summary["bits_per_weight"])
        if self.device == "cuda" and self.embed is not None:
            m.summary.update(gpu.embedding_fields(variant, self.layers, self.biases, self.device, self.embed))
        return {"summary": m.summary, "layers": m.layers, "hardware": rows, "skipped": skipped}


def _shapes(layers: dict) -> dict:
    return {name: tuple(w.shape) for name, w in layers.items()}


# environment variables that fix the threads of OpenBLAS, OpenMP builds, MKL and numba's parallel kernels
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_children():
    """Processes started inside this block run one thread of each library (then ``os.environ`` is restored)."""
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update({k: "1" for k in THREAD_VARIABLES})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_WORKER: dict = {}  # the context of a worker process, made once by _start_worker


def _start_worker(weights, device) -> None:
    _WORKER["context"] = Context.build(weights, device)


def _evaluate_in_worker(variant) -> dict:
    return _WORKER["context"].evaluate(variant)


def _minilm():
    """MiniLM's linear weights, the inputs each sees on hwlab's sentences, and the embedding check."""
    encoder = minilm.load_encoder()
    texts = minilm.sentences()
    ids = minilm.tokenizer()(texts)
    captured = {}
    reference = encoder.embed(ids, capture=captured)
    names = encoder.config.linear_names()
    layers = {n: encoder.tensors[n] for n in names}
    activations = {n: LayerInputs(sample_rows(captured[n]), layers[n]) for n in names}

    def embed(dequantized=None, linears=None):
        return np.sum(encoder.embed(ids, weights=dequantized, linears=linears) * reference, axis=1)  # the cosine

    source = (f"all-MiniLM-L6-v2 ({minilm.model_dir()}), {len(texts)} sentences, "
              f"{sum(map(len, ids))} tokens")
    biases = {n: encoder.tensors[n.removesuffix(".weight") + ".bias"] for n in names}
    return layers, activations, embed, source, encoder.config.heads, biases


def _time_on_gpu(result: StudyResult, context: Context, variants: list, progress: bool) -> None:
    """The GPU stage's timings (:func:`hwlab.study.gpu.timing_rows`), in this process, one variant at a time."""
    from tqdm import tqdm

    device = gpu.check_device()
    fp16_us = gpu.fp16_times(context.layers, device)
    model = gpu.gpu_model(device)
    measured = {(v["format"], v["group_size"]): v for v in result.variants}
    for variant in tqdm([v for v in variants if (v.format, v.group_size) in measured], desc="hwlab study (GPU times)",
                        unit="variant", disable=None if progress else True):
        rows = gpu.timing_rows(variant, context.layers, device, fp16_us, model)
        result.gpu += rows
        measured[(variant.format, variant.group_size)].update(gpu.totals(rows))
    result.meta["gpu"] = {"device": gpu.device_name(device), "gpu_model": model, "rows": gpu.TIME_ROWS}
