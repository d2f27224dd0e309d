"""GPU: hwlab's kernels timed under other launch constants, one process (the study behind the tiles
and pipeline depths that :mod:`hwlab.kernels.dispatch` chooses).

Each ``--variant`` is a list of assignments, separated by ``;``, to constants of
``hwlab.kernels.dispatch`` (``HALF_TILE=(32, 128, 1)``, ``STAGES['tile']=3``) or of
``hwlab.kernels.async_mixed`` (``async_mixed.GEMV_BN=32``) or of ``hwlab.kernels.trip``
(``trip.TRIP_WARPS=2``) or of ``hwlab.kernels.cupy_kernels`` (``cupy_kernels.MMA_PREFETCH[2]=4``, as
``bench/cupy_mma_probe.py`` takes them too); the previous variant's are undone first,
an empty variant is the shipped configuration. Every variant times ``--formats`` (and, with
``--mixed``, the synchronous, asynchronous and CuPy mixed_2_4 GEMVs; with ``--trip``, the TRIP
kernels) as ``bench/gpu_kernels.py``
does: weights rotated past the L2, do_bench medians and CUDA-graph times, the copy bandwidth of the
same run. ``gpu_kernels.json`` in ``--out`` holds every row with its ``variant``.

    python bench/gpu_launch_variants.py --out DIR --formats int4 nf4 --batches 1 \\
        --variant "" --variant "HALF_TILE=(256, 16, 1); OTHER_TILE=(128, 16, 1)"
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import gpu_kernels as bench
from hwlab.kernels import async_mixed, cupy_kernels, dispatch, trip

MODULES = {"dispatch": dispatch, "async_mixed": async_mixed, "trip": trip, "cupy_kernels": cupy_kernels}


def statements(variant: str) -> list[tuple[object, str, str]]:
    """``(module, constant, statement)`` of each assignment of ``variant`` (``statement`` without its
    ``async_mixed.`` prefix, to run in that module's namespace)."""
    found = []
    for statement in filter(str.strip, variant.split(";")):
        target = statement.split("=")[0].split("[")[0].strip()
        prefix, _, name = target.rpartition(".")
        module = MODULES.get(prefix or "dispatch")
        if module is None or not hasattr(module, name):
            raise SystemExit(f"--variant {variant!r}: {target!r} is not a constant of {' or '.join(MODULES)}")
        code = statement.strip().removeprefix(f"{prefix}.") if prefix else statement.strip()
        try:
            compile(code, "--variant", "exec")
        except SyntaxError as exc:
            raise SystemExit(f"--variant {variant!r}: {code!r} is not a Python assignment ({exc.msg})") from None
        found.append((module, name, code))
    return found


def apply(variant: str, saved: dict) -> None:
    """Undo every earlier variant (``saved``: the shipped values), then run ``variant``'s assignments."""
    for (module, name), value in saved.items():
        setattr(module, name, copy.deepcopy(value))
    for module, name, statement in statements(variant):
        saved.setdefault((module, name), copy.deepcopy(getattr(module, name)))
        exec(statement, vars(module))  # noqa: S102 (the user's own assignment, on their own machine)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--formats", nargs="*", default=[])
    parser.add_argument("--batches", nargs="*", type=int, default=[1])
    parser.add_argument("--mixed", action="store_true", help="also the mixed_2_4 sync / async / CuPy GEMVs")
    parser.add_argument("--trip", action="store_true", help="also the TRIP W4A8 / W4A4 kernels (Triton and CuPy)")
    parser.add_argument("--all-shapes", action="store_true", help="the four benchmark shapes (default: smallest, largest)")
    parser.add_argument("--cublas", action="store_true", help="also cuBLAS fp16 once, before the variants (the baseline)")
    parser.add_argument("--variant", action="append", required=True)
    args = parser.parse_args(argv)
    for variant in args.variant:
        statements(variant)  # every variant checked before the GPU is touched
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_launch_variants.py times CUDA kernels: torch.cuda.is_available() is False here")
    run = bench.Run(args.out)
    bench.environment(run)
    bench.copy_bandwidth(run)
    shapes = bench.SHAPES if args.all_shapes else [bench.SHAPES[0], bench.SHAPES[-1]]
    if args.cublas:
        bench.cublas(run, shapes, args.batches)
    saved: dict = {}
    for variant in args.variant:
        apply(variant, saved)
        print(f"== variant {variant!r}", flush=True)
        first = len(run.doc["rows"])
        if args.formats:
            bench.hwlab_formats(run, args.formats, shapes, args.batches, "h200")
        if args.mixed:
            bench.async_mixed(run, shapes, args.batches, "h200")
        if args.trip:
            bench.trip(run, shapes, args.batches, "h200")
        for row in run.doc["rows"][first:]:
            row["variant"] = variant
        run.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
