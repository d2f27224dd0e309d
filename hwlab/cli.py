"""The ``hwlab`` command line: list the datatypes, quantize weight files, inspect quantized files.

::

    hwlab formats [NAME] [--family F] [--json | --markdown]
    hwlab quantize (FILE.npy | FILE.safetensors | --sample) --format (NAME | QUANTIZED.safetensors) [--group-size G]
                   [--tensor NAME ...] [--scale-dtype D] [--granularity G] [--scale-search S]
                   [--option KEY=VALUE ...] [--pad] [--out OUT.safetensors] [--json]
    hwlab info FILE.safetensors [--json]
    hwlab sample-path
    hwlab study [--weights FILE] [--formats NAME ...] [--group-sizes G ...] [--out DIR] [--json]
    hwlab sweep SPEC.toml [--out RESULTS.jsonl] [--dask ADDRESS | --dask local] [--json]
    hwlab gpu-model --format NAME ... [--m M ...] [--shape K N ...] [--preset P] [--set FIELD=VALUE ...]
                    [--registers R] [--counts-of NAME] [--json | --markdown]
    hwlab --version

``--sample`` quantizes the real weights shipped with hwlab (two linear layers of
all-MiniLM-L6-v2, see ``hwlab/data/README.md``); ``hwlab sample-path`` prints where that file is.
``hwlab formats NAME`` shows one format: its facts, the options it takes (with their choices and
defaults) and its hardware decomposition. ``--format`` also takes a file saved by
``QuantizedTensor.save``: its format (rebuilt from the file where it is not registered here) is
used with its group size and options (flags given override them), so a colleague's datatype works
without ``--define``.

Every error (a bad file, an unknown format or option, a group size that does not divide K, a bad
argument) prints one line ``hwlab: error: ...`` on stderr and exits with status 2. ``--json``
output is strict JSON: infinite or NaN numbers (an exact quantization has an infinite SQNR) are
written as the strings ``"inf"``, ``"-inf"``, ``"nan"``.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import pathlib
import runpy
import sys
import tempfile
import warnings

import numpy as np
from safetensors import SafetensorError, safe_open

import hwlab
from hwlab.formats import FormatRebuiltWarning, get_format, list_formats
from hwlab.formats.scales import StoredScales, get_scale_type
from hwlab import edge_command, gpu_model_command, sim_command, study_command, sweep_command
from hwlab.output import UsageError, cell, print_json, render
from hwlab.sample import sample_path

# `hwlab formats` reports bits per weight for a 4096 x 4096 matrix (a Llama-2-7B attention
# projection) at group size 128, or at the format's own block size where that is fixed (MX: 32).
TABLE_SHAPE = (4096, 4096)
TABLE_GROUP_SIZE = 128
WEIGHT_DTYPES = ("F16", "BF16", "F32", "F64")  # safetensors dtype names that read_weights accepts
EXIT_ERROR = 2
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (numpy.lib.format)
OPTION_FLAGS = {"--scale-dtype": "scale_dtype", "--granularity": "granularity", "--scale-search": "scale_search"}
QUANTIZE_ARGUMENTS = {"group_size": "--group-size", "pad": "--pad"}  # arguments of quantize() itself, not options
DEFINE_ENV = "HWLAB_DEFINE"  # user datatype definition files, run before every command


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def main(argv=None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        for path in _definition_files(args.define):
            _run_definitions(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FormatRebuiltWarning)
            args.run(args)
        for warning in caught:
            if issubclass(warning.category, FormatRebuiltWarning):
                print(f"hwlab: note: {warning.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    except SystemExit as exc:  # --help and --version
        return exc.code or 0
    except BrokenPipeError:  # the reader went away (`hwlab formats | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise
        return 1
    except MemoryError:
        print("hwlab: error: out of memory (the matrix, or the padding or group size asked for, is too large)",
              file=sys.stderr)
        return EXIT_ERROR
    except (UsageError, ValueError, TypeError, KeyError, OSError, SafetensorError, ArithmeticError, RecursionError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"hwlab: error: {' '.join(str(message).split())}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hwlab", description="hwlab: a lab for low-bit LLM datatype co-design.")
    parser.add_argument("--version", action="version", version=f"hwlab {hwlab.__version__}")
    parser.add_argument("--define", action="append", default=[], metavar="FILE.py",
                        help=f"run this Python file first, to define and register your own datatypes "
                             f"(repeatable; also ${DEFINE_ENV}, paths separated by {os.pathsep!r})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("formats", help="table of every registered datatype, or one datatype in detail")
    p.add_argument("name", nargs="?", help="show this format: facts, options and hardware decomposition")
    p.add_argument("--family", help="only this family (integer, minifloat, lookup, bitmod, mixture, ...)")
    _add_output_flags(p, markdown=True)
    p.set_defaults(run=_cmd_formats)

    p = commands.add_parser("quantize", help="quantize the 2-D tensors of a .npy or .safetensors file")
    p.add_argument("file", nargs="?", help="a .npy file (one [N, K] matrix) or a .safetensors file")
    p.add_argument("--sample", action="store_true", help="use the sample weights shipped with hwlab")
    p.add_argument("--format", required=True, dest="fmt", metavar="NAME",
                   help="a name from `hwlab formats`, or a quantized .safetensors file whose format to use")
    p.add_argument("--group-size", type=int, help="elements per scale group along K (default: the format's)")
    p.add_argument("--tensor", action="append", help="safetensors tensor to quantize (repeatable; "
                                                     "default: every 2-D floating-point tensor)")
    for flag, option in OPTION_FLAGS.items():
        p.add_argument(flag, dest=option, help=f"the format's {option} option (`hwlab formats NAME` lists its choices)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other format option, VALUE a Python literal (e.g. clip_ratios='(1.0, 0.9)')")
    p.add_argument("--pad", action="store_true", help="pad K with zeros to a multiple of the group size")
    p.add_argument("--out", help="write the quantized tensor here (a new .safetensors file; one tensor only)")
    p.add_argument("--force", action="store_true", help="let --out replace an existing file (never an input)")
    _add_output_flags(p)
    p.set_defaults(run=_cmd_quantize)

    p = commands.add_parser("info", help="describe a file written by `hwlab quantize --out` or QuantizedTensor.save")
    p.add_argument("file")
    _add_output_flags(p)
    p.set_defaults(run=_cmd_info)

    p = commands.add_parser("sample-path", help="print the path of the sample weights shipped with hwlab")
    p.set_defaults(run=lambda args: print(sample_path()))
    sim_command.add_parser(commands, _add_output_flags)
    edge_command.add_parser(commands, _add_output_flags)
    study_command.add_parser(commands, _add_output_flags)  # hwlab study (hwlab/study_command.py)
    sweep_command.add_parser(commands, _add_output_flags)  # hwlab sweep (hwlab/sweep_command.py)
    gpu_model_command.add_parser(commands, _add_output_flags)  # hwlab gpu-model (hwlab/gpu_model_command.py)
    return parser


def _definition_files(cli_paths: list[str]) -> list[str]:
    """Definition files to run: those in ``$HWLAB_DEFINE``, then those given with ``--define``, each once."""
    env = [p for p in os.environ.get(DEFINE_ENV, "").split(os.pathsep) if p]
    seen, files = set(), []
    for path in env + list(cli_paths):
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            files.append(path)
    return files


def _run_definitions(path: str) -> None:
    """Run a user's Python file that defines datatypes (``define_lut(...)`` etc.) before the command."""
    if not os.path.isfile(path):
        raise UsageError(f"--define: no such file: {path}")
    try:
        runpy.run_path(path, run_name="__hwlab_define__")
    except (Exception, SystemExit) as exc:  # anything the user's file raises (or exits with) is one line
        raise UsageError(f"--define {path}: {type(exc).__name__}: {exc}") from None


