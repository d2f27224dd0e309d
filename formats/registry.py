"""The one registry of datatypes: built-ins and user definitions go through ``register_format``."""
from __future__ import annotations

import difflib

from .base import Format, check_format_name

_REGISTRY: dict[str, Format] = {}
_BUILTIN: set[str] = set()


def register_format(fmt: Format, *, overwrite: bool = False) -> Format:
    """Register ``fmt`` under ``fmt.name`` and return it.

    Re-registering a user name needs ``overwrite=True``; built-in names cannot be replaced.
    Tensors quantized before keep the definition they were quantized with.
    """
    if not isinstance(fmt, Format):
        raise TypeError(f"register_format expects a Format, got {type(fmt).__name__}")
    name = fmt.name
    check_format_name(name)
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in format and cannot be redefined; choose another name")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"format {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = fmt
    return fmt


def register_builtin(fmt: Format) -> Format:
    """Register one of hwlab's own formats (its name can never be redefined)."""
    register_format(fmt)
    _BUILTIN.add(fmt.name)
    return fmt


def get_format(name) -> Format:
    """The registered format called ``name`` (a ``Format`` passes through unchanged)."""
    if isinstance(name, Format):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a format is named by a string, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), _REGISTRY, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else \
            "; list_formats() names them all"
        raise ValueError(f"unknown format {name!r}{hint}") from None


def list_formats(family: str | None = None) -> list[str]:
    """Names of all registered formats (built-in first, in declaration order), optionally one family."""
    return [n for n, f in _REGISTRY.items() if family is None or f.family == family]
