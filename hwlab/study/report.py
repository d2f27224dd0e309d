"""The study's folder: ``report.md`` (tables, the best format per bit budget, findings computed from
the numbers), ``results.csv``, ``layers.csv``, ``hardware.csv``, ``results.json`` and PNG plots.

:func:`write_report` writes everything into a new temporary folder beside ``out`` and renames it
into place only when complete, so an interrupted study leaves no folder that looks finished.
"""
from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import secrets
import shutil

import numpy as np

from hwlab.formats import get_format
from hwlab.output import render, strict

from . import hardware as hw
from . import plots

BIT_BUDGETS = (2.5, 3.5, 4.5, 5.5, 6.5, 8.5)  # bits per weight: b-bit codes with up to half a bit of scales
COSINE_GOOD = 0.99  # a mean embedding cosine this close to float32 counts as keeping the model's behaviour


def quality(v: dict) -> float:
    """What "best" means: the mean embedding cosine where measured, else the SQNR (higher is better)."""
    return v["cosine_mean"] if "cosine_mean" in v else v["sqnr_db"]


def error_metric(variants: list) -> tuple[str, str]:
    """The error plotted against bits: the layer-output error where measured, else the weight MSE."""
    if variants and "output_error" in variants[0]:
        return "output_error", "layer-output relative error (mean over layers)"
    return "mse", "weight MSE"


def pareto(variants: list, key: str) -> list:
    """The variants no other beats on both bits per weight and ``key`` (lower is better), by bits."""
    front, best = [], math.inf
    for v in sorted(variants, key=lambda v: (v["bits_per_weight"], v[key])):
        if v[key] < best:
            front.append(v)
            best = v[key]
    return front


def best_per_budget(variants: list) -> list[dict]:
    """For each budget of :data:`BIT_BUDGETS`: the best and second best variant within it."""
    rows = []
    for budget in BIT_BUDGETS:
        within = sorted((v for v in variants if v["bits_per_weight"] <= budget), key=quality, reverse=True)
        if within:
            rows.append({"budget": budget, "best": within[0], "runner_up": within[1] if len(within) > 1 else None})
    return rows


def write_report(result, out, force: bool = False) -> pathlib.Path:
    """Write the study folder ``out`` (a new or empty folder; ``force`` replaces a non-empty one)."""
    out = pathlib.Path(out)
    check_out(out, force)
    parent = out.resolve().parent
    tmp = parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    os.mkdir(tmp)  # (not mkdtemp: its mode 0700 would stay on the renamed folder)
    try:
        _write_all(result, tmp)
        if out.exists():
            old = parent / f".{out.name}.{os.getpid()}.old"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_out(out: pathlib.Path, force: bool) -> None:
    """``--out`` is a folder that does not exist yet, is empty, or (with ``force``) may be replaced."""
    if str(out) in ("", "."):
        raise ValueError("--out needs a folder name (the study writes a new folder)")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; the study writes a folder")
    if not out.resolve().parent.is_dir():
        raise FileNotFoundError(f"--out {out}: directory {out.resolve().parent} does not exist")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"--out {out} exists and is not empty; pass --force to replace it")


def _write_all(result, folder: pathlib.Path) -> None:
    for v in result.variants:
        v.setdefault("family", get_format(v["format"]).family)
    _csv(folder / "results.csv", result.variants)
    _csv(folder / "layers.csv", result.layer_rows)
    _csv(folder / "hardware.csv", result.baselines + result.hardware)
    if result.gpu:
        _csv(folder / "gpu.csv", result.gpu)
    data = result.to_dict()
    with open(folder / "results.json", "w") as fh:
        json.dump(strict(data), fh, indent=1, allow_nan=False)
    metric, label = error_metric(result.variants)
    front = pareto(result.variants, metric)
    images = []
    if result.variants:
        images.append(plots.error_vs_bits(result.variants, front, metric, label, folder))
        if "cosine_mean" in result.variants[0]:
            images.append(plots.cosine_vs_bits(result.variants, _cosine_front(result.variants), folder))
        by_machine = _hardware_rows(result)
        if by_machine:
            images.append(plots.hardware(by_machine, folder))
        if result.gpu:
            images.append(plots.gpu_times(result.variants, folder))
    (folder / "report.md").write_text(markdown(result, front, metric, label, images))


