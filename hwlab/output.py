"""Command-line output: aligned and markdown tables, strict JSON, and the usage error."""
from __future__ import annotations

import json
import math

import numpy as np


class UsageError(Exception):
    """A bad command line (raised instead of argparse's multi-line usage message)."""


def cell(value) -> str:
    """A table cell: ``-`` for unknown, reals to 7 significant digits (4.140625 bits stays exact)."""
    if value is None:
        return "-"
    if isinstance(value, (bool, str, int, np.integer)):
        return str(value)
    return f"{value:.7g}"


def render(header: list[str], rows: list[list[str]], markdown: bool = False) -> str:
    """An aligned plain-text table, or a markdown table."""
    if markdown:
        lines = [header, ["---"] * len(header)] + rows
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows)


def print_json(obj) -> None:
    print(json.dumps(strict(obj), indent=2, allow_nan=False))


def strict(obj):
    """``obj`` with tuples as lists, numpy scalars as Python numbers and inf/NaN as strings."""
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [strict(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj
