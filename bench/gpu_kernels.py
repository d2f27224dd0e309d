"""GPU benchmark: hwlab's matmul for every format family beside cuBLAS fp16, tinygemm, bitsandbytes and gemlite.

One process, one GPU: the device copy bandwidth, then for every shape (K, N) and batch M the
median time (CUDA events, ``triton.testing.do_bench``) of ``y = x @ W^T``, with enough weight copies
rotated (>= 256 MB) that the L2 cannot serve them, and again inside a CUDA graph of 20 calls
(what a decode loop captured in a graph pays). Beside each hwlab measurement: the GPU model's
prediction (:mod:`hwlab.sim.gpu`). Writes ``gpu_kernels.json`` (GPU, versions, commit, date,
every row) after every section, so an interrupted run keeps what it measured.

    python bench/gpu_kernels.py --out bench/results               # on the GPU machine
    python bench/gpu_kernels.py --plot bench/results/gpu_kernels_h200.json   # anywhere: the roofline PNG
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
import traceback

import numpy as np

from hwlab.kernels.testing import clone
from hwlab.kernels.timing import graph_us, median_ms

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 28672)]  # (K, N): Llama-2-7B and -70B layers
BATCHES = [1, 16, 64]
FORMATS = ["int4", "int4_asym", "int2", "int3", "int8", "nf4", "fp4_e2m1", "fp4_e1m2", "fp4_e3m0", "flint4",
           "bitmod_fp4", "bitmod_fp3", "shift4", "ternary", "mxfp4", "nvfp4", "mixed_2_4", "olive4", "fp8_e4m3"]
ROTATE_BYTES = 256 * 2**20  # > 4x the H200's 60 MB L2
GRAPH_CALLS = 20
QUANTIZED_ROWS = 256  # rows quantized for real; the benchmark layer repeats them (timing does not depend on values)


bench_ms = median_ms  # milliseconds, do_bench median (hwlab.kernels.timing)


class Run:
    """The results document, written after every section."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, "gpu_kernels.json")
        self.doc = {"env": {}, "rows": []}

    def save(self):
        with open(self.path, "w") as f:
            json.dump(self.doc, f, indent=1)

    def add(self, row: dict):
        copy = self.doc["env"]["copy_GBps"]
        row["GBps"] = row["bytes"] / (row["us"] * 1e-6) / 1e9
        row["frac_of_copy"] = row["GBps"] / copy
        if row.get("us_graph"):
            row["frac_of_copy_graph"] = row["bytes"] / (row["us_graph"] * 1e-6) / 1e9 / copy
        self.doc["rows"].append(row)
        self.save()  # every row: a section cut short by a time limit keeps what it measured
        pred = f" model {row['predicted_us']:7.1f} us ({row['predicted_bound']})" if "predicted_us" in row else ""
        graph = f" graph {row['us_graph']:7.1f} us" if row.get("us_graph") else ""
        print(f"{row['name']:22s} M={row['M']:3d} K={row['K']:5d} N={row['N']:5d} {row['us']:8.1f} us{graph} "
              f"{row['frac_of_copy']:5.2f} of copy{pred}", flush=True)


