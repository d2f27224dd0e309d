"""Static instruction counts of hwlab's Triton kernels, compiled for sm_90 without a GPU.

For every benchmark format and batch kind (M = 1, 16, 64) this compiles the kernel that
``hwlab.kernels.matmul`` would launch for a K=8192, N=28672 layer (``triton.compile`` with the
ptxas and cuobjdump that ship in the triton wheel), counts the SASS instructions of its main
loop and divides by the codes the loop decodes per thread: the "dequantization work" term of
the GPU model in :mod:`hwlab.sim.gpu`. Writes ``sim/data/kernel_instructions.json``.

    python bench/kernel_instructions.py            # about two minutes on 2 cores
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import types

import numpy as np

FORMATS = ["int4", "int4_asym", "int2", "int3", "int8", "nf4", "fp4_e2m1", "fp4_e1m2", "fp4_e3m0", "flint4",
           "bitmod_fp4", "bitmod_fp3", "shift4", "ternary", "mxfp4", "nvfp4", "mixed_2_4", "olive4", "fp8_e4m3"]
BATCHES = (1, 16, 64)
K, N = 8192, 28672  # the largest benchmark layer (Llama-3-70B-like MLP)
SM90 = ("cuda", 90, 32)
TORCH_TYPES = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32", "int32": "*i32", "int16": "*i16",
               "uint8": "*u8"}
SASS_LINE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)(.*)")


def loop_instructions(sass: str) -> tuple[int, dict]:
    """Instructions in the longest backward-branch loop of a SASS listing, and their opcodes."""
    ins = [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(SASS_LINE.match, sass.splitlines()) if m]
    loops = []
    for address, op, rest in ins:
        target = re.match(r"\s+0x([0-9a-f]+)", rest)
        if op == "BRA" and target and int(target.group(1), 16) < address:
            loops.append((int(target.group(1), 16), address))
    if not loops:
        return 0, {}
    lo, hi = max(loops, key=lambda t: t[1] - t[0])
    body = [op for address, op, _ in ins if lo <= address <= hi]
    return len(body), dict(collections.Counter(body).most_common(8))


class Recorder:
    """Stands in for a Triton kernel: compiles the launch it is given for sm_90 and counts it."""

    def __init__(self, fn, results):
        self.fn, self.results = fn, results

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
                if name in ("num_warps", "num_stages"):
                    options[name] = v
                else:
                    signature[name], constants[name] = "constexpr", v
            compiled = triton.compile(ASTSource(fn=self.fn, signature=signature, constexprs=constants, attrs=attrs),
                                      target=GPUTarget(*SM90), options=options)
            tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(compiled.asm["cubin"])
                f.flush()
                sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
                usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
            count, ops = loop_instructions(sass)
            registers = re.search(r"REG:(\d+)", usage)
            self.results.append(dict(loop_instructions=count, opcodes=ops, registers=int(registers.group(1)),
                                     spills="LDL" in ops or "STL" in ops, warps=options.get("num_warps", 4)))
        return call


def count(formats=FORMATS, batches=BATCHES) -> list[dict]:
    import torch

    import hwlab.formats as F
    from hwlab.kernels import dispatch, triton_kernels

    results, rows = [], []
    fake = types.SimpleNamespace(**{name: Recorder(getattr(triton_kernels, name), results)
                                    for name in ("gemv_words_kernel", "gemv_mixed_kernel", "tile_kernel",
                                                 "dequantize_kernel")})
    dispatch._kernels = lambda: fake
    dispatch.interpreted = lambda: False
    rng = np.random.default_rng(0)
    for name in formats:
        small = F.quantize((rng.standard_normal((256, K)) * 0.02).astype(np.float32), name)
        dev = small.to("cpu")
        for m in batches:
            launch = dispatch.choose(dev.plan, m, sms=132)
            x = torch.zeros(m, K, dtype=torch.float16)
            before = len(results)
            dispatch.run(x, dev, torch.empty(m, 256, dtype=torch.float16), launch)
            if len(results) == before:
                continue
            r = results[-1]
            threads = 32 * r["warps"]
            codes = launch.bn * launch.ks / threads  # codes one thread decodes per loop iteration
            rows.append(dict(format=name, m=m, kernel=launch.kernel, decode=launch.decode, bn=launch.bn,
                             bm=launch.bm, ks=launch.ks, instructions_per_code=round(r["loop_instructions"] / codes, 3),
                             **r))
            print(f"{name:12s} M={m:3d} {launch.kernel:10s} {r['loop_instructions']:5d} instr/iter "
                  f"{rows[-1]['instructions_per_code']:6.2f}/code  regs {r['registers']}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "sim", "data",
                                                      "kernel_instructions.json"))
    parser.add_argument("--formats", nargs="*", default=FORMATS)
    args = parser.parse_args(argv)
    import triton

    rows = count(args.formats)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    doc = {"source": "bench/kernel_instructions.py: static SASS of the main loop, sm_90, K=8192 N=28672 launch",
           "triton": triton.__version__, "date": datetime.date.today().isoformat(), "commit": commit, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
