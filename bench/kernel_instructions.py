"""Static instruction counts of hwlab's Triton kernels, compiled for sm_90 without a GPU.

For every benchmark format and batch kind (M = 1, 16, 64) this compiles the kernel that
``hwlab.kernels.matmul`` would launch for a K=8192, N=28672 layer (``triton.compile`` with the
ptxas and cuobjdump that ship in the triton wheel), counts the SASS instructions of its main
loop by opcode and divides by the codes the loop decodes per thread (``instructions_per_code``),
and weighs them by the pipe each opcode issues to (``weighted_per_code``: issue slots a code costs
on the busiest pipe, :data:`PIPES`): the "dequantization work" term of the GPU model in
:mod:`hwlab.sim.gpu`. Writes ``sim/data/kernel_instructions.json``.

    python bench/kernel_instructions.py            # about five minutes on 2 cores
    python bench/kernel_instructions.py --formats int5 int6 --kernels triton --merge   # more formats, in place

Count with the Triton the GPU machine runs (its compiler decides registers, spills and the loop): the table's
``triton`` field says which counted it. ``sim/data/kernel_instructions.json`` was counted with triton 3.6.0, the GPU
machine's, installed beside the local one (``pip install --no-deps --target DIR triton==3.6.0``, then
``PYTHONPATH=DIR``); triton 3.9 spills int2's capped GEMV at 128 registers, which 3.6 does not.
    python bench/kernel_instructions.py --kernels int_mma --merge    # the CUDA tensor-core kernel (nvcc)

``--variant`` counts the launches under other dispatch constants, and prints each beside the GPU model's prediction
from its own counts (registers, spill code and all), leaving the table as it is:

    python bench/kernel_instructions.py --formats int5 --batches 1 --variant "" --variant "TILE_MAX_REGISTERS={5: 168}"
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np

FORMATS = ["int4", "int4_asym", "int2", "int3", "int8", "nf4", "fp4_e2m1", "fp4_e1m2", "fp4_e3m0", "flint4",
           "bitmod_fp4", "bitmod_fp3", "shift4", "ternary", "mxfp4", "nvfp4", "mixed_2_4", "olive4", "fp8_e4m3"]
BATCHES = (1, 16, 64)
K, N = 8192, 28672  # the largest benchmark layer (Llama-3-70B-like MLP)
ROWS = 512  # rows quantized for the count (the launch is the N x K one's): at least its rows per program
SM90 = ("cuda", 90, 32)
TORCH_TYPES = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32", "int32": "*i32", "int16": "*i16",
               "uint8": "*u8", "int8": "*i8"}
SASS_LINE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)(.*)")


# Issue rates of sm_90 in warp instructions per clock per SM, by the pipe an opcode goes to: the
# results per clock per SM of the NVIDIA CUDA C++ Programming Guide's arithmetic-instruction
# throughput table, compute capability 9.0 (32-bit float add/multiply/fma 128; 16-bit half2 256 results,
# 128 lanes; 32-bit integer add/multiply/compare/bitwise/shift 64; warp shuffle 32; conversions and
# special functions 16), divided by the 32 lanes of a warp; the issue limit is one warp instruction per
# clock per scheduler, 4 per SM (NVIDIA H100 white paper). Shared and global memory instructions go
# through the MIO/LSU queue at one warp instruction a clock (32 banks x 4 bytes a clock, the guide's
# shared-memory section); HMMA m16n8k16 at about one a clock per SM (989 dense fp16 TFLOPS, H100 SXM
# datasheet: ~1900 FMA per clock per SM, 2048 per HMMA).
ISSUE_RATE = 4.0
PIPES = {
    "fma": (4.0, ("FFMA", "FADD", "FMUL", "FMNMX", "HADD2", "HFMA2", "HMUL2", "HMNMX2", "FSEL", "FSETP")),
    "alu": (2.0, ("LOP3", "SHF", "IADD3", "ISETP", "SEL", "LEA", "PRMT", "SGXT", "IMNMX", "VIADD", "VIMNMX", "IMAD",
                  "IABS", "PLOP3", "LOP", "IADD", "SHL", "SHR", "BMSK", "FLO", "POPC", "BREV", "P2R", "R2P", "ICMP")),
    "shfl": (1.0, ("SHFL",)),
    "mio": (1.0, ("LDS", "STS", "LDSM", "LDG", "STG", "LDGSTS", "LDL", "STL", "ATOM", "ATOMS", "RED", "ATOMG", "BAR",
                  "LDC", "LD", "ST")),
    "xu": (0.5, ("F2F", "F2I", "I2F", "F2FP", "I2FP", "MUFU", "FRND")),
    "tensor": (1.0, ("HMMA",)),
}


def weighted_cycles(opcodes: dict) -> tuple[float, dict]:
    """Clocks per SM of one warp's loop iteration: the busiest of the issue slot and the pipes
    (``count / rate`` each, :data:`PIPES`), and every pipe's clocks."""
    pipes = {"issue": sum(opcodes.values()) / ISSUE_RATE}
    for pipe, (rate, ops) in PIPES.items():
        pipes[pipe] = sum(n for op, n in opcodes.items() if op in ops) / rate
    return max(pipes.values()), {k: round(v, 2) for k, v in pipes.items()}