def environment(run: Run):
    import torch
    import triton

    p = torch.cuda.get_device_properties(0)
    env = dict(gpu=torch.cuda.get_device_name(), sms=p.multi_processor_count, torch=torch.__version__,
               triton=triton.__version__, cuda=torch.version.cuda, date=datetime.datetime.now().isoformat(timespec="seconds"),
               commit=os.environ.get("HWLAB_COMMIT") or _git_commit(),
               source_sha=os.environ.get("HWLAB_SOURCE_SHA", "unknown"))
    for module in ("bitsandbytes", "gemlite", "numpy"):
        try:
            env[module] = getattr(__import__(module), "__version__", "?")
        except Exception as e:
            env[module] = f"missing: {type(e).__name__}"
    run.doc["env"].update(env)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def copy_bandwidth(run: Run):
    import torch

    a = torch.randn(2 * 2**30 // 4, device="cuda")
    b = torch.empty_like(a)
    run.doc["env"]["copy_GBps"] = 2 * a.numel() * 4 / (bench_ms(lambda: b.copy_(a)) * 1e-3) / 1e9
    print(f"device copy {run.doc['env']['copy_GBps']:.0f} GB/s", flush=True)


def rotating(call, items):
    state = [0]

    def step():
        state[0] = (state[0] + 1) % len(items)
        return call(items[state[0]])
    return step


def timed(run: Run, name: str, m: int, k: int, n: int, call, items, wbytes: float, **extra):
    us = bench_ms(rotating(call, items)) * 1e3
    calls = [(lambda item=items[i % len(items)]: call(item)) for i in range(GRAPH_CALLS)]
    run.add(dict(name=name, M=m, K=k, N=n, us=us, us_graph=graph_us(calls), bytes=wbytes + 2 * m * k + 2 * m * n,
                 **extra))


def copies_for(nbytes: int) -> int:
    return max(2, math.ceil(ROTATE_BYTES / nbytes))


def tiled_tensor(fmt: str, k: int, n: int, rng):
    """A quantized [n, k] tensor: QUANTIZED_ROWS rows quantized from Gaussian weights, repeated."""
    import hwlab.formats as F
    from hwlab.kernels.testing import repeat_rows

    return repeat_rows(F.quantize((rng.standard_normal((QUANTIZED_ROWS, k)) * 0.02).astype(np.float32), fmt), n)


def hwlab_formats(run: Run, formats, shapes, batches, gpu_model: str):
    import torch

    from hwlab.kernels import dispatch, matmul

    rng = np.random.default_rng(0)
    for fmt in formats:
        for k, n in shapes:
            try:
                qt = tiled_tensor(fmt, k, n, rng)
                first = qt.to("cuda")
                items = [first] + [clone(first) for _ in range(copies_for(first.nbytes) - 1)]
                for m in batches:
                    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                    out = torch.empty(m, n, device="cuda", dtype=torch.float16)
                    launch = dispatch.launch_for(first, m, "float16")
                    extra = dict(format=fmt, bits_per_weight=qt.bits_per_weight, kernel=launch.describe(),
                                 **prediction(gpu_model, fmt, m, k, n, qt.bits_per_weight, launch))
                    timed(run, f"hwlab_{fmt}", m, k, n, lambda w: matmul(x, w, out=out), items, first.nbytes, **extra)
                del items, first
                torch.cuda.empty_cache()
            except Exception:
                print(f"== hwlab {fmt} K={k} N={n} FAILED")
                traceback.print_exc(limit=4)
        run.save()


def prediction(gpu_model: str | None, fmt: str, m: int, k: int, n: int, bits_per_weight: float, launch) -> dict:
    """The GPU model's prediction of one launch (:func:`hwlab.sim.gpu.predict`) as row fields (none where the run's
    GPU has no preset: ``gpu_model`` None)."""
    from hwlab.sim.gpu import predict

    if gpu_model is None:
        return {}
    try:
        p = predict(gpu_model, fmt, m, k, n, bits_per_weight=bits_per_weight, launch=launch)
        return dict(predicted_us=p.us, predicted_graph_us=p.graph_us, predicted_bound=p.bound, predicted=p.to_json())
    except ValueError as e:
        return dict(predicted_error=str(e))


def _compile_formats(formats, shapes, batches) -> int:
    """Run every launch the benchmark will time once, so Triton compiles it into its on-disk cache."""
    import torch

    from hwlab.kernels import matmul

    rng = np.random.default_rng(0)
    for fmt in formats:
        for k, n in shapes:
            dev = tiled_tensor(fmt, k, n, rng).to("cuda")
            for m in batches:
                matmul(torch.zeros(m, k, device="cuda", dtype=torch.float16), dev)
    torch.cuda.synchronize()
    return len(formats)


def warm_cache(formats, shapes, batches, workers: int) -> None:
    """Compile every kernel specialization in ``workers`` processes at once (Triton compiles on the
    host, one kernel at a time per process); the timing process then finds them in the cache."""
    import concurrent.futures
    import multiprocessing

    chunks = [formats[i::workers] for i in range(min(workers, len(formats)))]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(chunks), mp_context=context) as pool:
        done = sum(pool.map(_compile_formats, chunks, [shapes] * len(chunks), [batches] * len(chunks)))
    print(f"compiled the kernels of {done} formats in {len(chunks)} processes", flush=True)


def cublas(run: Run, shapes, batches):
    import torch

    for k, n in shapes:
        w = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(copies_for(n * k * 2))]
        for m in batches:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            timed(run, "cublas_fp16", m, k, n, lambda t: torch.nn.functional.linear(x, t), w, n * k * 2)
        del w
        torch.cuda.empty_cache()