def _cosine_front(variants):
    """The Pareto front of bits per weight and embedding cosine (higher cosine is better)."""
    return pareto([{**v, "_distance": 1 - v["cosine_mean"]} for v in variants], "_distance")


def _csv(path: pathlib.Path, rows: list) -> None:
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in strict(row).items()})


def _representative(result) -> dict:
    """(format -> group size) shown in the hardware tables and plot: the largest group size studied."""
    chosen = {}
    for v in result.variants:
        chosen[v["format"]] = max(chosen.get(v["format"], 0), v["group_size"])
    return chosen


def _hardware_rows(result) -> dict:
    """machine -> rows at each format's representative group size, its fp16 baseline first (the fp16
    accelerator for the PE arrays, the core's own fp16 kernel for an edge core)."""
    chosen = _representative(result)
    base = {b["machine"]: b for b in result.baselines}
    machines = {}
    for row in result.hardware:
        if chosen.get(row["format"]) != row["group_size"]:
            continue
        if row["machine"] not in machines:
            b = base.get(row["machine"], base[hw.BASELINE])
            machines[row["machine"]] = [{**b, "label": "fp16 " + ("kernel" if b["kind"] == "edge" else "accelerator")}]
        kernel = f" ({row['kernel']})" if row["kind"] == "edge" else ""
        machines[row["machine"]].append({**row, "label": f"{row['format']} g{row['group_size']}{kernel}"})
    order = hw.ACCELERATORS + hw.EDGE_CORES
    return {m: machines[m] for m in sorted(machines, key=lambda m: order.index(m) if m in order else len(order))}


# ---- report.md -------------------------------------------------------------------------------

