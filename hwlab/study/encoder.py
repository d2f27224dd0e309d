"""A BERT sentence encoder in numpy (float32): all-MiniLM-L6-v2's forward pass, written out.

What sentence-transformers runs for this model (its ``modules.json``: Transformer, Pooling,
Normalize), in Hugging Face ``BertModel``'s arithmetic (``modeling_bert.py``, eager attention):

* embeddings: word + absolute position + token type 0, then LayerNorm;
* each layer: self-attention with ``heads`` heads of ``hidden / heads`` channels, scores scaled by
  ``1 / sqrt(head_dim)``, padded keys masked with the float32 minimum before the softmax; output
  projection, residual, LayerNorm; FFN ``intermediate`` wide with exact (erf) GELU; residual,
  LayerNorm (``layer_norm_eps``);
* mean pooling over the real tokens (``1_Pooling/config.json``: ``pooling_mode_mean_tokens``),
  then L2 normalisation.

Every linear layer is ``y = x W^T + b`` with ``W [out, in]``: :meth:`Encoder.embed` takes
replacement weights by name (the dequantized ones of a quantized model) and can record the input
of every linear layer (the real activations the layer-output error is measured on).
``tests/test_study.py`` holds the float32 embeddings to sentence-transformers' (cosine >= 0.99999).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from scipy.special import erf

BATCH = 32  # sequences per attention batch (sorted by length first, so little padding is computed)
# The linear layers of one BERT block, in order: (name suffix, input it reads)
BLOCK_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` the forward pass uses."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    eps: float
    max_positions: int

    @classmethod
    def from_json(cls, path) -> "BertConfig":
        """Read ``config.json``; a model this forward pass does not compute is refused with the reason."""
        path = os.fspath(path)
        with open(path) as fh:
            cfg = json.load(fh)
        expected = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}
        for key, value in expected.items():
            if cfg.get(key, value) != value:
                raise ValueError(f"{path}: {key} is {cfg.get(key)!r}; this encoder computes {key} = {value!r}")
        config = cls(cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
                     cfg["intermediate_size"], float(cfg["layer_norm_eps"]), cfg["max_position_embeddings"])
        if config.hidden % config.heads:
            raise ValueError(f"{path}: hidden_size {config.hidden} is not a multiple of {config.heads} heads")
        return config

    def linear_names(self) -> list[str]:
        """Weight names of every linear layer of the encoder, in execution order."""
        return [f"encoder.layer.{i}.{n}.weight" for i in range(self.layers) for n in BLOCK_LINEARS]


class Encoder:
    """The sentence encoder of ``config`` with the float32 ``tensors`` of a BERT checkpoint."""

    def __init__(self, config: BertConfig, tensors: dict):
        self.config = config
        self.tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
        needed = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                  "embeddings.token_type_embeddings.weight"] + config.linear_names()
        missing = [n for n in needed if n not in self.tensors]
        if missing:
            raise ValueError(f"the checkpoint lacks {missing[0]} (and {len(missing) - 1} more tensors)")

    def embed(self, ids: list[list[int]], weights: dict | None = None, capture: dict | None = None,
              linears: dict | None = None) -> np.ndarray:
        """Unit-norm sentence embeddings ``[len(ids), hidden]`` of token id sequences.

        ``weights``: linear weights by name that replace the checkpoint's (float32 ``[out, in]``).
        ``capture``: a dict that receives, per linear weight name, the float32 inputs ``[tokens,
        in]`` of that layer: every token of every sequence, in order. ``linears``: functions by linear
        weight name that compute the whole layer, ``x [tokens, in] -> x W^T + b [tokens, out]``
        (float32 in and out), in place of the numpy product (``hwlab study --device cuda`` runs
        each layer as a :class:`~hwlab.kernels.QuantLinear` on the GPU this way).

        The tokens of all sequences are stacked into one ``[tokens, hidden]`` array (every linear
        layer is one matrix product, no padding); attention gathers them into padded batches of
        :data:`BATCH` sequences of similar length.
        """
        cfg = self.config
        if not ids or any(not 1 <= len(seq) <= cfg.max_positions for seq in ids):
            raise ValueError(f"every sequence needs 1..{cfg.max_positions} tokens (the model's positions)")
        t = {**self.tensors, **(weights or {})}
        lengths = np.array([len(s) for s in ids])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        positions = np.concatenate([np.arange(n) for n in lengths])
        x = (t["embeddings.word_embeddings.weight"][np.concatenate(ids)]
             + t["embeddings.position_embeddings.weight"][positions] + t["embeddings.token_type_embeddings.weight"][0])
        x = self._norm(x, t, "embeddings.LayerNorm")
        batches = _attention_batches(lengths, starts)

        def linear(name, h):
            if capture is not None:
                capture[f"{name}.weight"] = h
            if linears is not None and f"{name}.weight" in linears:
                return linears[f"{name}.weight"](h)
            return h @ t[f"{name}.weight"].T + t[f"{name}.bias"]

        for layer in range(cfg.layers):
            p = f"encoder.layer.{layer}."
            q, k, v = (linear(p + f"attention.self.{n}", x) for n in ("query", "key", "value"))
            context = np.empty_like(x)
            for rows, mask in batches:
                context[rows[mask]] = self._attention(q[rows], k[rows], v[rows], mask)[mask]
            x = self._norm(linear(p + "attention.output.dense", context) + x, t, p + "attention.output.LayerNorm")
            h = linear(p + "intermediate.dense", x)
            h = 0.5 * h * (1.0 + erf(h / np.float32(np.sqrt(2.0))))
            x = self._norm(linear(p + "output.dense", h) + x, t, p + "output.LayerNorm")
        pooled = np.add.reduceat(x, starts, axis=0) / lengths[:, None].astype(np.float32)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)  # torch normalize's eps

    def _attention(self, q, k, v, mask):
        """Multi-head attention of padded ``[B, L, hidden]`` queries, keys, values; ``mask [B, L]``: real tokens."""
        b, length, hidden = q.shape
        head_dim = hidden // self.config.heads

        def heads(h):  # [B, L, hidden] -> [B, heads, L, head_dim]
            return h.reshape(b, length, self.config.heads, head_dim).transpose(0, 2, 1, 3)

        key_bias = np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
        scores = heads(q) @ heads(k).transpose(0, 1, 3, 2) / np.float32(np.sqrt(head_dim)) + key_bias
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        context = (scores / scores.sum(axis=-1, keepdims=True)) @ heads(v)
        return context.transpose(0, 2, 1, 3).reshape(b, length, hidden)

    def _norm(self, x, t, name):
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + np.float32(self.config.eps)) * t[f"{name}.weight"] + t[f"{name}.bias"]


def _attention_batches(lengths: np.ndarray, starts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(rows [B, L], mask [B, L])`` per batch of :data:`BATCH` sequences sorted by length: the
    stacked-token row of each position (padding points at the sequence's first row, masked)."""
    order = np.argsort(lengths, kind="stable")
    batches = []
    for i in range(0, len(order), BATCH):
        seqs = order[i:i + BATCH]
        width = int(lengths[seqs].max())
        offsets = np.arange(width)
        mask = offsets[None, :] < lengths[seqs, None]
        batches.append((starts[seqs, None] + np.where(mask, offsets[None, :], 0), mask))
    return batches
