"""Real weights shipped with hwlab: two linear layers of all-MiniLM-L6-v2 (Apache-2.0), float16.

Source, license and how the file was made: ``hwlab/data/README.md``.

>>> from hwlab.sample import sample_weights
>>> {name: w.shape for name, w in sample_weights().items()}  # doctest: +NORMALIZE_WHITESPACE
{'encoder.layer.0.attention.self.query.weight': (384, 384),
 'encoder.layer.0.intermediate.dense.weight': (1536, 384)}
"""
from __future__ import annotations

import importlib.resources
import pathlib

import numpy as np

SAMPLE_FILE = "minilm_l6_layer0.safetensors"


def sample_path() -> pathlib.Path:
    """Path of the shipped sample safetensors file (inside the installed package)."""
    path = importlib.resources.files("hwlab") / "data" / SAMPLE_FILE
    return pathlib.Path(str(path))


def sample_metadata() -> dict[str, str]:
    """The sample file's safetensors metadata: source, source_sha256, license, tensors, ..."""
    from safetensors import safe_open

    with safe_open(sample_path(), framework="numpy") as fh:
        return dict(fh.metadata())


def sample_weights(name: str | None = None) -> dict[str, np.ndarray]:
    """The sample matrices as float16 ``[out_features, in_features]`` arrays, by tensor name.

    ``name`` selects one tensor (a one-entry dict); ``None`` returns all of them. An unknown
    name raises ``KeyError`` listing the names the file holds.
    """
    from safetensors import safe_open

    with safe_open(sample_path(), framework="numpy") as fh:
        names = list(fh.keys())
        if name is None:
            return {n: fh.get_tensor(n) for n in names}
        if name not in names:
            raise KeyError(f"no tensor {name!r} in the sample weights; expected one of {names}")
        return {name: fh.get_tensor(name)}