def _f(x, digits=4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _name(v) -> str:
    return f"{v['format']} g{v['group_size']}"


def markdown(result, front, metric, label, images) -> str:
    variants = result.variants
    has_cosine = bool(variants) and "cosine_mean" in variants[0]
    lines = ["# hwlab study", "", f"Weights: {result.source}.", "",
             f"{len(variants)} variants ({len({v['format'] for v in variants})} formats, group sizes "
             f"{', '.join(map(str, result.meta['group_sizes']))}) on {len(result.layers)} linear layers "
             f"({sum(a * b for a, b in result.layers.values()):,} weights), in {result.meta['seconds']:.0f} s.", ""]
    if not variants:
        return "\n".join(lines + ["No format could be applied; see the list below.", ""] + _not_applicable(result))
    lines += ["## Findings", "", findings(result, front, metric), ""]
    lines += ["## Best format per bit budget", "",
              f"Best = highest {'mean embedding cosine' if has_cosine else 'SQNR'} among the variants that store "
              "at most the budget's bits per weight (codes, scales, zero points, type ids: everything).", ""]
    head = ["budget (bits/w)", "best", "bits/w", "cosine mean" if has_cosine else "SQNR dB", "runner-up", "bits/w",
            "cosine mean" if has_cosine else "SQNR dB"]
    rows = []
    for b in best_per_budget(variants):
        r = b["runner_up"]
        rows.append([_f(b["budget"]), _name(b["best"]), _f(b["best"]["bits_per_weight"]), _f(quality(b["best"]), 5),
                     _name(r) if r else "-", _f(r["bits_per_weight"]) if r else "-", _f(quality(r), 5) if r else "-"])
    lines += [render(head, rows, markdown=True), ""]
    lines += ["## Plots", ""] + [f"![{img}]({img})" for img in images] + [""]
    lines += ["## Pareto front", "", f"No other variant has both fewer bits per weight and a lower {label}:", ""]
    lines += [render(["variant", "bits/w", label], [[_name(v), _f(v["bits_per_weight"]), _f(v[metric])]
                                                     for v in front], markdown=True), ""]
    lines += ["## Every variant", "", _legend(has_cosine), ""]
    cols = [("bits_per_weight", "bits/w"), ("mse", "MSE"), ("sqnr_db", "SQNR dB")]
    if "output_error" in variants[0]:
        cols += [("output_error", "out err"), ("output_error_max", "out err max")]
    if has_cosine:
        cols += [("cosine_mean", "cosine mean"), ("cosine_min", "cosine min")]
    if "cosine_gpu_mean" in variants[0]:
        cols += [("cosine_gpu_mean", "GPU cosine mean"), ("cosine_gpu_min", "GPU cosine min")]
    table = [[_name(v), v["family"]] + [_f(v[k], 5) for k, _ in cols] + [v["note"] or ""]
             for v in sorted(variants, key=lambda v: (v["bits_per_weight"], -quality(v)))]
    lines += [render(["variant", "family"] + [t for _, t in cols] + ["note"], table, markdown=True), ""]
    lines += _hardware_section(result) + _gpu_section(result) + _not_applicable(result)
    return "\n".join(lines)


def _legend(has_cosine: bool) -> str:
    text = ("bits/w: stored bits per weight; MSE and SQNR of the dequantized weights over all layers; out err: "
            "||X (W - Wq)^T|| / ||X W^T|| per layer on the inputs the float32 model gives it, mean and max over "
            "layers")
    if has_cosine:
        text += ("; cosine: of each sentence's embedding from the quantized encoder with the float32 one, mean and "
                 "least over the sentences")
    return text + "."


def _hardware_section(result) -> list[str]:
    by_machine = _hardware_rows(result)
    lines = ["## Hardware", "", f"Prefill of one {result.meta['sim_tokens']}-token sequence through the model's "
             "layers (hwlab.sim; which machine runs which format and why: hwlab/study/hardware.py). Each format at "
             "its largest studied group size; every group size is in hardware.csv.", ""]
    if not by_machine:
        return lines + ["No studied format runs on the simulated machines.", ""]
    for machine, rows in by_machine.items():
        energy = rows[0]["energy_pj"] is not None
        head = ["variant", "cycles", "stall %", "speedup vs fp16"] + (["energy uJ", "PE %", "SRAM %", "DRAM %",
                                                                       "energy saving"] if energy else [])
        table = []
        for r in rows:
            line = [r["label"], f"{r['cycles']:,}", _f(100 * r["stall_cycles"] / r["cycles"], 3),
                    _f(r.get("speedup_over_fp16", 1.0), 4)]
            if energy:
                line += [_f(r["energy_pj"] / 1e6, 5)] + [_f(100 * r[f"energy_{c}_pj"] / r["energy_pj"], 3)
                                                          for c in ("pe", "sram", "dram")]
                line += [_f(r.get("energy_saving_over_fp16", 1.0), 4)]
            table.append(line)
        note = "" if energy else " (cycles only: the edge model has no sourced energies)"
        lines += [f"### {machine}{note}", "", render(head, table, markdown=True), ""]
    return lines


def _gpu_section(result) -> list[str]:
    """Measured kernel times of every variant on the GPU beside the GPU model's (``--device cuda`` only)."""
    if not result.gpu:
        return []
    info = result.meta["gpu"]
    has_cosine = "cosine_gpu_mean" in result.variants[0]
    lines = ["## GPU", "", f"{info['device']}: every linear layer as hwlab.kernels.matmul at {info['rows']} rows, "
             "summed over the model's layers: a call from Python (do_bench median) and the device time of a call "
             "in a CUDA graph, the weights in L2; beside float16 cuBLAS (torch linear) timed the same ways and the "
             f"{info['gpu_model'] or 'no'} GPU model's prediction of both (hwlab.sim.gpu). Per layer shape: gpu.csv."
             + (" The GPU cosine is of the encoder whose every linear layer is a QuantLinear (float16 activations), "
                "the CPU one of the dequantized float32 weights." if has_cosine else ""), ""]
    head = ["variant", "kernel", "call us", "predicted", "graph us", "predicted", "graph / predicted",
            "fp16 call us", "fp16 graph us", "graph speedup vs fp16"] + (["GPU cosine", "CPU cosine"] if has_cosine else [])
    kernels = {}
    for r in result.gpu:
        kernels.setdefault((r["format"], r["group_size"]), set()).add(r["kernel"])
    table = []
    for v in sorted(result.variants, key=lambda v: v.get("gpu_graph_us", v["gpu_us"])):
        graph, predicted = v.get("gpu_graph_us"), v.get("gpu_predicted_graph_us")
        fp16_graph = v.get("gpu_fp16_graph_us")
        line = [_name(v), ", ".join(sorted(kernels[(v["format"], v["group_size"])])), _f(v["gpu_us"], 4),
                _f(v.get("gpu_predicted_us"), 4), _f(graph, 4), _f(predicted, 4),
                _f(graph / predicted, 3) if graph and predicted else "-", _f(v["gpu_fp16_us"], 4), _f(fp16_graph, 4),
                _f(fp16_graph / graph, 3) if graph and fp16_graph else "-"]
        if has_cosine:
            line += [_f(v["cosine_gpu_mean"], 6), _f(v["cosine_mean"], 6)]
        table.append(line)
    missing = sorted({r["predicted_error"] for r in result.gpu if r["predicted_error"]})
    lines += [render(head, table, markdown=True), ""]
    if missing:
        lines += ["No prediction where the GPU model lacks a number: " + "; ".join(missing[:3])
                  + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "") + ".", ""]
    return lines