def loop_instructions(sass: str, containing: str | None = None) -> tuple[int, dict]:
    """Instructions in the longest backward-branch loop of a SASS listing, and their opcodes; with
    ``containing``, in the shortest loop whose body holds that opcode (the innermost loop of a kernel whose outer
    loop wraps it: ``int_mma``'s chunk loop inside its row-block loop)."""
    ins = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(SASS_LINE.match, sass.splitlines()) if m]
    loops = []
    for address, op, rest in ins:
        target = re.match(r"\s+0x([0-9a-f]+)", rest)
        if op == "BRA" and target and int(target.group(1), 16) < address:
            loops.append((int(target.group(1), 16), address))
    if containing:
        loops = [(lo, hi) for lo, hi in loops
                 if any(op == containing for address, op, _ in ins if lo <= address <= hi)]
    if not loops:
        return 0, {}
    lo, hi = (min if containing else max)(loops, key=lambda t: t[1] - t[0])
    body = [op for address, op, _ in ins if lo <= address <= hi]
    return len(body), dict(collections.Counter(body).most_common())


def cubin_counts(cubin: str, *, warps: int, shared_bytes: int, containing: str | None = None) -> dict:
    """The counts of the kernel in the cubin file ``cubin`` (cuobjdump from the triton wheel): its loop's
    instructions and opcodes (:func:`loop_instructions`), registers, whether it spills, and the given launch
    facts."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    sass = subprocess.run([tool, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    usage = subprocess.run([tool, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    count, ops = loop_instructions(sass, containing)
    return dict(loop_instructions=count, opcodes=ops, registers=int(re.search(r"REG:(\d+)", usage).group(1)),
                spills="LDL" in ops or "STL" in ops, warps=warps, shared_bytes=shared_bytes)


class Recorder:
    """Stands in for a Triton kernel: compiles the launch it is given for sm_90 and counts it."""

    def __init__(self, fn, results):
        self.fn, self.results = fn, results
        self.arg_names = fn.arg_names

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            import torch
            import triton
            from triton.backends.compiler import GPUTarget
            from triton.compiler import ASTSource

            signature, constants, attrs, options = {}, {}, {}, {}
            for i, (name, a) in enumerate(zip(self.fn.arg_names, args)):
                if isinstance(a, torch.Tensor):
                    signature[name] = TORCH_TYPES[str(a.dtype).removeprefix("torch.")]
                    attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
                elif isinstance(a, float):
                    signature[name] = "fp32"
                else:
                    signature[name] = "i32"
                    if a % 16 == 0:
                        attrs[(i,)] = [["tt.divisibility", 16]]
            for name, v in kwargs.items():
                if name in ("num_warps", "num_stages", "maxnreg"):
                    options[name] = v
                else:
                    signature[name], constants[name] = "constexpr", v
            compiled = triton.compile(ASTSource(fn=self.fn, signature=signature, constexprs=constants, attrs=attrs),
                                      target=GPUTarget(*SM90), options=options)
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(compiled.asm["cubin"])
                f.flush()
                self.results.append(cubin_counts(f.name, warps=options.get("num_warps", 4),
                                                 shared_bytes=compiled.metadata.shared))
        return call


def count(formats=FORMATS, batches=BATCHES) -> list[dict]:
    """The table's rows of ``formats`` at ``batches`` (:func:`counted`)."""
    return [row for row, _, _ in counted(formats, batches)]


