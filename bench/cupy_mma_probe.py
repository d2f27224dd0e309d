"""GPU: the CuPy integer MMA kernel (``hwlab.kernels.cupy_kernels.int_mma_cupy``) beside ``hwlab.kernels.matmul``
(the Triton path) on the same tensors: correctness against the float64 reference, then times as
``bench/gpu_kernels.py`` takes them (weights rotated past the L2, do_bench medians and CUDA-graph times).

Each ``--variant`` is a list of assignments to launch constants, separated by ``;``, as
``bench/gpu_launch_variants.py`` takes them (``cupy_kernels.MMA_WARPS=4; cupy_kernels.MMA_PREFETCH[1]=3``); the
previous variant's are undone first, an empty variant is the shipped configuration. One line per (format, M,
variant); ``cupy_mma.json`` in ``--out``.

    python bench/cupy_mma_probe.py --out DIR --variant "" --variant "cupy_kernels.MMA_WARPS=4" \
        --variant "cupy_kernels.MMA_TILES=2"
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import gpu_kernels as bench
from gpu_launch_variants import apply, statements
from hwlab.kernels import cupy_kernels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--formats", nargs="*", default=["int4", "int4_asym", "int8", "int2"])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 4, 16])
    parser.add_argument("--k", type=int, default=8192)
    parser.add_argument("--n", type=int, default=28672)
    parser.add_argument("--no-triton", action="store_true", help="skip hwlab.kernels.matmul beside it")
    parser.add_argument("--variant", action="append", default=None)
    args = parser.parse_args(argv)
    variants = args.variant or [""]
    for variant in variants:
        statements(variant)  # every variant checked before the GPU is touched
    import numpy as np
    import torch
    from hwlab.kernels import matmul
    from hwlab.kernels.testing import clone, worst_error

    if not torch.cuda.is_available():
        raise SystemExit("cupy_mma_probe.py times CUDA kernels: torch.cuda.is_available() is False here")
    from hwlab.kernels import dispatch

    rng = np.random.default_rng(0)
    rows, k, n = [], args.k, args.n
    run = bench.Run(args.out)  # its env: GPU, versions, date, commit (bench/gpu_kernels.py)
    bench.environment(run)
    bench.copy_bandwidth(run)
    import cupy

    run.doc["env"]["cupy"] = cupy.__version__
    saved: dict = {}
    for fmt in args.formats:
        qt = bench.tiled_tensor(fmt, k, n, rng)
        first = qt.to("cuda")
        items = [first] + [clone(first) for _ in range(bench.copies_for(first.nbytes) - 1)]
        for m in args.batches:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            out = torch.empty(m, n, device="cuda", dtype=torch.float16)
            runs = [("triton", "", lambda w: matmul(x, w, out=out))] if not args.no_triton else []
            runs += [("cupy_mma", v, lambda w: cupy_kernels.int_mma_cupy(x, w, out=out)) for v in variants]
            for name, variant, call in runs:
                apply(variant, saved)
                dispatch.CUPY_MMA = name != "triton"  # matmul's Triton kernels, not its dispatch to this one
                row = dict(name=name, variant=variant, format=fmt, M=m, K=k, N=n, bytes=first.nbytes + 2 * m * (k + n))
                try:
                    out.fill_(float("nan"))
                    call(first)
                    torch.cuda.synchronize()
                    row["worst_error"] = worst_error(out, x, qt)
                    row["us"] = bench.bench_ms(bench.rotating(call, items)) * 1e3
                    row["us_graph"] = bench.graph_us([(lambda w=items[i % len(items)]: call(w))
                                                      for i in range(bench.GRAPH_CALLS)])
                    if name == "cupy_mma":
                        row["launch"] = cupy_kernels.mma_launch_plan(
                            first.plan, m, str(first.arrays["scales"].dtype).removeprefix("torch."),
                            torch.cuda.get_device_properties(0).multi_processor_count)
                    us = row["us_graph"] or row["us"]
                    row["TBps"] = row["bytes"] / (us * 1e-6) / 1e12
                    print(f"{name:9s} {fmt:10s} M={m:2d} K={k} N={n} {row['us']:8.1f} us graph "
                          f"{row['us_graph'] or float('nan'):7.1f} us {row['TBps']:5.2f} TB/s "
                          f"error {row['worst_error']:.3f} x tol  {variant!r}", flush=True)
                except Exception as e:  # one failing variant does not stop the others
                    row["error"] = f"{type(e).__name__}: {e}"
                    print(f"{name:9s} {fmt:10s} M={m:2d} FAILED {row['error'][:200]}  {variant!r}", flush=True)
                rows.append(row)
                with open(os.path.join(args.out, "cupy_mma.json"), "w") as f:
                    json.dump(dict(env=run.doc["env"], rows=rows), f, indent=1)
        apply("", saved)
        dispatch.CUPY_MMA = True
        del items, first
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