def _not_applicable(result) -> list[str]:
    lines = ["## Not applicable", ""]
    if result.not_applicable:
        lines += ["Format and group size pairs that were not run, with the quantizer's reason:", "",
                  render(["format", "group size", "reason"],
                         [[n["format"], str(n["group_size"]), n["reason"]] for n in result.not_applicable],
                         markdown=True), ""]
    else:
        lines += ["Every format ran at every group size asked for.", ""]
    reasons = {}
    for s in result.hardware_skipped:
        reasons.setdefault((s["machine"], s["reason"]), []).append(s["format"])
    if reasons:
        lines += ["Machines that do not run a format (left out of the hardware tables):", "",
                  render(["machine", "formats", "reason"], [[m, ", ".join(f), r] for (m, r), f in reasons.items()],
                         markdown=True), ""]
    return lines


# ---- findings --------------------------------------------------------------------------------

def findings(result, front, metric) -> str:
    """One paragraph of findings, every figure in it computed from ``result``."""
    variants = result.variants
    has_cosine = "cosine_mean" in variants[0]
    what = "mean embedding cosine" if has_cosine else "SQNR"
    parts = []
    budgets = best_per_budget(variants)
    four = next((b for b in budgets if b["budget"] == 4.5), None)
    if four:
        b = four["best"]
        parts.append(f"Within 4.5 bits per weight the best variant is {_name(b)} ({_f(b['bits_per_weight'])} bits/w, "
                     f"{what} {_f(quality(b), 5)}" + (f", least {_f(b['cosine_min'], 4)}" if has_cosine else "") + ")")
        ints = [v for v in variants if v["format"] == "int4" and v["bits_per_weight"] <= 4.5]
        if ints and b["format"] != "int4":
            i = max(ints, key=quality)
            parts[-1] += f", against {_f(quality(i), 5)} for the best int4 ({_name(i)})"
    if has_cosine:
        good = [v for v in variants if v["cosine_mean"] >= COSINE_GOOD]
        if good:
            g = min(good, key=lambda v: (v["bits_per_weight"], -v["cosine_mean"]))
            parts.append(f"the fewest bits that keep the mean cosine at {COSINE_GOOD} or more are "
                         f"{_f(g['bits_per_weight'])} bits/w ({_name(g)}, {_f(g['cosine_mean'], 5)})")
        worst = min(variants, key=quality)
        parts.append(f"the lowest mean cosine is {_name(worst)} at {_f(worst['bits_per_weight'])} bits/w "
                     f"({_f(worst['cosine_mean'], 4)})")
    parts.append(f"{len(front)} of {len(variants)} variants are on the Pareto front of bits and error"
                 + (f", from {_name(front[0])} to {_name(front[-1])}" if len(front) > 1 else f": {_name(front[0])}"))
    gain = _group_size_gain(variants, metric)
    if gain:
        small, large, bits, change = gain
        parts.append(f"going from group {large} to group {small} adds {_f(bits, 3)} bits per weight (median) and "
                     f"changes the {'layer-output error' if metric == 'output_error' else 'MSE'} by a median "
                     f"{_f(100 * change, 3)}%")
    parts += _hardware_findings(result) + _gpu_findings(result)
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def _gpu_findings(result) -> list[str]:
    """The fastest variant on the GPU (device time) against float16 cuBLAS, and how close the GPU model came."""
    if not result.gpu:
        return []
    key = "gpu_graph_us" if all("gpu_graph_us" in v for v in result.variants) else "gpu_us"
    base = "gpu_fp16_graph_us" if key == "gpu_graph_us" else "gpu_fp16_us"
    fastest = min(result.variants, key=lambda v: v[key])
    what = "device time in a CUDA graph" if key == "gpu_graph_us" else "time of calls from Python"
    parts = [f"on the {result.meta['gpu']['device']} the fastest variant's layers take {_f(fastest[key], 4)} us "
             f"({_name(fastest)}, {what}), {_f(fastest[base] / fastest[key], 3)}x the speed of float16 cuBLAS"]
    predicted = "gpu_predicted_graph_us" if key == "gpu_graph_us" else "gpu_predicted_us"
    ratios = [v[key] / v[predicted] for v in result.variants if v.get(predicted)]
    if ratios:
        close = sum(0.8 <= r <= 1.25 for r in ratios)
        parts.append(f"the GPU model predicts that time within 25% for {close} of {len(ratios)} variants (median "
                     f"measured / predicted {_f(float(np.median(ratios)), 3)})")
    return parts