def counted(formats=FORMATS, batches=BATCHES):
    """``(row, launch, bits_per_weight)`` of every launch ``matmul`` chooses for ``formats`` at ``batches`` rows of
    x, K=8192 N=28672, under dispatch's constants as they are: its table row (:func:`_row`), the
    :class:`~hwlab.kernels.dispatch.Launch` and the tensor's stored bits a weight."""
    import torch

    import hwlab.formats as F
    from hwlab.kernels import dispatch, triton_kernels

    results = []
    fake = types.SimpleNamespace(**{name: Recorder(getattr(triton_kernels, name), results)
                                    for name in ("gemv_words_kernel", "gemv_mixed_kernel", "tile_kernel",
                                                 "dequantize_kernel")})
    dispatch._kernels = lambda: fake
    dispatch.interpreted = lambda: False
    rng = np.random.default_rng(0)
    for name in formats:
        small = F.quantize((rng.standard_normal((ROWS, K)) * 0.02).astype(np.float32), name)
        dev = small.to("cpu")
        for m in batches:
            launch = dispatch.choose(dataclasses.replace(dev.plan, shape=(N, K)), m, sms=132)  # the N x K launch
            x = torch.zeros(m, K, dtype=torch.float16)
            before = len(results)
            dispatch.run(x, dev, torch.empty(m, ROWS, dtype=torch.float16), launch)
            if len(results) == before:
                continue
            yield (_row(name, m, launch.kernel, launch.decode, launch.bn, launch.bm, launch.ks, results[-1]), launch,
                   small.bits_per_weight)


def _row(name: str, m: int, kernel: str, decode: str, bn: int, bm: int, ks: int, r: dict) -> dict:
    """One table row: counts of a compiled loop ``r`` (:class:`Recorder`) per code one thread decodes."""
    codes = bn * ks / (32 * r["warps"])  # codes one thread decodes per loop iteration
    cycles, pipes = weighted_cycles(r["opcodes"])
    row = dict(format=name, m=m, kernel=kernel, decode=decode, bn=bn, bm=bm, ks=ks,
               instructions_per_code=round(r["loop_instructions"] / codes, 3),
               weighted_per_code=round(ISSUE_RATE * cycles / codes, 3), pipe_clocks=pipes, **r)
    print(f"{name:12s} M={m:3d} {kernel:16s} {decode:5s} {r['loop_instructions']:5d} instr/iter {row['instructions_per_code']:6.2f}"
          f"/code weighted {row['weighted_per_code']:6.2f}  regs {r['registers']}{' SPILLS' if r['spills'] else ''}",
          flush=True)
    return row


def count_async_and_trip(batches=BATCHES) -> list[dict]:
    """The asynchronous mixed_2_4 kernels (hwlab.kernels.async_mixed) and TRIP's int8 kernel
    (hwlab.kernels.trip), launched as at K=8192 N=28672; rows named ``mixed_gemv_async``,
    ``mixed_tile_async`` (format mixed_2_4) and ``trip_int8`` (format ``trip_w4a8``)."""
    import torch

    import hwlab.formats as F
    from hwlab.kernels import async_mixed, dispatch, mixed_async_kernels, trip, trip_kernels
    from hwlab.sim.trip import trip_quantize

    dispatch.interpreted = lambda: False
    dispatch.check_runnable = lambda device: None
    results, rows = [], []
    for module, names in ((mixed_async_kernels, ("mixed_gemv_async_kernel", "mixed_tile_async_kernel")),
                          (trip_kernels, ("trip_int8_kernel",))):
        for name in names:
            setattr(module, name, Recorder(getattr(module, name), results))
    rng = np.random.default_rng(0)
    dev = F.quantize((rng.standard_normal((256, K)) * 0.02).astype(np.float32), "mixed_2_4").to("cpu")
    layer = trip.TripWeights.from_layer(trip_quantize(rng.standard_normal((256, K)), rng.standard_normal((4, K))),
                                        "cpu")
    for m in batches:
        x = torch.zeros(m, K, dtype=torch.float16)
        async_mixed.mixed_matmul(x, dev)
        launch = dev.prepared[("async", x.shape, x.dtype, x.device)].launch  # the tile the layer takes
        rows.append(_row("mixed_2_4", m, launch.kernel, "int", launch.bn, launch.bm, dev.group_size, results[-1]))
        trip.trip_accumulate(torch.zeros(m, K, dtype=torch.int8), layer)
        rows.append(_row("trip_w4a8", m, "trip_int8", "int", trip.TRIP_BN, trip.TRIP_BM, trip.TRIP_KS, results[-1]))
    return rows


