"""Workloads: the matrix products of a model's decode step or prefill, as the accelerator sees them.

An :class:`Op` is a batched product of a "weight" ``[weight_batch, cout, cin]`` with inputs
``[batch, tokens, cin]`` into outputs ``[batch, tokens, cout]``. A model's workload
(:meth:`Workload.for_model`) follows the BitMoD authors' simulator (``bitmod_sim/pe_array.py``):

* every linear layer, ``lm_head`` included, with the batch in the token dimension when decoding
  (``[1, batch, cin]``) and ``[batch, context, cin]`` in prefill (``lm_head`` on every token);
* per layer, attention against the KV cache: ``attn_qk`` (the K cache ``[context, head_dim]`` per
  KV head is the weight) and ``attn_v`` (``V^T``, ``[head_dim, context]``), one per KV head of
  every sequence; the query heads that share a KV head (GQA) are stacked as tokens, so each KV
  head is read once. Decode attends to ``context`` cached tokens; prefill is the full
  ``context x context`` product (no causal saving), as the authors model it.
"""
from __future__ import annotations

import dataclasses

from .models import ModelSpec, get_model

PHASES = ("decode", "prefill")
KINDS = ("linear", "attn_qk", "attn_v")
MAX_BATCH = 2**20  # sequences
MAX_CONTEXT = 2**24  # tokens (16M)
# The engines count cycles, bytes and energy in int64 and float64: a workload of more multiply-
# accumulates than this could pass the int64 range (cycles can exceed MACs a few times over).
MAX_MACS = 2**60
# The memory model streams one operand once per tile of the other (refetch): the product of an op's
# weight and input elements bounds that traffic.
MAX_OPERAND_PRODUCT = 2**80


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    kind: str  # linear | attn_qk | attn_v
    weight_batch: int
    cout: int
    cin: int
    batch: int
    tokens: int

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"op {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        for field in ("weight_batch", "cout", "cin", "batch", "tokens"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"op {self.name!r}: {field} must be a positive integer, got {v!r}")

    @property
    def macs(self) -> int:
        return self.batch * self.tokens * self.cout * self.cin

    @property
    def is_attention(self) -> bool:
        return self.kind != "linear"


@dataclasses.dataclass(frozen=True)
class Workload:
    """The ops of one decode step or one prefill (``phase``), at ``batch`` sequences of ``context`` tokens."""

    ops: tuple[Op, ...]
    phase: str
    batch: int = 1
    context: int = 256
    model: str = "shapes"

    def __post_init__(self):
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        if not self.ops:
            raise ValueError("a workload needs at least one op")
        object.__setattr__(self, "ops", tuple(self.ops))
        if self.macs > MAX_MACS:
            raise ValueError(f"the workload ({self.model} {self.phase}, batch {self.batch}, context {self.context}) has "
                             f"{self.macs:.3g} multiply-accumulates, more than the 2**60 the simulator counts exactly; "
                             "reduce batch or context")
        for op in self.ops:
            weights, inputs = op.weight_batch * op.cout * op.cin, op.batch * op.tokens * op.cin
            if weights * inputs > MAX_OPERAND_PRODUCT:
                raise ValueError(f"op {op.name!r} has {weights:.3g} weight and {inputs:.3g} input elements, whose "
                                 "refetched traffic passes what the simulator counts exactly (2**80 for their "
                                 "product); reduce batch or context")

    @property
    def macs(self) -> int:
        return sum(op.macs for op in self.ops)

    @classmethod
    def for_model(cls, model, phase: str = "decode", batch: int = 1, context: int = 256) -> "Workload":
        """The linear layers and attention of ``model`` (a name, :class:`ModelSpec` or config.json path)."""
        spec: ModelSpec = get_model(model)
        for label, v, limit in (("batch", batch, MAX_BATCH), ("context", context, MAX_CONTEXT)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{label} must be a positive integer, got {v!r:.60}")
            if v > limit:
                raise ValueError(f"{label} = {v} is past what the simulator models (at most {limit})")
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        decode = phase == "decode"
        ops = [Op(name, "linear", 1, cout, cin, 1 if decode else batch, batch if decode else context)
               for name, cout, cin in spec.linear_shapes()]
        share = spec.heads // spec.kv_heads  # query heads per KV head (GQA)
        heads = batch * spec.kv_heads
        queries = share if decode else share * context
        for layer in range(spec.layers):
            ops.append(Op(f"layers.{layer}.attn_qk", "attn_qk", heads, context, spec.head_dim, heads, queries))
            ops.append(Op(f"layers.{layer}.attn_v", "attn_v", heads, spec.head_dim, context, heads, queries))
        return cls(tuple(ops), phase, batch, context, spec.name)

    @classmethod
    def from_shapes(cls, shapes, tokens: int = 1, phase: str = "decode", batch: int = 1) -> "Workload":
        """Linear layers only: ``shapes`` a list of ``(out_features, in_features)`` or ``(name, out, in)``."""
        ops = []
        for i, shape in enumerate(shapes):
            shape = tuple(shape)
            name, cout, cin = shape if len(shape) == 3 else (f"layer{i}", *shape)
            ops.append(Op(str(name), "linear", 1, cout, cin, batch, tokens))
        return cls(tuple(ops), phase, batch, tokens)