def _group_size_gain(variants, metric):
    """(smallest, largest group size, median bits added, median relative change of ``metric``) over the
    formats run at both, or None."""
    by = {}
    for v in variants:
        if not v["note"]:
            by.setdefault(v["format"], {})[v["group_size"]] = v
    sizes = sorted({g for d in by.values() for g in d})
    if len(sizes) < 2:
        return None
    small, large = sizes[0], sizes[-1]
    pairs = [(d[small], d[large]) for d in by.values() if small in d and large in d and d[large][metric] > 0]
    if not pairs:
        return None
    bits = float(np.median([s["bits_per_weight"] - lg["bits_per_weight"] for s, lg in pairs]))
    change = float(np.median([s[metric] / lg[metric] - 1 for s, lg in pairs]))
    return small, large, bits, change


def _hardware_findings(result) -> list[str]:
    parts = []
    by = {(v["format"], v["group_size"]): v for v in result.variants}
    for machine in hw.ACCELERATORS:  # the best it runs within 4.5 bits per weight (the 4-bit class), else at all
        rows = [r for r in result.hardware if r["machine"] == machine]
        four = [r for r in rows if by[(r["format"], r["group_size"])]["bits_per_weight"] <= 4.5]
        if rows:
            r = max(four or rows, key=lambda r: (quality(by[(r["format"], r["group_size"])]), -r["cycles"]))
            dram = 100 * r["energy_dram_pj"] / r["energy_pj"]
            within = "within 4.5 bits per weight " if four else ""
            parts.append(f"on the {machine} accelerator the best format it runs {within}"
                         f"({r['format']} g{r['group_size']}) is {_f(r['speedup_over_fp16'], 3)}x faster than the "
                         f"FP16 accelerator with {_f(r['energy_saving_over_fp16'], 3)}x less energy (DRAM {_f(dram, 3)}% of it)")
    for core in hw.EDGE_CORES:
        rows = sorted((r for r in result.hardware if r["machine"] == core), key=lambda r: -r["speedup_over_fp16"])
        if rows:
            r = rows[0]
            parts.append(f"on the {core} core the fastest TRIP kernel, {r['kernel']} ({r['format']}), runs "
                         f"{_f(r['speedup_over_fp16'], 3)}x the fp16 kernel's speed")
    return parts
