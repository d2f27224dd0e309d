"""``hwlab sweep``: a grid of formats, group sizes, machines and workloads, resumable, local or on Dask.

::

    hwlab sweep SPEC.toml [--out RESULTS.jsonl] [--workers N] [--dask ADDRESS | --dask local] [--force] [--json]

The spec's keys are in :mod:`hwlab.sweep`. Points run on a local process pool (default), on the
Dask scheduler at ``ADDRESS`` (``tcp://host:8786``), or on a ``LocalCluster`` (``--dask local``;
both need ``pip install "hwlab[dask]"``). Finished points go to ``RESULTS.jsonl.partial`` as they
finish; an interrupted sweep rerun with the same command computes only the points not there yet.
"""
from __future__ import annotations

import pathlib

from hwlab.output import UsageError, print_json, render


def add_parser(commands, add_output_flags) -> None:
    p = commands.add_parser("sweep", help="run a grid of formats x group sizes x machines x workloads (TOML spec)")
    p.add_argument("spec", metavar="SPEC.toml", help="the sweep's spec (keys: formats, group_sizes, hardware, "
                                                     "workloads, weights)")
    p.add_argument("--out", metavar="RESULTS.jsonl", help="results file (default: the spec's name with .jsonl, "
                                                          "in the current folder)")
    p.add_argument("--workers", type=int, metavar="N", help="processes (default: one per core)")
    p.add_argument("--dask", metavar="ADDRESS", help="run on the Dask scheduler at ADDRESS, or 'local' for a "
                                                     "LocalCluster")
    p.add_argument("--force", action="store_true", help="let --out replace a finished results file")
    add_output_flags(p)
    p.set_defaults(run=run)


def run(args) -> None:
    from hwlab.sweep import load_spec, run_sweep

    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be a positive number of processes, got {args.workers}")
    if args.dask == "":
        raise UsageError("--dask is empty; give a scheduler address (tcp://host:8786) or 'local'")
    spec = load_spec(args.spec)
    out = pathlib.Path(args.out) if args.out else pathlib.Path(pathlib.Path(args.spec).stem + ".jsonl")
    summary = run_sweep(spec, out, dask=args.dask, workers=args.workers, force=args.force)
    if args.json:
        print_json(summary)
        return
    print(render(["points", "computed", "resumed", "results"],
                 [[str(summary["points"]), str(summary["computed"]), str(summary["resumed"]), summary["out"]]]))
