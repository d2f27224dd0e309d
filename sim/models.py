"""Transformer shapes: the six LLMs of the BitMoD evaluation, any Hugging Face ``config.json``.

A :class:`ModelSpec` is what the layer shapes follow from: hidden size, layers, attention heads
and key-value heads (GQA), FFN width, vocabulary and the family that fixes which linear layers a
block has (Llama, Yi and Mistral: q, k, v, o, gate, up, down; OPT and Phi: q, k, v, out, fc1, fc2),
plus ``lm_head``. Architectures are the public configs (REFERENCES.md lists them; the BitMoD
authors' shape files were made from the same Hugging Face configs).
"""
from __future__ import annotations

import dataclasses
import json
import os

FAMILIES = ("llama", "opt", "phi")
# Bounds far past any real transformer (the largest have ~100k hidden/FFN widths, ~200 layers and
# vocabularies of a few 100k), so an absurd config.json is refused before its layers are listed.
MAX_DIMENSION = 2**20  # hidden, heads, kv_heads, ffn
MAX_LAYERS = 4096
MAX_VOCAB = 2**24


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    source: str = ""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"model {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        for field in ("hidden", "layers", "heads", "kv_heads", "ffn", "vocab"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"model {self.name!r}: {field} must be a positive integer, got {v!r:.60}")
            limit = MAX_LAYERS if field == "layers" else MAX_VOCAB if field == "vocab" else MAX_DIMENSION
            if v > limit:
                raise ValueError(f"model {self.name!r}: {field} = {v} is past any transformer this simulator "
                                 f"models (at most {limit})")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"model {self.name!r}: hidden ({self.hidden}) must divide into heads ({self.heads}) "
                             f"and heads into kv_heads ({self.kv_heads})")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_shapes(self) -> list[tuple[str, int, int]]:
        """``(name, out_features, in_features)`` of every linear layer, in order, ``lm_head`` last."""
        h, f, kv = self.hidden, self.ffn, self.head_dim * self.kv_heads
        if self.family == "llama":
            block = [("q_proj", h, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, h),
                     ("gate_proj", f, h), ("up_proj", f, h), ("down_proj", h, f)]
        else:
            block = [("q_proj", h, h), ("k_proj", kv, h), ("v_proj", kv, h), ("out_proj", h, h),
                     ("fc1", f, h), ("fc2", h, f)]
        return [(f"layers.{i}.{n}", o, c) for i in range(self.layers) for n, o, c in block] + \
            [("lm_head", self.vocab, h)]


MODELS = {m.name: m for m in (
    ModelSpec("opt-1.3b", "opt", 2048, 24, 32, 32, 8192, 50272, "facebook/opt-1.3b config.json"),
    ModelSpec("phi-2", "phi", 2560, 32, 32, 32, 10240, 51200, "microsoft/phi-2 config.json"),
    ModelSpec("yi-6b", "llama", 4096, 32, 32, 4, 11008, 64000, "01-ai/Yi-6B config.json"),
    ModelSpec("llama2-7b", "llama", 4096, 32, 32, 32, 11008, 32000, "meta-llama/Llama-2-7b-hf config.json"),
    ModelSpec("llama2-13b", "llama", 5120, 40, 40, 40, 13824, 32000, "meta-llama/Llama-2-13b-hf config.json"),
    ModelSpec("llama3-8b", "llama", 4096, 32, 32, 8, 14336, 128256, "meta-llama/Meta-Llama-3-8B config.json"),
)}
ALIASES = {"llama-2-7b": "llama2-7b", "llama-2-13b": "llama2-13b", "llama-3-8b": "llama3-8b", "opt1.3b": "opt-1.3b",
           "phi2": "phi-2", "yi6b": "yi-6b"}
FAMILY_OF_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "yi": "llama", "gemma": "llama",
                        "opt": "opt", "phi": "phi", "gpt_neox": "phi", "gpt2": "phi", "bert": "phi"}


def get_model(name) -> ModelSpec:
    """A built-in model by name (``llama2-7b``, ``opt-1.3b``, ...), a spec, or a ``config.json`` path."""
    if isinstance(name, ModelSpec):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a model is named by a string or given as a ModelSpec, got {type(name).__name__}")
    if name.endswith(".json") or os.path.isfile(name):
        return from_hf_config(name)
    key = ALIASES.get(name.lower(), name.lower())
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; built-in: {sorted(MODELS)} (or a Hugging Face config.json path)")
    return MODELS[key]


def from_hf_config(path) -> ModelSpec:
    """The shapes of a Hugging Face ``config.json`` (Llama, Mistral, Qwen2, OPT, Phi, GPT-2/NeoX, BERT)."""
    path = os.fspath(path)
    try:
        with open(path) as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON config ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: not a readable JSON config (nested too deeply)") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a config.json holds a JSON object")
    model_type = str(cfg.get("model_type", "")).lower()
    family = FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None:
        raise ValueError(f"{path}: model_type {model_type!r} is not one of {sorted(FAMILY_OF_MODEL_TYPE)}")

    def first(*keys):
        for key in keys:
            if cfg.get(key) is not None:
                return cfg[key]
        raise ValueError(f"{path}: needs one of {keys}")

    hidden, heads = first("hidden_size", "n_embd", "d_model"), first("num_attention_heads", "n_head")
    ffn = cfg.get("intermediate_size") or cfg.get("ffn_dim") or cfg.get("n_inner") or 4 * hidden  # GPT-2: 4 x hidden
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) or "model"
    return ModelSpec(name, family, hidden, first("num_hidden_layers", "n_layer"), heads,
                     cfg.get("num_key_value_heads") or heads, ffn, first("vocab_size"), source=path)