# int_mma's kernels of 1, 2 and 4 batch tiles of 8 rows (cupy_kernels.mma_batch_tiles: 33-64 rows take M-blocks of
# four; the eight-tile rows of bm = 64 in sim/data/kernel_instructions.json were counted with MMA_M_BLOCK_TILES = 8)
MMA_BATCHES = (4, 16, 32)


def nvcc() -> str:
    """The CUDA compiler for the int_mma counts (``$NVCC``, else ``nvcc`` on the PATH, else the default
    install), or a SystemExit saying it is missing."""
    found = os.environ.get("NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(found):
        raise SystemExit("--kernels int_mma needs nvcc (CUDA 12.3 or later for sm_90; set NVCC=/path/to/nvcc)")
    return found


def count_int_mma(formats=FORMATS, batches=MMA_BATCHES) -> list[dict]:
    """``kernels/cuda/int_mma.cu`` as ``cupy_kernels.int_mma_cupy`` launches it at K=8192 N=28672, compiled for
    sm_90 by nvcc, its chunk loop counted (the innermost loop that holds HMMA: 2 D chunks an iteration); rows
    named ``int_mma_cupy`` with ``bm`` the batch rows of its tiles (8, 16, 32 or 64) and ``ks`` the codes of a row an
    iteration (``2 D`` chunks, or ``A`` with cp.async stages), for every format the kernel reads."""
    import hwlab.formats as F
    from hwlab.kernels import cupy_kernels as ck
    from hwlab.kernels.plan import build_plan

    rng = np.random.default_rng(0)
    rows = []
    for name in formats:
        qt = F.quantize((rng.standard_normal((ROWS, K)) * 0.02).astype(np.float32), name)
        plan = dataclasses.replace(build_plan(qt), shape=(N, K))
        if ck.mma_unsupported(plan):
            continue
        scale = qt.layout[plan.arrays["scales"]].dtype
        for m in batches:
            lp = ck.mma_launch_plan(plan, m, scale, sms=132)
            with tempfile.TemporaryDirectory() as tmp:
                source, cubin = os.path.join(tmp, "int_mma.cu"), os.path.join(tmp, "int_mma.cubin")
                with open(source, "w") as f:
                    f.write(ck.mma_instances([lp["name"]]))
                subprocess.run([nvcc(), "-arch=sm_90", "-std=c++17", "-cubin", "-o", cubin, source], check=True,
                               capture_output=True, text=True)
                r = cubin_counts(cubin, warps=ck.MMA_WARPS, shared_bytes=lp["shared"], containing="HMMA")
            chunks = lp["stages"] or 2 * lp["prefetch"]  # an iteration: A stages, or the two register sets of D
            rows.append(_row(name, m, "int_mma_cupy", lp["decode"], lp["rows"], 8 * lp["nj"],
                             chunks * lp["codes_per_chunk"], r))
    return rows


def merged(path: str, rows: list[dict]) -> list[dict]:
    """The rows of the table at ``path`` with ``rows`` in place of those of the same (format, m, kernel), then
    the new ones."""
    key = lambda r: (r["format"], r["m"], r["kernel"])  # noqa: E731
    fresh = {key(r): r for r in rows}
    try:
        with open(path) as f:
            old = json.load(f)["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--merge: {path} is not a kernel_instructions.json table ({type(exc).__name__}: {exc})"
                         ) from None
    kept = [fresh.pop(key(r), r) for r in old]
    return kept + list(fresh.values())


def compare_variants(formats, batches, variants, gpu_model: str) -> list[dict]:
    """Every launch of ``formats`` at ``batches`` counted under each of ``variants`` (assignments to dispatch's
    constants, as ``gpu_launch_variants.py --variant`` takes them; ``""``: the shipped launch), each row with its
    ``variant`` and the GPU model's prediction from its own counts (``predicted_graph_us``, ``warps_per_sm``: preset
    ``gpu_model``, K=8192 N=28672). The shipped constants are restored after."""
    from gpu_launch_variants import apply, statements

    from hwlab.sim import gpu

    for variant in variants:
        statements(variant)  # every variant checked before the first compile
    saved, rows = {}, []
    try:
        for variant in variants:
            apply(variant, saved)
            for row, launch, bits in counted(formats, batches):
                p = gpu.predict(gpu_model, row["format"], row["m"], K, N, bits_per_weight=bits, launch=launch,
                                counts=row)
                rows.append(dict(row, variant=variant, gpu_model=gpu_model, predicted_graph_us=round(p.graph_us, 1),
                                 warps_per_sm=p.warps_per_sm))
    finally:
        apply("", saved)
    return rows


def variant_table(rows: list[dict]) -> str:
    """:func:`compare_variants`' rows, one line each."""
    lines = ["format     M  variant                                   kernel      regs LDL+STL instr/code weighted "
             "warps/SM  predicted us"]
    for r in rows:
        spills = r["opcodes"].get("LDL", 0) + r["opcodes"].get("STL", 0)
        lines.append(f"{r['format']:10s} {r['m']:2d}  {r['variant'] or '(shipped)':40.40s}  {r['kernel']:10s} "
                     f"{r['registers']:4d} {spills:7d} {r['instructions_per_code']:10.2f} "
                     f"{r['weighted_per_code']:8.2f} {r['warps_per_sm']:8d}  {r['predicted_graph_us']:12.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="the table to write (default sim/data/kernel_instructions.json); with --variant, "
                                      "a new JSON file of the variants' rows (none written if not named)")
    parser.add_argument("--formats", nargs="*", default=FORMATS)
    parser.add_argument("--batches", nargs="*", type=int, default=BATCHES)
    parser.add_argument("--kernels", choices=["all", "triton", "int_mma"], default="all",
                        help="which kernels to count: the Triton ones, int_mma (CUDA C++, needs nvcc) or both")
    parser.add_argument("--merge", action="store_true",
                        help="replace only the counted rows of --out (same format, M and kernel), keep the others")
    parser.add_argument("--variant", action="append",
                        help="count the Triton launches under these assignments to dispatch's constants (as "
                             "gpu_launch_variants.py's; '' the shipped ones) and print each beside the GPU model's "
                             "prediction from its own counts; repeat to compare; the table is left as it is")
    parser.add_argument("--gpu-model", default="h100", help="the preset of --variant's predictions (default h100)")
    args = parser.parse_args(argv)
    import triton

    if args.variant is not None:
        from hwlab.sim.gpu import get_gpu

        try:
            get_gpu(args.gpu_model)  # a preset that does not exist is refused before the first compile
        except ValueError as exc:
            raise SystemExit(f"--gpu-model: {exc}") from None
        if args.merge or args.kernels != "all":
            raise SystemExit("--variant counts the Triton launches into a table of its own: no --merge or --kernels")
        if args.out and os.path.exists(args.out):
            raise SystemExit(f"--out {args.out} exists (name a new file for the variants' rows)")
        rows = compare_variants(args.formats, args.batches, args.variant, args.gpu_model)
        print(variant_table(rows))
        if args.out:
            with open(args.out, "x") as f:
                json.dump({"source": "bench/kernel_instructions.py --variant", "triton": triton.__version__,
                           "date": datetime.date.today().isoformat(), "rows": rows}, f, indent=1)
            print(f"wrote {args.out} ({len(rows)} rows)")
        return 0
    args.out = args.out or os.path.join(os.path.dirname(__file__), "..", "sim", "data", "kernel_instructions.json")

    rows = []
    if args.kernels != "int_mma":
        rows += count(args.formats, args.batches) + count_async_and_trip(args.batches)
    if args.kernels != "triton":
        rows += count_int_mma(args.formats)  # its kernels (MMA_BATCHES), whatever --batches says
    compiler = triton.__version__
    if args.merge:
        rows = merged(args.out, rows)
        if args.kernels == "int_mma":  # nvcc counted these: the Triton rows keep the version that counted them
            with open(args.out) as f:
                compiler = json.load(f).get("triton", compiler)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    doc = {"source": "bench/kernel_instructions.py: static SASS of the main loop, sm_90, K=8192 N=28672 launch",
           "triton": compiler, "date": datetime.date.today().isoformat(), "commit": commit, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