def tinygemm(run: Run, shapes, batches):
    import torch

    group = 128
    for k, n in shapes:
        def make():
            q = torch.randint(0, 16, (n, k), device="cuda", dtype=torch.int32)
            packed = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            return (torch.ops.aten._convert_weight_to_int4pack(packed, 8),
                    torch.randn(k // group, n, 2, device="cuda", dtype=torch.bfloat16))
        wbytes = n * k // 2 + n * k // group * 4
        w = [make() for _ in range(copies_for(wbytes))]
        for m in batches:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            timed(run, "tinygemm_w4g128", m, k, n, lambda t: torch.ops.aten._weight_int4pack_mm(x, t[0], group, t[1]),
                  w, wbytes)
        del w
        torch.cuda.empty_cache()


def bitsandbytes_nf4(run: Run, shapes, batches):
    import bitsandbytes as bnb
    import bitsandbytes.functional as BF
    import torch

    for k, n in shapes:
        wbytes = n * k // 2 + n * k // 64 * 4
        w = [BF.quantize_4bit(torch.randn(n, k, device="cuda", dtype=torch.float16), quant_type="nf4", blocksize=64)
             for _ in range(copies_for(wbytes))]
        for m in batches:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            timed(run, "bnb_nf4_b64", m, k, n, lambda t: bnb.matmul_4bit(x, t[0].t(), quant_state=t[1]), w, wbytes)
        del w
        torch.cuda.empty_cache()


def gemlite(run: Run, shapes, batches):
    import torch
    from gemlite import DType, GemLiteLinear

    group = 128
    for bits in (4, 2):
        for k, n in shapes:
            def make():
                q = torch.randint(0, 2**bits, (n, k), device="cuda", dtype=torch.uint8)
                s = torch.rand(n, k // group, device="cuda", dtype=torch.float16) * 0.01 + 0.001
                z = torch.full((n, k // group), (2**bits - 1) / 2, device="cuda", dtype=torch.float16)
                lin = GemLiteLinear(bits, group_size=group, in_features=k, out_features=n,
                                    input_dtype=DType.FP16, output_dtype=DType.FP16)
                lin.pack(q, s, z, None)
                return lin
            wbytes = n * k * bits // 8 + n * k // group * 4
            w = [make() for _ in range(copies_for(wbytes))]
            for m in batches:
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                timed(run, f"gemlite_w{bits}g{group}", m, k, n, lambda lin: lin(x), w, wbytes)
            del w
            torch.cuda.empty_cache()


def _cupy_ready() -> str | None:
    """None when CuPy can run kernels here, else why not."""
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        return None
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:80]}"


def async_mixed(run: Run, shapes, batches, gpu_model: str):
    """mixed_2_4: the synchronous two-stage kernel (hwlab.kernels.matmul), the asynchronous Triton
    kernels and the CuPy cp.async GEMV, each checked against the synchronous output first."""
    import torch

    from hwlab.kernels import dispatch
    from hwlab.kernels.async_mixed import async_launch, mixed_matmul

    rng = np.random.default_rng(1)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    modes = ["sync", "async"] + (["cupy"] if _cupy_ready() is None else [])
    if "cupy" not in modes:
        print(f"   (no CuPy: {_cupy_ready()})", flush=True)
    for k, n in shapes:
        qt = tiled_tensor("mixed_2_4", k, n, rng)
        first = qt.to("cuda")
        items = [first] + [clone(first) for _ in range(copies_for(first.nbytes) - 1)]
        for m in [b for b in batches if b <= 16]:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            sync = mixed_matmul(x, first, mode="sync").float()
            for mode in modes:
                if mode == "cupy" and m > 1:
                    continue
                out = torch.empty(m, n, device="cuda", dtype=torch.float16)
                try:
                    got = mixed_matmul(x, first, mode=mode, out=out).float()
                    diff = float(((got - sync).abs() / (sync.abs() + 1e-3)).max())
                    launch = (dispatch.choose(first.plan, m, sms) if mode == "sync" else
                              async_launch(first, m, sms) if mode == "async" else None)
                    model = prediction(gpu_model, "mixed_2_4", m, k, n, qt.bits_per_weight, launch) if launch else {}
                    timed(run, f"mixed_{mode}", m, k, n, lambda w, mode=mode, out=out: mixed_matmul(x, w, mode=mode, out=out),
                          items, first.nbytes, format="mixed_2_4", mode=mode, bits_per_weight=qt.bits_per_weight,
                          max_rel_diff_vs_sync=diff, **model)
                except Exception:
                    print(f"== mixed {mode} M={m} K={k} N={n} FAILED")
                    traceback.print_exc(limit=4)
        del items, first
        torch.cuda.empty_cache()
        run.save()


def trip(run: Run, shapes, batches, gpu_model: str):
    """TRIP W4A8 and W4A4: int8 activation codes times packed int4 weights, exact int32, then the
    float32 output scale; Triton (int8 tensor cores) and CuPy (dp4a). Weights are random words
    (timing does not depend on values; bit-exactness is tests/test_async_trip.py's)."""
    import torch

    from hwlab.kernels.trip import TripWeights, trip_accumulate, trip_launch, trip_matmul

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    backends = ["triton"] + (["cupy"] if _cupy_ready() is None else [])
    for k, n in shapes:
        def make():
            words = torch.randint(-2**31, 2**31 - 1, (n, k // 8), device="cuda", dtype=torch.int32)
            return TripWeights(words, torch.rand(n, device="cuda") * 1e-2, torch.ones(k, device="cuda"), 0.05, 127,
                               (n, k))
        w = [make() for _ in range(copies_for(n * k // 2))]
        for m in sorted(set([b for b in batches if b <= 16] + [4])):
            for act_bits in (8, 4):
                limit = 2 ** (act_bits - 1) - 1
                x = torch.randint(-limit, limit + 1, (m, k), device="cuda", dtype=torch.int8)
                reference = trip_accumulate(x, w[0], backend="triton")  # cupy checked against it
                for backend in backends:
                    try:
                        same = bool(torch.equal(trip_accumulate(x, w[0], backend=backend), reference))
                        model = (prediction(gpu_model, "trip_w4a8", m, k, n, 4 + 32 / k, trip_launch(m, n, k, sms))
                                 if backend == "triton" else {})
                        timed(run, f"trip_w4a{act_bits}_{backend}", m, k, n,
                              lambda t, backend=backend: trip_matmul(x, t, backend=backend), w, w[0].nbytes,
                              format=f"trip_w4a{act_bits}", backend=backend, bits_per_weight=4 + 32 / k,
                              equal_to_triton=same, **model)
                    except Exception:
                        print(f"== trip {backend} M={m} K={k} N={n} FAILED")
                        traceback.print_exc(limit=4)
        if 4 not in batches:  # cuBLAS at M=4, the baseline of TRIP's middle batch
            wf = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(copies_for(n * k * 2))]
            x4 = torch.randn(4, k, device="cuda", dtype=torch.float16)
            timed(run, "cublas_fp16", 4, k, n, lambda t: torch.nn.functional.linear(x4, t), wf, n * k * 2)
            del wf
        del w
        torch.cuda.empty_cache()
        run.save()


def plot(path: str, out: str | None = None) -> str:
    """Achieved GB/s of every measurement against bytes moved, the copy ceiling drawn: a PNG beside ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        doc = json.load(f)
    copy = doc["env"]["copy_GBps"]
    batches = sorted({r["M"] for r in doc["rows"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 5), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], batches):
        rows = [r for r in doc["rows"] if r["M"] == m]
        for peer in sorted({r["name"] for r in rows if not r["name"].startswith("hwlab_")}):
            pr = [r for r in rows if r["name"] == peer]
            ax.scatter([r["bytes"] / 1e6 for r in pr], [r["GBps"] for r in pr], marker="x", s=50, label=peer)
        ours = [r for r in rows if r["name"].startswith("hwlab_")]
        ax.scatter([r["bytes"] / 1e6 for r in ours], [r["GBps"] for r in ours], s=14, c="k", alpha=0.6,
                   label="hwlab (every format)")
        ax.axhline(copy, color="r", lw=1, ls="--", label=f"device copy {copy:.0f} GB/s")
        ax.set_xscale("log")
        ax.set_xlabel("bytes moved per call (MB)")
        ax.set_title(f"M = {m}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("achieved GB/s (do_bench median, weights past L2)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{doc['env'].get('gpu', '')}: weight-only matmul against the copy ceiling")
    out = out or os.path.splitext(path)[0] + "_roofline.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def table(path: str, k: int = 8192, n: int = 28672) -> str:
    """Markdown: every measurement of one shape (do_bench and CUDA-graph microseconds, fraction of
    the copy rate, the model's graph-time prediction), one column per batch size M."""
    with open(path) as f:
        doc = json.load(f)
    rows = [r for r in doc["rows"] if r["K"] == k and r["N"] == n]
    batches = sorted({r["M"] for r in rows})
    cell = {(r["name"], r["M"]): r for r in rows}
    head = "| kernel | " + " | ".join(f"M={m}: us (graph) / of copy / model" for m in batches) + " |"
    lines = [head, "|" + " --- |" * (len(batches) + 1)]
    for name in dict.fromkeys(r["name"] for r in rows):
        parts = []
        for m in batches:
            r = cell.get((name, m))
            if r is None:
                parts.append("")
                continue
            graph = f" ({r['us_graph']:.1f})" if r.get("us_graph") else ""
            model = f" / {r['predicted_graph_us']:.0f}" if "predicted_graph_us" in r else ""
            parts.append(f"{r['us']:.1f}{graph} / {r['frac_of_copy']:.2f}{model}")
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    env = doc["env"]
    lines.append(f"\n{env['gpu']}, torch {env['torch']}, triton {env['triton']}, {env['date']}, commit {env['commit']}, "
                 f"K={k}, N={n}, device copy {env['copy_GBps']:.0f} GB/s")
    return "\n".join(lines)


def model_preset(choice: str, device_name, required: bool = True) -> str | None:
    """The ``hwlab.sim.gpu`` preset of ``--gpu-model``: ``choice`` itself (one of the presets), or for ``"auto"`` the
    preset of the GPU named ``device_name`` (``hwlab.sim.gpu.preset_of``). A GPU without one is an error naming the
    presets where ``required``, else None (a run still times everything, without predictions)."""
    from hwlab.sim.gpu import PRESETS, preset_of

    if choice != "auto" and choice not in PRESETS:
        raise SystemExit(f"--gpu-model {choice!r} is not a preset: expected auto or one of {sorted(PRESETS)}")
    preset = preset_of(device_name) if choice == "auto" else choice
    if preset is None and required:
        raise SystemExit(f"--gpu-model auto: hwlab.sim.gpu has no preset for the GPU {device_name!r}; "
                         f"name one of {sorted(PRESETS)}")
    return preset


def repredict(path: str, new_path: str, gpu_model: str) -> str:
    """Write ``path`` with every ``hwlab_<format>`` row's prediction recomputed (the launch that
    ``matmul`` chooses for its shape on the run's GPU, the current ``sim/data/kernel_instructions.json``,
    the preset ``gpu_model``, or with ``"auto"`` the one of the run's GPU) to ``new_path``, which must not exist;
    the document records that it was re-predicted, and with which preset."""
    import dataclasses

    import hwlab.formats as F
    from hwlab.kernels import cupy_kernels, dispatch

    if os.path.exists(new_path):
        raise SystemExit(f"--repredict: {new_path} exists (choose a new name)")
    try:
        with open(path) as f:
            doc = json.load(f)
        rows, sms = doc["rows"], doc["env"]["sms"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--repredict: {path} is not a gpu_kernels.json run ({type(exc).__name__}: {exc})") from None
    gpu_model = model_preset(gpu_model, doc["env"].get("gpu"))  # the name is needed for auto only
    plans, count = {}, 0
    rng = np.random.default_rng(0)
    for row in rows:
        fmt = row.get("format")
        if not row["name"].startswith("hwlab_") or fmt is None:
            continue
        if (fmt, row["K"]) not in plans:
            small = F.quantize((rng.standard_normal((QUANTIZED_ROWS, row["K"])) * 0.02).astype(np.float32), fmt)
            plans[fmt, row["K"]] = small.to("cpu").plan
        plan = dataclasses.replace(plans[fmt, row["K"]], shape=(row["N"], row["K"]))
        for key in ("predicted_us", "predicted_graph_us", "predicted_bound", "predicted", "predicted_error"):
            row.pop(key, None)
        try:
            if row.get("kernel", "").startswith("int_mma_cupy"):  # the CuPy tensor-core kernel ran: its launch now
                launch = dispatch.mma_launch(cupy_kernels.mma_launch_plan(plan, row["M"], sms=sms),
                                             cupy_kernels.MMA_WARPS)
            else:
                launch = dispatch.choose(plan, row["M"], sms)
        except ValueError as exc:  # a row no launch of today takes (an M past int_mma's, a tile that no longer fits)
            row["predicted_error"] = f"no launch: {exc}"
            continue
        row.update(prediction(gpu_model, fmt, row["M"], row["K"], row["N"], row["bits_per_weight"], launch))
        count += 1
    doc["env"]["repredicted"] = (f"{count} hwlab rows, {datetime.datetime.now().isoformat(timespec='seconds')}, "
                                 f"preset {gpu_model}")
    doc["env"]["gpu_model"] = gpu_model
    with open(new_path, "w") as f:
        json.dump(doc, f, indent=1)
    return f"wrote {new_path} ({count} rows re-predicted)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_kernels.json")
    parser.add_argument("--formats", nargs="*", default=FORMATS)
    parser.add_argument("--batches", nargs="*", type=int, default=BATCHES)
    parser.add_argument("--quick", action="store_true", help="only the largest and the smallest shape")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--peers", nargs="*", default=["cublas", "tinygemm", "bitsandbytes", "gemlite"],
                        choices=["cublas", "tinygemm", "bitsandbytes", "gemlite"], help="which peers to time")
    parser.add_argument("--skip-formats", action="store_true", help="no hwlab_<format> rows (async and TRIP only)")
    parser.add_argument("--gpu-model", default="auto",
                        help="hwlab.sim.gpu preset for the predictions (auto: the preset of the GPU the run is on, "
                             "for --repredict the one the run was on)")
    parser.add_argument("--plot", metavar="JSON", help="only draw the roofline of a finished run (no GPU)")
    parser.add_argument("--table", metavar="JSON", help="only print a finished run's Markdown table (no GPU)")
    parser.add_argument("--shape", nargs=2, type=int, default=[8192, 28672], metavar=("K", "N"),
                        help="the layer --table shows")
    parser.add_argument("--repredict", nargs=2, metavar=("JSON", "NEW_JSON"),
                        help="only re-run the GPU model on a finished run's hwlab rows with the current instruction "
                             "counts (no GPU); NEW_JSON must not exist")
    parser.add_argument("--compile-workers", type=int, default=0,
                        help="compile every kernel first in this many processes (0: compile as they run)")
    args = parser.parse_args(argv)
    if args.plot:
        print(plot(args.plot))
        return 0
    if args.table:
        print(table(args.table, *args.shape))
        return 0
    if args.repredict:
        print(repredict(*args.repredict, args.gpu_model))
        return 0
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_kernels.py times CUDA kernels: torch.cuda.is_available() is False here "
                         "(--table, --plot and --repredict need no GPU)")
    device_name = torch.cuda.get_device_name()
    args.gpu_model = model_preset(args.gpu_model, device_name, required=False)
    if args.gpu_model is None:
        print(f"== no hwlab.sim.gpu preset for {device_name!r}: no predictions (name one with --gpu-model)", flush=True)
    shapes = [SHAPES[0], SHAPES[-1]] if args.quick else SHAPES
    run = Run(args.out)
    run.doc["env"]["gpu_model"] = args.gpu_model
    sections = [("env", lambda: environment(run))]
    if args.compile_workers and not args.skip_formats:
        sections.append(("compile", lambda: warm_cache(args.formats, shapes, args.batches, args.compile_workers)))
    sections += [("copy", lambda: copy_bandwidth(run))]
    if not args.skip_formats:
        sections.append(("hwlab", lambda: hwlab_formats(run, args.formats, shapes, args.batches, args.gpu_model)))
    sections += [("async_mixed", lambda: async_mixed(run, shapes, args.batches, args.gpu_model)),
                 ("trip", lambda: trip(run, shapes, args.batches, args.gpu_model))]
    peers = {"cublas": cublas, "tinygemm": tinygemm, "bitsandbytes": bitsandbytes_nf4, "gemlite": gemlite}
    for name in ([] if args.skip_peers else args.peers):
        sections.append((name, lambda peer=peers[name]: peer(run, shapes, args.batches)))
    for name, section in sections:
        start = time.time()
        try:
            section()
        except Exception:
            print(f"== {name} FAILED")
            traceback.print_exc(limit=4)
        print(f"== {name} {time.time() - start:.1f}s", flush=True)
        run.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
