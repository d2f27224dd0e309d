"""``hwlab sim``: a model's decode step or prefill on an accelerator preset (the analytical engine).

::

    hwlab sim --preset bitmod --model llama2-7b --phase decode --wbits 3 [--baseline fp16] [--json]
    hwlab sim --config my_accel.toml --model path/to/config.json --phase prefill --context 512
    hwlab sim --paper-table [--json]

The JSON output carries ``total_cycles``, the energy by component and one row per layer
(``layers``); ``--csv FILE`` writes the rows as CSV (a new file, or ``--force``).
"""
from __future__ import annotations

import os

from hwlab.output import UsageError, cell, print_json, render

PHASES = ("decode", "prefill")


def add_parser(commands, add_output_flags) -> None:
    p = commands.add_parser("sim", help="simulate a model's layers on an accelerator preset (cycles, energy)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--preset", help="bitmod, ant, olive or fp16 (default bitmod)")
    source.add_argument("--config", metavar="FILE.toml", help="an accelerator configuration (see hwlab.sim.HWConfig)")
    p.add_argument("--model", help="llama2-7b, llama2-13b, llama3-8b, yi-6b, opt-1.3b, phi-2, or a config.json")
    p.add_argument("--phase", choices=PHASES, default="decode", help="one decode step, or a prefill (default decode)")
    p.add_argument("--batch", type=int, default=1, help="sequences (default 1)")
    p.add_argument("--context", type=int, default=256, help="tokens in the KV cache / of the prefill (default 256)")
    p.add_argument("--wbits", type=float, help="weight code bits (default the preset's; BitMoD adds its 8-bit "
                                               "scale per 128)")
    p.add_argument("--kv-bits", type=float, help="KV cache bits (default the preset's)")
    p.add_argument("--baseline", help="a preset (or .toml) to compare with: prints the speedup over it")
    p.add_argument("--paper-table", action="store_true",
                   help="the BitMoD paper's headline speedups over six models, beside the paper's figures")
    p.add_argument("--csv", metavar="FILE.csv", help="write the per-layer rows as CSV")
    p.add_argument("--force", action="store_true", help="let --csv replace an existing file")
    add_output_flags(p)
    p.set_defaults(run=run)


def _machine(name: str, flag: str = "--preset"):
    """The accelerator ``name`` names: a preset, or a ``.toml`` file (always a file for ``--config``)."""
    from hwlab.sim import get_preset, load_config

    if flag == "--config" or name.endswith(".toml"):
        if not name.endswith(".toml"):
            raise UsageError(f"{flag} {name}: expected an accelerator configuration file *.toml "
                             "(a preset is given with --preset)")
        if not os.path.isfile(name):
            raise FileNotFoundError(f"{flag} {name}: " + ("is a directory, not a file" if os.path.isdir(name)
                                                          else "no such file"))
        return load_config(name)
    return get_preset(name)


def _counted(report):
    """``report``, unless its cycle total passes the int64 range the engine counts in (it would wrap)."""
    if sum(int(c) for c in report.rows["cycles"]) >= 2**63:
        raise ValueError(f"{report.machine}: the cycle count of {report.workload} passes the int64 range the "
                         "simulator counts in; reduce batch or context")
    return report


def run(args) -> None:
    from hwlab.sim import Workload, simulate
    from hwlab.sim.paper import format_paper_table, paper_table

    if args.paper_table:
        if args.model or args.config or args.preset or args.baseline:
            raise UsageError("--paper-table runs its own six models and four accelerators; give it alone")
        table = paper_table()
        if args.json:
            print_json({k: v for k, v in table.items() if k != "cycles"} | {"cycles": table["cycles"]})
        else:
            print(format_paper_table(table))
        return
    if not args.model:
        raise UsageError("sim needs --model (a built-in name or a config.json), or --paper-table")
    if args.csv == "":
        raise UsageError("--csv is empty; name the file *.csv")
    config = _machine(args.config, "--config") if args.config is not None else _machine(args.preset or "bitmod")
    workload = Workload.for_model(args.model, args.phase, args.batch, args.context)
    report = _counted(simulate(workload, config, args.wbits, kv_bits=args.kv_bits))
    out = report.summary()
    if args.baseline:
        base = _counted(simulate(workload, _machine(args.baseline, "--baseline"), kv_bits=None))
        out["baseline"] = {"machine": base.machine, "total_cycles": base.total_cycles, "energy_pj": base.energy_pj}
        out["speedup"] = report.speedup_over(base)
        out["energy_saving"] = base.energy_pj / report.energy_pj
    if args.csv is not None:
        if os.path.isdir(args.csv):
            raise IsADirectoryError(f"--csv {args.csv} is a directory; name a file")
        if os.path.exists(args.csv) and not args.force:
            raise UsageError(f"--csv {args.csv} exists; pass --force to replace it")
        report.to_csv(args.csv)
    if args.json:
        print_json({**out, "layers": [dict(zip(report.rows, values)) for values in zip(*report.rows.values())]})
        return
    print(f"{report.machine} ({config.description}): {report.workload}, weights {out['wbits']:g} code bits "
          f"({out['stored_bits']:g} stored), KV {out['kv_bits']:g} bits, array {out['array'][0]}x{out['array'][1]}")
    energy = out["energy_by_component_pj"]
    print(render(["total cycles", "compute", "memory stall", "time", "energy", "PE", "SRAM", "DRAM"],
                 [[f"{report.total_cycles:,}", f"{report.compute_cycles:,}", f"{report.stall_cycles:,}",
                   f"{report.seconds * 1e3:.3f} ms", f"{report.energy_pj / 1e6:,.1f} uJ"]
                  + [f"{energy[k] / 1e6:,.1f} uJ" for k in ("pe", "sram", "dram")]]))
    if args.baseline:
        print(f"speedup over {out['baseline']['machine']}: {out['speedup']:.3f}x; energy {out['energy_saving']:.3f}x less")
    print(render(["layer type", "count", "cycles", "share", "bound by"], _by_type(report)))


def _by_type(report) -> list[list[str]]:
    """Rows per layer type (q_proj, ..., attn_qk): count, cycles, share, compute or memory bound."""
    groups = {}
    for name, kind, cycles, compute in zip(report.rows["name"], report.rows["kind"], report.rows["cycles"],
                                           report.rows["compute_cycles"]):
        key = kind if kind != "linear" else str(name).rsplit(".", 1)[-1]
        n, c, k = groups.get(key, (0, 0, 0))
        groups[key] = (n + 1, c + int(cycles), k + int(compute))
    total = report.total_cycles
    return [[key, str(n), f"{c:,}", cell(round(c / total, 4)), "compute" if k >= c else "memory"]
            for key, (n, c, k) in sorted(groups.items(), key=lambda kv: -kv[1][1])]