def _add_output_flags(p: argparse.ArgumentParser, markdown: bool = False) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="machine-readable JSON")
    if markdown:
        group.add_argument("--markdown", action="store_true", help="a markdown table")


# ---- hwlab formats ---------------------------------------------------------------------------

FORMAT_COLUMNS = (("name", "name"), ("family", "family"), ("bits", "bits"), ("min", "min"), ("max", "max"),
                  ("smallest_step", "step"), ("rounding", "rounding"), ("group", "group"),
                  ("bits_per_weight", "bits/w"))


def format_facts(name: str) -> dict:
    """What ``hwlab formats`` reports about one registered format (``None`` where unknown).

    ``min``, ``max`` and ``smallest_step`` are in the format's own units (before any scale):
    from ``info`` where the format has one, else from its members' ``info`` (mixtures: the
    union of the ranges, the least step), else from its ``values`` table (each row of a 2-D
    table is one member). ``bits_per_weight`` counts every array ``array_specs`` stores for a
    4096 x 4096 matrix with default options, at group size 128 or at the format's own block
    size where 128 is refused (``fixed_group`` is then true).
    """
    fmt = get_format(name)
    low, high, step, rounding = _value_range(fmt)
    group_size, fixed = _table_group_size(fmt)
    opts = fmt.option_values({})
    granularity = opts.get("granularity", "group")
    return {"name": fmt.name, "family": fmt.family, "bits": fmt.bits, "min": low, "max": high,
            "smallest_step": step, "rounding": rounding, "group_size": group_size, "fixed_group": fixed,
            "granularity": granularity, "bits_per_weight": _table_bits_per_weight(fmt, group_size, opts),
            "description": getattr(fmt, "description", "")}


