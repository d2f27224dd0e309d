"""``hwlab study``: every datatype on real weights, measured end to end; a report folder with plots.

::

    hwlab study                                   # all-MiniLM-L6-v2, every format, group sizes 32 64 128
    hwlab study --formats int4 nf4 --group-sizes 64 --out my-study
    hwlab study --weights model.safetensors       # your own weights (.safetensors, .npz or .npy)
    hwlab study --device cuda                     # plus QuantLinear on the GPU and measured kernel times

The folder (``--out``, default ``hwlab-study``) gets ``report.md``, ``results.csv``, ``layers.csv``,
``hardware.csv``, ``results.json`` and PNG plots (with ``--device cuda`` also ``gpu.csv`` and a plot of
measured against predicted kernel times); it is written under a temporary name and renamed
when complete. An existing non-empty folder is replaced only with ``--force``. ``--json`` prints
the results (without the per-layer rows, which are in ``results.json``) as strict JSON.
"""
from __future__ import annotations

import os
import pathlib

from hwlab.output import UsageError, cell, print_json, render

DEFAULT_OUT = "hwlab-study"


def add_parser(commands, add_output_flags) -> None:
    p = commands.add_parser("study", help="every format on real weights (MiniLM-L6 by default): a report with plots")
    p.add_argument("--weights", metavar="FILE", help="study these weights instead (.safetensors, .npz or .npy: every "
                                                     "2-D floating-point tensor is a linear layer [out, in])")
    p.add_argument("--formats", nargs="+", metavar="NAME", help="formats to study (default: every registered one)")
    p.add_argument("--group-sizes", nargs="+", type=int, metavar="G", help="group sizes (default: 32 64 128)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"report folder (default: {DEFAULT_OUT})")
    p.add_argument("--force", action="store_true", help="let --out replace an existing non-empty folder")
    p.add_argument("--workers", type=int, metavar="N", help="processes, one thread each (default: one per core)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default); cuda adds the quantized encoder through QuantLinear and measured kernel "
                        "times beside the GPU model's predictions (needs the gpu extra and a CUDA GPU)")
    add_output_flags(p)
    p.set_defaults(run=run)


def run(args) -> None:
    from hwlab.study import run_study
    from hwlab.study.measure import DEFAULT_GROUP_SIZES
    from hwlab.study.report import best_per_budget, check_out, quality, write_report

    if args.device == "cuda":
        from hwlab.study.gpu import check_device

        try:
            check_device()
        except RuntimeError as exc:
            raise UsageError(str(exc)) from None
    out = pathlib.Path(args.out)
    check_out(out, args.force)
    if args.weights is not None:
        if args.weights == "":
            raise UsageError("--weights is empty; name a .safetensors, .npz or .npy file")
        weights = pathlib.Path(args.weights)
        if out.exists() and weights.resolve().is_relative_to(out.resolve()):
            raise UsageError(f"--weights {weights} is inside --out {out}, which the study replaces; move it first")
    workers = os.cpu_count() or 1 if args.workers is None else args.workers
    result = run_study(args.weights, args.formats, args.group_sizes or DEFAULT_GROUP_SIZES, workers=workers,
                       device=args.device)
    write_report(result, out, force=args.force)
    budgets = best_per_budget(result.variants)
    if args.json:
        data = {k: v for k, v in result.to_dict().items() if k != "layer_rows"}
        data["best_per_budget"] = [{"budget": b["budget"], "best": b["best"], "runner_up": b["runner_up"]}
                                   for b in budgets]
        print_json({"out": str(out), **data})
        return
    print(f"{result.source}: {len(result.variants)} variants in {result.meta['seconds']:.0f} s; "
          f"{len(result.not_applicable)} not applicable")
    measure = "cosine mean" if result.variants and "cosine_mean" in result.variants[0] else "SQNR dB"
    print(render(["bits/w budget", "best", "bits/w", measure],
                 [[cell(b["budget"]), f"{b['best']['format']} g{b['best']['group_size']}",
                   f"{b['best']['bits_per_weight']:.4g}", f"{quality(b['best']):.5g}"] for b in budgets]))
    print(f"wrote {out / 'report.md'} (and CSV, JSON, PNG plots)")

