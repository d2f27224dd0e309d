"""Per-group mixtures of element formats (BitMoD's mixture of datatypes, or your own).

Each group is quantized with every member (its own absmax scale), and the member with the
least squared error is kept (strict ``<``: on a tie the earlier member wins, as in the BitMoD
authors' ``search_datatype``). The member index is stored per group in
``ceil(log2 len(members))`` bits (2 bits for BitMoD's four members).
"""
from __future__ import annotations

import ast

import numpy as np

from .base import Format, FormatInfo, check_description, check_format_name
from .element import ElementFormat
from .scaled import ScaledScheme, scaled_options


MAX_MEMBERS = 256  # type ids are packed codes of at most 8 bits


class MixtureFormat(ScaledScheme, Format):
    """A datatype that picks one of ``members`` per group by least MSE."""

    def __init__(self, name: str, members, *, description: str | None = None, defaults: dict | None = None):
        check_format_name(name)
        members = tuple(members)
        if len(members) < 2:
            raise ValueError(f"a mixture needs at least 2 members, got {len(members)}")
        if not all(isinstance(m, ElementFormat) for m in members):
            raise TypeError("mixture members must be element formats (ElementFormat), got "
                            f"{[type(m).__name__ for m in members]}")
        names = [m.name for m in members]
        repeated = sorted({n for n in names if names.count(n) > 1})
        tables = [m.values.tobytes() for m in members]
        if repeated or len(set(tables)) < len(tables):
            raise ValueError(f"mixture {name!r} repeats a member ({repeated or 'two members with the same values'}); "
                             "members must differ")
        if len(members) > MAX_MEMBERS:
            raise ValueError(f"a mixture has at most {MAX_MEMBERS} members (type ids are stored in 8 bits), "
                             f"got {len(members)}")
        widths = {m.bits for m in members}
        if len(widths) != 1:
            raise ValueError(f"mixture members must share one bit width, got {sorted(widths)}")
        scalings = {m.scaling for m in members}
        if len(scalings) != 1:
            raise ValueError(f"mixture members must share one scaling rule, got {sorted(scalings)}")
        self.name, self.bits, self.family = name, widths.pop(), "mixture"
        self.members = members
        self.description = description or f"per-group mixture of {', '.join(m.name for m in members)}"
        check_description(self.description)
        self.defaults = dict(defaults or {})
        self.declare_options(scaled_options())

    @property
    def values(self) -> np.ndarray:
        """Decoded values, ``[member, code]`` (row = type id)."""
        return self.member_table()

    def encoding_fields(self) -> dict:
        return {"kind": "mixture", "members": [m.encoding_fields() for m in self.members]}

    @property
    def info(self) -> FormatInfo:
        """Facts of the union of the members' values (what any group can decode to)."""
        union = np.unique(np.concatenate([m.rounding_table.sorted_values for m in self.members]))
        nonzero = np.abs(union[union != 0])
        infos = [m.info for m in self.members]
        return FormatInfo(
            max=float(union[-1]), min=float(union[0]), smallest_normal=float(nonzero.min()),
            smallest_subnormal=None, smallest_step=float(np.diff(union).min()), n_values=int(union.size),
            has_nan=any(i.has_nan for i in infos), has_inf=any(i.has_inf for i in infos),
            has_negative_zero=any(i.has_negative_zero for i in infos),
            rounding="/".join(sorted({i.rounding for i in infos})))

    def encode(self, x, type_id: int, **kwargs) -> np.ndarray:
        """Codes of ``x`` in member ``type_id`` (see :meth:`ElementFormat.encode`)."""
        return self._member(type_id).encode(x, **kwargs)

    def decode(self, codes, type_id: int) -> np.ndarray:
        """Values of ``codes`` in member ``type_id``, float32."""
        return self._member(type_id).decode(codes)

    def _member(self, type_id: int) -> ElementFormat:
        if not 0 <= type_id < len(self.members):
            raise ValueError(f"type_id must be in 0..{len(self.members) - 1} for {self.name}, got {type_id}")
        return self.members[type_id]

    def definition(self) -> dict:
        return {**super().definition(), "members": [m.definition() for m in self.members],
                "defaults": {k: repr(v) for k, v in sorted(self.defaults.items())}}

    @classmethod
    def from_definition(cls, definition: dict, description: str) -> "MixtureFormat":
        """The mixture a :meth:`definition` describes (as saved in a file)."""
        members = [ElementFormat.from_definition(m, description) for m in definition["members"]]
        return cls(definition["name"], members, description=description,
                   defaults={k: ast.literal_eval(v) for k, v in definition["defaults"].items()})