def _value_range(fmt) -> tuple:
    """(min, max, smallest step, rounding) of a format's values, in its own units."""
    info = getattr(fmt, "info", None)
    infos = [info] if info is not None else [getattr(m, "info", None) for m in getattr(fmt, "members", ())]
    if infos and all(i is not None for i in infos):
        roundings = sorted({i.rounding for i in infos})
        return (min(i.min for i in infos), max(i.max for i in infos),
                min(i.smallest_step for i in infos), "/".join(roundings))
    values = getattr(fmt, "values", None)
    if values is None:
        return None, None, None, None
    tables = [np.unique(row[np.isfinite(row)]) for row in np.atleast_2d(np.asarray(values, np.float64))]
    tables = [t for t in tables if t.size]
    if not tables:
        return None, None, None, None
    steps = [np.diff(t).min() for t in tables if t.size > 1]
    return (float(min(t[0] for t in tables)), float(max(t[-1] for t in tables)),
            float(min(steps)) if steps else None, None)


def _table_group_size(fmt) -> tuple[int, bool]:
    """Group size for the table: 128, or the format's own where it refuses 128 (and True)."""
    try:
        fmt.check_group_size(TABLE_GROUP_SIZE)
    except ValueError:
        return fmt.default_group_size, True
    return TABLE_GROUP_SIZE, False


def _table_bits_per_weight(fmt, group_size: int, opts: dict) -> float | None:
    """Stored bits per weight of a ``TABLE_SHAPE`` matrix, from the format's ``array_specs``."""
    try:
        return fmt.stored_bits_per_weight(*TABLE_SHAPE, group_size, **opts)
    except (ValueError, TypeError, NotImplementedError):
        return None


def _cmd_formats(args) -> None:
    if args.name is not None:
        if args.family or args.markdown:
            raise UsageError("formats NAME shows one format; --family and --markdown apply to the table")
        _show_format(get_format(args.name), as_json=args.json)
        return
    names = list_formats(args.family)
    if not names:
        families = sorted({get_format(n).family for n in list_formats()})
        raise ValueError(f"no format of family {args.family!r}; families: {', '.join(families)}")
    facts = [format_facts(n) for n in names]
    if args.json:
        print_json(facts)
        return
    rows = [[cell(f[key] if key != "group" else _groupcell(f)) for key, _ in FORMAT_COLUMNS] for f in facts]
    print(render([title for _, title in FORMAT_COLUMNS], rows, markdown=args.markdown))
    print()
    print(f"bits/w: every stored bit (codes, scales, zeros, type ids) per weight of a "
          f"{TABLE_SHAPE[0]}x{TABLE_SHAPE[1]} matrix with default options; group: elements per scale "
          f"along K ({TABLE_GROUP_SIZE} unless marked *: the format's fixed block size), or the format's "
          "default per-channel/per-tensor scale. min, max, step: values before scaling.")


