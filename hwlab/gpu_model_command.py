"""``hwlab gpu-model``: what ``hwlab.kernels.matmul`` would take on a GPU, from the GPU model (no GPU needed).

::

    hwlab gpu-model --format int4 nf4 --m 1 16 [--shape 8192 28672] [--preset h100] [--json]
    hwlab gpu-model --format int5 --m 1 --registers 168          # the kernel compiled to other registers
    hwlab gpu-model --format int2 --set copy_gbps=8000 --set sms=144    # another GPU: what if

For every format, batch M and layer shape (K, N) it takes the launch ``matmul`` would choose there for fp16 x (its
kernel and tile: the CuPy tensor-core kernel where ``dispatch.mma_plan_applies``, else ``dispatch.choose``'s Triton
launch; ``--no-cupy``: always the latter) and prints :func:`hwlab.sim.gpu.predict`'s terms: the memory and decode
times, the warps resident an SM, what bounds the kernel, its device time (a call in a CUDA graph) and a call's time
from Python. ``--set FIELD=VALUE`` replaces a constant of the preset (:class:`hwlab.sim.gpu.GPUConfig`; every value
is checked there). The bits a weight are the format's stored bits on 16 rows of Gaussian weights of that K
(mixed_2_4's share of 2-bit groups follows the weights).

The decode work is the static instruction count of the launch's kernel for that format, at the format's default
group size (``sim/data/kernel_instructions.json``). A format of your own (``--define``) runs the kernels of the
built-in formats; ``--counts-of NAME`` predicts it with the counts of a built-in whose kernel reads it alike (a
16-entry table: ``nf4``'s; the row then says whose counts it took). A launch with no count gives a row that says
why; every other bad input is an error.
"""
from __future__ import annotations

import ast
import dataclasses

from hwlab.output import UsageError, cell, print_json, render

# the benchmark's layers (bench/gpu_kernels.py): Llama-2-7B's attention and MLP, a 70B-class MLP
SHAPES = ((4096, 4096), (4096, 11008), (11008, 4096), (8192, 28672))
ROWS = 16  # rows quantized for a format's plan and bits a weight (the launch is the N x K one's)
MAX_K = 1 << 20  # ... so K is bounded: 16 rows of 2**20 float32 are 64 MiB
COLUMNS = ("format", "M", "K", "N", "kernel", "bits/w", "warps/SM", "memory us", "decode us", "bound",
           "graph us", "call us")


def add_parser(commands, add_output_flags) -> None:
    p = commands.add_parser("gpu-model", help="predicted GPU time of hwlab's kernels for formats, batches and "
                                              "layer shapes (the GPU model; no GPU needed)")
    p.add_argument("--format", nargs="+", required=True, dest="formats", metavar="NAME",
                   help="formats (`hwlab formats`; --define adds your own)")
    p.add_argument("--m", nargs="+", type=int, default=[1, 16, 64], metavar="M",
                   help="rows of x, the batch (default 1 16 64)")
    p.add_argument("--shape", nargs=2, type=int, action="append", metavar=("K", "N"),
                   help="a layer, y[M, N] = x[M, K] @ W^T (repeatable; default the benchmark's four)")
    p.add_argument("--group-size", type=int, help="elements per scale group (default the format's)")
    p.add_argument("--preset", default="h100", help="the GPU: h100 or h200 (default h100)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="changes",
                   help="replace a constant of the preset (a GPUConfig field), e.g. copy_gbps=8000")
    p.add_argument("--registers", type=int,
                   help="registers a thread of the compiled kernel, 16-255, in place of the launch's own cap "
                        "(default: as counted for the shipped launch; only the occupancy follows them)")
    p.add_argument("--counts-of", metavar="NAME",
                   help="predict with the instruction counts of this built-in format (for a format of your own "
                        "that the same kernel reads: e.g. nf4's for a 16-entry table)")
    p.add_argument("--no-cupy", action="store_true",
                   help="the launches of a machine without CuPy (the Triton kernels only; default: with CuPy)")
    add_output_flags(p, markdown=True)
    p.set_defaults(run=run)


