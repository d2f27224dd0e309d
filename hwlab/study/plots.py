"""The study's PNG plots (matplotlib, Agg): error and embedding cosine against bits per weight,
cycles and energy per machine. Each function writes one file and returns its name."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only, no display (a no-op when pyplot is already set up the same way)
import matplotlib.pyplot as plt  # noqa: E402

DPI = 120


def _scatter(variants, front, y, ylabel, title, path, log=True):
    fig, ax = plt.subplots(figsize=(9, 5.5))
    families = sorted({v["family"] for v in variants})
    cmap = plt.get_cmap("tab20")
    for i, family in enumerate(families):
        pts = [v for v in variants if v["family"] == family]
        ax.scatter([v["bits_per_weight"] for v in pts], [y(v) for v in pts], s=22, color=cmap(i % 20), label=family)
    front = sorted(front, key=lambda v: v["bits_per_weight"])
    ax.step([v["bits_per_weight"] for v in front], [y(v) for v in front], where="post", color="black", lw=1.2,
            label="Pareto front")
    for v in front:
        ax.annotate(f"{v['format']} g{v['group_size']}", (v["bits_per_weight"], y(v)), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("bits per weight (everything stored)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return os.path.basename(path)


def error_vs_bits(variants, front, metric, label, folder) -> str:
    """``metric`` of every variant against its bits per weight, the Pareto front marked."""
    return _scatter(variants, front, lambda v: v[metric], label, f"{label} vs bits per weight",
                    os.path.join(folder, "error_vs_bits.png"))


def cosine_vs_bits(variants, front, folder) -> str:
    """1 - mean embedding cosine (log scale: 0.99 and 0.999 apart) against bits per weight."""
    return _scatter(variants, front, lambda v: max(1.0 - v["cosine_mean"], 1e-9),
                    "1 - mean cosine similarity to the float32 embeddings",
                    "sentence embeddings of the quantized encoder vs bits per weight",
                    os.path.join(folder, "cosine_vs_bits.png"))


def hardware(rows_by_machine: dict, folder) -> str:
    """Per machine: cycles (compute and memory stall) and energy by component of each format."""
    machines = list(rows_by_machine)
    heights = [len(rows_by_machine[m]) + 3 for m in machines]  # bar rows plus room for title and axis
    fig, axes = plt.subplots(len(machines), 2, figsize=(13, 0.2 * sum(heights) + 1), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for (ax_c, ax_e), machine in zip(axes, machines):
        rows = rows_by_machine[machine]
        labels = [r["label"] for r in rows]
        compute = [r["compute_cycles"] for r in rows]
        ax_c.barh(labels, compute, label="compute")
        ax_c.barh(labels, [r["stall_cycles"] for r in rows], left=compute, label="memory stall")
        ax_c.set_title(f"{machine}: cycles")
        ax_c.legend(fontsize=7)
        ax_c.tick_params(axis="y", labelsize=7)
        components = [k for k in rows[0] if k.startswith("energy_") and k.endswith("_pj") and k != "energy_pj"]
        if components:
            left = [0.0] * len(rows)
            for comp in components:
                values = [r[comp] / 1e6 for r in rows]
                ax_e.barh(labels, values, left=left, label=comp[len("energy_"):-3])
                left = [a + b for a, b in zip(left, values)]
            ax_e.set_title(f"{machine}: energy (uJ)")
            ax_e.legend(fontsize=7)
            ax_e.tick_params(axis="y", labelsize=7)
        else:
            ax_e.axis("off")
            ax_e.text(0.5, 0.5, f"{machine}: energy not modelled", ha="center", va="center")
    fig.tight_layout()
    path = os.path.join(folder, "hardware.png")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return os.path.basename(path)


def gpu_times(variants, folder) -> str:
    """Measured kernel time of the whole model (one call per layer) against the GPU model's
    prediction, per variant: calls from Python and device time in a CUDA graph, log-log with
    ``y = x`` and the float16 cuBLAS time."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    cmap = plt.get_cmap("tab20")
    families = sorted({v["family"] for v in variants})
    for ax, (measured, predicted, fp16, what) in zip(axes, (
            ("gpu_us", "gpu_predicted_us", "gpu_fp16_us", "calls from Python"),
            ("gpu_graph_us", "gpu_predicted_graph_us", "gpu_fp16_graph_us", "device time (CUDA graph)"))):
        pts = [v for v in variants if v.get(measured) and v.get(predicted)]
        for i, family in enumerate(families):
            fam = [v for v in pts if v["family"] == family]
            if fam:
                ax.scatter([v[predicted] for v in fam], [v[measured] for v in fam], s=22, color=cmap(i % 20),
                           label=family)
        if pts:
            low = min(min(v[predicted], v[measured]) for v in pts) / 1.5
            high = max(max(v[predicted], v[measured]) for v in pts) * 1.5
            ax.plot([low, high], [low, high], color="black", lw=1, label="measured = predicted")
        base = next((v[fp16] for v in variants if v.get(fp16)), None)
        if base is not None:
            ax.axhline(base, color="grey", ls="--", lw=1, label="float16 cuBLAS (measured)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("predicted us (hwlab.sim.gpu), all layers")
        ax.set_ylabel("measured us (hwlab.kernels.matmul), all layers")
        ax.set_title(f"the model's linear layers: {what}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(folder, "gpu_times.png")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return os.path.basename(path)