def format_detail(fmt) -> dict:
    """What ``hwlab formats NAME`` shows: the table's facts, the options, value table and decomposition."""
    facts = format_facts(fmt.name)
    d = fmt.decomposition()
    facts["options"] = {name: {"default": o.default, "choices": o.choices, "help": o.help}
                        for name, o in fmt.options.items()}
    facts["values"] = fmt.member_table().tolist()
    facts["decomposition"] = None if d is None else {
        "fields": d.fields, "magnitude_bits": d.magnitude_bits, "exponent_range": list(d.exponent_range)}
    return facts


def _show_format(fmt, as_json: bool) -> None:
    detail = format_detail(fmt)
    if as_json:
        print_json(detail)
        return
    print(f"{fmt.name} ({fmt.family}, {fmt.bits}-bit): {detail['description']}")
    print(f"values from {cell(detail['min'])} to {cell(detail['max'])}, least step {cell(detail['smallest_step'])}, "
          f"rounding {detail['rounding']}; {cell(detail['bits_per_weight'])} bits per weight at "
          f"{TABLE_SHAPE[0]}x{TABLE_SHAPE[1]}, group {_groupcell(detail)}")
    for member, row in enumerate(detail["values"]):
        label = f"member {member}" if len(detail["values"]) > 1 else "values"
        print(f"{label}: " + " ".join("-" if math.isnan(v) else f"{v:g}" for v in row))
    print("options:")
    print(render(["  option", "default", "choices", "meaning"],
                  [[f"  {name}", repr(o["default"]), ", ".join(map(repr, o["choices"])) if o["choices"] else "-",
                    o["help"]] for name, o in detail["options"].items()]))
    d = detail["decomposition"]
    if d is None:
        print("decomposition: none (values are not sign x odd magnitude x 2^exponent with magnitudes of "
              f"{fmt.bits} bits or fewer: a lookup-table datapath is needed)")
    else:
        print(f"decomposition: {d['fields']}; magnitudes of up to {d['magnitude_bits']} bits, exponents "
              f"{d['exponent_range'][0]}..{d['exponent_range'][1]}")


def _groupcell(facts: dict) -> str:
    if facts["granularity"] != "group":
        return facts["granularity"]
    return f"{facts['group_size']}*" if facts["fixed_group"] else str(facts["group_size"])


# ---- hwlab quantize --------------------------------------------------------------------------

METRIC_COLUMNS = (("bits_per_weight", "bits/w"), ("mse", "mse"), ("sqnr_db", "sqnr_db"),
                  ("max_abs_error", "max_abs_err"), ("rel_error", "rel_err"))


def _cmd_quantize(args) -> None:
    if args.sample == (args.file is not None):
        raise UsageError("give either a FILE or --sample (not both)" if args.sample
                         else "quantize needs a FILE (.npy or .safetensors) or --sample")
    if args.file == "":
        raise UsageError("quantize: FILE is empty; name a .npy or .safetensors file")
    if args.out == "":
        raise UsageError("--out is empty; name the file *.safetensors")
    options, group_size = _options(args), args.group_size
    if args.fmt.endswith(".safetensors"):  # quantize as that tensor was: its format, group size and options
        like = hwlab.load(args.fmt)
        fmt, options = like.format, {**like.options, **options}
        group_size = like.group_size if group_size is None else group_size
    else:
        fmt = get_format(args.fmt)
    path = sample_path() if args.sample else pathlib.Path(args.file)
    weights = read_weights(path, args.tensor)
    if args.out is not None and len(weights) > 1:
        raise ValueError(f"--out writes one quantized tensor, but {len(weights)} are selected "
                         f"({', '.join(weights)}); choose one with --tensor")
    if args.out is not None:
        _check_out(pathlib.Path(args.out), [path] + ([pathlib.Path(args.fmt)] if args.fmt.endswith(".safetensors")
                                                     else []), args.force)
    results = []
    for name, w in weights.items():
        qt = hwlab.quantize(w, fmt, group_size, pad=args.pad, **options)
        results.append({"tensor": name, "shape": list(qt.shape), "bits_per_weight": qt.bits_per_weight,
                        **qt.error(w)})
        if args.out is not None:
            _save_atomically(qt, pathlib.Path(args.out))
    report = {"file": str(path), "format": fmt.name, "group_size": qt.group_size, "options": qt.options,
              "tensors": results, "out": args.out}
    if args.json:
        print_json(report)
        return
    print(f"{path}: format {fmt.name}, {_grouping(qt)}" + "".join(f", {k}={v!r}" for k, v in options.items()))
    rows = [[r["tensor"], "x".join(map(str, r["shape"]))] + [cell(r[key]) for key, _ in METRIC_COLUMNS]
            for r in results]
    print(render(["tensor", "shape"] + [title for _, title in METRIC_COLUMNS], rows))
    if args.out is not None:
        print(f"wrote {args.out}")