def gpu_config(preset: str, changes: list[str]):
    """The preset ``preset`` with each ``FIELD=VALUE`` of ``changes`` replacing a field."""
    from hwlab.sim.gpu import GPUConfig, get_gpu

    gpu = get_gpu(preset)
    fields = {f.name for f in dataclasses.fields(GPUConfig)} - {"name"}
    replaced = {}
    for change in changes:
        field, sep, text = change.partition("=")
        field = field.strip()
        if not sep or field not in fields:
            raise UsageError(f"--set {change!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        try:
            replaced[field] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise UsageError(f"--set {change!r}: {text.strip()!r} is not a number") from None
    return dataclasses.replace(gpu, name=f"{gpu.name} (changed: {', '.join(changes)})" if changes else gpu.name,
                               **replaced)


def rows(formats, batches, shapes, gpu, group_size=None, registers=None, cupy=True, counts_of=None) -> list[dict]:
    """One dict a (format, M, K, N): the launch ``matmul`` takes for fp16 x on a CUDA device (with CuPy installed,
    or ``cupy`` False: without) and :func:`hwlab.sim.gpu.predict`'s terms, from the counts of ``counts_of`` (a
    format name) where given and its launch there is the same, else of the format's own."""
    import hwlab.formats as F
    from hwlab.sim.gpu import MAX_DIMENSION, UncountedLaunch, predict

    for value, flag in [(m, "--m") for m in batches] + [(d, "--shape") for shape in shapes for d in shape]:
        if not 1 <= value <= MAX_DIMENSION:
            raise UsageError(f"{flag} {value}: expected a whole number from 1 to {MAX_DIMENSION}")
    for k, _ in shapes:
        if k > MAX_K:
            raise UsageError(f"--shape {k} ...: K is at most {MAX_K} here (the model quantizes {ROWS} rows of K)")
    if counts_of is not None:
        try:
            F.get_format(counts_of)  # an unknown name is an error before anything is quantized
        except (KeyError, ValueError) as exc:
            raise UsageError(f"--counts-of {counts_of}: {exc.args[0] if exc.args else exc}") from None
    quantized = {}  # (format, K) -> a tensor of ROWS rows: the plan and bits a weight of every layer of that K
    out = []
    for name in formats:
        for k, n in shapes:
            qt, plan = _quantized(quantized, name, k, group_size)
            for m in batches:
                launch = _launch(plan, n, m, gpu, cupy, registers)
                row = {"format": name, "M": m, "K": k, "N": n, "launch": launch.describe(), "kernel": launch.kernel,
                       "bits_per_weight": qt.bits_per_weight, "counts_of": counts_of or name}
                try:
                    if launch.kernel == "dequantize_then_torch":
                        raise UncountedLaunch("no hwlab kernel reads it at this group size (matmul dequantizes, "
                                              "then multiplies in torch): nothing to predict")
                    if counts_of not in (None, name):
                        other = _launch(_quantized(quantized, counts_of, k, group_size)[1], n, m, gpu, cupy,
                                        registers)
                        if other.describe() != launch.describe():
                            raise UncountedLaunch(f"--counts-of {counts_of}: its launch here is '{other.describe()}', "
                                                  "another kernel's than this one's, so its counts do not apply")
                    row |= predict(gpu, counts_of or name, m, k, n, bits_per_weight=qt.bits_per_weight,
                                   launch=launch, registers=registers).to_json()
                except UncountedLaunch as exc:  # only a launch the model has no count of: its row says why
                    row |= {"error": str(exc)}
                out.append(row)
    return out


def _quantized(cache: dict, name: str, k: int, group_size):
    """``name``'s tensor of :data:`ROWS` rows of Gaussian weights of ``k`` columns and its kernel plan (made once a
    format and K)."""
    import numpy as np

    import hwlab.formats as F
    from hwlab.kernels.plan import build_plan

    if (name, k) not in cache:
        weights = (np.random.default_rng(k).standard_normal((ROWS, k)) * 0.02).astype(np.float32)
        try:
            qt = F.quantize(weights, name, pad=True,  # K of any length, as matmul takes it
                            **({} if group_size is None else {"group_size": group_size}))
        except ValueError as exc:
            raise UsageError(f"--format {name} at --shape K={k}"
                             f"{'' if group_size is None else f' --group-size {group_size}'}: {exc}") from None
        cache[name, k] = qt, build_plan(qt)
    return cache[name, k]


def _launch(plan, n: int, m: int, gpu, cupy: bool, registers):
    """The launch ``matmul`` takes for ``m`` rows of fp16 x and ``plan`` at ``n`` rows (see :func:`rows`)."""
    from hwlab.kernels import cupy_kernels, dispatch

    layer = dataclasses.replace(plan, shape=(n, plan.shape[1]))
    if cupy and dispatch.mma_plan_applies(layer, m, "float16"):
        launch = dispatch.mma_launch(cupy_kernels.mma_launch_plan(layer, m, sms=gpu.sms), cupy_kernels.MMA_WARPS)
    else:
        launch = dispatch.choose(layer, m, gpu.sms)
    if registers is not None and launch.kernel in dispatch.REGISTER_CAPPED:
        launch = dataclasses.replace(launch, registers=registers)  # compiled to them: the cap is theirs
    return launch


def run(args) -> None:
    from hwlab.kernels.dispatch import MAX_REGISTERS, MIN_REGISTERS

    if args.registers is not None and not MIN_REGISTERS <= args.registers <= MAX_REGISTERS:
        raise UsageError(f"--registers {args.registers}: expected a whole number from {MIN_REGISTERS} to "
                         f"{MAX_REGISTERS} (a thread's registers, as Triton's maxnreg takes them)")
    gpu = gpu_config(args.preset, args.changes)
    shapes = [tuple(s) for s in args.shape] if args.shape else list(SHAPES)
    found = rows(args.formats, args.m, shapes, gpu, args.group_size, args.registers, cupy=not args.no_cupy,
                 counts_of=args.counts_of)
    notes = ([f"every row is predicted with the instruction counts of {args.counts_of}"] if args.counts_of else [])
    notes += ["the instruction counts are of each format's default group size"] if args.group_size is not None else []
    if args.json:
        print_json({"gpu": dataclasses.asdict(gpu), "notes": notes, "rows": found})
        return
    table = [[r["format"], str(r["M"]), str(r["K"]), str(r["N"]), r["kernel"], cell(round(r["bits_per_weight"], 4))]
             + (["-"] * 6 if "error" in r else
                [str(r["warps_per_sm"]), f"{r['memory_us']:.1f}", f"{r['decode_us']:.1f}", r["bound"],
                 f"{r['graph_us']:.1f}", f"{r['us']:.1f}"]) for r in found]
    if not args.markdown:
        print(f"GPU model {gpu.name}: {gpu.sms} SMs, {gpu.copy_gbps:g} GB/s copy (predictions, not measurements)")
    print(render(list(COLUMNS), table, markdown=args.markdown))
    for note in notes:
        print(f"note: {note}")
    for r in found:
        if "error" in r:
            print(f"{r['format']} M={r['M']} K={r['K']} N={r['N']}: {r['error']}")
