"""``hwlab edge``: a model's decode step on an edge SIMD core, TRIP kernels against the fp16 baseline.

::

    hwlab edge --preset a77 --model opt-1.3b --act-bits 4 [--json]
    hwlab edge --config my_core.toml --model llama2-7b --act-bits 8 --csv rows.csv
    hwlab edge --paper-table [--json]

The report gives cycles, instructions by kind, bytes and the speedup over the fp16 baseline on
the same core (the JSON carries ``speedup`` and the per-layer rows); ``--paper-table`` puts the
predicted speedups beside Agile-Quant's measurements with the term that bounds each run.
"""
from __future__ import annotations

import os

from hwlab.output import UsageError, cell, print_json, render


def add_parser(commands, add_output_flags) -> None:
    p = commands.add_parser("edge", help="simulate a model's decode step on an edge SIMD core (TRIP vs fp16)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", help="a72 (Raspberry Pi 4B) or a77 (Snapdragon 870), default a77")
    source.add_argument("--config", metavar="FILE.toml", help="an edge core configuration (hwlab.sim.edge.EdgeCore)")
    p.add_argument("--model", help="opt-1.3b, llama2-7b, ... or a config.json")
    p.add_argument("--act-bits", type=int, choices=(4, 8, 16), default=8,
                   help="activation bits of the TRIP kernel (16: the fp16 baseline itself), default 8")
    p.add_argument("--weight-bits", type=int, choices=(4, 8), default=4, help="weight bits, default 4")
    p.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    p.add_argument("--context", type=int, default=256, help="tokens in the KV cache (default 256)")
    p.add_argument("--paper-table", action="store_true", help="the predicted speedups beside Agile-Quant's")
    p.add_argument("--csv", metavar="FILE.csv", help="write the per-layer rows as CSV")
    p.add_argument("--force", action="store_true", help="let --csv replace an existing file")
    add_output_flags(p)
    p.set_defaults(run=run)


def _core(args):
    from hwlab.sim.edge import get_edge_preset, load_edge_config

    if args.config:
        if not args.config.endswith(".toml"):
            raise UsageError(f"--config {args.config}: expected an edge core configuration file *.toml")
        if not os.path.isfile(args.config):
            raise FileNotFoundError(f"--config {args.config}: " + ("is a directory, not a file"
                                                                   if os.path.isdir(args.config) else "no such file"))
        return load_edge_config(args.config)
    return get_edge_preset(args.preset or "a77")


def run(args) -> None:
    from hwlab.sim import Workload
    from hwlab.sim.edge_engine import format_paper_table, instruction_totals, paper_table, simulate_edge

    if args.paper_table:
        if args.model or args.config or args.preset:
            raise UsageError("--paper-table runs its own models and both presets; give it alone")
        rows = paper_table()
        print_json(rows) if args.json else print(format_paper_table(rows))
        return
    if not args.model:
        raise UsageError("edge needs --model (a built-in name or a config.json), or --paper-table")
    if args.csv is not None and (args.csv == "" or not args.csv.endswith(".csv")):
        raise UsageError(f"--csv {args.csv!r}: expected a file name ending in .csv")
    if args.csv and os.path.exists(args.csv) and not args.force:
        raise UsageError(f"--csv {args.csv} exists; pass --force to replace it")
    core = _core(args)
    workload = Workload.for_model(args.model, phase="decode", batch=args.batch, context=args.context)
    report = simulate_edge(core, workload, args.act_bits, args.weight_bits)
    baseline = report if args.act_bits == 16 else simulate_edge(core, workload, 16)
    speedup = report.speedup_over(baseline)
    if args.csv:
        report.to_csv(args.csv)
    instructions = instruction_totals(report)
    summary = {**report.summary(), "speedup": speedup, "baseline_cycles": baseline.total_cycles,
               "instructions": instructions, "core": core.name, "clock_ghz": core.clock_ghz}
    if args.json:
        import json

        data = json.loads(report.to_json())
        data.update(summary)
        print_json(data)
        return
    print(f"{core.description}\n{workload.model} decode step (batch {args.batch}, context {args.context}): "
          f"{report.meta['kernel']} linear layers, attention in fp16")
    rows = [["cycles", cell(report.total_cycles)], ["seconds per token", f"{report.seconds:.4g}"],
            ["speedup over fp16", f"{speedup:.2f}x"],
            ["memory-bound layers", cell(int((report.rows['bound'] == 'memory').sum()))],
            ["weight bytes", cell(int(report.total('weight_bytes')))]]
    print(render(["", ""], rows))
    print(render(["instruction", "issued"], [[k, cell(v)] for k, v in sorted(instructions.items(), key=lambda t: -t[1])]))
