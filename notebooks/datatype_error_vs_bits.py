# %% [markdown]
# # Which datatype gives the least error per stored bit?
#
# Every registered format quantizes the same two real linear layers (all-MiniLM-L6-v2, shipped
# with hwlab), at its default group size. For each we record the bits actually stored per weight
# and the error: SQNR of the weights and the relative error of the layer output ``X W^T`` for
# Gaussian activations. The plot shows the error/bits trade-off; the table is printed and
# written as CSV beside the figure.
#
# Run: ``python notebooks/datatype_error_vs_bits.py [OUT_DIR]`` (jupytext percent format, so it
# also opens as a notebook).

# %%
import csv
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import hwlab  # noqa: E402
from hwlab.sample import sample_weights  # noqa: E402

out_dir = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "notebook_out")
out_dir.mkdir(parents=True, exist_ok=True)
layers = {name: w.astype(np.float32) for name, w in sample_weights().items()}
activations = np.random.default_rng(0).standard_normal((64, 384)).astype(np.float32)

# %%
rows = []
for fmt in hwlab.list_formats():
    bits, sqnr, out_err = [], [], []
    for w in layers.values():
        qt = hwlab.quantize(w, fmt)
        err = qt.error(w, activations)
        bits.append(qt.bits_per_weight * w.size)
        sqnr.append(err["sqnr_db"])
        out_err.append(err["output_rel_error"])
    size = sum(w.size for w in layers.values())
    rows.append({"format": fmt, "family": hwlab.get_format(fmt).family,
                 "bits_per_weight": sum(bits) / size, "sqnr_db": float(np.mean(sqnr)),
                 "output_rel_error": float(np.mean(out_err))})
rows.sort(key=lambda r: r["bits_per_weight"])
print(f"{'format':<14}{'family':<12}{'bits/w':>8}{'SQNR dB':>9}{'out err':>9}")
for r in rows:
    print(f"{r['format']:<14}{r['family']:<12}{r['bits_per_weight']:8.3f}{r['sqnr_db']:9.2f}{r['output_rel_error']:9.4f}")

# %%
with open(out_dir / "datatype_error_vs_bits.csv", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)

fig, ax = plt.subplots(figsize=(8, 5))
for family in sorted({r["family"] for r in rows}):
    pts = [r for r in rows if r["family"] == family]
    ax.scatter([r["bits_per_weight"] for r in pts], [r["sqnr_db"] for r in pts], label=family)
for r in rows:
    ax.annotate(r["format"], (r["bits_per_weight"], r["sqnr_db"]), fontsize=6, alpha=0.7)
ax.set_xlabel("stored bits per weight")
ax.set_ylabel("weight SQNR (dB)")
ax.set_title("all-MiniLM-L6-v2 layer 0: error against stored bits")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(out_dir / "datatype_error_vs_bits.png", dpi=120)
print(f"wrote {out_dir / 'datatype_error_vs_bits.csv'} and .png")