def _check_out(out: pathlib.Path, inputs: list[pathlib.Path], force: bool) -> None:
    """``--out`` may not overwrite an input, nor (without ``--force``) any file; it writes safetensors."""
    if out.suffix != ".safetensors":
        raise UsageError(f"--out {out}: a quantized tensor is written as safetensors; name the file *.safetensors")
    if not out.resolve().parent.is_dir():
        raise FileNotFoundError(f"--out {out}: directory {out.parent} does not exist")
    if any(out.exists() and p.exists() and out.samefile(p) for p in inputs):
        raise UsageError(f"--out {out} is an input of this command; it is never overwritten")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a directory")
    if out.exists() and not force:
        raise UsageError(f"--out {out} exists; pass --force to replace it")


def _save_atomically(qt, out: pathlib.Path) -> None:
    """Write to a temporary file beside ``out``, then rename it: an interrupted run leaves no partial file."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.resolve().parent)
    except OSError as exc:  # name --out, not the temporary file
        raise OSError(f"--out {out}: cannot write in {out.resolve().parent} ({exc.strerror or exc})") from None
    os.close(fd)
    try:
        qt.save(tmp)
        os.replace(tmp, out)
    except BaseException as exc:
        os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OSError(f"--out {out}: cannot write the file ({exc.strerror or exc})") from None
        raise


def _options(args) -> dict:
    """Format options given on the command line (only those given: the rest are the format's)."""
    options = {key: getattr(args, key) for key in OPTION_FLAGS.values() if getattr(args, key) is not None}
    for item in args.option:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {item!r}")
        if key in options:
            raise UsageError(f"option {key!r} is given twice")
        if key in QUANTIZE_ARGUMENTS:
            raise UsageError(f"{key} is not a format option; use {QUANTIZE_ARGUMENTS[key]}")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text  # a bare word such as trit5
    return options


def read_weights(path: pathlib.Path, tensors: list[str] | None = None) -> dict[str, np.ndarray]:
    """Weight matrices of a ``.npy`` file (named by the file's stem) or a ``.safetensors`` file.

    From safetensors, ``tensors`` names the tensors to read (default: every 2-D F16, BF16, F32
    or F64 tensor); BF16 is widened to float32 exactly. A file written by
    :meth:`~hwlab.QuantizedTensor.save` is refused (it holds codes, not weights).
    """
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; expected a .npy or .safetensors file")
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file (a device or a pipe?); expected a .npy or .safetensors file")
    if path.suffix == ".npy":
        if tensors:
            raise UsageError("--tensor applies to .safetensors files; a .npy file holds one matrix")
        return {path.stem: _read_npy(path)}
    if path.suffix != ".safetensors":
        raise ValueError(f"expected a .npy or .safetensors file, got {path.name!r}")
    try:
        with safe_open(path, framework="numpy") as fh:
            if "hwlab" in (fh.metadata() or {}):
                raise ValueError(f"{path} holds a quantized tensor, not weights; see `hwlab info {path}`")
            dtypes = {name: fh.get_slice(name).get_dtype() for name in fh.keys()}
            shapes = {name: fh.get_slice(name).get_shape() for name in fh.keys()}
    except SafetensorError as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from None
    if tensors is None:
        tensors = [n for n in dtypes if len(shapes[n]) == 2 and dtypes[n] in WEIGHT_DTYPES]
        if not tensors:
            raise ValueError(f"{path} has no 2-D floating-point tensor (it holds {sorted(dtypes)})")
    for name in tensors:
        if name not in dtypes:
            raise KeyError(f"no tensor {name!r} in {path}; it holds {sorted(dtypes)}")
        if dtypes[name] not in WEIGHT_DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {dtypes[name]}; expected one of {WEIGHT_DTYPES}")
    return {name: _read_tensor(path, name, dtypes[name]) for name in tensors}


def _read_npy(path: pathlib.Path) -> np.ndarray:
    """The one array of a ``.npy`` file; a file that is not one (text, an ``.npz`` zip) says so."""
    with open(path, "rb") as fh:
        head = fh.read(len(NPY_MAGIC))
    if head != NPY_MAGIC:
        what = ("it is empty" if not head else "it is a zip archive (an .npz? save one array with np.save)"
                if head.startswith(b"PK") else "it does not begin with the .npy magic string (a text file?)")
        raise ValueError(f"{path} is not a readable .npy array: {what}")
    try:
        w = np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as exc:  # truncated, pickled, a bad header
        raise ValueError(f"{path} is not a readable .npy array: {exc}") from None
    if w.dtype.kind == "V":
        raise TypeError(f"{path} holds raw {w.dtype.itemsize}-byte values (dtype {w.dtype.str}): numpy stores ml_dtypes "
                        "types such as bfloat16 this way and cannot read them back as numbers; save the weights as "
                        "float32 (w.astype(np.float32)) or in a .safetensors file (BF16)")
    return w


def _read_tensor(path: pathlib.Path, name: str, dtype: str) -> np.ndarray:
    """One tensor; BF16 (which numpy lacks) is read as raw bits from the safetensors layout."""
    if dtype != "BF16":
        with safe_open(path, framework="numpy") as fh:
            return fh.get_tensor(name)
    with open(path, "rb") as fh:  # layout: u64 header length, JSON header, data (offsets from its start)
        header_len = int.from_bytes(fh.read(8), "little")
        entry = json.loads(fh.read(header_len))[name]
        start, end = entry["data_offsets"]
        fh.seek(8 + header_len + start)
        bits = np.frombuffer(fh.read(end - start), dtype="<u2").reshape(entry["shape"])
    return get_scale_type("bf16").load(StoredScales(bits)).astype(np.float32)


# ---- hwlab info ------------------------------------------------------------------------------

def _cmd_info(args) -> None:
    qt = hwlab.load(args.file)
    fmt = qt.format
    layout = qt.layout
    arrays = {name: {"dtype": str(a.dtype), "shape": list(a.shape), "bytes": int(a.nbytes),
                     "layout": layout[name].to_json()} for name, a in qt.arrays.items()}
    report = {"file": args.file, "format": fmt.name, "family": fmt.family, "bits": fmt.bits,
              "description": getattr(fmt, "description", ""), "shape": list(qt.shape),
              "group_size": qt.group_size, "padded_cols": qt.padded_cols, "options": qt.options,
              "arrays": arrays, "bytes": qt.nbytes, "bits_per_weight": qt.bits_per_weight}
    if args.json:
        print_json(report)
        return
    print(f"{args.file}: {fmt.name} ({fmt.family}, {fmt.bits}-bit) {qt.shape[0]}x{qt.shape[1]}, "
          f"{_grouping(qt)}, {cell(qt.bits_per_weight)} bits per weight")
    if qt.padded_cols != qt.shape[1]:
        print(f"K padded with zeros to {qt.padded_cols}")
    print("options: " + ", ".join(f"{k}={v!r}" for k, v in qt.options.items()))
    print(render(["array", "role", "dtype", "shape", "bytes", "packing", "bits", "entries/row", "one entry per",
                   "encoding"],
                  [[n, layout[n].role, a["dtype"], "x".join(map(str, a["shape"])), str(a["bytes"]), layout[n].packing,
                    str(layout[n].bits), str(layout[n].entries), _applies(layout[n]), layout[n].encoding]
                   for n, a in arrays.items()]))


def _applies(a) -> str:
    """What one entry of an array covers, for the info table."""
    return f"group of {a.group_size}" if a.group_size else a.applies_to.replace("_", " ")


def _grouping(qt) -> str:
    """How ``qt`` shares its scales: a group size, or one scale per channel or tensor."""
    granularity = qt.options.get("granularity", "group")
    return f"group size {qt.group_size}" if granularity == "group" else f"one scale per {granularity}"


if __name__ == "__main__":
    sys.exit(main())
