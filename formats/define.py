"""Define your own datatypes in a line; the built-ins are declared the same way.

>>> from hwlab.formats import define_lut, define_minifloat, define_mixture
>>> define_lut("my_apot4", [0, 0.25, 0.5, 1, 1.5, 2, 3, 4, -0.25, -0.5, -1, -1.5, -2, -3, -4])
>>> define_minifloat("fp4_e2m1_b2", exp_bits=2, man_bits=1, bias=2)
>>> define_mixture("my_mix", ["fp4_e2m1", "nf4"])

From then on the name works everywhere a built-in name works (``hwlab.quantize``, save and
load, the CLI, ``list_formats``). Pass ``register=False`` to get the format without
registering it. A file saved with a format that is not registered where it is loaded carries
its definition, and :func:`format_from_definition` rebuilds it from there.
"""
from __future__ import annotations

from .base import Format
from .element import ElementFormat
from .lookup import lut_format
from .minifloat import minifloat_format
from .mixture import MixtureFormat
from .registry import get_format, register_format

REBUILT_DESCRIPTION = "rebuilt from the definition stored in a saved file"
MAX_DEFAULT_TEXT = 1000  # characters of one stored option default (a Python literal) that a file may hold


def define_lut(name: str, values, *, bits: int | None = None, rounding: str = "nearest_even", unused_codes=(),
               description: str | None = None, register: bool = True, overwrite: bool = False):
    """A lookup-table format (code ``i`` decodes to ``values[i]``; 2..256 distinct finite values;
    ``unused_codes``: codes never emitted; see :func:`~hwlab.formats.lookup.lut_format`)."""
    fmt = lut_format(name, values, bits=bits, rounding=rounding, unused_codes=unused_codes, description=description)
    return register_format(fmt, overwrite=overwrite) if register else fmt


def define_minifloat(name: str, exp_bits: int, man_bits: int, *, bias: int | None = None,
                     semantics: str = "finite", description: str | None = None,
                     register: bool = True, overwrite: bool = False):
    """A minifloat of sign + ``exp_bits`` + ``man_bits`` (see :mod:`hwlab.formats.encodings`)."""
    fmt = minifloat_format(name, exp_bits, man_bits, bias=bias, semantics=semantics, description=description)
    return register_format(fmt, overwrite=overwrite) if register else fmt


def define_mixture(name: str, members, *, description: str | None = None, register: bool = True,
                   overwrite: bool = False):
    """A per-group least-MSE mixture of element formats (registered names or format objects), in order:
    a member's position is its stored type id."""
    if isinstance(members, (str, bytes, set, frozenset, dict)) or not hasattr(members, "__iter__"):
        raise TypeError(f"mixture members must be an ordered sequence (list or tuple) of formats, whose order is "
                        f"their type ids; got {type(members).__name__} {members!r:.100}")
    fmt = MixtureFormat(name, [get_format(m) for m in members], description=description)
    return register_format(fmt, overwrite=overwrite) if register else fmt


def format_from_definition(definition: dict, description: str = "") -> Format:
    """The element format or mixture that ``definition`` (:meth:`Format.definition`) describes.

    Raises ``ValueError`` for a definition that is not one of those, or that does not rebuild to
    a format with the same definition (a corrupted or hand-edited one).
    """
    description = f"{description} ({REBUILT_DESCRIPTION})" if description else REBUILT_DESCRIPTION
    try:
        check_definition(definition)
        if definition["family"] == "mixture":
            fmt = MixtureFormat.from_definition(definition, description)
        else:
            fmt = ElementFormat.from_definition(definition, description)
    except (KeyError, TypeError, ValueError, SyntaxError) as exc:
        name = definition.get("name") if isinstance(definition, dict) else None
        raise ValueError(f"cannot rebuild format {name!r} from its stored definition: {exc}") from None
    if fmt.definition() != definition:
        raise ValueError(f"the stored definition of format {definition.get('name')!r} does not rebuild to itself "
                         "(corrupted or edited)")
    return fmt


def check_definition(definition) -> None:
    """``ValueError`` unless ``definition`` has the shape of an element format's or a mixture's."""
    if not isinstance(definition, dict):
        raise ValueError(f"a definition is a JSON object, got {type(definition).__name__}")
    if definition.get("family") == "mixture":
        members = definition.get("members")
        if not isinstance(members, list) or not members:
            raise ValueError("a mixture's definition lists its members")
        for member in members:
            check_definition(member)
    elif not ("values" in definition and "encodable" in definition):
        raise ValueError("only element formats and mixtures can be rebuilt from a definition")
    defaults = definition.get("defaults")
    if not isinstance(defaults, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_DEFAULT_TEXT for k, v in defaults.items()):
        raise ValueError(f"'defaults' must map option names to Python literals of at most {MAX_DEFAULT_TEXT} "
                         f"characters, got {defaults!r:.200}")
    if "fields" in definition and not isinstance(definition["fields"], dict):
        raise ValueError("'fields' must be a JSON object")
